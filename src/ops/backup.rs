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
use crate::output::report::backup::{BackupEntry, BackupReport, BackupsReport, Drill, TableRows};
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
    under_lock(
        stage,
        conn,
        inventory,
        run,
        "backup",
        |current, previous| async move {
            // The current release's directory, compose file and env: what is running now.
            let vars = task_vars(inventory, &conn.host.name, &current, previous.as_deref());
            let cwd = format!("{}/releases/{current}", inventory.app.deploy_to);
            let now = crate::clock::now_unix();
            let made = backup(
                conn,
                inventory,
                &cwd,
                &vars,
                "manual",
                Some(&current),
                now,
                out,
            )
            .await
            .map_err(|e| e.message)?;
            let message = made.as_ref().map(|b| format!("backup `{}`", b.path));
            Ok((Done::Made(made), message))
        },
    )
    .await
}

/// `shipit backup --verify-restore`: the restore drill of backup `name` (default: the
/// newest), under the deploy lock (retention must not remove it meanwhile). Fails when the
/// restored database has no table, or no row in any.
pub async fn drill(
    stage: &str,
    conn: &Conn<'_>,
    inventory: &Inventory,
    run: &RunInfo,
    name: Option<&str>,
) -> BackupReport {
    under_lock(
        stage,
        conn,
        inventory,
        run,
        "drill",
        |current, previous| async move {
            let name = match name {
                Some(n) => n.to_owned(),
                None => list(stage, conn, inventory)
                    .await?
                    .backups
                    .first()
                    .map(|b| b.name.clone())
                    .ok_or_else(|| {
                        format!(
                            "no backup of `{}` in `{}` to drill: `shipit backup {stage}` makes one",
                            inventory.app.name,
                            inventory.backup.as_ref().map_or("", |b| b.dir.as_str())
                        )
                    })?,
            };
            let vars = task_vars(inventory, &conn.host.name, &current, previous.as_deref());
            let cwd = format!("{}/releases/{current}", inventory.app.deploy_to);
            let count = crate::deploy::restore::drill(conn, inventory, &cwd, &vars, &name).await?;
            let rows = count.tables.iter().map(|(_, n)| n).sum();
            let drill = Drill {
                backup: name.clone(),
                database: count.database,
                tables: count
                    .tables
                    .into_iter()
                    .map(|(name, rows)| TableRows { name, rows })
                    .collect(),
                rows,
            };
            let message = format!(
                "restore drill of `{name}`: {} tables, {rows} rows",
                drill.tables.len()
            );
            Ok((Done::Drilled(drill), Some(message)))
        },
    )
    .await
}

/// What a command under the lock did.
enum Done {
    Made(Option<crate::deploy::once::BackupFile>),
    Drilled(Drill),
}

/// Takes the deploy lock of `conn`'s host, runs `work` with its current and previous
/// release, records `action` in its history, unlocks.
async fn under_lock<F, Fut>(
    stage: &str,
    conn: &Conn<'_>,
    inventory: &Inventory,
    run: &RunInfo,
    action: &str,
    work: F,
) -> BackupReport
where
    F: FnOnce(String, Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(Done, Option<String>), String>>,
{
    let mut report = BackupReport {
        stage: stage.to_owned(),
        host: conn.host.name.clone(),
        backup: None,
        drill: None,
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
        Ok((current, previous)) => work(current, previous).await,
        Err(e) => Err(e),
    };
    let mut message = None;
    match result {
        Ok((Done::Made(made), m)) => {
            report.backup = made;
            message = m;
        }
        Ok((Done::Drilled(drill), m)) => {
            if drill.tables.is_empty() {
                report.error = Some(format!(
                    "the restore drill found no table in `{}`: the backup is empty; it would restore nothing",
                    drill.backup
                ));
            } else if drill.rows == 0 {
                report.error = Some(format!(
                    "the restore drill found {} tables and no row in `{}`: the backup holds no data",
                    drill.tables.len(),
                    drill.backup
                ));
            }
            report.drill = Some(drill);
            message = m;
        }
        Err(e) => report.error = Some(e),
    }
    let outcome = if report.error.is_none() {
        "success"
    } else {
        "failed"
    };
    let entry = Record {
        time: plan::rfc3339_millis(run.started_millis),
        finished: Some(plan::rfc3339_millis(crate::clock::now_millis())),
        action: action.to_owned(),
        outcome: outcome.to_owned(),
        user: run.user.clone(),
        machine: run.machine.clone(),
        command: run.command.clone(),
        run: run.token.clone(),
        ci_url: run.ci_url.clone(),
        hosts: vec![conn.host.name.clone()],
        message: report.error.clone().or(message),
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
    let o = execute::run_root(conn, "backups", &what, &cmd, timeout::SHORT)
        .await
        .map_err(|e| e.message)?;
    let backups = parse_listing(&o.stdout.text());
    Ok(BackupsReport {
        stage: stage.to_owned(),
        host: conn.host.name.clone(),
        dir: b.dir.clone(),
        backups,
    })
}

/// Reads [`task::list_backups`]' output: per backup a line `<bytes> <mtime> <name>`, its
/// record's lines, then `end`.
pub fn parse_listing(text: &str) -> Vec<BackupEntry> {
    let mut entries = Vec::new();
    let mut current: Option<BackupEntry> = None;
    for line in text.lines() {
        if line == "end" {
            entries.extend(current.take());
            continue;
        }
        if let Some(entry) = current.as_mut() {
            if let Some(sha) = line.strip_prefix("sha256 ") {
                let sha = sha.trim();
                if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                    entry.sha256 = Some(sha.to_ascii_lowercase());
                }
            } else if let Some(live) = line.strip_prefix("live ") {
                entry.live_release = Some(live.trim().to_owned()).filter(|l| !l.is_empty());
            } else if let Some(label) = line.strip_prefix("for ") {
                entry.taken_for = Some(label.trim().to_owned()).filter(|l| !l.is_empty());
            }
            continue;
        }
        let mut words = line.splitn(3, ' ');
        let parsed = (|| {
            let bytes = words.next()?.parse().ok()?;
            let mtime: u64 = words.next()?.parse().ok()?;
            Some(BackupEntry {
                name: words.next()?.to_owned(),
                bytes,
                time: plan::rfc3339(mtime),
                sha256: None,
                live_release: None,
                taken_for: None,
            })
        })();
        current = parsed;
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_reads_each_backups_record_and_tolerates_one_without() {
        let sha = "ab".repeat(32);
        let text = format!(
            "10 1700000000 shop-manual-20231114T221320Z.dump\nsha256 {sha}\nlive r1\nfor manual\nend\n\
             20 1600000000 shop-old-20200913T122640Z.dump\nend\n"
        );
        let entries = parse_listing(&text);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(entries[0].live_release.as_deref(), Some("r1"));
        assert_eq!(entries[0].taken_for.as_deref(), Some("manual"));
        assert_eq!(entries[1].name, "shop-old-20200913T122640Z.dump");
        assert_eq!(entries[1].sha256, None);
        assert_eq!(entries[1].taken_for, None);
    }
}
