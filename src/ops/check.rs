//! `shipit check`: can every selected host be deployed to?
//!
//! Connects to all hosts at once (bounded by `rollout.parallel`) and reports, per host:
//! reachable, host key verified, authenticated, the tools shipit relies on, write access
//! where the release tree goes and the free space there. Every host is reported, also when
//! some fail.

use crate::execute::{self, timeout};
use crate::inventory::{Host, Inventory, TransportKind};
use crate::output::report::check::{CheckReport, HostCheck};
use crate::output::report::unlock::LockOwner;
use crate::output::{Event, Output};
use crate::plan::facts;
use crate::transport::fleet::{self, Conn, Connector};
use crate::transport::{ConnectStage, ExecRequest};

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
        sudo: None,
        needs: Vec::new(),
        locked_by: None,
        host_key: None,
        jump_host_key: None,
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
    check.jump_host_key = transport.jump_host_key().map(str::to_owned);
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
            let sudo = conn.transport.sudo_login().is_some();
            // A `deploy_to` that does not exist yet is made through sudo (`ssh.sudo`).
            let made_by_sudo = sudo && facts.write_path != inventory.app.deploy_to;
            if !facts.writable && !made_by_sudo {
                let deploy_to = &inventory.app.deploy_to;
                let fix = if facts.write_path == *deploy_to {
                    format!("make it theirs: `chown -R {} {deploy_to}`", facts.user)
                } else {
                    format!(
                        "make it theirs: `install -d -o {} {deploy_to}`, or set `ssh.sudo = true`",
                        facts.user
                    )
                };
                check.problems.push(format!(
                    "user `{}` cannot write to `{}` (where `{deploy_to}` goes); {fix}",
                    facts.user, facts.write_path
                ));
            }
            check.locked_by =
                facts.lock_owner_json.as_deref().map(|json| {
                    match serde_json::from_str::<LockOwner>(json) {
                        Ok(owner) => {
                            owner.describe(crate::clock::now_unix(), inventory.rollout.lock_timeout)
                        }
                        Err(_) => "an unknown owner (owner.json missing or unreadable)".to_owned(),
                    }
                });
            check.facts = Some(facts);
        }
        Err(e) => check.problems.push(e.message),
    }
    check_needs(inventory, &conn, &mut check).await;
    conn.transport.close().await;
    check.ok = check.problems.is_empty();
    out.emit(Event::HostDone {
        host: &host.name,
        ok: check.ok,
        summary: if check.ok { "ready" } else { "not ready" },
    });
    check
}

/// Probes what the inventory needs of the host, as the user the steps that use it run as:
/// root through `sudo -n` with `ssh.sudo` (which is checked first: a host whose sudo wants a
/// password is never ready), else the SSH user. Each missing need is a problem that says
/// what to do.
async fn check_needs(inventory: &Inventory, conn: &Conn<'_>, check: &mut HostCheck) {
    let sudo = conn.transport.sudo_login().is_some();
    let probe = facts::needs(inventory);
    let req = ExecRequest::new(&probe, timeout::PROBE).as_root();
    let o = match execute::exec(conn, "probe", "the probe of what the inventory needs", req).await {
        Ok(o) => o,
        Err(e) => {
            if sudo {
                check.sudo = Some(false);
            }
            check.problems.push(e.message);
            return;
        }
    };
    if sudo {
        check.sudo = Some(true);
    }
    let (user, needs) = facts::parse_needs(&o.stdout.text());
    let fix = if sudo || user == "root" {
        String::new()
    } else {
        format!("; set `ssh.sudo = true` (with passwordless sudo for `{user}`), or deploy as root")
    };
    for need in needs.iter().filter(|n| !n.ok) {
        let path = need.path.as_deref().unwrap_or("");
        check.problems.push(match need.name.as_str() {
            "nginx" => "`[nginx]` needs Nginx on the host: `nginx -v` does not run (install it: `apt-get install nginx`)".to_owned(),
            "systemd" => "`[[systemd]]` needs systemd on the host: `systemctl --version` does not run".to_owned(),
            "docker" => format!(
                "`[compose]` needs a Docker daemon that answers `{user}`: `docker info` fails (is dockerd running?{})",
                if sudo || user == "root" { "" } else { " is the user in the `docker` group?" }
            ),
            "nginx_dir" => format!("user `{user}` cannot write to `{path}`, where `[nginx]` installs the site{fix}"),
            "unit_dir" => format!("user `{user}` cannot write to `{path}`, where `[[systemd]]` installs the units{fix}"),
            "env_dir" => format!("user `{user}` cannot write to `{path}`, where `env.path` goes{fix}"),
            "backup_dir" => format!("user `{user}` cannot write to `{path}`, where `backup.dir` keeps the backups{fix}"),
            other => format!("`{other}` is missing"),
        });
    }
    check.needs = needs;
}
