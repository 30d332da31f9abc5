//! The deploy lock: `<deploy_to>/.shipit/lock/`, created with `mkdir` (atomic on every
//! filesystem), holding `owner.json`. Release removes the lock only when it is still ours
//! (the run's token is in owner.json), so a run can never remove another run's lock.

use crate::shell::Cmd;

/// Takes the lock; owner.json content comes on stdin. Exit 0: taken. Exit
/// [`LOCK_HELD`](super::exit::LOCK_HELD): held by someone else, whose owner.json is printed.
///
/// Whoever takes the lock owns the host: every earlier run's dead-deployer guard still armed
/// is disarmed before this returns, so none can revert what this run does. Exit
/// [`GUARD_BUSY`](super::exit::GUARD_BUSY) (the lock given back) when a guard that fired
/// is still switching the host back.
///
/// What earlier runs staged next to `env_path` is removed too: none of them holds the lock
/// any more (a run killed, a version of shipit that left its staging behind), and this one
/// has staged nothing yet.
pub fn acquire(deploy_to: &str, env_path: Option<&str>) -> Cmd {
    let [functions, settle] = super::guard::settle_script();
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::assign("g", super::guard::dir(deploy_to)),
        Cmd::assign("wait", "20"),
        Cmd::assign("path", env_path.unwrap_or("")),
        functions,
        settle,
        Cmd::new(
            r#"
lock="$base/.shipit/lock"
# `deploy_to` itself may be made here: with the usual mode, the app's user reads releases.
[ -d "$base/.shipit" ] || mkdir -p -- "$base/.shipit" || exit 1
umask 077
# A holder writes owner.json just after its mkdir, and may release at any moment: look a few
# times, taking the lock if it goes away.
for try in 1 2 3 4 5 6 7 8 9 10; do
  if mkdir -- "$lock" 2>/dev/null; then
    # A lock whose owner cannot be written is not left behind for the next run to find.
    cat > "$lock/owner.json.tmp" && mv -f -- "$lock/owner.json.tmp" "$lock/owner.json" ||
      { rm -rf -- "$lock"; exit 1; }
    settle
    status=$?
    if [ "$status" != 0 ]; then rm -rf -- "$lock"; exit "$status"; fi
    [ -z "$path" ] || rm -f -- "$path.shipit-next" "$path.shipit-tmp" "$path".shipit-next-* "$path".shipit-tmp.*
    exit 0
  fi
  [ -f "$lock/owner.json" ] && break
  sleep 0.1 2>/dev/null || sleep 1
done
cat -- "$lock/owner.json" 2>/dev/null
exit 75"#,
        ),
    ])
}

/// With [`acquire_then`], the last line once the lock is taken: `shipit-locked <status>`.
const LOCKED: &str = "shipit-locked";

/// [`acquire`], then `then` (a command that only reads) in the same script once the lock
/// is taken: one round trip for both. Exits as [`acquire`] does, 0 only when the lock was
/// taken, however `then` went: `then`'s stdout follows, and a last line with its exit
/// status ([`then_output`] reads them).
pub fn acquire_then(deploy_to: &str, env_path: Option<&str>, then: &Cmd) -> Cmd {
    Cmd::seq([
        Cmd::subshell(acquire(deploy_to, env_path)),
        Cmd::new(r#"locked=$?; [ "$locked" = 0 ] || exit "$locked""#),
        Cmd::subshell(then.clone()),
        Cmd::new("read_status=$?"),
        Cmd::new("echo").arg(LOCKED).raw(r#""$read_status""#),
        Cmd::new("exit 0"),
    ])
}

/// `then`'s stdout from the stdout of a successful [`acquire_then`]; `None` when `then`
/// failed (or the output is not [`acquire_then`]'s).
pub fn then_output(stdout: &str) -> Option<String> {
    let body = stdout.strip_suffix('\n')?;
    let (read, last) = match body.rsplit_once('\n') {
        Some((read, last)) => (format!("{read}\n"), last),
        None => (String::new(), body),
    };
    (last == format!("{LOCKED} 0")).then_some(read)
}

/// Removes the lock if `token` is in its owner.json; a lock of another run stays.
pub fn release(deploy_to: &str, token: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::assign("token", token),
        Cmd::new(
            r#"
lock="$base/.shipit/lock"
if [ -d "$lock" ] && grep -qF -- "$token" "$lock/owner.json" 2>/dev/null; then
  rm -rf -- "$lock"
fi"#,
        ),
    ])
}

/// Prints owner.json of the lock. Exit [`NO_LOCK`](super::exit::NO_LOCK) when there is none.
pub fn read(deploy_to: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::new(
            r#"
lock="$base/.shipit/lock"
[ -d "$lock" ] || exit 76
cat -- "$lock/owner.json" 2>/dev/null
exit 0"#,
        ),
    ])
}

