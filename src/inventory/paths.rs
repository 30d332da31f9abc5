//! Remote paths: their shape, and where on a host shipit may keep trees and the env file.

use super::error::Problems;
use super::raw::S;

/// Where shipit may write on a host, decided at load so a typo or a hostile inventory
/// stops before any connection (each refusal names the file, line and column).
///
/// The rule: shipit keeps trees of its own (`app.deploy_to`, `backup.dir`) strictly
/// below a directory that holds such trees, never in a tree that belongs to the system.
///
/// - [`SYSTEM_TREES`] belong to the operating system and its packages (`/etc`, `/usr`
///   with `/usr/local`, `/boot`, `/var/log`, ...): neither they nor anything below them
///   are accepted (`/usr/local/lib`, `/boot/efi` are refused).
/// - [`SHARED_DIRS`] hold the trees of many apps and users (`/`, `/opt`, `/srv`, `/home`,
///   `/var/lib`, `/tmp`, ...): accepted only strictly below (`/opt/shop`), since
///   pruning or a `shared/` link there would reach someone else's files. A home directory
///   (`/home/<user>`, `/root`) is such a directory too, and its hidden entries (`~/.ssh`,
///   `~/.config`) are a user's configuration, refused with their subtrees.
/// - `env.path` is a file: in `/etc` (or below), the one system tree where services keep
///   their configuration, it must be named `*.env` (e.g. `/etc/<app>.env`), a name no
///   system program reads; anywhere else its directory follows the rule for trees above
///   (`/opt/<app>/.env`). On the host, an existing file at `env.path` is replaced only when
///   shipit wrote it (see [`commands::envfile`](crate::commands::envfile)).
pub const SYSTEM_TREES: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/efi",
    "/etc",
    "/gnu",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/lost+found",
    "/nix",
    "/proc",
    "/run",
    "/sbin",
    "/snap",
    "/sys",
    "/usr",
    "/var/cache",
    "/var/lib/apt",
    "/var/lib/dnf",
    "/var/lib/dpkg",
    "/var/lib/flatpak",
    "/var/lib/pacman",
    "/var/lib/polkit-1",
    "/var/lib/rpm",
    "/var/lib/snapd",
    "/var/lib/sudo",
    "/var/lib/systemd",
    "/var/lib/yum",
    "/var/lock",
    "/var/log",
    "/var/mail",
    "/var/run",
    "/var/spool",
];

/// Directories that hold many apps' trees: accepted only strictly below (see
/// [`SYSTEM_TREES`]).
pub const SHARED_DIRS: &[&str] = &[
    "/",
    "/home",
    "/media",
    "/mnt",
    "/opt",
    "/srv",
    "/tmp",
    "/var",
    "/var/backups",
    "/var/lib",
    "/var/local",
    "/var/opt",
    "/var/tmp",
    "/var/www",
];

/// The system tree `path` (absolute, normalized) is in, if any.
fn system_tree(path: &str) -> Option<&'static str> {
    SYSTEM_TREES.iter().copied().find(|tree| {
        path == *tree
            || path
                .strip_prefix(tree)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Why `path` (absolute, normalized) cannot hold a tree of shipit's, if it cannot.
pub fn tree_problem(path: &str) -> Option<String> {
    if SHARED_DIRS.contains(&path) || SYSTEM_TREES.contains(&path) {
        let example = if path == "/" || SYSTEM_TREES.contains(&path) {
            "/opt"
        } else {
            path
        };
        return Some(format!(
            "`{path}` is a system directory; use a directory of the app's own, e.g. `{example}/<app>`"
        ));
    }
    if let Some(tree) = system_tree(path) {
        return Some(format!(
            "`{path}` is in `{tree}`, a tree of the system: shipit never writes there; use a directory of the app's own, e.g. `/opt/<app>`"
        ));
    }
    // A home: `/home/<user>`, or root's, `/root`; then what is below it.
    let mut parts = path.split('/').skip(1);
    let in_home = match parts.next() {
        Some("home") => parts.next().is_some(),
        Some("root") => true,
        _ => false,
    };
    if in_home {
        match parts.next() {
            None => {
                return Some(format!(
                    "`{path}` is a home directory; use a directory of the app's own below it, e.g. `{path}/<app>`"
                ));
            }
            Some(hidden) if hidden.starts_with('.') => {
                return Some(format!(
                    "`{path}` is in `{hidden}`, a user's configuration: shipit never writes there"
                ));
            }
            Some(_) => {}
        }
    }
    None
}

/// Why `env.path` (absolute, normalized) is refused, if it is (the rule on
/// [`SYSTEM_TREES`]).
///
/// The env file belongs to the app's user, who can rewrite it; root must never read it as
/// configuration of its own. So, wherever it is, it is named `.env` or `*.env` (no program
/// takes that extension from a directory of includes: polkit reads `*.pkla`, Apache
/// `*.conf`), and no directory on its path is one whose every file some program reads
/// ([`include_dir`]: `cron.d`, `bash_completion.d`, Nginx's `sites-enabled`, `/etc/skel`).
pub fn env_path_problem(path: &str) -> Option<String> {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let dir = if dir.is_empty() { "/" } else { dir };
    if let Some(include) = dir.split('/').find(|c| include_dir(c)) {
        return Some(format!(
            "`{path}` is in `{include}`, a directory whose every file a program of the system reads: shipit never puts the env file (which the app's user can write) there; use e.g. `/etc/<app>.env`"
        ));
    }
    if system_tree(path) == Some("/etc") {
        if name.len() > ".env".len() && name.ends_with(".env") {
            return None;
        }
        return Some(format!(
            "`{path}` would replace a file of the system: in `/etc`, shipit writes only env files named `*.env`, e.g. `/etc/<app>.env`"
        ));
    }
    if name != ".env" && !(name.len() > ".env".len() && name.ends_with(".env")) {
        return Some(format!(
            "`{path}`: the env file is named `.env` or `*.env`, a name no program of the system reads as its configuration (e.g. `/etc/<app>.env`, `/opt/<app>/.env`)"
        ));
    }
    tree_problem(dir).map(|why| format!("the env file's directory: {why}"))
}

/// A directory whose every file some program reads as its own input: `*.d` (`cron.d`,
/// `sudoers.d`, `bash_completion.d`, `conf.d`, ...), `*-enabled` (Nginx and Apache include
/// `sites-enabled/*`), and `skel` (copied into every new home).
fn include_dir(name: &str) -> bool {
    name.ends_with(".d") || name.ends_with("-enabled") || name == "skel"
}

/// An absolute, normalized remote path. Returns whether it is valid.
pub(super) fn remote_path(value: &S<String>, key: &str, p: &mut Problems<'_>) -> bool {
    let v = value.get_ref();
    let reason = if !v.starts_with('/') {
        Some("must be an absolute path (start with `/`)")
    } else if v.len() > 1 && v.ends_with('/') {
        Some("must not end with `/`")
    } else if v != "/"
        && v.split('/')
            .skip(1)
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        Some("must be normalized: no `//`, `.` or `..` components")
    } else if v.chars().any(|c| c.is_control()) {
        Some("must not contain control characters")
    } else {
        None
    };
    if let Some(reason) = reason {
        p.invalid(value.span(), key, reason);
    }
    reason.is_none()
}
