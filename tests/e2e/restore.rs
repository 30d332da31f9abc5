//! Restoring a database backup (issue #21) against a real PostgreSQL and real sshd hosts, as
//! a user sees it: `rollback --restore-db` undoes a destructive migration, `restore` of a
//! named backup (with and without `--release`), the `.meta` sidecar and `backups --json`,
//! damaged backups refused before anything changes, the restore drill, no password in any
//! argv or output, the confirmation without a terminal, and a `kind = "command"` restore
//! that reads the backup on stdin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::common::{run, succeeds, write};
use crate::support::Fleet;
use crate::support::postgres::{PASSWORD, Postgres};

const DIR: &str = "/var/backups/shop";

/// Reads DATABASE_URL from the environment like an ORM would and runs migrations.sql with
/// psql, the connection in PG* variables (as `database.rs`).
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

/// v1: a column with data in it.
const ADD_NOTE: &str = "ALTER TABLE items ADD COLUMN IF NOT EXISTS note text; UPDATE items SET note = 'n' || id; INSERT INTO migration_runs DEFAULT VALUES;";

/// v2: loses rows and a column, adds a table: only a restore brings the data back.
const DESTRUCTIVE: &str = "DELETE FROM items WHERE id > 1; ALTER TABLE items DROP COLUMN note; CREATE TABLE audit (id serial PRIMARY KEY, what text); INSERT INTO audit (what) VALUES ('v2'); INSERT INTO migration_runs DEFAULT VALUES;";

fn app(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let app = dir.join(name);
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("migrations.sql"), sql).unwrap();
    std::fs::write(app.join("migrate.sh"), MIGRATE).unwrap();
    std::fs::write(app.join("VERSION"), name).unwrap();
    chmod_x(&app.join("migrate.sh"));
    app
}

fn chmod_x(path: &Path) {
    let chmod = std::process::Command::new("chmod")
        .arg("+x")
        .arg(path)
        .status()
        .unwrap();
    assert!(chmod.success());
}

/// `[env]`, a postgres `[backup]` keeping `keep`, and `[migrate]`.
fn postgres_sections(keep: u32) -> String {
    format!(
        r#"[env]
path = "/etc/shop.env"
from_env = ["DATABASE_URL"]

[backup]
kind = "postgres"
dir = "{DIR}"
keep = {keep}

[migrate]
command = "./migrate.sh"
"#
    )
}

/// The inventory of app `shop` on `hosts`, with `sections` after `[artifact]`.
fn inventory(fleet: &Fleet, hosts: &[&str], app: &Path, sections: &str) -> PathBuf {
    let mut text = format!(
        r#"[app]
name = "shop"
deploy_to = "/opt/shop"

[ssh]
identity = "{}"
known_hosts = "{}"

[artifact]
path = "{}"

{sections}
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

/// Runs `shipit <args> -i <inv>`, stdin not a terminal, with DATABASE_URL = `url` when not
/// empty: (exit code, stdout, stderr).
fn shipit_with(fleet: &Fleet, url: &str, args: &[&str], inv: &Path) -> (i32, String, String) {
    let mut cmd = fleet.shipit();
    if !url.is_empty() {
        cmd.env("DATABASE_URL", url);
    }
    run(cmd.args(args).arg("-i").arg(inv).stdin(Stdio::null()))
}

fn shipit(fleet: &Fleet, pg: &Postgres, args: &[&str], inv: &Path) -> (i32, String, String) {
    shipit_with(fleet, &pg.url("shop"), args, inv)
}

/// [`shipit_with`] with `--json`, stdout parsed.
fn json_with(fleet: &Fleet, url: &str, args: &[&str], inv: &Path) -> (i32, Value, String) {
    let mut args = args.to_vec();
    args.push("--json");
    let (code, stdout, stderr) = shipit_with(fleet, url, &args, inv);
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}\nstderr: {stderr}"));
    (code, json, stderr)
}

fn json(fleet: &Fleet, pg: &Postgres, args: &[&str], inv: &Path) -> (i32, Value, String) {
    json_with(fleet, &pg.url("shop"), args, inv)
}

/// Deploys, asserting success: the new release id.
fn deploy_with(fleet: &Fleet, url: &str, inv: &Path) -> String {
    let (code, report, stderr) = json_with(fleet, url, &["deploy", "test"], inv);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    report["release"].as_str().unwrap().to_owned()
}

fn deploy(fleet: &Fleet, pg: &Postgres, inv: &Path) -> String {
    deploy_with(fleet, &pg.url("shop"), inv)
}

/// A PostgreSQL with the seeded `shop` database, and a fleet of `hosts`.
fn start(hosts: usize) -> (Postgres, Fleet) {
    let pg = Postgres::start();
    pg.create_db("shop");
    pg.psql_ok(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items VALUES (1,'a'),(2,'b'),(3,'c'); CREATE TABLE migration_runs (id serial PRIMARY KEY, at timestamptz DEFAULT now());",
    );
    (pg, Fleet::start(hosts))
}

/// What the tests compare of the `shop` database: item ids, the columns of `items`, whether
/// `audit` exists. E.g. `1,2,3 | id,name,note | no audit`.
fn db_state(pg: &Postgres) -> String {
    pg.psql_ok(
        "shop",
        "SELECT coalesce((SELECT string_agg(id::text, ',' ORDER BY id) FROM items), '-') || ' | ' \
         || coalesce((SELECT string_agg(column_name::text, ',' ORDER BY column_name) FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'items'), '-') || ' | ' \
         || CASE WHEN to_regclass('public.audit') IS NULL THEN 'no audit' ELSE 'audit' END",
    )
}

/// The release `current` points at on `host`.
fn current(fleet: &Fleet, host: &str) -> String {
    let link = fleet.sh_ok(host, "readlink /opt/shop/current");
    link.trim().rsplit('/').next().unwrap().to_owned()
}

/// `shipit backups test --json`'s `backups`, asserting the envelope.
fn backups_with(fleet: &Fleet, url: &str, inv: &Path) -> Vec<Value> {
    let (code, report, stderr) = json_with(fleet, url, &["backups", "test"], inv);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    assert_eq!(report["stage"], "test", "{report:#}");
    assert_eq!(report["host"], "h1", "{report:#}");
    assert_eq!(report["dir"], DIR, "{report:#}");
    report["backups"].as_array().unwrap().clone()
}

fn backups(fleet: &Fleet, pg: &Postgres, inv: &Path) -> Vec<Value> {
    backups_with(fleet, &pg.url("shop"), inv)
}

/// The one listed backup taken for `release` (`taken_for`).
fn taken_for<'a>(list: &'a [Value], release: &str) -> &'a Value {
    let found: Vec<&Value> = list.iter().filter(|b| b["taken_for"] == release).collect();
    assert_eq!(found.len(), 1, "one backup taken for {release}: {list:#?}");
    found[0]
}

