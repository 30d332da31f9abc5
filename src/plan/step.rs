//! The steps of a run, as data: what `shipit plan` shows and what the deploy executes, one
//! list per host in the order they run, each with its parameters (never a secret value) and
//! the undo that puts back what it changed.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::artifact::Codec;
use crate::inventory::HookPoint;

/// One thing a run does on one host (or, for [`Phase::Once`], on the migrate host).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// `releases/<id>` is already complete on the host (a re-run of the same deploy).
    Present { release: String },
    /// Copy a release that holds the same artifact, verified on the host against the
    /// artifact's manifest; one that does not verify is replaced by a whole upload (the
    /// step's recorded outcome).
    Reuse { release: String, from: String },
    /// Send only the content the host's current release lacks; the host builds the release
    /// from `from` and verifies it against the new manifest, or the whole artifact is sent
    /// instead (the step's recorded outcome).
    Delta {
        release: String,
        from: String,
        /// Bytes of file content the current release lacks (before compression).
        content_bytes: u64,
    },
    /// Stream the whole artifact.
    Upload {
        release: String,
        #[serde(serialize_with = "codec_name")]
        codec: Codec,
        /// The artifact's size before compression.
        bytes: u64,
        /// Why not less (a delta or a copy), when something less was thinkable.
        #[serde(skip_serializing_if = "Option::is_none")]
        why: Option<String>,
        /// Whether `why` is a fallback (a delta or copy that was possible and failed) rather
        /// than a choice (most of the content changed).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        fallback: bool,
    },
    /// Write the env file as this run's staged copy (0600) when its content, mode or owner
    /// differs from the host's.
    StageEnv { path: String },
    /// Render the units into the release and `systemd-analyze verify` them.
    StageUnits { units: Vec<String> },
    /// Render the Nginx site into the release and test it with `nginx -t` (for a blue-green
    /// unit, pointing at `port`).
    StageSite {
        site: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
    },
    /// Render the compose file into the release, check it (and pull its images).
    StageCompose { project: String, pull: bool },
    /// A user hook, in the new release with the env file loaded.
    Hook {
        #[serde(serialize_with = "hook_point_name")]
        at: HookPoint,
        command: String,
    },
    /// A verified database backup (once, on the migrate host).
    Backup { dir: String, keep: u32 },
    /// Restore a database backup (once, on the migrate host), checked against the sha256
    /// recorded when it was made; meanwhile the app's units (`stop`) are stopped on every
    /// host (the switch starts them again, on the release it switches to; a failed restore
    /// starts them at once) and, with `maintenance`, every site answers 503.
    Restore {
        backup: String,
        sha256: String,
        /// The release that was live when it was taken, when recorded.
        live: Option<String>,
        stop: Vec<String>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        maintenance: bool,
    },
    /// The migrations (once, on the migrate host); with `maintenance`, every host's site
    /// answers 503 meanwhile.
    Migrate {
        command: String,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        maintenance: bool,
    },
    /// Arm the dead-deployer guard: it switches the host back unless confirmed in time.
    ArmGuard { delay_secs: u64 },
    /// Install the env file staged by this run (skipped when nothing was staged).
    InstallEnv { path: String },
    /// Point `current` at the release (atomic rename).
    Switch { to: String, from: Option<String> },
    /// Install the units that changed, `daemon-reload`, enable.
    InstallUnits { units: Vec<String> },
    /// Restart a unit and check it is active.
    Restart { unit: String },
    /// Install the Nginx site, test and reload.
    InstallSite { site: String },
    /// `compose up` the release's stack.
    ComposeUp { project: String },
    /// Blue-green: (re)start the idle instance, which runs the release; an instance that
    /// already runs it (a rollback while the old instance still runs) is kept (the step's
    /// recorded outcome).
    StartIdle {
        unit: String,
        port: u16,
        release: String,
    },
    /// Blue-green: the health checks on the idle instance's own port, before any request
    /// reaches it.
    CheckIdle {
        unit: String,
        port: u16,
        checks: usize,
    },
    /// Blue-green: the Nginx site now proxies to `port` (tested, graceful reload: requests
    /// in flight finish on the old instance).
    PointSite {
        site: String,
        port: u16,
        /// The port Nginx pointed at before (none on a first blue-green deploy).
        from: Option<u16>,
    },
    /// Blue-green: after the drain (counted from the switch of the site), stop the instance
    /// that served before.
    StopOld {
        unit: String,
        port: u16,
        drain_secs: u64,
    },
    /// Poll the `[health]` checks until they pass.
    Health { checks: usize },
    /// Confirm the switch: disarm the guard, record the release as passed.
    Confirm { release: String },
    /// Record the release as passed here (a rollback, which arms no guard).
    MarkPassed { release: String },
    /// Remove old releases and stale partial directories.
    Prune { releases: Vec<String> },
    /// Record a release the fleet turned away from as no rollback target.
    Forget { release: String },
}

/// When a step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Every host, before anything is switched anywhere.
    Stage,
    /// Once, on the migrate host, after every host staged.
    Once,
    /// Wave by wave; a failure here switches the host back.
    Switch,
    /// After the whole fleet switched.
    Finish,
}

