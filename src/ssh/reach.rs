//! How each host is reached over SSH: what the inventory sets, else what `~/.ssh/config`
//! says for the host's address (OpenSSH's first match), else shipit's defaults — and where
//! each setting came from, which `shipit check -v` prints.
//!
//! Pure: the caller reads the config files and passes them in. Everything that can be wrong
//! here (a `ProxyCommand`, a jump chain, a bad `%` token) is found before any connection.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::inventory::{Host, Inventory};
use crate::ssh::config::{self, HostConfig, Jump, Local, Setting, SshConfig, Tokens};
use crate::transport::SshTarget;

const DEFAULT_USER: &str = "root";
const DEFAULT_PORT: u16 = 22;

/// OpenSSH's `UserKnownHostsFile` default, under the home directory.
const USER_KNOWN_HOSTS: [&str; 2] = [".ssh/known_hosts", ".ssh/known_hosts2"];

/// OpenSSH's default `IdentityFile`s, in its order, under the home directory.
const DEFAULT_IDENTITIES: [&str; 7] = [
    ".ssh/id_rsa",
    ".ssh/id_ecdsa",
    ".ssh/id_ecdsa_sk",
    ".ssh/id_ed25519",
    ".ssh/id_ed25519_sk",
    ".ssh/id_xmss",
    ".ssh/id_dsa",
];

/// OpenSSH's `GlobalKnownHostsFile` default, read after the user's files.
pub const SYSTEM_KNOWN_HOSTS: [&str; 2] = ["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"];

/// One host's connection settings, each with its origin.
#[derive(Debug)]
pub struct Reach {
    pub target: SshTarget,
    pub sources: Vec<Origin>,
}

/// A setting, its value and where it came from (the inventory, an ssh_config line, a default).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub setting: String,
    pub value: String,
    pub origin: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    #[error(
        "host `{host}`: {origin} sets `ProxyCommand`, which shipit does not run; use `ProxyJump` there, or `ssh.jump` in the inventory (`ProxyCommand none` for hosts reached directly)"
    )]
    ProxyCommand { host: String, origin: String },
    #[error(
        "host `{host}`: {origin} chains {hops} jump hosts (`ProxyJump {chain}`); shipit tunnels through one: set `ssh.jump` in the inventory, or give the host a single `ProxyJump`"
    )]
    Chain {
        host: String,
        origin: String,
        hops: usize,
        chain: String,
    },
    #[error("host `{host}`: {origin}: {reason}")]
    Bad {
        host: String,
        origin: String,
        reason: String,
    },
}

/// The key files the config names for a host.
struct Keys {
    files: Vec<PathBuf>,
    /// `IdentitiesOnly yes`.
    only: bool,
    /// `files` are OpenSSH's defaults (`IdentitiesOnly yes` without `IdentityFile`).
    defaults: bool,
}

/// What every host's resolution shares.
pub struct Resolver<'a> {
    pub inventory: &'a Inventory,
    /// `None`: `--no-ssh-config`, or no config file at all.
    pub config: Option<&'a SshConfig>,
    pub local: &'a Local,
    /// Set when the run brings its own key (`SHIPIT_SSH_KEY`): named as the identity.
    pub run_key: Option<&'a str>,
}

