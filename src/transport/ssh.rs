//! The SSH transport, on russh. This is the only module that names russh types.
//!
//! One [`SshConnector`] per run holds what every connection shares: the parsed known_hosts
//! files and the loaded credentials (an encrypted key is decrypted once, not per host). Each
//! [`SshTransport`] is one authenticated connection, reused by every step; commands run in
//! session channels, at most [`MAX_CHANNELS`] at a time because sshd's `MaxSessions`
//! defaults to 10.
//!
//! Host keys are strict: a pinned `host_key`, else known_hosts; unknown, changed or revoked
//! keys are refused with the fingerprint and what to do. There is no trust-on-first-use.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::agent::client::AgentClient;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::{
    Certificate, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate,
};
use russh::{ChannelMsg, Disconnect};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};

use super::known_hosts::{self, KnownHosts, Verdict};
use super::{
    BoxFuture, Collector, ConnectError, ExecError, ExecOutput, ExecRequest, Exit, HostKeyError,
    Interactive, SshSettings, SshTarget, Stdin, Stream, Transport,
};
use crate::shell::Cmd;

/// Channels open at once on one connection; below sshd's default `MaxSessions 10`.
pub const MAX_CHANNELS: usize = 8;

/// sshd's default `MaxAuthTries` is 6; a rejected key counts, so offer at most this many.
const MAX_KEYS_OFFERED: usize = 5;

impl Credential {
    /// How the failure names it when the key limit kept it back.
    fn label(&self) -> Option<String> {
        match self {
            Credential::Key { label, .. } => Some(label.clone()),
            Credential::Agent { only: None, .. } => Some("the agent's keys".to_owned()),
            Credential::Agent {
                only: Some(key), ..
            } => Some(format!("agent key {}", key.fingerprint(HashAlg::Sha256))),
            Credential::Skipped { .. } => None,
        }
    }
}

/// A credential to offer, in order.
enum Credential {
    Key {
        key: Arc<PrivateKey>,
        label: String,
    },
    /// An identity held by ssh-agent; `only` restricts it to one public key.
    Agent {
        socket: PathBuf,
        only: Option<PublicKey>,
    },
    /// A key `~/.ssh/config` names that cannot be used; named when every key is refused.
    Skipped {
        label: String,
    },
}

/// The known_hosts files and the `RevokedHostKeys` file of a host.
type TrustFiles = (Vec<PathBuf>, Option<PathBuf>);

/// Shared by every connection of one run.
pub struct SshConnector {
    /// Each distinct list of known_hosts files (and `RevokedHostKeys` file), read once per
    /// run.
    known: Mutex<HashMap<TrustFiles, Arc<KnownHosts>>>,
    /// `SHIPIT_SSH_KEY`, decoded once: when set, the only key offered.
    env_key: Option<Result<Arc<PrivateKey>, ConnectError>>,
    /// The inventory's `ssh.identity`: otherwise, when set, the only key offered.
    identity: Option<PathBuf>,
    agent_socket: Option<PathBuf>,
    passphrase: Option<String>,
    default_identities: Vec<PathBuf>,
    /// Key files read so far (`~/.ssh/config` may name the same one for many hosts).
    keys: Mutex<HashMap<PathBuf, Loaded>>,
}

/// A key file, read once per run.
#[derive(Clone)]
enum Loaded {
    Key(Arc<PrivateKey>),
    Encrypted,
    Unusable(String),
}

impl SshConnector {
    /// Reads known_hosts and loads keys. Problems with keys are kept and reported per host
    /// at the auth stage, so `check` still shows every host.
    pub fn new(settings: &SshSettings) -> SshConnector {
        SshConnector {
            known: Mutex::new(HashMap::new()),
            env_key: env_key(settings),
            identity: settings.identity.clone(),
            agent_socket: settings.agent_socket.clone(),
            passphrase: settings.passphrase.as_ref().map(|p| p.expose().to_owned()),
            default_identities: settings.default_identities.clone(),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Opens one authenticated connection to `target`, within its connect timeout.
    pub async fn connect(&self, target: &SshTarget) -> Result<SshTransport, ConnectError> {
        let jump = match &target.jump {
            None => None,
            Some(bastion) => {
                let conn = self
                    .open(bastion, None)
                    .await
                    .map_err(|inner| ConnectError::Jump {
                        jump: jump_label(bastion),
                        inner: Box::new(inner),
                    })?;
                Some(conn)
            }
        };
        self.open(target, jump.as_ref().map(|j| &j.handle))
            .await
            .map(|mut t| {
                if let Some(j) = jump {
                    t.jump_host_key = j.host_key;
                    t.jump = Some(j.handle);
                }
                t
            })
    }

    async fn open(
        &self,
        target: &SshTarget,
        via: Option<&Arc<Handle<Client>>>,
    ) -> Result<SshTransport, ConnectError> {
        let timeout = target.connect_timeout;
        match tokio::time::timeout(timeout, self.open_inner(target, via)).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::TimedOut {
                host: target.host.clone(),
                address: address_label(target),
                after: timeout,
            }),
        }
    }

