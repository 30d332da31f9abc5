//! `shipit backup`: one verified database backup now, under the deploy lock of the migrate
//! host, in its current release; and `shipit backups`: the backups on that host.
//!
//! The backup itself is the deploy's ([`crate::deploy::once::backup`]): the same command,
//! verification and retention as before a migration.

use crate::commands::task;
use crate::deploy::hooks::task_vars;
use crate::deploy::lock::{self, LockState, RunInfo};
use crate::deploy::once::backup;
use crate::execute::{self, timeout};
use crate::inventory::Inventory;
use crate::output::Output;
use crate::output::report::backup::{BackupEntry, BackupReport, BackupsReport};
use crate::output::report::history::Record;
use crate::plan;
use crate::transport::fleet::Conn;

pub async fn backup_now(
    stage: &str,
    conn: &Conn<'_>,
    inventory: &Inventory,
    run: &RunInfo,
    out: &Output,
) -> BackupReport {
    let mut report = BackupReport {
        stage: stage.to_owned(),
        host: conn.host.name.clone(),
        backup: None,
        error: None,
        locked: false,
    };
    if inventory.backup.is_none() {
        report.error = Some(format!(
            "no `[backup]` section in `{}`",
            inventory.file.display()
        ));
        return report;
    }
    let deploy_to = &inventory.app.deploy_to;
    let conns = std::slice::from_ref(conn);
    let now = crate::clock::now_unix();
    // Before the lock, which already writes under `deploy_to`.
    if let Some(Err(e)) = crate::deploy::strict::preflight(conns, inventory)
        .await
        .pop()
    {
        report.error = Some(e.message);
        return report;
    }
    let state = lock::acquire_all(
        conns,
        deploy_to,
        inventory.env.as_ref().map(|e| e.path.as_str()),
        run,
    )
    .await
    .pop();
    let state = state.unwrap_or(LockState::NotTried);
    let lock_timeout = inventory.rollout.lock_timeout;
    if let Some(problem) = state.problem(&conn.host.name, now, lock_timeout) {
        report.locked = matches!(state, LockState::Held(_));
        report.error = Some(problem);
        return report;
    }
    let result = match current_release(conn, deploy_to).await {
        Ok((current, previous)) => {
            // The current release's directory, compose file and env: what is running now.
            let vars = task_vars(inventory, &conn.host.name, &current, previous.as_deref());
            let cwd = format!("{deploy_to}/releases/{current}");
            backup(conn, inventory, &cwd, &vars, "manual", now, out)
                .await
                .map_err(|e| e.message)
        }
        Err(e) => Err(e),
    };
    let outcome = if result.is_ok() { "success" } else { "failed" };
    match result {
        Ok(made) => report.backup = made,
        Err(e) => report.error = Some(e),
    }
    let entry = Record {
        time: plan::rfc3339_millis(run.started_millis),
        finished: Some(plan::rfc3339_millis(crate::clock::now_millis())),
        action: "backup".to_owned(),
        outcome: outcome.to_owned(),
        user: run.user.clone(),
        machine: run.machine.clone(),
        command: run.command.clone(),
        run: run.token.clone(),
        ci_url: run.ci_url.clone(),
        hosts: vec![conn.host.name.clone()],
        message: report
            .backup
            .as_ref()
            .map(|b| format!("backup `{}`", b.path)),
        ..Default::default()
    };
    crate::ops::history::append(conns, deploy_to, &entry, &run.redactor).await;
    lock::release_all(&[conn], deploy_to, &run.token).await;
    report
}

/// The release `current` points at on `conn`'s host, and the newest complete release before
/// it (what `$SHIPIT_PREVIOUS` says during a deploy of it), in one round trip.
pub async fn current_release(
    conn: &Conn<'_>,
    deploy_to: &str,
) -> Result<(String, Option<String>), String> {
    let cmd = plan::facts::releases(deploy_to);
    let what = format!("reading the releases on `{}`", conn.host.name);
    let o = execute::run(conn, "releases", &what, &cmd, timeout::SHORT)
        .await
        .map_err(|e| e.message)?;
    let tree = plan::facts::parse_releases(&o.stdout.text());
    let Some(current) = tree.current else {
        return Err(format!(
            "nothing is deployed under `{deploy_to}` yet on `{}`: deploy first",
            conn.host.name
        ));
    };
    let previous = tree
        .releases
        .iter()
        .map(|r| r.id.as_str())
        .rfind(|id| *id < current.as_str())
        .map(str::to_owned);
    Ok((current, previous))
}

/// `shipit backups`: the backups of this app in `[backup] dir` on `conn`'s host, newest
/// first.
pub async fn list(
    stage: &str,
    conn: &Conn<'_>,
    inventory: &Inventory,
) -> Result<BackupsReport, String> {
    let Some(b) = &inventory.backup else {
        return Err(format!(
            "no `[backup]` section in `{}`",
            inventory.file.display()
        ));
    };
    let prefix = format!("{}-", inventory.app.name);
    let cmd = task::list_backups(&b.dir, &prefix, &format!(".{}", b.extension));
    let what = format!("listing `{}`", b.dir);
    let o = execute::run(conn, "backups", &what, &cmd, timeout::SHORT)
        .await
        .map_err(|e| e.message)?;
    let backups = o
        .stdout
        .text()
        .lines()
        .filter_map(|line| {
            let mut words = line.splitn(3, ' ');
            let bytes = words.next()?.parse().ok()?;
            let mtime: u64 = words.next()?.parse().ok()?;
            Some(BackupEntry {
                name: words.next()?.to_owned(),
                bytes,
                time: plan::rfc3339(mtime),
            })
        })
        .collect();
    Ok(BackupsReport {
        stage: stage.to_owned(),
        host: conn.host.name.clone(),
        dir: b.dir.clone(),
        backups,
    })
}
