//! The TOML inventory: parsed once into validated, defaults-resolved types.
//!
//! Raw serde structs stay private to this module; everything else sees [`Inventory`], whose
//! fields need no `Option` + `unwrap_or` at the use site. Every problem is reported with the
//! file, line and column it comes from, and all problems found are reported together.
//!
//! Pure: the caller passes in the file text, the directory relative paths are resolved
//! against, the home directory and a lookup for the deployer's environment. No I/O here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::shell::Secret;

/// What the inventory needs from the world, read by `main` and passed in.
pub struct LoadContext<'a> {
    /// Relative local paths (`ssh.identity`, `artifact.path`, templates) are resolved here:
    /// the directory shipit runs in, normally the project root.
    pub base_dir: &'a Path,
    /// For `~/` in local paths.
    pub home: Option<&'a Path>,
    /// The deployer's environment, for `env.from_env`.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Whether a secret missing from `env` is an error: for commands that write the env
    /// file (or hand a secret to a backup); the others only read what is set, to redact it.
    pub need_secrets: bool,
}

/// Where deploy commands run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Ssh,
    Local,
}

#[derive(Debug)]
pub struct Inventory {
    pub file: PathBuf,
    pub transport: TransportKind,
    pub app: App,
    pub ssh: Ssh,
    pub hosts: Vec<Host>,
    pub artifact: Option<Artifact>,
    pub env: Option<EnvFile>,
    pub systemd: Vec<Unit>,
    pub nginx: Option<Nginx>,
    pub compose: Option<Compose>,
    pub backup: Option<Backup>,
    pub migrate: Option<Migrate>,
    pub hooks: Vec<Hook>,
    /// Named commands the operator runs on demand: `shipit task <stage> <name>`.
    pub tasks: BTreeMap<String, Task>,
    /// Every check must pass, in order; empty: no health gate.
    pub health: Vec<Health>,
    pub rollout: Rollout,
    /// Index into `hosts` of the one host that runs backups and migrations.
    pub migrate_host: usize,
}

#[derive(Debug)]
pub struct App {
    pub name: String,
    pub deploy_to: String,
    pub keep_releases: u32,
    /// The service user owning `shared/` and reading the env file; `None` = the SSH user.
    pub user: Option<String>,
}

#[derive(Debug)]
pub struct Ssh {
    pub user: String,
    pub port: u16,
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub jump: Option<Jump>,
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
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

#[derive(Debug)]
pub struct Artifact {
    pub path: PathBuf,
    pub build: Option<String>,
    /// Paths in every release linked to `shared/<path>`: relative, normalized, without
    /// control characters, none inside another (across both lists), none of shipit's own
    /// (`REVISION`, `.shipit/...`, `*.shipit-delta`).
    pub shared_dirs: Vec<String>,
    pub shared_files: Vec<String>,
    /// Send only new content to hosts whose current release has a manifest (default true).
    pub delta: bool,
}

#[derive(Debug)]
pub struct EnvFile {
    pub path: String,
    pub vars: BTreeMap<String, String>,
    /// Resolved from the deployer's environment, in `from_env` order.
    pub secrets: Vec<(String, Secret)>,
}

#[derive(Debug)]
pub struct Unit {
    pub unit: String,
    pub template: PathBuf,
}

/// A Docker Compose stack: the compose file is a template rendered into each release.
#[derive(Debug)]
pub struct Compose {
    pub template: PathBuf,
    /// `docker compose -p <project>`: the app name unless set.
    pub project: String,
    /// Pull the images while staging (before anything is switched).
    pub pull: bool,
}

#[derive(Debug)]
pub struct Nginx {
    pub site: String,
    pub template: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupKind {
    Postgres,
    Command,
}

#[derive(Debug)]
pub struct Backup {
    pub kind: BackupKind,
    pub command: String,
    pub dir: String,
    pub keep: u32,
    pub extension: String,
    pub verify: Option<String>,
}

#[derive(Debug)]
pub struct Migrate {
    pub command: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookPoint {
    AfterUpload,
    BeforeSwitch,
    AfterSwitch,
    AfterRestart,
}

const HOOK_POINTS: &[(&str, HookPoint)] = &[
    ("after_upload", HookPoint::AfterUpload),
    ("before_switch", HookPoint::BeforeSwitch),
    ("after_switch", HookPoint::AfterSwitch),
    ("after_restart", HookPoint::AfterRestart),
];

#[derive(Debug)]
pub struct Hook {
    pub at: HookPoint,
    pub command: String,
    pub once: bool,
    pub roles: Vec<String>,
}

/// `[tasks.<name>]`: a command run on demand in the current release, env file loaded.
#[derive(Clone, Debug)]
pub struct Task {
    pub command: String,
    /// On the migrate host only.
    pub once: bool,
    /// Only hosts with one of these roles; empty: every selected host.
    pub roles: Vec<String>,
}

#[derive(Clone, Debug)]
pub enum HealthCheck {
    /// An HTTP GET made from the host's side (through the SSH connection).
    Url {
        url: String,
        host: String,
        port: u16,
        path: String,
        expect_status: u16,
        /// A substring the body must contain.
        expect_body: Option<String>,
    },
    Command(String),
}

#[derive(Clone, Debug)]
pub struct Health {
    pub check: HealthCheck,
    pub timeout: Duration,
    pub interval: Duration,
}

/// A number of hosts, absolute or relative to the fleet size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amount {
    Count(u32),
    Percent(u8),
}

impl Amount {
    /// How many of `total` hosts this is; percentages round up so "25%" of 3 is 1.
    pub fn of(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => n as usize,
            Amount::Percent(p) => (total * p as usize).div_ceil(100),
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    Rollback,
    Halt,
}

#[derive(Debug)]
pub struct Rollout {
    pub parallel: usize,
    pub waves: Vec<Amount>,
    pub max_fail: Amount,
    pub on_failure: OnFailure,
    pub confirm_timeout: Duration,
    pub lock_timeout: Duration,
}

/// Every problem found in one inventory file.
#[derive(Debug, thiserror::Error)]
pub struct InventoryError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                p.line,
                p.column,
                p.kind
            )?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub kind: ProblemKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ProblemKind {
    #[error("{message}")]
    Syntax { message: String },
    #[error("unknown key `{key}` in {section}{}", did_you_mean(.suggestion))]
    UnknownKey {
        key: String,
        section: String,
        suggestion: Option<String>,
    },
    #[error("missing required key `{key}`")]
    Missing { key: String },
    #[error("`{key}`: {reason}")]
    Invalid { key: String, reason: String },
    #[error("duplicate host name `{name}` (first defined on line {first_line})")]
    DuplicateHost { name: String, first_line: usize },
    #[error("more than one host has role `migrate`: {}; exactly one host runs backups and migrations", .hosts.join(", "))]
    ManyMigrateHosts { hosts: Vec<String> },
    #[error(
        "secrets named in `env.from_env` are not set in the environment: {}; export them (in CI: from the secret store) and run again",
        .names.join(", ")
    )]
    MissingSecrets { names: Vec<String> },
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_owned())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------
// The schema of known keys, walked before serde so that every unknown key is reported with
// its own position and a suggestion, not only the first one serde trips over.

enum Shape {
    Leaf,
    Table(&'static [(&'static str, Shape)]),
    Tables(&'static [(&'static str, Shape)]),
    /// `[name.<key>]` tables under keys chosen by the user (`[tasks.seed]`).
    Named(&'static [(&'static str, Shape)]),
    /// `[name]` for one, `[[name]]` for several.
    TableOrTables(&'static [(&'static str, Shape)]),
    /// Free-form keys chosen by the user (`vars`).
    Map,
}

use Shape::{Leaf, Map, Named, Table, TableOrTables, Tables};

