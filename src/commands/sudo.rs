//! Running a step as root through `sudo -n` (`ssh.sudo = true`): the SSH user owns the
//! release tree, and only what lives outside it (the env file in `/etc`, units, the Nginx
//! site, the backup directory, Compose) needs root. The transport wraps the requests marked
//! root with [`wrap`]; the dead-deployer guard, which runs as the SSH user, wraps its root
//! undos the same way.
//!
//! `-n` (never prompt): a rule that wants a password fails at once instead of waiting for a
//! terminal nobody types into. [`probe`] tells that apart by exit code before the first
//! root step, so the error can name the sudoers rule to add.

use crate::shell::Cmd;

/// `sudo -n -- sh -c '<cmd>'`: the whole script as one quoted argument, so it cannot change
/// the command around it; stdin passes through to the script (secrets stay on stdin).
pub fn wrap(cmd: &Cmd) -> Cmd {
    Cmd::new("sudo")
        .arg("-n")
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg(cmd.render())
}

/// Whether root works without a password: exit 0 when it does,
/// [`NO_SUDO`](super::exit::NO_SUDO) when `sudo` is not installed,
/// [`SUDO_REFUSED`](super::exit::SUDO_REFUSED) (sudo's own words on stderr) when it wants a
/// password or the user may not run commands as root.
pub fn probe() -> Cmd {
    Cmd::new(
        r#"command -v sudo >/dev/null 2>&1 || { echo "sudo is not installed" >&2; exit 118; }
sudo -n -- true </dev/null >/dev/null || exit 119"#,
    )
}

/// The sudoers rule that makes `ssh.sudo` work for `user` (for `/etc/sudoers.d/`).
pub fn rule(user: &str) -> String {
    format!("{user} ALL=(root) NOPASSWD: ALL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_reaches_sh_under_sudo_unchanged_with_its_stdin() {
        let script = Cmd::seq([
            Cmd::assign("path", "/etc/it's $here `x`.env"),
            Cmd::new(r#"printf '%s|' "$path"; cat"#),
        ]);
        let wrapped = wrap(&script);
        assert!(wrapped.render().starts_with("sudo -n -- sh -c "));
        // A stand-in `sudo` that checks its options and runs the rest as given.
        let fake =
            Cmd::new(r#"sudo() { [ "$1" = -n ] && [ "$2" = -- ] || exit 9; shift 2; "$@"; }"#);
        let (code, out, _) =
            crate::commands::release::tests::run_sh(&Cmd::seq([fake, wrapped]), b"stdin", None);
        assert_eq!((code, out.as_str()), (0, "/etc/it's $here `x`.env|stdin"));
    }
}
