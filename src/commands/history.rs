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
mkdir -p -- "$base/.shipit" || exit 1
umask 077
if [ -L "$f" ]; then echo "\`$f\` is a symlink" >&2; exit 1; fi
if [ -e "$f" ]; then chmod 600 "$f" || exit 1; fi
cat >> "$f""#,
        ),
    ])
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
