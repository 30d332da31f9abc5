//! The summary tables people read at the end of a run (plain and tty renderers share them).

use std::fmt::Write;

use super::report::backup::BackupsReport;
use super::report::check::CheckReport;
use super::report::deploy::{DeployReport, Outcome};
use super::report::exec::ExecReport;
use super::report::history::HistoryReport;
use super::report::lock::LockReport;
use super::report::releases::{ReleaseRow, ReleasesReport};
use super::report::status::StatusReport;
use super::report::unlock::UnlockReport;

fn mark(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "ok",
        Some(false) => "FAIL",
        None => "-",
    }
}

/// A git commit as people read it in a table: 12 digits and the `-dirty` mark; `-` unknown.
fn git_cell(git: Option<&str>) -> String {
    git.map_or_else(|| "-".to_owned(), crate::artifact::git::short)
}

/// Bytes as people read them: `12.3 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let _ = write!(text, "{cell:<w$}  ", w = widths[i]);
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

pub fn check(report: &CheckReport) -> String {
    let rows: Vec<Vec<String>> = report
        .hosts
        .iter()
        .map(|h| {
            let facts = h.facts.as_ref();
            vec![
                h.host.clone(),
                h.address.clone(),
                mark(Some(h.reachable)).to_owned(),
                mark(h.host_key_verified).to_owned(),
                mark(h.authenticated).to_owned(),
                mark(facts.map(|f| f.missing_tools().is_empty())).to_owned(),
                mark(facts.map(|f| f.writable)).to_owned(),
                facts
                    .and_then(|f| f.free_bytes)
                    .map_or_else(|| "-".to_owned(), bytes),
                if h.ok { "ready" } else { "FAILED" }.to_owned(),
            ]
        })
        .collect();
    let mut out = render(
        &[
            "HOST", "ADDRESS", "REACH", "HOSTKEY", "AUTH", "TOOLS", "WRITE", "FREE", "RESULT",
        ],
        &rows,
    );
    for h in &report.hosts {
        if report.verbose {
            for s in &h.connection {
                let _ = writeln!(out, "{}: {} {} ({})", h.host, s.setting, s.value, s.origin);
            }
            if let Some(key) = &h.jump_host_key {
                let _ = writeln!(out, "{}: jump host key {key}", h.host);
            }
            if let Some(key) = &h.host_key {
                let _ = writeln!(out, "{}: host key {key}", h.host);
            }
        }
        for problem in &h.problems {
            let _ = writeln!(out, "{}: {}", h.host, problem);
        }
        if let Some(who) = &h.locked_by {
            let _ = writeln!(out, "{}: deploy lock held by {who}", h.host);
        }
    }
    let failed = report.failed();
    let _ = writeln!(
        out,
        "{} of {} hosts ready{}",
        report.hosts.len() - failed,
        report.hosts.len(),
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        }
    );
    out
}

pub fn exec(report: &ExecReport) -> String {
    let rows: Vec<Vec<String>> = report
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.host.clone(),
                match (h.exit_code, &h.error) {
                    (Some(code), _) => code.to_string(),
                    (None, Some(_)) => "-".to_owned(),
                    (None, None) => "signal".to_owned(),
                },
                if h.ok { "ok" } else { "FAILED" }.to_owned(),
            ]
        })
        .collect();
    let mut out = render(&["HOST", "EXIT", "RESULT"], &rows);
    for h in &report.hosts {
        if let Some(error) = &h.error {
            let _ = writeln!(out, "{}: {}", h.host, error);
        }
    }
    let failed = report.failed();
    let _ = writeln!(
        out,
        "{} of {} hosts succeeded{}",
        report.hosts.len() - failed,
        report.hosts.len(),
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        }
    );
    out
}