/// Removes the lock whoever holds it (`shipit unlock`, after the user confirmed), after
/// disarming every dead-deployer guard still armed: the run that held the lock is taken to
/// be dead, and a guard of it firing later would revert whatever the next run deploys.
/// Exit [`GUARD_BUSY`](super::exit::GUARD_BUSY) (nothing removed) when a guard that fired
/// is still switching the host back after `wait_secs`. With the lock go the env files every
/// run staged next to `env_path` (a dead run's secrets must not stay): here, on a host whose
/// lock is removed, never while another run may hold it.
pub fn force_remove(deploy_to: &str, wait_secs: u64, env_path: Option<&str>) -> Cmd {
    let [functions, settle] = super::guard::settle_script();
    let mut steps = vec![
        Cmd::assign("base", deploy_to),
        Cmd::assign("g", super::guard::dir(deploy_to)),
        Cmd::assign("wait", wait_secs.to_string()),
        functions,
        settle,
        Cmd::new("settle || exit $?"),
    ];
    if let Some(path) = env_path {
        steps.push(super::envfile::discard_all(path));
    }
    steps.push(Cmd::new(r#"rm -rf -- "$base/.shipit/lock""#));
    Cmd::seq(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sh(cmd: &Cmd, stdin: &str) -> (i32, String) {
        use std::io::Write;
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd.render())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[test]
    fn the_lock_is_exclusive_and_only_its_owner_releases_it() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app dir");
        let base = base.to_str().unwrap();
        assert_eq!(sh(&read(base), "").0, 76);
        assert_eq!(sh(&acquire(base, None), "{\"token\":\"run-1\"}").0, 0);
        let (code, owner) = sh(&acquire(base, None), "{\"token\":\"run-2\"}");
        assert_eq!(code, 75);
        assert_eq!(owner, "{\"token\":\"run-1\"}");
        // Another run's release leaves the lock in place.
        assert_eq!(sh(&release(base, "run-2"), "").0, 0);
        assert_eq!(sh(&read(base), "").1, "{\"token\":\"run-1\"}");
        assert_eq!(sh(&release(base, "run-1"), "").0, 0);
        assert_eq!(sh(&read(base), "").0, 76);
        assert_eq!(sh(&acquire(base, None), "{\"token\":\"run-3\"}").0, 0);
        assert_eq!(sh(&force_remove(base, 1, None), "").0, 0);
        assert_eq!(sh(&read(base), "").0, 76);
    }

    #[test]
    fn the_lock_and_a_read_after_it_go_in_one_command() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let base = base.to_str().unwrap();
        let then = Cmd::new("printf 'a b\\nc\\n'");
        let (code, out) = sh(&acquire_then(base, None, &then), "{\"token\":\"run-1\"}");
        assert_eq!(code, 0);
        assert_eq!(then_output(&out).as_deref(), Some("a b\nc\n"));
        // Held: the holder's owner.json and exit 75, `then` never runs.
        let (code, out) = sh(&acquire_then(base, None, &then), "{\"token\":\"run-2\"}");
        assert_eq!((code, out.as_str()), (75, "{\"token\":\"run-1\"}"));
        assert_eq!(sh(&release(base, "run-1"), "").0, 0);
        // A read that fails leaves the lock taken (exit 0) and says so on its last line.
        let then = Cmd::new("echo partial; exit 3");
        let (code, out) = sh(&acquire_then(base, None, &then), "{\"token\":\"run-3\"}");
        assert_eq!((code, out.as_str()), (0, "partial\nshipit-locked 3\n"));
        assert_eq!(then_output(&out), None);
        assert_eq!(sh(&read(base), "").1, "{\"token\":\"run-3\"}");
        // Nothing printed but the status line: an empty read.
        assert_eq!(then_output("shipit-locked 0\n").as_deref(), Some(""));
        assert_eq!(then_output("{\"token\":\"x\"}"), None);
    }

    #[test]
    fn taking_or_removing_the_lock_removes_what_earlier_runs_staged_never_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let base = base.to_str().unwrap();
        let env = dir.path().join("app.env");
        let env = env.to_str().unwrap();
        let plant = || {
            for f in [".shipit-next", ".shipit-next-run1", ".shipit-tmp.abc"] {
                std::fs::write(format!("{env}{f}"), "A=secret\n").unwrap();
            }
        };
        let left = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.starts_with("app.env."))
                .count()
        };
        plant();
        std::fs::write(env, "A=live\n").unwrap();
        // Held by another run: its staging stays.
        assert_eq!(sh(&acquire(base, Some(env)), "{\"token\":\"run-1\"}").0, 0);
        plant();
        assert_eq!(sh(&acquire(base, Some(env)), "{\"token\":\"run-2\"}").0, 75);
        assert_eq!(left(), 3);
        assert_eq!(sh(&force_remove(base, 1, Some(env)), "").0, 0);
        assert_eq!(left(), 0);
        plant();
        assert_eq!(sh(&acquire(base, Some(env)), "{\"token\":\"run-3\"}").0, 0);
        assert_eq!(left(), 0);
        assert_eq!(std::fs::read_to_string(env).unwrap(), "A=live\n");
    }

    #[test]
    fn taking_or_removing_the_lock_disarms_earlier_guards() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let base = base.to_str().unwrap();
        let g = format!("{base}/.shipit/guard");
        std::fs::create_dir_all(&g).unwrap();
        std::fs::write(format!("{g}/t1.sh"), "exit 0\n").unwrap();
        std::fs::write(format!("{g}/t1.pid"), "999999999\n").unwrap();
        assert_eq!(sh(&acquire(base, None), "{\"token\":\"run-2\"}").0, 0);
        assert_eq!(
            std::fs::read_link(format!("{g}/t1.decision")).unwrap(),
            std::path::Path::new("disarmed")
        );
        assert!(!std::path::Path::new(&format!("{g}/t1.sh")).exists());
        assert!(!std::path::Path::new(&format!("{g}/t1.pid")).exists());
        std::fs::write(format!("{g}/t2.sh"), "exit 0\n").unwrap();
        assert_eq!(sh(&force_remove(base, 1, None), "").0, 0);
        assert!(std::fs::read_link(format!("{g}/t2.decision")).is_ok());
        assert_eq!(sh(&read(base), "").0, 76);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&g), 0o700);
        assert_eq!(sh(&acquire(base, None), "{}").0, 0);
        assert_eq!(mode(&format!("{base}/.shipit/lock")), 0o700);
        assert_eq!(mode(&format!("{base}/.shipit/lock/owner.json")), 0o600);
    }
}
