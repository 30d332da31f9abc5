//! Restoring a database backup: `shipit rollback --restore-db` (the backup taken before the
//! current release's migrations, then the switch back) and `shipit restore` (a named backup,
//! the release kept or switched with `--release`), as one run under the deploy lock.
//!
//! Before anything changes, the backup is found on the migrate host and checked against
//! the sha256 recorded when it was made ([`check`]). Then the [`Step::Restore`] of the
//! plan: the app's units stop on every host ([`quiesced`]), the backup is checked again and
//! restored, and the switch of the plan starts the units on the release it switches to. A
//! restore that fails starts them again at once, on the release they ran.

use std::future::Future;

use super::Ctx;
use crate::commands::exit;
use crate::commands::restore::{self as cmd, BackupRef, Restorer};
use crate::commands::task::TaskVars;
use crate::deploy::hooks;
use crate::execute::{self, RemoteError, timeout};
use crate::inventory::{BackupKind, Inventory};
use crate::output::report::backup::BackupEntry;
use crate::plan::Step;
use crate::shell::Secret;
use crate::transport::fleet::Conn;
use crate::transport::{ExecRequest, Exit, Stdin};

/// A backup found and checked on the migrate host.
#[derive(Clone, Debug)]
pub struct Checked {
    pub name: String,
    pub sha256: String,
    /// The release that was live when it was taken, when recorded.
    pub live: Option<String>,
    /// The release it was taken for (or `manual`), when recorded.
    pub taken_for: Option<String>,
    /// Whether it has a record (`<name>.meta`): one made before shipit recorded backups
    /// is checked by `backup.verify` only.
    pub recorded: bool,
}

fn backup_ref<'a>(
    inventory: &'a Inventory,
    name: &'a str,
    names: &'a (String, String),
) -> BackupRef<'a> {
    let b = inventory.backup.as_ref().expect("checked by the caller");
    BackupRef {
        dir: &b.dir,
        name,
        prefix: &names.0,
        suffix: &names.1,
    }
}

/// This app's backup names: (prefix, suffix).
fn affixes(inventory: &Inventory) -> (String, String) {
    let ext = inventory
        .backup
        .as_ref()
        .map_or("", |b| b.extension.as_str());
    (format!("{}-", inventory.app.name), format!(".{ext}"))
}

/// How `kind` restores, or why it cannot.
fn restorer(inventory: &Inventory) -> Result<Restorer<'_>, String> {
    let b = inventory
        .backup
        .as_ref()
        .ok_or_else(|| format!("no `[backup]` section in `{}`", inventory.file.display()))?;
    match b.kind {
        BackupKind::Postgres => Ok(Restorer::Postgres),
        BackupKind::Command => b.restore.as_deref().map(Restorer::Command).ok_or_else(|| {
            format!(
                "`[backup]` of `{}` has no `restore` command: with `kind = \"command\"`, shipit restores with `backup.restore`, a command that reads the backup on stdin",
                inventory.file.display()
            )
        }),
    }
}

/// Checks that the inventory can restore at all (before anything is contacted).
pub fn can_restore(inventory: &Inventory) -> Result<(), String> {
    restorer(inventory).map(|_| ())
}

/// The `PG*` variables of `DATABASE_URL` for `kind = "postgres"`, sent on stdin.
pub fn pg_stdin(inventory: &Inventory) -> Secret {
    match inventory.backup.as_ref().map(|b| b.kind) {
        Some(BackupKind::Postgres) => crate::deploy::once::database_url(inventory)
            .and_then(|url| crate::deploy::envfile::pg_env(&url))
            .unwrap_or_else(|| Secret::new("")),
        _ => Secret::new(""),
    }
}

