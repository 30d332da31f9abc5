//! The database step against a real PostgreSQL: verified backup before migrations, the
//! migration exactly once, failures stop before any switch, retention, and no secret in the
//! hosts' argv or shipit's output.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{run, succeeds, write};
use crate::support::Fleet;
use crate::support::postgres::{PASSWORD, Postgres};

/// Reads DATABASE_URL from the environment like an ORM would and runs migrations.sql with
/// psql, the connection in PG* variables: nothing secret in any argv.
const MIGRATE: &str = r#"#!/bin/sh
set -e
eval "$(python3 - <<'PY'
import os, shlex, urllib.parse as u
p = u.urlparse(os.environ["DATABASE_URL"])
for k, v in [("PGHOST", p.hostname), ("PGPORT", p.port), ("PGUSER", p.username),
             ("PGPASSWORD", u.unquote(p.password)), ("PGDATABASE", p.path[1:])]:
    print(f"export {k}={shlex.quote(str(v))}")
PY
)"
psql -X -q -v ON_ERROR_STOP=1 -f migrations.sql
"#;

fn app(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let app = dir.join(name);
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("migrations.sql"), sql).unwrap();
    std::fs::write(app.join("migrate.sh"), MIGRATE).unwrap();
    std::fs::write(app.join("VERSION"), name).unwrap();
    let chmod = std::process::Command::new("chmod")
        .arg("+x")
        .arg(app.join("migrate.sh"))
        .status()
        .unwrap();
    assert!(chmod.success());
    app
}

fn inventory(fleet: &Fleet, hosts: &[&str], app: &Path, extra: &str) -> PathBuf {
    let mut text = format!(
        r#"[app]
name = "shop"
deploy_to = "/opt/shop"

[ssh]
identity = "{}"
known_hosts = "{}"

[artifact]
path = "{}"

[env]
path = "/etc/shop.env"
from_env = ["DATABASE_URL"]

[backup]
kind = "postgres"
dir = "/var/backups/shop"
keep = 7

[migrate]
command = "./migrate.sh"

{extra}
"#,
        fleet.client_key().display(),
        fleet.known_hosts().display(),
        app.display()
    );
    for h in hosts {
        text.push_str(&format!(
            "\n[[hosts]]\nname = \"{h}\"\naddress = \"127.0.0.1\"\nport = {}\n",
            fleet.host(h).port
        ));
    }
    write(fleet.dir(), "inv.toml", &text)
}

/// Runs `shipit <args> -i <inv>` with DATABASE_URL exported: (exit code, stdout, stderr).
fn shipit(fleet: &Fleet, pg: &Postgres, args: &[&str], inv: &Path) -> (i32, String, String) {
    run(fleet
        .shipit()
        .env("DATABASE_URL", pg.url("shop"))
        .args(args)
        .arg("-i")
        .arg(inv))
}

fn deploy(fleet: &Fleet, pg: &Postgres, inv: &Path) -> (i32, serde_json::Value, String) {
    let (code, stdout, stderr) = shipit(fleet, pg, &["deploy", "test", "--json"], inv);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (code, json, stderr)
}

/// A PostgreSQL with the seeded `shop` database, and a fleet of `hosts`.
fn start(hosts: usize) -> (Postgres, Fleet) {
    let pg = Postgres::start();
    seed(&pg);
    (pg, Fleet::start(hosts))
}

/// Asserts the JSON report's message contains `text`.
fn assert_message(report: &serde_json::Value, text: &str) {
    assert!(
        report["message"].as_str().unwrap().contains(text),
        "{report:#}"
    );
}

fn seed(pg: &Postgres) {
    pg.create_db("shop");
    pg.psql_ok(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items VALUES (1,'a'),(2,'b'),(3,'c'); CREATE TABLE migration_runs (id serial PRIMARY KEY, at timestamptz DEFAULT now());",
    );
}

const ADD_COLUMN: &str = "ALTER TABLE items ADD COLUMN IF NOT EXISTS note text; INSERT INTO migration_runs DEFAULT VALUES;";

