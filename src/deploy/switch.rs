//! The switch steps of one host and their undo: arm the guard, install the env file, point
//! `current` at the release, install and restart the units, install the Nginx site, bring
//! the compose stack up, the health gate, confirm.
//!
//! Each step that changes what the host serves has an [`Undo`]; switching back runs the
//! undos of the steps that started, so it puts back exactly what was touched: the previous
//! env file, `current`, units and site, and the services restarted and checked.

use std::time::Duration;

use super::stage::{COMPOSE_FILE, NGINX_DIR, SYSTEMD_DIR};
use super::{Ctx, HostState, health, hooks};
use crate::commands::{self, exit};
use crate::execute::{self, RemoteError, timeout};
use crate::inventory::HookPoint;
use crate::plan::step::hook_point_str;
use crate::plan::{HostSteps, Phase, Undo, step};
use crate::shell::Cmd;
use crate::transport::ExecRequest;
use crate::transport::fleet::Conn;

/// The dead-deployer guard of a run.
#[derive(Clone, Debug)]
pub struct Guard {
    /// The history entry the guard appends when it fires (its `hosts` become the one host,
    /// its times the time it fires).
    pub history: crate::ops::history::Record,
    /// What the guard's script stores goes through the run's redactor.
    pub redactor: crate::output::redact::Redactor,
}

fn units(ctx: &Ctx<'_>) -> Vec<String> {
    ctx.templates
        .units
        .iter()
        .map(|(u, _, _)| u.clone())
        .collect()
}

/// The command that performs `undo` on `host`, switched from its previous release to
/// `release`, and whether it needs root (every undo but `current`'s and the hooks', which
/// run as the SSH user as in a deploy: see [`ExecRequest::as_root`]).
fn undo_cmd(
    ctx: &Ctx<'_>,
    host: &HostSteps,
    release: &str,
    undo: Undo,
) -> Option<(Cmd, Duration, &'static str, bool)> {
    let root = !matches!(
        undo,
        Undo::SwitchBack | Undo::AfterSwitchHooks | Undo::AfterRestartHooks
    );
    undo_step(ctx, host, release, undo).map(|(cmd, timeout, what)| (cmd, timeout, what, root))
}

fn undo_step(
    ctx: &Ctx<'_>,
    host: &HostSteps,
    release: &str,
    undo: Undo,
) -> Option<(Cmd, Duration, &'static str)> {
    let inv = ctx.inventory;
    let deploy_to = inv.app.deploy_to.as_str();
    let previous = host.previous.as_deref();
    Some(match undo {
        Undo::RestoreEnv => (
            commands::envfile::restore(deploy_to, &inv.env.as_ref()?.path),
            timeout::SHORT,
            "restoring the env file",
        ),
        Undo::SwitchBack => (
            match previous {
                Some(prev) => commands::release::switch(deploy_to, prev),
                None => commands::release::remove_current(deploy_to),
            },
            timeout::SHORT,
            "switching `current` back",
        ),
        Undo::RestoreUnits => (
            commands::systemd::restore(deploy_to, &units(ctx)),
            timeout::RESTART,
            "restoring and restarting the units",
        ),
        Undo::RestoreCompose => {
            let compose = inv.compose.as_ref()?;
            let release_file = |id: &str| format!("{deploy_to}/releases/{id}/{COMPOSE_FILE}");
            let prev = previous.map(release_file);
            let now = release_file(release);
            let env = inv.env.as_ref().map(|e| e.path.as_str());
            (
                commands::compose::back(&compose.project, prev.as_deref(), &now, env),
                timeout::RESTART,
                "restoring the compose stack",
            )
        }
        Undo::RestoreSite => (
            commands::nginx::restore(deploy_to, &ctx.templates.nginx.as_ref()?.0),
            timeout::SHORT,
            "restoring the nginx site",
        ),
        Undo::PointBack => {
            let mv = host.blue_green()?;
            let (unit, bg) = inv.blue_green()?;
            let old = mv.from.map(|port| unit.instance(port));
            let drain = bg.drain.as_secs();
            (
                commands::nginx::point_back(
                    deploy_to,
                    &ctx.templates.nginx.as_ref()?.0,
                    old.as_deref().zip(mv.from),
                    (mv.unit, mv.port),
                    drain,
                ),
                // Starting the old instance may wait a minute for its port, then the drain.
                timeout::RESTART + Duration::from_secs(60 + drain),
                "pointing the nginx site back at the old instance",
            )
        }
        Undo::StopIdle => {
            let mv = host.blue_green()?;
            (
                commands::systemd::stop_instance(deploy_to, mv.unit, mv.port),
                timeout::RESTART,
                "stopping the new instance",
            )
        }
        Undo::AfterSwitchHooks | Undo::AfterRestartHooks => {
            // Each hook in a subshell of its own (its prelude ends with `exit` when it
            // cannot start), the next only after it succeeded, as in a deploy.
            let mut hooks = rerun_hooks(ctx, host, release, undo)?
                .into_iter()
                .map(|(_, _, cmd)| Cmd::subshell(cmd));
            let first = hooks.next()?;
            (
                hooks.fold(first, Cmd::and),
                timeout::LONG,
                "running the hooks again for the previous release",
            )
        }
    })
}

