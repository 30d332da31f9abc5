//! The deploy lock across a fleet: all or nothing, with an owner people can read, and
//! `shipit unlock` for a lock whose owner died.
//!
//! A lock is never taken over automatically, however old: a stale lock is reported with its
//! owner and age, and only `shipit unlock` (asking first, or `--yes`) removes it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::commands;
use crate::execute::timeout::SHORT;
use crate::execute::{self, RemoteError};
use crate::output::redact::Redactor;
use crate::output::{Report, table};
use crate::plan::rfc3339;
use crate::transport::fleet::Conn;
use crate::transport::{ExecRequest, Exit, Stdin};

/// The plan step of taking and releasing the lock.
const STEP: &str = "lock";

/// Who runs this shipit process; written into locks and history.
#[derive(Clone, Debug)]
pub struct RunInfo {
    /// Unique per run: identifies this run's lock and history lines.
    pub token: String,
    pub user: String,
    pub machine: String,
    pub pid: u32,
    /// The command line (shipit never takes secrets as arguments).
    pub command: String,
    pub ci_url: Option<String>,
    pub started_unix: u64,
    pub started_millis: u64,
    /// Every secret value the run knows: what it writes on a host (history lines, owner.json,
    /// the guard's script) goes through this, like what it prints.
    pub redactor: Redactor,
}

/// `.shipit/lock/owner.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    pub token: String,
    pub user: String,
    pub machine: String,
    pub pid: u32,
    pub command: String,
    pub started: String,
    pub started_unix: u64,
    #[serde(default)]
    pub ci_url: Option<String>,
}

impl LockOwner {
    pub fn of(run: &RunInfo) -> LockOwner {
        LockOwner {
            token: run.token.clone(),
            user: run.user.clone(),
            machine: run.machine.clone(),
            pid: run.pid,
            command: run.command.clone(),
            started: rfc3339(run.started_unix),
            started_unix: run.started_unix,
            ci_url: run.ci_url.clone(),
        }
    }

    /// "alice@laptop (pid 42, `shipit deploy staging`) since 2026-…Z, 5m ago".
    pub fn describe(&self, now_unix: u64, lock_timeout: Duration) -> String {
        let age = Duration::from_secs(now_unix.saturating_sub(self.started_unix));
        let mut text = format!(
            "{}@{} (pid {}, `{}`) since {}, {} ago",
            self.user,
            self.machine,
            self.pid,
            self.command,
            self.started,
            humantime::format_duration(age)
        );
        if let Some(url) = &self.ci_url {
            text.push_str(&format!(", {url}"));
        }
        if age > lock_timeout {
            text.push_str(&format!(
                "; STALE (older than {}): if that run is dead, remove it with `shipit unlock`",
                humantime::format_duration(lock_timeout)
            ));
        }
        text
    }
}

/// How a host's lock looked when we tried to take it.
pub enum LockState {
    Taken,
    /// Held by someone else; `None` when its owner.json is missing or unreadable.
    Held(Option<LockOwner>),
    Failed(RemoteError),
    /// Not attempted: the first host could not be locked.
    NotTried,
}

impl LockState {
    /// Why this run does not hold the host's lock, in words (`None`: it does). `first` is
    /// the host locked first, named when this one was never tried.
    pub fn problem(&self, first: &str, now_unix: u64, lock_timeout: Duration) -> Option<String> {
        match self {
            LockState::Taken => None,
            LockState::Held(owner) => Some(format!(
                "locked by {}",
                owner.as_ref().map_or_else(
                    || "an unknown owner (owner.json missing)".to_owned(),
                    |o| o.describe(now_unix, lock_timeout),
                )
            )),
            LockState::Failed(e) => Some(e.message.clone()),
            LockState::NotTried => Some(format!("not locked: `{first}` could not be")),
        }
    }
}

