//! The fleet pipeline of `shipit deploy` and `shipit rollback`: connect, lock (all or
//! nothing), read facts, plan, stage every host, switch, clean up, record history, unlock.
//!
//! Invariants: nothing is switched anywhere unless every host staged; a failed switch rolls
//! back the hosts already switched; the locks this run took are released on every path out
//! (success, failure, Ctrl-C/SIGTERM), and only this run's locks; every host's outcome is
//! reported.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use crate::artifact::delta::{self, Delta};
use crate::artifact::manifest::Manifest;
use crate::artifact::{Codec, Compressed, Packed};
use crate::commands;
use crate::deploy::envfile::KeyDiff;
use crate::deploy::lock::{self, LockOwner, LockState, RunInfo};
use crate::deploy::once::{self, BackupFile};
use crate::deploy::stage::{self, Templates};
use crate::deploy::switch::{Switch, Touched};
use crate::error::code;
use crate::inventory::HookPoint;
use crate::inventory::{Host, Inventory};
use crate::ops::history::{self, Record};
use crate::ops::releases;
use crate::output::{Event, Output, Report, table};
use crate::plan::facts::{self, ReleaseTree};
use crate::plan::{self, HostPlan, Source};
use crate::shell::Cmd;
use crate::shell::Secret;
use crate::transport::fleet::{self, Conn, Connector};
use crate::transport::{ExecError, ExecOutput, ExecRequest};

const INTERRUPTED: &str = "interrupted before the switch; nothing was switched";

/// Deadline of the small steps (lock, facts, switch, prune).
const SHORT: Duration = Duration::from_secs(60);

/// Set when the user asks the run to stop (Ctrl-C, SIGTERM).
#[derive(Clone)]
pub struct Cancel(watch::Receiver<bool>);

impl Cancel {
    pub fn new(rx: watch::Receiver<bool>) -> Cancel {
        Cancel(rx)
    }

    /// A flag nobody sets.
    pub fn never() -> Cancel {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        Cancel(rx)
    }

    pub async fn cancelled(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Deployed,
    Failed,
    Interrupted,
    Locked,
    RolledBack,
    RollbackFailed,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Deployed => code::OK,
            Outcome::Failed | Outcome::Interrupted => code::FAILED,
            Outcome::Locked => code::LOCKED,
            Outcome::RolledBack => code::ROLLED_BACK,
            Outcome::RollbackFailed => code::ROLLBACK_FAILED,
        }
    }

    /// The word history records: a release whose deploy did not succeed is `failed`
    /// (what `rollback` skips); `switched_back` says what became of the hosts.
    fn history_word(self) -> &'static str {
        match self {
            Outcome::Deployed => "success",
            Outcome::Failed | Outcome::Locked | Outcome::RolledBack | Outcome::RollbackFailed => {
                "failed"
            }
            Outcome::Interrupted => "interrupted",
        }
    }

    fn switched_back(self) -> Option<&'static str> {
        match self {
            Outcome::RolledBack => Some("every switched host was switched back"),
            Outcome::RollbackFailed => Some("switching back FAILED on some hosts"),
            _ => None,
        }
    }
}

/// What happened on one host.
#[derive(Debug, Default, Serialize)]
pub struct HostDeploy {
    pub host: String,
    /// True when the host runs the run's release and nothing failed on it.
    pub ok: bool,
    /// `switched`, `not_switched`, `failed`, `switched_back` or `switch_back_failed`.
    pub outcome: &'static str,
    /// `uploaded` (the whole artifact), `delta` (only content the host's current release
    /// lacks), `reused` (verified copy of an identical release) or `present`.
    pub source: Option<String>,
    /// Bytes streamed to this host (compressed): the whole artifact, or the delta.
    pub bytes_sent: u64,
    /// The whole artifact for this host, to compare with `bytes_sent`: what a whole upload
    /// sends (compressed as for this host, with the manifest) when this run compressed it,
    /// else its uncompressed size (every host took a delta or a copy).
    pub artifact_bytes: Option<u64>,
    /// Why a delta upload was given up and the whole artifact sent instead.
    pub delta_fallback: Option<String>,
    /// How a whole upload to this host is compressed (known once its tree is read).
    #[serde(skip)]
    pub codec: Option<Codec>,
    /// `current` before the run.
    pub previous: Option<String>,
    /// `current` after the run.
    pub current: Option<String>,
    pub pruned: Vec<String>,
    pub locked_by: Option<LockOwner>,
    /// Env file keys this deploy added, removed or changed (names only); `None`: unchanged.
    pub env_keys: Option<KeyDiff>,
    /// Whether the host was switched back after a failure, and how that went.
    pub rolled_back: Option<bool>,
    /// How long staging took on this host (upload, extract, configuration), in ms.
    pub stage_ms: Option<u64>,
    /// How long switching took on this host (env, `current`, restarts, health), in ms.
    pub switch_ms: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DeployReport {
    /// `deploy` or `rollback`.
    pub action: String,
    pub stage: String,
    pub release: Option<String>,
    pub artifact_sha256: Option<String>,
    /// The whole artifact: what a whole upload sends (zstd, with the manifest) when this run
    /// compressed it, else its uncompressed size.
    pub artifact_bytes: Option<u64>,
    pub outcome: Outcome,
    pub exit_code: u8,
    pub duration_ms: u64,
    pub message: Option<String>,
    /// The backup made before migrations, if `[backup]` is set.
    pub backup: Option<BackupFile>,
    /// The host that ran the migrations, if `[migrate]` is set and they ran.
    pub migrated_on: Option<String>,
    pub hosts: Vec<HostDeploy>,
}

impl Report for DeployReport {
    fn human(&self) -> String {
        table::deploy(self)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }

    fn markdown(&self) -> String {
        table::deploy_markdown(self)
    }
}

/// Everything a deploy needs, resolved by the caller.
pub struct Deploy<'a> {
    pub stage: &'a str,
    pub inventory: &'a Inventory,
    pub hosts: &'a [&'a Host],
    pub connector: &'a Connector,
    pub out: &'a Output,
    pub artifact: &'a Packed,
    pub templates: &'a Templates,
    /// The selected host that runs backups, migrations and `once` hooks.
    pub migrate_host: Option<String>,
    /// `--waves`: overrides `rollout.waves`.
    pub waves: Option<Vec<crate::inventory::Amount>>,
    /// The env file's content (same on every host), rendered once.
    pub env_content: Option<Secret>,
    /// When the run started (the release id is derived from it and the hosts' releases).
    pub now_unix: u64,
    pub git: Option<String>,
    pub run: &'a RunInfo,
    pub cancel: Cancel,
}

/// A run in progress: its report and the hosts it holds locks on.
struct Run<'a> {
    report: DeployReport,
    /// For reconnecting to a host whose connection died, to clean up.
    connector: &'a Connector,
    /// The wave sizes of this run (`--waves` or `rollout.waves`).
    waves: Vec<crate::inventory::Amount>,
    started: Instant,
    run: &'a RunInfo,
    inventory: &'a Inventory,
    out: &'a Output,
}