/// The hooks a switch-back of `host` from `release` runs again (`undo`: the `after_switch`
/// or `after_restart` ones): (point, command, the command as run), in the previous
/// release's directory with the env file loaded and the variables of a deploy of it
/// (`SHIPIT_RELEASE` the previous release, `SHIPIT_PREVIOUS` the one left). `None` on a
/// first deploy (nothing to go back to) or without such hooks.
fn rerun_hooks<'h>(
    ctx: &Ctx<'_>,
    host: &'h HostSteps,
    release: &str,
    undo: Undo,
) -> Option<Vec<(HookPoint, &'h str, Cmd)>> {
    let inv = ctx.inventory;
    // A name read from the host (the last part of `current`'s target): never `..` nor empty.
    let previous = host
        .previous
        .as_deref()
        .filter(|p| !p.is_empty() && !p.starts_with('.'))?;
    let at = match undo {
        Undo::AfterSwitchHooks => HookPoint::AfterSwitch,
        Undo::AfterRestartHooks => HookPoint::AfterRestart,
        _ => return None,
    };
    let dir = format!("{}/releases/{previous}", inv.app.deploy_to);
    let vars = hooks::task_vars(inv, &host.host, previous, Some(release));
    let cmds: Vec<_> = crate::plan::build::hooks_at(host, at)
        .map(|command| {
            let cmd = commands::task::run(&dir, hooks::env_path(inv), &vars, command);
            (at, command, cmd)
        })
        .collect();
    (!cmds.is_empty()).then_some(cmds)
}

/// `arm_guard`: a sleeper on the host that runs the undo of every switch step of `host`
/// unless the run confirms within `delay_secs`.
pub async fn arm_guard(
    ctx: &Ctx<'_>,
    c: &Conn<'_>,
    host: &HostSteps,
    delay_secs: u64,
    state: &HostState,
) -> Result<(), RemoteError> {
    let Some(guard) = &ctx.guard else {
        return Ok(());
    };
    let deploy_to = ctx.inventory.app.deploy_to.as_str();
    let release = ctx.release;
    let previous = host.previous.as_deref();
    ctx.step(c, "arming the guard");
    // The guard runs as the SSH user, like the lock it takes and the `.shipit/` files it
    // writes; with `ssh.sudo` its root undos go through `sudo -n` one by one.
    let sudo = c.transport.sudo_login().is_some();
    // The release the guard turns away from is no rollback target, whatever it was.
    let body: Vec<Cmd> = std::iter::once(commands::passed::forget(deploy_to, release))
        .chain(
            step::undo_order(host.phase(Phase::Switch))
                .into_iter()
                // An env file this run did not stage is not installed: nothing to put back.
                .filter(|u| *u != Undo::RestoreEnv || state.env_staged)
                .filter_map(|u| undo_cmd(ctx, host, release, u))
                .map(|(cmd, _, _, root)| {
                    if root && sudo {
                        commands::sudo::wrap(&cmd)
                    } else {
                        cmd
                    }
                }),
        )
        .collect();
    let line = {
        let mut entry = guard.history.clone();
        entry.hosts = vec![c.host.name.clone()];
        entry.live_ports = host
            .blue_green()
            .and_then(|mv| mv.from)
            .map(|port| (c.host.name.clone(), port))
            .into_iter()
            .collect();
        let mut value = serde_json::to_value(&entry).expect("plain data serializes");
        guard.redactor.apply_json(&mut value);
        // The guard writes the time it fires: history sorts by when things happened.
        let mark = commands::guard::time_placeholder();
        value["time"] = mark.into();
        value["finished"] = mark.into();
        value.to_string()
    };
    let script = commands::guard::script(deploy_to, ctx.token, release, previous, &body, &line);
    let cmd = commands::guard::arm(deploy_to, ctx.token, delay_secs);
    let req = ExecRequest::new(&cmd, timeout::SHORT)
        .stdin(crate::transport::Stdin::Bytes(script.into_bytes()));
    if let Err(e) = execute::exec(c, "arm_guard", "arming the dead-deployer guard", req).await {
        // A sleeper may have started all the same: it must never fire.
        let cmd = commands::guard::disarm(deploy_to, ctx.token);
        let _ = c
            .transport
            .exec(ExecRequest::new(&cmd, timeout::SHORT))
            .await;
        return Err(e);
    }
    Ok(())
}

