//! `shipit releases`: each release id and the hosts that hold it, where it is current, and
//! whether it is a default rollback target (and on which host why not), so drift between
//! hosts is visible at a glance. Also what a rollback needs to know per host: the releases
//! that went live there and passed their health gate.

use std::collections::{BTreeMap, BTreeSet};

use crate::commands;
use crate::execute::{self, RemoteError, timeout};
use crate::output::report::history::Record;
use crate::output::report::releases::{ReleaseRow, ReleasesReport};
use crate::output::{Event, Output};
use crate::plan::{self, facts};
use crate::transport::fleet::Conn;

/// The releases that went live on `host` and passed its health gate, from the output of
/// [`commands::passed::read`]: its records, and the successful deploys and rollbacks that
/// history names for this host (releases deployed before the records existed), less the
/// releases recorded as rejected since.
pub fn parse_passed(host: &str, stdout: &str) -> BTreeSet<String> {
    let mut passed = BTreeSet::new();
    let mut rejected = BTreeSet::new();
    for line in stdout.lines() {
        if let Some(id) = line.strip_prefix("passed ") {
            passed.insert(id.to_owned());
        } else if let Some(id) = line.strip_prefix("rejected ") {
            rejected.insert(id.to_owned());
        } else if let Some(json) = line.strip_prefix("history ")
            && let Ok(e) = serde_json::from_str::<Record>(json)
            && matches!(e.action.as_str(), "deploy" | "rollback")
            && e.outcome == "success"
            && e.hosts.iter().any(|h| h == host)
            && let Some(release) = e.release
        {
            passed.insert(release);
        }
    }
    // The fleet turned away from these after they passed: history's success is older.
    passed.retain(|id| !rejected.contains(id));
    passed
}

/// Reads, per host, the releases that passed there ([`parse_passed`]). A host whose record
/// or history cannot be read is an error, never an empty record.
pub async fn read_passed(
    conns: &[Conn<'_>],
    deploy_to: &str,
) -> Vec<Result<BTreeSet<String>, RemoteError>> {
    let cmd = commands::passed::read(deploy_to);
    let what = format!("reading which releases passed (`{deploy_to}/.shipit/passed`, history)");
    let runs = conns.iter().map(|c| {
        let (cmd, what) = (&cmd, &what);
        async move {
            let o = execute::run(c, "facts", what, cmd, timeout::SHORT).await?;
            Ok(parse_passed(&c.host.name, &o.stdout.text()))
        }
    });
    futures::future::join_all(runs).await
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
            let r = execute::run(c, "facts", "reading releases", cmd, timeout::SHORT).await;
            (c.host.name.clone(), r)
        }
    });
    let (trees, passed) = futures::future::join(
        futures::future::join_all(reads),
        read_passed(conns, deploy_to),
    )
    .await;
    let mut rows: BTreeMap<String, ReleaseRow> = BTreeMap::new();
    let mut current = BTreeMap::new();
    let mut unreadable = Vec::new();
    for ((host, result), passed) in trees.into_iter().zip(passed) {
        let (tree, passed) = match (result, passed) {
            (Ok(o), Ok(passed)) => (facts::parse_releases(&o.stdout.text()), passed),
            _ => {
                unreadable.push(host);
                continue;
            }
        };
        for r in &tree.releases {
            let row = rows.entry(r.id.clone()).or_insert_with(|| ReleaseRow {
                release: r.id.clone(),
                git: None,
                hosts: Vec::new(),
                current_on: Vec::new(),
                rollback_on: Vec::new(),
                not_candidate: BTreeMap::new(),
            });
            if row.git.is_none() {
                row.git = tree.git.get(&r.id).cloned();
            }
            row.hosts.push(host.clone());
            if tree.current.as_deref() == Some(r.id.as_str()) {
                row.current_on.push(host.clone());
            }
            match plan::candidacy(&tree, &passed, &r.id) {
                Ok(()) => row.rollback_on.push(host.clone()),
                Err(why) => {
                    row.not_candidate.insert(host.clone(), why);
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passed_releases_come_from_records_and_successes_naming_the_host() {
        let line = |action: &str, outcome: &str, release: &str, hosts: &[&str]| {
            serde_json::to_string(&Record {
                action: action.into(),
                outcome: outcome.into(),
                release: Some(release.into()),
                hosts: hosts.iter().map(|h| h.to_string()).collect(),
                ..Default::default()
            })
            .unwrap()
        };
        let text = [
            "passed r5".to_owned(),
            format!("history {}", line("deploy", "success", "r1", &["h1", "h2"])),
            format!("history {}", line("rollback", "success", "r2", &["h1"])),
            format!("history {}", line("deploy", "success", "r3", &["h2"])),
            format!("history {}", line("deploy", "failed", "r4", &["h1"])),
            format!("history {}", line("task", "success", "r6", &["h1"])),
            "history not json".to_owned(),
        ]
        .join("\n");
        let passed: Vec<String> = parse_passed("h1", &text).into_iter().collect();
        assert_eq!(passed, ["r1", "r2", "r5"]);
    }
}
