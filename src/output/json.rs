//! `--json`: the final report as one JSON document on stdout; nothing else there.

use std::io::Write;

use super::{Event, Renderer};

pub struct Json;

pub(super) fn print(value: &impl serde::Serialize) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}

impl Renderer for Json {
    fn emit(&self, event: &Event<'_>) {
        match event {
            Event::Done(report) => print(&report.json()),
            Event::Fatal(message) => {
                eprintln!("error: {message}");
                print(&serde_json::json!({ "error": message }));
            }
            Event::Note(text) => eprintln!("{text}"),
            Event::Step { .. }
            | Event::Line { .. }
            | Event::Progress { .. }
            | Event::HostDone { .. } => {}
        }
    }
}
