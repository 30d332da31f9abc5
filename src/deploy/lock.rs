//! The deploy lock across a fleet: all or nothing, with an owner people can read.
//!
//! A lock is never taken over automatically, however old: a stale lock is reported with its
//! owner and age, and only `shipit unlock` ([`crate::ops::unlock`], asking first, or
//! `--yes`) removes it. `shipit lock` ([`crate::ops::lock`]) takes the same lock on
//! purpose, with a message, and leaves it held when it exits.

use std::time::Duration;

use crate::commands;
use crate::execute::timeout::SHORT;
use crate::execute::{self, RemoteError};
use crate::output::redact::Redactor;
// `pub`: the deploy pipeline names it from here.
pub use crate::output::report::unlock::LockOwner;
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

impl RunInfo {
    /// What this run writes into `.shipit/lock/owner.json`.
    pub fn owner(&self) -> LockOwner {
        LockOwner {
            token: self.token.clone(),
            user: self.user.clone(),
            machine: self.machine.clone(),
            pid: self.pid,
            command: self.command.clone(),
            started: rfc3339(self.started_unix),
            started_unix: self.started_unix,
            ci_url: self.ci_url.clone(),
            message: None,
        }
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
    acquire_all_as(conns, deploy_to, env_path, run, &run.owner()).await
}

/// [`acquire_all`], writing `owner` as the lock's owner.json (`shipit lock`: the run's
/// owner with its message).
pub async fn acquire_all_as(
    conns: &[Conn<'_>],
    deploy_to: &str,
    env_path: Option<&str>,
    run: &RunInfo,
    owner: &LockOwner,
) -> Vec<LockState> {
    acquire_all_then(conns, deploy_to, env_path, run, owner, None)
        .await
        .into_iter()
        .map(|(state, _)| state)
        .collect()
}

/// [`acquire_all_as`], running `then` (a command that only reads) in the same command
/// right after the lock is taken: one round trip fewer for a run that reads its hosts
/// first. Each host's `then` stdout comes back with its state: `Some` when the lock was
/// taken and `then` succeeded (`None`: read it again the usual way, for its error).
pub async fn acquire_all_then(
    conns: &[Conn<'_>],
    deploy_to: &str,
    env_path: Option<&str>,
    run: &RunInfo,
    owner: &LockOwner,
    then: Option<&crate::shell::Cmd>,
) -> Vec<(LockState, Option<String>)> {
    let mut owner = serde_json::to_value(owner).expect("plain data serializes");
    run.redactor.apply_json(&mut owner);
    let owner = owner.to_string();
    let Some((first, rest)) = conns.split_first() else {
        return Vec::new();
    };
    // With `ssh.sudo` the lock is the SSH user's, the env file's directory root's: the
    // stale staging goes in a root command of its own once the lock is taken.
    let sudo = first.transport.sudo_login().is_some();
    let (lock_env, root_env) = if sudo {
        (None, env_path)
    } else {
        (env_path, None)
    };
    let cmd = match then {
        None => commands::lock::acquire(deploy_to, lock_env),
        Some(then) => commands::lock::acquire_then(deploy_to, lock_env, then),
    };
    let cleanup = root_env.map(commands::envfile::discard_all);
    let lock = |c| try_lock(c, &cmd, cleanup.as_ref(), &owner, deploy_to, then.is_some());
    let mut states = vec![lock(first).await];
    if matches!(states[0].0, LockState::Taken) {
        let others = rest.iter().map(lock);
        states.extend(futures::future::join_all(others).await);
    } else {
        states.extend(rest.iter().map(|_| (LockState::NotTried, None)));
    }
    // Held by this very run: another host of the inventory reaches the same machine (or the
    // same `deploy_to` on shared storage). Not another run's lock (exit 5): a setup error.
    for (c, (state, _)) in conns.iter().zip(&mut states) {
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
    cleanup: Option<&crate::shell::Cmd>,
    owner: &str,
    deploy_to: &str,
    then: bool,
) -> (LockState, Option<String>) {
    let req = ExecRequest::new(cmd, SHORT).stdin(Stdin::Bytes(owner.as_bytes().to_vec()));
    let what = format!("taking the deploy lock under `{deploy_to}`");
    let o = match execute::output(c, STEP, &what, req).await {
        Ok(o) => o,
        Err(e) => return (LockState::Failed(e), None),
    };
    if then && o.success() {
        let read = commands::lock::then_output(&o.stdout.text());
        return (taken(c, cleanup).await, read);
    }
    let failed = || RemoteError::from_output(&c.host.name, STEP, &what, &o);
    let state = match o.exit {
        _ if o.success() => taken(c, cleanup).await,
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
    };
    (state, None)
}

/// The lock is taken on `c`: with `ssh.sudo`, root removes what earlier runs staged
/// (`cleanup`; best effort, as in the lock's own script: this run stages under its own
/// name).
async fn taken(c: &Conn<'_>, cleanup: Option<&crate::shell::Cmd>) -> LockState {
    if let Some(cleanup) = cleanup {
        let _ = c
            .transport
            .exec(ExecRequest::new(cleanup, SHORT).as_root())
            .await;
    }
    LockState::Taken
}

/// The dead-deployer guard of a dead run fired and is still switching the host back.
pub(crate) fn guard_busy(deploy_to: &str, runs: &str) -> String {
    format!(
        "the dead-deployer guard of run {} is switching the host back under `{deploy_to}`; try again when it is done",
        runs.split_whitespace().collect::<Vec<_>>().join(", ")
    )
}

/// Releases this run's lock on the given hosts (a lock of another run stays).
pub async fn release_all(conns: &[&Conn<'_>], deploy_to: &str, token: &str) {
    let cmd = commands::lock::release(deploy_to, token);
    // A lock that cannot be released stays with this run's token: `shipit unlock` removes it.
    let runs = conns
        .iter()
        .map(|c| execute::run(c, STEP, "releasing the deploy lock", &cmd, SHORT));
    futures::future::join_all(runs).await;
}
