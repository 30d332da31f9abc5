//! Restoring a database backup on the migrate host: checking the file against the record
//! made with it, the restore itself, the restore drill into a scratch database, and the
//! app's units stopped meanwhile on every host.
//!
//! A backup is named by the caller as `shipit backups` lists it; the scripts accept only
//! this app's own backup names ([`OWN_BACKUPS`](super::task::OWN_BACKUPS)), as a regular
//! file directly in the backup directory: never a path, never a symlink.

use super::task::{self, OWN_BACKUPS, SHA256, TaskVars};
use crate::shell::Cmd;

/// Which backup, where, and what the scripts may call it.
pub struct BackupRef<'a> {
    pub dir: &'a str,
    pub name: &'a str,
    pub prefix: &'a str,
    pub suffix: &'a str,
}

impl BackupRef<'_> {
    fn assigns(&self) -> [Cmd; 5] {
        [
            Cmd::assign("bdir", self.dir),
            Cmd::assign("name", self.name),
            Cmd::assign("prefix", self.prefix),
            Cmd::assign("suffix", self.suffix),
            Cmd::new(OWN_BACKUPS),
        ]
    }
}

/// Finds the backup and checks it: one of this app's names, a regular file, its sha256 the
/// one its `.meta` records (else [`BACKUP_DAMAGED`](super::exit::BACKUP_DAMAGED)), and the
/// `verify` command (if any) accepting it. On success prints `sha256 <hex>` and the record's
/// lines (`live <id>`, `for <label>`); a backup with no record prints `unrecorded`.
const CHECK: &str = r#"
case $name in */*|.*) echo "\`$name\` is not a backup name (a file name as \`shipit backups\` lists it)" >&2; exit 115 ;; esac
own "$name" || { echo "\`$name\` is not one of this app's backup names (\`shipit backups\` lists them)" >&2; exit 115; }
file="$bdir/$name"
if [ -L "$file" ] || [ ! -f "$file" ]; then echo "no backup \`$name\` in \`$bdir\`" >&2; exit 115; fi
actual=$(sha256 < "$file") || exit 1
meta="$bdir/$name.meta"
if [ -f "$meta" ] && [ ! -L "$meta" ]; then
  recorded=$(sed -n 's/^sha256 \([0-9a-f]\{64\}\)$/\1/p' "$meta" | head -n 1)
  if [ -z "$recorded" ]; then
    printf 'its record `%s` holds no sha256 to check it against (damaged?)\n' "$meta" >&2
    exit 114
  fi
  if [ "$recorded" != "$actual" ]; then
    printf 'the sha256 of `%s` is %s, not the %s recorded when it was made: the file is damaged or was changed\n' "$file" "$actual" "$recorded" >&2
    exit 114
  fi
  echo "sha256 $actual"
  grep -E '^(live|for) ' "$meta" | head -n 2
else
  echo "sha256 $actual"
  echo unrecorded
fi
if [ -n "$verify" ]; then
  if ! report=$(sh -c "$verify \"\$1\"" verify "$file" 2>&1 >/dev/null); then
    printf 'verifying `%s` failed: %s\n' "$file" "$report" >&2; exit 114
  fi
fi"#;

/// Checks a backup without changing anything (see [`CHECK`]), in `cwd` with the env file
/// loaded, as the backup ran.
pub fn check(
    cwd: &str,
    env_path: Option<&str>,
    vars: &TaskVars,
    backup: &BackupRef<'_>,
    verify: Option<&str>,
) -> Cmd {
    let mut steps = task::prelude(cwd, env_path, vars);
    steps.extend(backup.assigns());
    steps.extend([
        Cmd::assign("verify", verify.unwrap_or("")),
        Cmd::new(SHA256),
        Cmd::new(CHECK),
        Cmd::new("exit 0"),
    ]);
    Cmd::seq(steps)
}

/// The restore of `kind = "postgres"`, in one transaction: everything of the database that
/// is not PostgreSQL's own or an extension's (tables, views, sequences, types, routines a
/// later migration added) is dropped, then the dump is restored (`pg_restore --clean
/// --if-exists --no-owner`) — the database ends as the dump has it, or, if anything fails,
/// as it was. The connection comes from the `PG*` variables.
const POSTGRES_RESTORE: &str = r#"
if [ -z "${PGDATABASE:-}" ]; then echo "\`DATABASE_URL\` names no database to restore into" >&2; exit 117; fi
drops=$(psql -X -q -A -t -v ON_ERROR_STOP=1 <<'SQL'
SELECT format('DROP %s IF EXISTS %I.%I CASCADE;',
  CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
    WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
  n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype IN ('e', 'i'))
UNION ALL
SELECT format('DROP TYPE IF EXISTS %I.%I CASCADE;', n.nspname, t.typname)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE t.typtype IN ('e', 'd', 'r') AND t.typelem = 0
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass
                  AND d.objid = t.oid AND d.deptype = 'e')
UNION ALL
SELECT format('DROP ROUTINE IF EXISTS %I.%I(%s) CASCADE;', n.nspname, p.proname,
  pg_get_function_identity_arguments(p.oid))
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                  AND d.objid = p.oid AND d.deptype = 'e');
SQL
) || { echo "reading what the database holds failed" >&2; exit 117; }
# One transaction: ours opens before the drops; pg_restore's own (--single-transaction)
# BEGIN then only warns (silenced), and its COMMIT, written after the whole dump, commits
# all. A dump that fails half-way writes no COMMIT: the session ends, everything rolls back.
okflag=$(mktemp) || exit 1
trap 'rm -f -- "$okflag"' EXIT
{ echo 'SET client_min_messages = error;'; echo 'BEGIN;'; printf '%s\n' "$drops"
  pg_restore --clean --if-exists --no-owner --single-transaction -f - < "$file" && echo ok > "$okflag"; } \
  | psql -X -q -v ON_ERROR_STOP=1 -o /dev/null
status=$?
if [ "$status" != 0 ] || [ ! -s "$okflag" ]; then
  echo "the restore failed; it ran in one transaction, so the database is as it was" >&2; exit 117
fi"#;

/// How a backup is restored.
pub enum Restorer<'a> {
    /// [`POSTGRES_RESTORE`].
    Postgres,
    /// The user's `backup.restore`, the backup on its stdin.
    Command(&'a str),
}

/// What a restore and the drill start with: the prelude (in `cwd`, env file loaded), the
/// `PG*` variables read from stdin, then [`CHECK`] of the backup (it may have changed since
/// it was checked before anything stopped).
fn checked(
    cwd: &str,
    env_path: Option<&str>,
    vars: &TaskVars,
    backup: &BackupRef<'_>,
    verify: Option<&str>,
) -> Vec<Cmd> {
    let mut steps = task::prelude(cwd, env_path, vars);
    steps.extend(backup.assigns());
    steps.extend([
        Cmd::assign("verify", verify.unwrap_or("")),
        Cmd::new(SHA256),
        Cmd::new(
            r#"
extra=$(cat) || exit 1
if [ -n "$extra" ]; then set -a; eval "$extra" || exit 1; set +a; fi"#,
        ),
        Cmd::new(CHECK),
    ]);
    steps
}

/// Checks the backup again (it may have changed since it was checked before the units
/// stopped), then restores it. `PG*` variables come first on stdin in env-file syntax, as
/// for a backup; for a command the backup is its stdin.
pub fn restore(
    cwd: &str,
    env_path: Option<&str>,
    vars: &TaskVars,
    backup: &BackupRef<'_>,
    verify: Option<&str>,
    how: &Restorer<'_>,
) -> Cmd {
    let mut steps = checked(cwd, env_path, vars, backup, verify);
    match how {
        Restorer::Postgres => steps.push(Cmd::new(POSTGRES_RESTORE)),
        Restorer::Command(command) => {
            steps.push(Cmd::assign("cmd", command));
            steps.push(Cmd::new(
                r#"
if command -v bash >/dev/null 2>&1; then bash -o pipefail -c "$cmd" < "$file"
else sh -c "set -o pipefail 2>/dev/null; $cmd" < "$file"; fi
status=$?
if [ "$status" != 0 ]; then echo "the restore command failed with exit status $status" >&2; exit 117; fi"#,
            ));
        }
    }
    steps.push(Cmd::new("echo restored; exit 0"));
    Cmd::seq(steps)
}

/// The restore drill of `kind = "postgres"`: a scratch database (`shipit_drill_<time>_<pid>`)
/// is created, the backup restored into it, every table's rows counted, and the database
/// dropped whatever happens. Prints `database <name>` then `table <schema.name> <rows>` per
/// table.
const POSTGRES_DRILL: &str = r#"
scratch="shipit_drill_$(date -u +%Y%m%d%H%M%S)_$$"
createdb -- "$scratch" || { echo "creating the scratch database \`$scratch\` failed: the database user needs CREATEDB for the drill" >&2; exit 117; }
trap 'dropdb --if-exists -- "$scratch" || echo "dropping the scratch database \`$scratch\` failed: drop it by hand" >&2' EXIT
trap 'exit 1' HUP INT TERM
echo "database $scratch"
pg_restore --no-owner --exit-on-error --single-transaction -d "$scratch" < "$file" || {
  echo "restoring into the scratch database failed" >&2; exit 117; }
PGDATABASE=$scratch psql -X -q -A -t -F ' ' -v ON_ERROR_STOP=1 <<'SQL' | sed 's/^/table /' || exit 117
SELECT format('SELECT %L, count(*) FROM %I.%I', n.nspname || '.' || c.relname, n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_%'
ORDER BY 1 \gexec
SQL"#;

/// The restore drill: checks the backup, then restores it into a scratch database and
/// counts (see [`POSTGRES_DRILL`]); for a command, the user's `backup.drill` reads the
/// backup on stdin and prints `<table> <rows>` lines, each printed here as `table ...`.
pub fn drill(
    cwd: &str,
    env_path: Option<&str>,
    vars: &TaskVars,
    backup: &BackupRef<'_>,
    verify: Option<&str>,
    how: &Restorer<'_>,
) -> Cmd {
    let mut steps = checked(cwd, env_path, vars, backup, verify);
    match how {
        Restorer::Postgres => steps.push(Cmd::new(POSTGRES_DRILL)),
        Restorer::Command(command) => {
            steps.push(Cmd::assign("cmd", command));
            steps.push(Cmd::new(
                r#"
out=$(sh -c "$cmd" < "$file") || { echo "the drill command failed" >&2; exit 117; }
printf '%s\n' "$out" | sed -n 's/^\([^ ][^ ]*\) \([0-9][0-9]*\)$/table \1 \2/p'"#,
            ));
        }
    }
    steps.push(Cmd::new("exit 0"));
    Cmd::seq(steps)
}

/// Stops the units (concrete names: `shop.service`, `shop@3001.service`) that are active,
/// one after the other, and records which in `<deploy_to>/.shipit/stopped` for
/// [`start_stopped`]. Prints `stopped <unit>` for each.
pub fn stop_units(deploy_to: &str, units: &[String]) -> Cmd {
    let mut steps = vec![
        Cmd::assign("rec", format!("{deploy_to}/.shipit/stopped")),
        // Appended to: units an earlier restore stopped and did not start stay listed.
        Cmd::new(r#"mkdir -p -- "${rec%/*}" && touch -- "$rec" || exit 1"#),
    ];
    for unit in units {
        steps.push(Cmd::assign("unit", unit));
        steps.push(Cmd::new(
            r#"
if systemctl is-active --quiet -- "$unit"; then
  printf '%s\n' "$unit" >> "$rec" || exit 1
  systemctl stop -- "$unit" || exit 1
  echo "stopped $unit"
fi"#,
        ));
    }
    steps.push(Cmd::new("exit 0"));
    Cmd::seq(steps)
}

/// Starts again the units [`stop_units`] stopped, and forgets the record. Only `units` (the
/// inventory's) are started, each when the record lists it: the record is a file on the
/// host, and a name in it is no proof of anything.
pub fn start_stopped(deploy_to: &str, units: &[String]) -> Cmd {
    let mut steps = vec![
        Cmd::assign("rec", format!("{deploy_to}/.shipit/stopped")),
        Cmd::new(r#"[ -f "$rec" ] || exit 0; status=0"#),
    ];
    for unit in units {
        steps.push(Cmd::assign("unit", unit));
        steps.push(Cmd::new(
            r#"if grep -qxF -- "$unit" "$rec"; then systemctl start -- "$unit" || status=1; fi"#,
        ));
    }
    steps.push(Cmd::new(
        r#"[ "$status" = 0 ] && rm -f -- "$rec"
exit $status"#,
    ));
    Cmd::seq(steps)
}

/// Forgets the record of [`stop_units`] (the switch started the units of the release).
pub fn forget_stopped(deploy_to: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("rec", format!("{deploy_to}/.shipit/stopped")),
        Cmd::new(r#"rm -f -- "$rec""#),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(cmd: &Cmd, stdin: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .args(["-c", &cmd.render()])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// A backup made by the backup script, then restored by a command, then damaged.
    #[test]
    fn a_backup_restores_through_stdin_and_a_changed_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_str().unwrap();
        let bdir = format!("{base}/backups");
        std::fs::write(format!("{base}/db"), "rows 1 2 3\n").unwrap();
        let name = "shop-manual-20260101T000000Z.txt";
        let made = sh(
            &task::backup(
                base,
                None,
                &TaskVars::default(),
                "cat db",
                &task::BackupName {
                    dir: &bdir,
                    name,
                    prefix: "shop-",
                    suffix: ".txt",
                    label: "manual",
                    live: Some("r1"),
                },
                None,
                3,
            ),
            "",
        );
        assert!(made.status.success(), "{made:?}");
        std::fs::write(format!("{base}/db"), "rows changed\n").unwrap();
        let backup = BackupRef {
            dir: &bdir,
            name,
            prefix: "shop-",
            suffix: ".txt",
        };
        let vars = TaskVars::default();
        let checked = sh(&check(base, None, &vars, &backup, None), "");
        let text = String::from_utf8(checked.stdout).unwrap();
        assert!(checked.status.success(), "{text}");
        assert!(text.contains("live r1\nfor manual\n"), "{text}");
        let how = Restorer::Command("cat > db");
        let restored = sh(&restore(base, None, &vars, &backup, None, &how), "");
        assert!(restored.status.success(), "{restored:?}");
        assert_eq!(
            std::fs::read_to_string(format!("{base}/db")).unwrap(),
            "rows 1 2 3\n"
        );
        // One byte changed: refused, and the restore command never ran.
        std::fs::write(format!("{base}/db"), "current\n").unwrap();
        std::fs::write(format!("{bdir}/{name}"), "rows 1 2 4\n").unwrap();
        let refused = sh(&restore(base, None, &vars, &backup, None, &how), "");
        assert_eq!(refused.status.code(), Some(114), "{refused:?}");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("sha256"));
        assert_eq!(
            std::fs::read_to_string(format!("{base}/db")).unwrap(),
            "current\n"
        );
        // A record that lost its sha256 line is no record to trust: refused too.
        std::fs::write(format!("{bdir}/{name}.meta"), "live r1\nfor manual\n").unwrap();
        let refused = sh(&check(base, None, &vars, &backup, None), "");
        assert_eq!(refused.status.code(), Some(114), "{refused:?}");
        // No record at all (a backup made before records): checked, said so.
        std::fs::remove_file(format!("{bdir}/{name}.meta")).unwrap();
        let legacy = sh(&check(base, None, &vars, &backup, None), "");
        assert!(legacy.status.success(), "{legacy:?}");
        assert!(String::from_utf8_lossy(&legacy.stdout).contains("unrecorded"));
    }

    #[test]
    fn only_this_apps_backup_names_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_str().unwrap();
        std::fs::create_dir(format!("{base}/b")).unwrap();
        std::fs::write(format!("{base}/secret"), "x").unwrap();
        std::os::unix::fs::symlink(
            format!("{base}/secret"),
            format!("{base}/b/shop-manual-20260101T000000Z.txt"),
        )
        .unwrap();
        for name in [
            "../secret",
            "shop-api-manual-20260101T000000Z.txt",
            ".shop-manual-20260101T000000Z.txt",
            "shop-manual-20260101T000000Z.txt",
        ] {
            let backup = BackupRef {
                dir: &format!("{base}/b"),
                name,
                prefix: "shop-",
                suffix: ".txt",
            };
            let out = sh(&check(base, None, &TaskVars::default(), &backup, None), "");
            assert_eq!(out.status.code(), Some(115), "{name}: {out:?}");
        }
    }

    /// A name the host's record holds that the inventory does not is never started.
    #[test]
    fn only_the_inventorys_units_are_started_again() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_str().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let fake = bin.join("systemctl");
        std::fs::write(&fake, format!("#!/bin/sh\necho \"$*\" >> {base}/started\n")).unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(format!("{base}/.shipit")).unwrap();
        std::fs::write(
            format!("{base}/.shipit/stopped"),
            "shop.service\nevil.service\n",
        )
        .unwrap();
        let units = ["shop.service".to_owned(), "worker.service".to_owned()];
        let out = std::process::Command::new("sh")
            .args(["-c", &start_stopped(base, &units).render()])
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            std::fs::read_to_string(format!("{base}/started")).unwrap(),
            "start -- shop.service\n"
        );
        assert!(!std::path::Path::new(&format!("{base}/.shipit/stopped")).exists());
    }

    #[test]
    fn every_script_parses() {
        let backup = BackupRef {
            dir: "/b",
            name: "n",
            prefix: "p-",
            suffix: ".dump",
        };
        let vars = TaskVars::default();
        for cmd in [
            restore("/", None, &vars, &backup, None, &Restorer::Postgres),
            drill("/", None, &vars, &backup, None, &Restorer::Postgres),
            stop_units("/d", &["a.service".to_owned()]),
            start_stopped("/d", &["a.service".to_owned()]),
        ] {
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", &cmd.render()])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
    }
}
