//! Files shipit writes on a host from content on stdin (rendered units, sites, env files).

use crate::shell::Cmd;

/// Writes stdin to `path` atomically, creating parent dirs: the one way shipit creates a
/// file on a host. The directory passes [`strict`](super::strict) before and after it is
/// created; the content goes into a fresh name made exclusively by `mktemp` (never an
/// existing file, never through a symlink), whose `mode` (and `owner`, when given) are set
/// before any content is written; then `mv -T` renames it over `path`, which replaces a
/// file and never writes through a symlink or into a directory found there. A directory or
/// symlink at `path` is refused with [`FOREIGN_FILE`](super::exit::FOREIGN_FILE).
pub fn write(path: &str, mode: &str, owner: Option<&str>) -> Cmd {
    Cmd::seq([
        Cmd::assign("path", path),
        Cmd::assign("mode", mode),
        Cmd::assign("owner", owner.unwrap_or("")),
        Cmd::new(super::strict::SNIPPET),
        Cmd::new(WRITE),
    ])
}

/// The body of [`write`], after `$path`, `$mode`, `$owner` and the strict functions.
const WRITE: &str = r#"
umask 077
dir=$(dirname -- "$path")
shipit_strict "$dir"
mkdir -p -- "$dir" || exit 1
shipit_strict "$dir"
if [ -L "$path" ] || { [ -e "$path" ] && [ ! -f "$path" ]; }; then
  printf '`%s` is not a regular file: shipit does not replace it\n' "$path" >&2; exit 96
fi
tmp=$(mktemp "$path.shipit-tmp.XXXXXXXXXX") || exit 1
trap 'rm -f -- "$tmp"' EXIT
chmod "$mode" -- "$tmp" || exit 1
if [ -n "$owner" ]; then chown -- "$owner" "$tmp" || exit 1; fi
cat > "$tmp" || exit 1
mv -fT -- "$tmp" "$path" || exit 1
trap - EXIT"#;

/// Shell function `shipit_copy SRC DEST MODE`: installs a copy of SRC at DEST the way
/// [`write`] does (a fresh `mktemp` name next to DEST, never an existing file or a
/// symlink, `MODE` set before it is visible, renamed over DEST with `mv -T`). For scripts
/// that put files in place from the host's own copies (units, their previous versions).
pub const COPY: &str = r#"
shipit_copy() {
  shipit_t=$(mktemp "$(dirname -- "$2")/.$(basename -- "$2").shipit-tmp.XXXXXXXXXX") || return 1
  if cp -- "$1" "$shipit_t" && chmod "$3" -- "$shipit_t" && mv -fT -- "$shipit_t" "$2"; then return 0; fi
  rm -f -- "$shipit_t"; return 1
}"#;

/// Shell function `shipit_handback DIR...`: run as root (through `sudo`, `ssh.sudo`), gives
/// the directories DIR to the owner of `$base/.shipit`, the SSH user, so that what root saves
/// under `deploy_to` (the previous env file, units and site, for a switch-back) stays
/// removable by the SSH user, who clears `.shipit/previous` when it arms the next guard. The
/// files inside stay root's. Does nothing for any other user, or when root owns the tree.
pub const HANDBACK: &str = r#"
shipit_handback() {
  [ "$(id -u)" = 0 ] || return 0
  shipit_o=$(stat -c %u:%g -- "$base/.shipit" 2>/dev/null) || return 0
  [ "$shipit_o" != 0:0 ] || return 0
  chown -h -- "$shipit_o" "$@" 2>/dev/null
  return 0
}"#;

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
        let left: Vec<_> = std::fs::read_dir(dir.path().join("etc")).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    /// Writes `SECRET=1` to `path` with mode 0600: (exit code, stderr).
    fn write_sh(path: &std::path::Path, owner: Option<&str>) -> (i32, String) {
        let cmd = write(path.to_str().unwrap(), "600", owner);
        let (code, _, err) = crate::commands::release::tests::run_sh(&cmd, b"SECRET=1\n", None);
        (code, err)
    }

    #[test]
    fn never_writes_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "root-owned\n").unwrap();
        let path = dir.path().join("app.env");
        // The old fixed temp name, planted as a symlink to a file of root's.
        std::os::unix::fs::symlink(&victim, dir.path().join("app.env.shipit-tmp")).unwrap();
        let (code, err) = write_sh(&path, None);
        assert_eq!(code, 0, "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root-owned\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "SECRET=1\n");
        // A symlink at the path itself is not replaced, nor written through.
        let link = dir.path().join("link.env");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert_eq!(write_sh(&link, None).0, 96);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root-owned\n");
        // Nor a directory (`mv` would move the file into it).
        std::fs::create_dir(dir.path().join("d.env")).unwrap();
        assert_eq!(write_sh(&dir.path().join("d.env"), None).0, 96);
    }

    #[test]
    fn copy_replaces_a_symlink_instead_of_writing_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "root-owned\n").unwrap();
        let src = dir.path().join("candidate");
        std::fs::write(&src, "[Unit]\n").unwrap();
        let dest = dir.path().join("demo.service");
        std::os::unix::fs::symlink(&victim, &dest).unwrap();
        let script = Cmd::seq([
            Cmd::new(COPY),
            Cmd::new("shipit_copy")
                .arg(src.to_str().unwrap())
                .arg(dest.to_str().unwrap())
                .arg("644"),
        ]);
        let status = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(script.render())
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root-owned\n");
        let meta = std::fs::symlink_metadata(&dest).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn refuses_a_directory_others_can_write() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let (code, err) = write_sh(&open.join("app.env"), None);
        assert_eq!(code, 95, "{err}");
        assert!(err.contains("777"), "{err}");
        assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
    }
}
