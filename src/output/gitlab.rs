//! Under GitLab CI (`GITLAB_CI=true`), plain output only: each host's remote output lines
//! in a collapsible section of the job log, printed when the host finishes — collapsed for
//! a host that succeeded, open for one that failed. Hosts run at once, and GitLab's sections
//! nest but cannot interleave, so a host's lines wait for its end instead of streaming
//! mixed with the others'. Steps (`-v`), progress and results still stream through the run's
//! renderer, so the log shows the deploy moving.
//!
//! A section is `\e[0Ksection_start:<unix seconds>:<name>[collapsed=true]\r\e[0K<header>`,
//! its lines, then `\e[0Ksection_end:<unix seconds>:<name>\r\e[0K`, all on stdout (where the
//! plain renderer prints remote stdout), so the markers and the lines keep their order. The
//! start time is the host's first event, so GitLab shows how long the host took.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;

use super::{Event, Renderer};
use crate::transport::Stream;

pub struct Gitlab {
    inner: Box<dyn Renderer>,
    /// The widest host name, for the same `host | line` prefixes as the plain output.
    width: usize,
    pending: Mutex<BTreeMap<String, Pending>>,
}

/// A host's output not printed yet.
struct Pending {
    started: u64,
    lines: Vec<(Stream, String)>,
}

impl Gitlab {
    pub fn new(inner: Box<dyn Renderer>, hosts: &[&str]) -> Gitlab {
        Gitlab {
            inner,
            width: hosts.iter().map(|h| h.len()).max().unwrap_or(0),
            pending: Mutex::new(BTreeMap::new()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Pending>> {
        // A panic while printing must not lose every other host's output.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks when `host` started (so its section's duration covers its whole run), and keeps
    /// `line` for its section.
    fn seen(&self, host: &str, line: Option<(Stream, &str)>) {
        let mut pending = self.pending();
        let p = pending.entry(host.to_owned()).or_insert_with(|| Pending {
            started: crate::clock::now_unix(),
            lines: Vec::new(),
        });
        if let Some((stream, line)) = line {
            p.lines.push((stream, line.to_owned()));
        }
    }

    /// Prints `host`'s lines in a section (nothing when it printed none).
    fn print(&self, host: &str, pending: Pending, collapsed: bool) {
        if pending.lines.is_empty() {
            return;
        }
        let text = section(
            host,
            self.width,
            &pending,
            crate::clock::now_unix(),
            collapsed,
        );
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    /// Prints every host's lines still waiting (hosts that did not finish: open sections).
    fn flush(&self) {
        let rest = std::mem::take(&mut *self.pending());
        for (host, pending) in rest {
            self.print(&host, pending, false);
        }
    }
}

/// A section name for `host`: GitLab allows letters, digits, `_`, `.` and `-`; anything
/// else becomes `_`.
fn section_name(host: &str) -> String {
    let safe: String = host
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '.' | '-' => c,
            _ => '_',
        })
        .collect();
    format!("shipit_host_{safe}")
}

/// The header's text is shown on the section's one line: no control characters.
fn header_text(host: &str, lines: usize) -> String {
    let host: String = host
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    let plural = if lines == 1 { "" } else { "s" };
    format!("{host}: output ({lines} line{plural})")
}

fn section(host: &str, width: usize, pending: &Pending, ended: u64, collapsed: bool) -> String {
    let name = section_name(host);
    let option = if collapsed { "[collapsed=true]" } else { "" };
    let mut text = format!(
        "\x1b[0Ksection_start:{}:{name}{option}\r\x1b[0K{}\n",
        pending.started,
        header_text(host, pending.lines.len())
    );
    for (stream, line) in &pending.lines {
        let mark = match stream {
            Stream::Stdout => '|',
            Stream::Stderr => '!',
        };
        text.push_str(&format!("{host:<width$} {mark} {line}\n"));
    }
    text.push_str(&format!("\x1b[0Ksection_end:{ended}:{name}\r\x1b[0K\n"));
    text
}

impl Renderer for Gitlab {
    fn emit(&self, event: &Event<'_>) {
        match event {
            Event::Step { host, .. } | Event::Progress { host, .. } => {
                self.seen(host, None);
                self.inner.emit(event);
            }
            Event::Line { host, stream, line } => self.seen(host, Some((*stream, line))),
            Event::HostDone { host, ok, .. } => {
                let pending = self.pending().remove(*host);
                if let Some(pending) = pending {
                    self.print(host, pending, *ok);
                }
                self.inner.emit(event);
            }
            Event::Done(_) | Event::Fatal(_) => {
                self.flush();
                self.inner.emit(event);
            }
            Event::Note(_) => self.inner.emit(event),
        }
    }
}

impl Drop for Gitlab {
    /// A run that ends without a report (an early error) still shows what hosts printed.
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_names_keep_only_what_gitlab_allows() {
        assert_eq!(
            section_name("web-1.example.com"),
            "shipit_host_web-1.example.com"
        );
        assert_eq!(section_name("db_2"), "shipit_host_db_2");
        assert_eq!(section_name("ops@box:22"), "shipit_host_ops_box_22");
        assert_eq!(section_name("a b\r\n"), "shipit_host_a_b__");
        assert_eq!(section_name("hôte"), "shipit_host_h_te");
    }

    #[test]
    fn a_section_wraps_the_host_lines() {
        let pending = Pending {
            started: 100,
            lines: vec![
                (Stream::Stdout, "hello".to_owned()),
                (Stream::Stderr, "warn".to_owned()),
            ],
        };
        assert_eq!(
            section("h1", 4, &pending, 107, true),
            "\x1b[0Ksection_start:100:shipit_host_h1[collapsed=true]\r\x1b[0Kh1: output (2 lines)\n\
             h1   | hello\n\
             h1   ! warn\n\
             \x1b[0Ksection_end:107:shipit_host_h1\r\x1b[0K\n"
        );
        let open = section("h1", 2, &pending, 107, false);
        assert!(open.starts_with("\x1b[0Ksection_start:100:shipit_host_h1\r"));
    }

    #[test]
    fn headers_have_no_control_characters() {
        assert_eq!(header_text("a\rb", 1), "a?b: output (1 line)");
    }
}