const SCHEMA: &[(&str, Shape)] = &[
    ("transport", Leaf),
    (
        "app",
        Table(&[
            ("name", Leaf),
            ("deploy_to", Leaf),
            ("keep_releases", Leaf),
            ("user", Leaf),
        ]),
    ),
    (
        "ssh",
        Table(&[
            ("user", Leaf),
            ("port", Leaf),
            ("identity", Leaf),
            ("known_hosts", Leaf),
            ("jump", Leaf),
            ("connect_timeout", Leaf),
            ("keepalive_interval", Leaf),
        ]),
    ),
    (
        "hosts",
        Tables(&[
            ("name", Leaf),
            ("address", Leaf),
            ("port", Leaf),
            ("roles", Leaf),
            ("host_key", Leaf),
            ("vars", Map),
        ]),
    ),
    (
        "artifact",
        Table(&[
            ("path", Leaf),
            ("build", Leaf),
            ("shared_dirs", Leaf),
            ("shared_files", Leaf),
            ("delta", Leaf),
        ]),
    ),
    (
        "env",
        Table(&[("path", Leaf), ("from_env", Leaf), ("vars", Map)]),
    ),
    ("systemd", Tables(&[("unit", Leaf), ("template", Leaf)])),
    ("nginx", Table(&[("site", Leaf), ("template", Leaf)])),
    (
        "compose",
        Table(&[("file", Leaf), ("project", Leaf), ("pull", Leaf)]),
    ),
    (
        "backup",
        Table(&[
            ("kind", Leaf),
            ("command", Leaf),
            ("dir", Leaf),
            ("keep", Leaf),
            ("extension", Leaf),
            ("verify", Leaf),
        ]),
    ),
    ("migrate", Table(&[("command", Leaf)])),
    (
        "hooks",
        Tables(&[
            ("at", Leaf),
            ("command", Leaf),
            ("once", Leaf),
            ("roles", Leaf),
        ]),
    ),
    (
        "tasks",
        Named(&[("command", Leaf), ("once", Leaf), ("roles", Leaf)]),
    ),
    (
        "health",
        TableOrTables(&[
            ("url", Leaf),
            ("expect_status", Leaf),
            ("expect_body", Leaf),
            ("command", Leaf),
            ("timeout", Leaf),
            ("interval", Leaf),
        ]),
    ),
    (
        "rollout",
        Table(&[
            ("parallel", Leaf),
            ("waves", Leaf),
            ("max_fail", Leaf),
            ("on_failure", Leaf),
            ("confirm_timeout", Leaf),
            ("lock_timeout", Leaf),
        ]),
    ),
];

fn check_keys(
    table: &toml::de::DeTable<'_>,
    schema: &[(&'static str, Shape)],
    section: &str,
    out: &mut Problems<'_>,
) {
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        let Some((_, shape)) = schema.iter().find(|(k, _)| *k == name) else {
            let kind = ProblemKind::UnknownKey {
                key: name.to_owned(),
                section: section.to_owned(),
                suggestion: suggest(name, schema.iter().map(|(k, _)| *k)),
            };
            out.push(key.span(), kind);
            continue;
        };
        match (shape, value.get_ref()) {
            (Table(fields) | TableOrTables(fields), toml::de::DeValue::Table(t)) => {
                check_keys(t, fields, &format!("[{name}]"), out)
            }
            (Named(fields), toml::de::DeValue::Table(t)) => {
                for (key, value) in t.iter() {
                    if let toml::de::DeValue::Table(t) = value.get_ref() {
                        check_keys(t, fields, &format!("[{name}.{}]", key.get_ref()), out);
                    }
                }
            }
            (Tables(fields) | TableOrTables(fields), toml::de::DeValue::Array(items)) => {
                let path = format!("[[{name}]]");
                for item in items.iter() {
                    if let toml::de::DeValue::Table(t) = item.get_ref() {
                        check_keys(t, fields, &path, out);
                    }
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Raw serde structs: private, shaped like the file.

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    transport: Option<S<String>>,
    app: Option<RawApp>,
    ssh: Option<RawSsh>,
    #[serde(default)]
    hosts: Vec<S<RawHost>>,
    artifact: Option<RawArtifact>,
    env: Option<RawEnv>,
    #[serde(default)]
    systemd: Vec<RawUnit>,
    nginx: Option<RawNginx>,
    compose: Option<RawCompose>,
    backup: Option<S<RawBackup>>,
    migrate: Option<RawMigrate>,
    #[serde(default)]
    hooks: Vec<RawHook>,
    #[serde(default)]
    tasks: BTreeMap<String, S<RawTask>>,
    health: Option<S<OneOrMany<RawHealth>>>,
    rollout: Option<RawRollout>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: Option<S<String>>,
    deploy_to: Option<S<String>>,
    keep_releases: Option<S<i64>>,
    user: Option<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    user: Option<S<String>>,
    port: Option<S<i64>>,
    identity: Option<S<String>>,
    known_hosts: Option<S<String>>,
    jump: Option<S<String>>,
    connect_timeout: Option<S<String>>,
    keepalive_interval: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: Option<S<String>>,
    address: Option<S<String>>,
    port: Option<S<i64>>,
    #[serde(default)]
    roles: Vec<S<String>>,
    host_key: Option<S<String>>,
    #[serde(default)]
    vars: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifact {
    path: Option<S<String>>,
    build: Option<S<String>>,
    #[serde(default)]
    shared_dirs: Vec<S<String>>,
    #[serde(default)]
    shared_files: Vec<S<String>>,
    delta: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnv {
    path: Option<S<String>>,
    from_env: Option<S<Vec<S<String>>>>,
    #[serde(default)]
    vars: BTreeMap<S<String>, S<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnit {
    unit: Option<S<String>>,
    template: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompose {
    file: Option<S<String>>,
    project: Option<S<String>>,
    pull: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNginx {
    site: Option<S<String>>,
    template: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    kind: Option<S<String>>,
    command: Option<S<String>>,
    dir: Option<S<String>>,
    keep: Option<S<i64>>,
    extension: Option<S<String>>,
    verify: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMigrate {
    command: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    command: Option<S<String>>,
    #[serde(default)]
    once: bool,
    #[serde(default)]
    roles: Vec<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    at: Option<S<String>>,
    command: Option<S<String>>,
    #[serde(default)]
    once: bool,
    #[serde(default)]
    roles: Vec<S<String>>,
}

/// `[name]` (one table) or `[[name]]` (an array of tables), both read as a list.
struct OneOrMany<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = OneOrMany<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table or an array of tables")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let one = T::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(OneOrMany(vec![one]))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                let many =
                    Vec::<T>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
                Ok(OneOrMany(many))
            }
        }
        d.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    url: Option<S<String>>,
    expect_status: Option<S<i64>>,
    expect_body: Option<S<String>>,
    command: Option<S<String>>,
    timeout: Option<S<String>>,
    interval: Option<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    parallel: Option<S<i64>>,
    waves: Option<S<Vec<S<AmountValue>>>>,
    max_fail: Option<S<AmountValue>>,
    on_failure: Option<S<String>>,
    confirm_timeout: Option<S<String>>,
    lock_timeout: Option<S<String>>,
}

/// `waves = [1, "25%"]`: a bare integer or a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum AmountValue {
    Int(i64),
    Str(String),
}

// ---------------------------------------------------------------------------------------
// Collecting problems with positions.

struct Problems<'t> {
    text: &'t str,
    list: Vec<Problem>,
}

impl Problems<'_> {
    fn push(&mut self, span: Range<usize>, kind: ProblemKind) {
        let (line, column) = line_col(self.text, span.start);
        self.list.push(Problem { line, column, kind });
    }

    fn invalid(&mut self, span: Range<usize>, key: &str, reason: impl Into<String>) {
        self.push(
            span,
            ProblemKind::Invalid {
                key: key.to_owned(),
                reason: reason.into(),
            },
        );
    }

    fn missing(&mut self, span: Range<usize>, key: &str) {
        self.push(
            span,
            ProblemKind::Missing {
                key: key.to_owned(),
            },
        );
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The span of a whole `[section]`: its header line if present, else the top of the file.
fn section_span(text: &str, name: &str) -> Range<usize> {
    let header = format!("[{name}]");
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with(&header) {
            let start = offset + (line.len() - line.trim_start().len());
            return start..start + header.len();
        }
        offset += line.len();
    }
    0..0
}

// ---------------------------------------------------------------------------------------

/// Parses and validates one inventory file's text.
pub fn parse(text: &str, file: &Path, ctx: &LoadContext<'_>) -> Result<Inventory, InventoryError> {
    let mut p = Problems {
        text,
        list: Vec::new(),
    };
    let fail = |p: Problems<'_>| InventoryError {
        file: file.to_owned(),
        problems: p.list,
    };

    let doc = match toml::de::DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            p.push(
                e.span().unwrap_or(0..0),
                ProblemKind::Syntax {
                    message: first_line(e.message()),
                },
            );
            return Err(fail(p));
        }
    };
    check_keys(doc.get_ref(), SCHEMA, "the top level", &mut p);
    if !p.list.is_empty() {
        return Err(fail(p));
    }
    let raw: Raw = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            p.push(
                e.span().unwrap_or(0..0),
                ProblemKind::Syntax {
                    message: first_line(e.message()),
                },
            );
            return Err(fail(p));
        }
    };

    let v = Validator { ctx };
    let inventory = v.inventory(raw, file, &mut p);
    match inventory {
        Some(inv) if p.list.is_empty() => Ok(inv),
        _ => Err(fail(p)),
    }
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or("").trim().to_owned()
}

struct Validator<'a> {
    ctx: &'a LoadContext<'a>,
}

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

