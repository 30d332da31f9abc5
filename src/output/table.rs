//! The summary tables people read at the end of a run (plain and tty renderers share them).

use std::fmt::Write;

use crate::check::CheckReport;
use crate::exec::ExecReport;

fn mark(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "ok",
        Some(false) => "FAIL",
        None => "-",
    }
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
        for problem in &h.problems {
            let _ = writeln!(out, "{}: {}", h.host, problem);
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
