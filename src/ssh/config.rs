//! The OpenSSH client config (`~/.ssh/config`, then `/etc/ssh/ssh_config`): which settings
//! OpenSSH would use for one host, each with the file and line it comes from.
//!
//! [`SshConfig::load`] reads both files once, following `Include`, and validates the values
//! shipit uses, so a mistake is reported at start with its file and line instead of surfacing
//! as a strange connection failure. [`SshConfig::resolve`] then answers, for an alias as the
//! user typed it, a [`HostConfig`]: pure, no I/O. [`expand`] fills in `%` tokens once the
//! caller knows the final user and port; [`parse_hop`] splits one `ProxyJump` hop.
//!
//! ```text
//! let config = SshConfig::load(&home.join(".ssh/config"), Some(Path::new("/etc/ssh/ssh_config")), &local)?;
//! let host = config.resolve("web1", None)?;      // HostConfig: each value with its Origin
//! let key = expand(&host.identity_files[0].value, &tokens)?;
//! ```
//!
//! The rules are OpenSSH 9.2's (`readconf.c`, `ssh.c`), which a differential test in
//! `tests/e2e/openssh_differential.rs` holds this module to: the first value that applies
//! wins (`IdentityFile` accumulates instead, once per file); `Host` blocks match the alias
//! case-sensitively, `Match host` the `HostName` set so far, ignoring case; an `Include`d
//! file is read in place and a `Host` or `Match` inside it ends with that file. `Match final`
//! (or `CanonicalizeHostname`) reads everything again for the final, lowercased host name.
//! Only the keywords listed on [`HostConfig`] are read; another keyword OpenSSH knows is
//! skipped, one it does not is an error unless `IgnoreUnknown` names it. `Match` criteria
//! that would need a command or the network (`exec`, `localnetwork`, ...) are never
//! evaluated: their block is skipped and [`HostConfig::notes`] says so.
//!
//! Reads only the config files, what they include and `/etc/services` (for a `Port` given
//! by name); uses only [`crate::ssh::pattern`].

use std::fmt;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::ssh::pattern;

/// OpenSSH's own limit (`READCONF_MAX_DEPTH`); a deeper chain is almost surely a loop.
const MAX_INCLUDE_DEPTH: usize = 16;

/// Where relative `Include` paths are resolved for the system file (OpenSSH's `SSHDIR`).
const SYSTEM_DIR: &str = "/etc/ssh";

/// A config file's problem, or a token [`expand`] cannot fill in.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read `{}`", .file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{origin}: {problem}")]
    Invalid { origin: Origin, problem: String },
    #[error(
        "{origin}: `Include` of `{}` nests more than {MAX_INCLUDE_DEPTH} files deep; does a file include itself?",
        .file.display()
    )]
    TooDeep { origin: Origin, file: PathBuf },
    #[error(
        "unknown token `%{token}` in `{text}`: OpenSSH knows `{known}` here; write `%%` for a literal `%`"
    )]
    UnknownToken {
        token: char,
        text: String,
        known: &'static str,
    },
    #[error("`{text}` ends with a lone `%`; write `%%` for a literal `%`")]
    TrailingPercent { text: String },
    #[error("`{text}` names the environment variable `{name}`, which is not set")]
    UnsetVariable { name: String, text: String },
    #[error("`{text}` has a `${{` without its closing `}}`")]
    OpenVariable { text: String },
}

/// A line of a config file; `line` is 1-based and counts every physical line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` line {}", self.file.display(), self.line)
    }
}

/// A value and the line that set it, so messages can point at the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub origin: Origin,
}

/// `ProxyJump`: `none` (explicitly no jump, which also stops a later `ProxyJump` from
/// applying) or the hops in order, each raw `[user@]host[:port]` or `ssh://` form for
/// [`parse_hop`] after [`expand`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jump {
    None,
    Hops(Vec<String>),
}

/// What the config says about one host. Values are as written unless noted: the caller
/// expands `IdentityFile`, `ProxyJump` and `User` with [`expand`] once user and port are final.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// Already expanded: `%h` is the alias, as OpenSSH does.
    pub hostname: Option<Setting<String>>,
    pub user: Option<Setting<String>>,
    pub port: Option<Setting<u16>>,
    /// Every applying line, in order; a file named again is left out.
    pub identity_files: Vec<Setting<String>>,
    pub identities_only: Option<Setting<bool>>,
    /// `ProxyJump` and `ProxyCommand` exclude each other: whichever applies first wins.
    pub proxy_jump: Option<Setting<Jump>>,
    /// Raw, so the caller can refuse it clearly (shipit runs no proxy command); a value of
    /// `none` means no proxy.
    pub proxy_command: Option<Setting<String>>,
    /// Zero is OpenSSH's "no timeout"; `none` sets nothing.
    pub connect_timeout: Option<Setting<Duration>>,
    /// Zero turns keepalives off.
    pub server_alive_interval: Option<Setting<Duration>>,
    pub host_key_alias: Option<Setting<String>>,
    /// `UserKnownHostsFile`: the files, raw (for [`expand`]); `none` is an empty list.
    pub user_known_hosts: Option<Setting<Vec<String>>>,
    /// `GlobalKnownHostsFile`, likewise.
    pub global_known_hosts: Option<Setting<Vec<String>>>,
    /// `RevokedHostKeys`: a file of revoked host keys, raw; `none` means none.
    pub revoked_host_keys: Option<Setting<String>>,
    /// Blocks that were skipped because they need something shipit does not evaluate.
    pub notes: Vec<String>,
}

/// The local facts the config may refer to, read by `main` and passed in.
#[derive(Clone, PartialEq, Eq)]
pub struct Local {
    /// `~`, `%d`, and the `~/.ssh` that relative `Include`s are resolved against.
    pub home: PathBuf,
    /// `%u` and `Match localuser`.
    pub user: String,
    /// `%i`.
    pub uid: u32,
    /// `%l`; its first label is `%L`.
    pub hostname: String,
    /// The environment, for `${NAME}` in `IdentityFile` and `UserKnownHostsFile`. Its values
    /// may be secrets: `Debug` shows the names only.
    pub env: std::collections::BTreeMap<String, String>,
}

impl fmt::Debug for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Local")
            .field("home", &self.home)
            .field("user", &self.user)
            .field("uid", &self.uid)
            .field("hostname", &self.hostname)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What fills in `%` tokens in [`expand`].
#[derive(Debug, Clone, Copy)]
pub struct Tokens<'a> {
    /// `%h`: the host name finally connected to.
    pub host: &'a str,
    /// `%n`: the alias as typed.
    pub alias: &'a str,
    /// `%p`.
    pub port: u16,
    /// `%r`: the remote user.
    pub user: &'a str,
    /// `%k`: the `HostKeyAlias`, else the alias as typed.
    pub key_alias: &'a str,
    pub local: &'a Local,
}

/// The user's config file then the system's, includes read in place.
#[derive(Debug, Clone)]
pub struct SshConfig {
    files: Vec<ConfigFile>,
    local: Local,
}

/// One file's lines that matter. Each file starts with every line applying, as in OpenSSH.
#[derive(Debug, Clone)]
struct ConfigFile {
    lines: Vec<Line>,
}

#[derive(Debug, Clone)]
struct Line {
    item: Item,
    origin: Origin,
}

#[derive(Debug, Clone)]
enum Item {
    /// `Host`: the patterns, each possibly `!`-negated.
    Host(Vec<String>),
    Match(Vec<Criterion>),
    Set(Directive),
    /// The files one `Include` line named, in order.
    Include(Vec<ConfigFile>),
    /// `IgnoreUnknown`: a pattern list of keywords that are not an error.
    IgnoreUnknown(String),
    /// A keyword OpenSSH does not know, lowercase: an error unless an `IgnoreUnknown` that
    /// applies before it names it, as in OpenSSH.
    Unknown(String),
}

#[derive(Debug, Clone)]
enum Directive {
    /// Raw: its `%` tokens are checked when a host it applies to is resolved, as OpenSSH
    /// does, so a mistake in one host's block never stops another host.
    HostName(String),
    User(String),
    Port(u16),
    IdentityFile(String),
    IdentitiesOnly(bool),
    ProxyJump(Jump),
    ProxyCommand(String),
    ConnectTimeout(Duration),
    ServerAliveInterval(Duration),
    HostKeyAlias(String),
    UserKnownHostsFile(Vec<String>),
    GlobalKnownHostsFile(Vec<String>),
    /// `CanonicalizeHostname`: on (`yes`, `always`) or off.
    Canonicalize(bool),
    RevokedHostKeys(String),
}

#[derive(Debug, Clone)]
struct Criterion {
    negated: bool,
    test: Test,
}

#[derive(Debug, Clone)]
enum Test {
    All,
    /// True in the final pass only (`Match final`, or a canonicalized host name).
    Canonical,
    /// Like `Canonical`, and asks for the final pass.
    Final,
    /// Comma-separated pattern lists.
    Host(String),
    OriginalHost(String),
    User(String),
    LocalUser(String),
    /// One shipit never evaluates (`exec` runs a command): the criterion as written.
    Unsupported(String),
}

/// `Match` criteria OpenSSH knows that need a command, the network or the session
/// (`localnetwork`, `tagged`, `version`, `sessiontype` and `command` came after 9.2).
const UNEVALUATED_CRITERIA: [&str; 6] = [
    "exec",
    "localnetwork",
    "tagged",
    "version",
    "sessiontype",
    "command",
];