impl Validator<'_> {
    fn inventory(&self, raw: Raw, file: &Path, p: &mut Problems<'_>) -> Option<Inventory> {
        let transport = match &raw.transport {
            None => TransportKind::Ssh,
            Some(t) => match t.get_ref().as_str() {
                "ssh" => TransportKind::Ssh,
                "local" => TransportKind::Local,
                other => {
                    p.invalid(
                        t.span(),
                        "transport",
                        format!("must be \"ssh\" or \"local\", not {other:?}"),
                    );
                    TransportKind::Ssh
                }
            },
        };
        let app = self.app(raw.app, transport == TransportKind::Local, p);
        let ssh = self.ssh(raw.ssh.unwrap_or_default(), p);
        let hosts = self.hosts(raw.hosts, transport, &ssh, p);
        let migrate_host = migrate_host(&hosts, p);
        let artifact = raw.artifact.map(|a| self.artifact(a, p));
        let env = raw.env.map(|e| self.env(e, p));
        let systemd = raw
            .systemd
            .into_iter()
            .enumerate()
            .filter_map(|(i, u)| self.unit(u, i, p))
            .collect();
        let nginx = raw.nginx.and_then(|n| self.nginx(n, p));
        let app_name_for_compose = app.as_ref().map(|a| a.name.clone());
        let compose = raw
            .compose
            .and_then(|c| self.compose(c, app_name_for_compose.as_deref(), p));
        let app_name = app.as_ref().map_or("app", |a| a.name.as_str()).to_owned();
        let backup = raw.backup.and_then(|b| self.backup(b, &app_name, p));
        let migrate = raw.migrate.and_then(|m| {
            let command = self.required_text(m.command, "migrate.command", "migrate", p)?;
            Some(Migrate { command })
        });
        let hooks = raw
            .hooks
            .into_iter()
            .enumerate()
            .filter_map(|(i, h)| self.hook(h, i, p))
            .collect();
        let tasks = raw
            .tasks
            .into_iter()
            .filter_map(|(name, t)| self.task(name, t, p))
            .collect();
        let health = match raw.health {
            None => Vec::new(),
            Some(h) => {
                let span = h.span();
                let checks = h.into_inner().0;
                if checks.is_empty() {
                    p.invalid(
                        span.clone(),
                        "health",
                        "add at least one check, or remove `health`",
                    );
                }
                checks
                    .into_iter()
                    .filter_map(|c| self.health(c, span.clone(), p))
                    .collect()
            }
        };
        let rollout = self.rollout(raw.rollout.unwrap_or_default(), p);
        Some(Inventory {
            file: file.to_owned(),
            transport,
            app: app?,
            ssh,
            hosts,
            artifact,
            env,
            systemd,
            nginx,
            compose,
            backup,
            migrate,
            hooks,
            tasks,
            health,
            rollout,
            migrate_host,
        })
    }

    fn app(&self, raw: Option<RawApp>, local: bool, p: &mut Problems<'_>) -> Option<App> {
        let Some(raw) = raw else {
            p.missing(0..0, "app");
            return None;
        };
        let whole = section_span(p.text, "app");
        let name = match raw.name {
            None => {
                p.missing(whole.clone(), "app.name");
                None
            }
            Some(n) => {
                let ok = !n.get_ref().is_empty()
                    && n.get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if !ok {
                    p.invalid(
                        n.span(),
                        "app.name",
                        "use letters, digits, `.`, `_` and `-` only (it names files and units)",
                    );
                }
                Some(n.into_inner())
            }
        };
        let deploy_to = match raw.deploy_to {
            None => {
                p.missing(whole, "app.deploy_to");
                None
            }
            Some(mut d) => {
                // On this machine a relative `deploy_to` is clear: relative to the project.
                if local && !d.get_ref().starts_with('/') && !d.get_ref().is_empty() {
                    let joined = self.ctx.base_dir.join(d.get_ref());
                    let normal = joined.to_string_lossy().trim_end_matches('/').to_owned();
                    d = Spanned::new(d.span(), normal);
                }
                let ok = remote_path(&d, "app.deploy_to", p);
                if let Some(why) = tree_problem(d.get_ref()).filter(|_| ok) {
                    p.invalid(d.span(), "app.deploy_to", why);
                }
                Some(d.into_inner())
            }
        };
        let keep_releases = match raw.keep_releases {
            None => 5,
            Some(k) if *k.get_ref() >= 2 && *k.get_ref() <= 1000 => *k.get_ref() as u32,
            Some(k) => {
                p.invalid(
                    k.span(),
                    "app.keep_releases",
                    "must be at least 2 (the current release and the one to roll back to)",
                );
                5
            }
        };
        let user = raw.user.map(|u| {
            unix_name(&u, "app.user", p);
            u.into_inner()
        });
        Some(App {
            name: name?,
            deploy_to: deploy_to?,
            keep_releases,
            user,
        })
    }

    fn ssh(&self, raw: RawSsh, p: &mut Problems<'_>) -> Ssh {
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
            given,
        }
    }

    fn hosts(
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
                let (line, _) = line_col(p.text, raw[0].span().start);
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
            let (line, _) = line_col(p.text, name.span().start);
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

    fn artifact(&self, raw: RawArtifact, p: &mut Problems<'_>) -> Artifact {
        let path = match raw.path {
            Some(path) => self.local_path(&path, "artifact.path", p),
            None => {
                p.missing(section_span(p.text, "artifact"), "artifact.path");
                PathBuf::new()
            }
        };
        let shared_dirs = shared_paths(&raw.shared_dirs, "artifact.shared_dirs", p);
        let shared_files = shared_paths(&raw.shared_files, "artifact.shared_files", p);
        shared_overlaps(
            raw.shared_dirs
                .iter()
                .map(|s| ("artifact.shared_dirs", s))
                .chain(
                    raw.shared_files
                        .iter()
                        .map(|s| ("artifact.shared_files", s)),
                ),
            p,
        );
        Artifact {
            path,
            build: raw.build.map(|b| b.into_inner()),
            shared_dirs,
            shared_files,
            delta: raw.delta.unwrap_or(true),
        }
    }

    fn env(&self, raw: RawEnv, p: &mut Problems<'_>) -> EnvFile {
        let path = match raw.path {
            Some(path) => {
                let ok = remote_path(&path, "env.path", p);
                if let Some(why) = env_path_problem(path.get_ref()).filter(|_| ok) {
                    p.invalid(path.span(), "env.path", why);
                }
                path.into_inner()
            }
            None => {
                p.missing(section_span(p.text, "env"), "env.path");
                String::new()
            }
        };
        let mut vars = BTreeMap::new();
        for (k, v) in raw.vars {
            env_name(&k, "env.vars", p);
            let value = match v.get_ref() {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    p.invalid(
                        v.span(),
                        &format!("env.vars.{}", k.get_ref()),
                        "must be a string, number or boolean",
                    );
                    continue;
                }
            };
            vars.insert(k.into_inner(), value);
        }
        let from_env_span = raw.from_env.as_ref().map_or(0..0, |f| f.span());
        let mut missing = Vec::new();
        let mut secrets = Vec::new();
        let mut names = BTreeSet::new();
        for name in raw.from_env.map(|f| f.into_inner()).unwrap_or_default() {
            env_name(&name, "env.from_env", p);
            if vars.contains_key(name.get_ref()) {
                p.invalid(
                    name.span(),
                    "env.from_env",
                    format!(
                        "`{}` is also set in `env.vars`; a key comes from one place only",
                        name.get_ref()
                    ),
                );
            }
            if !names.insert(name.get_ref().clone()) {
                continue;
            }
            match (self.ctx.env)(name.get_ref()) {
                Some(value) => secrets.push((name.into_inner(), Secret::new(value))),
                None => missing.push(name.into_inner()),
            }
        }
        if !missing.is_empty() && self.ctx.need_secrets {
            p.push(
                from_env_span,
                ProblemKind::MissingSecrets { names: missing },
            );
        }
        EnvFile {
            path,
            vars,
            secrets,
        }
    }

    fn unit(&self, raw: RawUnit, i: usize, p: &mut Problems<'_>) -> Option<Unit> {
        let key = |f: &str| format!("systemd[{i}].{f}");
        let unit = self.required_text(raw.unit, &key("unit"), "systemd", p)?;
        const SUFFIXES: &[&str] = &[".service", ".socket", ".timer", ".path", ".target"];
        // systemd's own rule for unit names: letters, digits and `:-_.\@`.
        let ok = SUFFIXES.iter().any(|s| unit.ends_with(s))
            && unit.len() > 8
            && unit
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b));
        if !ok {
            p.invalid(
                section_span(p.text, "[systemd]"),
                &key("unit"),
                format!("{unit:?} must be a unit file name such as `app.service`"),
            );
        }
        let template = raw
            .template
            .map(|t| self.local_path(&t, &key("template"), p));
        let Some(template) = template else {
            p.missing(section_span(p.text, "[systemd]"), &key("template"));
            return None;
        };
        Some(Unit { unit, template })
    }

    fn compose(&self, raw: RawCompose, app: Option<&str>, p: &mut Problems<'_>) -> Option<Compose> {
        let Some(file) = raw.file else {
            p.missing(section_span(p.text, "compose"), "compose.file");
            return None;
        };
        let template = self.local_path(&file, "compose.file", p);
        let project = match raw.project {
            Some(pr) => {
                // Compose's own rule: lowercase letters, digits, `-` and `_`.
                let ok = !pr.get_ref().is_empty()
                    && pr.get_ref().bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b)
                    });
                if !ok {
                    p.invalid(
                        pr.span(),
                        "compose.project",
                        "use lowercase letters, digits, `-` and `_`",
                    );
                }
                pr.into_inner()
            }
            None => app.unwrap_or("app").to_ascii_lowercase().replace('.', "-"),
        };
        Some(Compose {
            template,
            project,
            pull: raw.pull.unwrap_or(true),
        })
    }

    fn nginx(&self, raw: RawNginx, p: &mut Problems<'_>) -> Option<Nginx> {
        let site = self.required_text(raw.site, "nginx.site", "nginx", p)?;
        let ok = !site.starts_with('.')
            && site
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            p.invalid(
                section_span(p.text, "nginx"),
                "nginx.site",
                "must be a file name: letters, digits, `.`, `_` and `-`, not starting with `.`",
            );
        }
        let Some(template) = raw.template else {
            p.missing(section_span(p.text, "nginx"), "nginx.template");
            return None;
        };
        let template = self.local_path(&template, "nginx.template", p);
        Some(Nginx { site, template })
    }

    fn backup(&self, raw: S<RawBackup>, app: &str, p: &mut Problems<'_>) -> Option<Backup> {
        let span = raw.span();
        let raw = raw.into_inner();
        let kind = match raw.kind.as_ref().map(|k| k.get_ref().as_str()) {
            None | Some("command") => BackupKind::Command,
            Some("postgres") => BackupKind::Postgres,
            Some(other) => {
                let k = raw.kind.as_ref().expect("matched Some");
                p.invalid(
                    k.span(),
                    "backup.kind",
                    format!("must be \"postgres\" or \"command\", not {other:?}"),
                );
                BackupKind::Command
            }
        };
        let (command, extension, verify) = match kind {
            BackupKind::Postgres => (
                raw.command.map_or_else(
                    // No connection string in argv: shipit passes `DATABASE_URL` as PG* variables.
                    || "pg_dump --format=custom".to_owned(),
                    |c| c.into_inner(),
                ),
                raw.extension
                    .map_or_else(|| "dump".to_owned(), |e| e.into_inner()),
                Some(
                    raw.verify
                        .map_or_else(|| "pg_restore --list".to_owned(), |v| v.into_inner()),
                ),
            ),
            BackupKind::Command => {
                let Some(command) = raw.command else {
                    p.missing(span, "backup.command");
                    return None;
                };
                (
                    command.into_inner(),
                    raw.extension
                        .map_or_else(|| "bak".to_owned(), |e| e.into_inner()),
                    raw.verify.map(|v| v.into_inner()),
                )
            }
        };
        if extension.is_empty() || extension.contains('/') || extension.starts_with('.') {
            p.invalid(
                span.clone(),
                "backup.extension",
                "must be a file extension like `dump` or `sql.gz`, without a leading dot",
            );
        }
        let dir = match raw.dir {
            Some(d) => {
                let ok = remote_path(&d, "backup.dir", p);
                if let Some(why) = tree_problem(d.get_ref()).filter(|_| ok) {
                    p.invalid(d.span(), "backup.dir", why);
                }
                d.into_inner()
            }
            None => format!("/var/backups/{app}"),
        };
        let keep = match raw.keep {
            None => 7,
            Some(k) if *k.get_ref() >= 1 && *k.get_ref() <= 10_000 => *k.get_ref() as u32,
            Some(k) => {
                p.invalid(k.span(), "backup.keep", "must be at least 1");
                7
            }
        };
        Some(Backup {
            kind,
            command,
            dir,
            keep,
            extension,
            verify,
        })
    }

    fn hook(&self, raw: RawHook, i: usize, p: &mut Problems<'_>) -> Option<Hook> {
        let key = |f: &str| format!("hooks[{i}].{f}");
        let at = match raw.at {
            None => {
                p.missing(section_span(p.text, "[hooks]"), &key("at"));
                return None;
            }
            Some(at) => match HOOK_POINTS.iter().find(|(n, _)| n == at.get_ref()) {
                Some((_, point)) => *point,
                None => {
                    let names: Vec<&str> = HOOK_POINTS.iter().map(|(n, _)| *n).collect();
                    p.invalid(
                        at.span(),
                        &key("at"),
                        format!(
                            "unknown hook point {:?}{}; one of: {}",
                            at.get_ref(),
                            did_you_mean(&suggest(at.get_ref(), names.iter().copied())),
                            names.join(", ")
                        ),
                    );
                    return None;
                }
            },
        };
        let command = self.required_text(raw.command, &key("command"), "[hooks]", p)?;
        Some(Hook {
            at,
            command,
            once: raw.once,
            roles: raw.roles.into_iter().map(|r| r.into_inner()).collect(),
        })
    }

    fn task(&self, name: String, raw: S<RawTask>, p: &mut Problems<'_>) -> Option<(String, Task)> {
        let span = raw.span();
        let raw = raw.into_inner();
        let key = format!("tasks.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            p.invalid(
                span.clone(),
                &key,
                "a task name is letters, digits, `-` and `_`",
            );
            return None;
        }
        let command = match raw.command {
            None => {
                p.missing(span, &format!("{key}.command"));
                return None;
            }
            Some(c) => self.required_text(Some(c), &format!("{key}.command"), &key, p)?,
        };
        Some((
            name,
            Task {
                command,
                once: raw.once,
                roles: raw.roles.into_iter().map(|r| r.into_inner()).collect(),
            },
        ))
    }

    fn health(&self, raw: RawHealth, span: Range<usize>, p: &mut Problems<'_>) -> Option<Health> {
        let check = match (raw.url, raw.command) {
            (Some(url), None) => {
                let (host, port, path) = match parse_http_url(url.get_ref()) {
                    Ok(parts) => parts,
                    Err(reason) => {
                        p.invalid(url.span(), "health.url", reason);
                        (String::new(), 80, String::new())
                    }
                };
                let expect_status = match raw.expect_status {
                    None => 200,
                    Some(s) if (100..=599).contains(s.get_ref()) => *s.get_ref() as u16,
                    Some(s) => {
                        p.invalid(
                            s.span(),
                            "health.expect_status",
                            "must be an HTTP status (100–599)",
                        );
                        200
                    }
                };
                HealthCheck::Url {
                    url: url.into_inner(),
                    host,
                    port,
                    path,
                    expect_status,
                    expect_body: raw.expect_body.map(|b| b.into_inner()),
                }
            }
            (None, Some(command)) => HealthCheck::Command(command.into_inner()),
            (Some(url), Some(_)) => {
                p.invalid(url.span(), "health", "set `url` or `command`, not both");
                return None;
            }
            (None, None) => {
                p.invalid(span, "health", "set `url` or `command`");
                return None;
            }
        };
        let timeout = duration(raw.timeout, "health.timeout", 60, p);
        let interval = duration(raw.interval, "health.interval", 1, p);
        Some(Health {
            check,
            timeout,
            interval,
        })
    }

    fn rollout(&self, raw: RawRollout, p: &mut Problems<'_>) -> Rollout {
        let parallel = match raw.parallel {
            None => 10,
            Some(n) if *n.get_ref() >= 1 && *n.get_ref() <= 10_000 => *n.get_ref() as usize,
            Some(n) => {
                p.invalid(n.span(), "rollout.parallel", "must be at least 1");
                10
            }
        };
        let waves = match raw.waves {
            // A canary of one host, then the rest: a bad release meets one host first.
            None => vec![Amount::Count(1), Amount::Percent(100)],
            Some(list) => {
                if list.get_ref().is_empty() {
                    p.invalid(
                        list.span(),
                        "rollout.waves",
                        "must name at least one wave size",
                    );
                }
                list.into_inner()
                    .into_iter()
                    .filter_map(|w| match amount(w.get_ref()) {
                        Ok(Amount::Count(0)) | Ok(Amount::Percent(0)) => {
                            p.invalid(
                                w.span(),
                                "rollout.waves",
                                "a wave must have at least one host",
                            );
                            None
                        }
                        Ok(a) => Some(a),
                        Err(reason) => {
                            p.invalid(w.span(), "rollout.waves", reason);
                            None
                        }
                    })
                    .collect()
            }
        };
        let max_fail = match raw.max_fail {
            None => Amount::Count(0),
            Some(m) => amount(m.get_ref()).unwrap_or_else(|reason| {
                p.invalid(m.span(), "rollout.max_fail", reason);
                Amount::Count(0)
            }),
        };
        let on_failure = match raw.on_failure {
            None => OnFailure::Rollback,
            Some(o) => match o.get_ref().as_str() {
                "rollback" => OnFailure::Rollback,
                "halt" => OnFailure::Halt,
                other => {
                    p.invalid(
                        o.span(),
                        "rollout.on_failure",
                        format!("must be \"rollback\" or \"halt\", not {other:?}"),
                    );
                    OnFailure::Rollback
                }
            },
        };
        Rollout {
            parallel,
            waves,
            max_fail,
            on_failure,
            confirm_timeout: duration(raw.confirm_timeout, "rollout.confirm_timeout", 60, p),
            lock_timeout: duration(raw.lock_timeout, "rollout.lock_timeout", 30 * 60, p),
        }
    }

    fn required_text(
        &self,
        value: Option<S<String>>,
        key: &str,
        section: &str,
        p: &mut Problems<'_>,
    ) -> Option<String> {
        match value {
            None => {
                p.missing(section_span(p.text, section), key);
                None
            }
            Some(v) if v.get_ref().trim().is_empty() => {
                p.invalid(v.span(), key, "must not be empty");
                None
            }
            Some(v) => Some(v.into_inner()),
        }
    }

    fn local_path(&self, value: &S<String>, key: &str, p: &mut Problems<'_>) -> PathBuf {
        let v = value.get_ref();
        if v.is_empty() {
            p.invalid(value.span(), key, "must not be empty");
            return PathBuf::new();
        }
        if let Some(rest) = v.strip_prefix("~/") {
            return match self.ctx.home {
                Some(home) => home.join(rest),
                None => {
                    p.invalid(value.span(), key, "`~` used but HOME is not set");
                    PathBuf::from(v)
                }
            };
        }
        self.ctx.base_dir.join(v)
    }
}

