//! Under GitHub Actions (`GITHUB_ACTIONS=true`): the run's renderer plus workflow commands —
//! each failed host's output inside `::group::`, an `::error title=…::` annotation per failed
//! host, and a Markdown summary appended to `$GITHUB_STEP_SUMMARY`.
//!
//! Workflow commands go to stdout, so with `--json` (stdout is the report) only the step
//! summary is written.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use super::{Event, Renderer};

pub struct Github {
    pub inner: Box<dyn Renderer>,
    /// Print workflow commands on stdout (not with `--json`).
    pub commands: bool,
    pub summary: Option<PathBuf>,
    lines: Mutex<BTreeMap<String, Vec<String>>>,
}

impl Github {
    pub fn new(inner: Box<dyn Renderer>, commands: bool, summary: Option<PathBuf>) -> Github {
        Github {
            inner,
            commands,
            summary,
            lines: Mutex::new(BTreeMap::new()),
        }
    }
}

/// Escapes data for a workflow command (`%`, CR, LF).
fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a property value (also `:` and `,`).
fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

impl Renderer for Github {
    fn emit(&self, event: &Event<'_>) {
        self.inner.emit(event);
        match event {
            Event::Line { host, line, .. } if self.commands => {
                let mut lines = self.lines.lock().expect("lock");
                lines
                    .entry((*host).to_owned())
                    .or_default()
                    .push((*line).to_owned());
            }
            Event::HostDone {
                host,
                ok: false,
                summary,
            } if self.commands => {
                let captured = self
                    .lines
                    .lock()
                    .expect("lock")
                    .remove(*host)
                    .unwrap_or_default();
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "::group::{host}: failed");
                for line in captured {
                    let _ = writeln!(out, "{line}");
                }
                let _ = writeln!(out, "{summary}");
                let _ = writeln!(out, "::endgroup::");
                let _ = writeln!(
                    out,
                    "::error title={}::{}",
                    escape_property(&format!("shipit: {host} failed")),
                    escape_data(summary)
                );
            }
            Event::Fatal(message) if self.commands => {
                let _ = writeln!(
                    std::io::stdout().lock(),
                    "::error title=shipit::{}",
                    escape_data(message)
                );
            }
            Event::Done(report) => {
                if let Some(path) = &self.summary {
                    let appended = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .and_then(|mut f| f.write_all(report.markdown().as_bytes()));
                    if let Err(e) = appended {
                        eprintln!(
                            "warning: cannot append to GITHUB_STEP_SUMMARY `{}`: {e}",
                            path.display()
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_command_escaping() {
        assert_eq!(escape_data("50% done\nnext"), "50%25 done%0Anext");
        assert_eq!(escape_property("a: b, c"), "a%3A b%2C c");
    }
}