    async fn open_inner(
        &self,
        target: &SshTarget,
        via: Option<&Arc<Handle<Client>>>,
    ) -> Result<SshTransport, ConnectError> {
        let problem = Arc::new(Mutex::new(None));
        let disconnect = Arc::new(Mutex::new(None));
        let trusted = Arc::new(Mutex::new(None));
        let files = &target.known_hosts;
        let known = self.known_hosts(files, target.revoked_host_keys.as_deref());
        let handler = Client {
            target: target.clone(),
            known: known.clone(),
            known_hosts_label: files.first().map_or_else(
                || "~/.ssh/known_hosts".to_owned(),
                |p| p.display().to_string(),
            ),
            problem: problem.clone(),
            disconnect: disconnect.clone(),
            trusted: trusted.clone(),
        };
        let config = Arc::new(self.config(target, &known));
        let unreachable = |reason: String| ConnectError::Unreachable {
            host: target.host.clone(),
            address: address_label(target),
            reason,
        };
        let session = match via {
            None => {
                let tcp = TcpStream::connect((target.address.as_str(), target.port))
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                let _ = tcp.set_nodelay(true);
                client::connect_stream(config, tcp, handler).await
            }
            Some(bastion) => {
                let channel = bastion
                    .channel_open_direct_tcpip(
                        target.address.clone(),
                        u32::from(target.port),
                        "127.0.0.1",
                        0u32,
                    )
                    .await
                    .map_err(|e| {
                        unreachable(format!("the jump host could not open a tunnel: {e}"))
                    })?;
                client::connect_stream(config, channel.into_stream(), handler).await
            }
        };
        let mut handle = match session {
            Ok(handle) => handle,
            Err(e) => {
                if let Some(problem) = problem.lock().expect("lock").take() {
                    return Err(problem);
                }
                return Err(match e {
                    HandlerError::Rejected(problem) => problem,
                    // A peer that closes with our banner unread resets the connection.
                    HandlerError::Russh(russh::Error::IO(io))
                        if matches!(
                            io.kind(),
                            std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::UnexpectedEof
                                | std::io::ErrorKind::BrokenPipe
                        ) =>
                    {
                        unreachable(format!(
                            "it closed the connection during the SSH handshake ({io}; is an SSH server listening there, and accepting connections?)"
                        ))
                    }
                    HandlerError::Russh(russh::Error::IO(io)) => unreachable(io.to_string()),
                    // Closed before the handshake finished: not an SSH server, or one
                    // refusing new connections (sshd's MaxStartups).
                    HandlerError::Russh(russh::Error::Disconnect) => unreachable(
                        "it closed the connection during the SSH handshake (is an SSH server listening there, and accepting connections?)".to_owned(),
                    ),
                    HandlerError::Russh(other) => ConnectError::Protocol {
                        host: target.host.clone(),
                        reason: other.to_string(),
                    },
                });
            }
        };
        self.authenticate(&mut handle, target).await?;
        let host_key = trusted.lock().expect("lock").take();
        Ok(SshTransport {
            host: target.host.clone(),
            user: target.user.clone(),
            sudo: false,
            sudo_checked: tokio::sync::OnceCell::new(),
            handle: Arc::new(handle),
            channels: Arc::new(Semaphore::new(MAX_CHANNELS)),
            disconnect,
            jump: None,
            host_key,
            jump_host_key: None,
        })
    }

    /// Reads (once per run) the known_hosts `files`; unreadable or missing files hold
    /// nothing, as for OpenSSH.
    /// A `RevokedHostKeys` file that cannot be read trusts nothing, as for OpenSSH.
    fn known_hosts(&self, files: &[PathBuf], revoked: Option<&Path>) -> Arc<KnownHosts> {
        let key = (files.to_vec(), revoked.map(Path::to_path_buf));
        let mut cache = self.known.lock().expect("lock");
        if let Some(known) = cache.get(&key) {
            return known.clone();
        }
        let mut known = KnownHosts::default();
        for file in files {
            if let Ok(text) = std::fs::read_to_string(file) {
                known.add_file(file, &text);
            }
        }
        if let Some(file) = revoked {
            known.add_revoked_keys(file, std::fs::read(file).ok().as_deref());
        }
        let known = Arc::new(known);
        cache.insert(key, known.clone());
        known
    }

    fn config(&self, target: &SshTarget, known: &KnownHosts) -> client::Config {
        let mut preferred = russh::Preferred::default();
        // Ask for the host key type we can verify, as OpenSSH does: the recorded types
        // first, so a host with both RSA and ed25519 keys and only RSA on record works.
        let (name, port) = known_name(target);
        let recorded: Vec<String> = match &target.host_key {
            Some(pin) => pin
                .split_whitespace()
                .next()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            None => known.key_types(name, port),
        };
        if !recorded.is_empty() {
            let mut keys: Vec<_> = preferred.key.iter().cloned().collect();
            keys.sort_by_key(|alg| !recorded.iter().any(|t| t == key_type_of(alg)));
            preferred.key = Cow::Owned(keys);
        }
        // A host covered by a `@cert-authority` entry is asked for its certificate first,
        // as OpenSSH does; a host without one still answers with a plain key.
        if target.host_key.is_none() && known.has_authority(name, port) {
            preferred.host_key_certificates = preferred.key.clone();
        }
        if hardware_aes() {
            // AES-GCM with AES-NI costs both ends less per byte than ChaCha20-Poly1305,
            // which russh (like OpenSSH) otherwise asks for first.
            let mut ciphers: Vec<_> = preferred.cipher.iter().cloned().collect();
            ciphers.sort_by_key(|c| c.as_ref() != "aes256-gcm@openssh.com");
            preferred.cipher = Cow::Owned(ciphers);
        }
        client::Config {
            preferred,
            keepalive_interval: Some(target.keepalive_interval),
            keepalive_max: 3,
            inactivity_timeout: None,
            nodelay: true,
            ..Default::default()
        }
    }

