//! The seam between shipit and a host: run one command, with a stdin stream, under a
//! deadline, and get its exit status with the tails of stdout and stderr; or run one under
//! a pseudo-terminal for a person ([`Transport::interactive`], `shipit shell`).
//!
//! Two implementations: [`local::LocalTransport`] (a child process on this machine) and
//! [`ssh::SshTransport`] (the only module that names the SSH library). Everything above this
//! module sees [`Transport`] and the error types here, never a backend's types.

pub mod fleet;
pub mod known_hosts;
pub mod local;
pub mod ssh;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::AsyncRead;

use crate::shell::{Cmd, Secret};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a command reads on stdin.
pub enum Stdin {
    /// Nothing: stdin is closed at once.
    Empty,
    /// A small payload known up front.
    Bytes(Vec<u8>),
    /// Secret content (an env file): same as `Bytes`, but never shown.
    Secret(Secret),
    /// A stream (an artifact), read to its end.
    Reader(Box<dyn AsyncRead + Send + Unpin>),
}

impl fmt::Debug for Stdin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stdin::Empty => f.write_str("Empty"),
            Stdin::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Stdin::Secret(_) => f.write_str("Secret([REDACTED])"),
            Stdin::Reader(_) => f.write_str("Reader"),
        }
    }
}

/// Which output stream a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Receives output chunks as they arrive (for streaming to the deployer's terminal).
pub type OutputSink<'a> = &'a (dyn Fn(Stream, &[u8]) + Send + Sync);

pub struct ExecRequest<'a> {
    pub cmd: &'a Cmd,
    pub stdin: Stdin,
    pub timeout: Duration,
    pub output: Option<OutputSink<'a>>,
    /// The command needs root (the env file outside the release tree, units, Nginx,
    /// backups, Compose): with `ssh.sudo` the SSH transport runs it through `sudo -n`.
    /// Everything else runs as the SSH user, who owns the releases.
    pub root: bool,
}

impl<'a> ExecRequest<'a> {
    pub fn new(cmd: &'a Cmd, timeout: Duration) -> ExecRequest<'a> {
        ExecRequest {
            cmd,
            stdin: Stdin::Empty,
            timeout,
            output: None,
            root: false,
        }
    }

    /// Marks the command as one that needs root (see [`ExecRequest::root`]).
    pub fn as_root(mut self) -> Self {
        self.root = true;
        self
    }

    pub fn stdin(mut self, stdin: Stdin) -> Self {
        self.stdin = stdin;
        self
    }

    pub fn output(mut self, sink: OutputSink<'a>) -> Self {
        self.output = Some(sink);
        self
    }
}

/// A terminal window's size, in characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSize {
    pub cols: u16,
    pub rows: u16,
}

/// A session for a person at a terminal ([`Transport::interactive`]): `cmd` runs under a
/// pseudo-terminal on the host, the bytes typed reach it as they come, and what it writes
/// goes to `output` as it comes. The caller owns the local terminal (raw mode, its size).
pub struct Interactive<'a> {
    pub cmd: &'a Cmd,
    /// `$TERM` of the local terminal, for the remote pseudo-terminal.
    pub term: String,
    pub size: WindowSize,
    /// Each new size of the local window.
    pub resized: tokio::sync::watch::Receiver<WindowSize>,
    /// The bytes typed; when it ends, the session's input ends.
    pub input: tokio::sync::mpsc::Receiver<Vec<u8>>,
    pub output: OutputSink<'a>,
}

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(u32),
    Signal(String),
}

