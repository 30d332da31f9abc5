//! `--json`: the final report as one JSON document on stdout; nothing else there. People
//! (a CI log) still read on stderr the plain lines they would read without `--json`: each
//! host's steps and failures, the output of migrations and hooks (prefixed by host), the
//! summary.

use std::io::Write;

use super::plain::Plain;
use super::{Event, Renderer};

pub struct Json {
    /// The plain renderer, all on stderr.
    human: Plain,
}

impl Json {
    pub fn new(hosts: &[&str], verbose: u8) -> Json {
        Json {
            human: Plain::new(hosts, verbose).on_stderr(),
        }
    }
}

pub(super) fn print(value: &impl serde::Serialize) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}

impl Renderer for Json {
    fn emit(&self, event: &Event<'_>) {
        self.human.emit(event);
        match event {
            Event::Done(report) => print(&report.json()),
            Event::Fatal(message) => print(&serde_json::json!({ "error": message })),
            Event::Step { .. }
            | Event::Line { .. }
            | Event::Progress { .. }
            | Event::HostDone { .. }
            | Event::Note(_) => {}
        }
    }
}