/// `install_env`: the env file this run staged replaces the host's.
pub async fn install_env(ctx: &Ctx<'_>, c: &Conn<'_>, path: &str) -> Result<(), RemoteError> {
    ctx.step(c, "installing env file");
    let cmd = commands::envfile::activate(&ctx.inventory.app.deploy_to, path, ctx.token);
    execute::run_root(
        c,
        "install_env",
        "installing the env file",
        &cmd,
        timeout::SHORT,
    )
    .await
    .map(drop)
}

/// `switch`: `current` → the release.
pub async fn switch_current(ctx: &Ctx<'_>, c: &Conn<'_>) -> Result<(), RemoteError> {
    ctx.step(c, "switching");
    let cmd = commands::release::switch(&ctx.inventory.app.deploy_to, ctx.release);
    execute::run(c, "switch", "switching `current`", &cmd, timeout::SHORT)
        .await
        .map(drop)
}

/// `install_units`: returns the units whose installed file changed.
pub async fn install_units(ctx: &Ctx<'_>, c: &Conn<'_>) -> Result<Vec<String>, RemoteError> {
    ctx.step(c, "installing units");
    let cmd = commands::systemd::install(
        &ctx.inventory.app.deploy_to,
        &format!("{}/{SYSTEMD_DIR}", ctx.release_dir()),
        &units(ctx),
    );
    let out = execute::run_root(
        c,
        "install_units",
        "installing the units",
        &cmd,
        timeout::RESTART,
    )
    .await?;
    Ok(out
        .stdout
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("changed ").map(str::to_owned))
        .collect())
}

/// `restart`: restart `unit` (enabling it first if its file changed) and check it is active.
pub async fn restart(
    ctx: &Ctx<'_>,
    c: &Conn<'_>,
    unit: &str,
    state: &HostState,
) -> Result<(), RemoteError> {
    ctx.step(c, &format!("restarting {unit}"));
    let cmd = commands::systemd::start(unit, state.changed_units.iter().any(|u| u == unit));
    let what = format!("restarting `{unit}`");
    let o = execute::output(
        c,
        "restart",
        &what,
        ExecRequest::new(&cmd, timeout::RESTART).as_root(),
    )
    .await?;
    if o.success() {
        return Ok(());
    }
    let e = RemoteError::from_output(&c.host.name, "restart", &what, &o);
    if e.is(exit::NOT_ACTIVE) {
        return Err(e.saying(format!(
            "`{unit}` is not active after its restart:\n{}",
            o.stderr.text().trim_end()
        )));
    }
    Err(e)
}

/// `install_site`: install the Nginx site, test, reload.
pub async fn install_site(ctx: &Ctx<'_>, c: &Conn<'_>, site: &str) -> Result<(), RemoteError> {
    ctx.step(c, "installing nginx site");
    let cmd = commands::nginx::install(
        &ctx.inventory.app.deploy_to,
        site,
        &format!("{}/{NGINX_DIR}/{site}", ctx.release_dir()),
    );
    run_site(c, "install_site", "installing the nginx site", site, &cmd).await
}