fn migrate_host(hosts: &[Host], p: &mut Problems<'_>) -> usize {
    let tagged: Vec<usize> = (0..hosts.len())
        .filter(|&i| hosts[i].has_role("migrate"))
        .collect();
    if tagged.len() > 1 {
        let span = section_span(p.text, "[hosts]");
        p.push(
            span,
            ProblemKind::ManyMigrateHosts {
                hosts: tagged.iter().map(|&i| hosts[i].name.clone()).collect(),
            },
        );
    }
    tagged.first().copied().unwrap_or(0)
}

/// Names inside a release that shipit itself writes: a shared path must not be one of them
/// (or lie below one), or every release would share shipit's own record of what it is (a
/// shared `REVISION` or `.shipit` made every release claim one artifact, and a redeploy
/// "reused" another artifact's release).
const OWNED_IN_RELEASE: [&str; 2] = ["REVISION", ".shipit"];

/// The suffix of the temporary copies the delta step makes next to a release's files.
const DELTA_SUFFIX: &str = ".shipit-delta";

/// One `shared_dirs`/`shared_files` list: each entry relative, normalized, without control
/// characters, and not a name shipit owns in a release.
fn shared_paths(list: &[S<String>], key: &str, p: &mut Problems<'_>) -> Vec<String> {
    for s in list {
        let v = s.get_ref();
        let first = v.split('/').next().unwrap_or("");
        let reason = if v.is_empty()
            || v.starts_with('/')
            || v.split('/').any(|c| c == ".." || c == "." || c.is_empty())
        {
            Some(format!(
                "{v:?} must be a relative, normalized path inside the release (no leading or \
                 trailing `/`, no `//`, `.` or `..`)"
            ))
        } else if v.chars().any(char::is_control) {
            Some(format!("{v:?} must not contain control characters"))
        } else if OWNED_IN_RELEASE.contains(&first) {
            Some(format!(
                "{v:?}: `{first}` belongs to shipit in every release; share another path"
            ))
        } else if v.split('/').any(|c| c.ends_with(DELTA_SUFFIX)) {
            Some(format!(
                "{v:?}: names ending in `{DELTA_SUFFIX}` belong to shipit; share another path"
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            p.invalid(s.span(), key, reason);
        }
    }
    list.iter().map(|s| s.get_ref().clone()).collect()
}

/// Shared paths across `shared_dirs` and `shared_files` must be disjoint: a duplicate, or one
/// below another, is linked twice, and linking the inner one goes through the outer one's
/// link into `shared/` (seen: `["public", "public/uploads"]` deleted the uploads and left a
/// link to itself).
fn shared_overlaps<'a>(all: impl Iterator<Item = (&'a str, &'a S<String>)>, p: &mut Problems<'_>) {
    let all: Vec<_> = all.collect();
    let below = |inner: &str, outer: &str| {
        inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    for (i, (key, s)) in all.iter().enumerate() {
        let v = s.get_ref();
        let earlier = all[..i].iter().find(|(_, o)| {
            let o = o.get_ref();
            below(v, o) || below(o, v)
        });
        if let Some((other_key, other)) = earlier {
            let (line, _) = line_col(p.text, other.span().start);
            let o = other.get_ref();
            let reason = if v == o {
                format!("{v:?} is listed twice (also `{other_key}`, line {line})")
            } else {
                let (inner, outer) = if below(v, o) { (v, o) } else { (o, v) };
                format!(
                    "{inner:?} lies inside {outer:?} (with `{other_key}`, line {line}): shared \
                     paths must not contain one another; share only {outer:?}"
                )
            };
            p.invalid(s.span(), key, reason);
        }
    }
}

/// An absolute, normalized remote path. Returns whether it is valid.
fn remote_path(value: &S<String>, key: &str, p: &mut Problems<'_>) -> bool {
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

fn unix_name(value: &S<String>, key: &str, p: &mut Problems<'_>) {
    let v = value.get_ref();
    let ok = !v.is_empty()
        && !v.starts_with('-')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        p.invalid(value.span(), key, format!("{v:?} is not a valid user name"));
    }
}

fn env_name(value: &S<String>, key: &str, p: &mut Problems<'_>) {
    let v = value.get_ref();
    let ok = v
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        p.invalid(
            value.span(),
            key,
            format!("{v:?} is not a valid environment variable name (letters, digits, `_`; not starting with a digit)"),
        );
    }
}

fn port(value: &S<i64>, key: &str, p: &mut Problems<'_>) -> u16 {
    match u16::try_from(*value.get_ref()) {
        Ok(port) if port > 0 => port,
        _ => {
            p.invalid(value.span(), key, "must be a port number (1–65535)");
            22
        }
    }
}

fn duration(
    value: Option<S<String>>,
    key: &str,
    default_secs: u64,
    p: &mut Problems<'_>,
) -> Duration {
    let Some(value) = value else {
        return Duration::from_secs(default_secs);
    };
    match humantime::parse_duration(value.get_ref()) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            p.invalid(value.span(), key, "must be longer than zero");
            Duration::from_secs(default_secs)
        }
        Err(e) => {
            p.invalid(
                value.span(),
                key,
                format!(
                    "{:?} is not a duration ({e}); write e.g. \"30s\", \"2m\", \"1h\"",
                    value.get_ref()
                ),
            );
            Duration::from_secs(default_secs)
        }
    }
}

