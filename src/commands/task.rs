//! A user's command (a migration, a hook, a backup) run on the host: in a release
//! directory, with the app's env file loaded inside the remote shell, so values like
//! `$DATABASE_URL` reach the command's environment and never a command line.
//!
//! The env file loaded is the one this deploy staged ([`TaskVars::env_next`], named by the
//! run) while it exists, else the live one: a migration must see the new release's
//! configuration, and nothing ever reads what another run staged.

use crate::shell::Cmd;

/// What a user's command learns about its deploy, as environment variables.
#[derive(Clone, Debug, Default)]
pub struct TaskVars {
    /// `SHIPIT_RELEASE`, `SHIPIT_PREVIOUS` ("" on a first deploy), `SHIPIT_HOST`, ...
    pub vars: Vec<(&'static str, String)>,
    /// (project, compose file): exported as `SHIPIT_COMPOSE`, a command that runs the
    /// host's Compose with `-p`, `-f` and `--env-file` of this release.
    pub compose: Option<(String, String)>,
    /// The env file this run staged ([`next_path`](super::envfile::next_path) of its
    /// token), loaded instead of the live one while it exists (before the switch).
    pub env_next: Option<String>,
    /// `ssh.sudo`: an env file the SSH user cannot read (the app user's) is read through
    /// `sudo -n cat`, and `$SHIPIT_COMPOSE` runs Compose through `sudo -n`.
    pub sudo: bool,
}

/// Loads `$envfile` (when set and present) into the environment of the script. An env file
/// the user cannot read (0600, the app user's) is read through `sudo -n cat` when `$envsudo`
/// is set (`ssh.sudo`): its content comes on a pipe, never on a command line, and is
/// evaluated as the file would be sourced.
pub const LOAD_ENV: &str = r#"
if [ -n "$envfile" ] && [ -f "$envfile" ]; then
  if [ -r "$envfile" ] || [ -z "$envsudo" ]; then set -a; . "$envfile" || exit 1; set +a
  else
    envtext=$(sudo -n -- cat -- "$envfile") || exit 1
    set -a; eval "$envtext" || exit 1; set +a
    unset envtext
  fi
fi"#;

/// The prelude: `cd` into `dir`, load the env file, export the task's variables.
pub fn prelude(dir: &str, env_path: Option<&str>, vars: &TaskVars) -> Vec<Cmd> {
    let mut steps = vec![
        Cmd::assign("dir", dir),
        Cmd::assign("envfile", env_path.unwrap_or("")),
        Cmd::assign("envnext", vars.env_next.as_deref().unwrap_or("")),
        Cmd::assign("envsudo", if vars.sudo { "1" } else { "" }),
        Cmd::new(
            r#"
cd -- "$dir" || exit 1
if [ -n "$envnext" ] && [ -f "$envnext" ]; then envfile=$envnext; fi"#,
        ),
        Cmd::new(LOAD_ENV),
    ];
    for (name, value) in &vars.vars {
        steps.push(Cmd::assign(name, value));
        steps.push(Cmd::new("export").raw(name));
    }
    if let Some((project, file)) = &vars.compose {
        let wrapper =
            super::compose::wrapper(project, file, env_path, vars.env_next.as_deref(), vars.sudo);
        steps.push(Cmd::assign("composewrapper", wrapper.render()));
        // `$SHIPIT_COMPOSE` is expanded unquoted (`$SHIPIT_COMPOSE run --rm api ...`): its
        // words must be fixed ones, never a path of the inventory's, which may hold spaces.
        // So it names a script in a fresh root-only directory (`mktemp` makes
        // `/tmp/shipit-compose.` and letters), run by `/bin/sh` (`/tmp` may be noexec),
        // and removed when this command ends.
        steps.push(Cmd::new(
            r#"
composedir=$(mktemp -d /tmp/shipit-compose.XXXXXXXXXX) || exit 1
trap 'rm -rf -- "$composedir"' EXIT
trap 'exit 1' HUP INT TERM
printf '%s\n' "$composewrapper" > "$composedir/compose" || exit 1
SHIPIT_COMPOSE="/bin/sh $composedir/compose"
export SHIPIT_COMPOSE"#,
        ));
    }
    steps
}

/// Runs `command` (the user's shell text) in `dir` with the env file loaded.
pub fn run(dir: &str, env_path: Option<&str>, vars: &TaskVars, command: &str) -> Cmd {
    let mut steps = prelude(dir, env_path, vars);
    steps.push(Cmd::user_script(command));
    Cmd::seq(steps)
}

/// A backup: runs `command` with the env file loaded and the task's variables exported (so
/// `$SHIPIT_COMPOSE exec -T db pg_dump` works as in a migration), plus `PG*` variables read
/// from stdin in env-file syntax; stdout to `<dir>/<name>` atomically, with pipefail, verified
/// non-empty and by `verify <file>` when given, then keeps the newest `keep` of this app's
/// own backups (see [`OWN_BACKUPS`]); nothing else in `dir` is touched. A backup never
/// replaces another: a name already taken (two backups in one second) gets `-2`, `-3`, ...
/// before the suffix. Beside it, `<name>.meta` records its sha256, the release that was live
/// (`live`) and the one it was taken for (`label`: a release id, or `manual`): a restore
/// checks the file against it. Prints `backup <path> <bytes> <sha256>`.
pub fn backup(
    cwd: &str,
    env_path: Option<&str>,
    vars: &TaskVars,
    command: &str,
    file: &BackupName<'_>,
    verify: Option<&str>,
    keep: u32,
) -> Cmd {
    let mut steps = prelude(cwd, env_path, vars);
    steps.extend([
        Cmd::assign("cmd", command),
        Cmd::assign("bdir", file.dir),
        Cmd::assign("name", file.name),
        Cmd::assign("verify", verify.unwrap_or("")),
        Cmd::assign("keep", keep.to_string()),
        Cmd::assign("prefix", file.prefix),
        Cmd::assign("suffix", file.suffix),
        Cmd::assign("label", file.label),
        Cmd::assign("live", file.live.unwrap_or("")),
        Cmd::new(OWN_BACKUPS),
        Cmd::new(SHA256),
        Cmd::new(
            r#"
extra=$(cat) || exit 1
if [ -n "$extra" ]; then set -a; eval "$extra" || exit 1; set +a; fi
umask 077
mkdir -p -- "$bdir" || exit 1
# The lock is held: this app's temp file here is left by a run that died; never a backup.
# Other apps' temp files in a shared directory are theirs (their lock, not ours).
(cd -- "$bdir" && for f in ."$prefix"*"$suffix".partial ."$prefix"*"$suffix".meta.partial; do
  if own "${f#.}" "$suffix.partial" || own "${f#.}" "$suffix.meta.partial"; then rm -f -- "$f" || exit 1; fi
done) || exit 1
tmp="$bdir/.$name.partial"
# pipefail: a failing pg_dump piped into gzip must fail the backup, not leave a stub.
if command -v bash >/dev/null 2>&1; then
  bash -o pipefail -c "$cmd" > "$tmp"
else
  sh -c "set -o pipefail 2>/dev/null; $cmd" > "$tmp"
fi
status=$?
if [ "$status" != 0 ]; then rm -f -- "$tmp"; echo "the backup command failed with exit status $status" >&2; exit 87; fi
if [ ! -s "$tmp" ]; then rm -f -- "$tmp"; echo "the backup command exited 0 but wrote nothing" >&2; exit 88; fi
if [ -n "$verify" ]; then
  if ! report=$(sh -c "$verify \"\$1\"" verify "$tmp" 2>&1 >/dev/null); then
    rm -f -- "$tmp"; printf 'verifying the backup failed: %s\n' "$report" >&2; exit 89
  fi
fi
sha=$(sha256 < "$tmp") || { rm -f -- "$tmp"; exit 1; }
n=1 stem=${name%"$suffix"}
while [ -e "$bdir/$name" ] || [ -e "$bdir/$name.meta" ]; do n=$((n + 1)); name="$stem-$n$suffix"; done
printf 'sha256 %s\nlive %s\nfor %s\n' "$sha" "$live" "$label" > "$bdir/.$name.meta.partial" || exit 1
mv -f -- "$bdir/.$name.meta.partial" "$bdir/$name.meta" || exit 1
mv -f -- "$tmp" "$bdir/$name" || exit 1
echo "backup $bdir/$name $(wc -c < "$bdir/$name") $sha"
cd -- "$bdir" || exit 0
own_backups | tail -n "+$((keep + 1))" | while IFS= read -r old; do
  [ "$old" = "$name" ] || rm -f -- "$old" "$old.meta"
done
# The record of a backup that is gone (removed by hand) goes too.
for f in "$prefix"*"$suffix.meta"; do
  if own "${f%.meta}" && [ -f "$f" ] && [ ! -e "${f%.meta}" ]; then rm -f -- "$f"; fi
done
exit 0"#,
        ),
    ]);
    Cmd::seq(steps)
}

/// Shell functions that tell this app's own backups from everything else in a backup
/// directory another app may share: exactly the names [`crate::deploy::once::backup`] makes,
/// `<prefix><label>-<YYYYMMDDTHHMMSSZ>[-<n>]<suffix>` with the label `manual` or a release
/// id (`<YYYYMMDDTHHMMSSZ>-<12 hex>`). A plain `<prefix>*` took app `shop-api`'s backups
/// for app `shop`'s and deleted them. `own <name> [<suffix>]` tests one name;
/// `own_backups` prints the regular files in the current directory that are this app's,
/// newest first, one a line (such names hold no newline).
pub const OWN_BACKUPS: &str = r#"
ts='[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]T[0-9][0-9][0-9][0-9][0-9][0-9]Z'
hx='[0-9a-f]'
rid="$ts-$hx$hx$hx$hx$hx$hx$hx$hx$hx$hx$hx$hx"
own() {
  for l in manual "$rid"; do
    for c in '' '-[0-9]' '-[0-9][0-9]' '-[0-9][0-9][0-9]' '-[0-9][0-9][0-9][0-9]'; do
      case $1 in "$prefix"$l-$ts$c"${2-$suffix}") return 0 ;; esac
    done
  done
  return 1
}
own_backups() {
  set --
  for f in "$prefix"*"$suffix"; do
    if own "$f" && [ -f "$f" ] && [ ! -L "$f" ]; then set -- "$@" "$f"; fi
  done
  [ "$#" = 0 ] || ls -1td -- "$@"
}"#;