/// Every keyword OpenSSH 9.2's client knows (`readconf.c`), Debian's GSSAPI ones, Apple's
/// `UseKeychain` (macOS's `ssh` takes it, and many a `~/.ssh/config` has it), and those
/// added since; shipit reads a few of them and accepts the rest, as valid options it does
/// not use.
const KNOWN_KEYWORDS: &[&str] = &[
    "addkeystoagent",
    "addressfamily",
    "afstokenpassing",
    "batchmode",
    "bindaddress",
    "bindinterface",
    "canonicaldomains",
    "canonicalizefallbacklocal",
    "canonicalizehostname",
    "canonicalizemaxdots",
    "canonicalizepermittedcnames",
    "casignaturealgorithms",
    "certificatefile",
    "challengeresponseauthentication",
    "channeltimeout",
    "checkhostip",
    "cipher",
    "ciphers",
    "clearallforwardings",
    "compression",
    "compressionlevel",
    "connectionattempts",
    "connecttimeout",
    "controlmaster",
    "controlpath",
    "controlpersist",
    "dsaauthentication",
    "dynamicforward",
    "enableescapecommandline",
    "enablesshkeysign",
    "escapechar",
    "exitonforwardfailure",
    "fallbacktorsh",
    "fingerprinthash",
    "forkafterauthentication",
    "forwardagent",
    "forwardx11",
    "forwardx11timeout",
    "forwardx11trusted",
    "gatewayports",
    "globalknownhostsfile",
    "globalknownhostsfile2",
    "gssapiauthentication",
    "gssapiclientidentity",
    "gssapidelegatecredentials",
    "gssapikexalgorithms",
    "gssapikeyexchange",
    "gssapirenewalforcesrekey",
    "gssapiserveridentity",
    "gssapitrustdns",
    "hashknownhosts",
    "host",
    "hostbasedacceptedalgorithms",
    "hostbasedauthentication",
    "hostbasedkeytypes",
    "hostkeyalgorithms",
    "hostkeyalias",
    "hostname",
    "identitiesonly",
    "identityagent",
    "identityfile",
    "identityfile2",
    "ignoreunknown",
    "include",
    "ipqos",
    "kbdinteractiveauthentication",
    "kbdinteractivedevices",
    "keepalive",
    "kerberosauthentication",
    "kerberostgtpassing",
    "kexalgorithms",
    "knownhostscommand",
    "localcommand",
    "localforward",
    "loglevel",
    "logverbose",
    "macs",
    "match",
    "nohostauthenticationforlocalhost",
    "numberofpasswordprompts",
    "obscurekeystroketiming",
    "passwordauthentication",
    "permitlocalcommand",
    "permitremoteopen",
    "pkcs11provider",
    "port",
    "preferredauthentications",
    "protocol",
    "proxycommand",
    "proxyjump",
    "proxyusefdpass",
    "pubkeyacceptedalgorithms",
    "pubkeyacceptedkeytypes",
    "pubkeyauthentication",
    "refuseconnection",
    "rekeylimit",
    "remotecommand",
    "remoteforward",
    "requesttty",
    "requiredrsasize",
    "revokedhostkeys",
    "rhostsauthentication",
    "rhostsrsaauthentication",
    "rsaauthentication",
    "securitykeyprovider",
    "sendenv",
    "serveralivecountmax",
    "serveraliveinterval",
    "sessiontype",
    "setenv",
    "skeyauthentication",
    "smartcarddevice",
    "stdinnull",
    "streamlocalbindmask",
    "streamlocalbindunlink",
    "stricthostkeychecking",
    "syslogfacility",
    "tag",
    "tcpkeepalive",
    "tisauthentication",
    "tunnel",
    "tunneldevice",
    "updatehostkeys",
    "useprivilegedport",
    "user",
    "userknownhostsfile",
    "userknownhostsfile2",
    "usekeychain",
    "useroaming",
    "usersh",
    "verifyhostkeydns",
    "versionaddendum",
    "visualhostkey",
    "warnweakcrypto",
    "xauthlocation",
];

/// Whose file is read: it decides where relative `Include` paths point.
#[derive(Debug, Clone, Copy)]
enum Kind {
    User,
    System,
}

impl SshConfig {
    /// Reads `user_file` (usually `~/.ssh/config`) then `system_file` (usually
    /// `/etc/ssh/ssh_config`); a missing file is the same as an empty one.
    pub fn load(
        user_file: &Path,
        system_file: Option<&Path>,
        local: &Local,
    ) -> Result<SshConfig, ConfigError> {
        let mut files = Vec::new();
        let sources = [(Some(user_file), Kind::User), (system_file, Kind::System)];
        for (path, kind) in sources {
            let Some(path) = path else { continue };
            let Some(text) = read_optional(path)? else {
                continue;
            };
            let reader = Reader { local, kind };
            files.push(reader.parse_file(path, &text, 0)?);
        }
        Ok(SshConfig {
            files,
            local: local.clone(),
        })
    }

    /// For tests: reads `text` as if it were the user file `file` (includes still come from
    /// disk).
    pub fn parse(file: &Path, text: &str, local: &Local) -> Result<SshConfig, ConfigError> {
        let reader = Reader {
            local,
            kind: Kind::User,
        };
        Ok(SshConfig {
            files: vec![reader.parse_file(file, text, 0)?],
            local: local.clone(),
        })
    }

    /// True when no file held anything but comments and blank lines.
    pub fn is_empty(&self) -> bool {
        self.files.iter().all(|f| f.lines.is_empty())
    }

    /// What applies to `alias`. `user` is the remote user if the caller already knows it
    /// (like `ssh -l`): it is what `Match user` tests, before any `User` line.
    ///
    /// Fails only for a mistake OpenSSH also finds only then: a `HostName` with a token it
    /// cannot fill in, in a block that applies to `alias`.
    pub fn resolve(&self, alias: &str, user: Option<&str>) -> Result<HostConfig, ConfigError> {
        let mut walker = Walker {
            alias,
            user,
            local: &self.local,
            out: HostConfig::default(),
            error: None,
            final_pass: None,
            wants_final: None,
            ignore_unknown: None,
            canonicalize: None,
        };
        for file in &self.files {
            walker.walk(file, false);
        }
        // OpenSSH reads every file again for the final host name, lowercased, when a
        // `Match final` asks or after canonicalizing; what the first pass set stays.
        let second = match (walker.wants_final.clone(), walker.canonicalize.clone()) {
            (Some(origin), _) => Some((origin, "`Match final`")),
            (None, Some((true, origin))) => Some((
                origin,
                "`CanonicalizeHostname` (shipit looks no name up in DNS: it uses the name as it is)",
            )),
            _ => None,
        };
        if let Some((origin, why)) = second
            && walker.error.is_none()
        {
            let name = host_name(&walker.current_host());
            walker.note(format!(
                "{origin}: {why} reads the config again for the final host name `{name}`"
            ));
            walker.final_pass = Some(name);
            walker.ignore_unknown = None;
            for file in &self.files {
                walker.walk(file, false);
            }
        }
        match walker.error {
            Some(error) => Err(error),
            None => Ok(walker.out),
        }
    }
}

/// Reads one file's text into lines, following includes.
struct Reader<'a> {
    local: &'a Local,
    kind: Kind,
}

impl Reader<'_> {
    fn parse_file(&self, file: &Path, text: &str, depth: usize) -> Result<ConfigFile, ConfigError> {
        let mut lines = Vec::new();
        for (index, raw) in text.split('\n').enumerate() {
            let origin = Origin {
                file: file.to_owned(),
                line: index + 1,
            };
            if let Some(item) = self.parse_line(raw, &origin, depth)? {
                lines.push(Line { item, origin });
            }
        }
        Ok(ConfigFile { lines })
    }

    fn parse_line(
        &self,
        raw: &str,
        origin: &Origin,
        depth: usize,
    ) -> Result<Option<Item>, ConfigError> {
        let invalid = |problem: String| ConfigError::Invalid {
            origin: origin.clone(),
            problem,
        };
        let Some((keyword, rest)) = split_keyword(raw) else {
            return Ok(None);
        };
        // OpenSSH refuses these for every keyword, including those shipit skips.
        if rest.is_empty() {
            return Err(invalid(format!("`{keyword}` has no value")));
        }
        let args = split_args(rest).ok_or_else(|| invalid("a quote is not closed".into()))?;
        let lower = keyword.to_ascii_lowercase();
        let item = match lower.as_str() {
            "host" => Item::Host(host_patterns(args).map_err(invalid)?),
            "match" => Item::Match(match_criteria(args).map_err(invalid)?),
            "include" => Item::Include(self.include(&args, origin, depth)?),
            "proxycommand" => Item::Set(Directive::ProxyCommand(rest.to_owned())),
            "ignoreunknown" => {
                Item::IgnoreUnknown(one("IgnoreUnknown", &args).map_err(invalid)?.to_owned())
            }
            _ if !KNOWN_KEYWORDS.contains(&lower.as_str()) => Item::Unknown(lower),
            _ => match directive(&lower, &args).map_err(invalid)? {
                Some(d) => Item::Set(d),
                None => return Ok(None),
            },
        };
        Ok(Some(item))
    }

    /// The files an `Include` line names, each parsed one level deeper.
    fn include(
        &self,
        patterns: &[String],
        origin: &Origin,
        depth: usize,
    ) -> Result<Vec<ConfigFile>, ConfigError> {
        let mut files = Vec::new();
        for pattern in patterns {
            if pattern.starts_with('~') && matches!(self.kind, Kind::System) {
                return Err(ConfigError::Invalid {
                    origin: origin.clone(),
                    problem: format!(
                        "`Include {pattern}`: the system file may not include from a home directory (OpenSSH refuses it); use an absolute path"
                    ),
                });
            }
            for path in glob(&self.include_path(pattern)) {
                if depth + 1 > MAX_INCLUDE_DEPTH {
                    return Err(ConfigError::TooDeep {
                        origin: origin.clone(),
                        file: path,
                    });
                }
                // OpenSSH skips a named file that is not there.
                if let Some(text) = read_optional(&path)? {
                    files.push(self.parse_file(&path, &text, depth + 1)?);
                }
            }
        }
        Ok(files)
    }

    fn include_path(&self, pattern: &str) -> PathBuf {
        if let Some(path) = expand_tilde(pattern, &self.local.home) {
            return path;
        }
        let base = match self.kind {
            Kind::User => self.local.home.join(".ssh"),
            Kind::System => PathBuf::from(SYSTEM_DIR),
        };
        base.join(pattern)
    }
}

