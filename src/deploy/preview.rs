//! `shipit plan` (= `shipit deploy --dry-run`): what a deploy would do on every host, read
//! from the hosts without changing anything (no lock is taken, nothing is written): upload or
//! reuse, env keys added/removed/changed (names only), unit and site diffs, the backup,
//! migrations and hooks and where they run, the waves.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::artifact::Packed;
use crate::commands::{self, exit};
use crate::deploy::envfile::{self, KeyDiff};
use crate::deploy::once;
use crate::deploy::stage::{self, Templates};
use crate::deploy::templates;
use crate::inventory::{Amount, Inventory};
use crate::output::{Event, Output, Report, table};
use crate::plan::facts;
use crate::plan::{self, Source};
use crate::shell::Secret;
use crate::transport::fleet::Conn;
use crate::transport::{ExecRequest, Exit};

const SHORT: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub stage: String,
    pub release: String,
    pub artifact_sha256: String,
    /// Size of the artifact's tar (uncompressed).
    pub artifact_bytes: u64,
    pub waves: Vec<Vec<String>>,
    pub backup: Option<String>,
    pub migrate: Option<String>,
    /// Where backup, migrations and `once` hooks run.
    pub migrate_host: String,
    pub hosts: Vec<HostPreview>,
}

#[derive(Debug, Serialize)]
pub struct HostPreview {
    pub host: String,
    /// `upload`, `reuse <id>` or `present`.
    pub source: String,
    pub current: Option<String>,
    pub prune: Vec<String>,
    pub env_keys: Option<KeyDiff>,
    /// Per unit / site: `None` unchanged, else a unified diff (installed → new).
    pub units: Vec<ConfigChange>,
    pub nginx: Option<ConfigChange>,
    pub hooks: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ConfigChange {
    pub name: String,
    pub change: String,
    pub diff: Option<String>,
}

impl Report for PlanReport {
    fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "release {} (artifact {}, {})",
            self.release,
            &self.artifact_sha256[..12.min(self.artifact_sha256.len())],
            table::bytes(self.artifact_bytes)
        );
        for h in &self.hosts {
            let _ = writeln!(out, "{}:", h.host);
            if let Some(e) = &h.error {
                let _ = writeln!(out, "  cannot plan: {e}");
                continue;
            }
            let _ = writeln!(
                out,
                "  artifact: {}; current {} -> {}",
                h.source,
                h.current.as_deref().unwrap_or("(none)"),
                self.release
            );
            if !h.prune.is_empty() {
                let _ = writeln!(out, "  remove: {}", h.prune.join(" "));
            }
            match &h.env_keys {
                None => {}
                Some(d) => {
                    let _ = writeln!(
                        out,
                        "  env file: added [{}] removed [{}] changed [{}]",
                        d.added.join(" "),
                        d.removed.join(" "),
                        d.changed.join(" ")
                    );
                }
            }
            for c in h.units.iter().chain(&h.nginx) {
                let _ = writeln!(out, "  {}: {}", c.name, c.change);
                if let Some(diff) = &c.diff {
                    for line in diff.lines() {
                        let _ = writeln!(out, "    {line}");
                    }
                }
            }
            for hook in &h.hooks {
                let _ = writeln!(out, "  hook {hook}");
            }
        }
        if let Some(b) = &self.backup {
            let _ = writeln!(out, "backup on {}: {b}", self.migrate_host);
        }
        if let Some(m) = &self.migrate {
            let _ = writeln!(out, "migrations on {}: `{m}`", self.migrate_host);
        }
        let waves: Vec<String> = self
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| format!("{}: {}", i + 1, w.join(" ")))
            .collect();
        let _ = writeln!(out, "waves: {}", waves.join("; "));
        out.push_str("nothing was changed (plan only)\n");
        out
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }
}

pub struct Preview<'a> {
    pub stage: &'a str,
    pub inventory: &'a Inventory,
    pub artifact: &'a Packed,
    pub templates: &'a Templates,
    pub env_content: Option<Secret>,
    pub now_unix: u64,
    pub waves: &'a [Amount],
    pub migrate_host: String,
    pub out: &'a Output,
}

pub async fn show(p: Preview<'_>, conns: &[Conn<'_>]) -> PlanReport {
    let deploy_to = &p.inventory.app.deploy_to;
    let cmd = facts::releases(deploy_to);
    let trees = futures::future::join_all(conns.iter().map(|c| {
        let cmd = &cmd;
        async move {
            p.out.emit(Event::Step {
                host: &c.host.name,
                step: "reading",
            });
            match c.transport.exec(ExecRequest::new(cmd, SHORT)).await {
                Ok(o) if o.success() => Ok(facts::parse_releases(&o.stdout.text())),
                Ok(o) => Err(format!("reading the release tree failed ({})", o.exit)),
                Err(e) => Err(crate::error::chain(&e)),
            }
        }
    }))
    .await;
    let release = plan::next_release_id(
        p.now_unix,
        &p.artifact.sha256,
        trees
            .iter()
            .flatten()
            .flat_map(|t| t.releases.iter().map(|r| r.id.as_str())),
    );
    let hosts = futures::future::join_all(conns.iter().zip(&trees).map(|(c, tree)| {
        let release = &release;
        let p = &p;
        async move { host_preview(p, c, tree, release).await }
    }))
    .await;
    let names: Vec<String> = conns.iter().map(|c| c.host.name.clone()).collect();
    let waves = plan::waves(names.len(), p.waves)
        .into_iter()
        .map(|r| names[r].to_vec())
        .collect();
    PlanReport {
        stage: p.stage.to_owned(),
        release,
        artifact_sha256: p.artifact.sha256.clone(),
        artifact_bytes: p.artifact.tar_size,
        waves,
        backup: p
            .inventory
            .backup
            .as_ref()
            .map(|b| format!("`{}` into `{}` (keep {})", b.command, b.dir, b.keep)),
        migrate: p.inventory.migrate.as_ref().map(|m| m.command.clone()),
        migrate_host: p.migrate_host.clone(),
        hosts,
    }
}