fn name(backup: &Value) -> &str {
    backup["name"].as_str().unwrap()
}

/// `sha256sum` of `path` on `host`.
fn sha256_on(fleet: &Fleet, host: &str, path: &str) -> String {
    let out = fleet.sh_ok(host, &format!("sha256sum '{path}'"));
    out.split_whitespace().next().unwrap().to_owned()
}

/// The `<key> <value>` lines of the sidecar of backup `name` on h1.
fn meta(fleet: &Fleet, name: &str) -> BTreeMap<String, String> {
    fleet
        .sh_ok("h1", &format!("cat '{DIR}/{name}.meta'"))
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            (k.to_owned(), v.trim().to_owned())
        })
        .collect()
}

/// The newest history entry (`shipit history test --json`) and how many there are.
fn history(fleet: &Fleet, url: &str, inv: &Path) -> (Value, usize) {
    let (code, report, stderr) = json_with(fleet, url, &["history", "test"], inv);
    assert_eq!(code, 0, "{stderr}");
    let entries = report["entries"].as_array().unwrap();
    (entries[0].clone(), entries.len())
}

/// Databases whose name contains `shipit_drill`, or is `also`.
fn drill_databases(pg: &Postgres, also: &str) -> String {
    pg.psql_ok(
        "postgres",
        &format!(
            "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE '%shipit_drill%' OR datname = '{also}'"
        ),
    )
}

/// The report's `message` (what a user reads first, as for a failed migration) says `text`.
fn assert_message(report: &Value, stderr: &str, text: &str) {
    let message = report["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(text),
        "no `{text}` in the message: {report:#}\nstderr: {stderr}"
    );
}

fn assert_unlocked(fleet: &Fleet, hosts: &[&str]) {
    for h in hosts {
        assert!(
            !succeeds(fleet, h, "test -e /opt/shop/.shipit/lock"),
            "lock left on {h}"
        );
    }
}

/// Runs `f` while sampling every process's argv on `hosts` (/proc/*/cmdline, one a line).
fn sampling<T>(fleet: &Fleet, hosts: &[&str], f: impl FnOnce() -> T) -> (String, T) {
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut seen = String::new();
            while !done.load(Ordering::Relaxed) {
                for h in hosts {
                    let out = fleet.sh(h, "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f 2>/dev/null; echo; done");
                    seen.push_str(&String::from_utf8_lossy(&out.stdout));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        });
        let result = f();
        done.store(true, Ordering::Relaxed);
        (sampler.join().unwrap(), result)
    })
}

