//! The database step of a deploy, once, on the migrate host, after every host is staged and
//! before anything is switched: a verified backup, then the migrations, in the new release
//! with its env file loaded. Also hooks (user commands at named points) and the `backup` /
//! `backups` commands.
//!
//! For `kind = "postgres"` the connection comes from `DATABASE_URL`, turned here into the
//! `PG*` variables libpq reads and sent on stdin: `pg_dump` runs with no connection string
//! in its argv, so the password never shows in the host's process list.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::commands::task::TaskVars;
use crate::commands::{exit, task};
use crate::inventory::{BackupKind, Hook, HookPoint, Inventory};
use crate::output::{Event, Output, Report, table};
use crate::plan;
use crate::shell::Secret;
use crate::transport::fleet::Conn;
use crate::transport::{ExecRequest, Exit, Stdin, Stream};

/// Migrations and backups may take long; keepalives notice a dead host meanwhile.
const LONG: Duration = Duration::from_secs(6 * 3600);

/// `PG*` variables for libpq from a `postgres://user:pass@host:port/db?sslmode=…` URL, in
/// env-file syntax (the secret stays a [`Secret`]). `None` when it is not such a URL.
pub fn pg_env(url: &str) -> Option<Secret> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let mut vars = BTreeMap::new();
    if let Some(userinfo) = userinfo {
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        vars.insert("PGUSER".to_owned(), decode(user)?);
        if !password.is_empty() {
            vars.insert("PGPASSWORD".to_owned(), decode(password)?);
        }
    }
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let (h, after) = inner.split_once(']')?;
        (h, after.strip_prefix(':').unwrap_or(""))
    } else {
        hostport.rsplit_once(':').unwrap_or((hostport, ""))
    };
    if !host.is_empty() {
        vars.insert("PGHOST".to_owned(), decode(host)?);
    }
    if !port.is_empty() {
        vars.insert("PGPORT".to_owned(), port.to_owned());
    }
    if !database.is_empty() {
        vars.insert("PGDATABASE".to_owned(), decode(database)?);
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let name = match k {
            "sslmode" => "PGSSLMODE",
            "sslrootcert" => "PGSSLROOTCERT",
            "sslcert" => "PGSSLCERT",
            "sslkey" => "PGSSLKEY",
            "connect_timeout" => "PGCONNECT_TIMEOUT",
            "application_name" => "PGAPPNAME",
            "options" => "PGOPTIONS",
            "host" => "PGHOST",
            "port" => "PGPORT",
            "user" => "PGUSER",
            "password" => "PGPASSWORD",
            "dbname" => "PGDATABASE",
            _ => continue,
        };
        vars.insert(name.to_owned(), decode(v)?);
    }
    let mut text = crate::deploy::envfile::render(&vars, &[])
        .expose()
        .to_owned();
    // `render` starts with a comment line; keep only the assignments.
    text = text.lines().skip(1).collect::<Vec<_>>().join("\n");
    Some(Secret::new(text))
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The value of `DATABASE_URL` among the env file's variables and secrets.
fn database_url(inventory: &Inventory) -> Option<String> {
    let env = inventory.env.as_ref()?;
    env.secrets
        .iter()
        .find(|(k, _)| k == "DATABASE_URL")
        .map(|(_, v)| v.expose().to_owned())
        .or_else(|| env.vars.get("DATABASE_URL").cloned())
}

/// The env file run `token` stages (see [`TaskVars::env_next`]); `None` without `[env]`.
pub fn env_next(inventory: &Inventory, token: &str) -> Option<String> {
    let env = inventory.env.as_ref()?;
    Some(crate::commands::envfile::next_path(&env.path, token))
}

fn env_path(inventory: &Inventory) -> Option<&str> {
    inventory.env.as_ref().map(|e| e.path.as_str())
}

