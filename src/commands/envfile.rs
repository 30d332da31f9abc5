//! The env file on the host. The next one is staged with [`files::write`](super::files::write)
//! (content on stdin, never a command line; a fresh file made exclusively, chmod 0600 and
//! chowned to the app user *before* any content is written, in a directory that passes
//! [`strict`](super::strict)), then [`activate`] renames it over the live one at the
//! switch, so no reader ever sees a partial file or loose permissions.
//!
//! Staging belongs to one run: the staged file is named after the run's token
//! ([`next_path`]), so no other run ever reads or installs it; the run removes it on every
//! way out ([`discard`]) and `shipit unlock` removes every run's ([`discard_all`]).
//!
//! shipit replaces only a file it wrote: one whose first line is [`HEADER`] (every version
//! of shipit has written it). Anything else at the path (a file of the system or of a
//! person, a symlink, a directory) is refused with [`FOREIGN_FILE`](super::exit::FOREIGN_FILE).

use crate::deploy::envfile::HEADER;
use crate::shell::Cmd;

/// Refuses what is at `$path` unless it is absent or a regular file starting with `$header`.
const OURS: &str = r#"
if [ -L "$path" ] || { [ -e "$path" ] && [ ! -f "$path" ]; }; then
  printf '`%s` is not a regular file: shipit does not replace it\n' "$path" >&2; exit 96
fi
if [ -f "$path" ]; then
  IFS= read -r first < "$path" || first=
  if [ "$first" != "$header" ]; then
    printf '`%s` exists and was not written by shipit (its first line is not shipit'"'"'s header): shipit never replaces such a file; move it away or choose another `env.path`\n' "$path" >&2
    exit 96
  fi
fi"#;

/// Prints the current env file (to diff keys in memory); nothing when there is none. Exit
/// [`FOREIGN_FILE`](super::exit::FOREIGN_FILE) when the file there is not shipit's; exit
/// [`ENV_LOOSE`](super::exit::ENV_LOOSE), the content printed all the same, when its mode
/// is not 0600 or its owner not `owner` (the SSH user when `None`): it must be rewritten
/// even when its content is unchanged.
pub fn read(path: &str, owner: Option<&str>) -> Cmd {
    Cmd::seq([
        Cmd::assign("path", path),
        Cmd::assign("header", HEADER),
        Cmd::assign("owner", owner.unwrap_or("")),
        Cmd::new(OURS),
        Cmd::new(
            r#"
[ -f "$path" ] || exit 0
cat -- "$path" || exit 1
set -- $(stat -c '%a %u %U' -- "$path") || exit 1
if [ "$1" != 600 ]; then exit 97; fi
if [ -n "$owner" ]; then [ "$3" = "$owner" ] || [ "$2" = "$owner" ] || exit 97
else [ "$2" = "$(id -u)" ] || exit 97; fi
exit 0"#,
        ),
    ])
}

/// Where run `token` stages the next env file (0600, owner set) until the switch: next to
/// the live one, so that [`activate`] is one atomic rename.
pub fn next_path(path: &str, token: &str) -> String {
    format!("{path}.shipit-next-{token}")
}

/// At the switch: keeps a copy of the live env file for rollback and renames the file run
/// `token` staged over it (atomic). Run only on a host where this run staged one: exit
/// [`ENV_STAGING_GONE`](super::exit::ENV_STAGING_GONE) when it is not there any more (the
/// old file would go live with the new release as if nothing had changed).
pub fn activate(deploy_to: &str, path: &str, token: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::assign("path", path),
        Cmd::assign("next", next_path(path, token)),
        Cmd::assign("header", HEADER),
        Cmd::new(super::files::HANDBACK),
        Cmd::new(
            r#"
umask 077
# Checked first: a run whose staging is gone touches nothing (another run may own the host).
if [ ! -f "$next" ] || [ -L "$next" ]; then
  printf '`%s`, the env file this run staged, is gone (`shipit unlock` while this run held the lock?)\n' "$next" >&2
  exit 112
fi
prev="$base/.shipit/previous/env"
mkdir -p -- "$prev" && rm -f -- "$prev/env" "$prev/absent" || exit 1
shipit_handback "$base/.shipit/previous" "$prev""#,
        ),
        Cmd::new(OURS),
        Cmd::new(
            r#"
if [ -f "$path" ]; then cp -p -- "$path" "$prev/env" || exit 1; else : > "$prev/absent"; fi
mv -fT -- "$next" "$path""#,
        ),
    ])
}

/// Puts back the env file [`activate`] replaced (through a fresh temp file, renamed).
pub fn restore(deploy_to: &str, path: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::assign("path", path),
        Cmd::new(
            r#"
prev="$base/.shipit/previous/env"
if [ -f "$prev/env" ]; then
  tmp=$(mktemp "$path.shipit-tmp.XXXXXXXXXX") || exit 1
  cp -p -- "$prev/env" "$tmp" && mv -fT -- "$tmp" "$path" || { rm -f -- "$tmp"; exit 1; }
elif [ -f "$prev/absent" ]; then rm -f -- "$path"; fi"#,
        ),
    ])
}

/// Removes what run `token` staged (nothing when it was installed or never staged).
pub fn discard(path: &str, token: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("next", next_path(path, token)),
        Cmd::new(r#"rm -f -- "$next""#),
    ])
}

/// `shipit unlock`: removes every run's staged env file and temp files (no run holds the
/// lock any more), and the unnamed `<path>.shipit-next` of shipit versions before staging
/// was named by run.
pub fn discard_all(path: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("path", path),
        Cmd::new(
            r#"rm -f -- "$path.shipit-next" "$path.shipit-tmp" "$path".shipit-next-* "$path".shipit-tmp.*"#,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::release::tests::run_sh;

    /// (exit code, stdout).
    fn sh(cmd: &Cmd) -> (i32, String) {
        let (code, out, _) = run_sh(cmd, b"", None);
        (code, out)
    }

    #[test]
    fn only_shipits_own_file_is_read_or_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let base = base.to_str().unwrap();
        let path = dir.path().join("app.env");
        let p = path.to_str().unwrap();
        assert_eq!(sh(&read(p, None)), (0, String::new()));
        std::fs::write(&path, "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        assert_eq!(sh(&read(p, None)).0, 96);
        std::fs::write(next_path(p, "t1"), format!("{HEADER}\nA=1\n")).unwrap();
        assert_eq!(sh(&activate(base, p, "t1")).0, 96);
        assert!(std::fs::read_to_string(&path).unwrap().starts_with("root:"));
        // A file shipit wrote (any version) is replaced; a loose mode is reported.
        std::fs::write(&path, format!("{HEADER}\nA=0\n")).unwrap();
        let (code, out) = sh(&read(p, None));
        assert_eq!(code, 97, "{out}");
        assert!(out.ends_with("A=0\n"));
        // Another run's staged file is never installed: a run that staged one and finds it
        // gone stops.
        assert_eq!(sh(&activate(base, p, "t2")).0, 112);
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("A=0\n"));
        assert_eq!(sh(&activate(base, p, "t1")).0, 0);
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("A=1\n"));
        assert_eq!(sh(&restore(base, p)).0, 0);
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("A=0\n"));
        std::fs::write(next_path(p, "t3"), "x").unwrap();
        std::fs::write(format!("{p}.shipit-next"), "x").unwrap();
        assert_eq!(sh(&discard_all(p)).0, 0);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("app.env."))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
