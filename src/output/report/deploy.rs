//! The report of `shipit deploy` and `shipit rollback`: the run's outcome, and per host
//! what happened, step by step, with a typed error naming the failed step.

use serde::Serialize;

use super::unlock::LockOwner;
use crate::artifact::Codec;
use crate::error::code;
use crate::execute::RemoteError;
use crate::output::report::backup::BackupFile;
use crate::output::report::plan::KeyDiff;
use crate::output::{Report, table};
use crate::plan::Step;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Deployed,
    Failed,
    Interrupted,
    Locked,
    RolledBack,
    RollbackFailed,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Deployed => code::OK,
            Outcome::Failed | Outcome::Interrupted => code::FAILED,
            Outcome::Locked => code::LOCKED,
            Outcome::RolledBack => code::ROLLED_BACK,
            Outcome::RollbackFailed => code::ROLLBACK_FAILED,
        }
    }

    /// The word history records: a release whose deploy did not succeed is `failed`
    /// (what `rollback` skips); `switched_back` says what became of the hosts.
    pub fn history_word(self) -> &'static str {
        match self {
            Outcome::Deployed => "success",
            Outcome::Failed | Outcome::Locked | Outcome::RolledBack | Outcome::RollbackFailed => {
                "failed"
            }
            Outcome::Interrupted => "interrupted",
        }
    }

    pub fn switched_back(self) -> Option<&'static str> {
        match self {
            Outcome::RolledBack => Some("every switched host was switched back"),
            Outcome::RollbackFailed => Some("switching back FAILED on some hosts"),
            _ => None,
        }
    }
}

/// What happened on one host.
#[derive(Debug, Default, Serialize)]
pub struct HostDeploy {
    pub host: String,
    /// True when the host runs the run's release and nothing failed on it.
    pub ok: bool,
    /// `switched`, `not_switched`, `failed`, `switched_back` or `switch_back_failed`.
    pub outcome: &'static str,
    /// `uploaded` (the whole artifact), `delta` (only content the host's current release
    /// lacks), `reused` (verified copy of an identical release) or `present`.
    pub source: Option<String>,
    /// Bytes streamed to this host (compressed): the whole artifact, or the delta.
    pub bytes_sent: u64,
    /// The whole artifact for this host, to compare with `bytes_sent`: what a whole upload
    /// sends (compressed as for this host, with the manifest) when this run compressed it,
    /// else its uncompressed size (every host took a delta or a copy).
    pub artifact_bytes: Option<u64>,
    /// Why a delta upload was given up and the whole artifact sent instead.
    pub delta_fallback: Option<String>,
    /// How a whole upload to this host is compressed (known once its tree is read).
    #[serde(skip)]
    pub codec: Option<Codec>,
    /// `current` before the run.
    pub previous: Option<String>,
    /// `current` after the run.
    pub current: Option<String>,
    /// The port the Nginx site points at after the run, for a blue-green unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_port: Option<u16>,
    pub pruned: Vec<String>,
    pub locked_by: Option<LockOwner>,
    /// Env file keys this deploy added, removed or changed (names only); `None`: unchanged.
    pub env_keys: Option<KeyDiff>,
    /// Whether the host was switched back after a failure, and how that went.
    pub rolled_back: Option<bool>,
    /// How long staging took on this host (upload, extract, configuration), in ms.
    pub stage_ms: Option<u64>,
    /// How long switching took on this host (env, `current`, restarts, health), in ms.
    pub switch_ms: Option<u64>,
    /// The host's steps, as the plan listed them, with how each went.
    pub steps: Vec<StepReport>,
    /// What failed on this host: the step, in words, and the exit status of its command.
    pub error: Option<RemoteError>,
    /// What went wrong without failing the host: a hook run again while switching back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// How one step of the plan went.
#[derive(Debug, Serialize)]
pub struct StepReport {
    /// The step's stable name (as `shipit plan --json` lists it).
    pub step: &'static str,
    pub status: StepStatus,
    /// How long it took, once it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// What the step decided while running (a delta given up for a whole upload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// It ran and succeeded.
    Ok,
    /// It had nothing to do (an env file that did not change).
    Skipped,
    Failed,
    /// It never started (an earlier step or another host failed, or the run stopped).
    NotRun,
}

impl StepReport {
    pub fn planned(step: &Step) -> StepReport {
        StepReport {
            step: step.name(),
            status: StepStatus::NotRun,
            duration_ms: None,
            outcome: None,
        }
    }
}

/// A backup restored by the run.
#[derive(Clone, Debug, Serialize)]
pub struct RestoredBackup {
    pub host: String,
    /// Its file name in `backup.dir`, as `shipit backups` lists it.
    pub backup: String,
    pub sha256: String,
    /// The release that was live when it was taken, when recorded.
    pub live_release: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DeployReport {
    /// `deploy` or `rollback`.
    pub action: String,
    pub stage: String,
    pub release: Option<String>,
    pub artifact_sha256: Option<String>,
    /// The whole artifact: what a whole upload sends (zstd, with the manifest) when this run
    /// compressed it, else its uncompressed size.
    pub artifact_bytes: Option<u64>,
    pub outcome: Outcome,
    pub exit_code: u8,
    pub duration_ms: u64,
    pub message: Option<String>,
    /// The backup made before migrations, if `[backup]` is set.
    pub backup: Option<BackupFile>,
    /// The backup a `rollback --restore-db` or `restore` restored (set once it is restored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored: Option<RestoredBackup>,
    /// The host that ran the migrations, if `[migrate]` is set and they ran.
    pub migrated_on: Option<String>,
    /// The steps run once, on the migrate host (backup, migrate), with how each went.
    pub once: Vec<StepReport>,
    pub hosts: Vec<HostDeploy>,
}

impl Report for DeployReport {
    fn human(&self) -> String {
        table::deploy(self)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }

    fn markdown(&self) -> String {
        table::deploy_markdown(self)
    }
}
