//! The `StrictModes` preflight of a run that writes on its hosts (deploy, rollback, task,
//! backup), once per host after connecting and before the lock is taken (the lock itself is
//! written under `deploy_to`): every directory shipit may write in, and their ancestors,
//! pass [`commands::strict`]. A host that fails is named with the path, its owner and mode;
//! the run stops with nothing written anywhere.

use crate::commands::{self, exit};
use crate::execute::{self, RemoteError, timeout};
use crate::inventory::Inventory;
use crate::transport::fleet::Conn;

/// The trees under `deploy_to` that are never followed as symlinks (the guard's scripts,
/// which root runs later, and the previous copies it restores live in `.shipit/`).
pub const NO_LINKS: &[&str] = &[
    "releases",
    "shared",
    ".shipit",
    ".shipit/guard",
    ".shipit/previous",
];

/// (directories checked, directories that must not be symlinks) for `inventory`.
pub fn paths(inventory: &Inventory) -> (Vec<String>, Vec<String>) {
    let deploy_to = inventory.app.deploy_to.trim_end_matches('/');
    let mut dirs = vec![inventory.app.deploy_to.clone()];
    dirs.extend(root_dirs(inventory));
    let no_links = NO_LINKS
        .iter()
        .map(|sub| format!("{deploy_to}/{sub}"))
        .collect();
    (dirs, no_links)
}

/// The directories of [`paths`] that the steps needing root write in (with `ssh.sudo`, root
/// writes there, the SSH user under `deploy_to`).
fn root_dirs(inventory: &Inventory) -> Vec<String> {
    let mut dirs = Vec::new();
    if let Some(env) = &inventory.env {
        let parent = std::path::Path::new(&env.path)
            .parent()
            .and_then(|p| p.to_str())
            .unwrap_or("/");
        dirs.push(if parent.is_empty() { "/" } else { parent }.to_owned());
    }
    if let Some(backup) = &inventory.backup {
        dirs.push(backup.dir.clone());
    }
    if !inventory.systemd.is_empty() {
        dirs.push(commands::systemd::UNIT_DIR.to_owned());
    }
    if inventory.nginx.is_some() {
        dirs.push(commands::nginx::AVAILABLE.to_owned());
        dirs.push(commands::nginx::ENABLED.to_owned());
    }
    dirs
}

/// Checks every host; per host, `Err` with the reason when one of its paths is unsafe.
///
/// With `ssh.sudo`, the tree under `deploy_to` is checked as the SSH user and the rest as
/// root, each by who writes there; the root check is also where a host whose sudo wants a
/// password stops, before the lock, and where a missing `deploy_to` is made (the SSH user's,
/// mode 0755: `/opt` is root's).
pub async fn preflight(conns: &[Conn<'_>], inventory: &Inventory) -> Vec<Result<(), RemoteError>> {
    let (dirs, no_links) = paths(inventory);
    let cmd = commands::strict::preflight(&dirs, &no_links);
    let user_cmd =
        commands::strict::preflight(std::slice::from_ref(&inventory.app.deploy_to), &no_links);
    let root_dirs = root_dirs(inventory);
    let checks = conns.iter().map(|c| {
        let (cmd, user_cmd, root_dirs) = (&cmd, &user_cmd, &root_dirs);
        async move {
            let what = "checking the paths shipit writes";
            let result = match c.transport.sudo_login() {
                None => execute::run(c, "preflight", what, cmd, timeout::SHORT).await,
                Some(login) => {
                    let root_cmd = commands::strict::preflight_root(
                        root_dirs,
                        &inventory.app.deploy_to,
                        login,
                    );
                    match execute::run(c, "preflight", what, user_cmd, timeout::SHORT).await {
                        Ok(_) => {
                            execute::run_root(c, "preflight", what, &root_cmd, timeout::SHORT)
                                .await
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            match result {
                Ok(_) => Ok(()),
                Err(e) if e.is(exit::UNSAFE_PATH) => {
                    let message = format!(
                        "refusing to write on this host: {}; every directory shipit writes in and its ancestors must be owned by root or the SSH user and not writable by group or others",
                        e.stderr_tail
                    );
                    Err(e.saying(message))
                }
                Err(e) => Err(e),
            }
        }
    });
    futures::future::join_all(checks).await
}
