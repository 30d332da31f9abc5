//! `shipit releases`' report: each release, the hosts that hold it, where it is current and
//! where a rollback may go back to it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::output::{Report, table};
use crate::plan::NotCandidate;

#[derive(Debug, Serialize)]
pub struct ReleaseRow {
    pub release: String,
    /// The git commit it was built from, as its REVISION records it (`<sha>`, or
    /// `<sha>-dirty` when the working tree had uncommitted changes); `None` when unknown.
    pub git: Option<String>,
    pub hosts: Vec<String>,
    pub current_on: Vec<String>,
    /// The hosts where a plain `shipit rollback` may go back to it.
    pub rollback_on: Vec<String>,
    /// The other hosts that hold it, and why it is not a rollback target there.
    pub not_candidate: BTreeMap<String, NotCandidate>,
}

#[derive(Debug, Serialize)]
pub struct ReleasesReport {
    pub stage: String,
    /// Newest first.
    pub releases: Vec<ReleaseRow>,
    /// `current` per host (`None`: nothing deployed yet).
    pub current: BTreeMap<String, Option<String>>,
    /// True when the hosts' `current` differ.
    pub drift: bool,
    pub unreadable: Vec<String>,
}

impl Report for ReleasesReport {
    fn human(&self) -> String {
        table::releases(self)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }
}