pub fn deploy(report: &DeployReport) -> String {
    let rows: Vec<Vec<String>> = report
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.host.clone(),
                h.source.clone().unwrap_or_else(|| "-".to_owned()),
                match (h.bytes_sent, h.artifact_bytes) {
                    (0, _) => "-".to_owned(),
                    (sent, Some(whole)) if sent != whole => {
                        format!("{} of {}", bytes(sent), bytes(whole))
                    }
                    (sent, _) => bytes(sent),
                },
                h.previous.clone().unwrap_or_else(|| "-".to_owned()),
                h.current.clone().unwrap_or_else(|| "-".to_owned()),
                match (h.rolled_back, &h.error, &h.current) {
                    (Some(true), _, _) => "rolled back",
                    (Some(false), _, _) => "ROLLBACK FAILED",
                    (None, None, Some(_)) => "ok",
                    (None, None, None) => "-",
                    (None, Some(_), _) => "FAILED",
                }
                .to_owned(),
            ]
        })
        .collect();
    let mut out = render(
        &["HOST", "ARTIFACT", "SENT", "BEFORE", "NOW", "RESULT"],
        &rows,
    );
    for h in &report.hosts {
        if let Some(why) = &h.delta_fallback {
            let _ = writeln!(out, "{}: {why}; the whole artifact was sent", h.host);
        }
        for warning in &h.warnings {
            let _ = writeln!(out, "{}: warning: {warning}", h.host);
        }
        if let Some(error) = &h.error {
            let _ = writeln!(out, "{}: {}", h.host, error);
        }
    }
    let what = match report.outcome {
        Outcome::Deployed => format!(
            "{} {} to {} hosts",
            if report.action == "rollback" {
                "rolled back"
            } else {
                "deployed"
            },
            report.release.as_deref().unwrap_or("?"),
            report.hosts.len()
        ),
        Outcome::Failed => format!("{} failed", report.action),
        Outcome::Interrupted => format!("{} interrupted", report.action),
        Outcome::Locked => format!("{} refused: locked", report.action),
        Outcome::RolledBack => {
            format!("{} failed and was rolled back", report.action)
        }
        Outcome::RollbackFailed => {
            format!("{} failed and ROLLBACK FAILED", report.action)
        }
    };
    let _ = write!(
        out,
        "{what} in {:.1}s (exit {})",
        report.duration_ms as f64 / 1000.0,
        report.exit_code
    );
    if let Some(m) = &report.message {
        let _ = write!(out, ": {m}");
    }
    out.push('\n');
    out
}

pub fn releases(report: &ReleasesReport) -> String {
    let rows: Vec<Vec<String>> = report
        .releases
        .iter()
        .map(|r| {
            vec![
                r.release.clone(),
                git_cell(r.git.as_deref()),
                r.hosts.join(" "),
                if r.current_on.is_empty() {
                    "-".to_owned()
                } else {
                    r.current_on.join(" ")
                },
                rollback_cell(r),
            ]
        })
        .collect();
    let mut out = render(
        &["RELEASE", "GIT", "ON HOSTS", "CURRENT ON", "ROLLBACK"],
        &rows,
    );
    if report.releases.is_empty() {
        out.push_str("no releases yet\n");
    }
    if report.drift {
        let per_host: Vec<String> = report
            .current
            .iter()
            .map(|(h, c)| format!("{h}: {}", c.as_deref().unwrap_or("(none)")))
            .collect();
        let _ = writeln!(
            out,
            "DRIFT: the hosts run different releases ({})",
            per_host.join(", ")
        );
    }
    for h in &report.unreadable {
        let _ = writeln!(out, "{h}: could not be read");
    }
    out
}

/// Whether a plain `shipit rollback` may go back to the release: `yes`, or why not (per
/// host when the hosts differ).
fn rollback_cell(r: &ReleaseRow) -> String {
    let reasons: std::collections::BTreeSet<String> =
        r.not_candidate.values().map(|w| w.to_string()).collect();
    match (r.rollback_on.is_empty(), reasons.len()) {
        (false, 0) => "yes".to_owned(),
        (true, 1) => format!("no: {}", reasons.into_iter().next().unwrap_or_default()),
        _ => {
            let mut parts: Vec<String> =
                r.rollback_on.iter().map(|h| format!("{h}: yes")).collect();
            parts.extend(r.not_candidate.iter().map(|(h, w)| format!("{h}: no, {w}")));
            parts.join("; ")
        }
    }
}

pub fn history(report: &HistoryReport) -> String {
    let rows: Vec<Vec<String>> = report
        .entries
        .iter()
        .map(|e| {
            let action = match (&e.restored, e.action.as_str(), &e.message) {
                (Some(backup), _, _) => format!("{} (restored {backup})", e.action),
                (None, "lock", Some(why)) => format!("lock {why:?}"),
                _ => e.action.clone(),
            };
            vec![
                e.time.clone(),
                action,
                e.release.clone().unwrap_or_else(|| "-".to_owned()),
                git_cell(e.git.as_deref()),
                e.outcome.clone(),
                format!("{}@{}", e.user, e.machine),
                format!("{:.1}s", e.duration_s),
                e.hosts.join(" "),
            ]
        })
        .collect();
    let mut out = render(
        &[
            "TIME", "ACTION", "RELEASE", "GIT", "OUTCOME", "BY", "TOOK", "HOSTS",
        ],
        &rows,
    );
    if report.entries.is_empty() {
        out.push_str("no history yet\n");
    }
    for h in &report.unreadable {
        let _ = writeln!(out, "{h}: history could not be read");
    }
    out
}