#[test]
fn rollback_restore_db_undoes_a_destructive_migration() {
    let (pg, fleet) = start(2);
    let hosts = ["h1", "h2"];
    let sections = postgres_sections(7);
    let inv = inventory(&fleet, &hosts, &app(fleet.dir(), "v1", ADD_NOTE), &sections);
    let v1 = deploy(&fleet, &pg, &inv);
    assert_eq!(db_state(&pg), "1,2,3 | id,name,note | no audit");
    let inv = inventory(
        &fleet,
        &hosts,
        &app(fleet.dir(), "v2", DESTRUCTIVE),
        &sections,
    );
    let v2 = deploy(&fleet, &pg, &inv);
    assert_eq!(db_state(&pg), "1 | id,name | audit");
    // A manual backup after v2 is newer, but it was not taken for v2: not the one to restore.
    pg.psql_ok("shop", "INSERT INTO items VALUES (99, 'after v2')");
    let (code, _, stderr) = shipit(&fleet, &pg, &["backup", "test"], &inv);
    assert_eq!(code, 0, "{stderr}");
    let list = backups(&fleet, &pg, &inv);
    assert_eq!(list[0]["taken_for"], "manual", "{list:#?}");
    let for_v2 = taken_for(&list, &v2).clone();
    assert!(
        name(&for_v2).starts_with(&format!("shop-{v2}-")),
        "{for_v2}"
    );

    let (code, report, stderr) = json(
        &fleet,
        &pg,
        &["rollback", "test", "--restore-db", "--yes"],
        &inv,
    );
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    assert_eq!(report["action"], "rollback", "{report:#}");
    assert_eq!(report["release"], v1.as_str(), "{report:#}");
    assert_eq!(report["exit_code"], 0, "{report:#}");
    assert_eq!(report["hosts"].as_array().unwrap().len(), 2, "{report:#}");
    let restored = &report["restored"];
    assert_eq!(restored["host"], "h1", "{report:#}");
    assert_eq!(restored["backup"], name(&for_v2), "{report:#}");
    assert_eq!(restored["sha256"], for_v2["sha256"], "{report:#}");
    assert_eq!(restored["live_release"], v1.as_str(), "{report:#}");
    for h in hosts {
        assert_eq!(current(&fleet, h), v1, "{h}");
        assert_eq!(fleet.sh_ok(h, "cat /opt/shop/current/VERSION"), "v1");
    }
    // The database as v2's migration found it: the rows, the column and its data back, the
    // table v2 created gone, the row written after the backup gone with it.
    assert_eq!(db_state(&pg), "1,2,3 | id,name,note | no audit");
    assert_eq!(
        pg.psql_ok(
            "shop",
            "SELECT string_agg(note, ',' ORDER BY id) FROM items"
        ),
        "n1,n2,n3"
    );
    assert_eq!(
        pg.psql_ok("shop", "SELECT count(*) FROM migration_runs"),
        "1"
    );
    let (entry, _) = history(&fleet, &pg.url("shop"), &inv);
    assert_eq!(entry["action"], "rollback", "{entry:#}");
    assert_eq!(entry["restored"], name(&for_v2), "{entry:#}");
    assert_unlocked(&fleet, &hosts);
}

#[test]
fn rollback_restore_db_without_a_backup_for_the_release_changes_nothing() {
    let (pg, fleet) = start(1);
    let inv = inventory(
        &fleet,
        &["h1"],
        &app(fleet.dir(), "v1", ADD_NOTE),
        &postgres_sections(7),
    );
    let v1 = deploy(&fleet, &pg, &inv);
    // v2 is deployed by an inventory without `[backup]`: no backup is taken for it (v1's is
    // there, but restoring it would not undo v2's migration alone).
    let v2_app = app(fleet.dir(), "v2", DESTRUCTIVE);
    let no_backup = postgres_sections(7).replace(
        &format!("[backup]\nkind = \"postgres\"\ndir = \"{DIR}\"\nkeep = 7\n"),
        "",
    );
    assert!(!no_backup.contains("[backup]"), "{no_backup}");
    let inv = inventory(&fleet, &["h1"], &v2_app, &no_backup);
    let v2 = deploy(&fleet, &pg, &inv);
    assert_eq!(db_state(&pg), "1 | id,name | audit");
    let inv = inventory(&fleet, &["h1"], &v2_app, &postgres_sections(7));
    let list = backups(&fleet, &pg, &inv);
    assert_eq!(taken_for(&list, &v1)["taken_for"], v1.as_str());
    assert!(list.iter().all(|b| b["taken_for"] != v2.as_str()));

    // What a person reads, then the JSON report.
    let (code, stdout, stderr) = shipit(
        &fleet,
        &pg,
        &[
            "rollback",
            "test",
            "--restore-db",
            "--yes",
            "--progress",
            "never",
        ],
        &inv,
    );
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stderr.contains("shipit restore"), "{stderr}");
    let (code, report, stderr) = json(
        &fleet,
        &pg,
        &["rollback", "test", "--restore-db", "--yes"],
        &inv,
    );
    assert_eq!(code, 1, "{stderr}\n{report:#}");
    assert_message(&report, &stderr, "shipit restore");
    assert_eq!(current(&fleet, "h1"), v2);
    assert_eq!(db_state(&pg), "1 | id,name | audit");
    assert_unlocked(&fleet, &["h1"]);
}

