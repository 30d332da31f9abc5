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
    let no_links = NO_LINKS
        .iter()
        .map(|sub| format!("{deploy_to}/{sub}"))
        .collect();
    (dirs, no_links)
}

/// Checks every host; per host, `Err` with the reason when one of its paths is unsafe.
pub async fn preflight(conns: &[Conn<'_>], inventory: &Inventory) -> Vec<Result<(), RemoteError>> {
    let (dirs, no_links) = paths(inventory);
    let cmd = commands::strict::preflight(&dirs, &no_links);
    let checks = conns.iter().map(|c| {
        let cmd = &cmd;
        async move {
            let what = "checking the paths shipit writes";
            match execute::run(c, "preflight", what, cmd, timeout::SHORT).await {
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