/// Where a backup goes and what it records (see [`backup`]).
pub struct BackupName<'a> {
    pub dir: &'a str,
    /// The file's name: `<prefix><label>-<YYYYMMDDTHHMMSSZ><suffix>`.
    pub name: &'a str,
    pub prefix: &'a str,
    pub suffix: &'a str,
    /// The release id it is taken for, or `manual`.
    pub label: &'a str,
    /// The release `current` points at now.
    pub live: Option<&'a str>,
}

/// `sha256`: the hex digest of stdin (coreutils, else OpenSSL).
pub const SHA256: &str = r#"
sha256() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -c1-64
  else openssl dgst -sha256 -r | cut -c1-64; fi
}"#;

/// Lists this app's backups, newest first: per file a line `<bytes> <mtime epoch> <name>`,
/// then its `.meta` record's lines (each starting `sha256 `, `live ` or `for `) when it has
/// one, then a line `end`.
pub fn list_backups(dir: &str, prefix: &str, suffix: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("bdir", dir),
        Cmd::assign("prefix", prefix),
        Cmd::assign("suffix", suffix),
        Cmd::new(OWN_BACKUPS),
        Cmd::new(
            r#"
cd -- "$bdir" 2>/dev/null || exit 0
own_backups | while IFS= read -r f; do
  echo "$(wc -c < "$f") $(stat -c %Y -- "$f") $f"
  if [ -f "$f.meta" ] && [ ! -L "$f.meta" ]; then head -c 4096 -- "$f.meta" | grep -E '^(sha256|live|for) '; fi
  echo end
done"#,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a rendered command with `sh` in a clean environment, `stdin` on its stdin.
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

    fn vars() -> TaskVars {
        TaskVars {
            vars: vec![
                ("SHIPIT_RELEASE", "r2".to_owned()),
                ("SHIPIT_PREVIOUS", "r1".to_owned()),
            ],
            compose: Some(("shop".to_owned(), "/srv/r2/docker-compose.yml".to_owned())),
            env_next: None,
            sudo: false,
        }
    }

    #[test]
    fn a_backup_gets_the_task_variables_and_the_env_file() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_str().unwrap();
        let env = format!("{base}/app.env");
        std::fs::write(&env, "DB_NAME=\"shop\"\n").unwrap();
        let cmd = backup(
            base,
            Some(&env),
            &vars(),
            "echo \"$SHIPIT_RELEASE $SHIPIT_PREVIOUS $DB_NAME $PGUSER\"; echo \"$SHIPIT_COMPOSE\"",
            &BackupName {
                dir: &format!("{base}/backups"),
                name: "shop-r2.txt",
                prefix: "shop-",
                suffix: ".txt",
                label: "manual",
                live: None,
            },
            None,
            7,
        );
        let out = sh(&cmd, "PGUSER=app\n");
        assert!(out.status.success(), "{out:?}");
        let made = std::fs::read_to_string(format!("{base}/backups/shop-r2.txt")).unwrap();
        let mut lines = made.lines();
        assert_eq!(lines.next(), Some("r2 r1 shop app"));
        // The host here may have either Compose, or neither: only the arguments are ours.
        let compose = lines.next().unwrap();
        assert!(
            compose.starts_with("/bin/sh /tmp/shipit-compose."),
            "{compose}"
        );
    }

    /// `$SHIPIT_COMPOSE`, expanded unquoted as users write it, passes paths with spaces to
    /// Compose as single words (here a fake `docker-compose` printing one argument a line),
    /// and its script is gone after the command.
    #[test]
    fn shipit_compose_keeps_paths_with_spaces_whole() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("my app");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let fake = |name: &str, text: &str| {
            use std::os::unix::fs::PermissionsExt;
            let path = bin.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        fake("docker", "#!/bin/sh\nexit 1\n");
        fake("docker-compose", "#!/bin/sh\nprintf '<%s>\\n' \"$@\"\n");
        let base = base.to_str().unwrap();
        let env = format!("{base}/app env");
        std::fs::write(&env, "A=1\n").unwrap();
        let vars = TaskVars {
            vars: Vec::new(),
            compose: Some(("shop".to_owned(), format!("{base}/r 2/docker-compose.yml"))),
            env_next: None,
            sudo: false,
        };
        let cmd = run(
            base,
            Some(&env),
            &vars,
            "$SHIPIT_COMPOSE run --rm 'a b'; echo \"$SHIPIT_COMPOSE\" > used",
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &cmd.render()])
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let words = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            words,
            format!(
                "<-p>\n<shop>\n<-f>\n<{base}/r 2/docker-compose.yml>\n<--env-file>\n<{env}>\n<run>\n<--rm>\n<a b>\n"
            )
        );
        let used = std::fs::read_to_string(format!("{base}/used")).unwrap();
        let script = used.trim().strip_prefix("/bin/sh ").unwrap();
        assert!(
            !std::path::Path::new(script).exists(),
            "{script} left behind"
        );
    }

    #[test]
    fn backups_made_in_the_same_second_do_not_replace_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_str().unwrap();
        let bdir = format!("{base}/backups");
        let mut printed = Vec::new();
        for i in 1..=4 {
            let cmd = backup(
                base,
                None,
                &TaskVars::default(),
                &format!("echo {i}"),
                &BackupName {
                    dir: &bdir,
                    name: "shop-manual-20260101T000000Z.sql.gz",
                    prefix: "shop-",
                    suffix: ".sql.gz",
                    label: "manual",
                    live: None,
                },
                None,
                3,
            );
            let out = sh(&cmd, "");
            assert!(out.status.success(), "{out:?}");
            printed.push(String::from_utf8(out.stdout).unwrap());
            // Retention orders by mtime.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            printed[1].starts_with(&format!(
                "backup {bdir}/shop-manual-20260101T000000Z-2.sql.gz "
            )),
            "{printed:?}"
        );
        let mut kept: Vec<String> = std::fs::read_dir(&bdir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            [
                "shop-manual-20260101T000000Z-2.sql.gz",
                "shop-manual-20260101T000000Z-2.sql.gz.meta",
                "shop-manual-20260101T000000Z-3.sql.gz",
                "shop-manual-20260101T000000Z-3.sql.gz.meta",
                "shop-manual-20260101T000000Z-4.sql.gz",
                "shop-manual-20260101T000000Z-4.sql.gz.meta",
            ]
        );
        let last = std::fs::read_to_string(format!("{bdir}/shop-manual-20260101T000000Z-4.sql.gz"));
        assert_eq!(last.unwrap(), "4\n");
    }

    #[test]
    fn retention_and_listing_touch_only_this_apps_own_backup_names() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_str().unwrap();
        let bdir = format!("{base}/backups");
        std::fs::create_dir(&bdir).unwrap();
        // Another app whose name starts with this one's, and names that only look alike.
        let others = [
            "shop-api-manual-20250101T000000Z.dump",
            "shop-api-20250101T000000Z-0123456789ab-20250101T000001Z.dump",
            "shop-manual-20250101T000000Z-x.dump",
            "shop-manual-[0-9]T.dump",
            "shop-notes.dump",
            ".shop-api-manual-20250101T000000Z.dump.partial",
        ];
        for name in others {
            std::fs::write(format!("{bdir}/{name}"), "other").unwrap();
        }
        let old = "shop-20250101T000000Z-0123456789ab-20250101T000002Z.dump";
        std::fs::write(format!("{bdir}/{old}"), "old").unwrap();
        std::fs::write(
            format!("{bdir}/.shop-manual-20250101T000003Z.dump.partial"),
            "dead run",
        )
        .unwrap();
        let cmd = backup(
            base,
            None,
            &TaskVars::default(),
            "echo new",
            &BackupName {
                dir: &bdir,
                name: "shop-manual-20260101T000000Z.dump",
                prefix: "shop-",
                suffix: ".dump",
                label: "manual",
                live: None,
            },
            None,
            1,
        );
        let out = sh(&cmd, "");
        assert!(out.status.success(), "{out:?}");
        let mut left: Vec<String> = std::fs::read_dir(&bdir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want: Vec<String> = others.iter().map(|s| (*s).to_owned()).collect();
        want.push("shop-manual-20260101T000000Z.dump".to_owned());
        want.push("shop-manual-20260101T000000Z.dump.meta".to_owned());
        want.sort();
        assert_eq!(left, want);
        let listed = sh(&list_backups(&bdir, "shop-", ".dump"), "");
        let listed = String::from_utf8(listed.stdout).unwrap();
        let lines: Vec<&str> = listed.lines().collect();
        assert_eq!(lines.len(), 5, "{listed}");
        assert!(
            lines[0].ends_with(" shop-manual-20260101T000000Z.dump"),
            "{listed}"
        );
        // The sha256 of "new\n".
        assert_eq!(
            lines[1],
            "sha256 7aa7a5359173d05b63cfd682e3c38487f3cb4f7f1d60659fe59fab1505977d4c"
        );
        assert_eq!(&lines[2..], ["live ", "for manual", "end"], "{listed}");
    }
}