/// Tries to lock every host. The first host (in inventory order) is locked alone before the
/// others, so of two runs over the same hosts started at the same moment exactly one wins:
/// the loser stops at the first host and never touches the rest. The caller releases the
/// taken locks unless all were taken.
/// Taking a lock also removes the env files earlier runs staged next to `env_path`.
pub async fn acquire_all(
    conns: &[Conn<'_>],
    deploy_to: &str,
    env_path: Option<&str>,
    run: &RunInfo,
) -> Vec<LockState> {
    let mut owner = serde_json::to_value(LockOwner::of(run)).expect("plain data serializes");
    run.redactor.apply_json(&mut owner);
    let owner = owner.to_string();
    let cmd = commands::lock::acquire(deploy_to, env_path);
    let Some((first, rest)) = conns.split_first() else {
        return Vec::new();
    };
    let mut states = vec![try_lock(first, &cmd, &owner, deploy_to).await];
    if matches!(states[0], LockState::Taken) {
        let others = rest.iter().map(|c| try_lock(c, &cmd, &owner, deploy_to));
        states.extend(futures::future::join_all(others).await);
    } else {
        states.extend(rest.iter().map(|_| LockState::NotTried));
    }
    // Held by this very run: another host of the inventory reaches the same machine (or the
    // same `deploy_to` on shared storage). Not another run's lock (exit 5): a setup error.
    for (c, state) in conns.iter().zip(&mut states) {
        if let LockState::Held(Some(o)) = state
            && o.token == run.token
        {
            *state = LockState::Failed(RemoteError::new(
                &c.host.name,
                STEP,
                format!(
                    "`{deploy_to}` is already locked by this run through another host: two hosts of the inventory reach the same machine or share `deploy_to`; list it once"
                ),
            ));
        }
    }
    states
}

async fn try_lock(
    c: &Conn<'_>,
    cmd: &crate::shell::Cmd,
    owner: &str,
    deploy_to: &str,
) -> LockState {
    let req = ExecRequest::new(cmd, SHORT).stdin(Stdin::Bytes(owner.as_bytes().to_vec()));
    let what = format!("taking the deploy lock under `{deploy_to}`");
    let o = match execute::output(c, STEP, &what, req).await {
        Ok(o) => o,
        Err(e) => return LockState::Failed(e),
    };
    let failed = || RemoteError::from_output(&c.host.name, STEP, &what, &o);
    match o.exit {
        _ if o.success() => LockState::Taken,
        Exit::Code(commands::exit::LOCK_HELD) => {
            LockState::Held(serde_json::from_str(o.stdout.text().trim()).ok())
        }
        Exit::Code(commands::exit::GUARD_BUSY) => {
            LockState::Failed(failed().saying(guard_busy(deploy_to, &o.stdout.text())))
        }
        _ => {
            let e = failed();
            let message = format!(
                "cannot take the deploy lock under `{deploy_to}` ({}): {}",
                o.exit, e.stderr_tail
            );
            LockState::Failed(e.saying(message))
        }
    }
}

/// The dead-deployer guard of a dead run fired and is still switching the host back.
fn guard_busy(deploy_to: &str, runs: &str) -> String {
    format!(
        "the dead-deployer guard of run {} is switching the host back under `{deploy_to}`; try again when it is done",
        runs.split_whitespace().collect::<Vec<_>>().join(", ")
    )
}

/// How long `shipit unlock` waits for a guard that is switching its host back.
const GUARD_WAIT_SECS: u64 = 30;

/// Releases this run's lock on the given hosts (a lock of another run stays).
pub async fn release_all(conns: &[&Conn<'_>], deploy_to: &str, token: &str) {
    let cmd = commands::lock::release(deploy_to, token);
    // A lock that cannot be released stays with this run's token: `shipit unlock` removes it.
    let runs = conns
        .iter()
        .map(|c| execute::run(c, STEP, "releasing the deploy lock", &cmd, SHORT));
    futures::future::join_all(runs).await;
}

/// What `shipit unlock` found and did on one host.
#[derive(Debug, Serialize)]
pub struct HostUnlock {
    pub host: String,
    pub owner: Option<LockOwner>,
    pub locked: bool,
    pub removed: bool,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct UnlockReport {
    pub stage: String,
    pub hosts: Vec<HostUnlock>,
    /// Why nothing was removed, when the user declined.
    pub declined: bool,
}

impl Report for UnlockReport {
    fn human(&self) -> String {
        table::unlock(self)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }
}

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
            match c.transport.exec(ExecRequest::new(cmd, SHORT)).await {
                Ok(o) if o.success() => {
                    h.locked = true;
                    h.owner = serde_json::from_str(o.stdout.text().trim()).ok();
                }
                Ok(o) if o.exit == crate::transport::Exit::Code(commands::exit::NO_LOCK) => {}
                Ok(o) => h.error = Some(format!("{}: {}", o.exit, o.stderr.text().trim())),
                Err(e) => h.error = Some(e.to_string()),
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
    let cmd = commands::lock::force_remove(deploy_to, GUARD_WAIT_SECS, env_path);
    let runs = conns.iter().zip(hosts.iter()).map(|(c, h)| {
        let cmd = &cmd;
        let locked = h.locked;
        async move {
            if !locked {
                return None;
            }
            Some(match c.transport.exec(ExecRequest::new(cmd, SHORT)).await {
                Ok(o) if o.success() => Ok(()),
                Ok(o) if o.exit == crate::transport::Exit::Code(commands::exit::GUARD_BUSY) => {
                    Err(guard_busy(deploy_to, &o.stdout.text()))
                }
                Ok(o) => Err(format!("{}: {}", o.exit, o.stderr.text().trim())),
                Err(e) => Err(e.to_string()),
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
                    Some(o) => format!(
                        "removed the lock of {}@{} (pid {}, `{}`, run {}) taken at {}",
                        o.user, o.machine, o.pid, o.command, o.token, o.started
                    ),
                    None => "removed a lock without owner.json".to_owned(),
                };
                let message = format!(
                    "{message}; every dead-deployer guard still armed was disarmed (the host stays on the release it runs)"
                );
                let entry = crate::ops::history::Record {
                    time: crate::plan::rfc3339_millis(run.started_millis),
                    finished: Some(crate::plan::rfc3339_millis(
                        crate::deploy::pipeline::now_millis(),
                    )),
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

impl UnlockReport {
    pub fn failed(&self) -> bool {
        self.declined || self.hosts.iter().any(|h| h.error.is_some())
    }
}
