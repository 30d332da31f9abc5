//! `[ssh]`: how shipit connects (user, port, keys, jump host, timeouts).

use std::path::PathBuf;
use std::time::Duration;

use super::error::Problems;
use super::raw::RawSsh;
use super::validate::{Validator, duration, port, unix_name};

#[derive(Debug)]
pub struct Ssh {
    pub user: String,
    pub port: u16,
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub jump: Option<Jump>,
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    /// `ssh.sudo`: the steps that need root (the env file, units, Nginx, backups, Compose)
    /// run through `sudo -n` as root; the rest as the SSH user, who owns the releases.
    pub sudo: bool,
    /// Which of the keys above the file sets: only those beat `~/.ssh/config`.
    pub given: SshGiven,
}

/// The `[ssh]` keys an inventory sets explicitly (the others have defaults).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SshGiven {
    pub user: bool,
    pub port: bool,
    pub connect_timeout: bool,
    pub keepalive_interval: bool,
}

/// `ssh.jump`: `[user@]host[:port]`; what it leaves out comes from `~/.ssh/config`, then
/// `ssh.user` and port 22.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jump {
    pub user: Option<String>,
    pub address: String,
    pub port: Option<u16>,
}

impl Validator<'_> {
    pub(super) fn ssh(&self, raw: RawSsh, p: &mut Problems<'_>) -> Ssh {
        let given = SshGiven {
            user: raw.user.is_some(),
            port: raw.port.is_some(),
            connect_timeout: raw.connect_timeout.is_some(),
            keepalive_interval: raw.keepalive_interval.is_some(),
        };
        let user = raw.user.map_or_else(
            || "root".to_owned(),
            |u| {
                unix_name(&u, "ssh.user", p);
                u.into_inner()
            },
        );
        let port = raw.port.map_or(22, |v| port(&v, "ssh.port", p));
        let identity = raw.identity.map(|i| self.local_path(&i, "ssh.identity", p));
        let known_hosts = raw
            .known_hosts
            .map(|k| self.local_path(&k, "ssh.known_hosts", p));
        let jump = raw.jump.and_then(|j| match parse_jump(j.get_ref()) {
            Ok(jump) => Some(jump),
            Err(reason) => {
                p.invalid(j.span(), "ssh.jump", reason);
                None
            }
        });
        let connect_timeout = duration(raw.connect_timeout, "ssh.connect_timeout", 10, p);
        let keepalive_interval = duration(raw.keepalive_interval, "ssh.keepalive_interval", 15, p);
        Ssh {
            user,
            port,
            identity,
            known_hosts,
            jump,
            connect_timeout,
            keepalive_interval,
            sudo: raw.sudo.unwrap_or(false),
            given,
        }
    }
}

/// `[user@]host[:port]`
pub(super) fn parse_jump(value: &str) -> Result<Jump, String> {
    let (user, rest) = match value.split_once('@') {
        Some((u, rest)) if !u.is_empty() => (Some(u.to_owned()), rest),
        Some(_) => return Err("empty user before `@`".to_owned()),
        None => (None, value),
    };
    let (address, port) = if let Some(inner) = rest.strip_prefix('[') {
        // [::1]:2222
        let (addr, after) = inner.split_once(']').ok_or("unclosed `[` in the address")?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected {after:?} after the address")),
        };
        (addr.to_owned(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((addr, p)) if !addr.contains(':') => (
                addr.to_owned(),
                Some(p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?),
            ),
            _ => (rest.to_owned(), None),
        }
    };
    if address.is_empty() || port == Some(0) {
        return Err("expected `[user@]host[:port]`".to_owned());
    }
    Ok(Jump {
        user,
        address,
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_forms() {
        assert_eq!(
            parse_jump("deploy@bastion:2222").unwrap(),
            Jump {
                user: Some("deploy".into()),
                address: "bastion".into(),
                port: Some(2222)
            }
        );
        let bare = parse_jump("bastion").unwrap();
        assert_eq!((bare.user, bare.port), (None, None));
        assert_eq!(parse_jump("[::1]:2200").unwrap().address, "::1");
        assert!(parse_jump("a@b:x").is_err());
    }
}