/// Runs `cmd`, a command that installs `site`, as `step`: a rejected site says what
/// `nginx -t` said.
async fn run_site(
    c: &Conn<'_>,
    step: &str,
    what: &str,
    site: &str,
    cmd: &Cmd,
) -> Result<(), RemoteError> {
    let req = ExecRequest::new(cmd, timeout::SHORT).as_root();
    let o = execute::output(c, step, what, req).await?;
    if o.success() {
        return Ok(());
    }
    let e = RemoteError::from_output(&c.host.name, step, what, &o);
    if e.is(exit::NGINX_INVALID) {
        return Err(e.saying(format!(
            "`nginx -t` rejects site `{site}`; the previous site was kept:\n{}",
            o.stderr.text().trim_end()
        )));
    }
    Err(e)
}

/// `compose_up`: the release's compose stack up.
pub async fn compose_up(ctx: &Ctx<'_>, c: &Conn<'_>) -> Result<(), RemoteError> {
    let Some(compose) = &ctx.inventory.compose else {
        return Ok(());
    };
    ctx.step(c, "starting the compose stack");
    let env_path = ctx.inventory.env.as_ref().map(|e| e.path.as_str());
    let file = format!("{}/{COMPOSE_FILE}", ctx.release_dir());
    let cmd = commands::compose::up(&compose.project, &file, env_path);
    let what = "starting the compose stack";
    execute::run_root(c, "compose_up", what, &cmd, timeout::RESTART)
        .await
        .map(drop)
}

/// `health`: every check, each polled until it passes or its own timeout ends; a check of
/// `{{ port }}` on `port`, the blue-green instance now live.
pub async fn health(ctx: &Ctx<'_>, c: &Conn<'_>, port: Option<u16>) -> Result<(), RemoteError> {
    if ctx.inventory.health.is_empty() {
        return Ok(());
    }
    ctx.step(c, "health check");
    let env_path = ctx.inventory.env.as_ref().map(|e| e.path.as_str());
    let checks = health::at_port(&ctx.inventory.health, port);
    health::wait_all(c, &checks, &ctx.inventory.app.deploy_to, env_path).await
}

/// `start_idle`: the idle instance runs the release; returns the step's outcome when the
/// host kept an instance that already ran it.
pub async fn start_idle(
    ctx: &Ctx<'_>,
    c: &Conn<'_>,
    unit: &str,
    port: u16,
    release: &str,
) -> Result<Option<String>, RemoteError> {
    ctx.step(c, &format!("starting {unit}"));
    let cmd = commands::systemd::start_instance(&ctx.inventory.app.deploy_to, unit, port, release);
    let what = format!("starting `{unit}`");
    let o = execute::output(
        c,
        "start_idle",
        &what,
        ExecRequest::new(&cmd, timeout::RESTART).as_root(),
    )
    .await?;
    if o.success() {
        let kept = o.stdout.text().starts_with("kept");
        return Ok(
            kept.then(|| format!("kept: `{unit}` already runs {release} (nothing restarted)"))
        );
    }
    let e = RemoteError::from_output(&c.host.name, "start_idle", &what, &o);
    let stderr = o.stderr.text();
    if e.is(exit::NOT_ACTIVE) {
        return Err(e.saying(format!(
            "`{unit}` is not active after its start; no request reached it, the site still points at the old instance:\n{}",
            stderr.trim_end()
        )));
    }
    if e.is(exit::PORT_TAKEN) {
        return Err(e.saying(format!(
            "{}; stop that process, or choose other `ports`",
            stderr.trim_end()
        )));
    }
    Err(e)
}