impl Resolver<'_> {
    fn inventory_origin(&self, key: &str) -> String {
        format!("inventory `{}` ({key})", self.inventory.file.display())
    }

    fn lookup(
        &self,
        host: &Host,
        alias: &str,
        user: Option<&str>,
    ) -> Result<HostConfig, ReachError> {
        let Some(config) = self.config else {
            return Ok(HostConfig::default());
        };
        config.resolve(alias, user).map_err(|e| match e {
            config::ConfigError::Invalid { origin, problem } => ReachError::Bad {
                host: host.name.clone(),
                origin: origin.to_string(),
                reason: problem,
            },
            other => ReachError::Bad {
                host: host.name.clone(),
                origin: "ssh_config".to_owned(),
                reason: other.to_string(),
            },
        })
    }

    /// How to reach `host`.
    pub fn resolve(&self, host: &Host) -> Result<Reach, ReachError> {
        let inv = self.inventory;
        let ssh = &inv.ssh;
        let mut sources = Vec::new();
        let alias = host.address.as_str();
        let given_user = ssh.given.user.then_some(ssh.user.as_str());
        let cfg = self.lookup(host, alias, given_user)?;

        let address = match &cfg.hostname {
            Some(s) => {
                let address = config::host_name(&s.value);
                sources.push(source("address", &address, origin(s), Some(alias)));
                address
            }
            None => {
                let address = config::host_name(alias);
                sources.push(source(
                    "address",
                    &address,
                    self.inventory_origin("hosts.address"),
                    (address != alias).then_some(alias),
                ));
                address
            }
        };
        let user = pick(
            &mut sources,
            "user",
            given_user.map(|u| (u.to_owned(), self.inventory_origin("ssh.user"))),
            cfg.user.as_ref().map(|s| (s.value.clone(), origin(s))),
            DEFAULT_USER.to_owned(),
            |u| u.clone(),
        );
        let port = pick(
            &mut sources,
            "port",
            host.port_given
                .then(|| (host.port, self.inventory_origin("hosts.port or ssh.port"))),
            cfg.port.as_ref().map(|s| (s.value, origin(s))),
            DEFAULT_PORT,
            u16::to_string,
        );
        // `ConnectTimeout 0` means no timeout to OpenSSH; shipit always bounds a connection
        // attempt, so it keeps its own then.
        let config_timeout = cfg.connect_timeout.as_ref().filter(|s| !s.value.is_zero());
        if let Some(s) = &cfg.connect_timeout
            && s.value.is_zero()
            && !ssh.given.connect_timeout
        {
            sources.push(Origin {
                setting: "note".to_owned(),
                value: format!(
                    "`ConnectTimeout 0` (no timeout) is ignored: shipit bounds every connection attempt, here by its default of {}",
                    humantime::format_duration(ssh.connect_timeout)
                ),
                origin: origin(s),
            });
        }
        let connect_timeout = pick(
            &mut sources,
            "connect_timeout",
            ssh.given.connect_timeout.then(|| {
                (
                    ssh.connect_timeout,
                    self.inventory_origin("ssh.connect_timeout"),
                )
            }),
            config_timeout.map(|s| (s.value, origin(s))),
            ssh.connect_timeout,
            |d| humantime::format_duration(*d).to_string(),
        );
        // `ServerAliveInterval 0` turns keepalives off in OpenSSH; shipit needs them to
        // notice a dead host instead of waiting forever, so it keeps its own then.
        let config_keepalive = cfg
            .server_alive_interval
            .as_ref()
            .filter(|s| !s.value.is_zero());
        if let Some(s) = &cfg.server_alive_interval
            && s.value.is_zero()
            && !ssh.given.keepalive_interval
        {
            sources.push(Origin {
                setting: "note".to_owned(),
                value: "`ServerAliveInterval 0` is ignored: shipit always sends keepalives, to notice a dead host".to_owned(),
                origin: origin(s),
            });
        }
        let keepalive_interval = pick(
            &mut sources,
            "keepalive_interval",
            ssh.given.keepalive_interval.then(|| {
                (
                    ssh.keepalive_interval,
                    self.inventory_origin("ssh.keepalive_interval"),
                )
            }),
            config_keepalive.map(|s| (s.value, origin(s))),
            ssh.keepalive_interval,
            |d| humantime::format_duration(*d).to_string(),
        );

        let key_alias = cfg
            .host_key_alias
            .as_ref()
            .map_or_else(|| alias.to_owned(), |s| s.value.to_ascii_lowercase());
        let tokens = Tokens {
            host: &address,
            alias,
            port,
            user: &user,
            key_alias: &key_alias,
            local: self.local,
        };
        let keys = self.identities(host, &cfg, &tokens, &mut sources)?;
        let known_hosts = self.known_hosts(host, &cfg, &tokens, &mut sources)?;

        let jump = self.jump(
            host,
            &cfg,
            &tokens,
            connect_timeout,
            keepalive_interval,
            &mut sources,
        )?;

        let host_key_alias = cfg.host_key_alias.as_ref().map(|s| {
            sources.push(source("host_key_alias", &key_alias, origin(s), None));
            key_alias.clone()
        });
        if let Some(pin) = &host.host_key {
            let kind = pin.split_whitespace().next().unwrap_or("");
            sources.push(source(
                "host_key",
                &format!("{kind} (pinned)"),
                self.inventory_origin("hosts.host_key"),
                None,
            ));
        }
        for note in &cfg.notes {
            sources.push(Origin {
                setting: "note".to_owned(),
                value: note.clone(),
                origin: "ssh_config".to_owned(),
            });
        }
        Ok(Reach {
            target: SshTarget {
                host: host.name.clone(),
                address,
                port,
                user,
                host_key: host.host_key.clone(),
                host_key_alias,
                jump,
                connect_timeout,
                keepalive_interval,
                identities: keys.files,
                identities_only: keys.only,
                identities_default: keys.defaults,
                known_hosts,
                revoked_host_keys: self.revoked_host_keys(&cfg, &mut sources),
            },
            sources,
        })
    }

    /// Where the host's key is looked up: the inventory's `ssh.known_hosts`, else the
    /// config's `UserKnownHostsFile`, else `~/.ssh/known_hosts{,2}`; then the config's
    /// `GlobalKnownHostsFile`, else the system's files.
    fn known_hosts(
        &self,
        host: &Host,
        cfg: &HostConfig,
        tokens: &Tokens<'_>,
        sources: &mut Vec<Origin>,
    ) -> Result<Vec<PathBuf>, ReachError> {
        let expand_all = |s: &Setting<Vec<String>>| -> Result<Vec<PathBuf>, ReachError> {
            s.value
                .iter()
                .map(|f| expand(host, f, s, tokens).map(PathBuf::from))
                .collect()
        };
        let home = &self.local.home;
        let (user, user_origin) = match (&self.inventory.ssh.known_hosts, &cfg.user_known_hosts) {
            (Some(file), _) => (vec![file.clone()], self.inventory_origin("ssh.known_hosts")),
            (None, Some(s)) => (expand_all(s)?, origin(s)),
            (None, None) if home.as_os_str().is_empty() => (Vec::new(), "default".to_owned()),
            (None, None) => (
                USER_KNOWN_HOSTS.iter().map(|f| home.join(f)).collect(),
                "default".to_owned(),
            ),
        };
        // OpenSSH fills in no `%` token here, only a leading `~`.
        let (global, global_origin) = match &cfg.global_known_hosts {
            Some(s) => (
                s.value
                    .iter()
                    .map(|f| config::tilde(f, home))
                    .collect::<Vec<_>>(),
                origin(s),
            ),
            None => (
                SYSTEM_KNOWN_HOSTS.iter().map(PathBuf::from).collect(),
                "default".to_owned(),
            ),
        };
        sources.push(source("known_hosts", &show_paths(&user), user_origin, None));
        sources.push(source(
            "global_known_hosts",
            &show_paths(&global),
            global_origin,
            None,
        ));
        Ok(user.into_iter().chain(global).collect())
    }

    /// `RevokedHostKeys`, with `~` made absolute (`none`: no file).
    fn revoked_host_keys(&self, cfg: &HostConfig, sources: &mut Vec<Origin>) -> Option<PathBuf> {
        let s = cfg.revoked_host_keys.as_ref()?;
        if s.value.eq_ignore_ascii_case("none") {
            return None;
        }
        let path = config::tilde(&s.value, &self.local.home);
        sources.push(source(
            "revoked_host_keys",
            &path.display().to_string(),
            origin(s),
            None,
        ));
        Some(path)
    }

    /// The keys to offer: the run's own (`SHIPIT_SSH_KEY`, `ssh.identity`), else those the
    /// config names (with `%` tokens expanded), else the defaults.
    fn identities(
        &self,
        host: &Host,
        cfg: &HostConfig,
        tokens: &Tokens<'_>,
        sources: &mut Vec<Origin>,
    ) -> Result<Keys, ReachError> {
        let none = Keys {
            files: Vec::new(),
            only: false,
            defaults: false,
        };
        if let Some(label) = self.run_key {
            sources.push(source(
                "identity",
                label,
                "the environment".to_owned(),
                None,
            ));
            return Ok(none);
        }
        if let Some(path) = &self.inventory.ssh.identity {
            sources.push(source(
                "identity",
                &path.display().to_string(),
                self.inventory_origin("ssh.identity"),
                None,
            ));
            return Ok(none);
        }
        let only = cfg.identities_only.as_ref().is_some_and(|s| s.value);
        let mut files = Vec::new();
        if cfg.identity_files.is_empty() && only {
            // OpenSSH then offers its default files, and no other agent key.
            let home = &self.local.home;
            files = DEFAULT_IDENTITIES.iter().map(|f| home.join(f)).collect();
            sources.push(source(
                "identity",
                &format!("{} (those that exist)", show_paths(&files)),
                "default (`IdentitiesOnly yes` without `IdentityFile`)".to_owned(),
                None,
            ));
        } else if cfg.identity_files.is_empty() {
            sources.push(source(
                "identity",
                "ssh-agent, ~/.ssh/id_ed25519, ~/.ssh/id_ecdsa, ~/.ssh/id_rsa",
                "default".to_owned(),
                None,
            ));
            return Ok(none);
        }
        for s in &cfg.identity_files {
            let path = PathBuf::from(expand(host, &s.value, s, tokens)?);
            // The same file by another spelling (`~/.ssh/k`, `%d/.ssh/k`) is offered once.
            if files.contains(&path) {
                continue;
            }
            sources.push(source(
                "identity",
                &path.display().to_string(),
                origin(s),
                None,
            ));
            files.push(path);
        }
        if let Some(s) = &cfg.identities_only {
            sources.push(source(
                "identities_only",
                if s.value { "yes" } else { "no" },
                origin(s),
                None,
            ));
        }
        Ok(Keys {
            defaults: cfg.identity_files.is_empty(),
            files,
            only,
        })
    }

    /// The bastion: `ssh.jump`, else the config's `ProxyJump` (one hop); its address is
    /// looked up in the config too. A `ProxyCommand` with neither is refused: connecting
    /// directly instead would surprise.
    fn jump(
        &self,
        host: &Host,
        cfg: &HostConfig,
        target: &Tokens<'_>,
        connect_timeout: Duration,
        keepalive_interval: Duration,
        sources: &mut Vec<Origin>,
    ) -> Result<Option<Box<SshTarget>>, ReachError> {
        let bad = |origin: String, reason: String| ReachError::Bad {
            host: host.name.clone(),
            origin,
            reason,
        };
        // Who logs in to the jump host when neither the hop nor its config says: the
        // inventory's `ssh.user` for `ssh.jump` (as documented), the local user for a
        // `ProxyJump`, as for `ssh -J`.
        let (hop, hop_origin, fallback_user) = if let Some(j) = &self.inventory.ssh.jump {
            (
                (j.user.clone(), j.address.clone(), j.port),
                self.inventory_origin("ssh.jump"),
                (
                    self.inventory.ssh.user.clone(),
                    if self.inventory.ssh.given.user {
                        self.inventory_origin("ssh.user")
                    } else {
                        "default".to_owned()
                    },
                ),
            )
        } else {
            match &cfg.proxy_jump {
                Some(Setting {
                    value: Jump::Hops(hops),
                    ..
                }) if hops.len() > 1 => {
                    let s = cfg.proxy_jump.as_ref().expect("matched");
                    return Err(ReachError::Chain {
                        host: host.name.clone(),
                        origin: origin(s),
                        hops: hops.len(),
                        chain: hops.join(","),
                    });
                }
                Some(
                    s @ Setting {
                        value: Jump::Hops(hops),
                        ..
                    },
                ) => {
                    // `%h %n %p %r` stand for the target, as in the `ProxyCommand` OpenSSH
                    // makes of a `ProxyJump`.
                    let text = config::expand_jump(&hops[0], target)
                        .map_err(|e| bad(origin(s), e.to_string()))?;
                    let hop = config::parse_hop(&text).map_err(|r| bad(origin(s), r))?;
                    // OpenSSH's check: a host that is its own jump host.
                    if hop.1 == target.host
                        && hop.2.unwrap_or(DEFAULT_PORT) == target.port
                        && hop.0.as_deref().unwrap_or(target.user) == target.user
                    {
                        return Err(bad(
                            origin(s),
                            format!(
                                "`ProxyJump {}` names `{}` itself, a loop `ssh` refuses too (\"jumphost loop\"); leave the jump host out of that block, e.g. `Host * !{}`",
                                hops[0], target.alias, target.alias
                            ),
                        ));
                    }
                    (
                        hop,
                        origin(s),
                        (self.local.user.clone(), "the local user".to_owned()),
                    )
                }
                Some(_) => return Ok(None),
                None => {
                    if let Some(s) = &cfg.proxy_command
                        && !s.value.eq_ignore_ascii_case("none")
                    {
                        return Err(ReachError::ProxyCommand {
                            host: host.name.clone(),
                            origin: origin(s),
                        });
                    }
                    return Ok(None);
                }
            }
        };
        let (hop_user, hop_alias, hop_port) = hop;
        let jcfg = self.lookup(host, &hop_alias, hop_user.as_deref())?;
        // The jump host is reached directly: a `ProxyCommand` of its own would be skipped.
        if jcfg.proxy_jump.is_none()
            && let Some(s) = &jcfg.proxy_command
            && !s.value.eq_ignore_ascii_case("none")
        {
            return Err(ReachError::ProxyCommand {
                host: host.name.clone(),
                origin: format!("{} (for the jump host `{hop_alias}`)", origin(s)),
            });
        }
        // The jump host's own `ProxyJump` would make a chain. One naming the jump host
        // itself, as a `Host *` block's does, is left out: the jump host is reached
        // directly (where `ssh` stops with "jumphost loop").
        let names_itself = |hop: &str| {
            config::parse_hop(hop).is_ok_and(|(_, h, _)| h.eq_ignore_ascii_case(&hop_alias))
        };
        if let Some(s) = &jcfg.proxy_jump
            && let Jump::Hops(hops) = &s.value
            && !(hops.len() == 1 && names_itself(&hops[0]))
        {
            return Err(ReachError::Chain {
                host: host.name.clone(),
                origin: format!("{} (for the jump host `{hop_alias}`)", origin(s)),
                hops: hops.len() + 1,
                chain: format!("{},{hop_alias}", hops.join(",")),
            });
        }
        let address = config::host_name(
            jcfg.hostname
                .as_ref()
                .map_or(hop_alias.as_str(), |s| s.value.as_str()),
        );
        let (juser, user_origin) = match (hop_user, &jcfg.user) {
            (Some(u), _) => (u, hop_origin.clone()),
            (None, Some(s)) => (s.value.clone(), origin(s)),
            (None, None) => fallback_user,
        };
        let (jport, port_origin) = match (hop_port, &jcfg.port) {
            (Some(p), _) => (p, hop_origin.clone()),
            (None, Some(s)) => (s.value, origin(s)),
            (None, None) => (DEFAULT_PORT, "default".to_owned()),
        };
        let address_origin = jcfg.hostname.as_ref().map_or(hop_origin.clone(), origin);
        sources.push(source(
            "jump",
            &format!("{juser}@{address}:{jport}"),
            hop_origin,
            None,
        ));
        sources.push(source(
            "jump address",
            &address,
            address_origin,
            Some(&hop_alias),
        ));
        sources.push(source("jump user", &juser, user_origin, None));
        sources.push(source("jump port", &jport.to_string(), port_origin, None));
        let key_alias = jcfg
            .host_key_alias
            .as_ref()
            .map_or_else(|| hop_alias.clone(), |s| s.value.to_ascii_lowercase());
        let tokens = Tokens {
            host: &address,
            alias: &hop_alias,
            port: jport,
            user: &juser,
            key_alias: &key_alias,
            local: self.local,
        };
        let mut jump_sources = Vec::new();
        let keys = self.identities(host, &jcfg, &tokens, &mut jump_sources)?;
        let known_hosts = self.known_hosts(host, &jcfg, &tokens, &mut jump_sources)?;
        let revoked_host_keys = self.revoked_host_keys(&jcfg, &mut jump_sources);
        if let Some(s) = &jcfg.host_key_alias {
            jump_sources.push(source("host_key_alias", &key_alias, origin(s), None));
        }
        jump_sources.extend(jcfg.notes.iter().map(|note| Origin {
            setting: "note".to_owned(),
            value: note.clone(),
            origin: "ssh_config".to_owned(),
        }));
        sources.extend(jump_sources.into_iter().map(|s| Origin {
            setting: format!("jump {}", s.setting),
            ..s
        }));
        Ok(Some(Box::new(SshTarget {
            host: hop_alias.clone(),
            address,
            port: jport,
            user: juser,
            host_key: None,
            host_key_alias: jcfg.host_key_alias.is_some().then_some(key_alias),
            jump: None,
            connect_timeout,
            keepalive_interval,
            identities: keys.files,
            identities_only: keys.only,
            identities_default: keys.defaults,
            known_hosts,
            revoked_host_keys,
        })))
    }
}

