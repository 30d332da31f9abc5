//! Files shipit writes on a host from content on stdin (rendered units, sites, env files).

use crate::shell::Cmd;

/// Writes stdin to `path` atomically (temp file, then rename), creating parent dirs.
/// `mode` applies before any content is written; `owner` too, when given.
pub fn write(path: &str, mode: &str, owner: Option<&str>) -> Cmd {
    Cmd::seq([
        Cmd::assign("path", path),
        Cmd::assign("mode", mode),
        Cmd::assign("owner", owner.unwrap_or("")),
        Cmd::new(
            r#"
umask 077
mkdir -p -- "$(dirname -- "$path")" || exit 1
tmp="$path.shipit-tmp"
rm -f -- "$tmp" && : > "$tmp" && chmod "$mode" -- "$tmp" || exit 1
if [ -n "$owner" ]; then chown -- "$owner" "$tmp" || { rm -f -- "$tmp"; exit 1; }; fi
cat > "$tmp" || { rm -f -- "$tmp"; exit 1; }
mv -f -- "$tmp" "$path""#,
        ),
    ])
}

/// Prints `<sha256>` of `path`, or nothing when it does not exist.
pub fn sha256(path: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("path", path),
        Cmd::new(r#"[ -f "$path" ] || exit 0; sha256sum < "$path" | cut -d' ' -f1"#),
    ])
}

/// Prints the file's content; exit [`NO_FILE`](super::exit::NO_FILE) when it does not exist.
pub fn read(path: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("path", path),
        Cmd::new(r#"[ -f "$path" ] || exit 77; cat -- "$path""#),
    ])
}