/// One backup made.
#[derive(Clone, Debug, Serialize)]
pub struct BackupFile {
    pub host: String,
    pub path: String,
    pub bytes: u64,
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
    now_unix: u64,
    out: &Output,
) -> Result<Option<BackupFile>, String> {
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
    let cmd = task::backup(
        cwd,
        env_path(inventory),
        vars,
        &b.command,
        &b.dir,
        &name,
        b.verify.as_deref(),
        b.keep,
        &prefix,
        &suffix,
    );
    let extra = match b.kind {
        BackupKind::Postgres => database_url(inventory)
            .and_then(|url| pg_env(&url))
            .unwrap_or_else(|| Secret::new("")),
        BackupKind::Command => Secret::new(""),
    };
    let req = ExecRequest::new(&cmd, LONG).stdin(Stdin::Secret(extra));
    match conn.transport.exec(req).await {
        Ok(o) if o.success() => {
            let text = o.stdout.text();
            let line = text.lines().find_map(|l| l.strip_prefix("backup "));
            let (path, bytes) = line
                .and_then(|l| l.rsplit_once(' '))
                .map(|(p, n)| (p.to_owned(), n.trim().parse().unwrap_or(0)))
                .unwrap_or_default();
            Ok(Some(BackupFile {
                host: conn.host.name.clone(),
                path,
                bytes,
            }))
        }
        Ok(o) => {
            let why = match o.exit {
                Exit::Code(exit::BACKUP_EMPTY) => "it exited 0 but wrote nothing",
                Exit::Code(exit::BACKUP_UNVERIFIED) => "its verification failed",
                Exit::Code(exit::BACKUP_FAILED) => "its command failed",
                _ => "it failed",
            };
            Err(format!(
                "the database backup on `{}` failed ({why}); nothing was migrated or switched:\n{}",
                conn.host.name,
                o.stderr.text().trim_end()
            ))
        }
        Err(e) => Err(format!(
            "the database backup failed: {}",
            crate::error::chain(&e)
        )),
    }
}

/// What a user's command learns about the deploy it runs in (documented in the README).
pub fn task_vars(
    inventory: &Inventory,
    host: &str,
    release: &str,
    previous: Option<&str>,
) -> TaskVars {
    let release_dir = format!("{}/releases/{release}", inventory.app.deploy_to);
    TaskVars {
        vars: vec![
            ("SHIPIT_APP", inventory.app.name.clone()),
            ("SHIPIT_HOST", host.to_owned()),
            ("SHIPIT_RELEASE", release.to_owned()),
            ("SHIPIT_RELEASE_DIR", release_dir.clone()),
            ("SHIPIT_PREVIOUS", previous.unwrap_or("").to_owned()),
            (
                "SHIPIT_FIRST_DEPLOY",
                if previous.is_none() { "1" } else { "0" }.to_owned(),
            ),
        ],
        compose: inventory.compose.as_ref().map(|c| {
            (
                c.project.clone(),
                format!("{release_dir}/{}", crate::deploy::stage::COMPOSE_FILE),
            )
        }),
        env_next: None,
    }
}

/// Runs `migrate.command` once in `release_dir`, output streamed as the host's lines.
pub async fn migrate(
    conn: &Conn<'_>,
    inventory: &Inventory,
    release_dir: &str,
    vars: &TaskVars,
    out: &Output,
) -> Result<bool, String> {
    let Some(m) = &inventory.migrate else {
        return Ok(false);
    };
    out.emit(Event::Step {
        host: &conn.host.name,
        step: "migrating",
    });
    let cmd = task::run(release_dir, env_path(inventory), vars, &m.command);
    run_streamed(conn, &cmd, out, "the migration").await?;
    Ok(true)
}