/// The file's text, or `None` when it does not exist. Bytes that are not UTF-8 are replaced
/// rather than refused: they are almost always in comments.
fn read_optional(path: &Path) -> Result<Option<String>, ConfigError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            file: path.to_owned(),
            source,
        }),
    }
}

/// The keyword and the raw rest of a line, or `None` for blank and comment lines. The
/// keyword ends at whitespace or `=`; one `=` with optional whitespace around it may separate
/// it from the value.
fn split_keyword(raw: &str) -> Option<(&str, &str)> {
    let line = raw.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\r' | '\x0c'));
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let end = line.find([' ', '\t', '=']).unwrap_or(line.len());
    let (keyword, rest) = line.split_at(end);
    let rest = rest.trim_start_matches([' ', '\t']);
    let rest = rest.strip_prefix('=').unwrap_or(rest);
    Some((keyword, rest.trim_start_matches([' ', '\t'])))
}

/// Splits a value into arguments like OpenSSH's `argv_split`: whitespace separates, `"` or
/// `'` quote, a backslash escapes a quote, a backslash or (unquoted) a space, and an unquoted
/// `#` at the start of an argument ends the line. `None` when a quote is not closed.
fn split_args(rest: &str) -> Option<Vec<String>> {
    let mut args = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.next_if(|c| matches!(c, ' ' | '\t')).is_some() {}
        match chars.peek() {
            None | Some('#') => return Some(args),
            Some(_) => {}
        }
        let mut arg = String::new();
        let mut quote = None;
        while let Some(&c) = chars.peek() {
            if quote.is_none() && matches!(c, ' ' | '\t') {
                break;
            }
            chars.next();
            match c {
                '\\' => {
                    let escaped = chars.next_if(|&n| {
                        matches!(n, '\'' | '"' | '\\') || (quote.is_none() && n == ' ')
                    });
                    arg.push(escaped.unwrap_or('\\'));
                }
                '"' | '\'' if quote.is_none() => quote = Some(c),
                _ if quote == Some(c) => quote = None,
                _ => arg.push(c),
            }
        }
        if quote.is_some() {
            return None;
        }
        args.push(arg);
    }
}

fn host_patterns(args: Vec<String>) -> Result<Vec<String>, String> {
    if args.is_empty() {
        return Err("`Host` needs at least one pattern".into());
    }
    if args.iter().any(|p| p.is_empty() || p == "!") {
        return Err("`Host` patterns cannot be empty".into());
    }
    Ok(args)
}

fn match_criteria(args: Vec<String>) -> Result<Vec<Criterion>, String> {
    let mut criteria = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (negated, arg) = match arg.strip_prefix('!') {
            Some(rest) => (true, rest.to_owned()),
            None => (false, arg),
        };
        // `attribute=value` is accepted as well as `attribute value`.
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_ascii_lowercase(), Some(value.to_owned())),
            None => (arg.to_ascii_lowercase(), None),
        };
        let bare = match name.as_str() {
            "all" => Some(Test::All),
            "canonical" => Some(Test::Canonical),
            "final" => Some(Test::Final),
            _ => None,
        };
        if let Some(test) = bare {
            criteria.push(Criterion { negated, test });
            continue;
        }
        let unevaluated = UNEVALUATED_CRITERIA.contains(&name.as_str());
        if !unevaluated
            && !matches!(
                name.as_str(),
                "host" | "originalhost" | "user" | "localuser"
            )
        {
            return Err(format!(
                "unknown `Match` criterion `{name}`; OpenSSH knows `all`, `canonical`, `final`, `exec`, `host`, `originalhost`, `user`, `localuser` (and later versions `localnetwork`, `tagged`, `version`, `sessiontype`, `command`)"
            ));
        }
        let value = match inline.or_else(|| args.next()) {
            Some(v) if !v.is_empty() => v,
            // OpenSSH 10 lets `tagged` and `command` go without a value.
            _ if matches!(name.as_str(), "tagged" | "command") => String::new(),
            _ => return Err(format!("`Match {name}` needs a pattern")),
        };
        let test = match name.as_str() {
            "host" => Test::Host(value),
            "originalhost" => Test::OriginalHost(value),
            "user" => Test::User(value),
            "localuser" => Test::LocalUser(value),
            _ => Test::Unsupported(format!("{}{name}", if negated { "!" } else { "" })),
        };
        criteria.push(Criterion { negated, test });
    }
    if criteria.is_empty() {
        return Err("`Match` needs at least one criterion".into());
    }
    let all = criteria.iter().any(|c| matches!(c.test, Test::All));
    let others = criteria
        .iter()
        .any(|c| !matches!(c.test, Test::All | Test::Canonical | Test::Final));
    if all && others {
        return Err("`Match all` cannot be combined with other criteria".into());
    }
    Ok(criteria)
}

/// The directive a keyword line sets, `None` for a keyword shipit does not use.
fn directive(keyword: &str, args: &[String]) -> Result<Option<Directive>, String> {
    let directive = match keyword {
        "hostname" => Directive::HostName(one("HostName", args)?.to_owned()),
        "user" => Directive::User(one("User", args)?.to_owned()),
        "port" => Directive::Port(port(one("Port", args)?)?),
        "identityfile" | "identityfile2" => {
            Directive::IdentityFile(one("IdentityFile", args)?.to_owned())
        }
        "identitiesonly" => Directive::IdentitiesOnly(flag("IdentitiesOnly", args)?),
        "proxyjump" => Directive::ProxyJump(jump(one("ProxyJump", args)?)?),
        "connecttimeout" => match connect_timeout(args)? {
            Some(timeout) => Directive::ConnectTimeout(timeout),
            // `none` leaves it unset: a later line may still set it, as in OpenSSH.
            None => return Ok(None),
        },
        "serveraliveinterval" => Directive::ServerAliveInterval(server_alive_interval(args)?),
        "hostkeyalias" => Directive::HostKeyAlias(one("HostKeyAlias", args)?.to_owned()),
        "userknownhostsfile" => Directive::UserKnownHostsFile(files(args)),
        "globalknownhostsfile" => Directive::GlobalKnownHostsFile(files(args)),
        "canonicalizehostname" => Directive::Canonicalize(canonicalize(args)?),
        "revokedhostkeys" => Directive::RevokedHostKeys(one("RevokedHostKeys", args)?.to_owned()),
        _ => return Ok(None),
    };
    Ok(Some(directive))
}

/// A list of files; `none` alone means no file.
fn files(args: &[String]) -> Vec<String> {
    match args {
        [only] if only.eq_ignore_ascii_case("none") => Vec::new(),
        _ => args.to_vec(),
    }
}

/// The single value the keyword `name` takes; OpenSSH refuses extra words after it.
fn one<'a>(name: &str, args: &'a [String]) -> Result<&'a str, String> {
    match args {
        [value] => Ok(value),
        [] => Err(format!("`{name}` has no value")),
        _ => Err(format!(
            "`{name}` takes one value, not {}; quote a value that contains spaces",
            args.len()
        )),
    }
}

/// `HostName` with `%h` (the alias) and `%%` filled in; it may use no other token, as in
/// OpenSSH.
fn hostname(value: &str, alias: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('h') => out.push_str(alias),
            Some(other) => {
                return Err(format!(
                    "`HostName` may use only the `%h` and `%%` tokens, not `%{other}`"
                ));
            }
            None => {
                return Err("`HostName` ends with a lone `%`; write `%%` for a literal `%`".into());
            }
        }
    }
    Ok(out)
}

/// A port number, or a service name as `getservbyname` knows it (`ssh`), as OpenSSH's
/// `a2port` reads it.
fn port(value: &str) -> Result<u16, String> {
    let number = if value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<u16>().ok()
    } else {
        service_port(value)
    };
    match number {
        Some(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "`Port` must be a number from 1 to 65535 or a service name like `ssh`, not `{value}`"
        )),
    }
}

/// The TCP port `/etc/services` gives a service name (or alias); `ssh` is 22 without it.
fn service_port(name: &str) -> Option<u16> {
    let services = fs::read_to_string("/etc/services").unwrap_or_default();
    let found = services.lines().find_map(|line| {
        let line = line.split('#').next()?;
        let mut words = line.split_whitespace();
        let service = words.next()?;
        let (port, protocol) = words.next()?.split_once('/')?;
        let named = service == name || words.any(|alias| alias == name);
        (named && protocol == "tcp").then(|| port.parse::<u16>().ok())?
    });
    found.or((name == "ssh").then_some(22))
}