#[test]
fn restore_named_backup_keeps_the_release() {
    let (pg, fleet) = start(2);
    let hosts = ["h1", "h2"];
    let sections = postgres_sections(7);
    let mut ids = Vec::new();
    for (v, sql) in [
        ("v1", ADD_NOTE),
        ("v2", "INSERT INTO items VALUES (4, 'd', 'n4');"),
        ("v3", "INSERT INTO items VALUES (5, 'e', 'n5');"),
    ] {
        let inv = inventory(&fleet, &hosts, &app(fleet.dir(), v, sql), &sections);
        ids.push(deploy(&fleet, &pg, &inv));
    }
    let inv = fleet.dir().join("inv.toml");
    let (v1, v3) = (&ids[0], &ids[2]);
    assert_eq!(db_state(&pg), "1,2,3,4,5 | id,name,note | no audit");
    let list = backups(&fleet, &pg, &inv);
    let before_v1 = taken_for(&list, v1).clone();
    let before_v2 = taken_for(&list, &ids[1]).clone();

    // The backup taken before v2's migration: v1's data; `current` stays v3.
    let (code, report, stderr) = json(
        &fleet,
        &pg,
        &["restore", "test", name(&before_v2), "--yes"],
        &inv,
    );
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    assert_eq!(report["action"], "restore", "{report:#}");
    assert_eq!(report["exit_code"], 0, "{report:#}");
    assert!(report["hosts"].is_array(), "{report:#}");
    assert_eq!(report["restored"]["host"], "h1", "{report:#}");
    assert_eq!(report["restored"]["backup"], name(&before_v2), "{report:#}");
    assert_eq!(
        report["restored"]["sha256"], before_v2["sha256"],
        "{report:#}"
    );
    assert_eq!(
        report["restored"]["live_release"],
        v1.as_str(),
        "{report:#}"
    );
    for h in hosts {
        assert_eq!(&current(&fleet, h), v3, "{h} was switched");
    }
    assert_eq!(db_state(&pg), "1,2,3 | id,name,note | no audit");
    let (entry, _) = history(&fleet, &pg.url("shop"), &inv);
    assert_eq!(entry["action"], "restore", "{entry:#}");
    assert_eq!(entry["restored"], name(&before_v2), "{entry:#}");

    // With `--release`: the data before v1's migration, and every host on v1.
    let (code, report, stderr) = json(
        &fleet,
        &pg,
        &[
            "restore",
            "test",
            name(&before_v1),
            "--release",
            v1,
            "--yes",
        ],
        &inv,
    );
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    assert_eq!(report["release"], v1.as_str(), "{report:#}");
    assert_eq!(report["restored"]["backup"], name(&before_v1), "{report:#}");
    for h in hosts {
        assert_eq!(&current(&fleet, h), v1, "{h}");
    }
    assert_eq!(db_state(&pg), "1,2,3 | id,name | no audit");
    assert_unlocked(&fleet, &hosts);
}

#[test]
fn backups_json_lists_sha256_live_release_and_taken_for() {
    let (pg, fleet) = start(1);
    let sections = postgres_sections(2);
    let mut ids = Vec::new();
    let mut inv = PathBuf::new();
    for i in 0..3 {
        let v = format!("v{i}");
        inv = inventory(
            &fleet,
            &["h1"],
            &app(fleet.dir(), &v, "SELECT 1;"),
            &sections,
        );
        ids.push(deploy(&fleet, &pg, &inv));
        if i == 0 {
            // The first deploy's backup: nothing was live.
            let list = backups(&fleet, &pg, &inv);
            assert_eq!(list.len(), 1, "{list:#?}");
            assert_eq!(list[0]["taken_for"], ids[0].as_str(), "{list:#?}");
            assert!(list[0]["live_release"].is_null(), "{list:#?}");
            assert_eq!(meta(&fleet, name(&list[0]))["live"], "");
        }
    }
    let (code, _, stderr) = shipit(&fleet, &pg, &["backup", "test"], &inv);
    assert_eq!(code, 0, "{stderr}");
    let inv = inventory(
        &fleet,
        &["h1"],
        &app(fleet.dir(), "v3", "SELECT 1;"),
        &sections,
    );
    ids.push(deploy(&fleet, &pg, &inv));

    // keep = 2: the backup for v3 and the manual one, newest first.
    let list = backups(&fleet, &pg, &inv);
    assert_eq!(list.len(), 2, "{list:#?}");
    assert_eq!(list[0]["taken_for"], ids[3].as_str(), "{list:#?}");
    assert!(name(&list[0]).starts_with(&format!("shop-{}-", ids[3])));
    assert_eq!(list[1]["taken_for"], "manual", "{list:#?}");
    assert!(name(&list[1]).starts_with("shop-manual-"));
    for b in &list {
        // Both were taken while v2 was live.
        assert_eq!(b["live_release"], ids[2].as_str(), "{b:#}");
        let path = format!("{DIR}/{}", name(b));
        let sha = b["sha256"].as_str().unwrap();
        assert!(
            sha.len() == 64 && sha.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
            "{sha}"
        );
        assert_eq!(sha, sha256_on(&fleet, "h1", &path), "{b:#}");
        assert_eq!(
            b["bytes"].as_u64().unwrap().to_string(),
            fleet.sh_ok("h1", &format!("stat -c %s '{path}'")).trim()
        );
        assert!(b["time"].as_str().is_some_and(|t| !t.is_empty()), "{b:#}");
        let m = meta(&fleet, name(b));
        assert_eq!(m["sha256"], sha, "{m:?}");
        assert_eq!(m["live"], ids[2], "{m:?}");
        assert_eq!(m["for"], b["taken_for"].as_str().unwrap(), "{m:?}");
    }
    // Retention removed each old backup's sidecar with it: no orphan `.meta`.
    let files = fleet.sh_ok("h1", &format!("ls -A '{DIR}'"));
    let mut files: Vec<&str> = files.lines().collect();
    files.sort();
    let mut expect = vec![
        name(&list[0]).to_owned(),
        format!("{}.meta", name(&list[0])),
        name(&list[1]).to_owned(),
        format!("{}.meta", name(&list[1])),
    ];
    expect.sort();
    assert_eq!(files, expect);
}

