//! Facts + inventory + artifact → [`Plan`]: every decision a deploy or a rollback makes
//! before it changes anything, made once, here. `shipit plan` shows the result and the
//! deploy executes it; they cannot disagree.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::shard::OnceSteps;
use super::step::{Phase, Step};
use super::{Source, choose, next_release_id, tolerated_failures, waves};
use crate::artifact::manifest::Manifest;
use crate::artifact::{Codec, delta};
use crate::inventory::{Amount, HookPoint, Host, Inventory};
use crate::plan::facts::ReleaseTree;

/// What a run does, fleet-wide and per host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// `deploy`, `once` (`deploy --once-only`: staged and once steps, no switch) or
    /// `rollback`.
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
    /// The delay of this host's dead-deployer guard, if the plan arms one.
    pub fn guard_delay(&self) -> Option<u64> {
        self.steps.iter().find_map(|s| match s {
            Step::ArmGuard { delay_secs } => Some(*delay_secs),
            _ => None,
        })
    }

    /// The blue-green move of this host: the instance going live and the port Nginx
    /// pointed at before.
    pub fn blue_green(&self) -> Option<Move<'_>> {
        let (unit, port) = self.steps.iter().find_map(|s| match s {
            Step::StartIdle { unit, port, .. } => Some((unit.as_str(), *port)),
            _ => None,
        })?;
        let from = self.steps.iter().find_map(|s| match s {
            Step::PointSite { from, .. } => Some(*from),
            _ => None,
        })?;
        Some(Move { unit, port, from })
    }

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

/// A host's blue-green move, read back from its steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move<'a> {
    /// The instance going live.
    pub unit: &'a str,
    pub port: u16,
    /// The port Nginx pointed at before the run.
    pub from: Option<u16>,
}

/// Which instance of the blue-green unit goes live on a host whose site points at `live`:
/// the other one (the first port when neither serves).
fn blue_green_move(inv: &Inventory, live: Option<u16>) -> Option<(String, u16, Option<u16>)> {
    let (unit, bg) = inv.blue_green()?;
    let [a, b] = bg.ports;
    let idle = if live == Some(a) { b } else { a };
    Some((unit.instance(idle), idle, live))
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
    /// `--release-id`: the id every shard of one deploy uses (checked by the caller), else
    /// a new one is minted.
    pub release: Option<&'a str>,
    /// Which once steps run ([`OnceSteps`]).
    pub once: OnceSteps,
}