fn canonicalize(args: &[String]) -> Result<bool, String> {
    let value = one("CanonicalizeHostname", args)?;
    match value.to_ascii_lowercase().as_str() {
        "yes" | "true" | "always" => Ok(true),
        "no" | "false" => Ok(false),
        _ => Err(format!(
            "`CanonicalizeHostname` must be `yes`, `no` or `always`, not `{value}`"
        )),
    }
}

fn flag(name: &str, args: &[String]) -> Result<bool, String> {
    let value = one(name, args)?;
    match value.to_ascii_lowercase().as_str() {
        "yes" | "true" => Ok(true),
        "no" | "false" => Ok(false),
        _ => Err(format!("`{name}` must be `yes` or `no`, not `{value}`")),
    }
}

/// `None` for `none` (no value: a later line may set one). Zero means "no timeout" to
/// OpenSSH; it is kept so the caller can say it uses its own bound instead.
fn connect_timeout(args: &[String]) -> Result<Option<Duration>, String> {
    let value = one("ConnectTimeout", args)?;
    if value == "none" {
        return Ok(None);
    }
    seconds(value)
        .map(|s| Some(Duration::from_secs(s)))
        .ok_or_else(|| {
            format!(
                "`ConnectTimeout` must be a number of seconds (like `10` or `1m30s`) or `none`, not `{value}`"
            )
        })
}

fn server_alive_interval(args: &[String]) -> Result<Duration, String> {
    let value = one("ServerAliveInterval", args)?;
    seconds(value).map(Duration::from_secs).ok_or_else(|| {
        format!(
            "`ServerAliveInterval` must be a number of seconds (like `30` or `1m`), not `{value}`"
        )
    })
}

fn jump(value: &str) -> Result<Jump, String> {
    if value.eq_ignore_ascii_case("none") {
        return Ok(Jump::None);
    }
    let mut hops = Vec::new();
    for hop in value.split(',') {
        if hop.is_empty() {
            return Err(format!("`ProxyJump` has an empty hop in `{value}`"));
        }
        parse_hop(hop).map_err(|e| format!("`ProxyJump`: {e}"))?;
        hops.push(hop.to_owned());
    }
    Ok(Jump::Hops(hops))
}

/// Seconds in OpenSSH's time format: `30`, `30s`, `5m`, `1h30m` (units `s m h d w`, any
/// case). `None` when it is not one.
fn seconds(value: &str) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in value.chars() {
        if let Some(digit) = c.to_digit(10) {
            number = Some(
                number
                    .unwrap_or(0)
                    .checked_mul(10)?
                    .checked_add(digit.into())?,
            );
            continue;
        }
        let unit = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 60 * 60,
            'd' => 24 * 60 * 60,
            'w' => 7 * 24 * 60 * 60,
            _ => return None,
        };
        total = total.checked_add(number.take()?.checked_mul(unit)?)?;
    }
    total = total.checked_add(number.unwrap_or(0))?;
    // OpenSSH keeps times in an `int`.
    (total <= i32::MAX as u64).then_some(total)
}

/// One `ProxyJump` hop, `[user@]host[:port]` or `ssh://[user@]host[:port]`, as (user, host,
/// port). An IPv6 address goes in brackets: `[::1]:22`.
pub fn parse_hop(hop: &str) -> Result<(Option<String>, String, Option<u16>), String> {
    let bad = |why: &str| format!("`{hop}` is not a valid jump host: {why}");
    let rest = match hop.strip_prefix("ssh://") {
        Some(rest) => rest.strip_suffix('/').unwrap_or(rest),
        None => hop,
    };
    if rest.contains('/') {
        return Err(bad("a path is not allowed"));
    }
    let (user, address) = match rest.rsplit_once('@') {
        Some(("", _)) => return Err(bad("the user before `@` is empty")),
        Some((user, address)) => (Some(user.to_owned()), address),
        None => (None, rest),
    };
    let (host, port_text) = if let Some(bracketed) = address.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| bad("`[` is not closed by `]`"))?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(bad("only `:port` may follow `]`")),
            },
        }
    } else {
        match address.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return Err(bad("put an IPv6 address in brackets, like `[::1]:22`"));
            }
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        }
    };
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    let port = match port_text {
        Some(text) => Some(port(text).map_err(|_| {
            bad(&format!(
                "the port must be a number from 1 to 65535, not `{text}`"
            ))
        })?),
        None => None,
    };
    Ok((user, host.to_owned(), port))
}

/// Fills in `%` tokens and a leading `~/` (see [`Tokens`]); an unknown token is an error
/// rather than left in place, as OpenSSH does. The tokens are those OpenSSH fills in for
/// `IdentityFile` and `UserKnownHostsFile`: `%C %d %h %i %k %L %l %n %p %r %u %%`.
pub fn expand(text: &str, tokens: &Tokens) -> Result<String, ConfigError> {
    let home = tokens.local.home.to_string_lossy();
    let (out, rest) = match text.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => (home.to_string(), rest),
        _ => (String::new(), text),
    };
    fill(out, rest, text, tokens, FILE_TOKENS, true)
}

/// The tokens OpenSSH fills in for `IdentityFile` and `UserKnownHostsFile`.
const FILE_TOKENS: &str = "%C %d %h %i %k %L %l %n %p %r %u";

/// The tokens of a `ProxyJump` hop: OpenSSH turns the hop into a `ProxyCommand`, which it
/// expands with these.
const JUMP_TOKENS: &str = "%h %k %n %p %r";

/// A `ProxyJump` hop with `%h %k %n %p %r %%` filled in for the target (`tokens`).
pub fn expand_jump(text: &str, tokens: &Tokens) -> Result<String, ConfigError> {
    fill(String::new(), text, text, tokens, JUMP_TOKENS, false)
}

/// Appends `rest` to `out` with the tokens in `known` (and `%%`) filled in, and with
/// `dollar` the environment's `${NAME}`s, as OpenSSH's `percent_dollar_expand`.
fn fill(
    mut out: String,
    rest: &str,
    text: &str,
    tokens: &Tokens,
    known: &'static str,
    dollar: bool,
) -> Result<String, ConfigError> {
    let home = tokens.local.home.to_string_lossy();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        if dollar && c == '$' && chars.as_str().starts_with('{') {
            let after = &chars.as_str()[1..];
            let Some(end) = after.find('}').filter(|&end| end > 0) else {
                return Err(ConfigError::OpenVariable { text: text.into() });
            };
            let name = &after[..end];
            match tokens.local.env.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    return Err(ConfigError::UnsetVariable {
                        name: name.into(),
                        text: text.into(),
                    });
                }
            }
            chars = after[end + 1..].chars();
            continue;
        }
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(token) = chars.next() else {
            return Err(ConfigError::TrailingPercent { text: text.into() });
        };
        if token != '%' && !known.contains(&format!("%{token}")) {
            return Err(ConfigError::UnknownToken {
                token,
                text: text.into(),
                known,
            });
        }
        match token {
            '%' => out.push('%'),
            'h' => out.push_str(tokens.host),
            'n' => out.push_str(tokens.alias),
            'p' => out.push_str(&tokens.port.to_string()),
            'r' => out.push_str(tokens.user),
            'u' => out.push_str(&tokens.local.user),
            'd' => out.push_str(&home),
            'l' => out.push_str(&tokens.local.hostname),
            'L' => out.push_str(short_hostname(&tokens.local.hostname)),
            'i' => out.push_str(&tokens.local.uid.to_string()),
            'k' => out.push_str(tokens.key_alias),
            'C' => out.push_str(&connection_hash(tokens)),
            _ => {
                return Err(ConfigError::UnknownToken {
                    token,
                    text: text.into(),
                    known,
                });
            }
        }
    }
    Ok(out)
}

/// `%C`: OpenSSH's hash of the connection, hex SHA-1 of `%l%h%p%r`.
fn connection_hash(tokens: &Tokens) -> String {
    use sha1::Digest;
    let mut hash = sha1::Sha1::new();
    hash.update(tokens.local.hostname.as_bytes());
    hash.update(tokens.host.as_bytes());
    hash.update(tokens.port.to_string().as_bytes());
    hash.update(tokens.user.as_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn short_hostname(hostname: &str) -> &str {
    hostname.split('.').next().unwrap_or(hostname)
}

/// The name OpenSSH connects to and looks host keys up under: lowercased, unless it is an
/// IP address (those it leaves as written).
pub fn host_name(name: &str) -> String {
    if name.parse::<std::net::IpAddr>().is_ok() {
        name.to_owned()
    } else {
        name.to_ascii_lowercase()
    }
}

/// `path` with a leading `~` or `~/` made absolute, otherwise as it is.
pub fn tilde(path: &str, home: &Path) -> PathBuf {
    expand_tilde(path, home).unwrap_or_else(|| PathBuf::from(path))
}

/// `~` or `~/...` made absolute; `None` for any other path.
fn expand_tilde(path: &str, home: &Path) -> Option<PathBuf> {
    match path.strip_prefix('~')? {
        "" => Some(home.to_owned()),
        rest => Some(home.join(rest.strip_prefix('/')?)),
    }
}

/// The existing paths `pattern` names, sorted. `*` and `?` in a path component match file
/// names (not ones starting with `.` unless the pattern does, as glob(3)); a directory that
/// cannot be listed matches nothing.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::new()];
    let mut wild = false;
    for component in pattern.components() {
        let name = match component {
            Component::Normal(name) => name.to_string_lossy(),
            _ => {
                found.iter_mut().for_each(|p| p.push(component));
                continue;
            }
        };
        if !name.contains(['*', '?']) {
            found.iter_mut().for_each(|p| p.push(&*name));
            continue;
        }
        wild = true;
        found = found
            .iter()
            .flat_map(|dir| matching_entries(dir, &name))
            .collect();
    }
    found.retain(|p| fs::symlink_metadata(p).is_ok());
    if wild {
        // Whole paths, byte order: what glob(3) sorts by.
        found.sort_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
    }
    found
}

fn matching_entries(dir: &Path, pattern: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            (!name.starts_with('.') || pattern.starts_with('.'))
                && pattern::wildcard(pattern, &name)
        })
        .map(|entry| dir.join(entry.file_name()))
        .collect()
}

