//! The fleet pipeline of `shipit deploy` and `shipit rollback`: connect, lock (all or
//! nothing), read facts, plan, stage every host, switch, clean up, record history, unlock.
//!
//! Invariants: nothing is switched anywhere unless every host staged; a failed switch rolls
//! back the hosts already switched; the locks this run took are released on every path out
//! (success, failure, Ctrl-C/SIGTERM), and only this run's locks; every host's outcome is
//! reported.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use tokio::sync::watch;

use super::Ctx;
use super::facts::{plan_deploy, read_deploy_facts, read_trees, rendered};
use super::lock::{self, LockState, RunInfo};
use super::phases::execute_plan;
use super::stage::Templates;
use super::switch::Guard;
use super::upload::Uploads;
use crate::artifact::{Codec, Packed};
use crate::clock::{now_millis, now_unix};
use crate::commands::{self};
use crate::error::code;
use crate::execute::{RemoteError, timeout};
use crate::inventory::{Host, Inventory};
use crate::ops::history::{self, Record};
use crate::ops::releases;
pub use crate::output::report::deploy::Outcome;
use crate::output::report::deploy::{DeployReport, HostDeploy};
use crate::output::{Event, Output};
use crate::plan::facts::ReleaseTree;
use crate::plan::shard::{self, OnceSteps};
use crate::plan::{self, Step};
use crate::shell::Secret;
use crate::transport::ExecRequest;
use crate::transport::fleet::{self, Conn, Connector};

pub(super) const INTERRUPTED: &str = "interrupted before the switch; nothing was switched";

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

