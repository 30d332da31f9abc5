//! Docker Compose stacks. The compose file is rendered into the release; the host's own
//! Compose is used, `docker compose` (v2) or `docker-compose` (v1), picked by asking the host
//! each time. The app's env file (0600) is Compose's `--env-file`: the staged one while
//! staging, the live one after the switch.

use crate::shell::Cmd;

/// Sets `$compose` to the host's Compose: `docker compose` (the v2 plugin, preferred) or
/// `docker-compose` (v1); empty when it has neither. The one place that choice is made:
/// stack commands, `$SHIPIT_COMPOSE` in user commands and `shipit check` all use it.
pub const PICK: &str = r#"
if docker compose version >/dev/null 2>&1; then compose="docker compose"
elif command -v docker-compose >/dev/null 2>&1; then compose=docker-compose
else compose=; fi"#;

/// After [`PICK`], with `$project`, `$file` and `$envfile` (empty: none) set: sets "$@" to
/// the host's Compose with them. Exit [`NO_COMPOSE`](super::exit::NO_COMPOSE) when the host
/// has neither Compose.
pub const ARGS: &str = r#"
if [ -z "$compose" ]; then
  echo "neither \`docker compose\` nor \`docker-compose\` is installed" >&2; exit 91
fi
set -- $compose
if [ -n "$envfile" ]; then set -- "$@" -p "$project" -f "$file" --env-file "$envfile"
else set -- "$@" -p "$project" -f "$file"; fi"#;

/// Sets "$@" to the host's Compose with the project, file and env file of a release.
/// Exit [`NO_COMPOSE`](super::exit::NO_COMPOSE) when the host has neither Compose.
fn prelude(project: &str, file: &str, env_path: Option<&str>) -> Vec<Cmd> {
    vec![
        Cmd::assign("project", project),
        Cmd::assign("file", file),
        Cmd::assign("envfile", env_path.unwrap_or("")),
        Cmd::new(PICK),
        Cmd::new(ARGS),
    ]
}

/// A script that runs the host's Compose with the project, file and env file of a release,
/// then its own arguments: what `$SHIPIT_COMPOSE` runs in user commands. Users expand
/// `$SHIPIT_COMPOSE` unquoted, so its value must split into the right words whatever the
/// paths hold: the paths live in this script (quoted by construction), and the variable only
/// names the script (see [`super::task`]). The env file is `env_next` (what this run
/// staged) while it exists, as for the stack itself, else `env_path`; a missing env file is
/// left out. With `sudo` (`ssh.sudo`), a user other than root runs Compose through
/// `sudo -n`, as the stack's own steps do. Exit
/// [`NO_COMPOSE`](super::exit::NO_COMPOSE) when the host has neither Compose.
pub fn wrapper(
    project: &str,
    file: &str,
    env_path: Option<&str>,
    env_next: Option<&str>,
    sudo: bool,
) -> Cmd {
    Cmd::seq([
        Cmd::assign("project", project),
        Cmd::assign("file", file),
        Cmd::assign("envfile", env_path.unwrap_or("")),
        Cmd::assign("envnext", env_next.unwrap_or("")),
        Cmd::assign("sudo", if sudo { "1" } else { "" }),
        Cmd::new(PICK),
        Cmd::new(
            r#"
if [ -n "$envnext" ] && [ -f "$envnext" ]; then envfile=$envnext; fi
if [ -z "$compose" ]; then
  echo "neither \`docker compose\` nor \`docker-compose\` is installed" >&2; exit 91
fi
as=
if [ -n "$sudo" ] && [ "$(id -u)" != 0 ]; then as="sudo -n --"; fi
if [ -n "$envfile" ] && [ -f "$envfile" ]; then
  exec $as $compose -p "$project" -f "$file" --env-file "$envfile" "$@"
fi
exec $as $compose -p "$project" -f "$file" "$@""#,
        ),
    ])
}

/// While staging: the file must parse (`config -q`), and its images are pulled when `pull`.
pub fn stage(project: &str, file: &str, env_path: Option<&str>, pull: bool) -> Cmd {
    let mut steps = prelude(project, file, env_path);
    steps.push(Cmd::assign("pull", if pull { "1" } else { "" }));
    steps.push(Cmd::new(
        r#"
"$@" config -q || exit 92
if [ -n "$pull" ]; then "$@" pull || exit 93; fi
exit 0"#,
    ));
    Cmd::seq(steps)
}

