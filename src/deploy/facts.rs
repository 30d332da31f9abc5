//! The facts a deploy plan is built from, read from the hosts without changing anything
//! (each host's release tree; where a delta may go, its current release's manifest), and
//! the plan made of them: the same two functions for `shipit plan` and `shipit deploy`.

use std::sync::Arc;

use super::stage::Templates;
use super::upload;
use crate::artifact::Packed;
use crate::artifact::manifest::Manifest;
use crate::execute::{self, RemoteError, timeout};
use crate::inventory::{Host, Inventory};
use crate::plan::build::{ArtifactFacts, DeployInputs, HostFacts, Rendered};
use crate::plan::facts::{self, ReleaseTree};
use crate::plan::shard::OnceSteps;
use crate::plan::{self, Plan};
use crate::transport::fleet::Conn;

/// Reads the release tree of every host, but for those whose [`facts::releases`] output
/// is already in `read` (by the lock's command).
pub(crate) async fn read_trees(
    conns: &[Conn<'_>],
    read: Vec<Option<String>>,
    deploy_to: &str,
) -> Vec<Result<ReleaseTree, RemoteError>> {
    let cmd = facts::releases(deploy_to);
    let read = read.into_iter().chain(std::iter::repeat(None));
    let runs = conns.iter().zip(read).map(|(c, read)| {
        let cmd = &cmd;
        async move {
            if let Some(stdout) = read {
                return Ok(facts::parse_releases(&stdout));
            }
            let what = "reading the release tree";
            execute::run(c, "facts", what, cmd, timeout::SHORT)
                .await
                .map(|o| facts::parse_releases(&o.stdout.text()))
        }
    });
    futures::future::join_all(runs).await
}

/// What the templates of a run render, by name.
pub(crate) fn rendered(templates: &Templates) -> Rendered {
    Rendered {
        units: templates.units.iter().map(|(u, _, _)| u.clone()).collect(),
        site: templates.nginx.as_ref().map(|(s, _, _)| s.clone()),
        compose: templates.compose.is_some(),
    }
}

/// Whether a delta upload may be planned at all: deltas on, and an artifact that has a
/// manifest to build one from.
pub(crate) fn deltas_wanted(inventory: &Inventory, artifact: &Packed) -> bool {
    inventory.artifact.as_ref().is_some_and(|a| a.delta) && artifact.manifest.is_some()
}

/// The facts a deploy plan is built from, read from the hosts without changing anything:
/// each host's release tree and, where a delta may go, its current release's manifest.
pub(crate) struct DeployFacts {
    pub trees: Vec<ReleaseTree>,
    pub manifests: Vec<Option<Result<Arc<Manifest>, String>>>,
}

/// `read`: each host's release tree as the lock's command read it, if it did.
pub(crate) async fn read_deploy_facts(
    conns: &[Conn<'_>],
    read: Vec<Option<String>>,
    inventory: &Inventory,
    artifact: &Packed,
) -> Result<DeployFacts, Vec<RemoteError>> {
    let deploy_to = &inventory.app.deploy_to;
    let mut trees = Vec::new();
    let mut errors = Vec::new();
    for tree in read_trees(conns, read, deploy_to).await {
        match tree {
            Ok(t) => trees.push(t),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let refs: Vec<&ReleaseTree> = trees.iter().collect();
    let wanted = deltas_wanted(inventory, artifact);
    let conns: Vec<&Conn<'_>> = conns.iter().collect();
    let manifests = upload::read_manifests(
        &conns,
        &refs,
        deploy_to,
        wanted.then_some(artifact.sha256.as_str()),
    )
    .await;
    Ok(DeployFacts { trees, manifests })
}

/// The plan of a deploy from the facts: the same function for `shipit plan` and
/// `shipit deploy`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_deploy(
    hosts: &[&Host],
    facts: &DeployFacts,
    inventory: &Inventory,
    templates: &Templates,
    artifact: &Packed,
    env: bool,
    now_unix: u64,
    waves: Option<&[crate::inventory::Amount]>,
    migrate_host: Option<&str>,
    sharding: (Option<&str>, OnceSteps),
) -> Plan {
    let hosts: Vec<HostFacts<'_>> = hosts
        .iter()
        .zip(&facts.trees)
        .zip(&facts.manifests)
        .map(|((host, tree), manifest)| HostFacts {
            host,
            tree,
            current_manifest: manifest.clone(),
        })
        .collect();
    let rendered = rendered(templates);
    let inputs = DeployInputs {
        inventory,
        rendered: &rendered,
        artifact: ArtifactFacts {
            sha256: &artifact.sha256,
            tar_size: artifact.tar_size,
            manifest: artifact.manifest.as_deref(),
        },
        env: env && inventory.env.is_some(),
        now_unix,
        waves,
        migrate_host,
        release: sharding.0,
        once: sharding.1,
    };
    plan::build::deploy(&inputs, &hosts)
}