/// Runs the hooks of `point` that apply to this host (`once` hooks on the migrate host only).
pub async fn hooks(
    conn: &Conn<'_>,
    inventory: &Inventory,
    point: HookPoint,
    release_dir: &str,
    is_migrate_host: bool,
    vars: &TaskVars,
    out: &Output,
) -> Result<(), String> {
    let applies = |h: &&Hook| {
        h.at == point
            && (!h.once || is_migrate_host)
            && (h.roles.is_empty() || h.roles.iter().any(|r| conn.host.has_role(r)))
    };
    for hook in inventory.hooks.iter().filter(applies) {
        out.emit(Event::Step {
            host: &conn.host.name,
            step: &format!("hook {}", point_name(point)),
        });
        let cmd = task::run(release_dir, env_path(inventory), vars, &hook.command);
        run_streamed(
            conn,
            &cmd,
            out,
            &format!("the {} hook `{}`", point_name(point), hook.command),
        )
        .await?;
    }
    Ok(())
}

pub fn point_name(point: HookPoint) -> &'static str {
    match point {
        HookPoint::AfterUpload => "after_upload",
        HookPoint::BeforeSwitch => "before_switch",
        HookPoint::AfterSwitch => "after_switch",
        HookPoint::AfterRestart => "after_restart",
    }
}

async fn run_streamed(
    conn: &Conn<'_>,
    cmd: &crate::shell::Cmd,
    out: &Output,
    what: &str,
) -> Result<(), String> {
    let host = conn.host.name.as_str();
    let pending = std::sync::Mutex::new([Vec::new(), Vec::new()]);
    let sink = |stream: Stream, chunk: &[u8]| {
        let mut pending = pending.lock().expect("lock");
        let buf = &mut pending[stream as usize];
        buf.extend_from_slice(chunk);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            out.emit(Event::Line {
                host,
                stream,
                line: String::from_utf8_lossy(&line[..line.len() - 1]).trim_end_matches('\r'),
            });
        }
    };
    let result = conn
        .transport
        .exec(ExecRequest::new(cmd, LONG).output(&sink))
        .await;
    for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
        let rest = std::mem::take(&mut pending.lock().expect("lock")[i]);
        if !rest.is_empty() {
            out.emit(Event::Line {
                host,
                stream,
                line: &String::from_utf8_lossy(&rest),
            });
        }
    }
    match result {
        Ok(o) if o.success() => Ok(()),
        Ok(o) => Err(format!(
            "{what} failed on `{host}` with {}: {}",
            o.exit,
            o.stderr.text().trim_end()
        )),
        Err(e) => Err(format!(
            "{what} failed on `{host}`: {}",
            crate::error::chain(&e)
        )),
    }
}

/// `shipit backup`: one verified backup now, under the deploy lock of the migrate host.
#[derive(Debug, Serialize)]
pub struct BackupReport {
    pub stage: String,
    pub host: String,
    pub backup: Option<BackupFile>,
    pub error: Option<String>,
    /// Not made because another run holds the lock (exit 5, as for a deploy or a task).
    #[serde(skip)]
    pub locked: bool,
}

