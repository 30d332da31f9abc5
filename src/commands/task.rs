//! A user's command (a migration, a hook, a backup) run on the host: in a release
//! directory, with the app's env file loaded inside the remote shell, so values like
//! `$DATABASE_URL` reach the command's environment and never a command line.
//!
//! The env file loaded is the one this deploy staged (`<path>.shipit-next`) when there is
//! one, else the live one: a migration must see the new release's configuration.

use crate::shell::Cmd;

use super::envfile::next_path;

/// What a user's command learns about its deploy, as environment variables.
#[derive(Clone, Debug, Default)]
pub struct TaskVars {
    /// `SHIPIT_RELEASE`, `SHIPIT_PREVIOUS` ("" on a first deploy), `SHIPIT_HOST`, ...
    pub vars: Vec<(&'static str, String)>,
    /// (project, compose file): exported as `SHIPIT_COMPOSE`, the host's Compose command
    /// with `-p`, `-f` and `--env-file` of this release.
    pub compose: Option<(String, String)>,
}

/// The prelude: `cd` into `dir`, load the env file, export the task's variables.
fn prelude(dir: &str, env_path: Option<&str>, vars: &TaskVars) -> Vec<Cmd> {
    let mut steps = vec![
        Cmd::assign("dir", dir),
        Cmd::assign("envfile", env_path.unwrap_or("")),
        Cmd::assign("envnext", env_path.map(next_path).unwrap_or_default()),
        Cmd::new(
            r#"
cd -- "$dir" || exit 1
if [ -n "$envnext" ] && [ -f "$envnext" ]; then envfile=$envnext; fi
if [ -n "$envfile" ] && [ -f "$envfile" ]; then set -a; . "$envfile" || exit 1; set +a; fi"#,
        ),
    ];
    for (name, value) in &vars.vars {
        steps.push(Cmd::assign(name, value));
        steps.push(Cmd::new("export").raw(name));
    }
    if let Some((project, file)) = &vars.compose {
        steps.push(Cmd::assign("project", project));
        steps.push(Cmd::assign("composefile", file));
        steps.push(Cmd::new(
            r#"
if docker compose version >/dev/null 2>&1; then SHIPIT_COMPOSE="docker compose"
else SHIPIT_COMPOSE="docker-compose"; fi
SHIPIT_COMPOSE="$SHIPIT_COMPOSE -p $project -f $composefile"
if [ -n "$envfile" ] && [ -f "$envfile" ]; then SHIPIT_COMPOSE="$SHIPIT_COMPOSE --env-file $envfile"; fi
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

/// A backup: runs `command` with the env file loaded (plus `PG*` variables read from stdin,
/// in env-file syntax), stdout to `<dir>/<name>` atomically, with pipefail, verified
/// non-empty and by `verify <file>` when given, then keeps the newest `keep` files named
/// `<prefix>*<suffix>`. Prints `backup <path> <bytes>`.
#[allow(clippy::too_many_arguments)]
pub fn backup(
    cwd: &str,
    env_path: Option<&str>,
    command: &str,
    dir: &str,
    name: &str,
    verify: Option<&str>,
    keep: u32,
    prefix: &str,
    suffix: &str,
) -> Cmd {
    let mut steps = prelude(cwd, env_path, &TaskVars::default());
    steps.extend([
        Cmd::assign("cmd", command),
        Cmd::assign("bdir", dir),
        Cmd::assign("name", name),
        Cmd::assign("verify", verify.unwrap_or("")),
        Cmd::assign("keep", keep.to_string()),
        Cmd::assign("prefix", prefix),
        Cmd::assign("suffix", suffix),
        Cmd::new(
            r#"
extra=$(cat) || exit 1
if [ -n "$extra" ]; then set -a; eval "$extra" || exit 1; set +a; fi
umask 077
mkdir -p -- "$bdir" || exit 1
# The lock is held: a temp file here is left by a run that died; never a backup.
rm -f -- "$bdir"/.*.partial
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
mv -f -- "$tmp" "$bdir/$name" || exit 1
echo "backup $bdir/$name $(wc -c < "$bdir/$name")"
cd -- "$bdir" || exit 0
ls -1t -- "$prefix"*"$suffix" 2>/dev/null | tail -n "+$((keep + 1))" | while IFS= read -r old; do
  [ "$old" = "$name" ] || rm -f -- "$old"
done
exit 0"#,
        ),
    ]);
    Cmd::seq(steps)
}

/// Lists backups: `<bytes> <mtime epoch> <name>` per file, newest first.
pub fn list_backups(dir: &str, prefix: &str, suffix: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("bdir", dir),
        Cmd::assign("prefix", prefix),
        Cmd::assign("suffix", suffix),
        Cmd::new(
            r#"
cd -- "$bdir" 2>/dev/null || exit 0
ls -1t -- "$prefix"*"$suffix" 2>/dev/null | while IFS= read -r f; do
  echo "$(wc -c < "$f") $(stat -c %Y -- "$f") $f"
done"#,
        ),
    ])
}