#[test]
fn a_damaged_backup_is_refused_and_nothing_changes() {
    let (pg, fleet) = start(1);
    let sections = postgres_sections(7);
    let inv = inventory(
        &fleet,
        &["h1"],
        &app(fleet.dir(), "v1", ADD_NOTE),
        &sections,
    );
    let v1 = deploy(&fleet, &pg, &inv);
    let inv = inventory(
        &fleet,
        &["h1"],
        &app(fleet.dir(), "v2", DESTRUCTIVE),
        &sections,
    );
    let v2 = deploy(&fleet, &pg, &inv);
    let list = backups(&fleet, &pg, &inv);
    let (for_v1, for_v2) = (taken_for(&list, &v1).clone(), taken_for(&list, &v2).clone());
    let before = db_state(&pg);
    assert_eq!(before, "1 | id,name | audit");

    // One byte changed (to another value than it had).
    let path = format!("{DIR}/{}", name(&for_v2));
    fleet.sh_ok(
        "h1",
        &format!(
            "b=$(dd if='{path}' bs=1 skip=100 count=1 2>/dev/null | od -An -tx1 | tr -d ' \\n'); \
             if [ \"$b\" = 00 ]; then printf '\\001'; else printf '\\000'; fi \
             | dd of='{path}' bs=1 seek=100 conv=notrunc 2>/dev/null"
        ),
    );
    assert_ne!(
        sha256_on(&fleet, "h1", &path),
        for_v2["sha256"].as_str().unwrap()
    );
    // What a person reads, then the JSON reports.
    let (code, stdout, stderr) = shipit(
        &fleet,
        &pg,
        &[
            "restore",
            "test",
            name(&for_v2),
            "--yes",
            "--progress",
            "never",
        ],
        &inv,
    );
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stderr.contains("sha256"), "{stderr}");
    assert_eq!(db_state(&pg), before);
    // The drill refuses it as well.
    let (code, report, stderr) = json(
        &fleet,
        &pg,
        &[
            "backup",
            "test",
            "--verify-restore",
            "--backup",
            name(&for_v2),
        ],
        &inv,
    );
    assert_eq!(code, 1, "{stderr}\n{report:#}");
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("sha256")),
        "{report:#}"
    );
    let (code, report, stderr) = json(
        &fleet,
        &pg,
        &["rollback", "test", "--restore-db", "--yes"],
        &inv,
    );
    assert_eq!(code, 1, "{stderr}\n{report:#}");
    assert_message(&report, &stderr, "sha256");
    assert_eq!(current(&fleet, "h1"), v2);
    assert_eq!(db_state(&pg), before);
    let (code, report, stderr) = json(
        &fleet,
        &pg,
        &["restore", "test", name(&for_v2), "--yes"],
        &inv,
    );
    assert_eq!(code, 1, "{stderr}\n{report:#}");
    assert_message(&report, &stderr, "sha256");
    assert_eq!(current(&fleet, "h1"), v2);
    assert_eq!(db_state(&pg), before);

    // Truncated: refused too, and `--release` switches nothing either.
    let path = format!("{DIR}/{}", name(&for_v1));
    fleet.sh_ok("h1", &format!("truncate -s 200 '{path}'"));
    let (code, report, stderr) = json(
        &fleet,
        &pg,
        &["restore", "test", name(&for_v1), "--release", &v1, "--yes"],
        &inv,
    );
    assert_eq!(code, 1, "{stderr}\n{report:#}");
    assert_message(&report, &stderr, "sha256");
    assert_eq!(current(&fleet, "h1"), v2);
    assert_eq!(db_state(&pg), before);
    assert_unlocked(&fleet, &["h1"]);
    let (entry, _) = history(&fleet, &pg.url("shop"), &inv);
    assert!(entry["restored"].is_null(), "{entry:#}");
}