/// A wave size or `max_fail` as typed on the command line: `"2"` or `"25%"`.
pub fn parse_amount(text: &str) -> Result<Amount, String> {
    amount(&AmountValue::Str(text.to_owned()))
}

fn amount(value: &AmountValue) -> Result<Amount, String> {
    match value {
        AmountValue::Int(n) => u32::try_from(*n)
            .map(Amount::Count)
            .map_err(|_| format!("{n} must be a non-negative count")),
        AmountValue::Str(s) => {
            let s = s.trim();
            if let Some(pct) = s.strip_suffix('%') {
                match pct.trim().parse::<u8>() {
                    Ok(p) if p <= 100 => Ok(Amount::Percent(p)),
                    _ => Err(format!("{s:?} must be a percentage from 0% to 100%")),
                }
            } else {
                s.parse::<u32>().map(Amount::Count).map_err(|_| {
                    format!("{s:?} must be a host count like \"2\" or a percentage like \"25%\"")
                })
            }
        }
    }
}

/// `http://host[:port][/path]` → (host, port, path). The request is made through the SSH
/// connection from the host's side, in plain HTTP: check the app's own port, not a TLS
/// front (use `command` with `curl -k` for that).
fn parse_http_url(url: &str) -> Result<(String, u16, String), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(if url.starts_with("https://") {
            "https is not supported for the health check (it runs through the SSH connection in plain HTTP): point it at the app's own http port, or use `command = \"curl -fsk https://…\"`".to_owned()
        } else {
            "must be an http:// URL, e.g. \"http://127.0.0.1:3000/readyz\"".to_owned()
        });
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (h, after) = inner.split_once(']').ok_or("unclosed `[` in the URL")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
            None => 80,
        };
        (h.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                p.parse().map_err(|_| format!("bad port {p:?}"))?,
            ),
            None => (authority.to_owned(), 80),
        }
    };
    if host.is_empty() || port == 0 || path.contains(char::is_whitespace) {
        return Err("must look like \"http://127.0.0.1:3000/readyz\"".to_owned());
    }
    Ok((host, port, path))
}