impl<'a> Run<'a> {
    fn new(
        action: &str,
        stage: &str,
        hosts: &[&Host],
        d: (&'a RunInfo, &'a Inventory, &'a Output, &'a Connector),
    ) -> Run<'a> {
        Run {
            connector: d.3,
            report: DeployReport {
                action: action.to_owned(),
                stage: stage.to_owned(),
                release: None,
                artifact_sha256: None,
                artifact_bytes: None,
                outcome: Outcome::Failed,
                exit_code: code::FAILED,
                duration_ms: 0,
                message: None,
                backup: None,
                migrated_on: None,
                hosts: hosts
                    .iter()
                    .map(|h| HostDeploy {
                        host: h.name.clone(),
                        ..Default::default()
                    })
                    .collect(),
            },
            started: Instant::now(),
            waves: d.1.rollout.waves.clone(),
            run: d.0,
            inventory: d.1,
            out: d.2,
        }
    }

    fn host(&mut self, name: &str) -> &mut HostDeploy {
        self.report
            .hosts
            .iter_mut()
            .find(|h| h.host == name)
            .expect("every selected host has an entry")
    }

    fn fail_host(&mut self, name: &str, error: String) {
        self.out.emit(Event::HostDone {
            host: name,
            ok: false,
            summary: &error,
        });
        self.host(name).error = Some(error);
    }

    fn end(mut self, outcome: Outcome, message: Option<String>) -> DeployReport {
        self.report.outcome = outcome;
        self.report.exit_code = outcome.exit_code();
        self.report.message = message;
        self.report.duration_ms = self.started.elapsed().as_millis() as u64;
        let release = self.report.release.clone();
        for h in &mut self.report.hosts {
            h.outcome = match (h.rolled_back, &h.error, &h.current) {
                (Some(true), _, _) => "switched_back",
                (Some(false), _, _) => "switch_back_failed",
                (None, Some(_), _) => "failed",
                (None, None, Some(c)) if Some(c) == release.as_ref() => "switched",
                _ => "not_switched",
            };
            h.ok = h.outcome == "switched";
        }
        self.report
    }

    fn history(&self, outcome: Outcome, message: Option<String>) -> Record {
        Record {
            time: plan::rfc3339_millis(self.run.started_millis),
            finished: Some(plan::rfc3339_millis(now_millis())),
            action: self.report.action.clone(),
            release: self.report.release.clone(),
            artifact_sha256: self.report.artifact_sha256.clone(),
            outcome: outcome.history_word().to_owned(),
            switched_back: outcome.switched_back().map(str::to_owned),
            user: self.run.user.clone(),
            machine: self.run.machine.clone(),
            command: self.run.command.clone(),
            duration_s: (self.started.elapsed().as_millis() as f64) / 1000.0,
            ci_url: self.run.ci_url.clone(),
            run: self.run.token.clone(),
            hosts: self.report.hosts.iter().map(|h| h.host.clone()).collect(),
            message,
        }
    }

    /// Records the outcome on every locked host, releases the locks, closes connections.
    async fn close(
        self,
        conns: &[Conn<'_>],
        outcome: Outcome,
        message: Option<String>,
    ) -> DeployReport {
        let deploy_to = &self.inventory.app.deploy_to;
        let entry = self.history(outcome, message.clone());
        // A host whose connection died mid-run still gets its history line and its lock
        // released, over a new connection: a re-run must not find this run's lock.
        let mut fresh = Vec::new();
        for c in conns.iter().filter(|c| !c.transport.is_alive()) {
            if let Ok(transport) = self.connector.connect(c.host).await {
                fresh.push(Conn {
                    host: c.host,
                    transport,
                });
            }
        }
        let live: Vec<&Conn<'_>> = conns
            .iter()
            .filter(|c| c.transport.is_alive())
            .chain(fresh.iter())
            .collect();
        // Every host at once: at 100 hosts, one after the other took a second.
        let appends = live.iter().map(|c| {
            history::append(
                std::slice::from_ref(*c),
                deploy_to,
                &entry,
                &self.run.redactor,
            )
        });
        let mut unrecorded: Vec<String> = futures::future::join_all(appends)
            .await
            .into_iter()
            .flatten()
            .collect();
        let recorded: Vec<&str> = live.iter().map(|c| c.host.name.as_str()).collect();
        unrecorded.extend(
            conns
                .iter()
                .filter(|c| !recorded.contains(&c.host.name.as_str()))
                .map(|c| c.host.name.clone()),
        );
        // What this run staged and did not install is nobody's: no other run may read it.
        if let Some(env) = &self.inventory.env {
            let cmd = commands::envfile::discard(&env.path, &self.run.token);
            let discards = live
                .iter()
                .map(|c| c.transport.exec(ExecRequest::new(&cmd, SHORT)));
            futures::future::join_all(discards).await;
        }
        lock::release_all(&live, deploy_to, &self.run.token).await;
        fleet::close_all(conns).await;
        fleet::close_all(&fresh).await;
        let mut message = message;
        if !unrecorded.is_empty() {
            let note = format!("history could not be written on {}", unrecorded.join(", "));
            message = Some(match message {
                Some(m) => format!("{m}; {note}"),
                None => note,
            });
        }
        self.end(outcome, message)
    }
}