#[test]
fn the_restore_drill_reports_tables_and_rows_and_fails_when_empty() {
    let (pg, fleet) = start(1);
    let inv = inventory(
        &fleet,
        &["h1"],
        &app(fleet.dir(), "v1", ADD_NOTE),
        &postgres_sections(7),
    );
    let v1 = deploy(&fleet, &pg, &inv);
    // The live database differs from every backup: a drill must not read it.
    pg.psql_ok("shop", "INSERT INTO items VALUES (4, 'd', 'n4')");
    let (code, _, stderr) = shipit(&fleet, &pg, &["backup", "test"], &inv);
    assert_eq!(code, 0, "{stderr}");
    pg.psql_ok("shop", "INSERT INTO items VALUES (5, 'e', 'n5')");
    let list = backups(&fleet, &pg, &inv);
    let (manual, before_v1) = (list[0].clone(), taken_for(&list, &v1).clone());
    assert_eq!(manual["taken_for"], "manual");

    let drill = |args: &[&str]| {
        let mut all = vec!["backup", "test", "--verify-restore"];
        all.extend_from_slice(args);
        let (code, report, stderr) = json(&fleet, &pg, &all, &inv);
        assert!(!stderr.contains(PASSWORD) && !report.to_string().contains(PASSWORD));
        let scratch = report["drill"]["database"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert_eq!(
            drill_databases(&pg, &scratch),
            "",
            "the scratch database was dropped"
        );
        (code, report, stderr)
    };
    let rows_of = |report: &Value, table: &str| {
        report["drill"]["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == table)
            .unwrap_or_else(|| panic!("no {table}: {report:#}"))["rows"]
            .as_u64()
            .unwrap()
    };

    // The newest backup: 4 items and one migration run.
    let (code, report, stderr) = drill(&[]);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    assert_eq!(report["stage"], "test", "{report:#}");
    assert_eq!(report["host"], "h1", "{report:#}");
    assert!(report["backup"].is_null(), "no backup is made: {report:#}");
    assert!(report["error"].is_null(), "{report:#}");
    assert_eq!(report["drill"]["backup"], name(&manual), "{report:#}");
    let scratch = report["drill"]["database"].as_str().unwrap();
    assert!(
        scratch != "shop" && scratch.contains("shipit_drill"),
        "{report:#}"
    );
    assert_eq!(rows_of(&report, "public.items"), 4);
    assert_eq!(rows_of(&report, "public.migration_runs"), 1);
    assert_eq!(report["drill"]["rows"], 5, "{report:#}");
    let sum: u64 = report["drill"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, 5, "{report:#}");
    assert_eq!(
        pg.psql_ok("shop", "SELECT count(*) FROM items"),
        "5",
        "the live database is untouched"
    );

    // A named one: before v1's migration, 3 items and no run.
    let (code, report, stderr) = drill(&["--backup", name(&before_v1)]);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    assert_eq!(report["drill"]["backup"], name(&before_v1), "{report:#}");
    assert_eq!(rows_of(&report, "public.items"), 3);
    assert_eq!(report["drill"]["rows"], 3, "{report:#}");

    // Tables but no rows in total, then no table at all: exit 1 with an error.
    for sql in [
        "TRUNCATE items, migration_runs",
        "DROP TABLE items, migration_runs",
    ] {
        pg.psql_ok("shop", sql);
        let (code, _, stderr) = shipit(&fleet, &pg, &["backup", "test"], &inv);
        assert_eq!(code, 0, "{sql}: {stderr}");
        let (code, report, stderr) = drill(&[]);
        assert_eq!(code, 1, "{sql}: {stderr}\n{report:#}");
        assert!(
            report["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{sql}: {report:#}"
        );
    }
}

#[test]
fn restore_never_shows_the_password_in_argv() {
    let (pg, fleet) = start(2);
    // Enough data that pg_restore runs long enough for the sampler to see it.
    pg.psql_ok(
        "shop",
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS pad FROM generate_series(1, 300000) g; ALTER TABLE big ADD PRIMARY KEY (id);",
    );
    let hosts = ["h1", "h2"];
    let sections = postgres_sections(7);
    let inv = inventory(
        &fleet,
        &hosts,
        &app(fleet.dir(), "v1", "SELECT 1;"),
        &sections,
    );
    let v1 = deploy(&fleet, &pg, &inv);
    let inv = inventory(&fleet, &hosts, &app(fleet.dir(), "v2", ADD_NOTE), &sections);
    deploy(&fleet, &pg, &inv);
    let before_v1 = name(taken_for(&backups(&fleet, &pg, &inv), &v1)).to_owned();

    let (argv, outputs) = sampling(&fleet, &hosts, || {
        [
            shipit(
                &fleet,
                &pg,
                &["rollback", "test", "--restore-db", "--yes", "--json"],
                &inv,
            ),
            shipit(
                &fleet,
                &pg,
                &[
                    "restore",
                    "test",
                    &before_v1,
                    "--yes",
                    "--progress",
                    "never",
                    "-v",
                ],
                &inv,
            ),
            shipit(
                &fleet,
                &pg,
                &["backup", "test", "--verify-restore", "-v"],
                &inv,
            ),
        ]
    });
    for (code, stdout, stderr) in &outputs {
        assert_eq!(*code, 0, "{stdout}\n{stderr}");
    }
    assert_eq!(current(&fleet, "h1"), v1);
    assert_eq!(pg.psql_ok("shop", "SELECT count(*) FROM big"), "300000");
    let ran_pg_restore = argv.lines().any(|l| {
        l.split(' ')
            .take(2)
            .any(|w| w.rsplit('/').next() == Some("pg_restore"))
    });
    assert!(ran_pg_restore, "the sampler saw pg_restore run on a host");
    let history = fleet.sh_ok("h1", "cat /opt/shop/.shipit/history.jsonl");
    let mut texts = vec![("argv", argv), ("history", history)];
    for (i, (_, stdout, stderr)) in outputs.into_iter().enumerate() {
        texts.push(("stdout", format!("run {i}: {stdout}")));
        texts.push(("stderr", format!("run {i}: {stderr}")));
    }
    for (what, text) in &texts {
        assert!(
            !text.contains(PASSWORD),
            "the database password appears in {what}"
        );
    }
}

#[test]
fn without_yes_and_no_terminal_nothing_is_restored() {
    let (pg, fleet) = start(1);
    let sections = postgres_sections(7);
    let inv = inventory(
        &fleet,
        &["h1"],
        &app(fleet.dir(), "v1", ADD_NOTE),
        &sections,
    );
    let v1 = deploy(&fleet, &pg, &inv);
    let inv = inventory(
        &fleet,
        &["h1"],
        &app(fleet.dir(), "v2", DESTRUCTIVE),
        &sections,
    );
    let v2 = deploy(&fleet, &pg, &inv);
    let for_v1 = name(taken_for(&backups(&fleet, &pg, &inv), &v1)).to_owned();
    let (_, entries) = history(&fleet, &pg.url("shop"), &inv);
    let before = db_state(&pg);

    for args in [
        &["rollback", "test", "--restore-db", "--json"][..],
        &["rollback", "test", "--restore-db"][..],
        &["restore", "test", &for_v1][..],
        &["restore", "test", &for_v1, "--release", &v1, "--json"][..],
    ] {
        let (code, stdout, stderr) = shipit(&fleet, &pg, args, &inv);
        assert_eq!(code, 2, "{args:?}\n{stdout}\n{stderr}");
        assert!(stderr.contains("--yes"), "{args:?}: {stderr}");
        assert_eq!(current(&fleet, "h1"), v2, "{args:?}");
        assert_eq!(db_state(&pg), before, "{args:?}");
    }
    assert_eq!(history(&fleet, &pg.url("shop"), &inv).1, entries);
    assert_unlocked(&fleet, &["h1"]);
}

/// Writes the "database" file: `schema <version>` and one `row <version>` line per version
/// so far (v1: 2 lines, v2: 3 lines).
const FILE_MIGRATE: &str = r#"#!/bin/sh
set -e
v=$(cat VERSION)
case $v in
  v1) printf 'schema v1\nrow v1\n' > /srv/shop-db.txt ;;
  *) { printf 'schema %s\n' "$v"; grep '^row' /srv/shop-db.txt; printf 'row %s\n' "$v"; } > /srv/shop-db.tmp
     mv /srv/shop-db.tmp /srv/shop-db.txt ;;
esac
"#;

fn file_app(dir: &Path, version: &str) -> PathBuf {
    let app = dir.join(format!("file-{version}"));
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("migrate.sh"), FILE_MIGRATE).unwrap();
    std::fs::write(app.join("VERSION"), version).unwrap();
    chmod_x(&app.join("migrate.sh"));
    app
}

