//! Running commands on a host and turning how they ended into typed results: the one place
//! where an exit status becomes an error ([`RemoteError`]), and the one table of timeouts
//! ([`timeout`]).
//!
//! A caller names the plan step a command belongs to (`upload`, `switch`, `restart`, …,
//! see [`crate::plan::Step::name`]) and says in words what the command does ("switching
//! `current`"); a failure carries both, the exit status and the tail of stderr, so the
//! report can say which step failed on which host without parsing prose.

use std::time::Duration;

use serde::Serialize;

use crate::deploy::{Ctx, HostState};
use crate::plan::{HostSteps, Step};
use crate::shell::Cmd;
use crate::transport::fleet::Conn;
use crate::transport::{ExecError, ExecOutput, ExecRequest, Exit};

/// How long each kind of remote command may take.
pub mod timeout {
    use std::time::Duration;

    /// `shipit check`'s probe: a handful of builtins, anything slower is a sick host.
    pub const PROBE: Duration = Duration::from_secs(30);
    /// Probes, the lock, the switch of `current`, small writes.
    pub const SHORT: Duration = Duration::from_secs(60);
    /// Copying a release on the host, reading a manifest.
    pub const COPY: Duration = Duration::from_secs(600);
    /// A restart (a service's own stop timeout is 90 s by default), a compose stack.
    pub const RESTART: Duration = Duration::from_secs(300);
    /// Backups, migrations, hooks and tasks: the operator's own commands.
    pub const LONG: Duration = Duration::from_secs(6 * 3600);

    /// An upload of `bytes`: generous, keepalives notice a dead host long before this.
    pub fn upload(bytes: u64) -> Duration {
        Duration::from_secs(1800 + bytes / (1 << 20))
    }

    /// `shipit exec` and `shipit task`: the user's own command, which the user bounds (a
    /// year: long enough to mean no deadline of shipit's).
    pub const UNBOUNDED: Duration = Duration::from_secs(365 * 24 * 3600);
}

/// A command of a step failed on a host: it exited non-zero, was killed, timed out, or the
/// connection failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    #[serde(skip)]
    pub host: String,
    /// The plan step the command belonged to.
    pub step: String,
    /// What went wrong, in words (with the tail of stderr where it says more).
    pub message: String,
    /// The command's exit status; `None` when it has none (killed by a signal, timed out,
    /// connection lost).
    pub exit: Option<u32>,
    /// The last lines of the command's stderr.
    #[serde(skip)]
    pub stderr_tail: String,
}

impl RemoteError {
    /// A failure that is not a command's (a local file that cannot be read, a check on the
    /// deployer's side).
    pub fn new(host: &str, step: &str, message: impl Into<String>) -> RemoteError {
        RemoteError {
            host: host.to_owned(),
            step: step.to_owned(),
            message: message.into(),
            exit: None,
            stderr_tail: String::new(),
        }
    }

    /// A command that ran and did not succeed: `"{what} failed (exit status N): stderr"`.
    pub fn from_output(host: &str, step: &str, what: &str, o: &ExecOutput) -> RemoteError {
        let stderr = o.stderr.text();
        let tail = stderr.trim();
        let message = if tail.is_empty() {
            format!("{what} failed ({})", o.exit)
        } else {
            format!("{what} failed ({}): {tail}", o.exit)
        };
        RemoteError {
            host: host.to_owned(),
            step: step.to_owned(),
            message,
            exit: match o.exit {
                Exit::Code(c) => Some(c),
                Exit::Signal(_) => None,
            },
            stderr_tail: tail.to_owned(),
        }
    }

    /// A command that did not end with a status (timeout, lost connection, not started).
    pub fn from_exec(host: &str, step: &str, what: &str, e: &ExecError) -> RemoteError {
        RemoteError::new(
            host,
            step,
            format!("{what} failed: {}", crate::error::chain(e)),
        )
    }

    /// A failed `result` of [`Transport::exec`](crate::transport::Transport::exec): its
    /// output if it ran, its error if not.
    pub fn from_result(
        host: &str,
        step: &str,
        what: &str,
        result: &Result<ExecOutput, ExecError>,
    ) -> RemoteError {
        match result {
            Ok(o) => RemoteError::from_output(host, step, what, o),
            Err(e) => RemoteError::from_exec(host, step, what, e),
        }
    }

    /// The same failure said another way (the host script's exit code says more than its
    /// stderr: "the artifact arrived damaged").
    pub fn saying(mut self, message: impl Into<String>) -> RemoteError {
        self.message = message.into();
        self
    }

    /// Whether the command exited with `code` (one of [`crate::commands::exit`]).
    pub fn is(&self, code: u32) -> bool {
        self.exit == Some(code)
    }
}

