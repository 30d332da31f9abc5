//! Reaching the selected hosts: one connection per host through the inventory's transport,
//! and running a task per host with a bound on how many run at once.
//!
//! Every host's outcome is collected in inventory order; one failure never hides another.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;

use futures::StreamExt;

use crate::inventory::{Host, Inventory, TransportKind};
use crate::ssh::reach::Reach;
use crate::transport::local::LocalTransport;
use crate::transport::ssh::SshConnector;
use crate::transport::{ConnectError, SshSettings, Transport};

/// Opens connections for one run.
pub enum Connector {
    Local,
    /// Scripted hosts for unit tests of whole runs ([`crate::deploy::fake`]).
    #[cfg(test)]
    #[allow(private_interfaces)]
    Fake(crate::deploy::fake::Script),
    Ssh {
        ssh: Box<SshConnector>,
        /// How each selected host is reached (inventory, `~/.ssh/config`, defaults).
        reach: HashMap<String, Reach>,
        /// `ssh.sudo`: requests marked root run through `sudo -n`.
        sudo: bool,
    },
}

impl Connector {
    pub fn new(inventory: &Inventory, settings: &SshSettings, reach: Vec<Reach>) -> Connector {
        match inventory.transport {
            TransportKind::Local => Connector::Local,
            TransportKind::Ssh => Connector::Ssh {
                ssh: Box::new(SshConnector::new(settings)),
                reach: reach
                    .into_iter()
                    .map(|r| (r.target.host.clone(), r))
                    .collect(),
                sudo: inventory.ssh.sudo,
            },
        }
    }

    /// How `host` is reached, with each setting's origin (`None` on the local transport).
    pub fn reach(&self, host: &str) -> Option<&Reach> {
        match self {
            Connector::Local => None,
            #[cfg(test)]
            Connector::Fake(_) => None,
            Connector::Ssh { reach, .. } => reach.get(host),
        }
    }

    /// Opens `host`'s connection with the settings resolved for it.
    pub async fn connect(&self, host: &Host) -> Result<Box<dyn Transport>, ConnectError> {
        match self {
            Connector::Local => Ok(Box::new(LocalTransport)),
            #[cfg(test)]
            Connector::Fake(script) => Ok(script.transport(&host.name)),
            Connector::Ssh { ssh, reach, sudo } => match reach.get(&host.name) {
                Some(r) => Ok(Box::new(ssh.connect(&r.target).await?.with_sudo(*sudo))),
                // Every selected host is resolved before the first connection.
                None => Err(ConnectError::Protocol {
                    host: host.name.clone(),
                    reason: "no connection settings were resolved for it (a bug in shipit)"
                        .to_owned(),
                }),
            },
        }
    }
}

/// Runs `task` for every host, at most `parallel` at once; results in host order.
pub async fn each_host<'h, T, F, Fut>(hosts: &[&'h Host], parallel: usize, task: F) -> Vec<T>
where
    F: Fn(&'h Host) -> Fut,
    Fut: Future<Output = T>,
{
    futures::stream::iter(hosts.iter().map(|h| task(h)))
        .buffered(parallel.max(1))
        .collect()
        .await
}

/// One host's open connection, for the whole run.
pub struct Conn<'h> {
    pub host: &'h Host,
    pub transport: Box<dyn Transport>,
}

/// Open files a host's connection may hold: its socket, and a `ProxyCommand`'s or a jump
/// host's pipes.
const FILES_PER_HOST: u64 = 4;

/// Open files a run needs besides its hosts' (stdio, the runtime, temporary files): a
/// generous margin.
const FILES_BESIDES_HOSTS: u64 = 256;

/// Raises this process's soft limit on open files, up to its hard limit, when `hosts`
/// connections would not fit under it: the usual soft limit (1024) would stop a run near
/// two hundred and fifty hosts with jump hosts, a thousand without. Only when needed, so a
/// smaller run, and what it starts (hooks on the local transport, notifiers, the build),
/// keeps the limit it was given. A limit that cannot be raised stays: a host that then
/// cannot connect fails with "too many open files", and nothing is changed on it.
pub fn make_room_for(hosts: usize) {
    let need = hosts as u64 * FILES_PER_HOST + FILES_BESIDES_HOSTS;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 || limit.rlim_cur >= need {
        return;
    }
    limit.rlim_cur = need.min(limit.rlim_max);
    // SAFETY: setrlimit reads the struct it is given; a soft limit at most the hard one
    // needs no privilege.
    unsafe {
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// Connects to every host (at most `parallel` handshakes at once). Returns the open
/// connections and, separately, the hosts that could not be reached, in host order.
pub async fn connect_all<'h>(
    inventory: &Inventory,
    hosts: &[&'h Host],
    connector: &Connector,
    on_step: impl Fn(&str) + Sync,
) -> (Vec<Conn<'h>>, Vec<(&'h Host, ConnectError)>) {
    make_room_for(hosts.len());
    let on_step = &on_step;
    let results = each_host(hosts, inventory.rollout.parallel, |host| async move {
        on_step(&host.name);
        (host, connector.connect(host).await)
    })
    .await;
    let mut conns = Vec::new();
    let mut failed = Vec::new();
    for (host, result) in results {
        match result {
            Ok(transport) => conns.push(Conn { host, transport }),
            Err(e) => failed.push((host, e)),
        }
    }
    (conns, failed)
}

/// The verbose log line saying how a connected host's key was trusted (which known_hosts
/// line, pin or certificate authority), where there is a host key.
pub fn host_key_step(transport: &dyn Transport) -> Option<String> {
    transport
        .host_key()
        .map(|key| format!("connected; host key {key}"))
}

/// Closes every connection.
pub async fn close_all(conns: &[Conn<'_>]) {
    futures::future::join_all(conns.iter().map(|c| c.transport.close())).await;
}

/// The user's default keys, tried when the inventory names none (as `ssh` does).
pub fn default_identities(home: Option<&Path>) -> Vec<std::path::PathBuf> {
    let Some(home) = home else {
        return Vec::new();
    };
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|name| home.join(".ssh").join(name))
        .collect()
}
