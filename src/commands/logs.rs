//! Reading the services' logs on a host (`shipit logs`): the journal of the inventory's
//! systemd units, and the logs of its Compose stack.
//!
//! Each builder sets `"$@"` to one reader command, then runs it: at once, or following
//! ([`FOLLOW`]) until the deployer's side of the channel goes away. A follower must not
//! outlive the deployer (a `journalctl -f` left behind on the host would hold its session
//! open), so it watches its stdin: shipit keeps that open while it follows, and closing it
//! (Ctrl-C, a lost connection, a killed shipit) stops the reader.

use crate::shell::Cmd;

/// Runs `"$@"` and stops it when stdin reaches its end. A background command's stdin is
/// `/dev/null` in `sh`, so the channel's stdin is kept as fd 3 for the watcher. The reader
/// runs as a simple command in the background, so `$!` is the reader itself (not a subshell
/// that would survive it). Exits with the reader's status.
const FOLLOW: &str = r#"
exec 3<&0 </dev/null
"$@" &
reader=$!
{ cat <&3 >/dev/null 2>&1; kill "$reader" 2>/dev/null; } >/dev/null 2>&1 &
watcher=$!
exec 3<&-
wait "$reader"
status=$?
kill "$watcher" 2>/dev/null
exit "$status""#;

fn run(follow: bool) -> Cmd {
    if follow {
        Cmd::new(FOLLOW)
    } else {
        Cmd::new(r#"exec "$@""#)
    }
}

/// The journal of `units` (merged, in time order): the last `lines` entries, then new ones
/// with `follow`. Each unit is one `--unit=NAME` word, so a name starting with `-` is never
/// taken for an option.
pub fn journal(units: &[String], lines: u32, follow: bool) -> Cmd {
    let mut set = Cmd::new("set --")
        .arg("journalctl")
        .arg("--no-pager")
        .args(["-o", "short-iso", "-n"])
        .arg(lines.to_string());
    for unit in units {
        set = set.arg(format!("--unit={unit}"));
    }
    if follow {
        set = set.arg("--follow");
    }
    Cmd::seq([set, run(follow)])
}

/// The logs of every service of the Compose stack `project`, as `file` (the current
/// release's compose file) describes it, with the env file when there is one: the last
/// `lines` of each, with timestamps, then new ones with `follow`. Exit
/// [`NO_FILE`](super::exit::NO_FILE) when `file` is missing (nothing deployed yet),
/// [`NO_COMPOSE`](super::exit::NO_COMPOSE) when the host has no Compose.
pub fn compose(project: &str, file: &str, env_path: Option<&str>, lines: u32, follow: bool) -> Cmd {
    let mut steps = vec![
        Cmd::assign("project", project),
        Cmd::assign("file", file),
        Cmd::new(
            r#"[ -f "$file" ] || { printf 'no compose file at %s: nothing is deployed yet\n' "$file" >&2; exit 77; }"#,
        ),
        Cmd::assign("envfile", env_path.unwrap_or("")),
        // The env file is only for interpolation here: without it (or without the right to
        // read it) the logs are the same, with warnings.
        Cmd::new(r#"[ -n "$envfile" ] && [ -r "$envfile" ] || envfile="""#),
        Cmd::new(super::compose::PICK),
        Cmd::new(super::compose::ARGS),
    ];
    let mut set =
        Cmd::new(r#"set -- "$@" logs --no-color --timestamps"#).arg(format!("--tail={lines}"));
    if follow {
        set = set.arg("--follow");
    }
    steps.push(set);
    steps.push(run(follow));
    Cmd::seq(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_of_every_unit_is_one_command() {
        let units = [
            "shop-api.service".to_owned(),
            "shop@3001.service".to_owned(),
        ];
        insta::assert_snapshot!(journal(&units, 20, false).render(), @r#"set -- journalctl --no-pager -o short-iso -n 20 '--unit=shop-api.service' '--unit=shop@3001.service'; exec "$@""#);
        let odd = ["it's;rm -rf /.service".to_owned()];
        assert!(
            journal(&odd, 1, false)
                .render()
                .contains(r"'--unit=it'\''s;rm -rf /.service'")
        );
    }

    /// `cmd` started in a real `sh` with `reader` as `journalctl` on PATH (in the returned
    /// directory, which must outlive the child).
    fn sh_with_reader(
        cmd: &Cmd,
        reader: &str,
        stdin: std::process::Stdio,
    ) -> (tempfile::TempDir, std::process::Child) {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("journalctl");
        std::fs::write(&bin, reader).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd.render())
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .stdin(stdin)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        (dir, child)
    }

    #[test]
    fn a_follower_stops_when_its_stdin_ends_and_leaves_nothing_running() {
        // The fake reader prints its arguments, its pid, then runs until killed.
        let reader = "#!/bin/sh\necho \"args $*\"\necho \"pid $$\"\nexec sleep 300\n";
        let cmd = journal(&["a b.service".to_owned()], 5, true);
        let (_dir, mut child) = sh_with_reader(&cmd, reader, std::process::Stdio::piped());
        let stdin = child.stdin.take().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        use std::io::BufRead;
        let mut args = String::new();
        out.read_line(&mut args).unwrap();
        assert_eq!(
            args,
            "args --no-pager -o short-iso -n 5 --unit=a b.service --follow\n"
        );
        let mut pid = String::new();
        out.read_line(&mut pid).unwrap();
        let pid = pid.trim().strip_prefix("pid ").unwrap().to_owned();
        // Still following while stdin is open.
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(child.try_wait().unwrap().is_none());
        drop(stdin);
        let status = child.wait().unwrap();
        // Ended by the watcher's SIGTERM.
        assert_eq!(status.code(), Some(143));
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn a_reader_that_ends_by_itself_ends_the_follower_with_its_status() {
        let reader = "#!/bin/sh\necho nothing to follow >&2\nexit 4\n";
        let cmd = journal(&["a.service".to_owned()], 5, true);
        let (_dir, mut child) = sh_with_reader(&cmd, reader, std::process::Stdio::piped());
        // stdin stays open: the follower must not wait for it.
        let _stdin = child.stdin.take().unwrap();
        let started = std::time::Instant::now();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(4));
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        // Without `follow`, the reader simply runs.
        let plain = journal(&["a.service".to_owned()], 5, false);
        let (_dir2, mut child) = sh_with_reader(&plain, reader, std::process::Stdio::null());
        assert_eq!(child.wait().unwrap().code(), Some(4));
    }

    #[test]
    fn compose_logs_need_the_current_compose_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("none.yml");
        let cmd = compose("shop", file.to_str().unwrap(), None, 10, false);
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd.render())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(77));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("nothing is deployed yet"),
            "{out:?}"
        );
    }
}