impl Exit {
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// The last `limit` bytes of a stream; the start is dropped when it grows past that.
#[derive(Clone, Debug, Default)]
pub struct Tail {
    bytes: Vec<u8>,
    limit: usize,
    dropped: u64,
}

impl Tail {
    pub fn new(limit: usize) -> Tail {
        Tail {
            bytes: Vec::new(),
            limit,
            dropped: 0,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > self.limit {
            let cut = self.bytes.len() - self.limit;
            self.bytes.drain(..cut);
            self.dropped += cut as u64;
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// Whether the beginning was dropped.
    pub fn truncated(&self) -> bool {
        self.dropped > 0
    }
}

/// Limits of the kept output: enough for any probe, bounded for a chatty build.
pub const STDOUT_LIMIT: usize = 4 << 20;
pub const STDERR_LIMIT: usize = 64 << 10;

#[derive(Debug)]
pub struct ExecOutput {
    pub exit: Exit,
    pub stdout: Tail,
    pub stderr: Tail,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit.success()
    }
}

/// Collects output into tails and forwards it to the sink.
pub(crate) struct Collector<'a> {
    pub stdout: Tail,
    pub stderr: Tail,
    sink: Option<OutputSink<'a>>,
}

impl<'a> Collector<'a> {
    pub fn new(sink: Option<OutputSink<'a>>) -> Self {
        Collector {
            stdout: Tail::new(STDOUT_LIMIT),
            stderr: Tail::new(STDERR_LIMIT),
            sink,
        }
    }

    pub fn push(&mut self, stream: Stream, chunk: &[u8]) {
        match stream {
            Stream::Stdout => self.stdout.push(chunk),
            Stream::Stderr => self.stderr.push(chunk),
        }
        if let Some(sink) = self.sink {
            sink(stream, chunk);
        }
    }

    pub fn finish(self, exit: Exit) -> ExecOutput {
        ExecOutput {
            exit,
            stdout: self.stdout,
            stderr: self.stderr,
        }
    }
}

/// One open connection to one host, reused by every step of a run.
pub trait Transport: Send + Sync {
    /// Runs `req.cmd` with `sh` semantics, feeding `req.stdin`, within `req.timeout`.
    fn exec<'a>(&'a self, req: ExecRequest<'a>) -> BoxFuture<'a, Result<ExecOutput, ExecError>>;

    /// Streams `data` to the stdin of `cmd` (an upload) and returns how the command ended.
    fn upload<'a>(
        &'a self,
        cmd: &'a Cmd,
        data: Box<dyn AsyncRead + Send + Unpin>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ExecOutput, ExecError>> {
        self.exec(ExecRequest::new(cmd, timeout).stdin(Stdin::Reader(data)))
    }

    /// A TCP connection to `host:port` as the host sees it (over SSH: a direct-tcpip
    /// channel, so nothing needs a public port or curl on the host).
    fn connect_tcp<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<Box<dyn Tunnel>, ExecError>>;

    /// Runs `session.cmd` under a pseudo-terminal, wired to the local terminal, until it
    /// ends; returns how it ended. Transports without terminals refuse.
    fn interactive<'a>(
        &'a self,
        session: Interactive<'a>,
    ) -> BoxFuture<'a, Result<Exit, ExecError>> {
        Box::pin(async move {
            Err(ExecError::Start {
                command: session.cmd.render(),
                reason: "this transport opens no terminal sessions".to_owned(),
            })
        })
    }

    /// Whether the connection can still run commands (false once the session died).
    fn is_alive(&self) -> bool {
        true
    }

    /// How the host's key was trusted: its fingerprint and the known_hosts line, pin or
    /// certificate authority that vouched for it (`None` where there is no host key).
    fn host_key(&self) -> Option<&str> {
        None
    }

    /// The same for the jump host the connection is tunnelled through, if any.
    fn jump_host_key(&self) -> Option<&str> {
        None
    }

    /// The login user when requests marked root run through `sudo -n` (`ssh.sudo`), else
    /// `None` (everything runs as the login user, root or not). Under sudo `id -un` says
    /// root: what must end up the login user's (the env file without `app.user`) is
    /// chowned to this name.
    fn sudo_login(&self) -> Option<&str> {
        None
    }