#[test]
fn command_kind_restores_through_stdin() {
    let fleet = Fleet::start(1);
    fleet.sh_ok("h1", "mkdir -p /srv && echo initial > /srv/shop-db.txt");
    let sections = format!(
        r#"[backup]
kind = "command"
command = "cat /srv/shop-db.txt"
restore = "cat > /srv/shop-db.txt"
drill = "echo lines $(wc -l)"
dir = "{DIR}"
keep = 7

[migrate]
command = "./migrate.sh"
"#
    );
    let db = || fleet.sh_ok("h1", "cat /srv/shop-db.txt");
    let mut ids = Vec::new();
    for v in ["v1", "v2"] {
        let inv = inventory(&fleet, &["h1"], &file_app(fleet.dir(), v), &sections);
        ids.push(deploy_with(&fleet, "", &inv));
    }
    let inv = fleet.dir().join("inv.toml");
    let (v1, v2) = (&ids[0], &ids[1]);
    assert_eq!(db(), "schema v2\nrow v1\nrow v2\n");
    let list = backups_with(&fleet, "", &inv);
    let (for_v1, for_v2) = (taken_for(&list, v1).clone(), taken_for(&list, v2).clone());
    assert!(name(&for_v2).ends_with(".bak"), "{for_v2}");
    for b in [&for_v1, &for_v2] {
        let path = format!("{DIR}/{}", name(b));
        assert_eq!(b["sha256"], sha256_on(&fleet, "h1", &path).as_str());
        assert!(succeeds(&fleet, "h1", &format!("test -f '{path}.meta'")));
    }

    // The drill command reads the newest backup (taken before v2's migration: 2 lines).
    let (code, report, stderr) =
        json_with(&fleet, "", &["backup", "test", "--verify-restore"], &inv);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    assert_eq!(report["drill"]["backup"], name(&for_v2), "{report:#}");
    assert_eq!(report["drill"]["tables"][0]["name"], "lines", "{report:#}");
    assert_eq!(report["drill"]["tables"][0]["rows"], 2, "{report:#}");
    assert_eq!(report["drill"]["rows"], 2, "{report:#}");
    assert_eq!(
        db(),
        "schema v2\nrow v1\nrow v2\n",
        "a drill restores nothing"
    );

    let (code, report, stderr) = json_with(
        &fleet,
        "",
        &["rollback", "test", "--restore-db", "--yes"],
        &inv,
    );
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    assert_eq!(report["restored"]["backup"], name(&for_v2), "{report:#}");
    assert_eq!(report["restored"]["sha256"], for_v2["sha256"], "{report:#}");
    assert_eq!(&current(&fleet, "h1"), v1);
    assert_eq!(db(), "schema v1\nrow v1\n");

    let (code, report, stderr) = json_with(
        &fleet,
        "",
        &["restore", "test", name(&for_v1), "--yes"],
        &inv,
    );
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    assert_eq!(report["action"], "restore", "{report:#}");
    assert_eq!(&current(&fleet, "h1"), v1);
    assert_eq!(db(), "initial\n");
    let (entry, _) = history(&fleet, "", &inv);
    assert_eq!(entry["restored"], name(&for_v1), "{entry:#}");
}