/// `check_idle`: the checks of `{{ port }}` on the idle instance's own port, before any
/// request reaches it. An instance that stops meanwhile fails the step at once.
pub async fn check_idle(
    ctx: &Ctx<'_>,
    c: &Conn<'_>,
    unit: &str,
    port: u16,
) -> Result<(), RemoteError> {
    ctx.step(c, &format!("checking {unit} on port {port}"));
    let checks: Vec<_> = health::at_port(&ctx.inventory.health, Some(port))
        .into_iter()
        .zip(&ctx.inventory.health)
        .filter(|(_, original)| original.check.on_live_port())
        .map(|(check, _)| check)
        .collect();
    let env_path = ctx.inventory.env.as_ref().map(|e| e.path.as_str());
    let deploy_to = &ctx.inventory.app.deploy_to;
    let watch = async {
        let cmd = Cmd::seq([
            Cmd::assign("unit", unit),
            // Down, or waiting to be restarted after it exited; still starting is fine.
            Cmd::new(
                r#"state=$(systemctl show -p ActiveState -p SubState -- "$unit" 2>/dev/null | tr '\n' ' ')
case "$state" in
  *ActiveState=failed*|*ActiveState=inactive*|*ActiveState=deactivating*|*SubState=auto-restart*)
    systemctl status --no-pager --lines=20 -- "$unit"; exit 1 ;;
esac"#,
            ),
        ]);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match c
                .transport
                .exec(ExecRequest::new(&cmd, timeout::SHORT))
                .await
            {
                Ok(o) if !o.success() => return o.stdout.text(),
                _ => {}
            }
        }
    };
    let result = tokio::select! {
        r = health::wait_all(c, &checks, deploy_to, env_path) => r,
        status = watch => Err(RemoteError::new(
            &c.host.name,
            "check_idle",
            format!("`{unit}` stopped while it was checked:\n{}", status.trim_end()),
        )),
    };
    result.map_err(|mut e| {
        e.step = "check_idle".into();
        let message = format!(
            "`{unit}` failed its check on port {port}, so no request reached it (the site still points at the old instance): {}",
            e.message
        );
        e.saying(message)
    })
}

/// `point_site`: the site proxies to the new instance's port from now on.
pub async fn point_site(
    ctx: &Ctx<'_>,
    c: &Conn<'_>,
    site: &str,
    port: u16,
    unit: &str,
) -> Result<(), RemoteError> {
    ctx.step(c, &format!("pointing nginx at port {port}"));
    let cmd = commands::nginx::point(
        &ctx.inventory.app.deploy_to,
        site,
        &format!("{}/{NGINX_DIR}/{site}", ctx.release_dir()),
        port,
        unit,
    );
    run_site(
        c,
        "point_site",
        "pointing the nginx site at the new instance",
        site,
        &cmd,
    )
    .await
}

/// `stop_old`: once the drain has passed since the site moved, the old instance stops.
pub async fn stop_old(
    ctx: &Ctx<'_>,
    c: &Conn<'_>,
    unit: &str,
    port: u16,
    drain_secs: u64,
    state: &HostState,
) -> Result<(), RemoteError> {
    let drain = Duration::from_secs(drain_secs);
    let left = state
        .pointed_at
        .map_or(drain, |at| drain.saturating_sub(at.elapsed()));
    if !left.is_zero() {
        ctx.step(c, &format!("draining {unit}"));
        tokio::time::sleep(left).await;
    }
    ctx.step(c, &format!("stopping {unit}"));
    let cmd = commands::systemd::stop_instance(&ctx.inventory.app.deploy_to, unit, port);
    execute::run_root(
        c,
        "stop_old",
        &format!("stopping `{unit}`"),
        &cmd,
        timeout::RESTART,
    )
    .await
    .map(drop)
}

/// `confirm`: disarm the guard and record the release as passed here (a rollback target).
pub async fn confirm(ctx: &Ctx<'_>, c: &Conn<'_>, delay_secs: u64) -> Result<(), RemoteError> {
    ctx.step(c, "confirming");
    let cmd = commands::guard::confirm(&ctx.inventory.app.deploy_to, ctx.token, ctx.release);
    let what = "confirming the switch";
    let o = execute::output(c, "confirm", what, ExecRequest::new(&cmd, timeout::SHORT)).await?;
    if o.success() {
        return Ok(());
    }
    let e = RemoteError::from_output(&c.host.name, "confirm", what, &o);
    if e.is(exit::GUARD_FIRED) {
        return Err(e.saying(format!(
            "the dead-deployer guard switched the host back before the deploy confirmed it (after {delay_secs} s); raise `rollout.confirm_timeout`"
        )));
    }
    if e.is(exit::GUARD_DISARMED) {
        return Err(e.saying(
            "another run disarmed this run's dead-deployer guard (`shipit unlock` while this run held the lock); the host was left as it is",
        ));
    }
    Err(e)
}