    async fn authenticate(
        &self,
        handle: &mut Handle<Client>,
        target: &SshTarget,
    ) -> Result<(), ConnectError> {
        let credentials = self.credentials_for(target)?;
        let auth_err = |e: russh::Error| ConnectError::Protocol {
            host: target.host.clone(),
            reason: format!("during authentication: {e}"),
        };
        let mut tried: Vec<String> = Vec::new();
        let mut skipped: Vec<String> = Vec::new();
        let mut offered: Vec<PublicKey> = Vec::new();
        // What the key limit kept back, named in the failure.
        let mut not_offered: Vec<String> = Vec::new();
        for (index, credential) in credentials.iter().enumerate() {
            if tried.len() >= MAX_KEYS_OFFERED {
                not_offered.extend(credentials[index..].iter().filter_map(Credential::label));
                break;
            }
            match credential {
                Credential::Skipped { label } => skipped.push(label.clone()),
                Credential::Key { key, label } => {
                    // Only RSA keys need the server's preferred hash; asking costs up to 1 s.
                    let hash = if key.algorithm().is_rsa() {
                        handle
                            .best_supported_rsa_hash()
                            .await
                            .map_err(auth_err)?
                            .flatten()
                    } else {
                        None
                    };
                    tried.push(label.clone());
                    offered.push(key.public_key().clone());
                    let result = handle
                        .authenticate_publickey(
                            target.user.clone(),
                            PrivateKeyWithHashAlg::new(key.clone(), hash),
                        )
                        .await
                        .map_err(auth_err)?;
                    if result.success() {
                        return Ok(());
                    }
                }
                Credential::Agent { socket, only } => {
                    let mut agent = match AgentClient::connect_uds(socket).await {
                        Ok(agent) => agent,
                        Err(e) => {
                            tried
                                .push(format!("ssh-agent at {} (unusable: {e})", socket.display()));
                            continue;
                        }
                    };
                    let identities = agent.request_identities().await.unwrap_or_default();
                    for identity in identities {
                        let public = identity.public_key().into_owned();
                        let excluded = only
                            .as_ref()
                            .is_some_and(|o| o.key_data() != public.key_data());
                        let again = offered.iter().any(|o| o.key_data() == public.key_data());
                        if excluded || again {
                            continue;
                        }
                        offered.push(public.clone());
                        if tried.len() >= MAX_KEYS_OFFERED {
                            not_offered
                                .push(format!("agent key {}", public.fingerprint(HashAlg::Sha256)));
                            continue;
                        }
                        let hash = if public.algorithm().is_rsa() {
                            handle
                                .best_supported_rsa_hash()
                                .await
                                .map_err(auth_err)?
                                .flatten()
                        } else {
                            None
                        };
                        tried.push(format!("agent key {}", public.fingerprint(HashAlg::Sha256)));
                        let result = handle
                            .authenticate_publickey_with(
                                target.user.clone(),
                                public,
                                hash,
                                &mut agent,
                            )
                            .await
                            .map_err(|e| ConnectError::Protocol {
                                host: target.host.clone(),
                                reason: format!("ssh-agent signing failed: {e}"),
                            })?;
                        if result.success() {
                            return Ok(());
                        }
                    }
                }
            }
        }
        if tried.is_empty() {
            let mut reason = "set `ssh.identity`, run an ssh-agent (SSH_AUTH_SOCK), or put a key in SHIPIT_SSH_KEY".to_owned();
            if !skipped.is_empty() {
                reason = format!("{reason} (unusable: {})", skipped.join(", "));
            }
            return Err(ConnectError::NoCredentials {
                host: target.host.clone(),
                reason,
            });
        }
        tried.extend(skipped);
        Err(ConnectError::AuthRejected {
            host: target.host.clone(),
            user: target.user.clone(),
            tried: tried.join(", "),
            not_offered: not_offered.join(", "),
        })
    }
}

impl SshConnector {
    /// What to offer `target`, in order: the run's own key alone; else the keys
    /// `~/.ssh/config` names for it (each from its file, or from the agent when the file is
    /// encrypted) and, unless `IdentitiesOnly`, the agent's other keys; else the agent's
    /// keys and the default key files.
    fn credentials_for(&self, target: &SshTarget) -> Result<Vec<Credential>, ConnectError> {
        if let Some(key) = &self.env_key {
            return key.clone().map(|key| {
                vec![Credential::Key {
                    key,
                    label: "key from SHIPIT_SSH_KEY".to_owned(),
                }]
            });
        }
        if let Some(path) = &self.identity {
            return self
                .key_file(path)
                .map(|credential| vec![credential])
                .map_err(|reason| ConnectError::BadKey {
                    origin: file_label(path),
                    reason,
                });
        }
        let mut credentials = Vec::new();
        if !target.identities.is_empty() {
            // Unusable ones are skipped, as ssh does, and named if every key is refused;
            // OpenSSH's default files are only there if the user made them.
            for path in &target.identities {
                if target.identities_default && !path.exists() {
                    continue;
                }
                credentials.push(self.key_file(path).unwrap_or_else(|reason| {
                    Credential::Skipped {
                        label: format!("{} ({reason})", file_label(path)),
                    }
                }));
            }
            if !target.identities_only {
                credentials.extend(self.agent(None));
            }
            return Ok(credentials);
        }
        credentials.extend(self.agent(None));
        for path in &self.default_identities {
            // An encrypted default key without a passphrase is skipped, as ssh does in
            // BatchMode.
            if let Loaded::Key(key) = self.load(path) {
                credentials.push(Credential::Key {
                    key,
                    label: file_label(path),
                });
            }
        }
        Ok(credentials)
    }