/// `[user@]host[:port]`
fn parse_jump(value: &str) -> Result<Jump, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(text: &str, env: &[(&str, &str)]) -> Result<Inventory, InventoryError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let ctx = LoadContext {
            base_dir: Path::new("/project"),
            home: Some(Path::new("/home/me")),
            env: &lookup,
            need_secrets: true,
        };
        parse(text, Path::new("inventory/staging.toml"), &ctx)
    }

    fn load(text: &str) -> Result<Inventory, InventoryError> {
        load_with(text, &[])
    }

    fn err(text: &str) -> String {
        load(text).expect_err("should fail").to_string()
    }

    const MINIMAL: &str = r#"
[app]
name = "shop"
deploy_to = "/opt/shop"

[[hosts]]
name = "web-1"
address = "10.0.0.5"
"#;

    #[test]
    fn minimal_inventory_gets_defaults() {
        let inv = load(MINIMAL).unwrap();
        assert_eq!(inv.transport, TransportKind::Ssh);
        assert_eq!(inv.app.keep_releases, 5);
        assert_eq!(inv.ssh.user, "root");
        assert_eq!(inv.ssh.port, 22);
        assert_eq!(inv.ssh.connect_timeout, Duration::from_secs(10));
        assert_eq!(inv.hosts[0].port, 22);
        assert_eq!(inv.migrate_host, 0);
        assert_eq!(
            inv.rollout.waves,
            vec![Amount::Count(1), Amount::Percent(100)]
        );
        assert_eq!(inv.rollout.on_failure, OnFailure::Rollback);
    }

    #[test]
    fn unknown_keys_are_all_reported_with_suggestions() {
        let text = "[app]\nname = \"shop\"\ndeploy_too = \"/opt/shop\"\n\n[[hosts]]\nname = \"a\"\nadress = \"x\"\n[rollot]\n";
        insta::assert_snapshot!(err(text), @r"
        inventory/staging.toml:3:1: unknown key `deploy_too` in [app] (did you mean `deploy_to`?)
        inventory/staging.toml:7:1: unknown key `adress` in [[hosts]] (did you mean `address`?)
        inventory/staging.toml:8:2: unknown key `rollot` in the top level (did you mean `rollout`?)
        ");
    }

    #[test]
    fn duplicate_host_names_point_at_the_second() {
        let text = format!("{MINIMAL}\n[[hosts]]\nname = \"web-1\"\n");
        insta::assert_snapshot!(err(&text), @"inventory/staging.toml:11:8: duplicate host name `web-1` (first defined on line 7)");
    }

    #[test]
    fn missing_secrets_are_listed_together_by_name_only() {
        let text = format!(
            "{MINIMAL}\n[env]\npath = \"/etc/shop.env\"\nfrom_env = [\"DATABASE_URL\", \"SESSION_SECRET\", \"REDIS_URL\"]\n"
        );
        let e = load_with(&text, &[("REDIS_URL", "redis://secret-value")])
            .unwrap_err()
            .to_string();
        insta::assert_snapshot!(e, @"inventory/staging.toml:12:12: secrets named in `env.from_env` are not set in the environment: DATABASE_URL, SESSION_SECRET; export them (in CI: from the secret store) and run again");
        assert!(!e.contains("secret-value"));
    }

    #[test]
    fn secrets_resolve_and_never_print() {
        let text = format!(
            "{MINIMAL}\n[env]\npath = \"/etc/shop.env\"\nfrom_env = [\"DATABASE_URL\"]\nvars = {{ PORT = 3000 }}\n"
        );
        let inv = load_with(&text, &[("DATABASE_URL", "postgres://u:pw@db/x")]).unwrap();
        let env = inv.env.as_ref().unwrap();
        assert_eq!(env.secrets[0].1.expose(), "postgres://u:pw@db/x");
        assert_eq!(env.vars["PORT"], "3000");
        assert!(!format!("{inv:?}").contains("pw@db"));
    }

    #[test]
    fn bad_values_name_key_and_position() {
        let text = r#"
transport = "rsync"
[app]
name = "shop"
deploy_to = "/usr"
keep_releases = 1
[ssh]
connect_timeout = "ten seconds"
[[hosts]]
name = "a"
roles = ["migrate"]
[[hosts]]
name = "b"
roles = ["migrate"]
[rollout]
waves = ["1", "150%"]
max_fail = "x"
"#;
        insta::assert_snapshot!(err(text), @r#"
        inventory/staging.toml:2:13: `transport`: must be "ssh" or "local", not "rsync"
        inventory/staging.toml:5:13: `app.deploy_to`: `/usr` is a system directory; use a directory of the app's own, e.g. `/opt/<app>`
        inventory/staging.toml:6:17: `app.keep_releases`: must be at least 2 (the current release and the one to roll back to)
        inventory/staging.toml:8:19: `ssh.connect_timeout`: "ten seconds" is not a duration (expected number at 0); write e.g. "30s", "2m", "1h"
        inventory/staging.toml:9:1: more than one host has role `migrate`: a, b; exactly one host runs backups and migrations
        inventory/staging.toml:16:15: `rollout.waves`: "150%" must be a percentage from 0% to 100%
        inventory/staging.toml:17:12: `rollout.max_fail`: "x" must be a host count like "2" or a percentage like "25%"
        "#);
    }

    #[test]
    fn deploy_to_root_and_relative_are_refused() {
        let slash = MINIMAL.replace("/opt/shop", "/");
        assert!(err(&slash).contains("`/` is a system directory"));
        let rel = MINIMAL.replace("/opt/shop", "opt/shop");
        assert!(err(&rel).contains("must be an absolute path"));
        let dots = MINIMAL.replace("/opt/shop", "/opt/../etc");
        assert!(err(&dots).contains("normalized"));
    }

    #[test]
    fn system_paths_are_refused_with_their_position() {
        for (from, to, expect) in [
            (
                "deploy_to = \"/opt/shop\"",
                "deploy_to = \"/root/.ssh\"",
                "`.ssh`",
            ),
            (
                "deploy_to = \"/opt/shop\"",
                "deploy_to = \"/root\"",
                "home directory",
            ),
            (
                "deploy_to = \"/opt/shop\"",
                "deploy_to = \"/boot/efi\"",
                "`/boot`",
            ),
            (
                "deploy_to = \"/opt/shop\"",
                "deploy_to = \"/usr/local/lib\"",
                "`/usr`",
            ),
            (
                "deploy_to = \"/opt/shop\"",
                "deploy_to = \"/home/deploy\"",
                "home directory",
            ),
            (
                "deploy_to = \"/opt/shop\"",
                "deploy_to = \"/home/u/.ssh/x\"",
                "`.ssh`",
            ),
            (
                "deploy_to = \"/opt/shop\"",
                "deploy_to = \"/var/log/shop\"",
                "`/var/log`",
            ),
        ] {
            let e = err(&MINIMAL.replace(from, to));
            assert!(
                e.contains("inventory/staging.toml:4:13: `app.deploy_to`"),
                "{e}"
            );
            assert!(e.contains(expect), "{to}: {e}");
        }
        let env = |path: &str| format!("{MINIMAL}\n[env]\npath = \"{path}\"\n");
        let e = err(&env("/etc/passwd"));
        assert!(
            e.contains(":11:8: `env.path`: `/etc/passwd` would replace a file of the system"),
            "{e}"
        );
        assert!(err(&env("/etc/ssh/sshd_config")).contains("file of the system"));
        assert!(err(&env("/usr/lib/shop.env")).contains("`/usr`"));
        assert!(err(&env("/opt/.env")).contains("`/opt` is a system directory"));
        assert!(err(&env("/etc/.env")).contains("file of the system"));
        for ok in [
            "/etc/shop.env",
            "/etc/shop/app.env",
            "/opt/shop/.env",
            "/srv/x/shared/.env",
        ] {
            assert!(load(&env(ok)).is_ok(), "{ok}");
        }
        let backup =
            |dir: &str| format!("{MINIMAL}\n[backup]\ncommand = \"true\"\ndir = \"{dir}\"\n");
        assert!(err(&backup("/")).contains("`backup.dir`: `/` is a system directory"));
        assert!(err(&backup("/etc/backups")).contains("`/etc`"));
        assert!(load(&backup("/var/backups/shop")).is_ok());
    }

    /// The EFI system partition's other mount point, other distributions' package
    /// databases, and store-based systems are trees of the system too.
    #[test]
    fn other_system_trees_are_refused() {
        for (to, tree) in [
            ("/efi/shop", "`/efi`"),
            ("/var/lib/rpm/shop", "`/var/lib/rpm`"),
            ("/var/lib/dnf/shop", "`/var/lib/dnf`"),
            ("/var/lib/pacman/shop", "`/var/lib/pacman`"),
            ("/var/lib/snapd/shop", "`/var/lib/snapd`"),
            ("/var/lib/polkit-1/shop", "`/var/lib/polkit-1`"),
            ("/var/lib/sudo/shop", "`/var/lib/sudo`"),
            ("/nix/store/shop", "`/nix`"),
            ("/gnu/store/shop", "`/gnu`"),
        ] {
            let e = err(&MINIMAL.replace(
                "deploy_to = \"/opt/shop\"",
                &format!("deploy_to = \"{to}\""),
            ));
            assert!(e.contains("`app.deploy_to`"), "{to}: {e}");
            assert!(e.contains(tree), "{to}: {e}");
        }
        assert!(load(&MINIMAL.replace("/opt/shop", "/var/lib/shop")).is_ok());
    }

    /// The env file belongs to the app's user, who can rewrite it: it must never sit where a
    /// program running as root reads every file of a directory (bash-completion sources all
    /// of `/etc/bash_completion.d`, cronie reads all of `/etc/cron.d`, Nginx includes
    /// `sites-enabled/*`, useradd copies `/etc/skel` into each new home) nor carry a name
    /// such a reader takes by its extension (polkit's `*.pkla` in a `/var/lib` tree).
    #[test]
    fn env_files_are_refused_in_directories_whose_every_file_a_program_reads() {
        let env = |path: &str| format!("{MINIMAL}\n[env]\npath = \"{path}\"\n");
        for (bad, expect) in [
            ("/etc/bash_completion.d/shop.env", "`bash_completion.d`"),
            ("/etc/cron.d/shop.env", "`cron.d`"),
            ("/etc/nginx/sites-enabled/shop.env", "`sites-enabled`"),
            ("/etc/skel/shop.env", "`skel`"),
            ("/etc/sudoers.d/shop.env", "`sudoers.d`"),
            ("/srv/shop/conf.d/app.env", "`conf.d`"),
            (
                "/var/lib/polkit-1/localauthority/50-local.d/x.env",
                "`50-local.d`",
            ),
            ("/var/lib/polkit-1/shop.pkla", "`*.env`"),
            ("/opt/shop/config", "`*.env`"),
        ] {
            let e = err(&env(bad));
            assert!(e.contains(":11:8: `env.path`"), "{bad}: {e}");
            assert!(e.contains(expect), "{bad}: {e}");
        }
        for ok in [
            "/etc/ssh/shop.env",
            "/etc/de mo; touch /tmp/pwned-env.env",
            "/srv/f5-env/demo.env",
            "/opt/shop/shared/.env",
        ] {
            assert!(load(&env(ok)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn type_errors_come_with_position() {
        let text = MINIMAL.replace("name = \"web-1\"", "name = 7");
        insta::assert_snapshot!(err(&text), @"inventory/staging.toml:7:8: invalid type: integer `7`, expected a string");
    }

    #[test]
    fn syntax_errors_come_with_position() {
        let text = "[app\nname = 1\n";
        let e = err(text);
        assert!(e.starts_with("inventory/staging.toml:1:"), "{e}");
    }

    #[test]
    fn migrate_host_is_the_tagged_one_else_the_first() {
        let text =
            format!("{MINIMAL}\n[[hosts]]\nname = \"web-2\"\nroles = [\"web\", \"migrate\"]\n");
        let inv = load(&text).unwrap();
        assert_eq!(inv.hosts[inv.migrate_host].name, "web-2");
    }

    #[test]
    fn overlapping_shared_paths_and_shipits_own_names_are_refused_where_written() {
        let with = |dirs: &str, files: &str| {
            format!(
                "{MINIMAL}\n[artifact]\npath = \"dist\"\nshared_dirs = [{dirs}]\nshared_files = [{files}]\n"
            )
        };
        let e = err(&with("\"public\", \"public/uploads\"", ""));
        assert!(
            e.contains(":12:26: `artifact.shared_dirs`: \"public/uploads\" lies inside \"public\" (with `artifact.shared_dirs`, line 12)"),
            "{e}"
        );
        // Inner first, across the two lists, and duplicates.
        let e = err(&with("\"storage/logs\"", "\"storage\""));
        assert!(
            e.contains(":13:17: `artifact.shared_files`: \"storage/logs\" lies inside \"storage\""),
            "{e}"
        );
        let e = err(&with("\"a\", \"a\"", ""));
        assert!(e.contains("\"a\" is listed twice"), "{e}");
        let e = err(&with("", "\"config.yml\", \"config.yml\""));
        assert!(e.contains("\"config.yml\" is listed twice"), "{e}");
        // Siblings with a common prefix of characters are not nested.
        let ok = with("\"public\", \"public2\", \"pub/lic\"", "\"public.txt\"");
        assert_eq!(load(&ok).unwrap().artifact.unwrap().shared_dirs.len(), 3);
        for (dirs, files) in [
            ("\".shipit\"", ""),
            ("\".shipit/x\"", ""),
            ("", "\"REVISION\""),
            ("", "\"REVISION/x\""),
            ("", "\"a/b.shipit-delta\""),
        ] {
            let e = err(&with(dirs, files));
            assert!(e.contains("belong"), "{dirs} {files}: {e}");
            assert!(e.contains("share another path"), "{e}");
        }
        for bad in [
            "/abs", "a/../b", "./a", "a//b", "a/", "", "..", "a\\nb", "a\\tb",
        ] {
            let e = err(&with(&format!("\"{bad}\""), ""));
            assert!(e.contains("`artifact.shared_dirs`"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_local_transport_takes_one_host() {
        let one = "transport = \"local\"\n[app]\nname = \"demo\"\ndeploy_to = \"/tmp/demo/app\"\n\n[[hosts]]\nname = \"a\"\nroles = [\"web\", \"migrate\"]\n";
        assert_eq!(load(one).unwrap().hosts.len(), 1);
        let two = format!("{one}\n[[hosts]]\nname = \"b\"\n");
        let e = err(&two);
        assert!(
            e.contains(":10:1: `hosts`: the local transport deploys to this machine only, which the `[[hosts]]` at line 6 already is"),
            "{e}"
        );
    }

    #[test]
    fn local_transport_needs_no_hosts() {
        let text = "transport = \"local\"\n[app]\nname = \"demo\"\ndeploy_to = \"/tmp/demo/app\"\n";
        let inv = load(text).unwrap();
        assert_eq!(inv.hosts.len(), 1);
        assert_eq!(inv.hosts[0].name, "local");
    }

    #[test]
    fn local_transport_resolves_a_relative_deploy_to_against_the_project() {
        let text = "transport = \"local\"\n[app]\nname = \"demo\"\ndeploy_to = \"target/demo\"\n";
        assert_eq!(load(text).unwrap().app.deploy_to, "/project/target/demo");
        let ssh = text.replace("transport = \"local\"\n", "");
        assert!(err(&ssh).contains("must be an absolute path"));
    }

    #[test]
    fn paths_resolve_against_base_and_home() {
        let text = format!(
            "{MINIMAL}\n[ssh]\nidentity = \"~/.ssh/id_ed25519\"\nknown_hosts = \"inventory/known_hosts\"\n"
        );
        let inv = load(&text).unwrap();
        assert_eq!(
            inv.ssh.identity.unwrap(),
            Path::new("/home/me/.ssh/id_ed25519")
        );
        assert_eq!(
            inv.ssh.known_hosts.unwrap(),
            Path::new("/project/inventory/known_hosts")
        );
    }

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

    #[test]
    fn health_urls() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:3000/readyz").unwrap(),
            ("127.0.0.1".into(), 3000, "/readyz".into())
        );
        assert_eq!(
            parse_http_url("http://localhost").unwrap(),
            ("localhost".into(), 80, "/".into())
        );
        assert_eq!(
            parse_http_url("http://[::1]:8080/x?y=1").unwrap(),
            ("::1".into(), 8080, "/x?y=1".into())
        );
        assert!(
            parse_http_url("https://x/")
                .unwrap_err()
                .contains("https is not supported")
        );
        assert!(parse_http_url("ftp://x").is_err());
    }

    #[test]
    fn health_is_one_table_or_several() {
        let one = format!("{MINIMAL}[health]\nurl = \"http://127.0.0.1:3000/readyz\"\n");
        assert_eq!(load(&one).unwrap().health.len(), 1);
        assert!(load(MINIMAL).unwrap().health.is_empty());

        let two = format!(
            "{MINIMAL}[[health]]\nurl = \"http://127.0.0.1:3000/healthz\"\nexpect_body = \"ok\"\n[[health]]\ncommand = \"test -f ready\"\ntimeout = \"5s\"\n"
        );
        let inv = load(&two).unwrap();
        assert_eq!(inv.health.len(), 2);
        assert!(matches!(&inv.health[1].check, HealthCheck::Command(c) if c == "test -f ready"));
        assert_eq!(inv.health[1].timeout, Duration::from_secs(5));
        assert_eq!(inv.health[0].timeout, Duration::from_secs(60));

        let typo = format!("{MINIMAL}[[health]]\ncommand = \"true\"\n[[health]]\nurll = \"x\"\n");
        let e = err(&typo);
        assert!(e.contains("`urll`") && e.contains("`url`"), "{e}");
        let neither =
            format!("{MINIMAL}[[health]]\ncommand = \"true\"\n[[health]]\ntimeout = \"1s\"\n");
        assert!(err(&neither).contains("set `url` or `command`"));
    }

    #[test]
    fn host_key_pin_is_checked() {
        let text = MINIMAL.replace(
            "address = \"10.0.0.5\"",
            "address = \"10.0.0.5\"\nhost_key = \"ssh-ed25519 notbase64!\"",
        );
        assert!(err(&text).contains("`hosts[0].host_key`: the key is not valid base64"));
    }

    #[test]
    fn amounts_round_up() {
        assert_eq!(Amount::Percent(25).of(3), 1);
        assert_eq!(Amount::Percent(25).of(10), 3);
        assert_eq!(Amount::Percent(100).of(7), 7);
        assert_eq!(Amount::Count(2).of(7), 2);
    }

    #[test]
    fn selection_by_name_and_role() {
        let text = format!("{MINIMAL}\n[[hosts]]\nname = \"worker-1\"\nroles = [\"worker\"]\n");
        let inv = load(&text).unwrap();
        let picked = inv.select(&[], &["worker".into()]).unwrap();
        assert_eq!(picked.len(), 1);
        let e = inv.select(&["web-9".into()], &[]).unwrap_err().to_string();
        assert!(e.contains("did you mean `web-1`"), "{e}");
    }
}
