//! `<deploy_to>/.shipit/history.jsonl`: one JSON line per deploy, rollback or unlock.

use crate::shell::Cmd;

/// Appends the line that comes on stdin. One `write` of one short line with `O_APPEND`:
/// concurrent appenders cannot interleave inside it.
pub fn append(deploy_to: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::new(r#"mkdir -p -- "$base/.shipit" && cat >> "$base/.shipit/history.jsonl""#),
    ])
}

/// Prints the last `lines` lines of the history (nothing when there is none yet).
pub fn read(deploy_to: &str, lines: u32) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::assign("n", lines.to_string()),
        Cmd::new(r#"f="$base/.shipit/history.jsonl"; [ -f "$f" ] || exit 0; tail -n "$n" -- "$f""#),
    ])
}