/// Runs `cmd` on `c` for `step`; only a successful exit is `Ok`.
pub async fn run(
    c: &Conn<'_>,
    step: &str,
    what: &str,
    cmd: &Cmd,
    timeout: Duration,
) -> Result<ExecOutput, RemoteError> {
    exec(c, step, what, ExecRequest::new(cmd, timeout)).await
}

/// [`run`] for a command that needs root: with `ssh.sudo` it runs through `sudo -n` (see
/// [`ExecRequest::as_root`]).
pub async fn run_root(
    c: &Conn<'_>,
    step: &str,
    what: &str,
    cmd: &Cmd,
    timeout: Duration,
) -> Result<ExecOutput, RemoteError> {
    exec(c, step, what, ExecRequest::new(cmd, timeout).as_root()).await
}

/// Runs `req` on `c` for `step`; only a successful exit is `Ok`.
pub async fn exec(
    c: &Conn<'_>,
    step: &str,
    what: &str,
    req: ExecRequest<'_>,
) -> Result<ExecOutput, RemoteError> {
    let result = c.transport.exec(req).await;
    match result {
        Ok(o) if o.success() => Ok(o),
        other => Err(RemoteError::from_result(&c.host.name, step, what, &other)),
    }
}

/// Runs `req` on `c` for `step` and returns its output whatever its exit status (for the
/// scripts whose exit codes say something, [`crate::commands::exit`]); only a command that
/// did not end with a status is an error.
pub async fn output(
    c: &Conn<'_>,
    step: &str,
    what: &str,
    req: ExecRequest<'_>,
) -> Result<ExecOutput, RemoteError> {
    c.transport
        .exec(req)
        .await
        .map_err(|e| RemoteError::from_exec(&c.host.name, step, what, &e))
}

/// What a step learned while it ran, for the report.
#[derive(Debug, Default)]
pub struct Done {
    /// The step had nothing to do (an env file that did not change).
    pub skipped: bool,
    /// How the release directory got there (source steps).
    pub sourced: Option<crate::deploy::upload::Sourced>,
    /// The env file keys a `stage_env` staged (names only).
    pub env_keys: Option<crate::deploy::envfile::KeyDiff>,
    /// The backup a `backup` step made.
    pub backup: Option<crate::deploy::once::BackupFile>,
    /// What only the host could decide, for the report (a blue-green instance kept).
    pub outcome: Option<String>,
}