async fn host_preview(
    p: &Preview<'_>,
    c: &Conn<'_>,
    tree: &Result<facts::ReleaseTree, String>,
    release: &str,
) -> HostPreview {
    let mut h = HostPreview {
        host: c.host.name.clone(),
        source: String::new(),
        current: None,
        prune: Vec::new(),
        env_keys: None,
        units: Vec::new(),
        nginx: None,
        hooks: Vec::new(),
        error: None,
    };
    let tree = match tree {
        Ok(t) => t,
        Err(e) => {
            h.error = Some(e.clone());
            return h;
        }
    };
    let hp = plan::host_plan(
        &c.host.name,
        tree,
        release,
        &p.artifact.sha256,
        p.inventory.app.keep_releases as usize,
    );
    h.source = match &hp.source {
        Source::Upload => {
            let delta = p.inventory.artifact.as_ref().is_some_and(|a| a.delta)
                && p.artifact.manifest.is_some()
                && tree.delta;
            match (&tree.current, &tree.manifest) {
                (Some(current), Some(_)) if delta => {
                    format!("upload what {current} lacks (delta)")
                }
                _ => format!(
                    "upload {} (before compression)",
                    table::bytes(p.artifact.tar_size)
                ),
            }
        }
        Source::Reuse { from } => format!("reuse {from} (nothing to upload)"),
        Source::Present => "present".to_owned(),
    };
    h.current = tree.current.clone();
    h.prune = hp.prune;
    if let (Some(env), Some(content)) = (&p.inventory.env, &p.env_content) {
        match read(c, &env.path).await {
            Ok(current) => {
                let old = current.unwrap_or_default();
                if !envfile::same_content(&old, content) {
                    h.env_keys = Some(envfile::key_diff(&old, content));
                }
            }
            Err(e) => h.error = Some(e),
        }
    }
    let ctx = stage::context(p.inventory, c.host, release);
    for (unit, file, source) in &p.templates.units {
        let path = format!("{}/{unit}", commands::systemd::UNIT_DIR);
        h.units
            .push(change(c, unit, file, source, &ctx, &path).await);
    }
    if let Some((site, file, source)) = &p.templates.nginx {
        let path = format!("{}/{site}", commands::nginx::AVAILABLE);
        h.nginx = Some(change(c, &format!("nginx site {site}"), file, source, &ctx, &path).await);
    }
    let is_migrate_host = c.host.name == p.migrate_host;
    for hook in &p.inventory.hooks {
        let applies = (!hook.once || is_migrate_host)
            && (hook.roles.is_empty() || hook.roles.iter().any(|r| c.host.has_role(r)));
        if applies {
            h.hooks
                .push(format!("{}: `{}`", once::point_name(hook.at), hook.command));
        }
    }
    h
}

async fn change(
    c: &Conn<'_>,
    name: &str,
    file: &str,
    source: &str,
    ctx: &templates::Context,
    installed: &str,
) -> ConfigChange {
    let rendered = match templates::render(file, source, ctx) {
        Ok(t) => t,
        Err(e) => {
            return ConfigChange {
                name: name.to_owned(),
                change: format!("template error: {e}"),
                diff: None,
            };
        }
    };
    let (change, diff) = match read(c, installed).await {
        Ok(None) => ("new".to_owned(), Some(unified("", &rendered))),
        Ok(Some(old)) if old == rendered => ("unchanged".to_owned(), None),
        Ok(Some(old)) => ("changed".to_owned(), Some(unified(&old, &rendered))),
        Err(e) => (format!("cannot read the installed file: {e}"), None),
    };
    ConfigChange {
        name: name.to_owned(),
        change,
        diff,
    }
}

fn unified(old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(2)
        .header("installed", "new")
        .to_string()
}

async fn read(c: &Conn<'_>, path: &str) -> Result<Option<String>, String> {
    let cmd = commands::files::read(path);
    match c.transport.exec(ExecRequest::new(&cmd, SHORT)).await {
        Ok(o) if o.success() => Ok(Some(o.stdout.text())),
        Ok(o) if o.exit == Exit::Code(exit::NO_FILE) => Ok(None),
        Ok(o) => Err(format!("reading `{path}` failed ({})", o.exit)),
        Err(e) => Err(crate::error::chain(&e)),
    }
}
