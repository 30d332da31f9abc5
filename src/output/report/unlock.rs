//! Who holds a deploy lock (`.shipit/lock/owner.json`), and `shipit unlock`'s report: the
//! lock found on each host and whether it was removed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::output::{Report, table};

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
    /// Why the lock is held: set on a lock taken on purpose with `shipit lock -m`, which
    /// stays until `shipit unlock` (it never goes stale: nobody is expected to be running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl LockOwner {
    /// Whether the lock was taken on purpose (`shipit lock`), not by a run that holds it
    /// while it works.
    pub fn deliberate(&self) -> bool {
        self.message.is_some()
    }

    /// "alice@laptop (pid 42, `shipit deploy staging`) since 2026-…Z, 5m ago"; for a lock
    /// taken on purpose, "alice@laptop on purpose since 2026-…Z, 2h ago: \"why\" (…)".
    pub fn describe(&self, now_unix: u64, lock_timeout: Duration) -> String {
        let age = Duration::from_secs(now_unix.saturating_sub(self.started_unix));
        if let Some(message) = &self.message {
            let mut text = format!(
                "{}@{} on purpose since {}, {} ago",
                self.user,
                self.machine,
                self.started,
                humantime::format_duration(age)
            );
            if let Some(url) = &self.ci_url {
                text.push_str(&format!(", {url}"));
            }
            text.push_str(&format!(": {message:?} (`shipit unlock` releases it)"));
            return text;
        }
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

impl UnlockReport {
    pub fn failed(&self) -> bool {
        self.declined || self.hosts.iter().any(|h| h.error.is_some())
    }
}
