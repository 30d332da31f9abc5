//! `shipit plan` (= `shipit deploy --dry-run`): what a deploy would do on every host, read
//! from the hosts without changing anything (no lock is taken, nothing is written): upload or
//! reuse, env keys added/removed/changed (names only), unit and site diffs, the backup,
//! migrations and hooks and where they run, the waves.

use crate::artifact::Packed;
use crate::commands::{self, exit};
use crate::deploy::envfile;
use crate::deploy::facts as host_facts;
use crate::deploy::stage::{self, Templates};
use crate::deploy::templates;
use crate::deploy::upload;
use crate::inventory::{Amount, Inventory};
pub use crate::output::report::plan::{ConfigChange, HostPreview, PlanReport};
use crate::output::{Event, Output, table};
use crate::plan::facts;
use crate::plan::shard::{self, OnceSteps};
use crate::plan::{Plan, Step};
use crate::shell::Secret;
use crate::transport::fleet::Conn;
use crate::transport::{ExecRequest, Exit};

pub struct Preview<'a> {
    pub stage: &'a str,
    pub inventory: &'a Inventory,
    pub artifact: &'a Packed,
    pub templates: &'a Templates,
    pub env_content: Option<Secret>,
    pub now_unix: u64,
    /// `--waves`, if given (else `rollout.waves`).
    pub waves: Option<&'a [Amount]>,
    pub migrate_host: String,
    /// `--release-id`, if given (checked against the artifact by the caller).
    pub release_id: Option<&'a str>,
    /// `--once-only` / `--skip-once`.
    pub once: OnceSteps,
    pub out: &'a Output,
}

pub async fn show(p: Preview<'_>, conns: &[Conn<'_>]) -> PlanReport {
    for c in conns {
        p.out.emit(Event::Step {
            host: &c.host.name,
            step: "reading",
        });
    }
    // The same facts and the same plan as a deploy; only hosts whose tree could be read
    // are planned.
    let trees = host_facts::read_trees(conns, Vec::new(), &p.inventory.app.deploy_to).await;
    let mut readable = Vec::new();
    let mut ok_trees = Vec::new();
    let mut errors = std::collections::BTreeMap::new();
    for (c, tree) in conns.iter().zip(trees) {
        match tree {
            Ok(t) => {
                readable.push(c);
                ok_trees.push(t);
            }
            Err(e) => {
                errors.insert(c.host.name.clone(), e.message);
            }
        }
    }
    let refs: Vec<&facts::ReleaseTree> = ok_trees.iter().collect();
    let wanted = host_facts::deltas_wanted(p.inventory, p.artifact);
    let manifests = upload::read_manifests(
        &readable,
        &refs,
        &p.inventory.app.deploy_to,
        wanted.then_some(p.artifact.sha256.as_str()),
    )
    .await;
    let facts = host_facts::DeployFacts {
        trees: ok_trees,
        manifests,
    };
    let migrate_host =
        Some(p.migrate_host.as_str()).filter(|m| readable.iter().any(|c| c.host.name == *m));
    let hosts: Vec<&crate::inventory::Host> = readable.iter().map(|c| c.host).collect();
    let plan = host_facts::plan_deploy(
        &hosts,
        &facts,
        p.inventory,
        p.templates,
        p.artifact,
        p.env_content.is_some(),
        p.now_unix,
        p.waves,
        migrate_host,
        (p.release_id, p.once),
    );
    let details = futures::future::join_all(readable.iter().zip(&facts.trees).map(|(&c, tree)| {
        let (p, plan) = (&p, &plan);
        async move { host_preview(p, plan, c, tree).await }
    }))
    .await;
    let mut details: std::collections::BTreeMap<String, HostPreview> =
        details.into_iter().map(|h| (h.host.clone(), h)).collect();
    let hosts = conns
        .iter()
        .map(|c| match details.remove(&c.host.name) {
            Some(h) => h,
            None => HostPreview {
                host: c.host.name.clone(),
                error: errors.remove(&c.host.name),
                ..HostPreview::default()
            },
        })
        .collect();
    PlanReport {
        stage: p.stage.to_owned(),
        release: plan.release.clone(),
        artifact_sha256: p.artifact.sha256.clone(),
        artifact_bytes: p.artifact.tar_size,
        waves: plan.waves.clone(),
        max_fail: plan.max_fail,
        backup: p
            .inventory
            .backup
            .as_ref()
            .map(|b| format!("`{}` into `{}` (keep {})", b.command, b.dir, b.keep)),
        migrate: p.inventory.migrate.as_ref().map(|m| m.command.clone()),
        migrate_host: p.migrate_host.clone(),
        once: plan.once.clone(),
        hosts,
    }
}