    /// Closes the connection politely; further calls fail.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// A byte stream to a TCP port seen from the host.
pub trait Tunnel: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Tunnel for T {}

/// Why a command did not produce an exit status.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("`{command}` did not finish within {}", humantime::format_duration(*.after))]
    Timeout { command: String, after: Duration },
    #[error("the connection was lost while running `{command}`: {reason}")]
    Lost { command: String, reason: String },
    #[error("could not start `{command}`: {reason}")]
    Start { command: String, reason: String },
    #[error(
        "`{user}` cannot run commands as root on `{host}` through `sudo -n` (`ssh.sudo = true`): {reason}; \
         allow it without a password, e.g. `echo '{rule}' > /etc/sudoers.d/shipit` (mode 0440; check it with `visudo -c`), \
         or deploy as root (a narrower rule does not do: the steps run `sh -c` scripts as root)"
    )]
    Sudo {
        host: String,
        user: String,
        reason: String,
        rule: String,
    },
    #[error("reading stdin for `{command}` failed")]
    Stdin {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// At which stage a connection failed: `check` reports each as its own column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectStage {
    Reach,
    HostKey,
    Auth,
}

/// A host key that shipit refuses to trust.
#[derive(Clone, Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error(
        "the host key of `{host}` ({address}) is not known: {key_type} {fingerprint}{}\n  \
         after checking that fingerprint with the host's owner, add this line to `{known_hosts}`:\n  {line}",
        unused_note(.unused)
    )]
    Unknown {
        host: String,
        address: String,
        key_type: String,
        fingerprint: String,
        known_hosts: String,
        line: String,
        /// Entries for the host that were not used, and why; one per line.
        unused: Vec<String>,
    },
    #[error(
        "HOST KEY CHANGED for `{host}` ({address}): it offered {key_type} {fingerprint}, \
         but {origin} expects {expected}; someone may be intercepting the connection. \
         if the host was really re-keyed, replace that entry after checking the new fingerprint{}",
        unused_note(.unused)
    )]
    Changed {
        host: String,
        address: String,
        key_type: String,
        fingerprint: String,
        expected: String,
        origin: String,
        unused: Vec<String>,
    },
    #[error("cannot check the host key of `{host}` ({address}): {reason}")]
    RevocationList {
        host: String,
        address: String,
        reason: String,
    },
    #[error(
        "the host key of `{host}` ({address}), {key_type} {fingerprint}, is marked @revoked in {origin}"
    )]
    Revoked {
        host: String,
        address: String,
        key_type: String,
        fingerprint: String,
        origin: String,
    },
    #[error(
        "the host certificate of `{host}` ({address}) is signed by the authority in {origin}, but {reason}; \
         have the host re-certified (`ssh-keygen -s CA -h -n NAME`)"
    )]
    Certificate {
        host: String,
        address: String,
        reason: String,
        origin: String,
    },
}

/// Why a connection could not be made.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach `{host}` at {address}: {reason}")]
    Unreachable {
        host: String,
        address: String,
        reason: String,
    },
    #[error("`{host}` at {address} did not complete the SSH handshake within {}", humantime::format_duration(*.after))]
    TimedOut {
        host: String,
        address: String,
        after: Duration,
    },
    #[error(transparent)]
    HostKey(Box<HostKeyError>),
    #[error(
        "`{user}@{host}` refused every key shipit offered ({tried}){}; authorize one of them in the host's authorized_keys",
        not_offered_note(.not_offered)
    )]
    AuthRejected {
        host: String,
        user: String,
        tried: String,
        /// What the key limit kept back, empty when nothing was.
        not_offered: String,
    },
    #[error("no SSH key to offer for `{host}`: {reason}")]
    NoCredentials { host: String, reason: String },
    #[error("cannot use SSH key {origin}: {reason}")]
    BadKey { origin: String, reason: String },
    #[error("through jump host `{jump}`")]
    Jump {
        jump: String,
        #[source]
        inner: Box<ConnectError>,
    },
    #[error("ssh session with `{host}` failed: {reason}")]
    Protocol { host: String, reason: String },
}

impl ConnectError {
    pub fn stage(&self) -> ConnectStage {
        match self {
            ConnectError::Unreachable { .. }
            | ConnectError::TimedOut { .. }
            | ConnectError::Protocol { .. } => ConnectStage::Reach,
            ConnectError::HostKey(_) => ConnectStage::HostKey,
            ConnectError::AuthRejected { .. }
            | ConnectError::NoCredentials { .. }
            | ConnectError::BadKey { .. } => ConnectStage::Auth,
            ConnectError::Jump { .. } => ConnectStage::Reach,
        }
    }
}

