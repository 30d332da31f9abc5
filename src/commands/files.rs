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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_0600_atomically_from_stdin() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/app.env");
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(write(path.to_str().unwrap(), "600", None).render())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"A=1\n").unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "A=1\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.path().join("etc/app.env.shipit-tmp").exists());
    }
}
