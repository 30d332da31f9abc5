//! Facts + inventory + artifact → [`Plan`]: every decision a deploy or a rollback makes
//! before it changes anything, made once, here. `shipit plan` shows the result and the
//! deploy executes it; they cannot disagree.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::step::{Phase, Step};
use super::{Source, choose, next_release_id, tolerated_failures, waves};
use crate::artifact::manifest::Manifest;
use crate::artifact::{Codec, delta};
use crate::inventory::{Amount, HookPoint, Host, Inventory};
use crate::plan::facts::ReleaseTree;

/// What a run does, fleet-wide and per host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// `deploy` or `rollback`.
    pub action: &'static str,
    /// The release every host ends on.
    pub release: String,
    /// Where backups, migrations and `once` hooks run.
    pub migrate_host: Option<String>,
    /// Steps run once, on the migrate host, after every host staged and before any switch.
    #[serde(serialize_with = "super::step::serialize_steps")]
    pub once: Vec<Step>,
    /// Host names, wave by wave.
    pub waves: Vec<Vec<String>>,
    /// How many failed hosts `max_fail` tolerates before no further wave starts.
    pub max_fail: usize,
    pub hosts: Vec<HostSteps>,
}

/// One host's part of a [`Plan`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostSteps {
    pub host: String,
    /// What `current` pointed at before the run: the release a failed switch goes back to.
    pub previous: Option<String>,
    /// Every step of this host, in the order they run.
    #[serde(serialize_with = "super::step::serialize_steps")]
    pub steps: Vec<Step>,
}

impl HostSteps {
    /// This host's steps of one phase, in order.
    pub fn phase(&self, phase: Phase) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(move |s| s.phase() == phase)
    }
}

impl Plan {
    pub fn host(&self, name: &str) -> Option<&HostSteps> {
        self.hosts.iter().find(|h| h.host == name)
    }
}

/// What the plan needs to know of the artifact.
pub struct ArtifactFacts<'a> {
    pub sha256: &'a str,
    /// Size of its tar stream (before compression).
    pub tar_size: u64,
    pub manifest: Option<&'a Manifest>,
}

/// What the plan needs to know of one host.
pub struct HostFacts<'a> {
    pub host: &'a Host,
    pub tree: &'a ReleaseTree,
    /// The manifest of the host's current release, when a delta could start from it: read
    /// (`Ok`) or why it could not be (`Err`); `None` when it was not asked for.
    pub current_manifest: Option<Result<Arc<Manifest>, String>>,
}

/// The names of what the inventory's templates render (the files were read by the caller).
#[derive(Clone, Debug, Default)]
pub struct Rendered {
    pub units: Vec<String>,
    pub site: Option<String>,
    pub compose: bool,
}

/// Everything a deploy plan is made of, besides the hosts.
pub struct DeployInputs<'a> {
    pub inventory: &'a Inventory,
    pub rendered: &'a Rendered,
    pub artifact: ArtifactFacts<'a>,
    /// Whether an env file is written (`[env]` and its content resolved).
    pub env: bool,
    pub now_unix: u64,
    /// `--waves`, else `rollout.waves`.
    pub waves: Option<&'a [Amount]>,
    pub migrate_host: Option<&'a str>,
}

/// The plan of a deploy onto `hosts` (in selection order).
pub fn deploy(inputs: &DeployInputs<'_>, hosts: &[HostFacts<'_>]) -> Plan {
    let inv = inputs.inventory;
    let release = next_release_id(
        inputs.now_unix,
        inputs.artifact.sha256,
        hosts
            .iter()
            .flat_map(|h| h.tree.releases.iter().map(|r| r.id.as_str())),
    );
    let mut deltas = DeltaSizes::default();
    let host_steps = hosts
        .iter()
        .map(|h| deploy_host(inputs, h, &release, &mut deltas))
        .collect();
    let mut once = Vec::new();
    if inputs.migrate_host.is_some() {
        if let Some(b) = &inv.backup {
            once.push(Step::Backup {
                dir: b.dir.clone(),
                keep: b.keep,
            });
        }
        if let Some(m) = &inv.migrate {
            once.push(Step::Migrate {
                command: m.command.clone(),
            });
        }
    }
    Plan {
        action: "deploy",
        release,
        migrate_host: inputs.migrate_host.map(str::to_owned),
        once,
        waves: wave_names(hosts, inputs.waves.unwrap_or(&inv.rollout.waves)),
        max_fail: tolerated_failures(inv.rollout.max_fail, hosts.len()),
        hosts: host_steps,
    }
}