pub fn lock(report: &LockReport) -> String {
    let rows: Vec<Vec<String>> = report
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.host.clone(),
                match (h.locked, h.held, &h.error) {
                    (true, _, _) => "locked",
                    (false, true, _) => "HELD already",
                    (false, false, Some(_)) => "FAILED",
                    (false, false, None) => "not locked",
                }
                .to_owned(),
            ]
        })
        .collect();
    let mut out = render(&["HOST", "LOCK"], &rows);
    for h in &report.hosts {
        if let Some(e) = &h.error {
            let _ = writeln!(out, "{}: {e}", h.host);
        }
    }
    if report.locked {
        let _ = writeln!(
            out,
            "locked: {:?}; deploys, rollbacks, restores, tasks and backups are refused (exit 5) until `shipit unlock {}`",
            report.message, report.stage
        );
    } else {
        out.push_str("nothing was locked\n");
    }
    out
}

pub fn unlock(report: &UnlockReport) -> String {
    let rows: Vec<Vec<String>> = report
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.host.clone(),
                match (&h.owner, h.locked) {
                    (Some(o), _) if o.deliberate() => {
                        format!("{}@{} on purpose since {}", o.user, o.machine, o.started)
                    }
                    (Some(o), _) => {
                        format!("{}@{} pid {} since {}", o.user, o.machine, o.pid, o.started)
                    }
                    (None, true) => "unknown owner".to_owned(),
                    (None, false) => "-".to_owned(),
                },
                if h.removed {
                    "removed"
                } else if h.error.is_some() {
                    "FAILED"
                } else if h.locked {
                    "kept"
                } else {
                    "not locked"
                }
                .to_owned(),
            ]
        })
        .collect();
    let mut out = render(&["HOST", "LOCK HELD BY", "RESULT"], &rows);
    for h in &report.hosts {
        if let Some(e) = &h.error {
            let _ = writeln!(out, "{}: {e}", h.host);
        }
    }
    if report.declined {
        out.push_str("nothing removed\n");
    }
    out
}

pub fn backups(report: &BackupsReport) -> String {
    let rows: Vec<Vec<String>> = report
        .backups
        .iter()
        .map(|b| {
            let dash = || "-".to_owned();
            vec![
                b.time.clone(),
                bytes(b.bytes),
                b.taken_for.clone().unwrap_or_else(dash),
                b.live_release.clone().unwrap_or_else(dash),
                b.name.clone(),
            ]
        })
        .collect();
    let mut out = render(&["TIME", "SIZE", "TAKEN FOR", "LIVE THEN", "FILE"], &rows);
    let _ = writeln!(
        out,
        "{} backups in `{}` on {}",
        report.backups.len(),
        report.dir,
        report.host
    );
    out
}

/// The deploy report for `$GITHUB_STEP_SUMMARY`.
pub fn deploy_markdown(report: &DeployReport) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out = format!(
        "### shipit {} `{}`: {:?} (exit {})\n\n",
        report.action, report.stage, report.outcome, report.exit_code
    );
    if let Some(release) = &report.release {
        let _ = writeln!(out, "Release `{release}`\n");
    }
    out.push_str("| host | before | now | result | error |\n|---|---|---|---|---|\n");
    for h in &report.hosts {
        let result = match (h.rolled_back, &h.error, &h.current) {
            (Some(true), _, _) => "rolled back",
            (Some(false), _, _) => "ROLLBACK FAILED",
            (None, None, Some(_)) => "ok",
            (None, None, None) => "-",
            (None, Some(_), _) => "failed",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            cell(&h.host),
            cell(h.previous.as_deref().unwrap_or("-")),
            cell(h.current.as_deref().unwrap_or("-")),
            result,
            cell(h.error.as_ref().map_or("", |e| e.message.as_str()))
        );
    }
    if let Some(m) = &report.message {
        let _ = writeln!(out, "\n{}", cell(m));
    }
    out.push('\n');
    out
}

pub fn status(report: &StatusReport) -> String {
    let rows: Vec<Vec<String>> = report
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.host.clone(),
                h.current.clone().unwrap_or_else(|| "-".to_owned()),
                git_cell(h.git.as_deref()),
                if h.units.is_empty() {
                    "-".to_owned()
                } else {
                    h.units
                        .iter()
                        .map(|(u, s)| format!("{u}={s}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                },
                match h.healthy {
                    Some(true) => "ok",
                    Some(false) => "FAIL",
                    None => "-",
                }
                .to_owned(),
                if h.locked_by.is_some() { "LOCKED" } else { "-" }.to_owned(),
            ]
        })
        .collect();
    let mut out = render(
        &["HOST", "CURRENT", "GIT", "UNITS", "HEALTH", "LOCK"],
        &rows,
    );
    for h in &report.hosts {
        for text in [&h.error, &h.health_error, &h.locked_by]
            .into_iter()
            .flatten()
        {
            let _ = writeln!(out, "{}: {text}", h.host);
        }
    }
    let currents: std::collections::BTreeSet<_> = report.hosts.iter().map(|h| &h.current).collect();
    if currents.len() > 1 {
        out.push_str("DRIFT: the hosts run different releases\n");
    }
    out
}