#[test]
fn a_name_that_is_not_a_listed_backup_is_refused() {
    let (pg, fleet) = start(1);
    let sections = postgres_sections(7);
    let inv = inventory(
        &fleet,
        &["h1"],
        &app(fleet.dir(), "v1", ADD_NOTE),
        &sections,
    );
    deploy(&fleet, &pg, &inv);
    let inv = inventory(
        &fleet,
        &["h1"],
        &app(fleet.dir(), "v2", DESTRUCTIVE),
        &sections,
    );
    let v2 = deploy(&fleet, &pg, &inv);
    let real = name(&backups(&fleet, &pg, &inv)[0]).to_owned();
    // Files that are not this app's listed backups, each a valid dump of other data.
    fleet.sh_ok(
        "h1",
        &format!(
            "cp '{DIR}/{real}' /tmp/elsewhere.dump && cp '{DIR}/{real}' '{DIR}/shop-api-{real}' \
             && cp '{DIR}/{real}' '{DIR}/notes.dump' && ln -s '{DIR}/{real}' '{DIR}/shop-manual-20260101T000000Z.dump'"
        ),
    );
    let before = db_state(&pg);
    for bad in [
        "../../../tmp/elsewhere.dump",
        "/tmp/elsewhere.dump",
        "notes.dump",
        &format!("shop-api-{real}"),
        "shop-manual-20260101T000000Z.dump",
        "shop-manual-20990101T000000Z.dump",
    ] {
        let (code, stdout, stderr) = shipit(&fleet, &pg, &["restore", "test", bad, "--yes"], &inv);
        assert!(code == 1 || code == 2, "{bad}: {code}\n{stdout}\n{stderr}");
        assert_eq!(db_state(&pg), before, "{bad} was restored");
        assert_eq!(current(&fleet, "h1"), v2, "{bad}");
    }
    assert_unlocked(&fleet, &["h1"]);
}

#[test]
fn nothing_is_restored_when_the_switch_is_impossible() {
    let (pg, fleet) = start(2);
    let hosts = ["h1", "h2"];
    let sections = postgres_sections(7);
    let inv = inventory(&fleet, &hosts, &app(fleet.dir(), "v1", ADD_NOTE), &sections);
    let v1 = deploy(&fleet, &pg, &inv);
    let inv = inventory(
        &fleet,
        &hosts,
        &app(fleet.dir(), "v2", DESTRUCTIVE),
        &sections,
    );
    let v2 = deploy(&fleet, &pg, &inv);
    let for_v1 = name(taken_for(&backups(&fleet, &pg, &inv), &v1)).to_owned();
    let before = db_state(&pg);
    // The release to go back to is gone from h2: the rollback is refused, and so is the
    // restore that goes with it.
    fleet.sh_ok("h2", &format!("rm -rf /opt/shop/releases/{v1}"));
    let (code, report, stderr) = json(
        &fleet,
        &pg,
        &["rollback", "test", "--restore-db", "--yes"],
        &inv,
    );
    assert_eq!(code, 1, "{stderr}\n{report:#}");
    assert!(report["restored"].is_null(), "{report:#}");
    assert_eq!(db_state(&pg), before);
    let (code, report, stderr) = json(
        &fleet,
        &pg,
        &["restore", "test", &for_v1, "--release", &v1, "--yes"],
        &inv,
    );
    assert_eq!(code, 1, "{stderr}\n{report:#}");
    assert_eq!(db_state(&pg), before);
    // A release that exists nowhere.
    let (code, stdout, stderr) = shipit(
        &fleet,
        &pg,
        &[
            "restore",
            "test",
            &for_v1,
            "--release",
            "20990101T000000Z-0123456789ab",
            "--yes",
        ],
        &inv,
    );
    assert!(code == 1 || code == 2, "{code}\n{stdout}\n{stderr}");
    assert_eq!(db_state(&pg), before);
    for h in hosts {
        assert_eq!(current(&fleet, h), v2, "{h}");
    }
    assert_unlocked(&fleet, &hosts);
}

#[test]
fn a_locked_stage_is_not_restored() {
    let (pg, fleet) = start(1);
    let sections = postgres_sections(7);
    let inv = inventory(
        &fleet,
        &["h1"],
        &app(fleet.dir(), "v1", ADD_NOTE),
        &sections,
    );
    let v1 = deploy(&fleet, &pg, &inv);
    let inv = inventory(
        &fleet,
        &["h1"],
        &app(fleet.dir(), "v2", DESTRUCTIVE),
        &sections,
    );
    let v2 = deploy(&fleet, &pg, &inv);
    let for_v1 = name(taken_for(&backups(&fleet, &pg, &inv), &v1)).to_owned();
    let before = db_state(&pg);
    // Another run holds the deploy lock.
    fleet.sh_ok("h1", "mkdir -p /opt/shop/.shipit/lock");
    for args in [
        &["rollback", "test", "--restore-db", "--yes"][..],
        &["restore", "test", &for_v1, "--yes"][..],
    ] {
        let (code, stdout, stderr) = shipit(&fleet, &pg, args, &inv);
        assert_eq!(code, 5, "{args:?}\n{stdout}\n{stderr}");
        assert_eq!(db_state(&pg), before, "{args:?}");
        assert_eq!(current(&fleet, "h1"), v2, "{args:?}");
        assert!(
            succeeds(&fleet, "h1", "test -d /opt/shop/.shipit/lock"),
            "the other run's lock was kept"
        );
    }
}
