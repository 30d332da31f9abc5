//! The report of `shipit plan`: the plan's steps per host, with what the deploy would
//! change (env keys by name, unit and site diffs).

use std::fmt::Write as _;

use serde::Serialize;

use crate::output::{Report, table};
use crate::plan::Step;

/// Which keys a new env file adds, removes and changes compared with the one on the host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KeyDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl KeyDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub stage: String,
    pub release: String,
    pub artifact_sha256: String,
    /// Size of the artifact's tar (uncompressed).
    pub artifact_bytes: u64,
    pub waves: Vec<Vec<String>>,
    /// How many failed hosts `max_fail` tolerates before no further wave starts.
    pub max_fail: usize,
    pub backup: Option<String>,
    pub migrate: Option<String>,
    /// Where backup, migrations and `once` hooks run.
    pub migrate_host: String,
    /// The steps run once, on the migrate host, before any host switches.
    #[serde(serialize_with = "crate::plan::step::serialize_steps")]
    pub once: Vec<Step>,
    pub hosts: Vec<HostPreview>,
}

#[derive(Debug, Default, Serialize)]
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
    /// Every step the deploy runs on this host, in order (what `deploy --json` reports).
    #[serde(serialize_with = "crate::plan::step::serialize_steps")]
    pub steps: Vec<Step>,
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
            let _ = writeln!(out, "  steps:");
            let first_switch = h
                .steps
                .iter()
                .position(|s| s.phase() == crate::plan::Phase::Switch);
            for (i, step) in h.steps.iter().enumerate() {
                if Some(i) == first_switch && self.migrate_host == h.host {
                    for once in &self.once {
                        let _ = writeln!(out, "    {} (once): {once}", once.name());
                    }
                }
                let _ = writeln!(out, "    {}: {step}", step.name());
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
