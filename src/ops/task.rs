//! `shipit task <stage> <name>`: a named command from `[tasks.<name>]`, run on demand in the
//! current release of each host it applies to, with the env file loaded and the task
//! variables of that release (`$SHIPIT_RELEASE`, `$SHIPIT_COMPOSE`, ...). It holds the
//! deploy lock while it runs, so it never races a deploy, and is recorded in the history.

use crate::deploy::hooks::task_vars;
use crate::deploy::lock::{LockState, RunInfo};
use crate::execute::timeout;
use crate::inventory::{Inventory, Task};
use crate::output::report::exec::{ExecReport, HostExec};
use crate::output::report::history::Record;
use crate::output::{Event, Output};
use crate::transport::fleet::Conn;

/// Which of the selected hosts a task runs on: those with one of its roles, and with
/// `once`, only the migrate host among them (the first one when it is not selected).
pub fn hosts_for<'a>(
    task: &Task,
    inventory: &Inventory,
    selected: &[&'a crate::inventory::Host],
) -> Vec<&'a crate::inventory::Host> {
    let mut hosts: Vec<_> = selected
        .iter()
        .copied()
        .filter(|h| task.roles.is_empty() || task.roles.iter().any(|r| h.has_role(r)))
        .collect();
    if task.once && !hosts.is_empty() {
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        let index = crate::deploy::once::migrate_host_index(inventory, &names);
        hosts = vec![hosts[index]];
    }
    hosts
}

/// Runs the task on every connection, under the deploy lock; the report lists each host,
/// and the flag says the task did not run because another run holds the lock (exit 5, as
/// for a deploy).
pub async fn run(
    stage: &str,
    name: &str,
    task: &Task,
    conns: &[Conn<'_>],
    inventory: &Inventory,
    run: &RunInfo,
    out: &Output,
) -> (ExecReport, bool) {
    let deploy_to = &inventory.app.deploy_to;
    let mut report = ExecReport {
        stage: stage.to_owned(),
        command: task.command.clone(),
        task: Some(name.to_owned()),
        hosts: Vec::new(),
    };
    let now = crate::clock::now_unix();
    let first = conns.first().map_or("", |c| c.host.name.as_str());
    // Before the lock, which already writes under `deploy_to`.
    let checks = crate::deploy::strict::preflight(conns, inventory).await;
    if checks.iter().any(|c| c.is_err()) {
        for (conn, check) in conns.iter().zip(checks) {
            let error = check.err().map_or_else(
                || "not run: another host failed the preflight".to_owned(),
                |e| e.message,
            );
            report.hosts.push(HostExec::failed(&conn.host.name, error));
        }
        return (report, false);
    }
    let states = crate::deploy::lock::acquire_all(
        conns,
        deploy_to,
        inventory.env.as_ref().map(|e| e.path.as_str()),
        run,
    )
    .await;
    let taken: Vec<&Conn<'_>> = conns
        .iter()
        .zip(&states)
        .filter(|(_, s)| matches!(s, LockState::Taken))
        .map(|(c, _)| c)
        .collect();
    if taken.len() < conns.len() {
        crate::deploy::lock::release_all(&taken, deploy_to, &run.token).await;
        let locked = states.iter().any(|s| matches!(s, LockState::Held(_)));
        for (conn, state) in conns.iter().zip(states) {
            let error = state
                .problem(first, now, inventory.rollout.lock_timeout)
                .unwrap_or_else(|| "not run: another host is locked".to_owned());
            report.hosts.push(HostExec::failed(&conn.host.name, error));
        }
        return (report, locked);
    }

    let runs = conns.iter().map(|c| run_on(c, task, inventory, out));
    report.hosts = futures::future::join_all(runs).await;

    let failed = report.failed();
    let entry = Record {
        time: crate::plan::rfc3339_millis(run.started_millis),
        finished: Some(crate::plan::rfc3339_millis(crate::clock::now_millis())),
        action: "task".to_owned(),
        outcome: if failed == 0 { "success" } else { "failed" }.to_owned(),
        user: run.user.clone(),
        machine: run.machine.clone(),
        command: run.command.clone(),
        run: run.token.clone(),
        ci_url: run.ci_url.clone(),
        hosts: conns.iter().map(|c| c.host.name.clone()).collect(),
        message: Some(format!("task `{name}`")),
        ..Default::default()
    };
    crate::ops::history::append(conns, deploy_to, &entry, &run.redactor).await;
    crate::deploy::lock::release_all(&taken, deploy_to, &run.token).await;
    (report, false)
}

async fn run_on(conn: &Conn<'_>, task: &Task, inventory: &Inventory, out: &Output) -> HostExec {
    let host = &conn.host.name;
    let deploy_to = &inventory.app.deploy_to;
    let release = match crate::ops::backup::current_release(conn, deploy_to).await {
        Ok((current, _)) => current,
        Err(e) => return HostExec::failed(host, e),
    };
    let mut vars = task_vars(inventory, host, &release, None);
    // Out of a deploy there is no previous release and no first deploy.
    vars.vars
        .retain(|(name, _)| !matches!(*name, "SHIPIT_PREVIOUS" | "SHIPIT_FIRST_DEPLOY"));
    let env_path = inventory.env.as_ref().map(|e| e.path.as_str());
    let dir = format!("{deploy_to}/releases/{release}");
    let cmd = crate::commands::task::run(&dir, env_path, &vars, &task.command);
    out.emit(Event::Step {
        host,
        step: "running",
    });
    crate::ops::exec::streamed(conn.transport.as_ref(), host, &cmd, timeout::UNBOUNDED, out).await
}