async fn host_preview(
    p: &Preview<'_>,
    plan: &Plan,
    c: &Conn<'_>,
    tree: &facts::ReleaseTree,
) -> HostPreview {
    let mut h = HostPreview {
        host: c.host.name.clone(),
        current: tree.current.clone(),
        ..HostPreview::default()
    };
    let Some(hs) = plan.host(&c.host.name) else {
        return h;
    };
    // What `deploy --release-id` would refuse on this host, said before the deploy runs.
    let newer = shard::newer_releases(&plan.release, tree);
    if p.release_id.is_some() && !newer.is_empty() {
        h.error = Some(format!(
            "already has {} newer than `--release-id {}`: a deploy would refuse this host",
            newer
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", "),
            plan.release
        ));
    }
    h.steps = hs.steps.clone();
    for step in &hs.steps {
        match step {
            Step::Upload { bytes, why, .. } => {
                h.source = format!("upload {} (before compression)", table::bytes(*bytes));
                if let Some(why) = why {
                    h.source.push_str(&format!(": {why}"));
                }
            }
            Step::Delta {
                from,
                content_bytes,
                ..
            } => {
                h.source = format!(
                    "upload what {from} lacks (delta, {} of content)",
                    table::bytes(*content_bytes)
                );
            }
            Step::Reuse { from, .. } => h.source = format!("reuse {from} (nothing to upload)"),
            Step::Present { .. } => h.source = "present".to_owned(),
            Step::Prune { releases } => h.prune = releases.clone(),
            Step::Hook { at, command } => h.hooks.push(format!(
                "{}: `{command}`",
                crate::plan::step::hook_point_str(*at)
            )),
            _ => {}
        }
    }
    let release = &plan.release;
    if let (Some(env), Some(content)) = (&p.inventory.env, &p.env_content) {
        // The env file is 0600, the app user's: read as root.
        match read(c, &env.path, true).await {
            Ok(current) => {
                let old = current.unwrap_or_default();
                if !envfile::same_content(&old, content) {
                    h.env_keys = Some(envfile::key_diff(&old, content));
                }
            }
            Err(e) => h.error = Some(e),
        }
    }
    let mut ctx = stage::context(p.inventory, c.host, release);
    for (unit, file, source) in &p.templates.units {
        let path = format!("{}/{unit}", commands::systemd::UNIT_DIR);
        h.units
            .push(change(c, unit, file, source, &ctx, &path).await);
    }
    if let Some((site, file, source)) = &p.templates.nginx {
        // A blue-green site is shown as it points at the instance going live.
        ctx.port = hs.blue_green().map(|mv| mv.port);
        let path = format!("{}/{site}", commands::nginx::AVAILABLE);
        h.nginx = Some(change(c, &format!("nginx site {site}"), file, source, &ctx, &path).await);
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
    let (change, diff) = match read(c, installed, false).await {
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

async fn read(c: &Conn<'_>, path: &str, root: bool) -> Result<Option<String>, String> {
    let cmd = commands::files::read(path);
    let mut req = ExecRequest::new(&cmd, crate::execute::timeout::SHORT);
    req.root = root;
    match c.transport.exec(req).await {
        Ok(o) if o.success() => Ok(Some(o.stdout.text())),
        Ok(o) if o.exit == Exit::Code(exit::NO_FILE) => Ok(None),
        Ok(o) => Err(format!("reading `{path}` failed ({})", o.exit)),
        Err(e) => Err(crate::error::chain(&e)),
    }
}
