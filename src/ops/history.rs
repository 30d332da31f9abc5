//! Deploy history: one JSON line per deploy, rollback or unlock in each host's
//! `.shipit/history.jsonl`, and `shipit history`, which merges the fleet's lines into one
//! list, newest first (a run that touched many hosts is one row).

use std::collections::BTreeMap;

use crate::commands;
use crate::execute::{self, timeout};
use crate::output::redact::Redactor;
use crate::output::report::history::HistoryReport;
pub use crate::output::report::history::Record;
use crate::output::{Event, Output};
use crate::transport::fleet::Conn;
use crate::transport::{ExecRequest, Stdin};

/// `entry` as the line stored on hosts: every secret the run knows redacted, as in what
/// it prints (a failed step's stderr can carry one, and `shipit history` may later run
/// without the secrets to redact it).
pub fn line(entry: &Record, redactor: &Redactor) -> String {
    let mut value = serde_json::to_value(entry).expect("plain data serializes");
    redactor.apply_json(&mut value);
    value.to_string()
}

/// Appends `entry` (redacted) on every connected host; returns the hosts where that failed.
pub async fn append(
    conns: &[Conn<'_>],
    deploy_to: &str,
    entry: &Record,
    redactor: &Redactor,
) -> Vec<String> {
    let cmd = commands::history::append(deploy_to);
    send_line(conns.iter(), &cmd, entry, redactor, "recording the history").await
}

/// [`append`], then the run's lock released, in one command per host
/// ([`commands::history::append_and_release`]), with `discard` run between them (the
/// lock is released whether the append worked or not); returns the hosts where the append
/// failed.
pub async fn append_and_release(
    conns: &[&Conn<'_>],
    deploy_to: &str,
    entry: &Record,
    redactor: &Redactor,
    token: &str,
    discard: Option<&crate::shell::Cmd>,
) -> Vec<String> {
    let cmd = commands::history::append_and_release(deploy_to, token, discard);
    let what = "recording the history and unlocking";
    send_line(conns.iter().copied(), &cmd, entry, redactor, what).await
}

/// Runs `cmd` on every host at once with `entry`'s line on stdin; returns the hosts where
/// it failed.
async fn send_line<'a, 'h: 'a>(
    conns: impl Iterator<Item = &'a Conn<'h>>,
    cmd: &crate::shell::Cmd,
    entry: &Record,
    redactor: &Redactor,
    what: &str,
) -> Vec<String> {
    let mut line = line(entry, redactor);
    line.push('\n');
    let runs = conns.map(|c| {
        let req =
            ExecRequest::new(cmd, timeout::SHORT).stdin(Stdin::Bytes(line.clone().into_bytes()));
        async move {
            execute::exec(c, "history", what, req)
                .await
                .err()
                .map(|e| e.host)
        }
    });
    futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Reads and merges the history of every host: one row per run and action, newest first.
pub fn merge(per_host: &[(String, String)]) -> Vec<Record> {
    // One row per run and action, whichever hosts wrote it and when each finished.
    let mut runs: BTreeMap<(String, String), Record> = BTreeMap::new();
    for (_, text) in per_host {
        for line in text.lines() {
            let Ok(entry) = serde_json::from_str::<Record>(line) else {
                continue;
            };
            let key = (entry.run.clone(), entry.action.clone());
            match runs.get_mut(&key) {
                Some(known) => {
                    for h in &entry.hosts {
                        if !known.hosts.contains(h) {
                            known.hosts.push(h.clone());
                        }
                    }
                    if entry.finished > known.finished {
                        known.finished = entry.finished;
                    }
                }
                None => {
                    runs.insert(key, entry);
                }
            }
        }
    }
    let mut entries: Vec<Record> = runs.into_values().collect();
    let when = |e: &Record| instant(e.finished.as_deref().unwrap_or(&e.time));
    entries.sort_by_key(|e| std::cmp::Reverse(when(e)));
    entries
}

/// An RFC 3339 UTC time as a key that sorts by instant: a guard's shell writes whole
/// seconds (`…:05Z`), shipit writes milliseconds (`…:05.120Z`), and as text `Z` sorts after
/// `.`.
fn instant(time: &str) -> String {
    match time.strip_suffix('Z') {
        Some(secs) if !secs.contains('.') => format!("{secs}.000Z"),
        _ => time.to_owned(),
    }
}

/// `shipit history`: the merged history of the connected hosts.
pub async fn show(stage: &str, conns: &[Conn<'_>], deploy_to: &str, out: &Output) -> HistoryReport {
    let cmd = commands::history::read(deploy_to, 500);
    let reads = conns.iter().map(|c| {
        let cmd = &cmd;
        async move {
            out.emit(Event::Step {
                host: &c.host.name,
                step: "reading history",
            });
            let result =
                execute::run(c, "history", "reading the history", cmd, timeout::SHORT).await;
            (c.host.name.clone(), result)
        }
    });
    let mut texts = Vec::new();
    let mut unreadable = Vec::new();
    for (host, result) in futures::future::join_all(reads).await {
        match result {
            Ok(o) => texts.push((host, o.stdout.text())),
            Err(_) => unreadable.push(host),
        }
    }
    HistoryReport {
        stage: stage.to_owned(),
        entries: merge(&texts),
        unreadable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(time: &str, run: &str, host: &str) -> String {
        serde_json::to_string(&Record {
            time: time.into(),
            action: "deploy".into(),
            run: run.into(),
            hosts: vec![host.into()],
            outcome: "success".into(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn entries_sort_by_when_they_happened_whatever_the_precision() {
        let text = [
            entry("2026-01-01T00:00:05.500Z", "late", "h1"),
            entry("2026-01-01T00:00:05Z", "guard", "h1"),
            entry("2026-01-01T00:00:04.900Z", "early", "h1"),
        ]
        .join("\n");
        let merged = merge(&[("h1".into(), text)]);
        let runs: Vec<&str> = merged.iter().map(|e| e.run.as_str()).collect();
        assert_eq!(runs, ["late", "guard", "early"]);
    }

    #[test]
    fn stored_lines_are_redacted() {
        let r = Redactor::new(["hunter2-secret".to_owned()]);
        let e = Record {
            message: Some("migration failed: password hunter2-secret rejected".into()),
            ..Default::default()
        };
        let stored = line(&e, &r);
        assert!(!stored.contains("hunter2"), "{stored}");
        assert!(stored.contains("[REDACTED]"), "{stored}");
    }

    #[test]
    fn runs_merge_across_hosts_newest_first() {
        let h1 = format!(
            "{}\n{}\nnot json\n",
            entry("2026-01-01T00:00:00Z", "a", "h1"),
            entry("2026-01-02T00:00:00Z", "b", "h1")
        );
        let h2 = format!("{}\n", entry("2026-01-01T00:00:00Z", "a", "h2"));
        let merged = merge(&[("h1".into(), h1), ("h2".into(), h2)]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].run, "b");
        assert_eq!(merged[1].hosts, vec!["h1", "h2"]);
    }
}
