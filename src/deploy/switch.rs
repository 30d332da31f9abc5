//! Switching one host to a release and, when that fails, back: the env file, `current`,
//! the units (install if changed, daemon-reload, enable, restart, active), the Nginx site
//! (install, test, reload), then the health gate.
//!
//! Every step records what it changed, so switching back undoes exactly that: the previous
//! env file, `current`, units and site are put back and the services restarted and checked.

use std::time::Duration;

use crate::commands::{self, exit};
use crate::deploy::health;
use crate::deploy::once;
use crate::deploy::stage::{NGINX_DIR, SYSTEMD_DIR, Templates};
use crate::inventory::{HookPoint, Inventory};
use crate::output::{Event, Output};
use crate::shell::Cmd;
use crate::transport::fleet::Conn;
use crate::transport::{ExecError, ExecOutput, ExecRequest, Exit};

const SHORT: Duration = Duration::from_secs(60);
/// Restarts can take a while (a service's own stop timeout is 90 s by default).
const RESTART: Duration = Duration::from_secs(300);

/// What switching a host touched, for switching it back.
#[derive(Debug, Default)]
pub struct Touched {
    pub guard: bool,
    pub env: bool,
    pub current: bool,
    pub units: bool,
    pub nginx: bool,
    pub compose: bool,
}

pub struct Switch<'a> {
    pub inventory: &'a Inventory,
    pub templates: &'a Templates,
    pub out: &'a Output,
    /// A deploy puts the staged env file in place and runs hooks; a rollback does neither.
    pub deploy: bool,
    /// The run's token: it names the env file this run staged.
    pub token: &'a str,
    /// The hosts where this run staged a new env file (its content or mode changed): only
    /// there is one installed, and there it must still be at the switch.
    pub env_staged: std::collections::BTreeSet<String>,
    /// The host that runs `once` hooks.
    pub migrate_host: Option<String>,
    /// Arm the dead-deployer guard before switching each host.
    pub guard: Option<Guard>,
}

/// The dead-deployer guard of a run.
#[derive(Clone, Debug)]
pub struct Guard {
    pub token: String,
    /// Seconds from arming until the guard switches the host back unless confirmed.
    pub delay_secs: u64,
    /// The history entry the guard appends when it fires (its `hosts` become the one host,
    /// its times the time it fires).
    pub history: crate::ops::history::Record,
    /// What the guard's script stores goes through the run's redactor.
    pub redactor: crate::output::redact::Redactor,
}