fn show_paths(files: &[PathBuf]) -> String {
    if files.is_empty() {
        return "none".to_owned();
    }
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn origin<T>(s: &Setting<T>) -> String {
    s.origin.to_string()
}

/// `text` (from setting `s`) with its `%` tokens filled in; a bad token names the line.
fn expand<T>(
    host: &Host,
    text: &str,
    s: &Setting<T>,
    tokens: &Tokens<'_>,
) -> Result<String, ReachError> {
    config::expand(text, tokens).map_err(|e| ReachError::Bad {
        host: host.name.clone(),
        origin: origin(s),
        reason: e.to_string(),
    })
}

fn source(setting: &str, value: &str, origin: String, alias: Option<&str>) -> Origin {
    Origin {
        setting: setting.to_owned(),
        value: match alias {
            Some(a) if a != value => format!("{value} (for `{a}`)"),
            _ => value.to_owned(),
        },
        origin,
    }
}

/// The inventory's value, else the config's, else the default; records which.
fn pick<T>(
    sources: &mut Vec<Origin>,
    setting: &str,
    inventory: Option<(T, String)>,
    config: Option<(T, String)>,
    default: T,
    show: impl Fn(&T) -> String,
) -> T {
    let (value, from) = inventory
        .or(config)
        .unwrap_or_else(|| (default, "default".to_owned()));
    sources.push(source(setting, &show(&value), from, None));
    value
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn local() -> Local {
        Local {
            home: PathBuf::from("/home/me"),
            user: "me".to_owned(),
            uid: 1000,
            hostname: "laptop".to_owned(),
            env: Default::default(),
        }
    }

    fn inventory(ssh: &str, hosts: &str) -> Inventory {
        let text =
            format!("[app]\nname = \"shop\"\ndeploy_to = \"/opt/shop\"\n\n[ssh]\n{ssh}\n\n{hosts}");
        crate::inventory::for_tests(&text)
    }

    fn config(text: &str) -> SshConfig {
        SshConfig::parse(Path::new("/home/me/.ssh/config"), text, &local()).unwrap()
    }

    fn resolve(
        inv: &Inventory,
        cfg: &SshConfig,
        run_key: Option<&str>,
    ) -> Result<Reach, ReachError> {
        let l = local();
        let r = Resolver {
            inventory: inv,
            config: Some(cfg),
            local: &l,
            run_key,
        };
        r.resolve(&inv.hosts[0])
    }

    fn origin_of<'a>(reach: &'a Reach, setting: &str) -> &'a str {
        &reach
            .sources
            .iter()
            .find(|s| s.setting == setting)
            .unwrap_or_else(|| panic!("no {setting} in {:?}", reach.sources))
            .origin
    }

    const WEB: &str = "[[hosts]]\nname = \"web-1\"\n";

    #[test]
    fn the_config_fills_what_the_inventory_leaves_unset() {
        let inv = inventory("", WEB);
        let cfg = config(
            "Host web-*\n  HostName 10.0.0.5\n  User deploy\n  Port 2222\n  IdentityFile ~/.ssh/%r@%h\n  IdentitiesOnly yes\n  ConnectTimeout 3\n  ServerAliveInterval 5\n  HostKeyAlias web\n",
        );
        let r = resolve(&inv, &cfg, None).unwrap();
        let t = &r.target;
        assert_eq!(
            (t.address.as_str(), t.user.as_str(), t.port),
            ("10.0.0.5", "deploy", 2222)
        );
        assert_eq!(
            t.identities,
            vec![PathBuf::from("/home/me/.ssh/deploy@10.0.0.5")]
        );
        assert!(t.identities_only);
        assert_eq!(t.connect_timeout, Duration::from_secs(3));
        assert_eq!(t.keepalive_interval, Duration::from_secs(5));
        assert_eq!(t.host_key_alias.as_deref(), Some("web"));
        assert_eq!(origin_of(&r, "port"), "`/home/me/.ssh/config` line 4");
        assert_eq!(origin_of(&r, "address"), "`/home/me/.ssh/config` line 2");
    }

    #[test]
    fn the_inventory_wins() {
        let inv = inventory(
            "user = \"ops\"\nport = 2200\nidentity = \"/keys/ci\"\nconnect_timeout = \"9s\"\nkeepalive_interval = \"20s\"",
            WEB,
        );
        let cfg = config(
            "Host *\n  User deploy\n  Port 2222\n  IdentityFile ~/.ssh/other\n  ConnectTimeout 3\n  ServerAliveInterval 5\n",
        );
        let r = resolve(&inv, &cfg, None).unwrap();
        let t = &r.target;
        assert_eq!((t.user.as_str(), t.port), ("ops", 2200));
        assert!(t.identities.is_empty(), "the inventory's key alone");
        assert_eq!(t.connect_timeout, Duration::from_secs(9));
        assert_eq!(t.keepalive_interval, Duration::from_secs(20));
        for setting in [
            "user",
            "port",
            "identity",
            "connect_timeout",
            "keepalive_interval",
        ] {
            assert!(
                origin_of(&r, setting).starts_with("inventory `inventory/prod.toml`"),
                "{setting}: {}",
                origin_of(&r, setting)
            );
        }
        // A host's own port beats the config too.
        let inv = inventory("", "[[hosts]]\nname = \"web-1\"\nport = 2201\n");
        assert_eq!(resolve(&inv, &cfg, None).unwrap().target.port, 2201);
        // The environment's key beats every file.
        let r = resolve(&inventory("", WEB), &cfg, Some("the key in SHIPIT_SSH_KEY")).unwrap();
        assert!(r.target.identities.is_empty());
        assert_eq!(origin_of(&r, "identity"), "the environment");
    }

    #[test]
    fn defaults_where_nobody_says() {
        let inv = inventory("", WEB);
        let r = resolve(&inv, &config(""), None).unwrap();
        let t = &r.target;
        assert_eq!(
            (t.address.as_str(), t.user.as_str(), t.port),
            ("web-1", "root", 22)
        );
        assert_eq!(origin_of(&r, "user"), "default");
        assert_eq!(t.keepalive_interval, Duration::from_secs(15));
    }

    #[test]
    fn keepalives_stay_on() {
        let inv = inventory("", WEB);
        let r = resolve(&inv, &config("Host *\n  ServerAliveInterval 0\n"), None).unwrap();
        assert_eq!(r.target.keepalive_interval, Duration::from_secs(15));
        assert!(
            r.sources
                .iter()
                .any(|s| s.setting == "note" && s.value.contains("ServerAliveInterval 0"))
        );
    }

    #[test]
    fn connect_timeout_zero_keeps_the_default_with_a_note() {
        let inv = inventory("", WEB);
        let cfg = config("Host other\n  ConnectTimeout none\nHost *\n  ConnectTimeout 0\n");
        let r = resolve(&inv, &cfg, None).unwrap();
        assert_eq!(r.target.connect_timeout, Duration::from_secs(10));
        assert_eq!(origin_of(&r, "connect_timeout"), "default");
        let note = r.sources.iter().find(|s| s.setting == "note").unwrap();
        assert!(
            note.value
                .contains("`ConnectTimeout 0` (no timeout) is ignored"),
            "{note:?}"
        );
        assert_eq!(note.origin, "`/home/me/.ssh/config` line 4");
    }

    #[test]
    fn a_bad_hostname_elsewhere_does_not_stop_this_host() {
        let inv = inventory("", WEB);
        let cfg = config("Host db\n  HostName %r.example\nHost *\n  Port 2\n");
        assert_eq!(resolve(&inv, &cfg, None).unwrap().target.port, 2);
        let cfg = config("Host web-1\n  HostName %r.example\n");
        let err = resolve(&inv, &cfg, None).unwrap_err().to_string();
        assert!(
            err.starts_with("host `web-1`: `/home/me/.ssh/config` line 2: `HostName` may use only"),
            "{err}"
        );
    }

    #[test]
    fn identities_only_without_identity_file_offers_the_default_files() {
        let inv = inventory("", WEB);
        let r = resolve(&inv, &config("Host *\n  IdentitiesOnly yes\n"), None).unwrap();
        let t = &r.target;
        assert!(t.identities_only && t.identities_default);
        assert_eq!(t.identities[0], PathBuf::from("/home/me/.ssh/id_rsa"));
        assert_eq!(t.identities[3], PathBuf::from("/home/me/.ssh/id_ed25519"));
        assert_eq!(t.identities.len(), 7);
        assert_eq!(
            origin_of(&r, "identity"),
            "default (`IdentitiesOnly yes` without `IdentityFile`)"
        );
        // Without IdentitiesOnly: the agent and shipit's defaults, as before.
        let r = resolve(&inv, &config("Host *\n  IdentitiesOnly no\n"), None).unwrap();
        assert!(r.target.identities.is_empty() && !r.target.identities_only);
    }

    #[test]
    fn the_same_key_file_is_offered_once() {
        let inv = inventory("", WEB);
        let cfg = config(
            "Host web-1\n  IdentityFile ~/.ssh/k\n  IdentityFile %d/.ssh/k\n  IdentityFile /k2\nHost *\n  IdentityFile ~/.ssh/k\n",
        );
        let r = resolve(&inv, &cfg, None).unwrap();
        assert_eq!(
            r.target.identities,
            vec![PathBuf::from("/home/me/.ssh/k"), PathBuf::from("/k2")]
        );
        assert!(!r.target.identities_default);
    }

    #[test]
    fn proxy_jump_is_resolved_through_the_config() {
        let inv = inventory("user = \"ops\"", WEB);
        let cfg = config(
            "Host web-*\n  ProxyJump gate\nHost gate\n  HostName 192.0.2.1\n  Port 2022\n  User jumper\n  IdentityFile /keys/gate\n",
        );
        let jump = resolve(&inv, &cfg, None).unwrap().target.jump.unwrap();
        assert_eq!(
            (jump.address.as_str(), jump.port, jump.user.as_str()),
            ("192.0.2.1", 2022, "jumper")
        );
        assert_eq!(jump.identities, vec![PathBuf::from("/keys/gate")]);

        // The inventory's jump wins over ProxyJump; what it leaves out comes from the config
        // for its own alias.
        let inv = inventory("user = \"ops\"\njump = \"gate\"", WEB);
        let cfg = config("Host web-*\n  ProxyJump other\nHost gate\n  HostName 192.0.2.9\n");
        let jump = resolve(&inv, &cfg, None).unwrap().target.jump.unwrap();
        assert_eq!(
            (jump.address.as_str(), jump.port, jump.user.as_str()),
            ("192.0.2.9", 22, "ops")
        );

        // A `ProxyJump` hop without a user, whose config names none either: the local user,
        // as `ssh -J` logs in, not the target's user.
        let inv = inventory("user = \"ops\"", WEB);
        let cfg = config("Host web-*\n  User deploy\n  ProxyJump gate\n");
        let r = resolve(&inv, &cfg, None).unwrap();
        assert_eq!(r.target.jump.as_ref().unwrap().user, "me");
        assert_eq!(origin_of(&r, "jump user"), "the local user");

        // `ProxyJump none` (first match) means direct.
        let cfg = config("Host web-1\n  ProxyJump none\nHost *\n  ProxyJump gate\n");
        assert!(
            resolve(&inventory("", WEB), &cfg, None)
                .unwrap()
                .target
                .jump
                .is_none()
        );
    }

    #[test]
    fn proxy_jump_tokens_stand_for_the_target() {
        let inv = inventory("", WEB);
        let cfg = config(
            "Host web-*\n  HostName Web-1.Lan\n  User deploy\n  Port 2222\n  ProxyJump %r@gw-%h:22\n",
        );
        let r = resolve(&inv, &cfg, None).unwrap();
        let jump = r.target.jump.as_ref().unwrap();
        assert_eq!(
            (jump.user.as_str(), jump.address.as_str()),
            ("deploy", "gw-web-1.lan")
        );
        let cfg = config("Host *\n  ProxyJump gw-%u\n");
        let err = resolve(&inv, &cfg, None).unwrap_err().to_string();
        assert!(
            err.contains("line 2: unknown token `%u` in `gw-%u`"),
            "{err}"
        );
    }

    #[test]
    fn check_lists_the_jump_hosts_settings_each_with_its_line() {
        let inv = inventory("", WEB);
        let cfg = config(
            "Host web-1\n  ProxyJump gate\nHost gate\n  HostKeyAlias Bastion\n  Port 2022\n  HostName 192.0.2.1\n  User jumper\n",
        );
        let r = resolve(&inv, &cfg, None).unwrap();
        let jump: Vec<(&str, &str, &str)> = r
            .sources
            .iter()
            .filter(|s| s.setting.starts_with("jump"))
            .map(|s| (s.setting.as_str(), s.value.as_str(), s.origin.as_str()))
            .collect();
        let cfg_line = |n| format!("`/home/me/.ssh/config` line {n}");
        let (l2, l5, l6, l7, l4) = (
            cfg_line(2),
            cfg_line(5),
            cfg_line(6),
            cfg_line(7),
            cfg_line(4),
        );
        assert_eq!(jump[0], ("jump", "jumper@192.0.2.1:2022", l2.as_str()));
        assert_eq!(
            jump[1],
            ("jump address", "192.0.2.1 (for `gate`)", l6.as_str())
        );
        assert_eq!(jump[2], ("jump user", "jumper", l7.as_str()));
        assert_eq!(jump[3], ("jump port", "2022", l5.as_str()));
        assert!(
            jump.contains(&("jump host_key_alias", "bastion", l4.as_str())),
            "{jump:?}"
        );
        assert_eq!(
            r.target.jump.as_ref().unwrap().host_key_alias.as_deref(),
            Some("bastion")
        );
    }

    #[test]
    fn unusable_proxies_are_refused_before_connecting() {
        let inv = inventory("", WEB);
        let err = resolve(&inv, &config("Host *\n  ProxyJump a,b\n"), None).unwrap_err();
        assert!(
            err.to_string()
                .contains("chains 2 jump hosts (`ProxyJump a,b`)"),
            "{err}"
        );
        let err =
            resolve(&inv, &config("Host web-1\n  ProxyCommand nc %h %p\n"), None).unwrap_err();
        assert!(
            err.to_string()
                .contains("`/home/me/.ssh/config` line 2 sets `ProxyCommand`"),
            "{err}"
        );
        // `ProxyCommand none` is no proxy; a ProxyJump before it wins.
        assert!(resolve(&inv, &config("Host *\n  ProxyCommand none\n"), None).is_ok());
        let cfg = config("Host *\n  ProxyJump gate\n  ProxyCommand nc %h %p\n");
        assert!(resolve(&inv, &cfg, None).unwrap().target.jump.is_some());
        // A jump host behind a `ProxyCommand` of its own is refused too.
        let cfg = config("Host web-1\n  ProxyJump gate\nHost gate\n  ProxyCommand nc %h %p\n");
        let err = resolve(&inv, &cfg, None).unwrap_err().to_string();
        assert!(
            err.contains(
                "`/home/me/.ssh/config` line 4 (for the jump host `gate`) sets `ProxyCommand`"
            ),
            "{err}"
        );
        // A host that is its own jump host: the loop `ssh` refuses.
        let inv = inventory("", "[[hosts]]\nname = \"gate\"\n");
        let err = resolve(&inv, &config("Host *\n  ProxyJump gate\n"), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`ProxyJump gate` names `gate` itself"),
            "{err}"
        );
        // ... but a jump host whose own config names itself is reached directly.
        let inv = inventory("", WEB);
        let cfg = config("Host *\n  ProxyJump ops@gate:2022\n");
        let jump = resolve(&inv, &cfg, None).unwrap().target.jump.unwrap();
        assert_eq!((jump.user.as_str(), jump.port), ("ops", 2022));
        // A jump host that needs a jump of its own is a chain.
        let cfg = config("Host web-1\n  ProxyJump gate\nHost gate\n  ProxyJump outer\n");
        let err = resolve(&inv, &cfg, None).unwrap_err();
        assert!(err.to_string().contains("jump host `gate`"), "{err}");
    }

    #[test]
    fn known_hosts_files_follow_the_inventory_then_the_config() {
        let cfg =
            config("Host *\n  UserKnownHostsFile ~/.ssh/kh_%h\n  GlobalKnownHostsFile /dev/null\n");
        let r = resolve(&inventory("", WEB), &cfg, None).unwrap();
        assert_eq!(
            r.target.known_hosts,
            vec![
                PathBuf::from("/home/me/.ssh/kh_web-1"),
                PathBuf::from("/dev/null")
            ]
        );
        let inv = inventory("known_hosts = \"/project/kh\"", WEB);
        let r = resolve(&inv, &cfg, None).unwrap();
        assert_eq!(
            r.target.known_hosts,
            vec![PathBuf::from("/project/kh"), PathBuf::from("/dev/null")]
        );
        let r = resolve(&inventory("", WEB), &config(""), None).unwrap();
        assert_eq!(
            r.target.known_hosts,
            vec![
                PathBuf::from("/home/me/.ssh/known_hosts"),
                PathBuf::from("/home/me/.ssh/known_hosts2"),
                PathBuf::from("/etc/ssh/ssh_known_hosts"),
                PathBuf::from("/etc/ssh/ssh_known_hosts2"),
            ]
        );
    }

    #[test]
    fn global_known_hosts_files_take_no_tokens() {
        let cfg = config(
            "Host *\n  UserKnownHostsFile ~/kh-%k-%C\n  GlobalKnownHostsFile /etc/kh-%h ~/g\n  HostKeyAlias Pool\n",
        );
        let r = resolve(&inventory("", WEB), &cfg, None).unwrap();
        let files: Vec<String> = r
            .target
            .known_hosts
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        assert!(files[0].starts_with("/home/me/kh-pool-"), "{files:?}");
        assert_eq!(files[0].len(), "/home/me/kh-pool-".len() + 40);
        assert_eq!(files[1..], ["/etc/kh-%h", "/home/me/g"]);
    }

    #[test]
    fn host_names_and_host_key_aliases_are_lowercased_as_ssh_does() {
        let inv = inventory(
            "",
            "[[hosts]]\nname = \"web-1\"\naddress = \"Web-1.Example\"\n",
        );
        let r = resolve(&inv, &config("Host web-1.example\n  Port 1\n"), None).unwrap();
        assert_eq!(r.target.address, "web-1.example");
        // `Host` patterns compare with the name as typed.
        assert_eq!(r.target.port, 22);
        let cfg = config("Host *\n  HostName DB.Example\n  HostKeyAlias Pool-A\n");
        let r = resolve(&inventory("", WEB), &cfg, None).unwrap();
        assert_eq!(r.target.address, "db.example");
        assert_eq!(r.target.host_key_alias.as_deref(), Some("pool-a"));
        // Addresses are left as written.
        let cfg = config("Host *\n  HostName FE80::1\n");
        let r = resolve(&inventory("", WEB), &cfg, None).unwrap();
        assert_eq!(r.target.address, "FE80::1");
    }

    #[test]
    fn a_bad_token_names_the_line() {
        let inv = inventory("", WEB);
        let err = resolve(&inv, &config("Host *\n  IdentityFile ~/.ssh/%Q\n"), None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("host `web-1`: `/home/me/.ssh/config` line 2"),
            "{err}"
        );
    }
}
