//! A line of a host's `.shipit/history.jsonl`, and `shipit history`'s report: the fleet's
//! lines merged, newest first.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::output::{Report, table};

/// One line of history.jsonl.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When the run started, RFC 3339 UTC.
    pub time: String,
    /// When it ended: history sorts by this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// `deploy`, `rollback`, `restore`, `guard`, `task`, `backup`, `lock` or `unlock`.
    pub action: String,
    #[serde(default)]
    pub release: Option<String>,
    #[serde(default)]
    pub artifact_sha256: Option<String>,
    /// The git commit of `release` (`<sha>`, or `<sha>-dirty` when the working tree had
    /// uncommitted changes), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<String>,
    /// `success`, `failed` or `interrupted` (and `reverted` for the guard's own line).
    pub outcome: String,
    pub user: String,
    pub machine: String,
    pub command: String,
    pub duration_s: f64,
    #[serde(default)]
    pub ci_url: Option<String>,
    /// The run's token: the same on every host the run touched.
    pub run: String,
    /// Every host of the run.
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Per host, the port the Nginx site of a blue-green unit points at after the run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub live_ports: BTreeMap<String, u16>,
    /// The database backup the run restored (`rollback --restore-db`, `restore`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<String>,
    /// For a failed deploy whose switched hosts were put back: how that went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_back: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct HistoryReport {
    pub stage: String,
    pub entries: Vec<Record>,
    /// Hosts whose history could not be read.
    pub unreadable: Vec<String>,
}

impl Report for HistoryReport {
    fn human(&self) -> String {
        table::history(self)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }
}