/// Finds backup `name` on `conn`'s host and checks it (see [`cmd::check`]), in release
/// directory `cwd` with the env file loaded. Changes nothing.
pub async fn check(
    conn: &Conn<'_>,
    inventory: &Inventory,
    cwd: &str,
    vars: &TaskVars,
    name: &str,
) -> Result<Checked, RemoteError> {
    let names = affixes(inventory);
    let b = inventory.backup.as_ref().expect("checked by the caller");
    let script = cmd::check(
        cwd,
        hooks::env_path(inventory),
        vars,
        &backup_ref(inventory, name, &names),
        b.verify.as_deref(),
    );
    let what = format!("checking the backup `{name}`");
    let o = execute::output(
        conn,
        "restore",
        &what,
        ExecRequest::new(&script, timeout::LONG).as_root(),
    )
    .await?;
    if !o.success() {
        let stderr = o.stderr.text();
        let why = stderr.trim_end();
        let message = match o.exit {
            // The scripts' own words say what is wrong and where.
            Exit::Code(exit::BACKUP_DAMAGED) => format!("backup `{name}` refused: {why}"),
            Exit::Code(exit::BACKUP_NOT_FOUND) => why.to_owned(),
            _ => format!("checking the backup `{name}` failed ({}): {why}", o.exit),
        };
        return Err(
            RemoteError::from_output(&conn.host.name, "restore", &what, &o).saying(message),
        );
    }
    let text = o.stdout.text();
    let mut checked = Checked {
        name: name.to_owned(),
        sha256: String::new(),
        live: None,
        taken_for: None,
        recorded: true,
    };
    for line in text.lines() {
        if line == "unrecorded" {
            checked.recorded = false;
        }
        if let Some(sha) = line.strip_prefix("sha256 ") {
            checked.sha256 = sha.trim().to_owned();
        } else if let Some(live) = line.strip_prefix("live ") {
            checked.live = Some(live.trim().to_owned()).filter(|l| !l.is_empty());
        } else if let Some(label) = line.strip_prefix("for ") {
            checked.taken_for = Some(label.trim().to_owned()).filter(|l| !l.is_empty());
        }
    }
    Ok(checked)
}

/// The backup `rollback --restore-db` restores: the newest one taken for `current` (before
/// its migrations). A backup recorded as taken while another release than `target` was live
/// holds that release's schema: refused, saying which backup to restore instead.
pub fn for_rollback<'a>(
    stage: &str,
    backups: &'a [BackupEntry],
    current: &str,
    target: &str,
) -> Result<&'a BackupEntry, String> {
    let taken = backups
        .iter()
        .find(|b| b.taken_for.as_deref() == Some(current))
        .or_else(|| {
            // Backups made before shipit recorded them: the name says what it was taken for.
            backups
                .iter()
                .filter(|b| b.taken_for.is_none())
                .find(|b| label_of(&b.name).is_some_and(|l| l == current))
        });
    let Some(b) = taken else {
        return Err(format!(
            "no backup was taken for release {current} (it ran no backup before its migrations, or the backup was removed); `shipit backups {stage}` lists the backups, `shipit restore {stage} <BACKUP> --release {target}` restores one and switches, `shipit rollback {stage}` switches without restoring"
        ));
    };
    match &b.live_release {
        Some(live) if live != target => Err(format!(
            "`{}` was taken while release {live} was live, so it holds {live}'s schema, not {target}'s; roll back to {live} (`--to {live}`), or restore a backup taken while {target} was live with `shipit restore {stage} <BACKUP> --release {target}`",
            b.name
        )),
        _ => Ok(b),
    }
}

/// The label in a backup's name `<app>-<label>-<time>[-n].<ext>` after the `<app>-`
/// prefix: a release id (`YYYYMMDDTHHMMSSZ-<12 hex>`) or `manual`.
fn label_of(rest: &str) -> Option<&str> {
    // The prefix is the app's name and a dash; release ids hold no other dash.
    let id_len = "20260101T000000Z-0123456789ab".len();
    rest.char_indices()
        .filter(|(_, c)| *c == '-')
        .find_map(|(i, _)| {
            let after = &rest[i + 1..];
            let id = after.get(..id_len)?;
            let ok = id.as_bytes()[16] == b'-' && id[17..].bytes().all(|b| b.is_ascii_hexdigit());
            ok.then_some(id)
        })
}