/// Walks the parsed files for one alias, collecting what applies.
struct Walker<'a> {
    alias: &'a str,
    user: Option<&'a str>,
    local: &'a Local,
    out: HostConfig,
    /// The first line that stops this host.
    error: Option<ConfigError>,
    /// The second pass `Match final` asks for: `Host` then tests the final host name, and
    /// `Match canonical`/`final` hold.
    final_pass: Option<String>,
    /// The first `Match final` line seen.
    wants_final: Option<Origin>,
    /// `IgnoreUnknown`'s patterns, once a line that applies set them.
    ignore_unknown: Option<String>,
    /// The first `CanonicalizeHostname` that applies, and where.
    canonicalize: Option<(bool, Origin)>,
}

impl Walker<'_> {
    /// Each file, included ones too, starts in the state of the line that included it; a
    /// `Host` or `Match` in it decides for the rest of that file only, so the including
    /// file's state is untouched on return. A file included where nothing applies is still
    /// read (`never`), as OpenSSH does: its `Match final` and unknown keywords count.
    fn walk(&mut self, file: &ConfigFile, never: bool) {
        let mut active = !never;
        for line in &file.lines {
            match &line.item {
                Item::Host(patterns) => {
                    // `Host` compares case-sensitively, unlike `Match host` (OpenSSH's
                    // `match_pattern` against `match_hostname`).
                    let subject = self.final_pass.as_deref().unwrap_or(self.alias);
                    active = !never
                        && pattern::list(patterns.iter().map(String::as_str), subject, false);
                }
                Item::Match(criteria) => {
                    let holds = self.match_applies(criteria, &line.origin, never);
                    active = !never && holds;
                }
                Item::Set(directive) if active => self.apply(directive, &line.origin),
                Item::Include(files) => {
                    let never = !active;
                    files.iter().for_each(|f| self.walk(f, never));
                }
                Item::IgnoreUnknown(patterns) if active => {
                    self.ignore_unknown.get_or_insert_with(|| patterns.clone());
                }
                Item::Unknown(keyword) => {
                    let ignored = self
                        .ignore_unknown
                        .as_ref()
                        .is_some_and(|p| pattern::list(p.split(','), keyword, true));
                    if !ignored {
                        self.error.get_or_insert(ConfigError::Invalid {
                            origin: line.origin.clone(),
                            problem: format!(
                                "`{keyword}` is not an OpenSSH option (a typo?); `IgnoreUnknown {keyword}` before it makes OpenSSH and shipit skip it"
                            ),
                        });
                    }
                }
                Item::Set(_) | Item::IgnoreUnknown(_) => {}
            }
        }
    }

    /// All criteria must hold. One shipit cannot evaluate skips the block, with a note,
    /// when the others would have let it apply. `never`: the block cannot apply anyway.
    fn match_applies(&mut self, criteria: &[Criterion], origin: &Origin, never: bool) -> bool {
        let mut unsupported = None;
        let mut holds = true;
        for criterion in criteria {
            let result = match &criterion.test {
                Test::All => true,
                Test::Canonical => self.final_pass.is_some(),
                Test::Final => {
                    self.wants_final.get_or_insert_with(|| origin.clone());
                    self.final_pass.is_some()
                }
                Test::Host(list) => pattern::list(list.split(','), &self.current_host(), true),
                Test::OriginalHost(list) => pattern::list(list.split(','), self.alias, true),
                Test::User(list) => pattern::list(list.split(','), self.remote_user(), false),
                Test::LocalUser(list) => pattern::list(list.split(','), &self.local.user, false),
                Test::Unsupported(name) => {
                    unsupported.get_or_insert(name);
                    continue;
                }
            };
            if result == criterion.negated {
                holds = false;
            }
        }
        match unsupported {
            Some(name) if holds && !never => {
                self.note(format!(
                    "{origin}: `Match {name}` is not supported (shipit runs no command to decide); the block is skipped"
                ));
                false
            }
            _ => holds,
        }
    }

    fn note(&mut self, note: String) {
        if !self.out.notes.contains(&note) {
            self.out.notes.push(note);
        }
    }

    /// What `Match host` tests: the `HostName` set so far, else the alias; in the final pass,
    /// the final host name.
    fn current_host(&self) -> String {
        if let Some(name) = &self.final_pass {
            return name.clone();
        }
        match &self.out.hostname {
            Some(setting) => setting.value.clone(),
            None => self.alias.to_owned(),
        }
    }

    /// What `Match user` tests: the caller's user, else the `User` set so far, else the local
    /// user, as OpenSSH does.
    fn remote_user(&self) -> &str {
        match (self.user, &self.out.user) {
            (Some(user), _) => user,
            (None, Some(setting)) => &setting.value,
            (None, None) => &self.local.user,
        }
    }

    fn apply(&mut self, directive: &Directive, origin: &Origin) {
        let out = &mut self.out;
        match directive {
            // The final pass starts with the host name final.
            Directive::HostName(raw) if out.hostname.is_none() && self.final_pass.is_none() => {
                match hostname(raw, self.alias) {
                    Ok(name) => first(&mut out.hostname, name, origin),
                    Err(problem) => {
                        self.error.get_or_insert(ConfigError::Invalid {
                            origin: origin.clone(),
                            problem,
                        });
                    }
                }
            }
            Directive::HostName(_) => {}
            Directive::User(v) => first(&mut out.user, v.clone(), origin),
            Directive::Port(v) => first(&mut out.port, *v, origin),
            // A repeated file is offered once, as OpenSSH registers it once.
            Directive::IdentityFile(v) if out.identity_files.iter().any(|s| s.value == *v) => {}
            Directive::IdentityFile(v) => out.identity_files.push(Setting {
                value: v.clone(),
                origin: origin.clone(),
            }),
            Directive::IdentitiesOnly(v) => first(&mut out.identities_only, *v, origin),
            Directive::ProxyJump(v) if out.proxy_command.is_none() => {
                first(&mut out.proxy_jump, v.clone(), origin)
            }
            Directive::ProxyCommand(v) if out.proxy_jump.is_none() => {
                first(&mut out.proxy_command, v.clone(), origin)
            }
            Directive::ProxyJump(_) | Directive::ProxyCommand(_) => {}
            Directive::ConnectTimeout(v) => first(&mut out.connect_timeout, *v, origin),
            Directive::ServerAliveInterval(v) => first(&mut out.server_alive_interval, *v, origin),
            Directive::HostKeyAlias(v) => first(&mut out.host_key_alias, v.clone(), origin),
            Directive::UserKnownHostsFile(v) => first(&mut out.user_known_hosts, v.clone(), origin),
            Directive::GlobalKnownHostsFile(v) => {
                first(&mut out.global_known_hosts, v.clone(), origin)
            }
            Directive::RevokedHostKeys(v) => first(&mut out.revoked_host_keys, v.clone(), origin),
            Directive::Canonicalize(on) => {
                self.canonicalize
                    .get_or_insert_with(|| (*on, origin.clone()));
            }
        }
    }
}

