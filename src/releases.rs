//! `shipit releases`: each release id and the hosts that hold it, and where it is current,
//! so drift between hosts is visible at a glance.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::facts;
use crate::fleet::Conn;
use crate::output::{Event, Output, Report, table};
use crate::transport::ExecRequest;

#[derive(Debug, Serialize)]
pub struct ReleaseRow {
    pub release: String,
    pub hosts: Vec<String>,
    pub current_on: Vec<String>,
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

pub async fn show(
    stage: &str,
    conns: &[Conn<'_>],
    deploy_to: &str,
    out: &Output,
) -> ReleasesReport {
    let cmd = facts::releases(deploy_to);
    let reads = conns.iter().map(|c| {
        let cmd = &cmd;
        async move {
            out.emit(Event::Step {
                host: &c.host.name,
                step: "reading releases",
            });
            let r = c
                .transport
                .exec(ExecRequest::new(cmd, Duration::from_secs(60)))
                .await;
            (c.host.name.clone(), r)
        }
    });
    let mut rows: BTreeMap<String, ReleaseRow> = BTreeMap::new();
    let mut current = BTreeMap::new();
    let mut unreadable = Vec::new();
    for (host, result) in futures::future::join_all(reads).await {
        let tree = match result {
            Ok(o) if o.success() => facts::parse_releases(&o.stdout.text()),
            _ => {
                unreadable.push(host);
                continue;
            }
        };
        for r in &tree.releases {
            let row = rows.entry(r.id.clone()).or_insert_with(|| ReleaseRow {
                release: r.id.clone(),
                hosts: Vec::new(),
                current_on: Vec::new(),
            });
            row.hosts.push(host.clone());
            if tree.current.as_deref() == Some(r.id.as_str()) {
                row.current_on.push(host.clone());
            }
        }
        current.insert(host, tree.current);
    }
    let distinct: std::collections::BTreeSet<_> = current.values().collect();
    ReleasesReport {
        stage: stage.to_owned(),
        releases: rows.into_values().rev().collect(),
        drift: distinct.len() > 1,
        current,
        unreadable,
    }
}