/// Runs `work` (the restore) with the app's units `stop`ped on every host of `conns`, and
/// with every site answering 503 when `maintenance`. If a unit cannot be stopped, or `work`
/// fails, the units stopped are started again before this returns the error.
pub async fn quiesced<F>(
    ctx: &Ctx<'_>,
    conns: &[Conn<'_>],
    stop: &[String],
    maintenance: bool,
    work: F,
) -> Result<execute::Done, RemoteError>
where
    F: Future<Output = Result<execute::Done, RemoteError>>,
{
    let inner = async {
        let deploy_to = &ctx.inventory.app.deploy_to;
        if !stop.is_empty() {
            let script = cmd::stop_units(deploy_to, stop);
            let stops =
                futures::future::join_all(
                    conns.iter().map(|c| {
                        let what = format!("stopping {} on `{}`", stop.join(" "), c.host.name);
                        let script = &script;
                        async move {
                            execute::run_root(c, "restore", &what, script, timeout::LONG).await
                        }
                    }),
                )
                .await;
            let failed = stops.into_iter().find_map(Result::err);
            if let Some(e) = failed {
                start_again(ctx, conns, stop).await;
                let message = format!("{e}; nothing was restored, the units were started again");
                return Err(e.saying(message));
            }
            ctx.note(&format!(
                "stopped {} on every host for the restore",
                stop.join(" ")
            ));
        }
        let result = work.await;
        if result.is_err() {
            start_again(ctx, conns, stop).await;
        }
        result
    };
    if maintenance {
        super::maintenance::during(ctx, conns, "the restore runs", inner).await
    } else {
        inner.await
    }
}

/// Starts the units [`quiesced`] stopped, on every host (a failure is a note: the error
/// that brought us here is the one reported).
async fn start_again(ctx: &Ctx<'_>, conns: &[Conn<'_>], units: &[String]) {
    let script = cmd::start_stopped(&ctx.inventory.app.deploy_to, units);
    let starts = futures::future::join_all(conns.iter().map(|c| {
        let script = &script;
        async move {
            let what = format!("starting the units again on `{}`", c.host.name);
            (
                c,
                execute::run_root(c, "restore", &what, script, timeout::LONG).await,
            )
        }
    }))
    .await;
    for (c, r) in starts {
        if let Err(e) = r {
            ctx.note(&format!(
                "{}: starting the stopped units again failed: {e}; start them by hand (listed in `{}/.shipit/stopped`)",
                c.host.name, ctx.inventory.app.deploy_to
            ));
        }
    }
}

/// Forgets on every host which units the restore stopped: the switch started the units of
/// the release it switched to (or, switching back, of the one before).
pub async fn forget_stopped(ctx: &Ctx<'_>, conns: &[Conn<'_>]) {
    let script = cmd::forget_stopped(&ctx.inventory.app.deploy_to);
    futures::future::join_all(conns.iter().map(|c| {
        let req = ExecRequest::new(&script, timeout::SHORT).as_root();
        async move { c.transport.exec(req).await }
    }))
    .await;
}

/// The restore itself, on the migrate host `c`, in its current release `cwd` (which made
/// or last used the database) with the env file loaded.
pub async fn restore(
    ctx: &Ctx<'_>,
    c: &Conn<'_>,
    cwd: &str,
    vars: &TaskVars,
    step: &Step,
) -> Result<(), RemoteError> {
    let Step::Restore { backup, .. } = step else {
        unreachable!("called for a restore step");
    };
    let inventory = ctx.inventory;
    let how = restorer(inventory).map_err(|e| RemoteError::new(&c.host.name, "restore", e))?;
    let names = affixes(inventory);
    let b = inventory.backup.as_ref().expect("checked before planning");
    ctx.step(c, "restoring the database");
    let script = cmd::restore(
        cwd,
        hooks::env_path(inventory),
        vars,
        &backup_ref(inventory, backup, &names),
        b.verify.as_deref(),
        &how,
    );
    let req = ExecRequest::new(&script, timeout::LONG)
        .stdin(Stdin::Secret(pg_stdin(inventory)))
        .as_root();
    let o = match c.transport.exec(req).await {
        Ok(o) => o,
        Err(e) => {
            return Err(RemoteError::new(
                &c.host.name,
                "restore",
                format!(
                    "the restore of `{backup}` failed: {}; whether it finished is unknown: check the database",
                    crate::error::chain(&e)
                ),
            ));
        }
    };
    if o.success() {
        return Ok(());
    }
    let why = match o.exit {
        Exit::Code(exit::BACKUP_DAMAGED) => "the backup did not check out; nothing was restored",
        Exit::Code(exit::BACKUP_NOT_FOUND) => "the backup is gone; nothing was restored",
        Exit::Code(exit::RESTORE_FAILED) => match how {
            Restorer::Postgres => "the database is as it was (one transaction)",
            Restorer::Command(_) => {
                "`backup.restore` failed: the database is in whatever state that command left it"
            }
        },
        _ => "whether it changed anything is unknown: check the database",
    };
    Err(
        RemoteError::from_output(&c.host.name, "restore", "the restore", &o).saying(format!(
            "the restore of `{backup}` on `{}` failed ({why}):\n{}",
            c.host.name,
            o.stderr.text().trim_end()
        )),
    )
}