fn wave_names(hosts: &[HostFacts<'_>], sizes: &[Amount]) -> Vec<Vec<String>> {
    waves(hosts.len(), sizes)
        .into_iter()
        .map(|r| hosts[r].iter().map(|h| h.host.name.clone()).collect())
        .collect()
}

/// The content a delta from one manifest would send, computed once per distinct manifest.
#[derive(Default)]
struct DeltaSizes(BTreeMap<String, u64>);

/// Mostly new content: the whole artifact is as good and simpler.
fn mostly_changed(content_bytes: u64, tar_size: u64) -> bool {
    content_bytes > tar_size / 4 * 3
}

fn deploy_host(
    inputs: &DeployInputs<'_>,
    h: &HostFacts<'_>,
    release: &str,
    deltas: &mut DeltaSizes,
) -> HostSteps {
    let inv = inputs.inventory;
    let name = &h.host.name;
    let hp = choose(
        name,
        h.tree,
        release,
        inputs.artifact.sha256,
        inv.app.keep_releases as usize,
    );
    let codec = if h.tree.zstd {
        Codec::Zstd
    } else {
        Codec::Gzip
    };
    let upload = |why: Option<String>, fallback: bool| Step::Upload {
        release: release.to_owned(),
        codec,
        bytes: inputs.artifact.tar_size,
        why,
        fallback,
    };
    let mut steps = Vec::new();
    steps.push(match &hp.source {
        Source::Present => Step::Present {
            release: release.to_owned(),
        },
        Source::Reuse { from } => match inputs.artifact.manifest {
            Some(_) => Step::Reuse {
                release: release.to_owned(),
                from: from.clone(),
            },
            None => upload(
                Some(format!(
                    "the artifact has no manifest to check a copy of {from} against"
                )),
                true,
            ),
        },
        Source::Upload => {
            let enabled = inv.artifact.as_ref().is_some_and(|a| a.delta);
            match (
                enabled && h.tree.delta,
                inputs.artifact.manifest,
                &h.tree.current,
                &h.tree.manifest,
                &h.current_manifest,
            ) {
                (true, Some(new), Some(current), Some(sha), Some(Ok(old))) => {
                    let content_bytes = *deltas.0.entry(sha.clone()).or_insert_with(|| {
                        delta::changes(old, new, &shared_paths(inv)).content_bytes
                    });
                    if mostly_changed(content_bytes, inputs.artifact.tar_size) {
                        upload(
                            Some(format!(
                                "most of the content is new ({} of {}): a delta would not be smaller",
                                crate::output::table::bytes(content_bytes),
                                crate::output::table::bytes(inputs.artifact.tar_size)
                            )),
                            false,
                        )
                    } else {
                        Step::Delta {
                            release: release.to_owned(),
                            from: current.clone(),
                            content_bytes,
                        }
                    }
                }
                (true, Some(_), Some(_), Some(_), Some(Err(why))) => upload(Some(why.clone()), true),
                _ => upload(None, false),
            }
        }
    });
    let is_migrate_host = inputs.migrate_host == Some(name.as_str());
    let hooks = |at: HookPoint| -> Vec<Step> {
        inv.hooks
            .iter()
            .filter(|hook| {
                hook.at == at
                    && (!hook.once || is_migrate_host)
                    && (hook.roles.is_empty() || hook.roles.iter().any(|r| h.host.has_role(r)))
            })
            .map(|hook| Step::Hook {
                at,
                command: hook.command.clone(),
            })
            .collect()
    };
    let env_path = inv
        .env
        .as_ref()
        .filter(|_| inputs.env)
        .map(|e| e.path.clone());
    if let Some(path) = &env_path {
        steps.push(Step::StageEnv { path: path.clone() });
    }
    let r = inputs.rendered;
    if !r.units.is_empty() {
        steps.push(Step::StageUnits {
            units: r.units.clone(),
        });
    }
    if let Some(site) = &r.site {
        steps.push(Step::StageSite { site: site.clone() });
    }
    if let (true, Some(compose)) = (r.compose, &inv.compose) {
        steps.push(Step::StageCompose {
            project: compose.project.clone(),
            pull: compose.pull,
        });
    }
    steps.extend(hooks(HookPoint::AfterUpload));
    let health_secs: u64 = inv.health.iter().map(|c| c.timeout.as_secs()).sum();
    steps.push(Step::ArmGuard {
        delay_secs: inv.rollout.confirm_timeout.as_secs().max(1) + health_secs,
    });
    steps.extend(hooks(HookPoint::BeforeSwitch));
    if let Some(path) = env_path {
        steps.push(Step::InstallEnv { path });
    }
    steps.push(Step::Switch {
        to: release.to_owned(),
        from: hp.previous.clone(),
    });
    steps.extend(hooks(HookPoint::AfterSwitch));
    steps.extend(serving_steps(inv, r));
    steps.extend(hooks(HookPoint::AfterRestart));
    if !inv.health.is_empty() {
        steps.push(Step::Health {
            checks: inv.health.len(),
        });
    }
    steps.push(Step::Confirm {
        release: release.to_owned(),
    });
    if !hp.prune.is_empty() {
        steps.push(Step::Prune { releases: hp.prune });
    }
    HostSteps {
        host: name.clone(),
        previous: hp.previous,
        steps,
    }
}

/// Units, site and compose stack: what serves the release after the switch.
fn serving_steps(inv: &Inventory, r: &Rendered) -> Vec<Step> {
    let mut steps = Vec::new();
    if !r.units.is_empty() {
        steps.push(Step::InstallUnits {
            units: r.units.clone(),
        });
        steps.extend(r.units.iter().map(|u| Step::Restart { unit: u.clone() }));
    }
    if let Some(site) = &r.site {
        steps.push(Step::InstallSite { site: site.clone() });
    }
    if let Some(compose) = &inv.compose {
        steps.push(Step::ComposeUp {
            project: compose.project.clone(),
        });
    }
    steps
}

fn shared_paths(inv: &Inventory) -> Vec<String> {
    inv.artifact
        .as_ref()
        .map(|a| {
            a.shared_dirs
                .iter()
                .chain(&a.shared_files)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The plan of a rollback of `hosts` (name, tree) to `target`.
pub fn rollback(
    inv: &Inventory,
    rendered: &Rendered,
    hosts: &[(&Host, &ReleaseTree)],
    target: &str,
    waves_override: Option<&[Amount]>,
) -> Plan {
    let host_steps = hosts
        .iter()
        .map(|(host, tree)| {
            let previous = tree.current.clone();
            let mut steps = vec![Step::Switch {
                to: target.to_owned(),
                from: previous.clone(),
            }];
            steps.extend(serving_steps(inv, rendered));
            if !inv.health.is_empty() {
                steps.push(Step::Health {
                    checks: inv.health.len(),
                });
            }
            steps.push(Step::MarkPassed {
                release: target.to_owned(),
            });
            if let Some(was) = previous.as_deref().filter(|w| *w != target) {
                steps.push(Step::Forget {
                    release: was.to_owned(),
                });
            }
            HostSteps {
                host: host.name.clone(),
                previous,
                steps,
            }
        })
        .collect();
    let sizes = waves_override.unwrap_or(&inv.rollout.waves);
    let names: Vec<String> = hosts.iter().map(|(h, _)| h.name.clone()).collect();
    Plan {
        action: "rollback",
        release: target.to_owned(),
        migrate_host: None,
        once: Vec::new(),
        waves: waves(names.len(), sizes)
            .into_iter()
            .map(|r| names[r].to_vec())
            .collect(),
        max_fail: tolerated_failures(inv.rollout.max_fail, hosts.len()),
        hosts: host_steps,
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} {}", self.action, self.release)?;
        for h in &self.hosts {
            writeln!(f, "{}:", h.host)?;
            let mut phase = None;
            for step in &h.steps {
                if phase != Some(step.phase()) {
                    phase = Some(step.phase());
                    if step.phase() == Phase::Switch
                        && let Some(m) = &self.migrate_host
                        && !self.once.is_empty()
                        && *m == h.host
                    {
                        {
                            for s in &self.once {
                                writeln!(f, "  once: {s}")?;
                            }
                        }
                    }
                }
                writeln!(f, "  {}: {step}", phase_word(step.phase()))?;
            }
        }
        let waves: Vec<String> = self
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| format!("{}: {}", i + 1, w.join(" ")))
            .collect();
        writeln!(
            f,
            "waves: {} (max_fail {})",
            waves.join("; "),
            self.max_fail
        )
    }
}

fn phase_word(phase: Phase) -> &'static str {
    match phase {
        Phase::Stage => "stage",
        Phase::Once => "once",
        Phase::Switch => "switch",
        Phase::Finish => "finish",
    }
}