/// OpenSSH's first-match-wins: a value already set stays.
fn first<T>(slot: &mut Option<Setting<T>>, value: T, origin: &Origin) {
    if slot.is_none() {
        *slot = Some(Setting {
            value,
            origin: origin.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/home/u/.ssh/config";

    fn local_at(home: &Path) -> Local {
        Local {
            home: home.to_owned(),
            user: "me".into(),
            uid: 1000,
            hostname: "laptop.example.com".into(),
            env: Default::default(),
        }
    }

    fn local() -> Local {
        local_at(Path::new("/home/u"))
    }

    fn parse(text: &str) -> SshConfig {
        SshConfig::parse(Path::new(FILE), text, &local()).unwrap()
    }

    fn parse_err(text: &str) -> String {
        SshConfig::parse(Path::new(FILE), text, &local())
            .unwrap_err()
            .to_string()
    }

    fn value<T: Clone>(setting: &Option<Setting<T>>) -> Option<T> {
        setting.as_ref().map(|s| s.value.clone())
    }

    fn line<T>(setting: &Option<Setting<T>>) -> usize {
        setting.as_ref().unwrap().origin.line
    }

    fn identities(config: &HostConfig) -> Vec<&str> {
        config
            .identity_files
            .iter()
            .map(|s| s.value.as_str())
            .collect()
    }

    /// A temporary home with `.ssh/` and the given files in it (paths relative to `.ssh`).
    fn home_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = home.path().join(".ssh").join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        home
    }

    fn parse_in(home: &Path, text: &str) -> SshConfig {
        SshConfig::parse(&home.join(".ssh/config"), text, &local_at(home)).unwrap()
    }

    #[test]
    fn first_match_wins_across_blocks() {
        let config = parse(
            "Host web\n  Port 2222\n  User deploy\nHost web*\n  Port 22\n  User root\n  HostName 10.0.0.1\n",
        );
        let web = config.resolve("web", None).unwrap();
        assert_eq!(value(&web.port), Some(2222));
        assert_eq!(value(&web.user), Some("deploy".into()));
        assert_eq!(value(&web.hostname), Some("10.0.0.1".into()));
        assert_eq!(line(&web.hostname), 7);
        let web2 = config.resolve("web2", None).unwrap();
        assert_eq!(value(&web2.port), Some(22));
    }

    #[test]
    fn host_star_supplies_defaults_after_specific_blocks() {
        let config =
            parse("Host db\n User postgres\nHost *\n User admin\n ServerAliveInterval 30\n");
        let db = config.resolve("db", None).unwrap();
        assert_eq!(value(&db.user), Some("postgres".into()));
        assert_eq!(
            value(&db.server_alive_interval),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            value(&config.resolve("other", None).unwrap().user),
            Some("admin".into())
        );
    }

    #[test]
    fn lines_before_the_first_host_apply_to_every_host() {
        let config = parse("User everyone\nHost a\n User only-a\n");
        assert_eq!(
            value(&config.resolve("a", None).unwrap().user),
            Some("everyone".into())
        );
        assert_eq!(
            value(&config.resolve("b", None).unwrap().user),
            Some("everyone".into())
        );
    }

    #[test]
    fn negated_pattern_excludes_a_host() {
        let config = parse("Host * !bastion\n ProxyJump bastion\n");
        assert_eq!(
            value(&config.resolve("app", None).unwrap().proxy_jump),
            Some(Jump::Hops(vec!["bastion".into()]))
        );
        assert_eq!(config.resolve("bastion", None).unwrap().proxy_jump, None);
        // A negated pattern alone matches nothing.
        let config = parse("Host !bastion\n Port 2\n");
        assert_eq!(config.resolve("app", None).unwrap().port, None);
    }

    #[test]
    fn question_mark_matches_exactly_one_character() {
        let config = parse("Host web?\n Port 2000\n");
        assert_eq!(
            value(&config.resolve("web1", None).unwrap().port),
            Some(2000)
        );
        assert_eq!(config.resolve("web", None).unwrap().port, None);
        assert_eq!(config.resolve("web12", None).unwrap().port, None);
    }

    #[test]
    fn keywords_ignore_case_and_host_patterns_do_not() {
        let config = parse("HOST Web.Example.COM\n  PORT 2022\n");
        assert_eq!(
            value(&config.resolve("Web.Example.COM", None).unwrap().port),
            Some(2022)
        );
        assert_eq!(config.resolve("web.example.com", None).unwrap().port, None);
    }

    #[test]
    fn equals_sign_and_quotes() {
        let config = parse(concat!(
            "Host=a\n",
            "Port=2201\n",
            "User = bob\n",
            "IdentityFile \"/path with spaces/key\"\n",
            "IdentityFile='/other path/key'\n",
            "HostKeyAlias\t alias  # a comment\n",
        ));
        let a = config.resolve("a", None).unwrap();
        assert_eq!(value(&a.port), Some(2201));
        assert_eq!(value(&a.user), Some("bob".into()));
        assert_eq!(identities(&a), ["/path with spaces/key", "/other path/key"]);
        assert_eq!(value(&a.host_key_alias), Some("alias".into()));
    }

    #[test]
    fn crlf_and_leading_whitespace_are_tolerated() {
        let config = parse("Host a\r\n\t  Port 7\r\n   User x \r\n");
        let a = config.resolve("a", None).unwrap();
        assert_eq!(value(&a.port), Some(7));
        assert_eq!(value(&a.user), Some("x".into()));
    }

    #[test]
    fn identity_files_accumulate_in_order() {
        let config = parse(
            "Host a\n IdentityFile ~/.ssh/a\nHost *\n IdentityFile ~/.ssh/all\n IdentitiesOnly yes\n",
        );
        let a = config.resolve("a", None).unwrap();
        assert_eq!(identities(&a), ["~/.ssh/a", "~/.ssh/all"]);
        assert_eq!(a.identity_files[1].origin.line, 4);
        assert_eq!(value(&a.identities_only), Some(true));
        assert_eq!(
            identities(&config.resolve("b", None).unwrap()),
            ["~/.ssh/all"]
        );
    }

    #[test]
    fn identity_files_named_twice_count_once() {
        let config =
            parse("Host a\n IdentityFile ~/k\n IdentityFile /x\nHost *\n IdentityFile ~/k\n");
        let a = config.resolve("a", None).unwrap();
        assert_eq!(identities(&a), ["~/k", "/x"]);
        assert_eq!(a.identity_files[0].origin.line, 2);
    }

    #[test]
    fn other_keywords_are_ignored() {
        let config = parse("Host a\n ForwardAgent yes\n SendEnv LANG LC_*\n Port 3\n");
        assert_eq!(value(&config.resolve("a", None).unwrap().port), Some(3));
    }

    #[test]
    fn known_hosts_files_are_lists_and_none_is_empty() {
        let config = parse(
            "Host a\n UserKnownHostsFile ~/kh1 \"/x y/kh2\"\n GlobalKnownHostsFile none\nHost *\n UserKnownHostsFile /late\n",
        );
        let a = config.resolve("a", None).unwrap();
        assert_eq!(
            value(&a.user_known_hosts),
            Some(vec!["~/kh1".to_owned(), "/x y/kh2".to_owned()])
        );
        assert_eq!(value(&a.global_known_hosts), Some(Vec::new()));
        assert_eq!(
            value(&config.resolve("b", None).unwrap().user_known_hosts),
            Some(vec!["/late".to_owned()])
        );
    }

    #[test]
    fn include_is_relative_to_ssh_dir_with_sorted_glob() {
        let home = home_with(&[
            ("config.d/20-b", "Host b\n  Port 20\n"),
            (
                "config.d/10-a",
                "# first\nHost a b\n  Port 10\n  User from-10\n",
            ),
            ("config.d/.hidden", "Port 99\n"),
        ]);
        let config = parse_in(home.path(), "Include config.d/*\nHost *\n User default\n");
        let b = config.resolve("b", None).unwrap();
        assert_eq!(value(&b.port), Some(10));
        assert_eq!(value(&b.user), Some("from-10".into()));
        let origin = &b.port.as_ref().unwrap().origin;
        assert_eq!(origin.file, home.path().join(".ssh/config.d/10-a"));
        assert_eq!(origin.line, 3);
        assert_eq!(value(&config.resolve("c", None).unwrap().port), None);
    }

    #[test]
    fn include_takes_several_paths_and_tilde() {
        let home = home_with(&[("one", "IdentityFile k1\n"), ("two", "IdentityFile k2\n")]);
        let config = parse_in(home.path(), "Include ~/.ssh/two one missing none-match*\n");
        assert_eq!(
            identities(&config.resolve("x", None).unwrap()),
            ["k2", "k1"]
        );
    }

    #[test]
    fn include_inside_a_host_block_applies_only_to_that_host() {
        let home = home_with(&[("inc", "Port 2222\n")]);
        let config = parse_in(home.path(), "Host a\n  Include inc\nHost *\n  Port 22\n");
        assert_eq!(value(&config.resolve("a", None).unwrap().port), Some(2222));
        assert_eq!(value(&config.resolve("b", None).unwrap().port), Some(22));
    }

    #[test]
    fn host_line_in_an_included_file_does_not_leak() {
        let home = home_with(&[("inc", "Host other\n  Port 1\n")]);
        let config = parse_in(home.path(), "Host a\n  Include inc\n  User after-include\n");
        let a = config.resolve("a", None).unwrap();
        assert_eq!(a.port, None);
        assert_eq!(value(&a.user), Some("after-include".into()));
        assert_eq!(config.resolve("other", None).unwrap().user, None);
        // Nor does a block inside the file open when the including block is closed.
        assert_eq!(config.resolve("other", None).unwrap().port, None);
    }

    #[test]
    fn a_file_including_itself_fails_at_the_depth_limit() {
        let home = home_with(&[("loop", "Include loop\n")]);
        let err = SshConfig::parse(
            &home.path().join(".ssh/config"),
            "Include loop\n",
            &local_at(home.path()),
        )
        .unwrap_err();
        let looped = home.path().join(".ssh/loop");
        match &err {
            ConfigError::TooDeep { origin, file } => {
                assert_eq!(origin.file, looped);
                assert_eq!(file, &looped);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            err.to_string().contains("nests more than 16 files deep"),
            "{err}"
        );
    }

    #[test]
    fn match_host_tests_the_hostname_set_so_far() {
        let config = parse(concat!(
            "Host short\n HostName long.example.com\n",
            "Match host *.example.com\n User matched\n",
            "Match host short\n Port 9\n",
        ));
        let short = config.resolve("short", None).unwrap();
        assert_eq!(value(&short.user), Some("matched".into()));
        assert_eq!(short.port, None);
        assert_eq!(
            value(&config.resolve("x.example.com", None).unwrap().user),
            Some("matched".into())
        );
    }

    #[test]
    fn host_patterns_are_case_sensitive_and_match_host_is_not() {
        let config = parse(concat!(
            "Host web\n Port 1\n",
            "Host WEB\n Port 2\n",
            "Match originalhost web\n User folded\n",
        ));
        let upper = config.resolve("WEB", None).unwrap();
        assert_eq!(value(&upper.port), Some(2));
        assert_eq!(value(&upper.user), Some("folded".into()));
        assert_eq!(value(&config.resolve("web", None).unwrap().port), Some(1));
    }

    #[test]
    fn match_originalhost_tests_the_alias() {
        let config = parse("Host s\n HostName real\nMatch originalhost s,t\n Port 5\n");
        assert_eq!(value(&config.resolve("s", None).unwrap().port), Some(5));
        assert_eq!(value(&config.resolve("t", None).unwrap().port), Some(5));
        assert_eq!(config.resolve("real", None).unwrap().port, None);
    }

    #[test]
    fn match_user_tests_the_callers_user_then_config_then_local() {
        let config = parse(
            "Host h\n User cfg\nMatch user deploy\n Port 1\nMatch user cfg\n Port 2\nMatch user me\n Port 3\n",
        );
        assert_eq!(
            value(&config.resolve("h", Some("deploy")).unwrap().port),
            Some(1)
        );
        assert_eq!(value(&config.resolve("h", None).unwrap().port), Some(2));
        assert_eq!(value(&config.resolve("other", None).unwrap().port), Some(3));
    }

    #[test]
    fn match_localuser_all_and_negation() {
        let config = parse(concat!(
            "Match localuser me !host skip\n IdentityFile local\n",
            "Match !originalhost a*\n IdentityFile not-a\n",
            "Match all\n IdentityFile all\n",
            "Match host !x,*\n IdentityFile not-x\n",
        ));
        assert_eq!(
            identities(&config.resolve("abc", None).unwrap()),
            ["local", "all", "not-x"]
        );
        assert_eq!(
            identities(&config.resolve("skip", None).unwrap()),
            ["not-a", "all", "not-x"]
        );
        assert_eq!(
            identities(&config.resolve("x", None).unwrap()),
            ["local", "not-a", "all"]
        );
    }

    #[test]
    fn match_exec_skips_the_block_with_a_note() {
        let config = parse(
            "# c\nMatch host a exec \"test -f /x\"\n Port 1\nMatch host b exec true\n Port 2\nHost *\n Port 3\n",
        );
        let a = config.resolve("a", None).unwrap();
        assert_eq!(value(&a.port), Some(3));
        assert_eq!(
            a.notes,
            [
                "`/home/u/.ssh/config` line 2: `Match exec` is not supported (shipit runs no command to decide); the block is skipped"
            ]
        );
        // Criteria of later OpenSSH versions are skipped the same way; the note keeps a `!`.
        for (criterion, shown) in [
            ("localnetwork 10.0.0.0/8", "localnetwork"),
            ("tagged t", "tagged"),
            ("!exec false", "!exec"),
            ("version OpenSSH_9*", "version"),
        ] {
            let config = parse(&format!("Match {criterion}\n Port 1\n"));
            let resolved = config.resolve("a", None).unwrap();
            assert_eq!(resolved.port, None, "{criterion}");
            assert!(
                resolved.notes[0].contains(&format!("`Match {shown}` is not supported")),
                "{:?}",
                resolved.notes
            );
        }
    }

    #[test]
    fn match_canonical_holds_only_in_the_final_pass_and_negated_in_the_first() {
        let config = parse("Match !canonical\n Port 1\nMatch canonical\n User c\n");
        let a = config.resolve("a", None).unwrap();
        assert_eq!(value(&a.port), Some(1));
        assert_eq!(a.user, None);
        assert!(a.notes.is_empty(), "{:?}", a.notes);
    }

    #[test]
    fn match_final_reads_the_files_again_for_the_final_host_name() {
        let config = parse(concat!(
            "Host web\n HostName Web.Internal\n",
            "Match final host web.internal\n User final-user\n",
            "Host web.internal\n Port 2200\n IdentityFile ~/k\n",
            "Match canonical\n IdentityFile ~/k\n ConnectTimeout 5\n",
            "Host *\n IdentityFile ~/all\n",
        ));
        let web = config.resolve("web", None).unwrap();
        assert_eq!(value(&web.user), Some("final-user".into()));
        // `Host` blocks test the final, lowercased name in the second pass.
        assert_eq!(value(&web.port), Some(2200));
        assert_eq!(line(&web.port), 6);
        assert_eq!(value(&web.connect_timeout), Some(Duration::from_secs(5)));
        assert_eq!(value(&web.hostname), Some("Web.Internal".into()));
        assert_eq!(identities(&web), ["~/all", "~/k"]);
        assert_eq!(
            web.notes,
            [
                "`/home/u/.ssh/config` line 3: `Match final` reads the config again for the final host name `web.internal`"
            ]
        );
        // A `Match final` anywhere asks for the second pass, even in a block that does not
        // apply.
        let other = config.resolve("other", None).unwrap();
        assert_eq!(value(&other.connect_timeout), Some(Duration::from_secs(5)));
    }

    #[test]
    fn canonicalize_hostname_reads_the_config_again_without_dns() {
        let config = parse(
            "CanonicalizeHostname yes\nMatch canonical\n  Port 1\nHost web\n  HostName Web.X\n",
        );
        let web = config.resolve("web", None).unwrap();
        assert_eq!(value(&web.port), Some(1));
        assert!(
            web.notes[0].contains("`CanonicalizeHostname` (shipit looks no name up in DNS"),
            "{:?}",
            web.notes
        );
        let config = parse("CanonicalizeHostname no\nMatch canonical\n  Port 1\n");
        assert_eq!(config.resolve("web", None).unwrap().port, None);
    }

    #[test]
    fn unknown_keywords_are_errors_unless_ignored() {
        let err = parse("Host other\n  IdentitiyFile ~/k\n")
            .resolve("a", None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "`{FILE}` line 2: `identitiyfile` is not an OpenSSH option (a typo?); `IgnoreUnknown identitiyfile` before it makes OpenSSH and shipit skip it"
            )
        );
        let config = parse(
            "IgnoreUnknown UseKeychain,Foo*\nHost *\n  UseKeychain yes\n  FooBar 1\n  Port 7\n",
        );
        assert_eq!(value(&config.resolve("a", None).unwrap().port), Some(7));
        // An `IgnoreUnknown` that does not apply ignores nothing.
        let config = parse("Host b\n  IgnoreUnknown FooOption\nHost *\n  FooOption yes\n");
        assert!(config.resolve("b", None).is_ok());
        assert!(config.resolve("a", None).is_err());
        // Keywords OpenSSH knows and shipit does not use, old, Debian's and newer ones.
        let config = parse(
            "Host *\n  ControlMaster auto\n  GSSAPIKeyExchange yes\n  Protocol 2\n  ChannelTimeout session=5m\n  UseKeychain yes\n  IdentityFile2 ~/k2\n",
        );
        assert_eq!(identities(&config.resolve("a", None).unwrap()), ["~/k2"]);
    }

    #[test]
    fn hostname_expands_percent_h_to_the_alias() {
        let config =
            parse("Host *.internal\n HostName %h.corp.example.com\nHost lit\n HostName 100%%\n");
        assert_eq!(
            value(&config.resolve("db.internal", None).unwrap().hostname),
            Some("db.internal.corp.example.com".into())
        );
        assert_eq!(
            value(&config.resolve("lit", None).unwrap().hostname),
            Some("100%".into())
        );
    }

    #[test]
    fn proxy_jump_and_proxy_command_first_one_wins() {
        let config = parse(concat!(
            "Host none\n ProxyJump none\n",
            "Host cmd\n ProxyCommand ssh -W %h:%p \"gate\"\n",
            "Host *\n ProxyJump ssh://u@gate:2200,[::1]:22\n ProxyCommand nc %h %p\n",
        ));
        let none = config.resolve("none", None).unwrap();
        assert_eq!(value(&none.proxy_jump), Some(Jump::None));
        assert_eq!(none.proxy_command, None);
        let cmd = config.resolve("cmd", None).unwrap();
        assert_eq!(
            value(&cmd.proxy_command),
            Some("ssh -W %h:%p \"gate\"".into())
        );
        assert_eq!(cmd.proxy_jump, None);
        assert_eq!(
            value(&config.resolve("x", None).unwrap().proxy_jump),
            Some(Jump::Hops(vec![
                "ssh://u@gate:2200".into(),
                "[::1]:22".into()
            ]))
        );
    }

    #[test]
    fn a_port_may_be_a_service_name() {
        let config = parse("Host a\n Port ssh\nHost b\n ProxyJump gate:ssh\n");
        assert_eq!(value(&config.resolve("a", None).unwrap().port), Some(22));
        assert_eq!(parse_hop("gate:ssh").unwrap().2, Some(22));
    }

    #[test]
    fn times_accept_openssh_units() {
        let config = parse("ConnectTimeout 1m30s\nServerAliveInterval 0\n");
        let x = config.resolve("x", None).unwrap();
        assert_eq!(value(&x.connect_timeout), Some(Duration::from_secs(90)));
        assert_eq!(value(&x.server_alive_interval), Some(Duration::ZERO));
    }

    #[test]
    fn expand_fills_every_token() {
        let local = local();
        let tokens = Tokens {
            host: "10.0.0.5",
            alias: "web",
            port: 2222,
            user: "deploy",
            key_alias: "web-pool",
            local: &local,
        };
        assert_eq!(
            expand("~/.ssh/%h-%n-%p-%r-%u-%i-%l-%L-%%", &tokens).unwrap(),
            "/home/u/.ssh/10.0.0.5-web-2222-deploy-me-1000-laptop.example.com-laptop-%"
        );
        assert_eq!(expand("%d/k", &tokens).unwrap(), "/home/u/k");
        // `%C` as `ssh -G` prints it for these values.
        assert_eq!(
            expand("~/.ssh/cm-%C-%k", &tokens).unwrap(),
            "/home/u/.ssh/cm-2668c3ff1917a77e66663ecce851502a4e29c069-web-pool"
        );
        assert_eq!(expand("~", &tokens).unwrap(), "/home/u");
        assert_eq!(expand("~bob/k", &tokens).unwrap(), "~bob/k");
        assert_eq!(expand("a~/b", &tokens).unwrap(), "a~/b");
    }

    #[test]
    fn jump_hops_take_the_proxy_command_tokens() {
        let local = local();
        let tokens = Tokens {
            host: "db.internal",
            alias: "db",
            port: 2222,
            user: "deploy",
            key_alias: "pool",
            local: &local,
        };
        assert_eq!(
            expand_jump("%r@%h-gw.%n.%k:%p%%", &tokens).unwrap(),
            "deploy@db.internal-gw.db.pool:2222%"
        );
        assert!(
            expand_jump("%u@gw", &tokens)
                .unwrap_err()
                .to_string()
                .contains("OpenSSH knows `%h %k %n %p %r` here")
        );
    }

    #[test]
    fn expand_fills_in_environment_variables() {
        let mut local = local();
        local.env.insert("KEYS".into(), "/srv/keys".into());
        let tokens = Tokens {
            host: "h",
            alias: "a",
            port: 22,
            user: "u",
            key_alias: "a",
            local: &local,
        };
        assert_eq!(expand("${KEYS}/%h", &tokens).unwrap(), "/srv/keys/h");
        assert_eq!(expand("$KEYS/a$", &tokens).unwrap(), "$KEYS/a$");
        assert_eq!(
            expand("${NOPE}/k", &tokens).unwrap_err().to_string(),
            "`${NOPE}/k` names the environment variable `NOPE`, which is not set"
        );
        assert!(expand("${KEYS/k", &tokens).is_err());
        assert!(expand("${}/k", &tokens).is_err());
        // Not in a jump host, as OpenSSH's `ProxyCommand` expansion.
        assert_eq!(expand_jump("${KEYS}", &tokens).unwrap(), "${KEYS}");
        // Debug shows no value.
        assert!(!format!("{local:?}").contains("/srv/keys"));
    }

    #[test]
    fn expand_refuses_unknown_tokens() {
        let local = local();
        let tokens = Tokens {
            host: "h",
            alias: "a",
            port: 22,
            user: "u",
            key_alias: "a",
            local: &local,
        };
        assert_eq!(
            expand("key-%j", &tokens).unwrap_err().to_string(),
            "unknown token `%j` in `key-%j`: OpenSSH knows `%C %d %h %i %k %L %l %n %p %r %u` here; write `%%` for a literal `%`"
        );
        assert_eq!(
            expand("key%", &tokens).unwrap_err().to_string(),
            "`key%` ends with a lone `%`; write `%%` for a literal `%`"
        );
    }

    #[test]
    fn line_numbers_count_comments_and_blanks() {
        let config = parse("# top comment\n\nHost a\n    # about the port\n\n    Port 4\n");
        let port = config.resolve("a", None).unwrap().port.unwrap();
        assert_eq!(port.origin.line, 6);
        assert_eq!(port.origin.to_string(), "`/home/u/.ssh/config` line 6");
    }

    #[test]
    fn bad_values_name_the_file_and_line() {
        let cases = [
            (
                "Port abc",
                "`Port` must be a number from 1 to 65535 or a service name like `ssh`, not `abc`",
            ),
            (
                "Port 0",
                "`Port` must be a number from 1 to 65535 or a service name like `ssh`, not `0`",
            ),
            (
                "Port 70000",
                "`Port` must be a number from 1 to 65535 or a service name like `ssh`, not `70000`",
            ),
            (
                "Port +22",
                "`Port` must be a number from 1 to 65535 or a service name like `ssh`, not `+22`",
            ),
            (
                "IdentitiesOnly maybe",
                "`IdentitiesOnly` must be `yes` or `no`, not `maybe`",
            ),
            (
                "ConnectTimeout -1",
                "`ConnectTimeout` must be a number of seconds (like `10` or `1m30s`) or `none`, not `-1`",
            ),
            (
                "ConnectTimeout None",
                "`ConnectTimeout` must be a number of seconds (like `10` or `1m30s`) or `none`, not `None`",
            ),
            (
                "ServerAliveInterval soon",
                "`ServerAliveInterval` must be a number of seconds (like `30` or `1m`), not `soon`",
            ),
            ("Host", "`Host` has no value"),
            ("Host # nothing", "`Host` needs at least one pattern"),
            ("Port", "`Port` has no value"),
            ("Port # none", "`Port` has no value"),
            ("IdentityFile \"/open", "a quote is not closed"),
            ("ForwardAgent 'yes", "a quote is not closed"),
            (
                "User a b",
                "`User` takes one value, not 2; quote a value that contains spaces",
            ),
            ("Match host", "`Match host` needs a pattern"),
            (
                "Match hots a",
                "unknown `Match` criterion `hots`; OpenSSH knows `all`, `canonical`, `final`, `exec`, `host`, `originalhost`, `user`, `localuser` (and later versions `localnetwork`, `tagged`, `version`, `sessiontype`, `command`)",
            ),
            (
                "Match all host a",
                "`Match all` cannot be combined with other criteria",
            ),
            (
                "ProxyJump a:x",
                "`ProxyJump`: `a:x` is not a valid jump host: the port must be a number from 1 to 65535, not `x`",
            ),
            ("ProxyJump a,,b", "`ProxyJump` has an empty hop in `a,,b`"),
        ];
        for (text, problem) in cases {
            let err = parse_err(&format!("# comment\n\nHost x\n{text}\n"));
            assert_eq!(err, format!("`{FILE}` line 4: {problem}"), "{text}");
        }
    }

    #[test]
    fn connect_timeout_zero_is_kept_and_none_leaves_it_unset() {
        let config = parse(concat!(
            "Host zero
 ConnectTimeout 0
",
            "Host none
 ConnectTimeout none
",
            "Host *
 ConnectTimeout 7
",
        ));
        let zero = config.resolve("zero", None).unwrap();
        assert_eq!(value(&zero.connect_timeout), Some(Duration::ZERO));
        assert_eq!(line(&zero.connect_timeout), 2);
        // `none` is no value: the later `Host *` line still applies, as in OpenSSH.
        let none = config.resolve("none", None).unwrap();
        assert_eq!(value(&none.connect_timeout), Some(Duration::from_secs(7)));
        assert_eq!(line(&none.connect_timeout), 6);
    }

    #[test]
    fn a_bad_hostname_token_stops_only_the_hosts_it_applies_to() {
        let config = parse(
            "Host other
 HostName %p.example
Host *
 HostName %h.lan
",
        );
        assert_eq!(
            value(&config.resolve("web", None).unwrap().hostname),
            Some("web.lan".into())
        );
        let err = config.resolve("other", None).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("`{FILE}` line 2: `HostName` may use only the `%h` and `%%` tokens, not `%p`")
        );
        let err = parse(
            "Host a
 HostName x%
",
        )
        .resolve("a", None)
        .unwrap_err();
        assert!(err.to_string().contains("ends with a lone `%`"), "{err}");
    }

    #[test]
    fn parse_hop_forms() {
        let hop = |s| parse_hop(s).unwrap();
        assert_eq!(hop("gate"), (None, "gate".into(), None));
        assert_eq!(
            hop("u@gate:2200"),
            (Some("u".into()), "gate".into(), Some(2200))
        );
        assert_eq!(
            hop("ssh://u@gate:2200/"),
            (Some("u".into()), "gate".into(), Some(2200))
        );
        assert_eq!(hop("[::1]:22"), (None, "::1".into(), Some(22)));
        assert_eq!(
            hop("a@b@[fe80::1]"),
            (Some("a@b".into()), "fe80::1".into(), None)
        );
        for bad in [
            "",
            "u@",
            "@h",
            "h:0",
            "::1",
            "[::1",
            "[::1]x",
            "ssh://h/path",
        ] {
            assert!(parse_hop(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_files_mean_an_empty_config() {
        let home = tempfile::tempdir().unwrap();
        let config = SshConfig::load(
            &home.path().join(".ssh/config"),
            Some(&home.path().join("ssh_config")),
            &local_at(home.path()),
        )
        .unwrap();
        assert!(config.is_empty());
        assert_eq!(config.resolve("a", None).unwrap(), HostConfig::default());
        assert!(parse("# only a comment\n\n").is_empty());
    }

    #[test]
    fn load_reads_the_user_file_then_the_system_file() {
        let home = home_with(&[("config", "Host a\n Port 1\n")]);
        let system = home.path().join("ssh_config");
        fs::write(&system, "Port 2\nUser sys\n").unwrap();
        let config = SshConfig::load(
            &home.path().join(".ssh/config"),
            Some(&system),
            &local_at(home.path()),
        )
        .unwrap();
        let a = config.resolve("a", None).unwrap();
        assert_eq!(value(&a.port), Some(1));
        assert_eq!(value(&a.user), Some("sys".into()));
        assert_eq!(a.user.unwrap().origin.file, system);
    }

    #[test]
    fn the_system_file_may_not_include_from_a_home() {
        let home = home_with(&[("other", "Port 1\n")]);
        let system = home.path().join("ssh_config");
        fs::write(&system, "Include ~/.ssh/other\n").unwrap();
        let err = SshConfig::load(
            &home.path().join(".ssh/config"),
            Some(&system),
            &local_at(home.path()),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(
                "`Include ~/.ssh/other`: the system file may not include from a home directory"
            ),
            "{err}"
        );
    }

    #[test]
    fn an_unreadable_file_is_an_error_naming_it() {
        let home = tempfile::tempdir().unwrap();
        // A directory where the file should be: exists, but cannot be read as one.
        let err = SshConfig::load(home.path(), None, &local_at(home.path())).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot read `{}`", home.path().display())
        );
    }
}