/// `mark_passed`: a rollback's release passed again. A record that cannot be written costs
/// only its being a rollback target later: a note, not a failure.
pub async fn mark_passed(ctx: &Ctx<'_>, c: &Conn<'_>, release: &str) {
    let cmd = commands::passed::mark(&ctx.inventory.app.deploy_to, release);
    let what = "recording the release as passed";
    if let Err(e) = execute::run(c, "mark_passed", what, &cmd, timeout::SHORT).await {
        ctx.note(&format!("{}: {e}", c.host.name));
    }
}

/// How a switch-back went: what went wrong without failing it (a hook run again), and
/// what failed it.
#[derive(Debug, Default)]
pub struct Back {
    pub warnings: Vec<String>,
    pub failed: Option<String>,
}

/// Puts back what the switch steps of `host` that started touched (`undos`): its previous
/// release becomes current again (or `current` is removed when there was none), its
/// `after_switch` and `after_restart` hooks run again for it, then the health gate (a
/// blue-green unit's on the old instance's port).
///
/// A hook that fails then is a warning, not a failure of the switch-back: the host is
/// going back whatever the hook does (`current`, env file, units and site are put back
/// all the same), and the hooks are this run's, so a hook broken in the inventory would
/// otherwise fail every switch-back it should have made; the health gate after it says
/// whether the host serves.
pub async fn deactivate(
    ctx: &Ctx<'_>,
    c: &Conn<'_>,
    host: &HostSteps,
    undos: &[Undo],
    guard_armed: bool,
) -> Back {
    let previous = host.previous.as_deref();
    let deploy_to = ctx.inventory.app.deploy_to.as_str();
    let release = ctx.release;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    // First: the fleet did not accept the release (a deploy switched back after it
    // confirmed here, another host failed; a rollback to it that failed), so it is no
    // rollback target here, even if this run is killed while switching back.
    let cmd = commands::passed::forget(deploy_to, release);
    let what = "recording the release as rejected";
    if let Err(e) = execute::run(c, "switch", what, &cmd, timeout::SHORT).await {
        ctx.note(&format!("{}: {e}", c.host.name));
    }
    for undo in undos {
        if matches!(undo, Undo::AfterSwitchHooks | Undo::AfterRestartHooks) {
            // Streamed as a deploy's hooks are. One that fails stops the hooks after it
            // (as in a deploy), never the rest of the switch-back.
            let hooks = rerun_hooks(ctx, host, release, *undo).unwrap_or_default();
            for (at, command, cmd) in hooks {
                let what = format!(
                    "the {} hook `{command}` (run again for {})",
                    hook_point_str(at),
                    previous.unwrap_or_default()
                );
                ctx.step(c, &format!("hook {} (switching back)", hook_point_str(at)));
                if let Err(e) = hooks::run_streamed(c, "hook", &cmd, ctx.out, &what).await {
                    ctx.note(&format!("warning: {}", e.message));
                    warnings.push(e.message);
                    break;
                }
            }
            continue;
        }
        if let Some((cmd, timeout, what, root)) = undo_cmd(ctx, host, release, *undo) {
            let mut req = ExecRequest::new(&cmd, timeout);
            req.root = root;
            if let Err(e) = execute::exec(c, "switch", what, req).await {
                problems.push(e.message);
            }
        }
    }
    if ctx.guard.is_some() && guard_armed {
        // Switched back by us: the guard must not do it again later.
        let cmd = commands::guard::disarm(deploy_to, ctx.token);
        let _ = c
            .transport
            .exec(ExecRequest::new(&cmd, timeout::SHORT))
            .await;
    }
    if problems.is_empty() && previous.is_some() && !ctx.inventory.health.is_empty() {
        let env_path = ctx.inventory.env.as_ref().map(|e| e.path.as_str());
        let port = host.blue_green().and_then(|mv| mv.from);
        let checks = health::at_port(&ctx.inventory.health, port);
        if let Err(e) = health::wait_all(c, &checks, deploy_to, env_path).await {
            problems.push(format!("after switching back, {e}"));
        }
    }
    Back {
        warnings,
        failed: (!problems.is_empty()).then(|| problems.join("; ")),
    }
}