#[test]
fn backup_then_migration_keeps_data_and_the_dump_restores_the_old_schema() {
    let (pg, fleet) = start(1);
    let inv = inventory(&fleet, &["h1"], &app(fleet.dir(), "v2", ADD_COLUMN), "");
    let (code, report, stderr) = deploy(&fleet, &pg, &inv);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    assert_eq!(report["migrated_on"], "h1");
    // The migration ran: new column, old rows.
    assert_eq!(pg.psql_ok("shop", "SELECT count(*) FROM items"), "3");
    assert_eq!(pg.psql_ok("shop", "SELECT count(*) FROM information_schema.columns WHERE table_name='items' AND column_name='note'"), "1");
    // The backup: on the host, verified by pg_restore, and it restores the pre-migration schema.
    let path = report["backup"]["path"].as_str().unwrap();
    assert!(
        path.starts_with("/var/backups/shop/shop-") && path.ends_with(".dump"),
        "{path}"
    );
    assert!(report["backup"]["bytes"].as_u64().unwrap() > 0);
    let local = fleet.dir().join("copy.dump");
    let bytes = fleet.sh("h1", &format!("cat '{path}'")).stdout;
    std::fs::write(&local, bytes).unwrap();
    assert!(pg.pg_restore_list(&local).status.success());
    let restored = pg.restore(&local, "scratch");
    assert!(restored.status.success(), "{restored:?}");
    assert_eq!(pg.psql_ok("scratch", "SELECT count(*) FROM items"), "3");
    assert_eq!(pg.psql_ok("scratch", "SELECT count(*) FROM information_schema.columns WHERE table_name='items' AND column_name='note'"), "0");
    assert_eq!(
        fleet.sh_ok("h1", &format!("stat -c %a '{path}'")).trim(),
        "600"
    );
}

#[test]
fn a_failing_migration_switches_nothing() {
    let (pg, fleet) = start(2);
    let inv = inventory(
        &fleet,
        &["h1", "h2"],
        &app(fleet.dir(), "v1", "SELECT 1;"),
        "",
    );
    let (code, _, stderr) = deploy(&fleet, &pg, &inv);
    assert_eq!(code, 0, "{stderr}");
    let before = fleet.sh_ok("h1", "readlink /opt/shop/current");
    let inv = inventory(
        &fleet,
        &["h1", "h2"],
        &app(fleet.dir(), "v2", "SELECT no_such_function();"),
        "",
    );
    let (code, report, stderr) = deploy(&fleet, &pg, &inv);
    assert_eq!(code, 1, "{stderr}");
    assert_message(&report, "the migration failed");
    for h in ["h1", "h2"] {
        assert_eq!(
            fleet.sh_ok(h, "readlink /opt/shop/current"),
            before,
            "{h} was switched"
        );
        assert_eq!(fleet.sh_ok(h, "cat /opt/shop/current/VERSION"), "v1");
        assert!(
            !succeeds(&fleet, h, "test -e /opt/shop/.shipit/lock"),
            "lock left on {h}"
        );
    }
}

#[test]
fn an_empty_backup_stops_the_deploy_before_migrations() {
    let (pg, fleet) = start(1);
    let app = app(fleet.dir(), "v2", ADD_COLUMN);
    let inv = inventory(&fleet, &["h1"], &app, "");
    let text = std::fs::read_to_string(&inv).unwrap().replace(
        "kind = \"postgres\"",
        "kind = \"command\"\ncommand = \"true\"",
    );
    let inv = write(fleet.dir(), "inv-empty.toml", &text);
    let (code, report, stderr) = deploy(&fleet, &pg, &inv);
    assert_eq!(code, 1, "{stderr}");
    assert_message(&report, "wrote nothing");
    assert_eq!(
        pg.psql_ok("shop", "SELECT count(*) FROM migration_runs"),
        "0",
        "no migration ran"
    );
    assert!(
        !succeeds(&fleet, "h1", "test -e /opt/shop/current"),
        "nothing switched"
    );
}

#[test]
fn retention_keeps_seven_backups_after_nine_deploys() {
    let (pg, fleet) = start(1);
    let mut last = String::new();
    for i in 0..9 {
        let inv = inventory(
            &fleet,
            &["h1"],
            &app(fleet.dir(), &format!("v{i}"), "SELECT 1;"),
            "",
        );
        let (code, report, stderr) = deploy(&fleet, &pg, &inv);
        assert_eq!(code, 0, "{stderr}");
        last = report["backup"]["path"].as_str().unwrap().to_owned();
    }
    // Each backup with its record (`<name>.meta`), and no record left of a removed one.
    let files = fleet.sh_ok("h1", "ls /var/backups/shop | grep -v '[.]meta$'");
    assert_eq!(files.lines().count(), 7, "{files}");
    let records = fleet.sh_ok("h1", "ls /var/backups/shop | grep '[.]meta$'");
    let with_records: Vec<String> = files.lines().map(|f| format!("{f}.meta")).collect();
    assert_eq!(records.lines().collect::<Vec<_>>(), with_records);
    assert!(
        files.contains(last.rsplit('/').next().unwrap()),
        "the newest is kept"
    );
    // `shipit backups` lists them.
    let (code, stdout, _) = shipit(
        &fleet,
        &pg,
        &["backups", "test", "--json"],
        &fleet.dir().join("inv.toml"),
    );
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed["backups"].as_array().unwrap().len(), 7);
}

