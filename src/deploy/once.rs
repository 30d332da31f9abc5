//! The database step of a deploy, once, on the migrate host, after every host is staged and
//! before anything is switched: a verified backup, then the migrations, in the new release
//! with its env file loaded. Hooks and the variables of user commands are
//! [`crate::deploy::hooks`]. The `backup` and
//! `backups` commands are [`crate::ops::backup`].
//!
//! For `kind = "postgres"` the connection comes from `DATABASE_URL`, turned into the `PG*`
//! variables libpq reads ([`pg_env`](crate::deploy::envfile::pg_env)) and sent on stdin:
//! `pg_dump` runs with no connection string in its argv, so the password never shows in the
//! host's process list.

use crate::commands::task::TaskVars;
use crate::commands::{exit, task};
use crate::deploy::hooks;
use crate::execute::{RemoteError, timeout};
use crate::inventory::{BackupKind, Inventory};
// `pub`: the deploy pipeline names it from here.
pub use crate::output::report::backup::BackupFile;
use crate::output::{Event, Output};
use crate::plan;
use crate::shell::Secret;
use crate::transport::fleet::Conn;
use crate::transport::{ExecRequest, Exit, Stdin};

/// The value of `DATABASE_URL` among the env file's variables and secrets.
pub(crate) fn database_url(inventory: &Inventory) -> Option<Secret> {
    let env = inventory.env.as_ref()?;
    env.secrets
        .iter()
        .find(|(k, _)| k == "DATABASE_URL")
        .map(|(_, v)| v.clone())
        .or_else(|| env.vars.get("DATABASE_URL").map(Secret::new))
}

/// Makes one verified backup on `conn`'s host, running in `cwd` (a release directory) with
/// the same task variables as a migration there (`$SHIPIT_COMPOSE` of that release, ...).
#[allow(clippy::too_many_arguments)]
pub async fn backup(
    conn: &Conn<'_>,
    inventory: &Inventory,
    cwd: &str,
    vars: &TaskVars,
    label: &str,
    live: Option<&str>,
    now_unix: u64,
    out: &Output,
) -> Result<Option<BackupFile>, RemoteError> {
    let Some(b) = &inventory.backup else {
        return Ok(None);
    };
    out.emit(Event::Step {
        host: &conn.host.name,
        step: "backing up the database",
    });
    let (y, mo, d, h, mi, s) = plan::civil_time(now_unix);
    let prefix = format!("{}-", inventory.app.name);
    let suffix = format!(".{}", b.extension);
    let name = format!("{prefix}{label}-{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z{suffix}");
    let file = task::BackupName {
        dir: &b.dir,
        name: &name,
        prefix: &prefix,
        suffix: &suffix,
        label,
        live,
    };
    let cmd = task::backup(
        cwd,
        hooks::env_path(inventory),
        vars,
        &b.command,
        &file,
        b.verify.as_deref(),
        b.keep,
    );
    let extra = match b.kind {
        BackupKind::Postgres => database_url(inventory)
            .and_then(|url| crate::deploy::envfile::pg_env(&url))
            .unwrap_or_else(|| Secret::new("")),
        BackupKind::Command => Secret::new(""),
    };
    let req = ExecRequest::new(&cmd, timeout::LONG)
        .stdin(Stdin::Secret(extra))
        .as_root();
    match conn.transport.exec(req).await {
        Ok(o) if o.success() => {
            let text = o.stdout.text();
            // `backup <path> <bytes> <sha256>`: the path may hold spaces, the rest not.
            let line = text.lines().find_map(|l| l.strip_prefix("backup "));
            let (rest, sha256) = line.and_then(|l| l.rsplit_once(' ')).unwrap_or_default();
            let (path, bytes) = rest
                .rsplit_once(' ')
                .map(|(p, n)| (p.to_owned(), n.trim().parse().unwrap_or(0)))
                .unwrap_or_default();
            Ok(Some(BackupFile {
                host: conn.host.name.clone(),
                path,
                bytes,
                sha256: sha256.trim().to_owned(),
            }))
        }
        Ok(o) => {
            let why = match o.exit {
                Exit::Code(exit::BACKUP_EMPTY) => "it exited 0 but wrote nothing",
                Exit::Code(exit::BACKUP_UNVERIFIED) => "its verification failed",
                Exit::Code(exit::BACKUP_FAILED) => "its command failed",
                _ => "it failed",
            };
            Err(
                RemoteError::from_output(&conn.host.name, "backup", "the database backup", &o)
                    .saying(format!(
                        "the database backup on `{}` failed ({why}); nothing was migrated or switched:\n{}",
                        conn.host.name,
                        o.stderr.text().trim_end()
                    )),
            )
        }
        Err(e) => Err(RemoteError::new(
            &conn.host.name,
            "backup",
            format!("the database backup failed: {}", crate::error::chain(&e)),
        )),
    }
}

/// Runs `migrate.command` once in `release_dir`, output streamed as the host's lines.
pub async fn migrate(
    conn: &Conn<'_>,
    inventory: &Inventory,
    release_dir: &str,
    vars: &TaskVars,
    out: &Output,
) -> Result<bool, RemoteError> {
    let Some(m) = &inventory.migrate else {
        return Ok(false);
    };
    out.emit(Event::Step {
        host: &conn.host.name,
        step: "migrating",
    });
    let cmd = task::run(release_dir, hooks::env_path(inventory), vars, &m.command);
    hooks::run_streamed(conn, "migrate", &cmd, out, "the migration").await?;
    Ok(true)
}

/// The host that runs backups and migrations among the selected ones: the inventory's
/// migrate host if it is selected, else the first selected host (the database is shared:
/// any host of the new release can migrate it).
pub fn migrate_host_index(inventory: &Inventory, selected: &[&str]) -> usize {
    let tagged = &inventory.hosts[inventory.migrate_host].name;
    selected.iter().position(|h| h == tagged).unwrap_or(0)
}