/// Everything a deploy needs, resolved by the caller.
pub struct Deploy<'a> {
    pub stage: &'a str,
    pub inventory: &'a Inventory,
    pub hosts: &'a [&'a Host],
    pub connector: &'a Connector,
    pub out: &'a Output,
    pub artifact: &'a Packed,
    pub templates: &'a Templates,
    /// The selected host that runs backups, migrations and `once` hooks; `None` when it is
    /// not among `hosts` (another shard holds it).
    pub migrate_host: Option<String>,
    /// `--release-id`: deploy under this id (checked by the caller against the artifact)
    /// instead of minting one; refused on a host that has a newer release.
    pub release_id: Option<String>,
    /// `--once-only` / `--skip-once`.
    pub once: OnceSteps,
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
pub(super) struct Run<'a> {
    pub(super) report: DeployReport,
    /// For reconnecting to a host whose connection died, to clean up.
    connector: &'a Connector,
    started: Instant,
    run: &'a RunInfo,
    inventory: &'a Inventory,
    out: &'a Output,
    /// The git commit of the release the run goes to, for history.
    git: Option<String>,
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
                restored: None,
                once: Vec::new(),
                hosts: hosts
                    .iter()
                    .map(|h| HostDeploy {
                        host: h.name.clone(),
                        ..Default::default()
                    })
                    .collect(),
            },
            started: Instant::now(),
            run: d.0,
            inventory: d.1,
            out: d.2,
            git: None,
        }
    }

    pub(super) fn host(&mut self, name: &str) -> &mut HostDeploy {
        self.report
            .hosts
            .iter_mut()
            .find(|h| h.host == name)
            .expect("every selected host has an entry")
    }

    pub(super) fn fail_host(&mut self, error: RemoteError) {
        let name = error.host.clone();
        self.out.emit(Event::HostDone {
            host: &name,
            ok: false,
            summary: &error.message,
        });
        self.host(&name).error = Some(error);
    }

    fn end(mut self, outcome: Outcome, message: Option<String>) -> DeployReport {
        self.report.outcome = outcome;
        self.report.exit_code = outcome.exit_code();
        self.report.message = message;
        self.report.duration_ms = self.started.elapsed().as_millis() as u64;
        let release = self.report.release.clone();
        let once_only = self.report.action == "once";
        for h in &mut self.report.hosts {
            h.outcome = match (h.rolled_back, &h.error, &h.current) {
                (Some(true), _, _) => "switched_back",
                (Some(false), _, _) => "switch_back_failed",
                (None, Some(_), _) => "failed",
                (None, None, Some(c)) if Some(c) == release.as_ref() => "switched",
                // `--once-only`: staged and migrated is all it was asked to do.
                (None, None, _) if once_only && outcome == Outcome::Deployed => "staged",
                _ => "not_switched",
            };
            h.ok = matches!(h.outcome, "switched" | "staged");
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
            git: self.git.clone(),
            outcome: outcome.history_word().to_owned(),
            switched_back: outcome.switched_back().map(str::to_owned),
            user: self.run.user.clone(),
            machine: self.run.machine.clone(),
            command: self.run.command.clone(),
            duration_s: (self.started.elapsed().as_millis() as f64) / 1000.0,
            ci_url: self.run.ci_url.clone(),
            run: self.run.token.clone(),
            hosts: self.report.hosts.iter().map(|h| h.host.clone()).collect(),
            restored: self.report.restored.as_ref().map(|r| r.backup.clone()),
            live_ports: self
                .report
                .hosts
                .iter()
                .filter_map(|h| Some((h.host.clone(), h.live_port?)))
                .collect(),
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
        // Every host at once: at 100 hosts, one after the other took a second. One command
        // per host records the history, drops what this run staged and did not install (no
        // other run may read it) and releases the lock; with `ssh.sudo` the staged env file
        // is root's, removed by a root command first.
        let discard = self
            .inventory
            .env
            .as_ref()
            .map(|env| commands::envfile::discard(&env.path, &self.run.token));
        let (as_root, as_user): (Vec<&Conn<'_>>, Vec<&Conn<'_>>) = live
            .iter()
            .partition(|c| c.transport.sudo_login().is_some());
        if let Some(cmd) = &discard {
            let discards = as_root.iter().map(|c| {
                c.transport
                    .exec(ExecRequest::new(cmd, timeout::SHORT).as_root())
            });
            futures::future::join_all(discards).await;
        }
        let (token, redactor) = (&self.run.token, &self.run.redactor);
        let (users, roots) = futures::join!(
            history::append_and_release(
                &as_user,
                deploy_to,
                &entry,
                redactor,
                token,
                discard.as_ref()
            ),
            history::append_and_release(&as_root, deploy_to, &entry, redactor, token, None),
        );
        let mut unrecorded: Vec<String> = users.into_iter().chain(roots).collect();
        let recorded: Vec<&str> = live.iter().map(|c| c.host.name.as_str()).collect();
        unrecorded.extend(
            conns
                .iter()
                .filter(|c| !recorded.contains(&c.host.name.as_str()))
                .map(|c| c.host.name.clone()),
        );
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

/// Connects to and locks every host. On success the caller holds every lock, and has each
/// host's release tree as the lock's command read it (`None`: read it again, for its
/// error); otherwise the locks taken are released and the finished report is returned.
async fn connect_and_lock<'r, 'h>(
    r: Run<'r>,
    hosts: &[&'h Host],
    connector: &Connector,
) -> Result<(Run<'r>, Vec<Conn<'h>>, Vec<Option<String>>), DeployReport> {
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
            r.fail_host(RemoteError::new(
                &host.name,
                "connect",
                crate::error::chain(&e),
            ));
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
        for check in checks {
            if let Err(e) = check {
                r.fail_host(e);
            }
        }
        fleet::close_all(&conns).await;
        return Err(r.end(
            Outcome::Failed,
            Some(format!(
                "the preflight failed on {unsafe_hosts} of {} hosts (unsafe paths, or no sudo); nothing was changed",
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
    // The release tree is read in the lock's own command: one round trip fewer per host.
    let read_tree = crate::plan::facts::releases(deploy_to);
    let (states, trees): (Vec<LockState>, Vec<Option<String>>) = lock::acquire_all_then(
        &conns,
        deploy_to,
        inventory.env.as_ref().map(|e| e.path.as_str()),
        r.run,
        &r.run.owner(),
        Some(&read_tree),
    )
    .await
    .into_iter()
    .unzip();
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
            r.fail_host(RemoteError::new(&name, "lock", problem));
        }
    }
    if taken.len() == conns.len() {
        return Ok((r, conns, trees));
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

pub async fn deploy(d: Deploy<'_>) -> DeployReport {
    let deploy_to = d.inventory.app.deploy_to.clone();
    // A `--once-only` run switches nothing: history must not count its release as one
    // that went live (`rollback` picks its targets from `deploy` lines).
    let action = match d.once {
        OnceSteps::Only => "once",
        _ => "deploy",
    };
    let mut r = Run::new(
        action,
        d.stage,
        d.hosts,
        (d.run, d.inventory, d.out, d.connector),
    );
    r.report.artifact_sha256 = Some(d.artifact.sha256.clone());
    r.git = d.git.clone();

    // A run that stops before anything was compressed still says how big the artifact is.
    let unsent = |mut report: DeployReport| {
        report.artifact_bytes = Some(d.artifact.tar_size);
        report
    };
    let (mut r, conns, trees) = match connect_and_lock(r, d.hosts, d.connector).await {
        Ok(ok) => ok,
        Err(report) => return unsent(report),
    };

    // Facts and plan: one release id for the whole fleet, after every id already there.
    let facts = match read_deploy_facts(&conns, trees, d.inventory, d.artifact).await {
        Ok(facts) => facts,
        Err(errors) => {
            for e in errors {
                r.fail_host(e);
            }
            let message = "could not read every host; nothing was switched";
            return unsent(r.close(&conns, Outcome::Failed, Some(message.into())).await);
        }
    };
    if let Some(id) = &d.release_id {
        let mut refused = 0;
        for (c, tree) in conns.iter().zip(&facts.trees) {
            let newer = shard::newer_releases(id, tree);
            if !newer.is_empty() {
                refused += 1;
                r.fail_host(RemoteError::new(
                    &c.host.name,
                    "release",
                    format!(
                        "`{}` already has {} newer than `--release-id {id}`: a release id must sort after every release on the hosts; plan a new one (`shipit plan --json`)",
                        c.host.name,
                        newer.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        if refused > 0 {
            let message =
                format!("{refused} hosts have a release newer than `{id}`; nothing was changed");
            return unsent(r.close(&conns, Outcome::Failed, Some(message)).await);
        }
    }
    let hosts: Vec<&Host> = conns.iter().map(|c| c.host).collect();
    let plan = plan_deploy(
        &hosts,
        &facts,
        d.inventory,
        d.templates,
        d.artifact,
        d.env_content.is_some(),
        d.now_unix,
        d.waves.as_deref(),
        d.migrate_host.as_deref(),
        (d.release_id.as_deref(), d.once),
    );
    let manifests: BTreeMap<String, std::sync::Arc<crate::artifact::manifest::Manifest>> = facts
        .trees
        .iter()
        .zip(&facts.manifests)
        .filter_map(|(t, m)| Some((t.manifest.clone()?, m.clone()?.ok()?)))
        .collect();
    let shared = crate::plan::build::shared_paths(d.inventory);
    let uploads = Uploads::new(d.artifact, manifests, shared);
    let guard_line = {
        let mut entry = r.history(Outcome::RolledBack, None);
        entry.action = "guard".to_owned();
        entry.outcome = "reverted".to_owned();
        entry.release = Some(plan.release.clone());
        entry.finished = None;
        entry.message = Some(
            "the deployer did not confirm in time: the guard switched this host back".to_owned(),
        );
        entry
    };
    let ctx = Ctx {
        inventory: d.inventory,
        templates: d.templates,
        out: d.out,
        token: &d.run.token,
        release: &plan.release,
        deploy: true,
        artifact: Some(d.artifact),
        uploads: Some(&uploads),
        facts: conns
            .iter()
            .map(|c| c.host.name.clone())
            .zip(facts.trees)
            .collect(),
        revision: commands::release::revision_text(&d.artifact.sha256, d.git.as_deref()),
        env_content: d.env_content.as_ref(),
        guard: Some(Guard {
            history: guard_line,
            redactor: d.run.redactor.clone(),
        }),
        now_unix: d.now_unix,
    };
    for c in &conns {
        r.host(&c.host.name).codec = Some(ctx.codec(c));
    }
    let _ = &deploy_to;
    let (outcome, message) = execute_plan(&mut r, &ctx, &conns, &plan, &d.cancel).await;
    let mut report = r.close(&conns, outcome, message).await;
    // The sizes of a whole upload, for comparison with what was sent.
    report.artifact_bytes = Some(uploads.size(Codec::Zstd));
    for h in &mut report.hosts {
        if let Some(codec) = h.codec.take() {
            h.artifact_bytes = Some(uploads.size(codec));
        }
    }
    report
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
    /// A database restore in the same run (`--restore-db`, `shipit restore`).
    pub restore: Option<RestoreDb<'a>>,
}

/// The database restore of a rollback run.
pub struct RestoreDb<'a> {
    /// `None`: the backup taken before the current release's migrations (`rollback
    /// --restore-db`); a name: that backup (`shipit restore`), the release kept unless `to`.
    pub backup: Option<String>,
    /// The selected host that restores (the migrate host).
    pub host: String,
    /// Asked before anything changes, with what is about to happen; `false` stops the run.
    pub confirm: &'a (dyn Fn(&str) -> bool + Sync),
}

/// Switches the whole fleet back to an earlier release (see [`plan::rollback_target`]);
/// with a restore, restores a database backup first, in the same run.
pub async fn rollback(rb: Rollback<'_>) -> DeployReport {
    let deploy_to = rb.inventory.app.deploy_to.clone();
    let action = match &rb.restore {
        Some(RestoreDb {
            backup: Some(_), ..
        }) => "restore",
        _ => "rollback",
    };
    let r = Run::new(
        action,
        rb.stage,
        rb.hosts,
        (rb.run, rb.inventory, rb.out, rb.connector),
    );
    let (mut r, conns, trees) = match connect_and_lock(r, rb.hosts, rb.connector).await {
        Ok(ok) => ok,
        Err(report) => return report,
    };
    let trees = read_trees(&conns, trees, &deploy_to).await;
    let mut ok_trees = Vec::new();
    for tree in trees {
        match tree {
            Ok(t) => ok_trees.push(t),
            Err(e) => r.fail_host(e),
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
    for p in releases::read_passed(&conns, &deploy_to).await {
        match p {
            Ok(p) => passed.push(p),
            Err(e) => {
                r.fail_host(e);
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
    let refs: Vec<(&str, &ReleaseTree, &BTreeSet<String>)> = conns
        .iter()
        .zip(&ok_trees)
        .zip(&passed)
        .map(|((c, t), p)| (c.host.name.as_str(), t, p))
        .collect();
    let target = match &rb.restore {
        // `shipit restore` without `--release`: the release stays, the same on every host.
        Some(RestoreDb {
            backup: Some(_), ..
        }) if rb.to.is_none() => {
            let currents: BTreeSet<Option<&str>> =
                ok_trees.iter().map(|t| t.current.as_deref()).collect();
            match currents.into_iter().collect::<Vec<_>>()[..] {
                [Some(one)] => Ok(one.to_owned()),
                [None] => Err("nothing is deployed yet: deploy first".to_owned()),
                _ => Err(format!(
                    "the hosts run different releases ({}): say which one they run after the restore with `--release ID`",
                    refs.iter()
                        .map(|(h, t, _)| format!("{h}: {}", t.current.as_deref().unwrap_or("none")))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        _ => plan::rollback_target(&refs, rb.to.as_deref()).map_err(|e| crate::error::chain(&e)),
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            r.report.release = None;
            return r.close(&conns, Outcome::Failed, Some(e)).await;
        }
    };
    r.report.release = Some(target.clone());
    r.git = ok_trees.iter().find_map(|t| t.git.get(&target).cloned());
    let restore_step = match &rb.restore {
        None => None,
        Some(req) => {
            match restore_step(
                rb.stage,
                rb.inventory,
                rb.out,
                &conns,
                &ok_trees,
                req,
                &target,
            )
            .await
            {
                Ok(step) => Some((req.host.clone(), step)),
                Err(e) => {
                    // The reason is the run's message: nothing else happened.
                    let message = format!("{}; nothing was changed", e.message);
                    r.fail_host(e);
                    return r.close(&conns, Outcome::Failed, Some(message)).await;
                }
            }
        }
    };
    if let (Some(req), Some((host, Step::Restore { backup, .. }))) = (&rb.restore, &restore_step) {
        let switch = match ok_trees
            .iter()
            .all(|t| t.current.as_deref() == Some(&target))
        {
            true => format!("restart the app on {target}"),
            false => format!("switch every host to {target}"),
        };
        let question = format!(
            "restore `{backup}` on `{host}` into the database of stage `{}` (everything written since it was taken is lost), then {switch}?",
            rb.stage
        );
        if !(req.confirm)(&question) {
            return r
                .close(
                    &conns,
                    Outcome::Failed,
                    Some("not confirmed: nothing was changed".into()),
                )
                .await;
        }
    }
    if rb.cancel.is_cancelled() {
        return r
            .close(&conns, Outcome::Interrupted, Some(INTERRUPTED.into()))
            .await;
    }
    let hosts: Vec<(&Host, &ReleaseTree)> =
        conns.iter().map(|c| c.host).zip(ok_trees.iter()).collect();
    let plan = plan::build::rollback(
        rb.inventory,
        &rendered(rb.templates),
        &hosts,
        &target,
        None,
        restore_step,
    );
    let ctx = Ctx {
        inventory: rb.inventory,
        templates: rb.templates,
        out: rb.out,
        token: &rb.run.token,
        release: &plan.release,
        deploy: false,
        artifact: None,
        uploads: None,
        facts: conns
            .iter()
            .map(|c| c.host.name.clone())
            .zip(ok_trees.iter().cloned())
            .collect(),
        revision: String::new(),
        env_content: None,
        guard: None,
        now_unix: crate::clock::now_unix(),
    };
    let (outcome, message) = execute_plan(&mut r, &ctx, &conns, &plan, &rb.cancel).await;
    if r.report.restored.is_some() {
        super::restore::forget_stopped(&ctx, &conns).await;
    }
    r.close(&conns, outcome, message).await
}

/// Finds and checks the backup a restore run restores, on the migrate host; changes nothing.
#[allow(clippy::too_many_arguments)]
async fn restore_step(
    stage: &str,
    inventory: &Inventory,
    out: &Output,
    conns: &[Conn<'_>],
    trees: &[ReleaseTree],
    req: &RestoreDb<'_>,
    target: &str,
) -> Result<Step, RemoteError> {
    let Some(i) = conns.iter().position(|c| c.host.name == req.host) else {
        unreachable!("the migrate host is among the selected ones");
    };
    let (c, tree) = (&conns[i], &trees[i]);
    let fail = |message: String| RemoteError::new(&c.host.name, "restore", message);
    let Some(current) = tree.current.clone() else {
        return Err(fail(format!(
            "nothing is deployed on `{}` yet: there is no database release to restore for",
            c.host.name
        )));
    };
    let name = match &req.backup {
        Some(name) => name.clone(),
        None => {
            let listed = crate::ops::backup::list(stage, c, inventory)
                .await
                .map_err(fail)?;
            super::restore::for_rollback(stage, &listed.backups, &current, target)
                .map_err(fail)?
                .name
                .clone()
        }
    };
    let cwd = format!("{}/releases/{current}", inventory.app.deploy_to);
    let vars = super::hooks::task_vars(inventory, &c.host.name, &current, None);
    let checked = super::restore::check(c, inventory, &cwd, &vars, &name).await?;
    if !checked.recorded {
        out.emit(crate::output::Event::Note(&format!(
            "{}: `{name}` has no record (`{name}.meta`: made before shipit recorded backups): no sha256 to check it against, only `backup.verify`",
            c.host.name
        )));
    }
    let maintenance =
        inventory.migrate.as_ref().is_some_and(|m| m.maintenance) && inventory.nginx.is_some();
    Ok(Step::Restore {
        backup: checked.name,
        sha256: checked.sha256,
        live: checked.live,
        stop: plan::build::restore_stops(inventory),
        maintenance,
    })
}

#[cfg(test)]
mod orchestration;
