//! `shipit unlock`: removes the deploy lock of a run that died, or one taken on purpose with
//! `shipit lock`, after showing its owner and asking (or `--yes`), and records the removal
//! in each host's history.
//!
//! Removing a lock also disarms every dead-deployer guard still armed on the host and the
//! env files runs staged; the host stays on the release it runs.

use crate::commands::{self, exit};
use crate::deploy::lock::{RunInfo, guard_busy};
use crate::execute::{self, RemoteError, timeout};
use crate::output::report::history::Record;
use crate::output::report::unlock::{HostUnlock, UnlockReport};
use crate::transport::fleet::Conn;
use crate::transport::{ExecRequest, Exit};

/// How long `shipit unlock` waits for a guard that is switching its host back.
const GUARD_WAIT_SECS: u64 = 30;

/// The step a failure of this command names.
const STEP: &str = "unlock";

/// Reads the lock of every host.
pub async fn inspect(conns: &[Conn<'_>], deploy_to: &str) -> Vec<HostUnlock> {
    let cmd = commands::lock::read(deploy_to);
    let runs = conns.iter().map(|c| {
        let cmd = &cmd;
        async move {
            let mut h = HostUnlock {
                host: c.host.name.clone(),
                owner: None,
                locked: false,
                removed: false,
                error: None,
            };
            match execute::run(c, STEP, "reading the lock", cmd, timeout::SHORT).await {
                Ok(o) => {
                    h.locked = true;
                    h.owner = serde_json::from_str(o.stdout.text().trim()).ok();
                }
                Err(e) if e.is(exit::NO_LOCK) => {}
                Err(e) => h.error = Some(e.message),
            }
            h
        }
    });
    futures::future::join_all(runs).await
}

/// Removes the locks found by [`inspect`], and with each the env files runs staged next to
/// `env_path`.
pub async fn remove(
    conns: &[Conn<'_>],
    deploy_to: &str,
    env_path: Option<&str>,
    hosts: &mut [HostUnlock],
) {
    // With `ssh.sudo` the lock is the SSH user's and the staged env files root's: those go
    // in a root command of their own, before the lock.
    let sudo = conns.iter().any(|c| c.transport.sudo_login().is_some());
    let (lock_env, root_env) = if sudo {
        (None, env_path)
    } else {
        (env_path, None)
    };
    let cmd = commands::lock::force_remove(deploy_to, GUARD_WAIT_SECS, lock_env);
    let discard = root_env.map(commands::envfile::discard_all);
    let runs = conns.iter().zip(hosts.iter()).map(|(c, h)| {
        let cmd = &cmd;
        let discard = discard.as_ref();
        let locked = h.locked;
        async move {
            if !locked {
                return None;
            }
            if let Some(discard) = discard {
                let what = "removing the staged env files";
                let req = ExecRequest::new(discard, timeout::SHORT).as_root();
                if let Err(e) = execute::exec(c, STEP, what, req).await {
                    return Some(Err(e.message));
                }
            }
            let what = "removing the lock";
            let req = ExecRequest::new(cmd, timeout::SHORT);
            Some(match execute::output(c, STEP, what, req).await {
                Ok(o) if o.success() => Ok(()),
                Ok(o) if o.exit == Exit::Code(exit::GUARD_BUSY) => {
                    Err(guard_busy(deploy_to, &o.stdout.text()))
                }
                Ok(o) => Err(RemoteError::from_output(&c.host.name, STEP, what, &o).message),
                Err(e) => Err(e.message),
            })
        }
    });
    let results = futures::future::join_all(runs).await;
    for (h, result) in hosts.iter_mut().zip(results) {
        match result {
            Some(Ok(())) => h.removed = true,
            Some(Err(e)) => h.error = Some(e),
            None => {}
        }
    }
}

/// `shipit unlock`: shows every lock, asks `confirm`, removes them and records it.
pub async fn unlock(
    stage: &str,
    conns: &[Conn<'_>],
    deploy_to: &str,
    env_path: Option<&str>,
    run: &RunInfo,
    confirm: impl FnOnce(&[HostUnlock]) -> bool,
) -> UnlockReport {
    let mut hosts = inspect(conns, deploy_to).await;
    let mut report = UnlockReport {
        stage: stage.to_owned(),
        hosts: Vec::new(),
        declined: false,
    };
    if hosts.iter().any(|h| h.locked) {
        if confirm(&hosts) {
            remove(conns, deploy_to, env_path, &mut hosts).await;
            let removed: Vec<&Conn<'_>> = conns
                .iter()
                .zip(&hosts)
                .filter(|(_, h)| h.removed)
                .map(|(c, _)| c)
                .collect();
            for (c, h) in conns.iter().zip(&hosts) {
                if !h.removed {
                    continue;
                }
                let message = match &h.owner {
                    Some(o) if o.deliberate() => format!(
                        "removed the lock {}@{} took on purpose at {}: {:?}",
                        o.user,
                        o.machine,
                        o.started,
                        o.message.as_deref().unwrap_or_default()
                    ),
                    Some(o) => format!(
                        "removed the lock of {}@{} (pid {}, `{}`, run {}) taken at {}",
                        o.user, o.machine, o.pid, o.command, o.token, o.started
                    ),
                    None => "removed a lock without owner.json".to_owned(),
                };
                let message = format!(
                    "{message}; every dead-deployer guard still armed was disarmed (the host stays on the release it runs)"
                );
                let entry = Record {
                    time: crate::plan::rfc3339_millis(run.started_millis),
                    finished: Some(crate::plan::rfc3339_millis(crate::clock::now_millis())),
                    action: "unlock".to_owned(),
                    outcome: "success".to_owned(),
                    user: run.user.clone(),
                    machine: run.machine.clone(),
                    command: run.command.clone(),
                    run: run.token.clone(),
                    ci_url: run.ci_url.clone(),
                    hosts: removed.iter().map(|c| c.host.name.clone()).collect(),
                    message: Some(message),
                    ..Default::default()
                };
                crate::ops::history::append(
                    std::slice::from_ref(c),
                    deploy_to,
                    &entry,
                    &run.redactor,
                )
                .await;
            }
        } else {
            report.declined = true;
        }
    }
    report.hosts = hosts;
    report
}
