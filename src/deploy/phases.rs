//! Executing a plan on a connected, locked fleet: every host staged (or nothing is switched
//! anywhere), the once steps on the migrate host, the switch wave by wave with switch-back
//! (`max_fail`, `on_failure`), then the finish steps. Each step goes through the one
//! executor, [`execute::step`]; the report records each step's status as it ends.

use std::time::Instant;

use super::pipeline::{Cancel, INTERRUPTED, Run};
use super::switch;
use super::{Ctx, HostState};
use crate::commands::exit;
use crate::deploy::envfile::KeyDiff;
use crate::execute::{self, RemoteError};
use crate::output::Event;
use crate::output::report::deploy::{Outcome, RestoredBackup, StepReport, StepStatus};
use crate::plan::{self, HostSteps, Phase, Plan, Step, Undo};
use crate::transport::fleet::Conn;

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
            h.live_port = hs.blue_green().and_then(|mv| mv.from);
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
            if done.outcome.is_some() {
                s.outcome = done.outcome.clone();
            }
        }
    }
}

/// Executes `plan` on `conns` (connected and locked, in the plan's host order): every host
/// staged (or nothing is switched), the once steps on the migrate host, the switch wave by
/// wave, then the finish steps. Returns the outcome and a message.
pub(super) async fn execute_plan(
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
        match run.error {
            Some(e) => {
                r.fail_host(e);
                failures += 1;
            }
            None => {
                if let Some(diff) = &r.host(&hs.host).env_keys {
                    let note = format!("{}: env file {}", hs.host, describe_keys(diff));
                    ctx.note(&note);
                }
                ctx.out.emit(Event::Step {
                    host: &hs.host,
                    step: "staged",
                });
            }
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
            let result = match step {
                Step::Migrate {
                    maintenance: true, ..
                } => {
                    let state = &mut states[i];
                    let work = execute::step(ctx, c, hs, step, state);
                    super::maintenance::during(ctx, conns, "the migrations run", work).await
                }
                Step::Restore {
                    stop, maintenance, ..
                } => {
                    let work = execute::step(ctx, c, hs, step, &mut states[i]);
                    super::restore::quiesced(ctx, conns, stop, *maintenance, work).await
                }
                _ => execute::step(ctx, c, hs, step, &mut states[i]).await,
            };
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
                    if let Step::Restore {
                        backup,
                        sha256,
                        live,
                        ..
                    } = step
                    {
                        r.report.restored = Some(RestoredBackup {
                            host: c.host.name.clone(),
                            backup: backup.clone(),
                            sha256: sha256.clone(),
                            live_release: live.clone(),
                        });
                    }
                }
                Err(e) => {
                    report.status = StepStatus::Failed;
                    let message = match step {
                        Step::Migrate { .. } | Step::Restore { .. } => {
                            format!("{e}; nothing was switched")
                        }
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

    // `--once-only`: the release is staged and the once steps ran; the shards switch.
    if plan.action == "once" {
        for hs in &plan.hosts {
            ctx.out.emit(Event::HostDone {
                host: &hs.host,
                ok: true,
                summary: &format!("staged {}; nothing switched", plan.release),
            });
        }
        let ran = match plan.once.is_empty() {
            true => "no backup or migration to run".to_owned(),
            false => format!("{} once steps ran", plan.once.len()),
        };
        return (
            Outcome::Deployed,
            Some(format!(
                "--once-only: {} staged on {}, {ran}; nothing was switched",
                plan.release,
                plan.migrate_host.as_deref().unwrap_or("the migrate host")
            )),
        );
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
                    r.host(&hs.host).live_port = hs.blue_green().map(|mv| mv.port);
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
                let back = switch::deactivate(ctx, c, hs, undos, armed).await;
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
                    async move { (i, switch::deactivate(ctx, c, hs, changed, false).await) }
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
    back: switch::Back,
    back_failed: &mut Vec<String>,
) {
    let name = hs.host.clone();
    let h = r.host(&name);
    h.warnings.extend(back.warnings);
    match back.failed.map_or(Ok(()), Err) {
        Ok(()) => {
            h.current = hs.previous.clone();
            h.live_port = hs.blue_green().and_then(|mv| mv.from);
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
