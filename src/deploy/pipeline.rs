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

use super::envfile::KeyDiff;
use super::lock::{self, LockState, RunInfo};
use super::stage::Templates;
use super::switch::{self, Guard};
use super::upload::{self, Uploads};
use super::{Ctx, HostState};
use crate::artifact::{Codec, Packed};
use crate::clock::{now_millis, now_unix};
use crate::commands::{self, exit};
use crate::error::code;
use crate::execute::{self, RemoteError, timeout};
use crate::inventory::{Host, Inventory};
use crate::ops::history::{self, Record};
use crate::ops::releases;
pub use crate::output::report::deploy::Outcome;
use crate::output::report::deploy::{DeployReport, HostDeploy, StepReport, StepStatus};
use crate::output::{Event, Output};
use crate::plan::build::{ArtifactFacts, DeployInputs, HostFacts, Rendered};
use crate::plan::facts::{self, ReleaseTree};
use crate::plan::{self, HostSteps, Phase, Plan, Step, Undo};
use crate::shell::Secret;
use crate::transport::ExecRequest;
use crate::transport::fleet::{self, Conn, Connector};

const INTERRUPTED: &str = "interrupted before the switch; nothing was switched";

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
        }
    }

    fn host(&mut self, name: &str) -> &mut HostDeploy {
        self.report
            .hosts
            .iter_mut()
            .find(|h| h.host == name)
            .expect("every selected host has an entry")
    }

    fn fail_host(&mut self, error: RemoteError) {
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
                .map(|c| c.transport.exec(ExecRequest::new(&cmd, timeout::SHORT)));
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
            r.fail_host(RemoteError::new(&name, "lock", problem));
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
pub(crate) async fn read_trees(
    conns: &[Conn<'_>],
    deploy_to: &str,
) -> Vec<Result<ReleaseTree, RemoteError>> {
    let cmd = facts::releases(deploy_to);
    let runs = conns.iter().map(|c| {
        let cmd = &cmd;
        async move {
            let what = "reading the release tree";
            execute::run(c, "facts", what, cmd, timeout::SHORT)
                .await
                .map(|o| facts::parse_releases(&o.stdout.text()))
        }
    });
    futures::future::join_all(runs).await
}

/// What the templates of a run render, by name.
pub(crate) fn rendered(templates: &Templates) -> Rendered {
    Rendered {
        units: templates.units.iter().map(|(u, _, _)| u.clone()).collect(),
        site: templates.nginx.as_ref().map(|(s, _, _)| s.clone()),
        compose: templates.compose.is_some(),
    }
}

/// Whether a delta upload may be planned at all: deltas on, and an artifact that has a
/// manifest to build one from.
pub(crate) fn deltas_wanted(inventory: &Inventory, artifact: &Packed) -> bool {
    inventory.artifact.as_ref().is_some_and(|a| a.delta) && artifact.manifest.is_some()
}

/// The facts a deploy plan is built from, read from the hosts without changing anything:
/// each host's release tree and, where a delta may go, its current release's manifest.
pub(crate) struct DeployFacts {
    pub trees: Vec<ReleaseTree>,
    pub manifests: Vec<Option<Result<std::sync::Arc<crate::artifact::manifest::Manifest>, String>>>,
}

pub(crate) async fn read_deploy_facts(
    conns: &[Conn<'_>],
    inventory: &Inventory,
    artifact: &Packed,
) -> Result<DeployFacts, Vec<RemoteError>> {
    let deploy_to = &inventory.app.deploy_to;
    let mut trees = Vec::new();
    let mut errors = Vec::new();
    for tree in read_trees(conns, deploy_to).await {
        match tree {
            Ok(t) => trees.push(t),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let refs: Vec<&ReleaseTree> = trees.iter().collect();
    let wanted = deltas_wanted(inventory, artifact);
    let conns: Vec<&Conn<'_>> = conns.iter().collect();
    let manifests = upload::read_manifests(&conns, &refs, deploy_to, wanted).await;
    Ok(DeployFacts { trees, manifests })
}

/// The plan of a deploy from the facts: the same function for `shipit plan` and
/// `shipit deploy`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_deploy(
    hosts: &[&Host],
    facts: &DeployFacts,
    inventory: &Inventory,
    templates: &Templates,
    artifact: &Packed,
    env: bool,
    now_unix: u64,
    waves: Option<&[crate::inventory::Amount]>,
    migrate_host: Option<&str>,
) -> Plan {
    let hosts: Vec<HostFacts<'_>> = hosts
        .iter()
        .zip(&facts.trees)
        .zip(&facts.manifests)
        .map(|((host, tree), manifest)| HostFacts {
            host,
            tree,
            current_manifest: manifest.clone(),
        })
        .collect();
    let rendered = rendered(templates);
    let inputs = DeployInputs {
        inventory,
        rendered: &rendered,
        artifact: ArtifactFacts {
            sha256: &artifact.sha256,
            tar_size: artifact.tar_size,
            manifest: artifact.manifest.as_deref(),
        },
        env: env && inventory.env.is_some(),
        now_unix,
        waves,
        migrate_host,
    };
    plan::build::deploy(&inputs, &hosts)
}

pub async fn deploy(d: Deploy<'_>) -> DeployReport {
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
    let facts = match read_deploy_facts(&conns, d.inventory, d.artifact).await {
        Ok(facts) => facts,
        Err(errors) => {
            for e in errors {
                r.fail_host(e);
            }
            return r
                .close(
                    &conns,
                    Outcome::Failed,
                    Some("could not read every host; nothing was switched".into()),
                )
                .await;
        }
    };
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
    );
    let manifests: BTreeMap<String, std::sync::Arc<crate::artifact::manifest::Manifest>> = facts
        .trees
        .iter()
        .zip(&facts.manifests)
        .filter_map(|(t, m)| Some((t.manifest.clone()?, m.clone()?.ok()?)))
        .collect();
    let shared = d
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
    let uploads = Uploads::new(d.artifact, manifests, shared);
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

/// How one host's steps of one phase went.
#[derive(Default)]
struct PhaseRun {
    /// (index in the host's steps, status, ms, what it learned)
    ran: Vec<(usize, StepStatus, u64, execute::Done)>,
    error: Option<RemoteError>,
    /// What putting the host back must undo: the undos of the steps that started and
    /// changed something, in order.
    undos: Vec<Undo>,
    ms: u64,
}

/// Runs `host`'s steps of `phase` in order on `c`, up to the first failure.
async fn run_phase(
    ctx: &Ctx<'_>,
    c: &Conn<'_>,
    host: &HostSteps,
    phase: Phase,
    state: &mut HostState,
) -> PhaseRun {
    let started = Instant::now();
    let mut run = PhaseRun::default();
    let mut touched: Vec<&Step> = Vec::new();
    for (i, step) in host.steps.iter().enumerate() {
        if step.phase() != phase {
            continue;
        }
        let t = Instant::now();
        // A step counts as touched once it starts: it may have changed the host before
        // it failed.
        touched.push(step);
        let result = execute::step(ctx, c, host, step, state).await;
        let ms = t.elapsed().as_millis() as u64;
        match result {
            Ok(done) => {
                if done.skipped {
                    touched.pop();
                }
                let status = if done.skipped {
                    StepStatus::Skipped
                } else {
                    StepStatus::Ok
                };
                run.ran.push((i, status, ms, done));
            }
            Err(e) => {
                if matches!(step, Step::InstallEnv { .. }) && e.is(exit::ENV_STAGING_GONE) {
                    // Nothing was changed, and what `.shipit/previous` holds may be another
                    // run's by now: nothing to put back.
                    touched.pop();
                }
                if matches!(step, Step::Confirm { .. })
                    && (e.is(exit::GUARD_FIRED) || e.is(exit::GUARD_DISARMED))
                {
                    // The guard already put the host back, or another run owns it now.
                    touched.clear();
                }
                run.ran
                    .push((i, StepStatus::Failed, ms, execute::Done::default()));
                run.error = Some(e);
                break;
            }
        }
    }
    run.undos = plan::step::undo_order(touched);
    run.ms = started.elapsed().as_millis() as u64;
    run
}

impl Run<'_> {
    /// Sets up the report of every host from the plan: its steps, not run yet.
    fn planned(&mut self, plan: &Plan) {
        self.report.release = Some(plan.release.clone());
        self.report.once = plan.once.iter().map(StepReport::planned).collect();
        for hs in &plan.hosts {
            let h = self.host(&hs.host);
            h.previous = hs.previous.clone();
            h.steps = hs.steps.iter().map(StepReport::planned).collect();
        }
    }

    /// Records how a host's phase went (not its error: the caller decides how to report it).
    fn record(&mut self, host: &str, run: &PhaseRun) {
        let h = self.host(host);
        for (i, status, ms, done) in &run.ran {
            let s = &mut h.steps[*i];
            s.status = *status;
            s.duration_ms = Some(*ms);
            if let Some(src) = &done.sourced {
                h.source = Some(src.source.to_owned());
                h.bytes_sent = src.sent;
                h.delta_fallback = src.fallback.clone();
                if matches!(s.step, "reuse" | "delta") && src.source == "uploaded" {
                    s.outcome = Some(format!(
                        "sent the whole artifact instead: {}",
                        src.fallback.as_deref().unwrap_or("it could not be made")
                    ));
                }
            }
            if done.env_keys.is_some() {
                h.env_keys = done.env_keys.clone();
            }
        }
    }
}

/// Executes `plan` on `conns` (connected and locked, in the plan's host order): every host
/// staged (or nothing is switched), the once steps on the migrate host, the switch wave by
/// wave, then the finish steps. Returns the outcome and a message.
async fn execute_plan(
    r: &mut Run<'_>,
    ctx: &Ctx<'_>,
    conns: &[Conn<'_>],
    plan: &Plan,
    cancel: &Cancel,
) -> (Outcome, Option<String>) {
    r.planned(plan);
    let mut states: Vec<HostState> = conns.iter().map(|_| HostState::default()).collect();

    // Stage every host; a Ctrl-C here stops before anything is switched.
    let parallel = ctx.inventory.rollout.parallel.max(1);
    let stage_all = {
        use futures::StreamExt;
        let work = conns
            .iter()
            .zip(&plan.hosts)
            .zip(states.iter_mut())
            .map(|((c, h), state)| run_phase(ctx, c, h, Phase::Stage, state));
        futures::stream::iter(work)
            .buffered(parallel)
            .collect::<Vec<PhaseRun>>()
    };
    let staged = tokio::select! {
        staged = stage_all => Some(staged),
        () = cancel.cancelled() => None,
    };
    let Some(staged) = staged else {
        ctx.note("interrupted: stopping before any host is switched");
        return (Outcome::Interrupted, Some(INTERRUPTED.into()));
    };
    let mut failures = 0;
    for (hs, run) in plan.hosts.iter().zip(staged) {
        r.record(&hs.host, &run);
        if hs.steps.iter().any(|s| s.phase() == Phase::Stage) {
            r.host(&hs.host).stage_ms = Some(run.ms);
        }
        if let Some(diff) = &r.host(&hs.host).env_keys {
            let note = format!("{}: env file {}", hs.host, describe_keys(diff));
            ctx.note(&note);
        }
        if let Some(e) = run.error {
            r.fail_host(e);
            failures += 1;
        }
    }
    if failures > 0 {
        return (
            Outcome::Failed,
            Some(format!(
                "{failures} hosts failed to stage; nothing was switched"
            )),
        );
    }
    if cancel.is_cancelled() {
        return (Outcome::Interrupted, Some(INTERRUPTED.into()));
    }

    // Once, on the migrate host: a verified backup, then the migrations. Not interruptible:
    // a migration cut in half is worse than one that finishes; the lock is held throughout.
    if let Some(m) = &plan.migrate_host
        && let Some(i) = conns.iter().position(|c| &c.host.name == m)
    {
        let (c, hs) = (&conns[i], &plan.hosts[i]);
        for (k, step) in plan.once.iter().enumerate() {
            let t = Instant::now();
            let result = execute::step(ctx, c, hs, step, &mut states[i]).await;
            let report = &mut r.report.once[k];
            report.duration_ms = Some(t.elapsed().as_millis() as u64);
            match result {
                Ok(done) => {
                    report.status = StepStatus::Ok;
                    if let Some(b) = done.backup {
                        r.report.backup = Some(b);
                    }
                    if matches!(step, Step::Migrate { .. }) {
                        r.report.migrated_on = Some(c.host.name.clone());
                    }
                }
                Err(e) => {
                    report.status = StepStatus::Failed;
                    let message = match step {
                        Step::Migrate { .. } => format!("{e}; nothing was switched"),
                        _ => e.message.clone(),
                    };
                    r.fail_host(e);
                    return (Outcome::Failed, Some(message));
                }
            }
        }
        if cancel.is_cancelled() {
            return (
                Outcome::Interrupted,
                Some(
                    "interrupted before the switch (after the migrations); nothing was switched"
                        .into(),
                ),
            );
        }
    }

    // Switch. Not interruptible: a half-switched fleet is worse than a finished one.
    let (outcome, message) = switch_fleet(r, ctx, conns, plan, &mut states).await;
    if outcome != Outcome::Deployed {
        return (outcome, message);
    }

    // Finish: cleanup; a failed cleanup is worth a note, not a failure (the release is live).
    let finishes = conns
        .iter()
        .zip(&plan.hosts)
        .zip(states.iter_mut())
        .map(|((c, hs), state)| async move { run_phase(ctx, c, hs, Phase::Finish, state).await });
    let finished = futures::future::join_all(finishes).await;
    let mut notes = Vec::new();
    for (hs, run) in plan.hosts.iter().zip(finished) {
        r.record(&hs.host, &run);
        match run.error {
            Some(e) => notes.push(format!("{}: {e}", hs.host)),
            None => {
                if let Some(Step::Prune { releases }) =
                    hs.steps.iter().find(|s| matches!(s, Step::Prune { .. }))
                {
                    r.host(&hs.host).pruned = releases.clone();
                }
            }
        }
    }
    for hs in &plan.hosts {
        ctx.out.emit(Event::HostDone {
            host: &hs.host,
            ok: true,
            summary: &format!("current -> {}", plan.release),
        });
    }
    (
        Outcome::Deployed,
        (!notes.is_empty()).then(|| notes.join("; ")),
    )
}

/// Switches the hosts wave by wave (the plan's waves; each wave bounded by
/// `rollout.parallel`): the switch steps of each host. A host that fails is switched back
/// at once. When more hosts have failed than `rollout.max_fail` tolerates, no further wave
/// starts, and with `on_failure = "rollback"` every host switched in this run is switched
/// back too (`"halt"` leaves them). Returns the outcome and a message.
async fn switch_fleet(
    r: &mut Run<'_>,
    ctx: &Ctx<'_>,
    conns: &[Conn<'_>],
    plan: &Plan,
    states: &mut [HostState],
) -> (Outcome, Option<String>) {
    use futures::StreamExt;
    let parallel = ctx.inventory.rollout.parallel.max(1);
    let n = conns.len();
    let tolerated = plan.max_fail;
    let mut ranges = Vec::new();
    let mut start = 0;
    for wave in &plan.waves {
        ranges.push(start..start + wave.len());
        start += wave.len();
    }
    let on_failure = ctx.inventory.rollout.on_failure;
    // Per host: switched this run and still on the new release.
    let mut switched: Vec<bool> = vec![false; n];
    // Per switched host: what its switch changed, for a switch-back when a later wave fails.
    let mut changed: Vec<Vec<Undo>> = vec![Vec::new(); n];
    let mut failed = 0;
    let mut back_failed: Vec<String> = Vec::new();
    for (w, range) in ranges.iter().enumerate() {
        if ranges.len() > 1 {
            ctx.note(&format!(
                "wave {} of {}: {}",
                w + 1,
                ranges.len(),
                plan.waves[w].join(" ")
            ));
        }
        let runs: Vec<PhaseRun> = futures::stream::iter(
            conns[range.clone()]
                .iter()
                .zip(&plan.hosts[range.clone()])
                .zip(states[range.clone()].iter_mut())
                .map(|((c, hs), state)| run_phase(ctx, c, hs, Phase::Switch, state)),
        )
        .buffered(parallel)
        .collect()
        .await;
        // A failed host goes back to what it had, now.
        let mut to_undo = Vec::new();
        for (i, run) in range.clone().zip(runs) {
            let hs = &plan.hosts[i];
            r.record(&hs.host, &run);
            r.host(&hs.host).switch_ms = Some(run.ms);
            match run.error {
                None => {
                    r.host(&hs.host).current = Some(plan.release.clone());
                    switched[i] = true;
                    changed[i] = run.undos;
                }
                Some(e) => {
                    r.fail_host(e);
                    failed += 1;
                    to_undo.push((i, run.undos));
                }
            }
        }
        let backs = futures::future::join_all(to_undo.iter().map(|(i, undos)| {
            let (c, hs) = (&conns[*i], &plan.hosts[*i]);
            let armed = states[*i].guard_armed;
            async move {
                let back = switch::deactivate(ctx, c, hs.previous.as_deref(), undos, armed).await;
                (*i, back)
            }
        }))
        .await;
        for (i, back) in backs {
            states[i].guard_armed = false;
            record_switch_back(r, &plan.hosts[i], back, &mut back_failed);
        }
        if failed > tolerated {
            let rest: usize = ranges[w + 1..].iter().map(|r| r.len()).sum();
            let mut message = format!(
                "{failed} hosts failed in wave {} of {}, more than `max_fail` tolerates ({tolerated}); {rest} hosts were not touched",
                w + 1,
                ranges.len()
            );
            if on_failure == crate::inventory::OnFailure::Rollback {
                let undo: Vec<usize> = (0..n).filter(|&i| switched[i]).collect();
                let backs = futures::future::join_all(undo.iter().map(|&i| {
                    let (c, hs) = (&conns[i], &plan.hosts[i]);
                    // Exactly what its switch changed: an env file it did not install
                    // stays as it is.
                    let changed = &changed[i];
                    async move {
                        (
                            i,
                            switch::deactivate(ctx, c, hs.previous.as_deref(), changed, false)
                                .await,
                        )
                    }
                }))
                .await;
                for (i, back) in backs {
                    switched[i] = false;
                    record_switch_back(r, &plan.hosts[i], back, &mut back_failed);
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
    hs: &HostSteps,
    back: Result<(), String>,
    back_failed: &mut Vec<String>,
) {
    let name = hs.host.clone();
    let h = r.host(&name);
    match back {
        Ok(()) => {
            h.current = hs.previous.clone();
            h.rolled_back = Some(true);
        }
        Err(e) => {
            h.rolled_back = Some(false);
            let error = match h.error.take() {
                Some(first) => {
                    let message = format!("{}; SWITCHING BACK FAILED: {e}", first.message);
                    first.saying(message)
                }
                None => RemoteError::new(&name, "switch", format!("SWITCHING BACK FAILED: {e}")),
            };
            r.fail_host(error);
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
    let target = match plan::rollback_target(&refs, rb.to.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            r.report.release = None;
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
    let hosts: Vec<(&Host, &ReleaseTree)> =
        conns.iter().map(|c| c.host).zip(ok_trees.iter()).collect();
    let plan = plan::build::rollback(rb.inventory, &rendered(rb.templates), &hosts, &target, None);
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
    r.close(&conns, outcome, message).await
}

#[cfg(test)]
mod orchestration;
