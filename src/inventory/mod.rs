//! The TOML inventory: parsed once into validated, defaults-resolved types.
//!
//! Raw serde structs stay private to this module; everything else sees [`Inventory`], whose
//! fields need no `Option` + `unwrap_or` at the use site. Every problem is reported with the
//! file, line and column it comes from, and all problems found are reported together.
//!
//! Pure: the caller passes in the file text, the directory relative paths are resolved
//! against, the home directory, a lookup for the deployer's environment and a reader of the
//! base files. No I/O here.
//!
//! The file is read in stages: `extends` follows the chain of base files and merges them
//! (each value keeping the file it came from), `schema` reports unknown keys, `raw` is the
//! merged document as serde reads it, and each section has a file that owns its resolved
//! type and its checks (`app`, `ssh`, `hosts`, `artifact`, `env`, `services`, `backup`,
//! `hooks`, `health`, `rollout`, `notify`), sharing the value checks of `validate` and
//! `paths` and the problem list of `error`. This file assembles the sections into an
//! [`Inventory`]; `resolved` writes one back in the inventory's keys (`shipit config`).

mod app;
mod artifact;
mod backup;
mod env;
mod error;
mod extends;
mod health;
mod hooks;
mod hosts;
mod notify;
mod paths;
mod raw;
mod resolved;
mod rollout;
mod schema;
mod services;
mod ssh;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use app::App;
pub use artifact::Artifact;
pub use backup::{Backup, BackupKind, Migrate};
pub use env::{EnvFile, SecretFrom, SecretSource};
pub use error::{InventoryError, Problem, ProblemKind, suggest};
pub use extends::ReadFile;
pub use health::{Health, HealthCheck};
pub use hooks::{Hook, HookPoint, Task};
pub use hosts::{Host, SelectError, check_public_key};
pub use notify::{NOTIFY_ON, Notify};
pub use paths::{SHARED_DIRS, SYSTEM_TREES, env_path_problem, tree_problem};
pub use resolved::{resolved, to_toml};
pub use rollout::{Amount, OnFailure, Rollout, parse_amount};
pub use services::{BlueGreen, Compose, MAX_DRAIN, Nginx, Unit};
pub use ssh::{Jump, Ssh, SshGiven};

use error::{Problems, Sources};
use hosts::migrate_host;
use raw::Raw;
use schema::{SCHEMA, check_keys};
use serde::Deserialize;
use validate::Validator;

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
    /// The file named (`inventory/<stage>.toml` or `-i PATH`).
    pub file: PathBuf,
    /// The files it extends, nearest first (`extends`).
    pub bases: Vec<PathBuf>,
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
    /// Commands run on the deployer with the report of a deploy, rollback or restore.
    pub notify: Vec<Notify>,
}

/// Parses and validates one inventory file's text. A file that `extends` another is
/// refused here, since nothing reads files: see [`parse_with`].
pub fn parse(text: &str, file: &Path, ctx: &LoadContext<'_>) -> Result<Inventory, InventoryError> {
    let no_files = |_: &Path| Err("this command reads no other file".to_owned());
    parse_with(text, file, ctx, &no_files)
}