/// The plan of a deploy onto `hosts` (in selection order).
pub fn deploy(inputs: &DeployInputs<'_>, hosts: &[HostFacts<'_>]) -> Plan {
    let inv = inputs.inventory;
    let release = match inputs.release {
        Some(given) => given.to_owned(),
        None => next_release_id(
            inputs.now_unix,
            inputs.artifact.sha256,
            hosts
                .iter()
                .flat_map(|h| h.tree.releases.iter().map(|r| r.id.as_str())),
        ),
    };
    let mut deltas = DeltaSizes::default();
    let mut host_steps: Vec<HostSteps> = hosts
        .iter()
        .map(|h| deploy_host(inputs, h, &release, &mut deltas))
        .collect();
    if inputs.once == OnceSteps::Only {
        // Staged, so the migrations run in the new release; nothing is switched.
        for hs in &mut host_steps {
            hs.steps.retain(|s| s.phase() == Phase::Stage);
        }
    }
    let mut once = Vec::new();
    if inputs.migrate_host.is_some() && inputs.once != OnceSteps::Skip {
        if let Some(b) = &inv.backup {
            once.push(Step::Backup {
                dir: b.dir.clone(),
                keep: b.keep,
            });
        }
        if let Some(m) = &inv.migrate {
            once.push(Step::Migrate {
                command: m.command.clone(),
                maintenance: m.maintenance,
            });
        }
    }
    Plan {
        action: match inputs.once {
            OnceSteps::Only => "once",
            _ => "deploy",
        },
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
    let hooks = |at: HookPoint| hook_steps(inv, h.host, at, is_migrate_host);
    // `once` hooks at `after_upload` are once steps: `--skip-once` leaves them to the
    // `--once-only` run. The later ones go with the migrate host's switch.
    let upload_hooks = hook_steps(
        inv,
        h.host,
        HookPoint::AfterUpload,
        is_migrate_host && inputs.once != OnceSteps::Skip,
    );
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
    let bg = blue_green_move(inv, h.tree.live_port);
    if let Some(site) = &r.site {
        steps.push(Step::StageSite {
            site: site.clone(),
            port: bg.as_ref().map(|(_, port, _)| *port),
        });
    }
    if let (true, Some(compose)) = (r.compose, &inv.compose) {
        steps.push(Step::StageCompose {
            project: compose.project.clone(),
            pull: compose.pull,
        });
    }
    steps.extend(upload_hooks);
    // The checks of the idle instance run before the gate: the guard waits for both.
    let health_secs: u64 = inv
        .health
        .iter()
        .map(|c| {
            c.timeout.as_secs()
                * if bg.is_some() && c.check.on_live_port() {
                    2
                } else {
                    1
                }
        })
        .sum();
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
    steps.extend(serving_steps(inv, r, bg.as_ref(), release));
    steps.extend(hooks(HookPoint::AfterRestart));
    if !inv.health.is_empty() {
        steps.push(Step::Health {
            checks: inv.health.len(),
        });
    }
    steps.push(Step::Confirm {
        release: release.to_owned(),
    });
    steps.extend(stop_old(inv, bg.as_ref()));
    if !hp.prune.is_empty() {
        steps.push(Step::Prune { releases: hp.prune });
    }
    HostSteps {
        host: name.clone(),
        previous: hp.previous,
        steps,
    }
}

/// The hooks at `at` that run on `host`: those of its roles (or of every role), a `once`
/// hook only on the migrate host (`once_here`).
fn hook_steps(inv: &Inventory, host: &Host, at: HookPoint, once_here: bool) -> Vec<Step> {
    inv.hooks
        .iter()
        .filter(|hook| {
            hook.at == at
                && (!hook.once || once_here)
                && (hook.roles.is_empty() || hook.roles.iter().any(|r| host.has_role(r)))
        })
        .map(|hook| Step::Hook {
            at,
            command: hook.command.clone(),
        })
        .collect()
}

/// The `after_switch` or `after_restart` hooks of `host`'s steps, in order: what a
/// switch-back runs again for the release it goes back to.
pub fn hooks_at(host: &HostSteps, at: HookPoint) -> impl Iterator<Item = &str> {
    host.steps.iter().filter_map(move |s| match s {
        Step::Hook { at: a, command } if *a == at => Some(command.as_str()),
        _ => None,
    })
}

/// Units, site and compose stack: what serves the release after the switch. A blue-green
/// unit's instance going live is started and checked on its own port before the site
/// points at it; the other units restart.
fn serving_steps(
    inv: &Inventory,
    r: &Rendered,
    bg: Option<&(String, u16, Option<u16>)>,
    release: &str,
) -> Vec<Step> {
    let mut steps = Vec::new();
    if !r.units.is_empty() {
        steps.push(Step::InstallUnits {
            units: r.units.clone(),
        });
        steps.extend(
            r.units
                .iter()
                .filter(|u| !is_template(u))
                .map(|u| Step::Restart { unit: u.clone() }),
        );
    }
    match (bg, &r.site) {
        (Some((unit, port, from)), Some(site)) => {
            steps.push(Step::StartIdle {
                unit: unit.clone(),
                port: *port,
                release: release.to_owned(),
            });
            steps.push(Step::CheckIdle {
                unit: unit.clone(),
                port: *port,
                checks: inv.health.iter().filter(|h| h.check.on_live_port()).count(),
            });
            steps.push(Step::PointSite {
                site: site.clone(),
                port: *port,
                from: *from,
            });
        }
        (_, Some(site)) => steps.push(Step::InstallSite { site: site.clone() }),
        (_, None) => {}
    }
    if let Some(compose) = &inv.compose {
        steps.push(Step::ComposeUp {
            project: compose.project.clone(),
        });
    }
    steps
}

/// A template unit (`name@.service`) is never restarted by name: only its instances run.
fn is_template(unit: &str) -> bool {
    unit.contains("@.")
}

/// The old blue-green instance stopped after the drain, unless `keep_idle` keeps it (or
/// no instance served before, or it is the one going live again).
fn stop_old(inv: &Inventory, bg: Option<&(String, u16, Option<u16>)>) -> Option<Step> {
    let (unit, settings) = inv.blue_green()?;
    let (_, port, Some(old)) = bg? else {
        return None;
    };
    (!settings.keep_idle && old != port).then(|| Step::StopOld {
        unit: unit.instance(*old),
        port: *old,
        drain_secs: settings.drain.as_secs(),
    })
}

/// The inventory's shared dirs and files: paths a delta leaves to the host.
pub fn shared_paths(inv: &Inventory) -> Vec<String> {
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

/// The units a restore stops on every host: every unit that runs, a blue-green unit's two
/// instances included (a template without ports has no instance shipit knows of).
pub fn restore_stops(inv: &Inventory) -> Vec<String> {
    let mut units = Vec::new();
    for u in &inv.systemd {
        match &u.blue_green {
            Some(bg) => units.extend(bg.ports.iter().map(|p| u.instance(*p))),
            None if !is_template(&u.unit) => units.push(u.unit.clone()),
            None => {}
        }
    }
    units
}

/// The plan of a rollback of `hosts` (name, tree) to `target`; with `restore`, a database
/// restore on that host (a [`Step::Restore`]) runs before the switch.
///
/// The `after_switch` and `after_restart` hooks run as in a deploy of `target` (a `once`
/// hook on the migrate host among `hosts`: the inventory's, else the first): what they
/// start (an app, workers) must run the release `current` points at.
pub fn rollback(
    inv: &Inventory,
    rendered: &Rendered,
    hosts: &[(&Host, &ReleaseTree)],
    target: &str,
    waves_override: Option<&[Amount]>,
    restore: Option<(String, Step)>,
) -> Plan {
    let tagged = &inv.hosts[inv.migrate_host].name;
    let once_host = hosts
        .iter()
        .find(|(h, _)| &h.name == tagged)
        .or(hosts.first())
        .map(|(h, _)| h.name.as_str());
    let host_steps = hosts
        .iter()
        .map(|(host, tree)| {
            let previous = tree.current.clone();
            let once_here = once_host == Some(host.name.as_str());
            let mut steps = vec![Step::Switch {
                to: target.to_owned(),
                from: previous.clone(),
            }];
            steps.extend(hook_steps(inv, host, HookPoint::AfterSwitch, once_here));
            let bg = blue_green_move(inv, tree.live_port);
            steps.extend(serving_steps(inv, rendered, bg.as_ref(), target));
            steps.extend(hook_steps(inv, host, HookPoint::AfterRestart, once_here));
            if !inv.health.is_empty() {
                steps.push(Step::Health {
                    checks: inv.health.len(),
                });
            }
            steps.push(Step::MarkPassed {
                release: target.to_owned(),
            });
            steps.extend(stop_old(inv, bg.as_ref()));
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
    let (migrate_host, once) = match restore {
        Some((host, step)) => (Some(host), vec![step]),
        None => (None, Vec::new()),
    };
    Plan {
        action: "rollback",
        release: target.to_owned(),
        migrate_host,
        once,
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

#[cfg(test)]
mod tests {

    use super::*;
    use crate::artifact::manifest::{Item, Kind};
    use crate::plan::Undo;

    use crate::plan::facts::Release;

    const OLD: &str = "20200101T000000Z-aaaaaaaaaaaa";
    const NOW: u64 = 1_795_381_200;

    fn inventory(rest: &str) -> Inventory {
        let text = format!(
            "[app]\nname = \"shop\"\ndeploy_to = \"/opt/shop\"\n\n[[hosts]]\nname = \"h1\"\naddress = \"10.0.0.1\"\nroles = [\"web\"]\n\n[[hosts]]\nname = \"h2\"\naddress = \"10.0.0.2\"\nroles = [\"worker\"]\n\n[artifact]\npath = \"dist\"\n{rest}"
        );
        crate::inventory::for_tests(&text)
    }

    /// A manifest of `n` files of 1000 bytes, file `i` with content `seed + i`.
    fn manifest(n: usize, seed: usize) -> Manifest {
        Manifest {
            entries: (0..n)
                .map(|i| {
                    let item = Item {
                        kind: Kind::File {
                            size: 1000,
                            sha256: format!("{:064x}", seed + i),
                        },
                        mode: 0o644,
                    };
                    (format!("f{i}"), item)
                })
                .collect(),
        }
    }

    /// A host running `OLD`, whose manifest has sha `m`.
    fn tree(m: &str) -> ReleaseTree {
        ReleaseTree {
            current: Some(OLD.to_owned()),
            releases: vec![Release {
                id: OLD.to_owned(),
                sha256: Some("bb".repeat(32)),
            }],
            zstd: true,
            delta: true,
            manifest: Some(m.to_owned()),
            ..ReleaseTree::default()
        }
    }

    fn plan_with(
        inv: &Inventory,
        new: &Manifest,
        old: Option<Result<Arc<Manifest>, String>>,
        migrate_host: Option<&str>,
    ) -> Plan {
        plan_mode(inv, new, old, migrate_host, OnceSteps::Run, None)
    }

    fn plan_mode(
        inv: &Inventory,
        new: &Manifest,
        old: Option<Result<Arc<Manifest>, String>>,
        migrate_host: Option<&str>,
        once: OnceSteps,
        release: Option<&str>,
    ) -> Plan {
        let t = tree("m1");
        let hosts: Vec<HostFacts<'_>> = inv
            .hosts
            .iter()
            .map(|h| HostFacts {
                host: h,
                tree: &t,
                current_manifest: old.clone(),
            })
            .collect();
        let rendered = Rendered {
            units: vec!["shop.service".into()],
            site: None,
            compose: false,
        };
        let inputs = DeployInputs {
            inventory: inv,
            rendered: &rendered,
            artifact: ArtifactFacts {
                sha256: &"cc".repeat(32),
                tar_size: 10_000,
                manifest: Some(new),
            },
            env: false,
            now_unix: NOW,
            waves: None,
            migrate_host,
            release,
            once,
        };
        deploy(&inputs, &hosts)
    }

    fn names(plan: &Plan, host: &str) -> Vec<&'static str> {
        plan.host(host)
            .unwrap()
            .steps
            .iter()
            .map(Step::name)
            .collect()
    }

    #[test]
    fn a_delta_only_when_at_most_three_quarters_is_new() {
        let inv = inventory("");
        let old = Some(Ok(Arc::new(manifest(10, 0))));
        // One file of ten changed: a delta of its content.
        let mut one = manifest(10, 0);
        one.entries
            .insert("f9".into(), manifest(1, 500).entries["f0"].clone());
        let plan = plan_with(&inv, &one, old.clone(), None);
        assert_eq!(
            plan.host("h1").unwrap().steps[0],
            Step::Delta {
                release: plan.release.clone(),
                from: OLD.into(),
                content_bytes: 1000,
            }
        );
        // Eight of ten new: more than three quarters of the tar, the whole artifact, and why.
        let mut most = manifest(10, 0);
        for (i, (_, item)) in most.entries.iter_mut().enumerate().take(8) {
            *item = manifest(1, 700 + i).entries["f0"].clone();
        }
        let plan = plan_with(&inv, &most, old.clone(), None);
        match &plan.host("h2").unwrap().steps[0] {
            Step::Upload { why, fallback, .. } => {
                assert!(
                    why.as_deref()
                        .unwrap()
                        .contains("most of the content is new")
                );
                assert!(!fallback);
            }
            other => panic!("{other:?}"),
        }
        // A manifest that could not be read: a whole upload, said as a fallback.
        let plan = plan_with(&inv, &one, Some(Err("unreadable".into())), None);
        assert!(matches!(
            &plan.host("h1").unwrap().steps[0],
            Step::Upload { why: Some(w), fallback: true, .. } if w == "unreadable"
        ));
        // Deltas off: a plain upload.
        let off = inventory("delta = false\n");
        let plan = plan_with(&off, &one, old, None);
        assert!(matches!(
            &plan.host("h1").unwrap().steps[0],
            Step::Upload {
                why: None,
                fallback: false,
                ..
            }
        ));
    }

    #[test]
    fn hooks_follow_roles_and_once_hooks_the_migrate_host() {
        let inv = inventory(
            "[migrate]\ncommand = \"./migrate\"\n\n[[hooks]]\nat = \"after_switch\"\ncommand = \"warm\"\nroles = [\"web\"]\n\n[[hooks]]\nat = \"before_switch\"\ncommand = \"announce\"\nonce = true\n",
        );
        let m = manifest(3, 0);
        let plan = plan_with(&inv, &m, None, Some("h2"));
        assert_eq!(
            names(&plan, "h1"),
            [
                "upload",
                "stage_units",
                "arm_guard",
                "switch",
                "hook",
                "install_units",
                "restart",
                "confirm"
            ]
        );
        assert_eq!(
            names(&plan, "h2"),
            [
                "upload",
                "stage_units",
                "arm_guard",
                "hook",
                "switch",
                "install_units",
                "restart",
                "confirm"
            ]
        );
        assert_eq!(
            plan.once,
            vec![Step::Migrate {
                command: "./migrate".into(),
                maintenance: false,
            }]
        );
        assert_eq!(plan.migrate_host.as_deref(), Some("h2"));
        // Without a migrate host (none selected), no once steps and no once hooks.
        let plan = plan_with(&inv, &m, None, None);
        assert!(plan.once.is_empty());
        assert!(!names(&plan, "h2").contains(&"hook"));
    }

    #[test]
    fn once_only_stages_and_runs_the_once_steps_and_skip_once_leaves_them_out() {
        let inv = inventory(
            "[migrate]\ncommand = \"./migrate\"\n\n[[hooks]]\nat = \"after_upload\"\ncommand = \"seed\"\nonce = true\n\n[[hooks]]\nat = \"after_switch\"\ncommand = \"announce\"\nonce = true\n",
        );
        let m = manifest(3, 0);
        let id = "20261122T210000Z-cccccccccccc";
        let only = plan_mode(&inv, &m, None, Some("h2"), OnceSteps::Only, Some(id));
        assert_eq!(only.action, "once");
        assert_eq!(only.release, id);
        assert_eq!(names(&only, "h2"), ["upload", "stage_units", "hook"]);
        assert_eq!(only.once.len(), 1);
        let skip = plan_mode(&inv, &m, None, Some("h2"), OnceSteps::Skip, Some(id));
        assert_eq!(skip.action, "deploy");
        assert_eq!(skip.release, id);
        assert!(skip.once.is_empty());
        // The `after_upload` once hook ran with `--once-only`; the `after_switch` one goes
        // with the migrate host's switch.
        assert_eq!(
            names(&skip, "h2"),
            [
                "upload",
                "stage_units",
                "arm_guard",
                "switch",
                "hook",
                "install_units",
                "restart",
                "confirm"
            ]
        );
    }

    #[test]
    fn a_rollback_runs_the_after_switch_and_after_restart_hooks_of_each_host() {
        let inv = inventory(
            "[[systemd]]\nunit = \"shop.service\"\ntemplate = \"shop.service\"\n\n[[hooks]]\nat = \"after_switch\"\ncommand = \"start-app\"\n\n[[hooks]]\nat = \"after_restart\"\ncommand = \"warm\"\nroles = [\"web\"]\n\n[[hooks]]\nat = \"after_restart\"\ncommand = \"announce\"\nonce = true\n\n[[hooks]]\nat = \"before_switch\"\ncommand = \"not-again\"\n",
        );
        let t = tree("m1");
        let rendered = Rendered {
            units: vec!["shop.service".into()],
            site: None,
            compose: false,
        };
        let hosts = [(&inv.hosts[0], &t), (&inv.hosts[1], &t)];
        let target = "20190101T000000Z-cccccccccccc";
        let p = rollback(&inv, &rendered, &hosts, target, None, None);
        let hook = |at, command: &str| Step::Hook {
            at,
            command: command.into(),
        };
        // h1 (web, the first: the `once` host without a `migrate` role anywhere).
        assert_eq!(
            p.hosts[0].steps[..6],
            [
                Step::Switch {
                    to: target.into(),
                    from: Some(OLD.into())
                },
                hook(HookPoint::AfterSwitch, "start-app"),
                Step::InstallUnits {
                    units: vec!["shop.service".into()]
                },
                Step::Restart {
                    unit: "shop.service".into()
                },
                hook(HookPoint::AfterRestart, "warm"),
                hook(HookPoint::AfterRestart, "announce"),
            ]
        );
        // h2: not web, not the once host.
        let h2: Vec<&Step> = p.hosts[1]
            .steps
            .iter()
            .filter(|s| s.name() == "hook")
            .collect();
        assert_eq!(h2, [&hook(HookPoint::AfterSwitch, "start-app")]);
        // What a switch-back of a host that ran them runs again, in the order of a deploy.
        let undos = crate::plan::step::undo_order(&p.hosts[0].steps);
        assert_eq!(
            undos,
            [
                Undo::SwitchBack,
                Undo::AfterSwitchHooks,
                Undo::RestoreUnits,
                Undo::AfterRestartHooks
            ]
        );
        assert_eq!(
            hooks_at(&p.hosts[0], HookPoint::AfterRestart).collect::<Vec<_>>(),
            ["warm", "announce"]
        );
        assert!(
            p.to_string()
                .contains("  switch: hook after_switch: `start-app`\n")
        );
    }

    #[test]
    fn the_json_of_a_step_says_its_phase_and_undo() {
        let inv = inventory("");
        let plan = plan_with(&inv, &manifest(1, 0), None, None);
        let json = serde_json::to_value(plan.host("h1").unwrap()).unwrap();
        let steps = json["steps"].as_array().unwrap();
        assert_eq!(steps[0]["step"], "upload");
        assert_eq!(steps[0]["phase"], "stage");
        assert_eq!(steps[0]["codec"], "zstd");
        assert!(steps[0].get("undo").is_none());
        let switch = steps.iter().find(|s| s["step"] == "switch").unwrap();
        assert_eq!(switch["phase"], "switch");
        assert_eq!(switch["undo"], "switch_back");
        assert_eq!(switch["from"], OLD);
        let restart = steps.iter().find(|s| s["step"] == "restart").unwrap();
        assert_eq!(restart["unit"], "shop.service");
        assert_eq!(restart["undo"], "restore_units");
        // The plan's text is its steps, host by host.
        let text = plan.to_string();
        assert!(text.contains("h1:\n  stage: upload the artifact"), "{text}");
        assert!(text.contains("  switch: restart shop.service\n"), "{text}");
    }
}

#[cfg(test)]
mod blue_green_tests {
    use super::*;
    use crate::plan::Undo;

    const OLD: &str = "20200101T000000Z-aaaaaaaaaaaa";

    const BLUE_GREEN: &str = r#"
[app]
name = "shop"
deploy_to = "/opt/shop"

[[hosts]]
name = "h1"
address = "10.0.0.1"

[artifact]
path = "dist"

[[systemd]]
unit = "shop@.service"
template = "deploy/shop@.service"
ports = [3001, 3002]
drain = "7s"

[[systemd]]
unit = "worker.service"
template = "deploy/worker.service"

[nginx]
site = "shop"
template = "deploy/site.conf"

[[health]]
url = "http://127.0.0.1:{{ port }}/healthz"
timeout = "20s"

[[health]]
url = "http://127.0.0.1/"
timeout = "5s"
"#;

    fn plan(inv: &Inventory, live: Option<u16>) -> Plan {
        let tree = ReleaseTree {
            current: Some(OLD.into()),
            releases: vec![crate::plan::facts::Release {
                id: OLD.into(),
                sha256: Some("bb".repeat(32)),
            }],
            live_port: live,
            ..ReleaseTree::default()
        };
        let hosts = [HostFacts {
            host: &inv.hosts[0],
            tree: &tree,
            current_manifest: None,
        }];
        let rendered = Rendered {
            units: vec!["shop@.service".into(), "worker.service".into()],
            site: Some("shop".into()),
            compose: false,
        };
        deploy(
            &DeployInputs {
                inventory: inv,
                rendered: &rendered,
                artifact: ArtifactFacts {
                    sha256: &"cc".repeat(32),
                    tar_size: 10_000,
                    manifest: None,
                },
                env: false,
                now_unix: 1_795_381_200,
                waves: None,
                migrate_host: None,
                release: None,
                once: OnceSteps::Run,
            },
            &hosts,
        )
    }

    #[test]
    fn the_idle_instance_is_started_checked_then_the_site_points_at_it() {
        let inv = crate::inventory::for_tests(BLUE_GREEN);
        let p = plan(&inv, Some(3001));
        let h = p.host("h1").unwrap();
        let names: Vec<&str> = h.steps.iter().map(Step::name).collect();
        assert_eq!(
            names,
            [
                "upload",
                "stage_units",
                "stage_site",
                "arm_guard",
                "switch",
                "install_units",
                // The worker restarts; the template unit is never restarted by name.
                "restart",
                "start_idle",
                "check_idle",
                "point_site",
                "health",
                "confirm",
                "stop_old",
            ]
        );
        assert!(h.steps.contains(&Step::Restart {
            unit: "worker.service".into()
        }));
        assert!(h.steps.contains(&Step::StageSite {
            site: "shop".into(),
            port: Some(3002)
        }));
        assert!(h.steps.contains(&Step::StartIdle {
            unit: "shop@3002.service".into(),
            port: 3002,
            release: p.release.clone(),
        }));
        assert!(h.steps.contains(&Step::CheckIdle {
            unit: "shop@3002.service".into(),
            port: 3002,
            checks: 1,
        }));
        assert!(h.steps.contains(&Step::PointSite {
            site: "shop".into(),
            port: 3002,
            from: Some(3001),
        }));
        assert_eq!(
            h.steps.last(),
            Some(&Step::StopOld {
                unit: "shop@3001.service".into(),
                port: 3001,
                drain_secs: 7,
            })
        );
        assert_eq!(h.steps.last().unwrap().phase(), Phase::Finish);
        // The guard waits for the idle check and the gate: 2 × 20 s + 5 s + confirm.
        assert_eq!(
            h.guard_delay(),
            Some(inv.rollout.confirm_timeout.as_secs() + 45)
        );
        let mv = h.blue_green().unwrap();
        assert_eq!(
            (mv.unit, mv.port, mv.from),
            ("shop@3002.service", 3002, Some(3001))
        );
        // Undo: the site back at the old instance, then the new one stopped, last.
        let undos = crate::plan::step::undo_order(h.phase(Phase::Switch));
        assert_eq!(&undos[undos.len() - 2..], [Undo::PointBack, Undo::StopIdle]);
        assert!(!undos.contains(&Undo::RestoreSite));
    }

    #[test]
    fn ports_alternate_and_a_first_deploy_stops_nothing() {
        let inv = crate::inventory::for_tests(BLUE_GREEN);
        let port = |p: &Plan| p.hosts[0].blue_green().map(|m| (m.port, m.from));
        assert_eq!(port(&plan(&inv, Some(3002))), Some((3001, Some(3002))));
        let first = plan(&inv, None);
        assert_eq!(port(&first), Some((3001, None)));
        assert!(!first.hosts[0].steps.iter().any(|s| s.name() == "stop_old"));
        // A live port the inventory no longer names: the first port goes live, the old one stops.
        let moved = plan(&inv, Some(4000));
        assert_eq!(port(&moved), Some((3001, Some(4000))));
        assert!(moved.hosts[0].steps.contains(&Step::StopOld {
            unit: "shop@4000.service".into(),
            port: 4000,
            drain_secs: 7,
        }));
        // keep_idle: the old instance is never stopped.
        let keep = crate::inventory::for_tests(
            &BLUE_GREEN.replace("drain = \"7s\"", "drain = \"7s\"\nkeep_idle = true"),
        );
        assert!(
            !plan(&keep, Some(3001)).hosts[0]
                .steps
                .iter()
                .any(|s| s.name() == "stop_old")
        );
    }

    #[test]
    fn a_rollback_makes_the_same_move() {
        let inv = crate::inventory::for_tests(BLUE_GREEN);
        let tree = ReleaseTree {
            current: Some("20200102T000000Z-bbbbbbbbbbbb".into()),
            live_port: Some(3002),
            ..ReleaseTree::default()
        };
        let rendered = Rendered {
            units: vec!["shop@.service".into()],
            site: Some("shop".into()),
            compose: false,
        };
        let p = rollback(&inv, &rendered, &[(&inv.hosts[0], &tree)], OLD, None, None);
        let h = &p.hosts[0];
        assert!(h.steps.contains(&Step::StartIdle {
            unit: "shop@3001.service".into(),
            port: 3001,
            release: OLD.into(),
        }));
        assert!(h.steps.contains(&Step::PointSite {
            site: "shop".into(),
            port: 3001,
            from: Some(3002),
        }));
        assert!(h.steps.iter().any(|s| s.name() == "stop_old"));
    }
}