/// What puts back a step's change, in the order [`undo_order`] gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Undo {
    /// Put the previous env file back.
    RestoreEnv,
    /// Point `current` at the previous release again (or remove it on a first deploy).
    SwitchBack,
    /// Run the `after_switch` hooks again, for the previous release (none on a first
    /// deploy): what such a hook started must run the code `current` points at again.
    AfterSwitchHooks,
    /// Put the previous units back and restart them.
    RestoreUnits,
    /// Bring the previous release's compose stack back.
    RestoreCompose,
    /// Put the previous Nginx site back and reload.
    RestoreSite,
    /// Blue-green: make sure the old instance runs, point the site back at it, then stop
    /// the new instance after the drain.
    PointBack,
    /// Blue-green: stop the instance this run started.
    StopIdle,
    /// Run the `after_restart` hooks again, for the previous release, once it serves again.
    AfterRestartHooks,
}

impl Step {
    /// The stable name of the step, as `--json` reports it.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Present { .. } => "present",
            Step::Reuse { .. } => "reuse",
            Step::Delta { .. } => "delta",
            Step::Upload { .. } => "upload",
            Step::StageEnv { .. } => "stage_env",
            Step::StageUnits { .. } => "stage_units",
            Step::StageSite { .. } => "stage_site",
            Step::StageCompose { .. } => "stage_compose",
            Step::Hook { .. } => "hook",
            Step::Backup { .. } => "backup",
            Step::Migrate { .. } => "migrate",
            Step::Restore { .. } => "restore",
            Step::ArmGuard { .. } => "arm_guard",
            Step::InstallEnv { .. } => "install_env",
            Step::Switch { .. } => "switch",
            Step::InstallUnits { .. } => "install_units",
            Step::Restart { .. } => "restart",
            Step::InstallSite { .. } => "install_site",
            Step::ComposeUp { .. } => "compose_up",
            Step::StartIdle { .. } => "start_idle",
            Step::CheckIdle { .. } => "check_idle",
            Step::PointSite { .. } => "point_site",
            Step::StopOld { .. } => "stop_old",
            Step::Health { .. } => "health",
            Step::Confirm { .. } => "confirm",
            Step::MarkPassed { .. } => "mark_passed",
            Step::Prune { .. } => "prune",
            Step::Forget { .. } => "forget",
        }
    }

    pub fn phase(&self) -> Phase {
        match self {
            Step::Present { .. }
            | Step::Reuse { .. }
            | Step::Delta { .. }
            | Step::Upload { .. }
            | Step::StageEnv { .. }
            | Step::StageUnits { .. }
            | Step::StageSite { .. }
            | Step::StageCompose { .. }
            | Step::Hook {
                at: HookPoint::AfterUpload,
                ..
            } => Phase::Stage,
            Step::Backup { .. } | Step::Migrate { .. } | Step::Restore { .. } => Phase::Once,
            Step::Prune { .. } | Step::Forget { .. } | Step::StopOld { .. } => Phase::Finish,
            _ => Phase::Switch,
        }
    }

    /// What puts back this step's change, if it changes what the host serves.
    pub fn undo(&self) -> Option<Undo> {
        match self {
            Step::InstallEnv { .. } => Some(Undo::RestoreEnv),
            Step::Switch { .. } => Some(Undo::SwitchBack),
            Step::InstallUnits { .. } | Step::Restart { .. } => Some(Undo::RestoreUnits),
            Step::ComposeUp { .. } => Some(Undo::RestoreCompose),
            Step::InstallSite { .. } => Some(Undo::RestoreSite),
            Step::PointSite { .. } => Some(Undo::PointBack),
            Step::StartIdle { .. } => Some(Undo::StopIdle),
            Step::Hook {
                at: HookPoint::AfterSwitch,
                ..
            } => Some(Undo::AfterSwitchHooks),
            Step::Hook {
                at: HookPoint::AfterRestart,
                ..
            } => Some(Undo::AfterRestartHooks),
            _ => None,
        }
    }

    /// Whether this step brings the release directory into being.
    pub fn is_source(&self) -> bool {
        matches!(
            self,
            Step::Present { .. } | Step::Reuse { .. } | Step::Delta { .. } | Step::Upload { .. }
        )
    }
}

