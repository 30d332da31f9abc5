//! What people and machines see: one stream of [`Event`]s, and renderers that decide how
//! it looks. Humans read stderr; data (`--json`) goes to stdout.
//!
//! - [`tty`]: indicatif bars, one line per host, for a person at a terminal;
//! - [`plain`]: timestamped lines, no ANSI codes, for CI logs and pipes;
//! - [`json`]: the final report as one JSON document on stdout.
//!
//! This is the only module that prints.

pub mod github;
pub mod json;
pub mod plain;
pub mod table;
pub mod tty;

use crate::transport::Stream;

/// The end result of a command: a table for people, a document for machines.
pub trait Report {
    fn human(&self) -> String;
    fn json(&self) -> serde_json::Value;
    /// For `$GITHUB_STEP_SUMMARY`.
    fn markdown(&self) -> String {
        format!("```\n{}```\n", self.human())
    }
}

pub enum Event<'a> {
    /// A host started a step ("connecting", "probing", ...).
    Step { host: &'a str, step: &'a str },
    /// One line of a remote command's output.
    Line {
        host: &'a str,
        stream: Stream,
        line: &'a str,
    },
    /// Bytes of an upload sent so far.
    Progress {
        host: &'a str,
        sent: u64,
        total: u64,
    },
    /// A host finished.
    HostDone {
        host: &'a str,
        ok: bool,
        summary: &'a str,
    },
    /// Something people should read now (a lock holder, an interrupt).
    Note(&'a str),
    /// The command's report.
    Done(&'a dyn Report),
    /// A problem that stops the whole run (printed once, before the exit).
    Fatal(&'a str),
}

pub trait Renderer: Send + Sync {
    fn emit(&self, event: &Event<'_>);
}

/// Which renderer a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Tty,
    Plain,
    Json,
}

pub struct Output {
    renderer: Box<dyn Renderer>,
}

impl Output {
    /// `hosts` are the selected host names, for aligned prefixes and one bar per host.
    /// `github`: running under GitHub Actions, with `$GITHUB_STEP_SUMMARY` if set.
    pub fn new(
        mode: Mode,
        hosts: &[&str],
        verbose: u8,
        github: Option<Option<std::path::PathBuf>>,
    ) -> Output {
        let renderer: Box<dyn Renderer> = match mode {
            Mode::Tty => Box::new(tty::Tty::new(hosts)),
            Mode::Plain => Box::new(plain::Plain::new(hosts, verbose)),
            Mode::Json => Box::new(json::Json),
        };
        let renderer = match github {
            Some(summary) => Box::new(github::Github::new(renderer, mode != Mode::Json, summary)),
            None => renderer,
        };
        Output { renderer }
    }

    pub fn emit(&self, event: Event<'_>) {
        self.renderer.emit(&event);
    }
}

/// Prints an error that ends the run: on stderr for people, and with `--json` also as
/// `{"error": ...}` on stdout so a machine reading stdout always gets a document.
pub fn early_error(message: &str, json: bool) {
    eprintln!("error: {message}");
    if json {
        json::print(&serde_json::json!({ "error": message }));
    }
}
