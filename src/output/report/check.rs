//! `shipit check`'s report: per host, how far a connection got and what the probe found.

use serde::Serialize;

use crate::inventory::TransportKind;
use crate::output::{Report, table};
use crate::plan::facts::{HostProbe, Need};
use crate::ssh::reach::Origin;

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub stage: String,
    pub transport: TransportKind,
    pub deploy_to: String,
    pub hosts: Vec<HostCheck>,
    /// `-v`: the human report shows where each connection setting came from.
    #[serde(skip)]
    pub verbose: bool,
}

impl Report for CheckReport {
    fn human(&self) -> String {
        table::check(self)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }
}

impl CheckReport {
    pub fn failed(&self) -> usize {
        self.hosts.iter().filter(|h| !h.ok).count()
    }
}

/// `None` in a field means it was not reached (an earlier stage failed) or does not apply
/// (the local transport has no host key).
#[derive(Debug, Serialize)]
pub struct HostCheck {
    pub host: String,
    pub address: String,
    pub ok: bool,
    pub reachable: bool,
    pub host_key_verified: Option<bool>,
    pub authenticated: Option<bool>,
    pub facts: Option<HostProbe>,
    /// `ssh.sudo`: whether `sudo -n` runs commands as root (`None` without `ssh.sudo`, or
    /// when the probe did not get that far).
    pub sudo: Option<bool>,
    /// What the inventory needs of the host (Nginx, systemd, Docker, write access where the
    /// env file, units, site and backups go), probed as the user the steps run as.
    pub needs: Vec<Need>,
    /// A deploy lock held on the host (not a failure: a deploy may be running).
    pub locked_by: Option<String>,
    /// How the host key was trusted: fingerprint and the known_hosts line, pin or
    /// certificate authority that vouched for it.
    pub host_key: Option<String>,
    /// The same for the jump host, when the connection goes through one.
    pub jump_host_key: Option<String>,
    /// The connection settings and where each came from (inventory, ssh_config, default).
    pub connection: Vec<Origin>,
    pub problems: Vec<String>,
}