/// At the switch (or switching back): the stack as this file describes it.
pub fn up(project: &str, file: &str, env_path: Option<&str>) -> Cmd {
    let mut steps = prelude(project, file, env_path);
    steps.push(Cmd::new(r#""$@" up -d --remove-orphans"#));
    Cmd::seq(steps)
}

/// Switching back: the stack as the previous release's file describes it; with no previous
/// compose file (a first deploy), the stack started from `file` goes away (volumes stay).
/// The env file is restored before this runs: on a first deploy that removes it, and
/// Compose refuses an `--env-file` that does not exist, so taking the stack down goes
/// without one then (`down` starts nothing that would read it).
pub fn back(project: &str, previous: Option<&str>, file: &str, env_path: Option<&str>) -> Cmd {
    Cmd::seq([
        Cmd::assign("project", project),
        Cmd::assign("file", previous.unwrap_or(file)),
        Cmd::assign("envfile", env_path.unwrap_or("")),
        Cmd::assign("prevfile", previous.unwrap_or("")),
        Cmd::new(PICK),
        Cmd::new(
            r#"
up=
if [ -n "$prevfile" ] && [ -f "$prevfile" ]; then up=1
elif [ -n "$envfile" ] && [ ! -e "$envfile" ]; then envfile=; fi"#,
        ),
        Cmd::new(ARGS),
        Cmd::new(
            r#"
if [ -n "$up" ]; then "$@" up -d --remove-orphans
else "$@" down --remove-orphans; fi"#,
        ),
    ])
}

/// Checks that every `image:` in a rendered compose file names a tag or digest, not
/// `latest`: a release must always mean the same images. `${NAME}`, `${NAME:-default}` and
/// `$NAME` are read from `vars` (the env file's plain values, which Compose interpolates
/// too); a name `vars` does not know is taken as pinned. Returns the offending lines, each
/// as written and, when it differs, as interpolated.
pub fn unpinned_images(
    compose: &str,
    vars: &std::collections::BTreeMap<String, String>,
) -> Vec<(usize, String)> {
    compose
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let rest = line.trim_start().strip_prefix("image:")?;
            let written = rest.trim().trim_matches(['"', '\'']);
            let image = interpolate(written, vars)?;
            let last = image.rsplit('/').next().unwrap_or(&image);
            let pinned = image.contains('@')
                || last
                    .split_once(':')
                    .is_some_and(|(_, tag)| !tag.is_empty() && tag != "latest");
            let shown = if image == written {
                image.clone()
            } else {
                format!("{written}` = `{image}")
            };
            (!pinned).then_some((i + 1, shown))
        })
        .collect()
}

/// Compose's interpolation of `text` with `vars`; `None` when it names a variable `vars`
/// lacks (a secret, or one set elsewhere), so the result cannot be known here.
fn interpolate(text: &str, vars: &std::collections::BTreeMap<String, String>) -> Option<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let (name, default, len) = if let Some(inner) = rest.strip_prefix('{') {
            let end = inner.find('}')?;
            let body = &inner[..end];
            let (name, default) = match body.find([':', '-']) {
                Some(p) => {
                    let d = body[p..].trim_start_matches(':');
                    (&body[..p], d.strip_prefix('-'))
                }
                None => (body, None),
            };
            (name, default, end + 2)
        } else {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..len], None, len)
        };
        match (vars.get(name), default) {
            (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
            (Some(v), _) => out.push_str(v),
            _ => return None,
        }
        rest = &rest[len..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_must_be_pinned() {
        let file = "services:\n  api:\n    image: \"registry:5000/team/api:1.4.2\"\n  db:\n    image: postgres\n  cache:\n    image: redis:latest\n  web:\n    image: nginx@sha256:abc\n";
        assert_eq!(
            unpinned_images(file, &Default::default()),
            vec![(5, "postgres".to_owned()), (7, "redis:latest".to_owned())]
        );
    }

    #[test]
    fn interpolated_tags_are_checked_with_the_env_vars() {
        let vars: std::collections::BTreeMap<String, String> = [
            ("TAG", "latest"),
            ("GOOD", "1.2.3"),
            ("REG", "nexus:5000"),
            ("EMPTY", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let file = "  a:\n    image: \"$REG/api:${TAG}\"\n  b:\n    image: ${REG}/api:${GOOD}\n  c:\n    image: api:${SECRET_TAG}\n  d:\n    image: api:${EMPTY:-latest}\n  e:\n    image: api:${EMPTY:-2}\n";
        assert_eq!(
            unpinned_images(file, &vars),
            vec![
                (2, "$REG/api:${TAG}` = `nexus:5000/api:latest".to_owned()),
                (8, "api:${EMPTY:-latest}` = `api:latest".to_owned()),
            ]
        );
    }

    /// Runs `back` with a `docker` on PATH that logs its arguments and fails, as Compose
    /// does, on an `--env-file` that does not exist. Returns (exit code, log).
    fn run_back(previous: bool, env_exists: bool) -> (i32, String) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let log = d.join("log");
        std::fs::create_dir(d.join("bin")).unwrap();
        let docker = d.join("bin/docker");
        std::fs::write(
            &docker,
            format!(
                "#!/bin/sh\n[ \"$1 $2\" = 'compose version' ] && exit 0\necho \"$*\" >> '{}'\nprev=\nfor a; do [ \"$prev\" = --env-file ] && {{ [ -f \"$a\" ] || exit 14; }}; prev=$a; done\nexit 0\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&docker, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let env = d.join("web.env");
        if env_exists {
            std::fs::write(&env, "A=1\n").unwrap();
        }
        let prev = d.join("prev.yml");
        std::fs::write(&prev, "services: {}\n").unwrap();
        let now = d.join("now.yml");
        let cmd = back(
            "web",
            previous.then(|| prev.to_str().unwrap()),
            now.to_str().unwrap(),
            Some(env.to_str().unwrap()),
        );
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd.render())
            .env("PATH", format!("{}:/usr/bin:/bin", d.join("bin").display()))
            .output()
            .unwrap();
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        (
            out.status.code().unwrap_or(-1),
            log.replace(d.to_str().unwrap(), "D"),
        )
    }

    #[test]
    fn switching_back_a_first_deploy_takes_the_stack_down_without_the_removed_env_file() {
        assert_eq!(
            run_back(false, false),
            (
                0,
                "compose -p web -f D/now.yml down --remove-orphans\n".to_owned()
            )
        );
        assert_eq!(
            run_back(false, true),
            (
                0,
                "compose -p web -f D/now.yml --env-file D/web.env down --remove-orphans\n"
                    .to_owned()
            )
        );
        // The previous release's stack comes back with the env file put back.
        assert_eq!(
            run_back(true, true),
            (
                0,
                "compose -p web -f D/prev.yml --env-file D/web.env up -d --remove-orphans\n"
                    .to_owned()
            )
        );
        // Its env file missing then is an error, not a stack started without it.
        assert_eq!(run_back(true, false).0, 14);
    }
}
