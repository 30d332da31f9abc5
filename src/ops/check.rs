//! `shipit check`: can every selected host be deployed to?
//!
//! Connects to all hosts at once (bounded by `rollout.parallel`) and reports, per host:
//! reachable, host key verified, authenticated, the tools shipit relies on, write access
//! where the release tree goes and the free space there. Every host is reported, also when
//! some fail.

use serde::Serialize;

use crate::execute::{self, timeout};
use crate::inventory::{Host, Inventory, TransportKind};
use crate::output::{Event, Output};
use crate::plan::facts::{self, HostProbe};
use crate::ssh::reach::Origin;
use crate::transport::ConnectStage;
use crate::transport::fleet::{self, Conn, Connector};

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

impl crate::output::Report for CheckReport {
    fn human(&self) -> String {
        crate::output::table::check(self)
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
    /// A deploy lock held on the host (not a failure: a deploy may be running).
    pub locked_by: Option<String>,
    /// How the host key was trusted: fingerprint and the known_hosts line, pin or
    /// certificate authority that vouched for it.
    pub host_key: Option<String>,
    /// The connection settings and where each came from (inventory, ssh_config, default).
    pub connection: Vec<Origin>,
    pub problems: Vec<String>,
}

pub async fn run(
    stage: &str,
    inventory: &Inventory,
    hosts: &[&Host],
    connector: &Connector,
    out: &Output,
    verbose: bool,
) -> CheckReport {
    let checks = fleet::each_host(hosts, inventory.rollout.parallel, |host| {
        check_host(inventory, host, connector, out)
    })
    .await;
    CheckReport {
        stage: stage.to_owned(),
        transport: inventory.transport,
        deploy_to: inventory.app.deploy_to.clone(),
        hosts: checks,
        verbose,
    }
}

async fn check_host(
    inventory: &Inventory,
    host: &Host,
    connector: &Connector,
    out: &Output,
) -> HostCheck {
    let local = inventory.transport == TransportKind::Local;
    // Over SSH: the address and port the inventory and `~/.ssh/config` resolve to.
    let reach = connector.reach(&host.name);
    let mut check = HostCheck {
        host: host.name.clone(),
        address: match reach {
            Some(r) => format!("{}:{}", r.target.address, r.target.port),
            None if local => "local".to_owned(),
            None => format!("{}:{}", host.address, host.port),
        },
        ok: false,
        reachable: false,
        host_key_verified: None,
        authenticated: None,
        facts: None,
        locked_by: None,
        host_key: None,
        connection: reach.map(|r| r.sources.clone()).unwrap_or_default(),
        problems: Vec::new(),
    };
    out.emit(Event::Step {
        host: &host.name,
        step: "connecting",
    });
    let transport = match connector.connect(host).await {
        Ok(t) => t,
        Err(e) => {
            match e.stage() {
                ConnectStage::Reach => {}
                ConnectStage::HostKey => {
                    check.reachable = true;
                    check.host_key_verified = Some(false);
                }
                ConnectStage::Auth => {
                    check.reachable = true;
                    check.host_key_verified = Some(true);
                    check.authenticated = Some(false);
                }
            }
            check.problems.push(crate::error::chain(&e));
            out.emit(Event::HostDone {
                host: &host.name,
                ok: false,
                summary: "connection failed",
            });
            return check;
        }
    };
    check.reachable = true;
    check.host_key_verified = (!local).then_some(true);
    check.host_key = transport.host_key().map(str::to_owned);
    if let Some(step) = fleet::host_key_step(transport.as_ref()) {
        out.emit(Event::Step {
            host: &host.name,
            step: &step,
        });
    }
    check.authenticated = Some(true);
    out.emit(Event::Step {
        host: &host.name,
        step: "probing",
    });
    let probe = facts::probe(&inventory.app.deploy_to);
    let conn = Conn { host, transport };
    match execute::run(&conn, "probe", "the probe", &probe, timeout::PROBE).await {
        Ok(output) => {
            let facts = facts::parse_probe(&output.stdout.text());
            let missing = facts.missing_tools();
            if !missing.is_empty() {
                check
                    .problems
                    .push(format!("missing tools: {}", missing.join(", ")));
            }
            if inventory.compose.is_some() && facts.compose.is_none() {
                check.problems.push(
                    "`[compose]` needs Docker Compose on the host: neither `docker compose` (v2) nor `docker-compose` (v1) runs".to_owned(),
                );
            }
            if !facts.writable {
                check.problems.push(format!(
                    "user `{}` cannot write to `{}` (where `{}` goes)",
                    facts.user, facts.write_path, inventory.app.deploy_to
                ));
            }
            check.locked_by =
                facts.lock_owner_json.as_deref().map(|json| {
                    match serde_json::from_str::<crate::deploy::lock::LockOwner>(json) {
                        Ok(owner) => owner.describe(
                            crate::deploy::pipeline::now_unix(),
                            inventory.rollout.lock_timeout,
                        ),
                        Err(_) => "an unknown owner (owner.json missing or unreadable)".to_owned(),
                    }
                });
            check.facts = Some(facts);
        }
        Err(e) => check.problems.push(e.message),
    }
    conn.transport.close().await;
    check.ok = check.problems.is_empty();
    out.emit(Event::HostDone {
        host: &host.name,
        ok: check.ok,
        summary: if check.ok { "ready" } else { "not ready" },
    });
    check
}