/// Runs one step of `host`'s plan on `c`: the executor every run goes through. `state`
/// carries what earlier steps of the host learned (a staged env file, changed units, an
/// armed guard).
pub async fn step(
    ctx: &Ctx<'_>,
    c: &Conn<'_>,
    host: &HostSteps,
    step: &Step,
    state: &mut HostState,
) -> Result<Done, RemoteError> {
    use crate::deploy::{hooks, once, stage, switch, upload};
    let inv = ctx.inventory;
    let release_dir = ctx.release_dir();
    let vars = || {
        let mut vars = hooks::task_vars(inv, &c.host.name, ctx.release, host.previous.as_deref());
        if ctx.deploy {
            vars.env_next = hooks::env_next(inv, ctx.token);
        }
        vars
    };
    let env_next = hooks::env_next(inv, ctx.token).filter(|_| state.env_staged);
    let mut done = Done::default();
    match step {
        Step::Present { .. } | Step::Reuse { .. } | Step::Delta { .. } | Step::Upload { .. } => {
            done.sourced = Some(upload::run(ctx, c, step).await?);
        }
        Step::StageEnv { .. } => {
            ctx.step(c, "staging configuration");
            if let Some(content) = ctx.env_content {
                done.env_keys = stage::stage_env(c, inv, content, ctx.token).await?;
                state.env_staged = done.env_keys.is_some();
            }
            done.skipped = !state.env_staged;
        }
        Step::StageUnits { .. } => {
            ctx.step(c, "staging configuration");
            stage::stage_units(c, inv, ctx.templates, ctx.release, &release_dir).await?;
        }
        Step::StageSite { port, .. } => {
            ctx.step(c, "staging configuration");
            stage::stage_site(c, inv, ctx.templates, ctx.release, &release_dir, *port).await?;
        }
        Step::StageCompose { .. } => {
            ctx.step(c, "staging configuration");
            let env_next = env_next.as_deref();
            stage::stage_compose(c, inv, ctx.templates, ctx.release, &release_dir, env_next)
                .await?;
        }
        Step::Hook { at, command } => {
            hooks::hook(c, inv, *at, command, &release_dir, &vars(), ctx.out).await?;
        }
        Step::Backup { .. } => {
            done.backup = once::backup(
                c,
                inv,
                &release_dir,
                &vars(),
                ctx.release,
                ctx.facts
                    .get(&c.host.name)
                    .and_then(|t| t.current.as_deref()),
                ctx.now_unix,
                ctx.out,
            )
            .await?;
        }
        Step::Restore { .. } => {
            // In the release that runs now (whose compose file names the database's
            // services), as a backup runs.
            let live = ctx
                .facts
                .get(&c.host.name)
                .and_then(|t| t.current.clone())
                .unwrap_or_else(|| ctx.release.to_owned());
            let cwd = format!("{}/releases/{live}", inv.app.deploy_to);
            let vars = hooks::task_vars(inv, &c.host.name, &live, None);
            crate::deploy::restore::restore(ctx, c, &cwd, &vars, step).await?;
        }
        Step::Migrate { .. } => {
            once::migrate(c, inv, &release_dir, &vars(), ctx.out).await?;
        }
        Step::ArmGuard { delay_secs } => {
            switch::arm_guard(ctx, c, host, *delay_secs, state).await?;
            state.guard_armed = ctx.guard.is_some();
        }
        Step::InstallEnv { path } => {
            if state.env_staged {
                switch::install_env(ctx, c, path).await?;
            } else {
                done.skipped = true;
            }
        }
        Step::Switch { .. } => switch::switch_current(ctx, c).await?,
        Step::InstallUnits { .. } => {
            state.changed_units = switch::install_units(ctx, c).await?;
        }
        Step::Restart { unit } => switch::restart(ctx, c, unit, state).await?,
        Step::InstallSite { site } => switch::install_site(ctx, c, site).await?,
        Step::ComposeUp { .. } => switch::compose_up(ctx, c).await?,
        Step::Health { .. } => {
            switch::health(ctx, c, host.blue_green().map(|mv| mv.port)).await?;
        }
        Step::StartIdle {
            unit,
            port,
            release,
        } => {
            done.outcome = switch::start_idle(ctx, c, unit, *port, release).await?;
        }
        Step::CheckIdle { unit, port, .. } => switch::check_idle(ctx, c, unit, *port).await?,
        Step::PointSite { site, port, .. } => {
            let unit = host.blue_green().map_or("", |mv| mv.unit);
            switch::point_site(ctx, c, site, *port, unit).await?;
            state.pointed_at = Some(std::time::Instant::now());
        }
        Step::StopOld {
            unit,
            port,
            drain_secs,
        } => switch::stop_old(ctx, c, unit, *port, *drain_secs, state).await?,
        Step::Confirm { .. } => {
            let delay = host.guard_delay().unwrap_or(0);
            match switch::confirm(ctx, c, delay).await {
                Ok(()) => state.guard_armed = false,
                Err(e) => {
                    // The guard fired or another run disarmed it: it is not ours to disarm.
                    if e.is(crate::commands::exit::GUARD_FIRED)
                        || e.is(crate::commands::exit::GUARD_DISARMED)
                    {
                        state.guard_armed = false;
                    }
                    return Err(e);
                }
            }
        }
        Step::MarkPassed { release } => switch::mark_passed(ctx, c, release).await,
        Step::Prune { releases } => {
            let cmd = crate::commands::release::prune(&inv.app.deploy_to, releases);
            run(c, "prune", "removing old releases", &cmd, timeout::SHORT).await?;
        }
        Step::Forget { release } => {
            let cmd = crate::commands::passed::forget(&inv.app.deploy_to, release);
            if run(c, "forget", "recording", &cmd, timeout::SHORT)
                .await
                .is_err()
            {
                ctx.note(&format!(
                    "{}: could not record {release} as rolled back from",
                    c.host.name
                ));
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Tail;

    fn out(code: u32, stderr: &str) -> ExecOutput {
        let mut err = Tail::new(1024);
        err.push(stderr.as_bytes());
        ExecOutput {
            exit: Exit::Code(code),
            stdout: Tail::new(1024),
            stderr: err,
        }
    }

    #[test]
    fn a_failure_names_its_step_exit_and_stderr() {
        let e = RemoteError::from_output("h1", "switch", "switching `current`", &out(3, "no\n"));
        assert_eq!(e.message, "switching `current` failed (exit status 3): no");
        assert_eq!(
            (e.step.as_str(), e.exit, e.host.as_str()),
            ("switch", Some(3), "h1")
        );
        assert!(e.is(3) && !e.is(0));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"step": "switch", "message": e.message, "exit": 3})
        );
        let quiet = RemoteError::from_output("h1", "prune", "removing", &out(1, "  "));
        assert_eq!(quiet.message, "removing failed (exit status 1)");
        let lost = RemoteError::from_exec(
            "h1",
            "upload",
            "uploading",
            &ExecError::Lost {
                command: "x".into(),
                reason: "eof".into(),
            },
        );
        assert_eq!(lost.exit, None);
        assert!(
            lost.message
                .starts_with("uploading failed: the connection was lost")
        );
    }
}
