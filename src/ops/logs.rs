//! `shipit logs <stage> [-n N] [-f]`: the services' logs of every selected host, each line
//! prefixed by its host as `shipit exec` prints them.
//!
//! What is read comes from the inventory only: the journal of each `[[systemd]]` unit (both
//! instances of a blue-green unit), and the logs of the `[compose]` stack as the current
//! release's compose file describes it. With `follow`, every host streams until `stop`
//! says so (Ctrl-C): then each host's stdin is closed, which ends its reader (see
//! [`commands::logs`]), and a host counts as ok; a host whose reader ended by itself, or
//! failed, is reported as `exec` reports it.

use std::time::Duration;

use tokio::sync::watch;

use crate::commands;
use crate::execute::timeout;
use crate::inventory::Inventory;
use crate::output::report::exec::{ExecReport, HostExec};
use crate::output::{Event, Output};
use crate::shell::Cmd;
use crate::transport::ExecRequest;
use crate::transport::Stdin;
use crate::transport::fleet::Conn;

/// How long the hosts get to end their readers after Ctrl-C before shipit stops waiting.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What to read.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// Lines shown first, per unit or service.
    pub lines: u32,
    pub follow: bool,
}

/// The systemd units whose journal `shipit logs` reads: each `[[systemd]]` unit, and for a
/// blue-green unit its instance on each of its ports.
pub fn units(inventory: &Inventory) -> Vec<String> {
    inventory
        .systemd
        .iter()
        .flat_map(|u| match &u.blue_green {
            None => vec![u.unit.clone()],
            Some(bg) => bg.ports.iter().map(|p| u.instance(*p)).collect(),
        })
        .collect()
}

/// Whether the inventory has anything `shipit logs` can read (a usage error otherwise).
pub fn has_logs(inventory: &Inventory) -> bool {
    !inventory.systemd.is_empty() || inventory.compose.is_some()
}

/// The reader commands of one host, with what the report calls each.
fn readers(inventory: &Inventory, req: Request) -> Vec<(String, Cmd)> {
    let mut out = Vec::new();
    let units = units(inventory);
    if !units.is_empty() {
        out.push((
            format!("journalctl -n {} -u {}", req.lines, units.join(" -u ")),
            commands::logs::journal(&units, req.lines, req.follow),
        ));
    }
    if let Some(compose) = &inventory.compose {
        let file = format!(
            "{}/current/{}",
            inventory.app.deploy_to,
            crate::deploy::stage::COMPOSE_FILE
        );
        let env_path = inventory.env.as_ref().map(|e| e.path.as_str());
        out.push((
            format!("compose -p {} logs --tail={}", compose.project, req.lines),
            commands::logs::compose(&compose.project, &file, env_path, req.lines, req.follow),
        ));
    }
    if req.follow {
        for (what, _) in &mut out {
            what.push_str(" --follow");
        }
    }
    out
}

