//! `shipit status`' report: per host, the current release, its units, one health check and
//! the deploy lock.

use serde::Serialize;

use crate::output::{Report, table};

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub stage: String,
    pub hosts: Vec<HostStatus>,
}

#[derive(Debug, Serialize)]
pub struct HostStatus {
    pub host: String,
    pub current: Option<String>,
    /// The git commit of the current release (`<sha>`, or `<sha>-dirty`), when recorded.
    pub git: Option<String>,
    /// (unit, `systemctl is-active` word)
    pub units: Vec<(String, String)>,
    /// `None` when `[health]` is not set; else whether one check passed, and why not.
    pub healthy: Option<bool>,
    pub health_error: Option<String>,
    pub locked_by: Option<String>,
    /// The message of a lock taken on purpose with `shipit lock -m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_message: Option<String>,
    pub error: Option<String>,
    /// The port the Nginx site points at, for a blue-green unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_port: Option<u16>,
}

impl StatusReport {
    pub fn ok(&self) -> bool {
        self.hosts.iter().all(|h| {
            h.error.is_none()
                && h.healthy != Some(false)
                && h.units.iter().all(|(_, s)| s == "active")
        })
    }
}

impl Report for StatusReport {
    fn human(&self) -> String {
        table::status(self)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }
}