/// Connects to and locks every host. On success the caller holds every lock; otherwise
/// the locks taken are released and the finished report is returned.
async fn connect_and_lock<'r, 'h>(
    r: Run<'r>,
    hosts: &[&'h Host],
    connector: &Connector,
) -> Result<(Run<'r>, Vec<Conn<'h>>), DeployReport> {
    let mut r = r;
    let out = r.out;
    let inventory = r.inventory;
    let (conns, failed) = fleet::connect_all(inventory, hosts, connector, |host| {
        out.emit(Event::Step {
            host,
            step: "connecting",
        })
    })
    .await;
    if !failed.is_empty() {
        for (host, e) in &failed {
            r.fail_host(&host.name, crate::error::chain(&e));
        }
        fleet::close_all(&conns).await;
        let n = failed.len();
        return Err(r.end(
            Outcome::Failed,
            Some(format!(
                "cannot connect to {n} of {} hosts; nothing was changed",
                hosts.len()
            )),
        ));
    }
    // Before the lock: taking it already writes under `deploy_to`.
    let checks = crate::deploy::strict::preflight(&conns, inventory).await;
    let unsafe_hosts = checks.iter().filter(|c| c.is_err()).count();
    if unsafe_hosts > 0 {
        for (c, check) in conns.iter().zip(checks) {
            if let Err(e) = check {
                r.fail_host(&c.host.name, e.message);
            }
        }
        fleet::close_all(&conns).await;
        return Err(r.end(
            Outcome::Failed,
            Some(format!(
                "unsafe paths on {unsafe_hosts} of {} hosts; nothing was changed",
                hosts.len()
            )),
        ));
    }
    for c in &conns {
        out.emit(Event::Step {
            host: &c.host.name,
            step: "locking",
        });
    }
    let deploy_to = &inventory.app.deploy_to;
    let states = lock::acquire_all(
        &conns,
        deploy_to,
        inventory.env.as_ref().map(|e| e.path.as_str()),
        r.run,
    )
    .await;
    let now = now_unix();
    let mut taken = Vec::new();
    let mut held = Vec::new();
    let mut broken = 0;
    let first = &conns[0].host.name;
    for (c, state) in conns.iter().zip(states) {
        let problem = state.problem(first, now, inventory.rollout.lock_timeout);
        let name = c.host.name.clone();
        match state {
            LockState::Taken => taken.push(c),
            LockState::Held(owner) => {
                r.host(&name).locked_by = owner;
                held.push(name.clone());
            }
            LockState::Failed(_) => broken += 1,
            LockState::NotTried => {}
        }
        if let Some(problem) = problem {
            r.fail_host(&name, problem);
        }
    }
    if taken.len() == conns.len() {
        return Ok((r, conns));
    }
    lock::release_all(&taken, deploy_to, &r.run.token).await;
    fleet::close_all(&conns).await;
    Err(if held.is_empty() {
        r.end(
            Outcome::Failed,
            Some(format!("cannot lock {broken} hosts; nothing was changed")),
        )
    } else {
        r.end(
            Outcome::Locked,
            Some(format!(
                "{} locked by another run; nothing was changed",
                held.join(", ")
            )),
        )
    })
}

/// Reads the release tree of every host.
async fn read_trees(conns: &[Conn<'_>], deploy_to: &str) -> Vec<Result<ReleaseTree, String>> {
    let cmd = facts::releases(deploy_to);
    let runs = conns.iter().map(|c| {
        let cmd = &cmd;
        async move {
            match c.transport.exec(ExecRequest::new(cmd, SHORT)).await {
                Ok(o) if o.success() => Ok(facts::parse_releases(&o.stdout.text())),
                Ok(o) => Err(describe_failure("reading the release tree", &o)),
                Err(e) => Err(crate::error::chain(&e)),
            }
        }
    });
    futures::future::join_all(runs).await
}

fn describe_failure(step: &str, o: &ExecOutput) -> String {
    let stderr = o.stderr.text();
    let stderr = stderr.trim();
    if stderr.is_empty() {
        format!("{step} failed ({})", o.exit)
    } else {
        format!("{step} failed ({}): {stderr}", o.exit)
    }
}

/// The whole artifact compressed for upload, once per compression (zstd; gzip for hosts
/// without `zstd`), when a host first needs it: a redeploy whose hosts all take a delta
/// compresses nothing.
struct Wholes {
    tar: std::path::PathBuf,
    tar_size: u64,
    manifest: Option<Arc<Manifest>>,
    zstd: tokio::sync::OnceCell<Result<Arc<Compressed>, String>>,
    gzip: tokio::sync::OnceCell<Result<Arc<Compressed>, String>>,
}

impl Wholes {
    fn new(packed: &Packed) -> Wholes {
        Wholes {
            tar: packed.tar.to_path_buf(),
            tar_size: packed.tar_size,
            manifest: packed.manifest.clone(),
            zstd: tokio::sync::OnceCell::new(),
            gzip: tokio::sync::OnceCell::new(),
        }
    }

    fn job(&self, codec: Codec) -> impl FnOnce() -> Result<Compressed, String> + Send + 'static {
        let (tar, manifest) = (self.tar.clone(), self.manifest.clone());
        move || {
            let dir = tar.parent().unwrap_or(std::path::Path::new("/tmp"));
            crate::artifact::compress(&tar, manifest.as_deref(), codec, dir)
                .map_err(|e| format!("cannot compress the artifact: {}", crate::error::chain(&e)))
        }
    }

    fn cell(&self, codec: Codec) -> &tokio::sync::OnceCell<Result<Arc<Compressed>, String>> {
        match codec {
            Codec::Zstd => &self.zstd,
            Codec::Gzip => &self.gzip,
        }
    }

    async fn get(&self, codec: Codec) -> Result<Arc<Compressed>, String> {
        self.cell(codec)
            .get_or_init(|| async {
                match tokio::task::spawn_blocking(self.job(codec)).await {
                    Ok(made) => made.map(Arc::new),
                    Err(e) => Err(format!("compressing the artifact failed: {e}")),
                }
            })
            .await
            .clone()
    }

    /// The size of a whole upload with `codec` if this run made it, else the artifact's
    /// uncompressed size: what `bytes_sent` is compared with.
    fn size(&self, codec: Codec) -> u64 {
        self.cell(codec)
            .get()
            .and_then(|made| made.as_ref().ok())
            .map_or(self.tar_size, |c| c.upload_size())
    }
}

/// One host's whole upload.
#[derive(Clone, Copy)]
struct Whole<'a> {
    wholes: &'a Wholes,
    codec: Codec,
}

impl Whole<'_> {
    async fn get(&self) -> Result<Arc<Compressed>, String> {
        self.wholes.get(self.codec).await
    }
}

pub async fn deploy(d: Deploy<'_>) -> DeployReport {
    let wholes = Wholes::new(d.artifact);
    let mut report = deploy_with(&d, &wholes).await;
    // The sizes of a whole upload, for comparison with what was sent.
    report.artifact_bytes = Some(wholes.size(Codec::Zstd));
    for h in &mut report.hosts {
        if let Some(codec) = h.codec.take() {
            h.artifact_bytes = Some(wholes.size(codec));
        }
    }
    report
}