/// Reads the logs on every connection at once (following ones stream side by side).
pub async fn show(
    stage: &str,
    conns: &[Conn<'_>],
    inventory: &Inventory,
    req: Request,
    stop: watch::Receiver<bool>,
    out: &Output,
) -> ExecReport {
    let readers = readers(inventory, req);
    let runs = conns
        .iter()
        .map(|c| host_logs(c, &readers, req, stop.clone(), out));
    let hosts = futures::future::join_all(runs).await;
    ExecReport {
        stage: stage.to_owned(),
        task: None,
        command: readers
            .iter()
            .map(|(what, _)| what.as_str())
            .collect::<Vec<_>>()
            .join("; "),
        hosts,
    }
}

async fn host_logs(
    conn: &Conn<'_>,
    readers: &[(String, Cmd)],
    req: Request,
    stop: watch::Receiver<bool>,
    out: &Output,
) -> HostExec {
    let host = &conn.host.name;
    out.emit(Event::Step {
        host,
        step: if req.follow { "following" } else { "reading" },
    });
    let each = readers.iter().map(|(_, cmd)| {
        let stop = stop.clone();
        async move {
            let stdin = match req.follow {
                true => open_until(stop.clone()),
                false => Stdin::Empty,
            };
            // The journal of system units and Docker's logs are root's to read: with
            // `ssh.sudo` they are read through `sudo -n` (stdin, which ends `--follow`,
            // reaches the reader all the same).
            let exec = ExecRequest::new(cmd, timeout::UNBOUNDED)
                .stdin(stdin)
                .as_root();
            let run = crate::ops::exec::streamed_quietly(conn.transport.as_ref(), host, exec, out);
            let mut ended = stop.clone();
            // After Ctrl-C the reader has a moment to end; one that does not is cut off.
            let stopped = async {
                if !req.follow || ended.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(STOP_GRACE).await;
            };
            tokio::select! {
                result = run => {
                    // Ended by Ctrl-C (stdin closed): the way `--follow` is meant to end.
                    if *stop.borrow() { stopped_ok(host, result) } else { result }
                }
                // Its output so far was shown; the channel closes as `run` is dropped.
                () = stopped => stopped_ok(host, HostExec::failed(host, String::new())),
            }
        }
    });
    let results = futures::future::join_all(each).await;
    let mut merged = HostExec {
        host: host.clone(),
        ok: true,
        exit_code: Some(0),
        stdout: String::new(),
        stderr: String::new(),
        error: None,
    };
    for r in results {
        merged.stdout.push_str(&r.stdout);
        merged.stderr.push_str(&r.stderr);
        if !r.ok && merged.ok {
            merged.ok = false;
            merged.exit_code = r.exit_code;
            merged.error = r.error;
        }
    }
    let summary = match (&merged.error, merged.exit_code, merged.ok) {
        (Some(e), _, _) => e.clone(),
        (None, Some(code), false) => format!("exit status {code}"),
        (None, None, false) => "ended by a signal".to_owned(),
        _ if req.follow => "stopped following".to_owned(),
        _ => "ok".to_owned(),
    };
    out.emit(Event::HostDone {
        host,
        ok: merged.ok,
        summary: &summary,
    });
    merged
}

/// A reader stopped by Ctrl-C ended as it should, whatever its status.
fn stopped_ok(host: &str, mut result: HostExec) -> HostExec {
    result.host = host.to_owned();
    result.ok = true;
    result.exit_code = Some(0);
    result.error = None;
    result
}

/// A stdin that stays open (sending nothing) until `stop` turns true, then ends.
fn open_until(mut stop: watch::Receiver<bool>) -> Stdin {
    let (reader, writer) = tokio::io::duplex(64);
    tokio::spawn(async move {
        // Kept open for good when nobody can say stop any more.
        if stop.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
        drop(writer);
    });
    Stdin::Reader(Box::new(reader))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blue_green_unit_is_read_on_both_ports() {
        let text = r#"
[app]
name = "shop"
deploy_to = "/opt/shop"
[[hosts]]
name = "h1"
address = "10.0.0.1"
[[systemd]]
unit = "shop-worker.service"
template = "w.j2"
[[systemd]]
unit = "shop@.service"
template = "t.j2"
ports = [3001, 3002]
[nginx]
site = "shop"
template = "s.j2"
[[health]]
url = "http://127.0.0.1:{{ port }}/healthz"
"#;
        let dir = std::path::Path::new("/");
        let env = |_: &str| None;
        let ctx = crate::inventory::LoadContext {
            base_dir: dir,
            home: None,
            env: &env,
            need_secrets: false,
        };
        let inv = crate::inventory::parse(text, std::path::Path::new("x.toml"), &ctx).unwrap();
        assert_eq!(
            units(&inv),
            [
                "shop-worker.service",
                "shop@3001.service",
                "shop@3002.service"
            ]
        );
        let r = readers(
            &inv,
            Request {
                lines: 7,
                follow: true,
            },
        );
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].0,
            "journalctl -n 7 -u shop-worker.service -u shop@3001.service -u shop@3002.service --follow"
        );
    }
}