/// The drill's result: the scratch database and each table's rows.
#[derive(Debug, Default)]
pub struct DrillCount {
    pub database: Option<String>,
    pub tables: Vec<(String, u64)>,
}

/// Runs the restore drill of backup `name` on `conn`'s host (see [`cmd::drill`]).
pub async fn drill(
    conn: &Conn<'_>,
    inventory: &Inventory,
    cwd: &str,
    vars: &TaskVars,
    name: &str,
) -> Result<DrillCount, String> {
    let b = inventory
        .backup
        .as_ref()
        .ok_or_else(|| format!("no `[backup]` section in `{}`", inventory.file.display()))?;
    let how = match b.kind {
        BackupKind::Postgres => Restorer::Postgres,
        BackupKind::Command => Restorer::Command(b.drill.as_deref().ok_or_else(|| {
            format!(
                "`[backup]` of `{}` has no `drill` command: with `kind = \"command\"`, the drill runs `backup.drill`, a command that reads the backup on stdin, restores it into a scratch database it makes and drops, and prints `<table> <rows>` lines",
                inventory.file.display()
            )
        })?),
    };
    let names = affixes(inventory);
    let script = cmd::drill(
        cwd,
        hooks::env_path(inventory),
        vars,
        &backup_ref(inventory, name, &names),
        b.verify.as_deref(),
        &how,
    );
    let req = ExecRequest::new(&script, timeout::LONG)
        .stdin(Stdin::Secret(pg_stdin(inventory)))
        .as_root();
    let o = conn
        .transport
        .exec(req)
        .await
        .map_err(|e| format!("the restore drill failed: {}", crate::error::chain(&e)))?;
    if !o.success() {
        return Err(format!(
            "the restore drill of `{name}` on `{}` failed ({}):\n{}",
            conn.host.name,
            o.exit,
            o.stderr.text().trim_end()
        ));
    }
    let mut count = DrillCount::default();
    for line in o.stdout.text().lines() {
        if let Some(db) = line.strip_prefix("database ") {
            count.database = Some(db.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("table ")
            && let Some((table, rows)) = rest.rsplit_once(' ')
            && let Ok(rows) = rows.trim().parse()
        {
            count.tables.push((table.to_owned(), rows));
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, taken_for: Option<&str>, live: Option<&str>) -> BackupEntry {
        BackupEntry {
            name: name.to_owned(),
            bytes: 1,
            time: String::new(),
            sha256: None,
            live_release: live.map(str::to_owned),
            taken_for: taken_for.map(str::to_owned),
        }
    }

    const R1: &str = "20260101T000000Z-000000000001";
    const R2: &str = "20260102T000000Z-000000000002";

    #[test]
    fn a_rollback_restores_the_newest_backup_taken_for_the_current_release() {
        let backups = [
            entry(
                "shop-manual-20260103T000000Z.dump",
                Some("manual"),
                Some(R2),
            ),
            entry("b2-newest", Some(R2), Some(R1)),
            entry("b2-older", Some(R2), Some(R1)),
            entry("b1", Some(R1), None),
        ];
        let chosen = for_rollback("prod", &backups, R2, R1).unwrap();
        assert_eq!(chosen.name, "b2-newest");
        let none = for_rollback("prod", &backups[..1], R2, R1).unwrap_err();
        assert!(none.contains("no backup was taken for release"), "{none}");
        assert!(none.contains("shipit restore prod"), "{none}");
        // Rolling back further than the release that was live: another schema.
        let older = "20251231T000000Z-000000000000";
        let e = for_rollback("prod", &backups, R2, older).unwrap_err();
        assert!(e.contains(&format!("while release {R1} was live")), "{e}");
    }

    #[test]
    fn an_unrecorded_backup_is_found_by_its_name() {
        let name = format!("shop-api-{R2}-20260102T000001Z.dump");
        let backups = [entry(&name, None, None)];
        assert_eq!(for_rollback("p", &backups, R2, R1).unwrap().name, name);
        assert_eq!(label_of(&name), Some(R2));
        assert_eq!(label_of("shop-manual-20260102T000001Z.dump"), None);
    }
}