    fn agent(&self, only: Option<PublicKey>) -> Option<Credential> {
        self.agent_socket.as_ref().map(|socket| Credential::Agent {
            socket: socket.clone(),
            only,
        })
    }

    /// The key in `path` (`ssh.identity`, an `IdentityFile`), or why it cannot be used. An
    /// encrypted one is signed by the agent when it holds that key, and then only with it.
    fn key_file(&self, path: &Path) -> Result<Credential, String> {
        match self.load(path) {
            Loaded::Key(key) => Ok(Credential::Key {
                key,
                label: file_label(path),
            }),
            Loaded::Encrypted => public_key_beside(path)
                .and_then(|public| self.agent(Some(public)))
                .ok_or_else(|| {
                    "it is encrypted: set SHIPIT_SSH_PASSPHRASE, or add it to ssh-agent (with its .pub file beside it)".to_owned()
                }),
            Loaded::Unusable(reason) => Err(reason),
        }
    }

    fn load(&self, path: &Path) -> Loaded {
        if let Some(loaded) = self.keys.lock().expect("lock").get(path) {
            return loaded.clone();
        }
        let loaded = match std::fs::read_to_string(path) {
            Err(e) => Loaded::Unusable(format!("cannot read it: {e}")),
            Ok(text) => match russh::keys::decode_secret_key(&text, self.passphrase.as_deref()) {
                Ok(key) => Loaded::Key(Arc::new(key)),
                Err(russh::keys::Error::KeyIsEncrypted) => Loaded::Encrypted,
                Err(e) => Loaded::Unusable(key_error(&e)),
            },
        };
        self.keys
            .lock()
            .expect("lock")
            .insert(path.to_owned(), loaded.clone());
        loaded
    }
}

fn jump_label(j: &SshTarget) -> String {
    format!("{}@{}:{}", j.user, j.address, j.port)
}

/// The name and port a host's key is recorded under: `HostKeyAlias` (port 22, as OpenSSH
/// looks it up), else the address and port connected to.
fn known_name(t: &SshTarget) -> (&str, u16) {
    match &t.host_key_alias {
        Some(alias) => (alias, 22),
        None => (&t.address, t.port),
    }
}

fn address_label(t: &SshTarget) -> String {
    if t.address.contains(':') {
        format!("[{}]:{}", t.address, t.port)
    } else {
        format!("{}:{}", t.address, t.port)
    }
}

fn key_type_of(alg: &russh::keys::Algorithm) -> &str {
    match alg {
        russh::keys::Algorithm::Rsa { .. } => "ssh-rsa",
        other => other.as_str(),
    }
}

/// `SHIPIT_SSH_KEY` (CI: the key itself in the environment), decoded.
fn env_key(settings: &SshSettings) -> Option<Result<Arc<PrivateKey>, ConnectError>> {
    let text = settings.key_text.as_ref()?;
    let passphrase = settings.passphrase.as_ref().map(|p| p.expose());
    Some(
        russh::keys::decode_secret_key(text.expose().trim_start(), passphrase)
            .map(Arc::new)
            .map_err(|e| ConnectError::BadKey {
                origin: "from SHIPIT_SSH_KEY".to_owned(),
                reason: key_error(&e),
            }),
    )
}

fn file_label(path: &Path) -> String {
    format!("`{}`", path.display())
}

fn public_key_beside(private: &Path) -> Option<PublicKey> {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    russh::keys::load_public_key(PathBuf::from(name)).ok()
}

fn key_error(e: &russh::keys::Error) -> String {
    match e {
        russh::keys::Error::KeyIsEncrypted => {
            "it is encrypted: set SHIPIT_SSH_PASSPHRASE".to_owned()
        }
        russh::keys::Error::SshKey(_) => {
            "it could not be decrypted or parsed (wrong SHIPIT_SSH_PASSPHRASE?)".to_owned()
        }
        other => format!("it could not be parsed: {other}"),
    }
}

#[derive(Debug)]
enum HandlerError {
    Russh(russh::Error),
    Rejected(ConnectError),
}

impl From<russh::Error> for HandlerError {
    fn from(e: russh::Error) -> Self {
        HandlerError::Russh(e)
    }
}

/// Per-connection callbacks: host key verification and remembering why a session ended.
struct Client {
    target: SshTarget,
    known: Arc<KnownHosts>,
    known_hosts_label: String,
    problem: Arc<Mutex<Option<ConnectError>>>,
    disconnect: Arc<Mutex<Option<String>>>,
    /// How the host key was trusted, once it was.
    trusted: Arc<Mutex<Option<String>>>,
}