fn unused_note(unused: &[String]) -> String {
    unused
        .iter()
        .map(|why| format!("\n  not used: {why}"))
        .collect()
}

fn not_offered_note(not_offered: &str) -> String {
    if not_offered.is_empty() {
        return String::new();
    }
    format!(
        "; it stopped there, at the limit of keys it offers (sshd's `MaxAuthTries` defaults to 6), before {not_offered}: name the right key with `IdentityFile` and `IdentitiesOnly yes` in `~/.ssh/config`, or with `ssh.identity`"
    )
}

/// How to reach one host over SSH; built by the caller from the inventory and
/// `~/.ssh/config`.
#[derive(Clone, Debug)]
pub struct SshTarget {
    /// The inventory's name for the host (the jump host's: its address as written).
    pub host: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    /// `"<type> <base64>"` from the inventory: beats known_hosts.
    pub host_key: Option<String>,
    /// The name the host key is recorded under instead of the address (`HostKeyAlias`).
    pub host_key_alias: Option<String>,
    /// The bastion the connection is tunnelled through.
    pub jump: Option<Box<SshTarget>>,
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    /// Keys `~/.ssh/config` names for this host (`IdentityFile`), offered first when the
    /// run has no key of its own (`ssh.identity`, `SHIPIT_SSH_KEY`).
    pub identities: Vec<PathBuf>,
    /// `IdentitiesOnly yes`: with `identities`, offer no other agent key.
    pub identities_only: bool,
    /// `identities` are OpenSSH's default key files (`IdentitiesOnly` without an
    /// `IdentityFile`): a missing one is skipped without a word, as `ssh` does.
    pub identities_default: bool,
    /// The known_hosts files to check the host key in, in lookup order.
    pub known_hosts: Vec<PathBuf>,
    /// `RevokedHostKeys`: a file of public keys refused for every host.
    pub revoked_host_keys: Option<PathBuf>,
}

/// Credentials and trust for every SSH connection of a run, read once by `main`.
#[derive(Clone, Debug, Default)]
pub struct SshSettings {
    /// `ssh.identity` from the inventory.
    pub identity: Option<PathBuf>,
    /// `$SHIPIT_SSH_KEY`: private key text (CI secrets).
    pub key_text: Option<Secret>,
    /// `$SHIPIT_SSH_PASSPHRASE`: for an encrypted key.
    pub passphrase: Option<Secret>,
    /// `$SSH_AUTH_SOCK`.
    pub agent_socket: Option<PathBuf>,
    /// Tried when no identity is configured and the agent has none that works.
    pub default_identities: Vec<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_key_names_the_entries_it_did_not_use() {
        let err = HostKeyError::Unknown {
            host: "web-1".into(),
            address: "web:2222".into(),
            key_type: "ssh-ed25519".into(),
            fingerprint: "SHA256:x".into(),
            known_hosts: "kh".into(),
            line: "[web]:2222 ssh-ed25519 AAAA".into(),
            unused: vec!["`kh` line 1 records another key".into()],
        };
        assert_eq!(
            err.to_string(),
            "the host key of `web-1` (web:2222) is not known: ssh-ed25519 SHA256:x\n  not used: `kh` line 1 records another key\n  after checking that fingerprint with the host's owner, add this line to `kh`:\n  [web]:2222 ssh-ed25519 AAAA"
        );
    }

    #[test]
    fn a_refusal_says_when_the_key_limit_kept_keys_back() {
        let refused = |not_offered: &str| {
            ConnectError::AuthRejected {
                host: "web-1".into(),
                user: "deploy".into(),
                tried: "agent key SHA256:a".into(),
                not_offered: not_offered.into(),
            }
            .to_string()
        };
        assert_eq!(
            refused(""),
            "`deploy@web-1` refused every key shipit offered (agent key SHA256:a); authorize one of them in the host's authorized_keys"
        );
        let limited = refused("`/home/me/.ssh/id_ed25519`");
        assert!(
            limited.contains("it stopped there, at the limit of keys it offers (sshd's `MaxAuthTries` defaults to 6), before `/home/me/.ssh/id_ed25519`: name the right key with `IdentityFile` and `IdentitiesOnly yes`"),
            "{limited}"
        );
    }
}