async fn deploy_with(d: &Deploy<'_>, wholes: &Wholes) -> DeployReport {
    let deploy_to = d.inventory.app.deploy_to.clone();
    let mut r = Run::new(
        "deploy",
        d.stage,
        d.hosts,
        (d.run, d.inventory, d.out, d.connector),
    );
    r.report.artifact_sha256 = Some(d.artifact.sha256.clone());

    let (mut r, conns) = match connect_and_lock(r, d.hosts, d.connector).await {
        Ok(ok) => ok,
        Err(report) => return report,
    };

    // Facts and plan: one release id for the whole fleet, after every id already there.
    let trees = read_trees(&conns, &deploy_to).await;
    let release = plan::next_release_id(
        d.now_unix,
        &d.artifact.sha256,
        trees
            .iter()
            .flatten()
            .flat_map(|t| t.releases.iter().map(|r| r.id.as_str())),
    );
    r.report.release = Some(release.clone());
    let mut plans = Vec::new();
    let mut zstd = Vec::new();
    let mut bases = Vec::new();
    let mut failed = false;
    for (c, tree) in conns.iter().zip(trees) {
        match tree {
            Ok(tree) => {
                zstd.push(tree.zstd);
                bases.push(match (&tree.current, &tree.manifest) {
                    (Some(current), Some(manifest)) if tree.delta => Some(DeltaBase {
                        current: current.clone(),
                        manifest: manifest.clone(),
                    }),
                    _ => None,
                });
                let p = plan::host_plan(
                    &c.host.name,
                    &tree,
                    &release,
                    &d.artifact.sha256,
                    d.inventory.app.keep_releases as usize,
                );
                r.host(&c.host.name).previous = p.previous.clone();
                plans.push(p);
            }
            Err(e) => {
                r.fail_host(&c.host.name.clone(), e);
                failed = true;
            }
        }
    }
    if failed {
        return r
            .close(
                &conns,
                Outcome::Failed,
                Some("could not read every host; nothing was switched".into()),
            )
            .await;
    }

    // Hosts without `zstd` get gzip.
    let codecs: Vec<Codec> = zstd
        .iter()
        .map(|&has| if has { Codec::Zstd } else { Codec::Gzip })
        .collect();
    for (p, codec) in plans.iter().zip(&codecs) {
        r.host(&p.host).codec = Some(*codec);
    }

    // Delta streams for the hosts whose current release has a manifest.
    let deltas = prepare_deltas(d, &conns, &plans, &bases, &codecs).await;

    // Stage every host; a Ctrl-C here stops before anything is switched.
    let revision = commands::release::revision_text(&d.artifact.sha256, d.git.as_deref());
    let stage_all = stage_all(d, wholes, &conns, &plans, &codecs, &deltas, &revision);
    let staged = tokio::select! {
        staged = stage_all => Some(staged),
        () = d.cancel.cancelled() => None,
    };
    let Some(staged) = staged else {
        d.out.emit(Event::Note(
            "interrupted: stopping before any host is switched",
        ));
        return r
            .close(&conns, Outcome::Interrupted, Some(INTERRUPTED.into()))
            .await;
    };
    let mut failures = 0;
    for (p, result) in plans.iter().zip(staged) {
        match result {
            Ok(staged) => {
                if let Some(diff) = &staged.env {
                    d.out.emit(Event::Note(&format!(
                        "{}: env file {}",
                        p.host,
                        describe_keys(diff)
                    )));
                }
                let h = r.host(&p.host);
                h.stage_ms = Some(staged.ms);
                h.bytes_sent = staged.release.sent;
                h.delta_fallback = staged.release.fallback;
                h.env_keys = staged.env;
                h.source = Some(staged.release.source.to_owned());
            }
            Err(e) => {
                r.fail_host(&p.host, e);
                failures += 1;
            }
        }
    }
    if failures > 0 {
        return r
            .close(
                &conns,
                Outcome::Failed,
                Some(format!(
                    "{failures} hosts failed to stage; nothing was switched"
                )),
            )
            .await;
    }
    if d.cancel.is_cancelled() {
        return r
            .close(&conns, Outcome::Interrupted, Some(INTERRUPTED.into()))
            .await;
    }

    // Once, on the migrate host: a verified backup, then the migrations. Not interruptible:
    // a migration cut in half is worse than one that finishes; the lock is held throughout.
    if let Some(mc) = conns
        .iter()
        .find(|c| Some(&c.host.name) == d.migrate_host.as_ref())
    {
        let release_dir = format!("{deploy_to}/releases/{release}");
        let previous = plans
            .iter()
            .find(|p| p.host == mc.host.name)
            .and_then(|p| p.previous.as_deref());
        // The backup sees what the migration will: the new release's files and env.
        let mut vars = once::task_vars(d.inventory, &mc.host.name, &release, previous);
        vars.env_next = once::env_next(d.inventory, &d.run.token);
        let made = once::backup(
            mc,
            d.inventory,
            &release_dir,
            &vars,
            &release,
            d.now_unix,
            d.out,
        )
        .await;
        match made {
            Ok(made) => r.report.backup = made,
            Err(e) => {
                r.fail_host(&mc.host.name, e.clone());
                return r.close(&conns, Outcome::Failed, Some(e)).await;
            }
        }
        match once::migrate(mc, d.inventory, &release_dir, &vars, d.out).await {
            Ok(true) => r.report.migrated_on = Some(mc.host.name.clone()),
            Ok(false) => {}
            Err(e) => {
                r.fail_host(&mc.host.name, e.clone());
                return r
                    .close(
                        &conns,
                        Outcome::Failed,
                        Some(format!("{e}; nothing was switched")),
                    )
                    .await;
            }
        }
        if d.cancel.is_cancelled() {
            return r
                .close(
                    &conns,
                    Outcome::Interrupted,
                    Some("interrupted before the switch (after the migrations); nothing was switched".into()),
                )
                .await;
        }
    }

    // Switch. Not interruptible: a half-switched fleet is worse than a finished one.
    let targets: Vec<(&Conn<'_>, &str, Option<&str>)> = conns
        .iter()
        .zip(&plans)
        .map(|(c, p)| (c, p.release.as_str(), p.previous.as_deref()))
        .collect();
    if let Some(waves) = &d.waves {
        r.waves = waves.clone();
    }
    let guard_line = {
        let mut entry = r.history(Outcome::RolledBack, None);
        entry.action = "guard".to_owned();
        entry.outcome = "reverted".to_owned();
        entry.finished = None;
        entry.message = Some(
            "the deployer did not confirm in time: the guard switched this host back".to_owned(),
        );
        entry
    };
    let health_secs = d
        .inventory
        .health
        .iter()
        .map(|h| h.timeout.as_secs())
        .sum::<u64>();
    let switch = Switch {
        inventory: d.inventory,
        templates: d.templates,
        out: d.out,
        deploy: true,
        token: &d.run.token,
        env_staged: r
            .report
            .hosts
            .iter()
            .filter(|h| h.env_keys.is_some())
            .map(|h| h.host.clone())
            .collect(),
        migrate_host: d.migrate_host.clone(),
        guard: Some(crate::deploy::switch::Guard {
            token: d.run.token.clone(),
            delay_secs: d.inventory.rollout.confirm_timeout.as_secs().max(1) + health_secs,
            history: guard_line,
            redactor: d.run.redactor.clone(),
        }),
    };
    let (outcome, message) = switch_fleet(&mut r, &switch, &targets).await;
    if outcome != Outcome::Deployed {
        return r.close(&conns, outcome, message).await;
    }

    // Cleanup, history, unlock.
    let deploy_to = deploy_to.as_str();
    let prunes = conns.iter().zip(&plans).map(|(c, p)| async move {
        if p.prune.is_empty() {
            return Ok(());
        }
        let cmd = commands::release::prune(deploy_to, &p.prune);
        match c.transport.exec(ExecRequest::new(&cmd, SHORT)).await {
            Ok(o) if o.success() => Ok(()),
            Ok(o) => Err(describe_failure("removing old releases", &o)),
            Err(e) => Err(crate::error::chain(&e)),
        }
    });
    let pruned = futures::future::join_all(prunes).await;
    let mut notes = Vec::new();
    for (p, result) in plans.iter().zip(pruned) {
        match result {
            Ok(()) => r.host(&p.host).pruned = p.prune.clone(),
            // The release is live; a failed cleanup is worth a note, not a failure.
            Err(e) => notes.push(format!("{}: {e}", p.host)),
        }
    }
    for p in &plans {
        d.out.emit(Event::HostDone {
            host: &p.host,
            ok: true,
            summary: &format!("current -> {}", p.release),
        });
    }
    let message = (!notes.is_empty()).then(|| notes.join("; "));
    r.close(&conns, Outcome::Deployed, message).await
}

/// Stages every host (bounded by `rollout.parallel`): the release directory complete, with
/// REVISION and shared links. Returns the bytes sent per host.
async fn stage_all(
    d: &Deploy<'_>,
    wholes: &Wholes,
    conns: &[Conn<'_>],
    plans: &[HostPlan],
    codecs: &[Codec],
    deltas: &[Result<Option<HostDelta>, String>],
    revision: &str,
) -> Vec<Result<Staged, String>> {
    let work = conns.iter().zip(plans).zip(codecs).zip(deltas).map(
        |(((c, p), codec), delta)| async move {
            let started = Instant::now();
            let whole = Whole {
                wholes,
                codec: *codec,
            };
            let result = stage_host(d, c, p, whole, delta, revision).await;
            result.map(|mut staged| {
                staged.ms = started.elapsed().as_millis() as u64;
                staged
            })
        },
    );
    use futures::StreamExt;
    futures::stream::iter(work)
        .buffered(d.inventory.rollout.parallel.max(1))
        .collect()
        .await
}

/// A host's current release, when a delta can start from it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct DeltaBase {
    current: String,
    /// sha256 of its manifest.
    manifest: String,
}

/// What a host's delta upload starts from and sends.
struct HostDelta {
    base: DeltaBase,
    delta: Arc<Delta>,
}

/// Makes the delta streams: per distinct (current manifest, compression), the manifest is
/// read from one host and the delta built once. Per host: `Ok(None)` when the whole
/// artifact goes (no manifest to start from, deltas off, or a delta not smaller), `Err`
/// with the reason when a delta was possible but could not be made (the whole artifact goes
/// too, and the report says why).
async fn prepare_deltas(
    d: &Deploy<'_>,
    conns: &[Conn<'_>],
    plans: &[HostPlan],
    bases: &[Option<DeltaBase>],
    codecs: &[Codec],
) -> Vec<Result<Option<HostDelta>, String>> {
    let enabled = d.inventory.artifact.as_ref().is_some_and(|a| a.delta);
    let mut groups: Vec<(String, Codec, usize)> = Vec::new();
    let mut group_of: Vec<Option<usize>> = Vec::new();
    for (i, (p, base)) in plans.iter().zip(bases).enumerate() {
        let wanted = enabled && matches!(p.source, Source::Upload) && d.artifact.manifest.is_some();
        group_of.push(match base {
            Some(base) if wanted => {
                let key = (base.manifest.clone(), codecs[i]);
                Some(
                    match groups
                        .iter()
                        .position(|(m, codec, _)| (m, *codec) == (&key.0, key.1))
                    {
                        Some(g) => g,
                        None => {
                            groups.push((key.0, key.1, i));
                            groups.len() - 1
                        }
                    },
                )
            }
            _ => None,
        });
    }
    let built = futures::future::join_all(groups.iter().map(|(sha, _, first)| {
        let i = *first;
        async move {
            let base = bases[i].as_ref().expect("grouped hosts have a base");
            let codec = codecs[i];
            let old = fetch_manifest(d, &conns[i], &base.current, sha, codec).await?;
            let packed = d.artifact;
            let new = packed
                .manifest
                .clone()
                .expect("grouped hosts have a manifest");
            let shared: Vec<String> = d
                .inventory
                .artifact
                .as_ref()
                .map(|a| {
                    a.shared_dirs
                        .iter()
                        .chain(&a.shared_files)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let dir = packed
                .tar
                .parent()
                .unwrap_or(std::path::Path::new("/tmp"))
                .to_owned();
            let make = move || {
                let plan = delta::plan(&old, &new, &shared);
                // Mostly new content: the whole artifact is as good and simpler.
                if plan.content_bytes > packed.tar_size / 4 * 3 {
                    return Ok(None);
                }
                delta::build(packed, &new, &plan, codec, &dir).map(Some)
            };
            let made = match tokio::runtime::Handle::current().runtime_flavor() {
                tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(make),
                _ => make(),
            };
            match made {
                Ok(delta) => Ok(delta.map(Arc::new)),
                Err(e) => Err(format!(
                    "cannot make the delta: {}",
                    crate::error::chain(&e)
                )),
            }
        }
    }))
    .await;
    group_of
        .iter()
        .enumerate()
        .map(|(i, g)| match g {
            None => Ok(None),
            Some(g) => match &built[*g] {
                Ok(Some(delta)) => Ok(Some(HostDelta {
                    base: bases[i].clone().expect("grouped hosts have a base"),
                    delta: delta.clone(),
                })),
                Ok(None) => Ok(None),
                Err(e) => Err(e.clone()),
            },
        })
        .collect()
}

/// Reads the manifest of the host's current release (compressed on the way) and checks it
/// is the one its sha256 names.
async fn fetch_manifest(
    d: &Deploy<'_>,
    c: &Conn<'_>,
    current: &str,
    sha256: &str,
    codec: Codec,
) -> Result<Manifest, String> {
    let path = format!(
        "{}/releases/{current}/{}",
        d.inventory.app.deploy_to,
        crate::artifact::manifest::PATH
    );
    let compress = match codec {
        Codec::Zstd => "zstd -q -c",
        Codec::Gzip => "gzip -c",
    };
    let cmd = Cmd::seq([
        Cmd::assign("f", &path),
        Cmd::assign("compress", compress),
        Cmd::new(r#"$compress < "$f""#),
    ]);
    // The manifest can pass the kept-output limit: collected here instead.
    let bytes = std::sync::Mutex::new(Vec::new());
    let sink = |stream: crate::transport::Stream, chunk: &[u8]| {
        if stream == crate::transport::Stream::Stdout {
            bytes.lock().expect("lock").extend_from_slice(chunk);
        }
    };
    let o = c
        .transport
        .exec(ExecRequest::new(&cmd, SHORT * 10).output(&sink))
        .await
        .map_err(|e| crate::error::chain(&e))?;
    if !o.success() {
        return Err(describe_failure(
            "reading the current release's manifest",
            &o,
        ));
    }
    let bytes = bytes.into_inner().expect("lock");
    let text = codec
        .decompress_bytes(&bytes)
        .map_err(|e| format!("the current release's manifest arrived damaged: {e}"))?;
    if crate::artifact::manifest::sha256_hex(&text) != sha256 {
        return Err("the current release's manifest changed while it was read".into());
    }
    Manifest::parse(&text).map_err(|e| format!("`{path}`: {e}"))
}

/// What staging a host produced.
struct Staged {
    release: StagedRelease,
    env: Option<KeyDiff>,
    ms: u64,
}

/// How the release directory got there.
struct StagedRelease {
    /// `uploaded`, `delta`, `reused` or `present`.
    source: &'static str,
    sent: u64,
    fallback: Option<String>,
}

async fn stage_host(
    d: &Deploy<'_>,
    c: &Conn<'_>,
    p: &HostPlan,
    whole: Whole<'_>,
    delta: &Result<Option<HostDelta>, String>,
    revision: &str,
) -> Result<Staged, String> {
    let release = stage_release(d, c, p, whole, delta, revision).await?;
    let host = &c.host.name;
    let deploy_to = &d.inventory.app.deploy_to;
    d.out.emit(Event::Step {
        host,
        step: "staging configuration",
    });
    let release_dir = format!("{deploy_to}/releases/{}", p.release);
    // The env file first: Compose reads the staged one while checking the stack.
    let token = &d.run.token;
    let env = match &d.env_content {
        Some(content) => stage::stage_env(c, d.inventory, content, token).await?,
        None => None,
    };
    let env_next = once::env_next(d.inventory, token);
    let staged_env = env_next.as_deref().filter(|_| env.is_some());
    stage::stage_configs(
        c,
        d.inventory,
        d.templates,
        &p.release,
        &release_dir,
        staged_env,
    )
    .await?;
    let is_migrate_host = d.migrate_host.as_deref() == Some(host.as_str());
    let mut vars = once::task_vars(d.inventory, host, &p.release, p.previous.as_deref());
    vars.env_next = env_next;
    once::hooks(
        c,
        d.inventory,
        HookPoint::AfterUpload,
        &release_dir,
        is_migrate_host,
        &vars,
        d.out,
    )
    .await?;
    d.out.emit(Event::Step {
        host,
        step: "staged",
    });
    Ok(Staged {
        release,
        env,
        ms: 0,
    })
}

/// The release directory, complete: uploaded (whole or as a delta) or copied, REVISION,
/// shared links, renamed.
async fn stage_release(
    d: &Deploy<'_>,
    c: &Conn<'_>,
    p: &HostPlan,
    whole: Whole<'_>,
    delta: &Result<Option<HostDelta>, String>,
    revision: &str,
) -> Result<StagedRelease, String> {
    let deploy_to = &d.inventory.app.deploy_to;
    let host = &c.host.name;
    let artifact = d.inventory.artifact.as_ref();
    let no_paths: Vec<String> = Vec::new();
    // REVISION, shared links and the rename run in the same script as the upload or the
    // copy: one round trip per host.
    let finish = commands::release::finish(
        deploy_to,
        &p.release,
        revision,
        artifact.map_or(&no_paths, |a| &a.shared_dirs),
        artifact.map_or(&no_paths, |a| &a.shared_files),
        d.inventory.app.user.as_deref(),
    );
    let staged = |source, sent, fallback| StagedRelease {
        source,
        sent,
        fallback,
    };
    let mut sent = 0;
    let mut fallback: Option<String>;
    match &p.source {
        Source::Present => return Ok(staged("present", 0, None)),
        Source::Reuse { from } => {
            // A copy is kept only if it verifies against the artifact's manifest; else (or
            // without a manifest to check it against) the artifact is uploaded.
            let why = match &d.artifact.manifest {
                Some(manifest) => {
                    d.out.emit(Event::Step {
                        host,
                        step: "copying identical release",
                    });
                    let copy = commands::release::reuse(
                        deploy_to,
                        from,
                        &p.release,
                        &manifest.sha256(),
                        d.inventory.app.user.as_deref().unwrap_or(""),
                    );
                    let cmd = Cmd::seq([copy, finish.clone()]);
                    let result = c.transport.exec(ExecRequest::new(&cmd, SHORT * 10)).await;
                    let unverified = crate::transport::Exit::Code(commands::exit::REUSE_UNVERIFIED);
                    match result {
                        Ok(o) if o.exit == unverified => {
                            format!("release {from} no longer matches its manifest")
                        }
                        result => {
                            check(result, "copying the identical release")?;
                            return Ok(staged("reused", 0, None));
                        }
                    }
                }
                None => format!("the artifact has no manifest to check a copy of {from} against"),
            };
            d.out.emit(Event::Note(&format!(
                "{host}: {why}; sending the whole artifact"
            )));
            fallback = Some(why);
        }
        Source::Upload => {
            fallback = delta.as_ref().err().cloned();
            if let Ok(Some(delta)) = delta {
                d.out.emit(Event::Step {
                    host,
                    step: "uploading changes",
                });
                match upload_delta(d, c, p, finish.clone(), delta, whole.codec).await {
                    Ok(n) => return Ok(staged("delta", n, None)),
                    Err(DeltaFailure::Transport(e)) => return Err(e),
                    Err(DeltaFailure::Host { sent: n, why }) => {
                        d.out.emit(Event::Note(&format!(
                            "{host}: {why}; sending the whole artifact"
                        )));
                        sent = n;
                        fallback = Some(why);
                    }
                }
            }
        }
    }
    d.out.emit(Event::Step {
        host,
        step: "uploading",
    });
    let compressed = whole.get().await?;
    let n = upload(d, c, &p.release, finish, &compressed).await?;
    Ok(staged("uploaded", sent + n, fallback))
}

fn check(result: Result<ExecOutput, ExecError>, step: &str) -> Result<ExecOutput, String> {
    match result {
        Ok(o) if o.success() => Ok(o),
        Ok(o) => Err(describe_failure(step, &o)),
        Err(e) => Err(crate::error::chain(&e)),
    }
}

/// Streams the packed artifact into `releases/<id>.partial`, verified on the host.
async fn upload(
    d: &Deploy<'_>,
    c: &Conn<'_>,
    release: &str,
    finish: Cmd,
    packed: &Compressed,
) -> Result<u64, String> {
    let file = tokio::fs::File::open(&*packed.file)
        .await
        .map_err(|e| format!("cannot open the packed artifact: {e}"))?;
    let receive = commands::release::receive(
        &d.inventory.app.deploy_to,
        release,
        &packed.upload_sha256,
        packed.codec.decompress(),
        packed.prefix.len() as u64,
    );
    let cmd = Cmd::seq([receive, finish]);
    let total = packed.upload_size();
    let data = std::io::Cursor::new(packed.prefix.clone()).chain(file);
    let (result, sent) = stream(d, c, &cmd, Box::new(data), total, false).await;
    match result {
        Ok(o) if o.success() => Ok(sent),
        Ok(o) if o.exit == crate::transport::Exit::Code(commands::exit::SHA_MISMATCH) => {
            Err(format!(
                "the artifact arrived damaged (sha256 differs after {sent} bytes); nothing was kept"
            ))
        }
        Ok(o) => Err(describe_failure("extracting and finishing the release", &o)),
        Err(e) => Err(crate::error::chain(&e)),
    }
}

/// Why a delta upload did not make the release.
enum DeltaFailure {
    /// The host could not build it exactly (or the bytes arrived damaged): send it whole.
    Host { sent: u64, why: String },
    /// The connection failed: the host failed.
    Transport(String),
}

/// Streams a delta into `releases/<id>.partial`, built from the current release and
/// verified against the new manifest on the host, then finishes the release.
async fn upload_delta(
    d: &Deploy<'_>,
    c: &Conn<'_>,
    p: &HostPlan,
    finish: Cmd,
    hd: &HostDelta,
    codec: Codec,
) -> Result<u64, DeltaFailure> {
    let delta = &hd.delta;
    let file = tokio::fs::File::open(&*delta.file).await.map_err(|e| {
        DeltaFailure::Transport(format!("cannot open the delta of the artifact: {e}"))
    })?;
    let args = commands::release::DeltaArgs {
        deploy_to: &d.inventory.app.deploy_to,
        id: &p.release,
        current: &hd.base.current,
        current_manifest: &hd.base.manifest,
        manifest: &delta.manifest_sha256,
        upload_sha256: &delta.sha256,
        decompress: codec.decompress(),
        edits_len: delta.edits_len,
        service_user: d.inventory.app.user.as_deref().unwrap_or(""),
    };
    let cmd = Cmd::seq([commands::release::delta(&args), finish]);
    let (result, sent) = stream(d, c, &cmd, Box::new(file), delta.size, true).await;
    match result {
        Ok(o) if o.success() => Ok(sent),
        Ok(o) if o.exit == crate::transport::Exit::Code(commands::exit::DELTA_FAILED) => {
            Err(DeltaFailure::Host {
                sent,
                why: "the release built from the current one did not match the new manifest".into(),
            })
        }
        Ok(o) if o.exit == crate::transport::Exit::Code(commands::exit::SHA_MISMATCH) => {
            Err(DeltaFailure::Host {
                sent,
                why: "the delta arrived damaged".into(),
            })
        }
        Ok(o) => Err(DeltaFailure::Host {
            sent,
            why: describe_failure("building the release from a delta", &o),
        }),
        Err(e) => Err(DeltaFailure::Transport(crate::error::chain(&e))),
    }
}

/// Streams `data` (`total` bytes) into `cmd` on the host, with progress events; returns the
/// command's result and the bytes sent.
async fn stream(
    d: &Deploy<'_>,
    c: &Conn<'_>,
    cmd: &Cmd,
    data: Box<dyn AsyncRead + Send + Unpin>,
    total: u64,
    delta: bool,
) -> (Result<ExecOutput, ExecError>, u64) {
    let counter = Arc::new(AtomicU64::new(0));
    let reader = Counting {
        inner: data,
        count: counter.clone(),
    };
    // Generous: keepalives notice a dead host long before this.
    let timeout = Duration::from_secs(1800 + total / (1 << 20));
    let upload = c.transport.upload(cmd, Box::new(reader), timeout);
    let progress = || Event::Progress {
        host: &c.host.name,
        sent: counter.load(Ordering::Relaxed),
        total,
        artifact: d.artifact.tar_size,
        delta,
    };
    let ticker = async {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            d.out.emit(progress());
        }
    };
    let result = tokio::select! {
        r = upload => r,
        () = ticker => unreachable!("the ticker never ends"),
    };
    // The last word, also for a stream shorter than one tick.
    d.out.emit(progress());
    (result, counter.load(Ordering::Relaxed))
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        poll
    }
}

/// Switches the hosts wave by wave (`rollout.waves`; each wave bounded by
/// `rollout.parallel`): env file, `current`, units, site, health. A host that fails is
/// switched back at once. When more hosts have failed than `rollout.max_fail` tolerates, no
/// further wave starts, and with `on_failure = "rollback"` every host switched in this run is
/// switched back too (`"halt"` leaves them). Returns the outcome and a message.
async fn switch_fleet(
    r: &mut Run<'_>,
    switch: &Switch<'_>,
    targets: &[(&Conn<'_>, &str, Option<&str>)],
) -> (Outcome, Option<String>) {
    use futures::StreamExt;
    let rollout = &r.inventory.rollout;
    let parallel = rollout.parallel.max(1);
    let n = targets.len();
    let tolerated = plan::tolerated_failures(rollout.max_fail, n);
    let waves = plan::waves(n, &r.waves);
    let on_failure = rollout.on_failure;
    // Per host: switched this run and still on the new release.
    let mut switched: Vec<bool> = vec![false; n];
    let mut failed = 0;
    let mut back_failed: Vec<String> = Vec::new();
    for (w, range) in waves.iter().enumerate() {
        if waves.len() > 1 {
            let names: Vec<&str> = targets[range.clone()]
                .iter()
                .map(|(c, _, _)| c.host.name.as_str())
                .collect();
            r.out.emit(Event::Note(&format!(
                "wave {} of {}: {}",
                w + 1,
                waves.len(),
                names.join(" ")
            )));
        }
        let results: Vec<(Touched, Result<(), String>, u64)> =
            futures::stream::iter(targets[range.clone()].iter().map(
                |(c, target, previous)| async move {
                    let started = Instant::now();
                    let mut touched = Touched::default();
                    let result = switch.activate(c, target, *previous, &mut touched).await;
                    (touched, result, started.elapsed().as_millis() as u64)
                },
            ))
            .buffered(parallel)
            .collect()
            .await;
        // A failed host goes back to what it had, now.
        let mut to_undo = Vec::new();
        for (i, (touched, result, ms)) in range.clone().zip(results) {
            let (c, target, _) = targets[i];
            r.host(&c.host.name).switch_ms = Some(ms);
            match result {
                Ok(()) => {
                    r.host(&c.host.name).current = Some(target.to_string());
                    switched[i] = true;
                }
                Err(e) => {
                    r.fail_host(&c.host.name.clone(), e);
                    failed += 1;
                    to_undo.push((i, touched));
                }
            }
        }
        let backs = futures::future::join_all(to_undo.iter().map(|(i, touched)| {
            let (c, _, previous) = targets[*i];
            let (_, release, _) = targets[*i];
            async move { (*i, switch.deactivate(c, release, previous, touched).await) }
        }))
        .await;
        for (i, back) in backs {
            record_switch_back(r, targets[i], back, &mut back_failed);
        }
        if failed > tolerated {
            let rest: usize = waves[w + 1..].iter().map(|r| r.len()).sum();
            let mut message = format!(
                "{failed} hosts failed in wave {} of {}, more than `max_fail` tolerates ({tolerated}); {rest} hosts were not touched",
                w + 1,
                waves.len()
            );
            if on_failure == crate::inventory::OnFailure::Rollback {
                let undo: Vec<usize> = (0..n).filter(|&i| switched[i]).collect();
                let everything = Touched {
                    guard: false,
                    env: switch.deploy && r.inventory.env.is_some(),
                    current: true,
                    units: !switch.templates.units.is_empty(),
                    nginx: switch.templates.nginx.is_some(),
                    compose: r.inventory.compose.is_some(),
                };
                let backs = futures::future::join_all(undo.iter().map(|&i| {
                    let (c, _, previous) = targets[i];
                    let everything = &everything;
                    let (_, release, _) = targets[i];
                    async move { (i, switch.deactivate(c, release, previous, everything).await) }
                }))
                .await;
                for (i, back) in backs {
                    switched[i] = false;
                    record_switch_back(r, targets[i], back, &mut back_failed);
                }
                message.push_str(&format!(
                    "; the {} hosts switched before were switched back",
                    undo.len()
                ));
            } else {
                let kept = switched.iter().filter(|s| **s).count();
                message.push_str(&format!(
                    "; on_failure = \"halt\": the {kept} hosts switched before keep the new release"
                ));
            }
            return finish_switch(message, &back_failed);
        }
    }
    if failed == 0 {
        return (Outcome::Deployed, None);
    }
    finish_switch(
        format!(
            "{failed} hosts failed within `max_fail` ({tolerated}) and were switched back; the others run the new release"
        ),
        &back_failed,
    )
}

fn record_switch_back(
    r: &mut Run<'_>,
    (c, _, previous): (&Conn<'_>, &str, Option<&str>),
    back: Result<(), String>,
    back_failed: &mut Vec<String>,
) {
    let name = c.host.name.clone();
    let h = r.host(&name);
    match back {
        Ok(()) => {
            h.current = previous.map(str::to_owned);
            h.rolled_back = Some(true);
        }
        Err(e) => {
            h.rolled_back = Some(false);
            let message = match h.error.take() {
                Some(first) => format!("{first}; SWITCHING BACK FAILED: {e}"),
                None => format!("SWITCHING BACK FAILED: {e}"),
            };
            r.fail_host(&name, message);
            back_failed.push(name);
        }
    }
}

fn finish_switch(message: String, back_failed: &[String]) -> (Outcome, Option<String>) {
    if back_failed.is_empty() {
        (Outcome::RolledBack, Some(message))
    } else {
        (
            Outcome::RollbackFailed,
            Some(format!(
                "{message}; switching back failed on {}: a human is needed (see each host's error for the state it is in)",
                back_failed.join(", ")
            )),
        )
    }
}

fn describe_keys(diff: &KeyDiff) -> String {
    let mut parts = Vec::new();
    for (word, keys) in [
        ("added", &diff.added),
        ("removed", &diff.removed),
        ("changed", &diff.changed),
    ] {
        if !keys.is_empty() {
            parts.push(format!("{word} {}", keys.join(", ")));
        }
    }
    if parts.is_empty() {
        "rewritten (same keys and values)".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Everything a rollback needs.
pub struct Rollback<'a> {
    pub stage: &'a str,
    pub inventory: &'a Inventory,
    pub hosts: &'a [&'a Host],
    pub connector: &'a Connector,
    pub out: &'a Output,
    pub to: Option<String>,
    pub run: &'a RunInfo,
    pub cancel: Cancel,
    pub templates: &'a Templates,
}

/// Switches the whole fleet back to an earlier release (see [`plan::rollback_target`]).
pub async fn rollback(rb: Rollback<'_>) -> DeployReport {
    let deploy_to = rb.inventory.app.deploy_to.clone();
    let r = Run::new(
        "rollback",
        rb.stage,
        rb.hosts,
        (rb.run, rb.inventory, rb.out, rb.connector),
    );
    let (mut r, conns) = match connect_and_lock(r, rb.hosts, rb.connector).await {
        Ok(ok) => ok,
        Err(report) => return report,
    };
    let trees = read_trees(&conns, &deploy_to).await;
    let mut ok_trees = Vec::new();
    for (c, tree) in conns.iter().zip(trees) {
        match tree {
            Ok(t) => ok_trees.push((c.host.name.as_str(), t)),
            Err(e) => r.fail_host(&c.host.name.clone(), e),
        }
    }
    if ok_trees.len() != conns.len() {
        return r
            .close(
                &conns,
                Outcome::Failed,
                Some("could not read every host; nothing was switched".into()),
            )
            .await;
    }
    // Only releases that went live and passed their health gate are rollback targets;
    // what passed where is read whole, and a host where it cannot be read stops the run.
    let mut passed = Vec::new();
    let mut unreadable = false;
    for (c, p) in conns
        .iter()
        .zip(releases::read_passed(&conns, &deploy_to).await)
    {
        match p {
            Ok(p) => passed.push(p),
            Err(e) => {
                r.fail_host(&c.host.name.clone(), e.message);
                unreadable = true;
            }
        }
    }
    if unreadable {
        return r
            .close(
                &conns,
                Outcome::Failed,
                Some(
                    "could not read which releases passed on every host; nothing was switched"
                        .into(),
                ),
            )
            .await;
    }
    let refs: Vec<(&str, &ReleaseTree, &BTreeSet<String>)> = ok_trees
        .iter()
        .zip(&passed)
        .map(|((h, t), p)| (*h, t, p))
        .collect();
    let target = match plan::rollback_target(&refs, rb.to.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            return r
                .close(&conns, Outcome::Failed, Some(crate::error::chain(&e)))
                .await;
        }
    };
    r.report.release = Some(target.clone());
    if rb.cancel.is_cancelled() {
        return r
            .close(&conns, Outcome::Interrupted, Some(INTERRUPTED.into()))
            .await;
    }
    for (h, t) in &ok_trees {
        let host = r.host(h);
        host.previous = t.current.clone();
    }
    let targets: Vec<(&Conn<'_>, &str, Option<&str>)> = conns
        .iter()
        .zip(&ok_trees)
        .map(|(c, (_, t))| (c, target.as_str(), t.current.as_deref()))
        .collect();
    let switch = Switch {
        inventory: rb.inventory,
        templates: rb.templates,
        out: rb.out,
        deploy: false,
        token: &rb.run.token,
        env_staged: Default::default(),
        migrate_host: None,
        guard: None,
    };
    let (outcome, message) = switch_fleet(&mut r, &switch, &targets).await;
    let outcome = match outcome {
        Outcome::Deployed => {
            // What each host ran before is what the operator turned away from: no default
            // rollback target any more, whatever history says of its deploy.
            let deploy_to = deploy_to.as_str();
            let forgets = targets
                .iter()
                .filter_map(|(c, target, was)| was.filter(|w| w != target).map(|w| (c, w)))
                .map(|(c, was)| async move {
                    let cmd = commands::passed::forget(deploy_to, was);
                    match c.transport.exec(ExecRequest::new(&cmd, SHORT)).await {
                        Ok(o) if o.success() => None,
                        _ => Some(format!(
                            "{}: could not record {was} as rolled back from",
                            c.host.name
                        )),
                    }
                });
            for note in futures::future::join_all(forgets)
                .await
                .into_iter()
                .flatten()
            {
                rb.out.emit(Event::Note(&note));
            }
            for c in &conns {
                rb.out.emit(Event::HostDone {
                    host: &c.host.name,
                    ok: true,
                    summary: &format!("current -> {target}"),
                });
            }
            Outcome::Deployed
        }
        other => other,
    };
    r.close(&conns, outcome, message).await
}

pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
