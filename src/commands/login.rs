//! The interactive login of `shipit shell`: the SSH user's own login shell, started in the
//! current release directory.

use crate::shell::Cmd;

/// Changes into the release `current` points at (its real path, so `pwd` names the release)
/// and replaces itself with the user's login shell (`$SHELL -l`, `sh` when unset). On a host
/// where nothing is deployed yet, says so and starts in the home directory instead.
pub fn shell(deploy_to: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::new(
            r#"
if ! cd -P -- "$base/current" 2>/dev/null; then
  printf 'shipit: nothing is deployed under %s yet (no `current`): starting in the home directory\n' "$base" >&2
  cd || exit 1
fi
exec "${SHELL:-/bin/sh}" -l"#,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_starts_in_the_current_release_or_at_home() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("my app");
        let release = base.join("releases/20260101T000000Z-abc");
        std::fs::create_dir_all(&release).unwrap();
        // A "login shell" that says where it started and how it was called.
        let login = dir.path().join("login");
        std::fs::write(&login, "#!/bin/sh\necho \"$(pwd -P) $*\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&login, std::fs::Permissions::from_mode(0o755)).unwrap();
        let run = || {
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(shell(base.to_str().unwrap()).render())
                .env("SHELL", &login)
                .env("HOME", dir.path())
                .output()
                .unwrap();
            (
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (out, err) = run();
        assert_eq!(out, format!("{} -l\n", dir.path().display()), "{err}");
        assert!(err.contains("nothing is deployed under"), "{err}");
        std::os::unix::fs::symlink("releases/20260101T000000Z-abc", base.join("current")).unwrap();
        let (out, err) = run();
        assert_eq!(out, format!("{} -l\n", release.display()), "{err}");
        assert_eq!(err, "");
    }
}