impl Report for BackupReport {
    fn human(&self) -> String {
        match (&self.backup, &self.error) {
            (Some(b), _) => format!(
                "{}: backup `{}` ({})\n",
                b.host,
                b.path,
                table::bytes(b.bytes)
            ),
            (None, Some(e)) => format!("{}: {e}\n", self.host),
            (None, None) => format!("{}: no `[backup]` configured\n", self.host),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }
}

pub async fn backup_now(
    stage: &str,
    conn: &Conn<'_>,
    inventory: &Inventory,
    run: &crate::deploy::lock::RunInfo,
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
    let now = crate::deploy::pipeline::now_unix();
    // Before the lock, which already writes under `deploy_to`.
    if let Some(Err(e)) = crate::deploy::strict::preflight(conns, inventory)
        .await
        .pop()
    {
        report.error = Some(e.message);
        return report;
    }
    let state = crate::deploy::lock::acquire_all(
        conns,
        deploy_to,
        inventory.env.as_ref().map(|e| e.path.as_str()),
        run,
    )
    .await
    .pop();
    let state = state.unwrap_or(crate::deploy::lock::LockState::NotTried);
    let lock_timeout = inventory.rollout.lock_timeout;
    if let Some(problem) = state.problem(&conn.host.name, now, lock_timeout) {
        report.locked = matches!(state, crate::deploy::lock::LockState::Held(_));
        report.error = Some(problem);
        return report;
    }
    let result = match current_release(conn, deploy_to).await {
        Ok((current, previous)) => {
            // The current release's directory, compose file and env: what is running now.
            let vars = task_vars(inventory, &conn.host.name, &current, previous.as_deref());
            let cwd = format!("{deploy_to}/releases/{current}");
            backup(conn, inventory, &cwd, &vars, "manual", now, out).await
        }
        Err(e) => Err(e),
    };
    let outcome = if result.is_ok() { "success" } else { "failed" };
    match result {
        Ok(made) => report.backup = made,
        Err(e) => report.error = Some(e),
    }
    let entry = crate::ops::history::Record {
        time: plan::rfc3339_millis(run.started_millis),
        finished: Some(plan::rfc3339_millis(crate::deploy::pipeline::now_millis())),
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
    crate::deploy::lock::release_all(&[conn], deploy_to, &run.token).await;
    report
}

/// The release `current` points at on `conn`'s host, and the newest complete release before
/// it (what `$SHIPIT_PREVIOUS` says during a deploy of it).
/// The release `current` points at on the host, and the one before it (one round trip).
pub async fn current_release(
    conn: &Conn<'_>,
    deploy_to: &str,
) -> Result<(String, Option<String>), String> {
    let cmd = crate::plan::facts::releases(deploy_to);
    let o = conn
        .transport
        .exec(ExecRequest::new(&cmd, Duration::from_secs(60)))
        .await
        .map_err(|e| crate::error::chain(&e))?;
    if !o.success() {
        return Err(format!(
            "reading the releases on `{}` failed ({}): {}",
            conn.host.name,
            o.exit,
            o.stderr.text().trim()
        ));
    }
    let tree = crate::plan::facts::parse_releases(&o.stdout.text());
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

/// `shipit backups`: the backups on the migrate host, newest first.
#[derive(Debug, Serialize)]
pub struct BackupsReport {
    pub stage: String,
    pub host: String,
    pub dir: String,
    pub backups: Vec<BackupEntry>,
}

#[derive(Debug, Serialize)]
pub struct BackupEntry {
    pub name: String,
    pub bytes: u64,
    pub time: String,
}

impl Report for BackupsReport {
    fn human(&self) -> String {
        table::backups(self)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }
}

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
    let o = conn
        .transport
        .exec(ExecRequest::new(&cmd, Duration::from_secs(60)))
        .await
        .map_err(|e| crate::error::chain(&e))?;
    if !o.success() {
        return Err(format!(
            "listing `{}` failed ({}): {}",
            b.dir,
            o.exit,
            o.stderr.text().trim()
        ));
    }
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

/// The host that runs backups and migrations among the selected ones: the inventory's
/// migrate host if it is selected, else the first selected host (the database is shared:
/// any host of the new release can migrate it).
pub fn migrate_host_index(inventory: &Inventory, selected: &[&str]) -> usize {
    let tagged = &inventory.hosts[inventory.migrate_host].name;
    selected.iter().position(|h| h == tagged).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_urls_become_pg_variables() {
        let env =
            pg_env("postgresql://app:p%40ss%20w0rd@db.internal:6432/shop?sslmode=require&foo=bar")
                .unwrap();
        insta::assert_snapshot!(env.expose(), @r#"
        PGDATABASE=shop
        PGHOST=db.internal
        PGPASSWORD="p@ss w0rd"
        PGPORT=6432
        PGSSLMODE=require
        PGUSER=app
        "#);
        assert!(pg_env("mysql://x").is_none());
        let local = pg_env("postgres:///app?host=/run/postgresql").unwrap();
        assert!(local.expose().contains("PGHOST=/run/postgresql"));
        assert!(local.expose().contains("PGDATABASE=app"));
    }
}