impl Switch<'_> {
    fn deploy_to(&self) -> &str {
        &self.inventory.app.deploy_to
    }

    fn step(&self, conn: &Conn<'_>, step: &str) {
        self.out.emit(Event::Step {
            host: &conn.host.name,
            step,
        });
    }

    fn units(&self) -> Vec<String> {
        self.templates
            .units
            .iter()
            .map(|(u, _, _)| u.clone())
            .collect()
    }

    /// The commands that put a host back: what the guard runs, and what
    /// [`deactivate`](Self::deactivate) runs step by step.
    fn undo_steps(
        &self,
        release: &str,
        previous: Option<&str>,
        touched: &Touched,
    ) -> Vec<(Cmd, Duration, &'static str)> {
        let deploy_to = self.deploy_to();
        let mut steps = Vec::new();
        if touched.env
            && let Some(env) = &self.inventory.env
        {
            steps.push((
                commands::envfile::restore(deploy_to, &env.path),
                SHORT,
                "restoring the env file",
            ));
        }
        if touched.current {
            let cmd = match previous {
                Some(prev) => commands::release::switch(deploy_to, prev),
                None => commands::release::remove_current(deploy_to),
            };
            steps.push((cmd, SHORT, "switching `current` back"));
        }
        if touched.units {
            steps.push((
                commands::systemd::restore(deploy_to, &self.units()),
                RESTART,
                "restoring and restarting the units",
            ));
        }
        if touched.compose
            && let Some(compose) = &self.inventory.compose
        {
            let release_file = |id: &str| {
                format!(
                    "{deploy_to}/releases/{id}/{}",
                    crate::deploy::stage::COMPOSE_FILE
                )
            };
            let prev = previous.map(release_file);
            let now = release_file(release);
            let env = self.inventory.env.as_ref().map(|e| e.path.as_str());
            steps.push((
                commands::compose::back(&compose.project, prev.as_deref(), &now, env),
                RESTART,
                "restoring the compose stack",
            ));
        }
        if touched.nginx
            && let Some((site, _, _)) = &self.templates.nginx
        {
            steps.push((
                commands::nginx::restore(deploy_to, site),
                SHORT,
                "restoring the nginx site",
            ));
        }
        steps
    }

    /// Switches `conn` to `release`. On error, `touched` says what must be put back.
    pub async fn activate(
        &self,
        conn: &Conn<'_>,
        release: &str,
        previous: Option<&str>,
        touched: &mut Touched,
    ) -> Result<(), String> {
        let deploy_to = self.deploy_to();
        let release_dir = format!("{deploy_to}/releases/{release}");
        if let Some(guard) = &self.guard {
            self.step(conn, "arming the guard");
            // Everything this switch may touch, so the guard undoes all of it.
            let all = Touched {
                guard: true,
                env: self.deploy && self.inventory.env.is_some(),
                current: true,
                units: !self.templates.units.is_empty(),
                nginx: self.templates.nginx.is_some(),
                compose: self.inventory.compose.is_some(),
            };
            // The release the guard turns away from is no rollback target, whatever it was.
            let body: Vec<Cmd> = std::iter::once(commands::passed::forget(deploy_to, release))
                .chain(
                    self.undo_steps(release, previous, &all)
                        .into_iter()
                        .map(|(c, _, _)| c),
                )
                .collect();
            let line = {
                let mut entry = guard.history.clone();
                entry.hosts = vec![conn.host.name.clone()];
                let mut value = serde_json::to_value(&entry).expect("plain data serializes");
                guard.redactor.apply_json(&mut value);
                // The guard writes the time it fires: history sorts by when things happened.
                let mark = commands::guard::time_placeholder();
                value["time"] = mark.into();
                value["finished"] = mark.into();
                value.to_string()
            };
            let script =
                commands::guard::script(deploy_to, &guard.token, release, previous, &body, &line);
            let cmd = commands::guard::arm(deploy_to, &guard.token, guard.delay_secs);
            let req = ExecRequest::new(&cmd, SHORT)
                .stdin(crate::transport::Stdin::Bytes(script.into_bytes()));
            match conn.transport.exec(req).await {
                Ok(o) if o.success() => touched.guard = true,
                other => {
                    // A sleeper may have started all the same: it must never fire.
                    let cmd = commands::guard::disarm(deploy_to, &guard.token);
                    let _ = conn.transport.exec(ExecRequest::new(&cmd, SHORT)).await;
                    return Err(failure(other, "arming the dead-deployer guard"));
                }
            }
        }
        let mut vars = once::task_vars(self.inventory, &conn.host.name, release, previous);
        if self.deploy {
            vars.env_next = once::env_next(self.inventory, self.token);
        }
        self.hooks(conn, HookPoint::BeforeSwitch, &release_dir, &vars)
            .await?;
        if self.deploy
            && let Some(env) = &self.inventory.env
            && self.env_staged.contains(&conn.host.name)
        {
            self.step(conn, "installing env file");
            touched.env = true;
            let cmd = commands::envfile::activate(deploy_to, &env.path, self.token);
            match conn.transport.exec(ExecRequest::new(&cmd, SHORT)).await {
                Ok(o) if o.success() => {}
                Ok(o) if o.exit == Exit::Code(exit::ENV_STAGING_GONE) => {
                    // Nothing was changed, and what `.shipit/previous` holds may be another
                    // run's by now: nothing to put back.
                    touched.env = false;
                    return Err(failure(Ok(o), "installing the env file"));
                }
                other => return Err(failure(other, "installing the env file")),
            }
        }
        self.step(conn, "switching");
        touched.current = true;
        let cmd = commands::release::switch(deploy_to, release);
        run(conn, &cmd, SHORT, "switching `current`").await?;
        self.hooks(conn, HookPoint::AfterSwitch, &release_dir, &vars)
            .await?;

        let units = self.units();
        if !units.is_empty() {
            self.step(conn, "installing units");
            touched.units = true;
            let cmd = commands::systemd::install(
                deploy_to,
                &format!("{release_dir}/{SYSTEMD_DIR}"),
                &units,
            );
            let out = run(conn, &cmd, RESTART, "installing the units").await?;
            let changed: Vec<String> = out
                .stdout
                .text()
                .lines()
                .filter_map(|l| l.strip_prefix("changed ").map(str::to_owned))
                .collect();
            for unit in &units {
                self.step(conn, &format!("restarting {unit}"));
                let cmd = commands::systemd::start(unit, changed.contains(unit));
                match conn.transport.exec(ExecRequest::new(&cmd, RESTART)).await {
                    Ok(o) if o.success() => {}
                    Ok(o) if o.exit == Exit::Code(exit::NOT_ACTIVE) => {
                        return Err(format!(
                            "`{unit}` is not active after its restart:\n{}",
                            o.stderr.text().trim_end()
                        ));
                    }
                    other => return Err(failure(other, &format!("restarting `{unit}`"))),
                }
            }
        }
        if let Some((site, _, _)) = &self.templates.nginx {
            self.step(conn, "installing nginx site");
            touched.nginx = true;
            let cmd = commands::nginx::install(
                deploy_to,
                site,
                &format!("{release_dir}/{NGINX_DIR}/{site}"),
            );
            match conn.transport.exec(ExecRequest::new(&cmd, SHORT)).await {
                Ok(o) if o.success() => {}
                Ok(o) if o.exit == Exit::Code(exit::NGINX_INVALID) => {
                    return Err(format!(
                        "`nginx -t` rejects site `{site}`; the previous site was kept:\n{}",
                        o.stderr.text().trim_end()
                    ));
                }
                other => return Err(failure(other, "installing the nginx site")),
            }
        }
        if let Some(compose) = &self.inventory.compose {
            self.step(conn, "starting the compose stack");
            touched.compose = true;
            let env_path = self.inventory.env.as_ref().map(|e| e.path.as_str());
            let file = format!("{release_dir}/{}", crate::deploy::stage::COMPOSE_FILE);
            let cmd = commands::compose::up(&compose.project, &file, env_path);
            run(conn, &cmd, RESTART, "starting the compose stack").await?;
        }
        self.hooks(conn, HookPoint::AfterRestart, &release_dir, &vars)
            .await?;
        if !self.inventory.health.is_empty() {
            self.step(conn, "health check");
            let env_path = self.inventory.env.as_ref().map(|e| e.path.as_str());
            let checks = &self.inventory.health;
            health::wait_all(conn, checks, deploy_to, env_path)
                .await
                .map_err(|e| e.message)?;
        }
        match &self.guard {
            Some(guard) => {
                self.step(conn, "confirming");
                // Confirming also records that the release passed here (a rollback target).
                let cmd = commands::guard::confirm(deploy_to, &guard.token, release);
                match conn.transport.exec(ExecRequest::new(&cmd, SHORT)).await {
                    Ok(o) if o.success() => touched.guard = false,
                    Ok(o) if o.exit == Exit::Code(exit::GUARD_FIRED) => {
                        // The guard already put the host back: nothing left for us to undo.
                        *touched = Touched::default();
                        return Err(format!(
                            "the dead-deployer guard switched the host back before the deploy confirmed it (after {} s); raise `rollout.confirm_timeout`",
                            guard.delay_secs
                        ));
                    }
                    Ok(o) if o.exit == Exit::Code(exit::GUARD_DISARMED) => {
                        // Another run took over the host (`shipit unlock` while this run
                        // held the lock): it is that run's to change, not ours to undo.
                        *touched = Touched::default();
                        return Err(
                            "another run disarmed this run's dead-deployer guard (`shipit unlock` while this run held the lock); the host was left as it is".to_owned(),
                        );
                    }
                    other => return Err(failure(other, "confirming the switch")),
                }
            }
            None => {
                // A rollback: the release passed again; a record that cannot be written
                // costs only its being a rollback target later. (The release it replaced
                // is recorded rejected once the whole fleet rolled back.)
                let cmd = commands::passed::mark(deploy_to, release);
                if let Err(e) = run(conn, &cmd, SHORT, "recording the release as passed").await {
                    self.out
                        .emit(Event::Note(&format!("{}: {e}", conn.host.name)));
                }
            }
        }
        Ok(())
    }

    async fn hooks(
        &self,
        conn: &Conn<'_>,
        point: HookPoint,
        release_dir: &str,
        vars: &crate::commands::task::TaskVars,
    ) -> Result<(), String> {
        if !self.deploy {
            return Ok(());
        }
        let is_migrate_host = self.migrate_host.as_deref() == Some(conn.host.name.as_str());
        once::hooks(
            conn,
            self.inventory,
            point,
            release_dir,
            is_migrate_host,
            vars,
            self.out,
        )
        .await
    }

    /// Puts back what [`activate`](Self::activate) touched: `previous` becomes current
    /// again (or `current` is removed when there was none), then the health gate.
    pub async fn deactivate(
        &self,
        conn: &Conn<'_>,
        release: &str,
        previous: Option<&str>,
        touched: &Touched,
    ) -> Result<(), String> {
        let deploy_to = self.deploy_to();
        let mut problems = Vec::new();
        // First: the fleet did not accept the release (a deploy switched back after it
        // confirmed here, another host failed; a rollback to it that failed), so it is no
        // rollback target here, even if this run is killed while switching back.
        let cmd = commands::passed::forget(deploy_to, release);
        if let Err(e) = run(conn, &cmd, SHORT, "recording the release as rejected").await {
            self.out
                .emit(Event::Note(&format!("{}: {e}", conn.host.name)));
        }
        for (cmd, timeout, step) in self.undo_steps(release, previous, touched) {
            if let Err(e) = run(conn, &cmd, timeout, step).await {
                problems.push(e);
            }
        }
        if let Some(guard) = &self.guard
            && touched.guard
        {
            // Switched back by us: the guard must not do it again later.
            let cmd = commands::guard::disarm(deploy_to, &guard.token);
            let _ = conn.transport.exec(ExecRequest::new(&cmd, SHORT)).await;
        }
        if problems.is_empty() && previous.is_some() && !self.inventory.health.is_empty() {
            let env_path = self.inventory.env.as_ref().map(|e| e.path.as_str());
            let checks = &self.inventory.health;
            if let Err(e) = health::wait_all(conn, checks, deploy_to, env_path).await {
                problems.push(format!("after switching back, {e}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

async fn run(
    conn: &Conn<'_>,
    cmd: &crate::shell::Cmd,
    timeout: Duration,
    step: &str,
) -> Result<ExecOutput, String> {
    match conn.transport.exec(ExecRequest::new(cmd, timeout)).await {
        Ok(o) if o.success() => Ok(o),
        other => Err(failure(other, step)),
    }
}

fn failure(result: Result<ExecOutput, ExecError>, step: &str) -> String {
    match result {
        Ok(o) => {
            let stderr = o.stderr.text();
            let stderr = stderr.trim();
            if stderr.is_empty() {
                format!("{step} failed ({})", o.exit)
            } else {
                format!("{step} failed ({}): {stderr}", o.exit)
            }
        }
        Err(e) => format!("{step} failed: {}", crate::error::chain(&e)),
    }
}
