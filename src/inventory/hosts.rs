//! `[[hosts]]`: the fleet, its roles, the one migrate host, and picking hosts by
//! `--hosts`/`--roles`.

use std::collections::BTreeMap;

use super::error::{ProblemKind, Problems, did_you_mean, suggest};
use super::raw::{RawHost, S};
use super::ssh::Ssh;
use super::validate::{Validator, port};
use super::{Inventory, TransportKind};

#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub roles: Vec<String>,
    /// `"<type> <base64>"`, pinned: beats known_hosts.
    pub host_key: Option<String>,
    pub vars: BTreeMap<String, toml::Value>,
    /// Whether the port is the inventory's (`hosts.port` or `ssh.port`) rather than the
    /// default 22, which `~/.ssh/config` may replace.
    pub port_given: bool,
}

impl Host {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

impl Validator<'_> {
    pub(super) fn hosts(
        &self,
        raw: Vec<S<RawHost>>,
        transport: TransportKind,
        ssh: &Ssh,
        p: &mut Problems<'_>,
    ) -> Vec<Host> {
        if raw.is_empty() {
            if transport == TransportKind::Local {
                // The local transport deploys to this machine: one implicit host.
                return vec![Host {
                    name: "local".to_owned(),
                    address: "localhost".to_owned(),
                    port: ssh.port,
                    roles: Vec::new(),
                    host_key: None,
                    vars: BTreeMap::new(),
                    port_given: true,
                }];
            }
            p.invalid(
                0..0,
                "hosts",
                "no hosts: add at least one `[[hosts]]` table with `name` and `address`",
            );
            return Vec::new();
        }
        if transport == TransportKind::Local {
            // Every host of the local transport is this machine with the same `deploy_to`:
            // two of them would lock each other out (the second lock is the first one's) and
            // stage the same tree twice at once.
            for extra in raw.iter().skip(1) {
                let (_, line, _) = p.sources.locate(raw[0].span().start);
                p.invalid(
                    extra.span(),
                    "hosts",
                    format!(
                        "the local transport deploys to this machine only, which the \
                         `[[hosts]]` at line {line} already is: keep one `[[hosts]]` (give it \
                         every role) or use `transport = \"ssh\"`"
                    ),
                );
            }
        }
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut hosts = Vec::new();
        for (i, spanned) in raw.into_iter().enumerate() {
            let span = spanned.span();
            let h = spanned.into_inner();
            let key = |field: &str| format!("hosts[{i}].{field}");
            let Some(name) = h.name else {
                p.missing(span, &key("name"));
                continue;
            };
            let ok = !name.get_ref().is_empty()
                && name
                    .get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                p.invalid(
                    name.span(),
                    &key("name"),
                    "use letters, digits, `.`, `_` and `-` only",
                );
            }
            let (_, line, _) = p.sources.locate(name.span().start);
            if let Some(first_line) = seen.get(name.get_ref()) {
                p.push(
                    name.span(),
                    ProblemKind::DuplicateHost {
                        name: name.get_ref().clone(),
                        first_line: *first_line,
                    },
                );
            } else {
                seen.insert(name.get_ref().clone(), line);
            }
            let address = match h.address {
                Some(a)
                    if a.get_ref().trim().is_empty()
                        || a.get_ref().contains(char::is_whitespace) =>
                {
                    p.invalid(
                        a.span(),
                        &key("address"),
                        "must be a host name or IP address",
                    );
                    a.into_inner()
                }
                Some(a) => a.into_inner(),
                None => name.get_ref().clone(),
            };
            let port_given = h.port.is_some() || ssh.given.port;
            let port = h.port.map_or(ssh.port, |v| port(&v, &key("port"), p));
            let mut roles = Vec::new();
            for r in h.roles {
                let ok = !r.get_ref().is_empty()
                    && r.get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
                if !ok {
                    p.invalid(
                        r.span(),
                        &key("roles"),
                        format!(
                            "role {:?}: use letters, digits, `_` and `-` only",
                            r.get_ref()
                        ),
                    );
                }
                roles.push(r.into_inner());
            }
            let host_key = h.host_key.map(|k| {
                if let Err(reason) = check_public_key(k.get_ref()) {
                    p.invalid(k.span(), &key("host_key"), reason);
                }
                k.get_ref()
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            });
            hosts.push(Host {
                name: name.into_inner(),
                address,
                port,
                roles,
                host_key,
                vars: h.vars,
                port_given,
            });
        }
        hosts
    }
}

pub(super) fn migrate_host(hosts: &[Host], p: &mut Problems<'_>) -> usize {
    let tagged: Vec<usize> = (0..hosts.len())
        .filter(|&i| hosts[i].has_role("migrate"))
        .collect();
    if tagged.len() > 1 {
        let span = p.section("[hosts]");
        p.push(
            span,
            ProblemKind::ManyMigrateHosts {
                hosts: tagged.iter().map(|&i| hosts[i].name.clone()).collect(),
            },
        );
    }
    tagged.first().copied().unwrap_or(0)
}

/// Checks the shape of an OpenSSH public key line: `<type> <base64> [comment]`.
pub fn check_public_key(line: &str) -> Result<(), String> {
    use base64::Engine;
    let mut words = line.split_whitespace();
    let (Some(kind), Some(blob)) = (words.next(), words.next()) else {
        return Err("expected `<key type> <base64>`, e.g. the output of `ssh-keyscan`".to_owned());
    };
    const TYPES: &[&str] = &[
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    if !TYPES.contains(&kind) {
        return Err(format!("unsupported key type `{kind}`"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| "the key is not valid base64".to_owned())?;
    // The blob starts with its own type name; a mismatch means a pasted-wrong key.
    let named = bytes
        .get(4..)
        .and_then(|rest| {
            let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
            rest.get(..len)
        })
        .is_some_and(|name| name == kind.as_bytes());
    if !named {
        return Err(format!("the key data is not a `{kind}` key"));
    }
    Ok(())
}

/// Hosts picked by `--hosts` and `--roles` (both: a host must match both).
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("no host named `{name}` in `{file}`{}", did_you_mean(.suggestion))]
    UnknownHost {
        name: String,
        file: String,
        suggestion: Option<String>,
    },
    #[error("no host has role `{role}` in `{file}`")]
    UnknownRole { role: String, file: String },
    #[error("`--hosts` and `--roles` together select no host")]
    Empty,
}

impl Inventory {
    pub fn select(&self, names: &[String], roles: &[String]) -> Result<Vec<&Host>, SelectError> {
        let file = self.file.display().to_string();
        for name in names {
            if !self.hosts.iter().any(|h| &h.name == name) {
                return Err(SelectError::UnknownHost {
                    name: name.clone(),
                    file,
                    suggestion: suggest(name, self.hosts.iter().map(|h| h.name.as_str())),
                });
            }
        }
        for role in roles {
            if !self.hosts.iter().any(|h| h.has_role(role)) {
                return Err(SelectError::UnknownRole {
                    role: role.clone(),
                    file,
                });
            }
        }
        let picked: Vec<&Host> = self
            .hosts
            .iter()
            .filter(|h| names.is_empty() || names.contains(&h.name))
            .filter(|h| roles.is_empty() || roles.iter().any(|r| h.has_role(r)))
            .collect();
        if picked.is_empty() {
            return Err(SelectError::Empty);
        }
        Ok(picked)
    }
}