/// The undos of `steps`, each once, in the order a host is put back: env file, `current`,
/// the `after_switch` hooks (for the previous release), units, compose stack, site (pointed
/// back at the old instance), the new instance stopped, the `after_restart` hooks: the
/// order a deploy of the previous release would run them in.
pub fn undo_order<'a>(steps: impl IntoIterator<Item = &'a Step>) -> Vec<Undo> {
    let mut undos: Vec<Undo> = steps.into_iter().filter_map(Step::undo).collect();
    undos.sort();
    undos.dedup();
    undos
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Present { release } => write!(f, "release {release} is already there"),
            Step::Reuse { release, from } => {
                write!(f, "copy {from} as {release} (same artifact, verified)")
            }
            Step::Delta {
                release,
                from,
                content_bytes,
            } => write!(
                f,
                "upload what {from} lacks ({}) as {release}",
                crate::output::table::bytes(*content_bytes)
            ),
            Step::Upload {
                release,
                codec,
                bytes,
                why,
                ..
            } => {
                write!(
                    f,
                    "upload the artifact ({} before {}) as {release}",
                    crate::output::table::bytes(*bytes),
                    codec_str(*codec)
                )?;
                match why {
                    Some(why) => write!(f, ": {why}"),
                    None => Ok(()),
                }
            }
            Step::StageEnv { path } => write!(f, "stage the env file `{path}`"),
            Step::StageUnits { units } => write!(f, "stage and verify {}", units.join(" ")),
            Step::StageSite { site, port: None } => write!(f, "stage and test nginx site {site}"),
            Step::StageSite {
                site,
                port: Some(port),
            } => write!(f, "stage and test nginx site {site} (to port {port})"),
            Step::StageCompose { project, pull } => write!(
                f,
                "stage the compose file of `{project}`{}",
                if *pull { " and pull its images" } else { "" }
            ),
            Step::Hook { at, command } => {
                write!(f, "hook {}: `{command}`", hook_point_str(*at))
            }
            Step::Backup { dir, keep } => {
                write!(f, "back up the database into `{dir}` (keep {keep})")
            }
            Step::Restore {
                backup,
                stop,
                maintenance,
                ..
            } => {
                write!(f, "restore the database from `{backup}` (sha256 checked)")?;
                if !stop.is_empty() {
                    write!(f, "; {} stopped on every host meanwhile", stop.join(" "))?;
                }
                if *maintenance {
                    write!(f, "; every site answers 503 meanwhile")?;
                }
                Ok(())
            }
            Step::Migrate {
                command,
                maintenance: false,
            } => write!(f, "migrate: `{command}`"),
            Step::Migrate {
                command,
                maintenance: true,
            } => write!(f, "migrate: `{command}` (every site answers 503 meanwhile)"),
            Step::ArmGuard { delay_secs } => {
                write!(f, "arm the dead-deployer guard ({delay_secs} s)")
            }
            Step::InstallEnv { path } => write!(f, "install the env file `{path}` if it changed"),
            Step::Switch { to, from } => write!(
                f,
                "switch current {} -> {to}",
                from.as_deref().unwrap_or("(none)")
            ),
            Step::InstallUnits { units } => write!(f, "install {}", units.join(" ")),
            Step::Restart { unit } => write!(f, "restart {unit}"),
            Step::InstallSite { site } => write!(f, "install nginx site {site} and reload"),
            Step::ComposeUp { project } => write!(f, "compose up `{project}`"),
            Step::StartIdle {
                unit,
                port,
                release,
            } => write!(f, "start {unit} (port {port}) on {release}"),
            Step::CheckIdle { unit, port, checks } => write!(
                f,
                "check {unit} on port {port} ({checks} checks) before it takes a request"
            ),
            Step::PointSite { site, port, from } => match from {
                Some(from) => write!(f, "point nginx site {site} at port {port} (from {from})"),
                None => write!(f, "point nginx site {site} at port {port}"),
            },
            Step::StopOld {
                unit, drain_secs, ..
            } => write!(f, "stop {unit} after a drain of {drain_secs} s"),
            Step::Health { checks } => write!(f, "health gate ({checks} checks)"),
            Step::Confirm { release } => write!(f, "confirm {release}"),
            Step::MarkPassed { release } => write!(f, "record {release} as passed"),
            Step::Prune { releases } => write!(f, "remove {}", releases.join(" ")),
            Step::Forget { release } => write!(f, "record {release} as rolled back from"),
        }
    }
}

/// Serializes steps as `--json` shows them: each step's name and parameters, with when it
/// runs (`phase`) and, for a step that changes what the host serves, what puts it back
/// (`undo`).
pub fn serialize_steps<S: Serializer>(steps: &[Step], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::{Error, SerializeSeq};
    let mut seq = s.serialize_seq(Some(steps.len()))?;
    for step in steps {
        let mut value = serde_json::to_value(step).map_err(S::Error::custom)?;
        if let Some(map) = value.as_object_mut() {
            map.insert(
                "phase".to_owned(),
                serde_json::to_value(step.phase()).map_err(S::Error::custom)?,
            );
            if let Some(undo) = step.undo() {
                map.insert(
                    "undo".to_owned(),
                    serde_json::to_value(undo).map_err(S::Error::custom)?,
                );
            }
        }
        seq.serialize_element(&value)?;
    }
    seq.end()
}

pub fn codec_str(codec: Codec) -> &'static str {
    match codec {
        Codec::Zstd => "zstd",
        Codec::Gzip => "gzip",
    }
}

fn codec_name<S: Serializer>(codec: &Codec, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(codec_str(*codec))
}

pub fn hook_point_str(point: HookPoint) -> &'static str {
    match point {
        HookPoint::AfterUpload => "after_upload",
        HookPoint::BeforeSwitch => "before_switch",
        HookPoint::AfterSwitch => "after_switch",
        HookPoint::AfterRestart => "after_restart",
    }
}

fn hook_point_name<S: Serializer>(point: &HookPoint, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(hook_point_str(*point))
}
