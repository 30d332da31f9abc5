//! `<deploy_to>/.shipit/history.jsonl`: one JSON line per deploy, rollback or unlock (mode
//! 0600).

use crate::shell::Cmd;

/// Appends the line that comes on stdin. One `write` of one short line with `O_APPEND`:
/// concurrent appenders cannot interleave inside it. The file is readable by its owner only
/// (a failed step's output is in it): created 0600, and made so when an older shipit
/// created it 0644.
pub fn append(deploy_to: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::new(
            r#"
f="$base/.shipit/history.jsonl"
# `deploy_to` itself may be made here: with the usual mode, the app's user reads releases.
[ -d "$base/.shipit" ] || mkdir -p -- "$base/.shipit" || exit 1
umask 077
if [ -L "$f" ]; then echo "\`$f\` is a symlink" >&2; exit 1; fi
if [ -e "$f" ]; then chmod 600 "$f" || exit 1; fi
cat >> "$f""#,
        ),
    ])
}

/// The end of a run on a host, in one command: [`append`] the history line from stdin,
/// then `discard` (what the run staged and did not install), then release the run's lock
/// ([`super::lock::release`]). Each part runs in its own subshell whatever the one before
/// did: a history that cannot be written never keeps the lock. Exits with the append's
/// status.
pub fn append_and_release(deploy_to: &str, token: &str, discard: Option<&Cmd>) -> Cmd {
    let mut parts = vec![Cmd::subshell(append(deploy_to)), Cmd::new("appended=$?")];
    parts.extend(discard.cloned().map(Cmd::subshell));
    parts.push(Cmd::subshell(super::lock::release(deploy_to, token)));
    parts.push(Cmd::new(r#"exit "$appended""#));
    Cmd::seq(parts)
}

/// Made private when read, too: a history an older shipit wrote 0644 (with unredacted
/// output in it) must not wait for the next deploy to stop being world-readable.
pub(super) const PRIVATE: &str =
    r#"if [ -f "$f" ] && [ ! -L "$f" ]; then chmod 600 -- "$f" 2>/dev/null; fi"#;

/// Prints the last `lines` lines of the history (nothing when there is none yet).
pub fn read(deploy_to: &str, lines: u32) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::assign("n", lines.to_string()),
        Cmd::new(r#"f="$base/.shipit/history.jsonl"; [ -f "$f" ] || exit 0"#),
        Cmd::new(PRIVATE),
        Cmd::new(r#"tail -n "$n" -- "$f""#),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::lock;
    use crate::commands::release::tests::run_sh;

    #[test]
    fn the_end_of_a_run_records_drops_and_unlocks_in_one_command() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let base = base.to_str().unwrap();
        let staged = dir.path().join("app.env.next");
        let discard = Cmd::new("rm -f --").arg(staged.to_str().unwrap());
        let locked = || run_sh(&lock::read(base), b"", None).0 == 0;

        assert_eq!(
            run_sh(&lock::acquire(base, None), b"{\"token\":\"run-1\"}", None).0,
            0
        );
        std::fs::write(&staged, "A=1\n").unwrap();
        let close = append_and_release(base, "run-1", Some(&discard));
        assert_eq!(run_sh(&close, b"{\"line\":1}\n", None).0, 0);
        assert_eq!(
            std::fs::read_to_string(format!("{base}/.shipit/history.jsonl")).unwrap(),
            "{\"line\":1}\n"
        );
        assert!(!staged.exists());
        assert!(!locked());

        // A history that cannot be written fails the command, and still never keeps the lock.
        assert_eq!(
            run_sh(&lock::acquire(base, None), b"{\"token\":\"run-2\"}", None).0,
            0
        );
        let history = format!("{base}/.shipit/history.jsonl");
        std::fs::remove_file(&history).unwrap();
        std::os::unix::fs::symlink("/nonexistent", &history).unwrap();
        let close = append_and_release(base, "run-2", None);
        assert_eq!(run_sh(&close, b"{\"line\":2}\n", None).0, 1);
        assert!(!locked());

        // Another run's lock stays.
        assert_eq!(
            run_sh(&lock::acquire(base, None), b"{\"token\":\"run-3\"}", None).0,
            0
        );
        let close = append_and_release(base, "run-4", None);
        run_sh(&close, b"{\"line\":4}\n", None);
        assert!(locked());
    }
}