/// A key as known_hosts writes it: its type and base64 blob.
fn key_text(key: &PublicKey) -> (String, String) {
    let openssh = key.to_openssh().unwrap_or_default();
    let mut words = openssh.split_whitespace();
    let key_type = words.next().unwrap_or("").to_owned();
    let blob = words.next().unwrap_or("").to_owned();
    (key_type, blob)
}

impl Client {
    /// Checks a plain host key; on success says what vouched for it.
    fn verify(&self, key: &PublicKey) -> Result<String, Box<HostKeyError>> {
        let t = &self.target;
        let (key_type, blob) = key_text(key);
        let fingerprint = known_hosts::fingerprint(&blob);
        let address = address_label(t);
        let trusted = |origin: &str| format!("{key_type} {fingerprint}, trusted by {origin}");
        if let Some(pin) = &t.host_key {
            let mut pinned = pin.split_whitespace();
            let (pin_type, pin_blob) = (pinned.next().unwrap_or(""), pinned.next().unwrap_or(""));
            let (name, port) = known_name(t);
            if let Verdict::Revoked { origin } = self.known.check(name, port, &key_type, &blob) {
                return Err(Box::new(HostKeyError::Revoked {
                    host: t.host.clone(),
                    address,
                    key_type,
                    fingerprint,
                    origin,
                }));
            }
            if pin_type == key_type && pin_blob == blob {
                return Ok(trusted(&format!(
                    "the `host_key` pinned for `{}` in the inventory",
                    t.host
                )));
            }
            return Err(Box::new(HostKeyError::Changed {
                host: t.host.clone(),
                address,
                key_type,
                fingerprint,
                expected: format!("{pin_type} {}", known_hosts::fingerprint(pin_blob)),
                origin: format!("the `host_key` pinned for `{}` in the inventory", t.host),
                unused: Vec::new(),
            }));
        }
        let (name, port) = known_name(t);
        match self.known.check(name, port, &key_type, &blob) {
            Verdict::Trusted { origin } => Ok(trusted(&origin)),
            Verdict::Revoked { origin } => Err(Box::new(HostKeyError::Revoked {
                host: t.host.clone(),
                address,
                key_type,
                fingerprint,
                origin,
            })),
            Verdict::Changed {
                expected,
                origin,
                unused,
            } => Err(Box::new(HostKeyError::Changed {
                host: t.host.clone(),
                address,
                key_type,
                fingerprint,
                expected,
                origin,
                unused,
            })),
            Verdict::Unknown { mut unused } => {
                if let Some(alias) = &t.host_key_alias {
                    // With `HostKeyAlias`, OpenSSH looks up the alias alone.
                    let direct = known_hosts::host_name(&t.address, t.port);
                    if let Verdict::Trusted { origin } =
                        self.known.check(&t.address, t.port, &key_type, &blob)
                    {
                        unused.push(format!(
                            "{origin} has this key for `{direct}`, but `HostKeyAlias {alias}` says to look the key up under `{alias}` alone"
                        ));
                    }
                }
                Err(Box::new(HostKeyError::Unknown {
                    host: t.host.clone(),
                    line: known_hosts::line_for(name, port, &key_type, &blob),
                    address,
                    key_type,
                    fingerprint,
                    known_hosts: self.known_hosts_label.clone(),
                    unused,
                }))
            }
        }
    }
}

impl Client {
    /// A host certificate is trusted when a `@cert-authority` entry for the host carries
    /// its signing key and the certificate holds up: a host certificate, within its
    /// validity, correctly signed, naming the host among its principals, with no critical
    /// options. Without such an authority the plain key inside is checked against
    /// known_hosts, as OpenSSH does.
    fn verify_certificate(&self, cert: &Certificate) -> Result<String, Box<HostKeyError>> {
        let t = &self.target;
        let (name, port) = known_name(t);
        let ca = PublicKey::from(cert.signature_key().clone());
        let (ca_type, ca_blob) = key_text(&ca);
        let host_key = PublicKey::from(cert.public_key().clone());
        let origin = match self.known.authority(name, port, &ca_type, &ca_blob) {
            Verdict::Trusted { origin } => origin,
            Verdict::Revoked { origin } => {
                return Err(Box::new(HostKeyError::Revoked {
                    host: t.host.clone(),
                    address: address_label(t),
                    key_type: format!("certificate authority {ca_type}"),
                    fingerprint: known_hosts::fingerprint(&ca_blob),
                    origin,
                }));
            }
            Verdict::Changed { .. } | Verdict::Unknown { .. } => return self.verify(&host_key),
        };
        let (key_type, blob) = key_text(&host_key);
        if let Verdict::Revoked { origin } = self.known.check(name, port, &key_type, &blob) {
            return Err(Box::new(HostKeyError::Revoked {
                host: t.host.clone(),
                address: address_label(t),
                key_type,
                fingerprint: known_hosts::fingerprint(&blob),
                origin,
            }));
        }
        let invalid = |reason: String| {
            Box::new(HostKeyError::Certificate {
                host: t.host.clone(),
                address: address_label(t),
                reason,
                origin: origin.clone(),
            })
        };
        certificate_problem(cert, &ca, name, crate::clock::now_unix())
            .map_or(Ok(()), |r| Err(invalid(r)))?;
        Ok(format!(
            "{key_type} {} certificate (key id {:?}), signed by {ca_type} {} in {origin}",
            known_hosts::fingerprint(&blob),
            cert.key_id(),
            known_hosts::fingerprint(&ca_blob),
        ))
    }
}