/// Parses and validates an inventory: the text of `file`, and the base files it `extends`,
/// read with `read` (how they merge: `src/inventory/extends.rs`, and the README).
pub fn parse_with(
    text: &str,
    file: &Path,
    ctx: &LoadContext<'_>,
    read: ReadFile<'_>,
) -> Result<Inventory, InventoryError> {
    let (files, chain_problem) = extends::read_chain(text, file, read);
    let sources = Sources::new(files);
    let mut p = Problems {
        sources: &sources,
        list: Vec::new(),
    };
    let fail = |p: Problems<'_>| InventoryError {
        file: file.to_owned(),
        problems: p.list,
    };
    if let Some(c) = chain_problem {
        let start = sources.files[c.file].start;
        p.push(c.span.start + start..c.span.end + start, c.kind);
    }

    // Each file is parsed and its keys checked on its own, its spans in its own range.
    let mut tables = Vec::new();
    for source in &sources.files {
        match toml::de::DeTable::parse(&source.text) {
            Ok(doc) => {
                let table = extends::shift(doc.into_inner(), source.start);
                check_keys(&table, SCHEMA, "the top level", &mut p);
                tables.push(table);
            }
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                p.push(
                    span.start + source.start..span.end + source.start,
                    ProblemKind::Syntax {
                        message: first_line(e.message()),
                    },
                );
            }
        }
    }
    if !p.list.is_empty() {
        return Err(fail(p));
    }
    // The base last read first; each nearer file on top.
    let mut merged = tables.pop().expect("the named file at least");
    while let Some(nearer) = tables.pop() {
        merged = extends::merge(merged, nearer, "");
    }
    merged.remove("extends");
    let deserializer = toml::de::Deserializer::from(toml::Spanned::new(0..0, merged));
    let raw = match Raw::deserialize(deserializer) {
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
        Some(mut inv) if p.list.is_empty() => {
            inv.bases = sources.files[1..].iter().map(|f| f.path.clone()).collect();
            Ok(inv)
        }
        _ => Err(fail(p)),
    }
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or("").trim().to_owned()
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
        let systemd: Vec<Unit> = raw
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
        let mut maintenance_span = 0..0;
        let migrate = raw.migrate.and_then(|m| {
            let command = self.required_text(m.command, "migrate.command", "migrate", p)?;
            let maintenance = m.maintenance.map(|v| {
                maintenance_span = v.span();
                v.into_inner()
            });
            Some(Migrate {
                command,
                maintenance: maintenance.unwrap_or(false),
            })
        });
        if migrate.as_ref().is_some_and(|m| m.maintenance) && nginx.is_none() {
            let span = maintenance_span;
            p.invalid(
                span,
                "migrate.maintenance",
                "the maintenance window is an answer of the Nginx site: add `[nginx]` (its template places `{{ maintenance }}`), or remove `maintenance`",
            );
        }
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
        let notify = raw
            .notify
            .into_iter()
            .enumerate()
            .filter_map(|(i, n)| self.notify(n, i, p))
            .collect();
        blue_green_needs(&systemd, nginx.is_some(), &health, p);
        Some(Inventory {
            file: file.to_owned(),
            bases: Vec::new(),
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
            notify,
        })
    }
}

/// What a blue-green unit needs from the other sections: one such unit, an Nginx site to
/// point at its instances, and a check of the instance on its own port.
fn blue_green_needs(systemd: &[Unit], nginx: bool, health: &[Health], p: &mut Problems<'_>) {
    let sources = p.sources;
    let span = || sources.section_span("[systemd]");
    let units: Vec<&Unit> = systemd.iter().filter(|u| u.blue_green.is_some()).collect();
    let live_checks = health.iter().any(|h| h.check.on_live_port());
    if units.len() > 1 {
        let span = span();
        p.invalid(
            span,
            "systemd.ports",
            "only one unit can be blue-green (the one the Nginx site points at); the others restart",
        );
    }
    if units.is_empty() {
        if live_checks {
            let span = p.section("health");
            p.invalid(
                span,
                "health.url",
                "`{{ port }}` is the port of a blue-green instance, but no `[[systemd]]` unit has `ports`",
            );
        }
        return;
    }
    if !nginx {
        let span = span();
        p.invalid(
            span,
            "systemd.ports",
            "a blue-green unit needs an `[nginx]` site to point at its instances: add `[nginx]` with a template that proxies to `{{ port }}`",
        );
    }
    if !live_checks {
        let span = span();
        p.invalid(
            span,
            "systemd.ports",
            "a blue-green unit needs a health check of the new instance on its own port before it takes traffic: add `[[health]] url = \"http://127.0.0.1:{{ port }}/healthz\"`",
        );
    }
}

impl Inventory {
    /// Whether the steps that need root run through `sudo -n` (`ssh.sudo`; the local
    /// transport runs everything as the user running shipit).
    pub fn sudo(&self) -> bool {
        self.transport == TransportKind::Ssh && self.ssh.sudo
    }

    /// The blue-green unit, if one has `ports`.
    pub fn blue_green(&self) -> Option<(&Unit, &BlueGreen)> {
        self.systemd
            .iter()
            .find_map(|u| u.blue_green.as_ref().map(|b| (u, b)))
    }
}

#[cfg(test)]
mod tests;

/// Parses an inventory text for unit tests: project in `/project`, home `/home/me`, no
/// environment, secrets not required. Panics on an invalid text.
#[cfg(test)]
pub(crate) fn for_tests(text: &str) -> Inventory {
    let env = |_: &str| None;
    let ctx = LoadContext {
        base_dir: std::path::Path::new("/project"),
        home: Some(std::path::Path::new("/home/me")),
        env: &env,
        need_secrets: false,
    };
    parse(text, std::path::Path::new("inventory/prod.toml"), &ctx).expect("a valid inventory")
}
