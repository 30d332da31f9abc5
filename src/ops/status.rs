//! `shipit status`: per host, the current release, whether each unit is active, one health
//! check, and the deploy lock. Read-only.

use std::time::Duration;

use crate::commands;
use crate::deploy::health;
use crate::execute::{self, timeout};
use crate::inventory::Inventory;
use crate::output::report::status::{HostStatus, StatusReport};
use crate::output::report::unlock::LockOwner;
use crate::output::{Event, Output};
use crate::plan::facts;
use crate::shell::Cmd;
use crate::transport::ExecRequest;
use crate::transport::fleet::Conn;

fn units_probe(units: &[String]) -> Cmd {
    let mut steps = Vec::new();
    for unit in units {
        steps.push(Cmd::assign("u", unit));
        steps.push(Cmd::new(
            r#"printf '%s %s\n' "$u" "$(systemctl is-active -- "$u" 2>/dev/null || true)""#,
        ));
    }
    Cmd::seq(steps)
}

pub async fn show(
    stage: &str,
    conns: &[Conn<'_>],
    inventory: &Inventory,
    out: &Output,
) -> StatusReport {
    let deploy_to = &inventory.app.deploy_to;
    let hosts = futures::future::join_all(conns.iter().map(|c| {
        async move {
            out.emit(Event::Step {
                host: &c.host.name,
                step: "reading status",
            });
            let mut h = HostStatus {
                host: c.host.name.clone(),
                current: None,
                git: None,
                units: Vec::new(),
                healthy: None,
                health_error: None,
                locked_by: None,
                lock_message: None,
                error: None,
                live_port: None,
            };
            let tree = facts::releases(deploy_to);
            match execute::run(c, "status", "reading releases", &tree, timeout::SHORT).await {
                Ok(o) => {
                    let tree = facts::parse_releases(&o.stdout.text());
                    h.git = tree
                        .current
                        .as_ref()
                        .and_then(|id| tree.git.get(id))
                        .cloned();
                    h.current = tree.current;
                    h.live_port = tree.live_port;
                }
                Err(e) => h.error = Some(e.to_string()),
            }
            // A blue-green unit: its live instance (the idle one is stopped after a drain).
            let units: Vec<String> = inventory
                .systemd
                .iter()
                .filter_map(|u| match (&u.blue_green, h.live_port) {
                    (None, _) => Some(u.unit.clone()),
                    (Some(_), Some(port)) => Some(u.instance(port)),
                    (Some(_), None) => None,
                })
                .collect();
            let units = &units;
            let probe = units_probe(units);
            let req = ExecRequest::new(&probe, timeout::SHORT);
            if !units.is_empty()
                && let Ok(o) = execute::output(c, "status", "reading the units", req).await
            {
                h.units = o
                    .stdout
                    .text()
                    .lines()
                    .filter_map(|l| l.split_once(' '))
                    .map(|(u, s)| {
                        (
                            u.to_owned(),
                            if s.is_empty() {
                                "unknown".to_owned()
                            } else {
                                s.to_owned()
                            },
                        )
                    })
                    .collect();
            }
            if !inventory.health.is_empty() && h.current.is_some() {
                let env_path = inventory.env.as_ref().map(|e| e.path.as_str());
                let once: Vec<_> = health::at_port(&inventory.health, h.live_port)
                    .into_iter()
                    .map(|health| crate::inventory::Health {
                        check: health.check,
                        timeout: Duration::from_secs(5),
                        interval: Duration::from_secs(1),
                    })
                    .collect();
                match health::wait_all(c, &once, deploy_to, env_path).await {
                    Ok(()) => h.healthy = Some(true),
                    Err(e) => {
                        h.healthy = Some(false);
                        h.health_error = Some(e.message);
                    }
                }
            }
            let lock = commands::lock::read(deploy_to);
            // Exit `NO_LOCK` (no lock) and a failed read both leave `locked_by` empty.
            if let Ok(o) =
                execute::run(c, "status", "reading the lock", &lock, timeout::SHORT).await
            {
                h.locked_by = Some(
                    match serde_json::from_str::<LockOwner>(o.stdout.text().trim()) {
                        Ok(owner) => {
                            h.lock_message = owner.message.clone();
                            owner.describe(crate::clock::now_unix(), inventory.rollout.lock_timeout)
                        }
                        Err(_) => "an unknown owner".to_owned(),
                    },
                );
            }
            h
        }
    }))
    .await;
    StatusReport {
        stage: stage.to_owned(),
        hosts,
    }
}
