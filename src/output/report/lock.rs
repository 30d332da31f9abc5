//! `shipit lock`'s report: whether every selected host now holds the deploy lock with the
//! message, and on each host that does not, why.

use serde::Serialize;

use super::unlock::LockOwner;
use crate::output::{Report, table};

#[derive(Debug, Serialize)]
pub struct LockReport {
    pub stage: String,
    pub message: String,
    /// True when every selected host is locked with `message` (and stays so until
    /// `shipit unlock`); false when nothing was locked.
    pub locked: bool,
    pub hosts: Vec<HostLock>,
}

#[derive(Debug, Serialize)]
pub struct HostLock {
    pub host: String,
    /// This run took the lock on this host and left it held.
    pub locked: bool,
    /// The lock was held already (by another run, or on purpose): why nothing was locked.
    pub held: bool,
    /// Who holds it, as its owner.json says (`None` when that cannot be read).
    pub held_by: Option<LockOwner>,
    /// Why this host was not locked, in words.
    pub error: Option<String>,
}

impl Report for LockReport {
    fn human(&self) -> String {
        table::lock(self)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }
}

impl LockReport {
    /// Whether a lock someone else holds is why nothing was locked (exit 5).
    pub fn held_elsewhere(&self) -> bool {
        self.hosts.iter().any(|h| h.held)
    }
}