/// What is wrong with a host certificate for `principal`, signed by `ca`, at `now`.
fn certificate_problem(
    cert: &Certificate,
    ca: &PublicKey,
    principal: &str,
    now: u64,
) -> Option<String> {
    if cert.cert_type() != CertType::Host {
        return Some("it is a user certificate, not a host certificate".to_owned());
    }
    if now < cert.valid_after() {
        return Some("it is not valid yet (check this machine's clock)".to_owned());
    }
    if now >= cert.valid_before() {
        return Some("it has expired".to_owned());
    }
    if cert
        .validate_at(now, [&ca.fingerprint(HashAlg::Sha256)])
        .is_err()
    {
        return Some("its signature does not verify".to_owned());
    }
    if cert.valid_principals().is_empty() {
        return Some("it lists no principals".to_owned());
    }
    if !cert.valid_principals().iter().any(|p| p == principal) {
        return Some(format!(
            "it is for {:?}, not `{principal}`",
            cert.valid_principals()
        ));
    }
    if let Some((option, _)) = cert.critical_options().iter().next() {
        return Some(format!("it carries the critical option `{option}`"));
    }
    None
}

impl client::Handler for Client {
    type Error = HandlerError;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let result = match (key, self.known.unusable()) {
            (_, Some(reason)) => Err(Box::new(HostKeyError::RevocationList {
                host: self.target.host.clone(),
                address: address_label(&self.target),
                reason: reason.to_owned(),
            })),
            (PublicKeyOrCertificate::PublicKey { key, .. }, None) => self.verify(key),
            (PublicKeyOrCertificate::Certificate(cert), None) => self.verify_certificate(cert),
        }
        .map_err(ConnectError::HostKey);
        match result {
            Ok(how) => {
                *self.trusted.lock().expect("lock") = Some(how);
                Ok(true)
            }
            Err(problem) => {
                // Kept here too: some russh paths replace the handler's error with their own.
                *self.problem.lock().expect("lock") = Some(problem.clone());
                Err(HandlerError::Rejected(problem))
            }
        }
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let text = match &reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                format!("the host closed the session ({})", info.message)
            }
            client::DisconnectReason::Error(HandlerError::Russh(e)) => e.to_string(),
            client::DisconnectReason::Error(HandlerError::Rejected(e)) => e.to_string(),
        };
        *self.disconnect.lock().expect("lock") = Some(text);
        match reason {
            client::DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            client::DisconnectReason::Error(e) => Err(e),
        }
    }
}

/// One authenticated SSH connection.
pub struct SshTransport {
    host: String,
    /// The login user.
    user: String,
    /// Requests marked root run through `sudo -n` (`ssh.sudo`, a login other than root).
    sudo: bool,
    /// Whether `sudo -n` works, asked once, before the first root request.
    sudo_checked: tokio::sync::OnceCell<Result<(), String>>,
    handle: Arc<Handle<Client>>,
    channels: Arc<Semaphore>,
    disconnect: Arc<Mutex<Option<String>>>,
    /// The bastion connection the session is tunnelled through; kept open with it.
    jump: Option<Arc<Handle<Client>>>,
    host_key: Option<String>,
    /// How the bastion's key was trusted, when there is one.
    jump_host_key: Option<String>,
}

impl SshTransport {
    /// Runs the requests marked root through `sudo -n` when `on` (and the login is not
    /// root already).
    pub fn with_sudo(mut self, on: bool) -> SshTransport {
        self.sudo = on && self.user != "root";
        self
    }

    /// The command line a request runs as: wrapped in `sudo -n` when it needs root and the
    /// connection uses sudo, after checking once that sudo works without a password.
    async fn command_line(&self, cmd: &Cmd, root: bool) -> Result<String, ExecError> {
        if !(root && self.sudo) {
            return Ok(cmd.render());
        }
        let checked = self
            .sudo_checked
            .get_or_init(|| async {
                let probe = crate::commands::sudo::probe();
                let req = ExecRequest::new(&probe, SUDO_PROBE_TIMEOUT);
                match self.run_line(probe.render(), req).await {
                    Ok(o) if o.success() => Ok(()),
                    Ok(o) => {
                        let said = o.stderr.text();
                        let said = said.trim();
                        Err(match o.exit {
                            Exit::Code(crate::commands::exit::NO_SUDO) => {
                                "`sudo` is not installed there".to_owned()
                            }
                            _ if said.is_empty() => format!("`sudo -n true` failed ({})", o.exit),
                            _ => format!("`sudo -n true` says: {said}"),
                        })
                    }
                    Err(e) => Err(format!("asking sudo failed: {e}")),
                }
            })
            .await;
        match checked {
            Ok(()) => Ok(crate::commands::sudo::wrap(cmd).render()),
            Err(reason) => Err(ExecError::Sudo {
                host: self.host.clone(),
                user: self.user.clone(),
                reason: reason.clone(),
                rule: crate::commands::sudo::rule(&self.user),
            }),
        }
    }