#[test]
fn three_hosts_in_waves_of_one_migrate_exactly_once_and_no_secret_leaks() {
    let (pg, fleet) = start(3);
    let hooks = "[rollout]\nwaves = [\"1\"]\n\n[[hooks]]\nat = \"after_switch\"\ncommand = \"psql -X -q -c 'select 1' >/dev/null 2>&1 || true; touch /tmp/hook-every-host\"\n\n[[hooks]]\nat = \"after_switch\"\nonce = true\ncommand = \"touch /tmp/hook-once\"\n";
    let inv = inventory(
        &fleet,
        &["h1", "h2", "h3"],
        &app(fleet.dir(), "v2", ADD_COLUMN),
        hooks,
    );
    let done = AtomicBool::new(false);
    let (argv, (code, report, stderr), stdout_text) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut seen = String::new();
            while !done.load(Ordering::Relaxed) {
                for h in ["h1", "h2", "h3"] {
                    let out = fleet.sh(h, "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f 2>/dev/null; echo; done");
                    seen.push_str(&String::from_utf8_lossy(&out.stdout));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        });
        let result = deploy(&fleet, &pg, &inv);
        // And the text output, for the audit.
        let text = shipit(
            &fleet,
            &pg,
            &["deploy", "test", "--progress", "never", "-v"],
            &inv,
        );
        done.store(true, Ordering::Relaxed);
        (sampler.join().unwrap(), result, text)
    });
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout_text.0, 0, "{}", stdout_text.2);
    assert_eq!(
        pg.psql_ok("shop", "SELECT count(*) FROM migration_runs"),
        "2",
        "once per deploy, two deploys"
    );
    let once: Vec<bool> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| succeeds(&fleet, h, "test -e /tmp/hook-once"))
        .collect();
    assert_eq!(
        once,
        [true, false, false],
        "the once hook ran on the migrate host only"
    );
    for h in ["h1", "h2", "h3"] {
        assert!(succeeds(&fleet, h, "test -e /tmp/hook-every-host"), "{h}");
    }
    assert!(
        argv.contains("sshd"),
        "the sampler saw the hosts' processes"
    );
    let history = fleet.sh_ok("h1", "cat /opt/shop/.shipit/history.jsonl");
    for (what, text) in [
        ("argv", &argv),
        ("json", &report.to_string()),
        ("stderr", &stderr),
        ("text stdout", &stdout_text.1),
        ("text stderr", &stdout_text.2),
        ("history", &history),
    ] {
        assert!(
            !text.contains(PASSWORD),
            "the database password appears in {what}"
        );
    }
}

#[test]
fn shipit_backup_makes_one_now_under_the_lock() {
    let (pg, fleet) = start(1);
    let inv = inventory(&fleet, &["h1"], &app(fleet.dir(), "v1", "SELECT 1;"), "");
    let (code, _, stderr) = deploy(&fleet, &pg, &inv);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = shipit(&fleet, &pg, &["backup", "test", "--json"], &inv);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let path = report["backup"]["path"].as_str().unwrap();
    assert!(path.contains("-manual-"), "{path}");
    assert!(succeeds(&fleet, "h1", &format!("test -s '{path}'")));
    assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));
    // Under someone else's lock it refuses.
    fleet.sh_ok("h1", "mkdir -p /opt/shop/.shipit/lock");
    let (code, _, stderr) = shipit(&fleet, &pg, &["backup", "test"], &inv);
    // Exit 5 when locked, as README says for `backup` (it was 1).
    assert_eq!(code, 5);
    assert!(stderr.contains("locked by"), "{stderr}");
    let history = fleet.sh_ok("h1", "cat /opt/shop/.shipit/history.jsonl");
    assert!(history.contains("\"action\":\"backup\""), "{history}");
}