    fn lost(&self, command: &str, fallback: impl ToString) -> ExecError {
        let reason = self
            .disconnect
            .lock()
            .expect("lock")
            .clone()
            .unwrap_or_else(|| fallback.to_string());
        ExecError::Lost {
            command: command.to_owned(),
            reason,
        }
    }

    /// Opens a session channel. sshd frees a session slot a moment after the channel
    /// closes, and other clients of the same login may hold slots too, so a refused open is
    /// retried with backoff before it counts as a failure.
    async fn open_channel(&self, command: &str) -> Result<russh::Channel<client::Msg>, ExecError> {
        let mut delay = Duration::from_millis(20);
        let deadline = tokio::time::Instant::now() + CHANNEL_RETRY;
        loop {
            match self.handle.channel_open_session().await {
                Ok(channel) => return Ok(channel),
                Err(russh::Error::ChannelOpenFailure(_))
                    if tokio::time::Instant::now() + delay < deadline =>
                {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(self.lost(command, e)),
            }
        }
    }

    async fn run(&self, req: ExecRequest<'_>) -> Result<ExecOutput, ExecError> {
        let command = self.command_line(req.cmd, req.root).await?;
        self.run_line(command, req).await
    }

    /// Runs `command`, the rendered line of `req`.
    async fn run_line(
        &self,
        command: String,
        req: ExecRequest<'_>,
    ) -> Result<ExecOutput, ExecError> {
        let _permit = self
            .channels
            .acquire()
            .await
            .map_err(|e| self.lost(&command, e))?;
        let channel = self.open_channel(&command).await?;
        channel
            .exec(true, command.as_bytes())
            .await
            .map_err(|e| self.lost(&command, e))?;
        let (mut reader, writer) = channel.split();
        // If this future is dropped (a cancelled deploy), close the channel so the remote
        // command sees its input end instead of waiting for the connection to go.
        let mut guard = CloseOnDrop(Some(writer));
        let writer = guard.0.as_ref().expect("just set");

        // russh's writer waits forever for window space if the session dies, so every write
        // races against the reader seeing the channel end.
        let (closed_tx, closed_rx) = watch::channel(false);
        let mut collector = Collector::new(req.output);
        let read = async {
            let mut exit: Option<Exit> = None;
            let mut refused = false;
            while let Some(msg) = reader.wait().await {
                match msg {
                    ChannelMsg::Data { data } => collector.push(Stream::Stdout, &data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        collector.push(Stream::Stderr, &data)
                    }
                    ChannelMsg::ExitStatus { exit_status } => exit = Some(Exit::Code(exit_status)),
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        exit = Some(Exit::Signal(format!("{signal_name:?}")))
                    }
                    ChannelMsg::Failure => refused = true,
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            let _ = closed_tx.send(true);
            (exit, refused)
        };
        let write = async {
            let mut w = writer.make_writer();
            let mut closed = closed_rx.clone();
            let feed = async {
                match req.stdin {
                    Stdin::Empty => Ok(()),
                    Stdin::Bytes(bytes) => w.write_all(&bytes).await,
                    Stdin::Secret(secret) => w.write_all(secret.expose().as_bytes()).await,
                    Stdin::Reader(r) => {
                        // Large writes: each write becomes one packet of up to 32 KiB.
                        let mut r = BufReader::with_capacity(256 << 10, r);
                        tokio::io::copy_buf(&mut r, &mut w).await.map(drop)
                    }
                }?;
                w.shutdown().await
            };
            tokio::select! {
                r = feed => r,
                // The command ended (or the session died) before reading all its input:
                // not a write error; the exit status says what happened.
                _ = closed.wait_for(|c| *c) => Ok(()),
            }
        };
        let work = async { tokio::join!(read, write) };
        let ((exit, refused), fed) = match tokio::time::timeout(req.timeout, work).await {
            Ok(done) => done,
            Err(_) => {
                // The guard closes the channel.
                return Err(ExecError::Timeout {
                    command,
                    after: req.timeout,
                });
            }
        };
        guard.0 = None;
        if refused {
            return Err(ExecError::Start {
                command,
                reason: "the host refused to run it".to_owned(),
            });
        }
        match exit {
            Some(exit) => Ok(collector.finish(exit)),
            None => {
                let fallback = match fed {
                    Err(e) => e.to_string(),
                    Ok(()) => "the channel closed without an exit status".to_owned(),
                };
                Err(self.lost(&command, fallback))
            }
        }
    }
}

impl SshTransport {
    /// A session under a pseudo-terminal (`pty-req`, then `exec`): the keys typed go to the
    /// host as they come, window changes follow the local window, and the output is handed
    /// on as it arrives. The host answers each request in order: a refused terminal is
    /// reported as such, not as a failed command.
    async fn terminal(&self, session: Interactive<'_>) -> Result<Exit, ExecError> {
        let Interactive {
            cmd,
            term,
            size,
            mut resized,
            mut input,
            output,
        } = session;
        let command = cmd.render();
        let _permit = self
            .channels
            .acquire()
            .await
            .map_err(|e| self.lost(&command, e))?;
        let channel = self.open_channel(&command).await?;
        channel
            .request_pty(
                true,
                &term,
                u32::from(size.cols),
                u32::from(size.rows),
                0,
                0,
                &[],
            )
            .await
            .map_err(|e| self.lost(&command, e))?;
        channel
            .exec(true, command.as_bytes())
            .await
            .map_err(|e| self.lost(&command, e))?;
        let (mut reader, writer) = channel.split();
        let mut guard = CloseOnDrop(Some(writer));
        let writer = guard.0.as_ref().expect("just set");
        let (closed_tx, closed_rx) = watch::channel(false);
        let read = async {
            let mut exit: Option<Exit> = None;
            // Replies come in the order of the requests: the terminal's, then exec's.
            let mut replies = 0;
            let mut refused: Option<&'static str> = None;
            while let Some(msg) = reader.wait().await {
                match msg {
                    ChannelMsg::Data { data } => output(Stream::Stdout, &data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => output(Stream::Stderr, &data),
                    ChannelMsg::ExitStatus { exit_status } => exit = Some(Exit::Code(exit_status)),
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        exit = Some(Exit::Signal(format!("{signal_name:?}")))
                    }
                    ChannelMsg::Success => replies += 1,
                    ChannelMsg::Failure => {
                        refused.get_or_insert(match replies {
                            0 => {
                                "the host refused a terminal (is `PermitTTY no` set for this user?)"
                            }
                            _ => "the host refused to run it",
                        });
                        replies += 1;
                    }
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            let _ = closed_tx.send(true);
            (exit, refused)
        };
        let write = async {
            let mut w = writer.make_writer();
            let mut closed = closed_rx.clone();
            let (mut typing, mut resizing) = (true, true);
            loop {
                tokio::select! {
                    () = until_closed(&mut closed) => break,
                    bytes = input.recv(), if typing => match bytes {
                        Some(bytes) => {
                            // A session that died must not leave this write waiting.
                            let mut gone = closed_rx.clone();
                            tokio::select! {
                                r = w.write_all(&bytes) => if r.is_err() { break },
                                () = until_closed(&mut gone) => break,
                            }
                        }
                        None => {
                            typing = false;
                            let _ = w.shutdown().await;
                        }
                    },
                    changed = resized.changed(), if resizing => match changed {
                        Ok(()) => {
                            let size = *resized.borrow_and_update();
                            let _ = writer
                                .window_change(u32::from(size.cols), u32::from(size.rows), 0, 0)
                                .await;
                        }
                        Err(_) => resizing = false,
                    },
                }
            }
        };
        let ((exit, refused), ()) = tokio::join!(read, write);
        guard.0 = None;
        if let Some(reason) = refused {
            return Err(ExecError::Start {
                command,
                reason: reason.to_owned(),
            });
        }
        exit.ok_or_else(|| self.lost(&command, "the channel closed without an exit status"))
    }
}

/// Returns once the channel's reader saw its end.
async fn until_closed(closed: &mut watch::Receiver<bool>) {
    let _ = closed.wait_for(|c| *c).await;
}

struct CloseOnDrop(Option<russh::ChannelWriteHalf<client::Msg>>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(writer) = self.0.take() {
            tokio::spawn(async move {
                let _ = writer.close().await;
            });
        }
    }
}

impl Transport for SshTransport {
    fn is_alive(&self) -> bool {
        !self.handle.is_closed()
    }

    fn host_key(&self) -> Option<&str> {
        self.host_key.as_deref()
    }

    fn jump_host_key(&self) -> Option<&str> {
        self.jump_host_key.as_deref()
    }

    fn sudo_login(&self) -> Option<&str> {
        self.sudo.then_some(self.user.as_str())
    }

    fn exec<'a>(&'a self, req: ExecRequest<'a>) -> BoxFuture<'a, Result<ExecOutput, ExecError>> {
        Box::pin(self.run(req))
    }

    fn interactive<'a>(
        &'a self,
        session: Interactive<'a>,
    ) -> BoxFuture<'a, Result<Exit, ExecError>> {
        Box::pin(self.terminal(session))
    }

    fn connect_tcp<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<Box<dyn super::Tunnel>, ExecError>> {
        Box::pin(async move {
            let channel = self
                .handle
                .channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0u32)
                .await
                .map_err(|e| ExecError::Start {
                    command: format!("connect to {host}:{port} through the SSH connection"),
                    reason: e.to_string(),
                })?;
            Ok(Box::new(channel.into_stream()) as Box<dyn super::Tunnel>)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // A polite goodbye, but never wait long on a host that stopped answering.
            let bye = async {
                let _ = self
                    .handle
                    .disconnect(Disconnect::ByApplication, "", "en")
                    .await;
                if let Some(jump) = &self.jump {
                    let _ = jump.disconnect(Disconnect::ByApplication, "", "en").await;
                }
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, bye).await;
        })
    }
}

impl std::fmt::Debug for SshTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SshTransport({})", self.host)
    }
}

/// How long asking `sudo -n true` may take.
const SUDO_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a refused channel open is retried (sshd's `MaxSessions` is per connection).
const CHANNEL_RETRY: Duration = Duration::from_secs(10);

/// How long to wait for a polite disconnect before giving up on it.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Whether this CPU has AES and carry-less multiply instructions (what makes AES-GCM fast).
fn hardware_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}
