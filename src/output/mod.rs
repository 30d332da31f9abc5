//! What people and machines see: one stream of [`Event`]s, and renderers that decide how
//! it looks. Humans read stderr; data (`--json`) goes to stdout.
//!
//! - [`tty`]: indicatif bars, one line per host, for a person at a terminal;
//! - [`plain`]: timestamped lines, no ANSI codes, for CI logs and pipes;
//! - [`json`]: the final report as one JSON document on stdout.
//!
//! Under CI, wrappers add the CI's own markup: [`github`] (groups, annotations, the step
//! summary) and [`gitlab`] (a collapsible section per host).
//!
//! The reports themselves are data in [`report`], built by the commands; `output` never
//! imports a command module. This is the only module that prints.

pub mod github;
pub mod gitlab;
pub mod json;
pub mod plain;
pub mod redact;
pub mod report;
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
    /// Bytes of an upload sent so far, of `total`; `artifact` is the artifact's size
    /// (uncompressed), `delta` whether only changes are sent.
    Progress {
        host: &'a str,
        sent: u64,
        total: u64,
        artifact: u64,
        delta: bool,
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
    redactor: redact::Redactor,
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
            Mode::Json => Box::new(json::Json::new(hosts, verbose)),
        };
        let renderer = match github {
            Some(summary) => Box::new(github::Github::new(renderer, mode != Mode::Json, summary)),
            None => renderer,
        };
        Output {
            renderer,
            redactor: redact::Redactor::default(),
        }
    }

    /// Under GitLab CI, with the plain renderer: each host's output lines in a collapsible
    /// section of the job log. `hosts` as for [`Output::new`].
    pub fn gitlab_sections(mut self, hosts: &[&str]) -> Output {
        self.renderer = Box::new(gitlab::Gitlab::new(self.renderer, hosts));
        self
    }

    /// Redacts these values from everything printed from now on.
    pub fn redacting(self, secrets: impl IntoIterator<Item = String>) -> Output {
        self.redacting_with(redact::Redactor::new(secrets))
    }

    /// Redacts what `redactor` knows from everything printed from now on.
    pub fn redacting_with(mut self, redactor: redact::Redactor) -> Output {
        self.redactor = redactor;
        self
    }

    /// `report` as `--json` prints it: its JSON with every secret value known redacted.
    pub fn redacted_json(&self, report: &dyn Report) -> serde_json::Value {
        let redacted = redact::Redacted {
            inner: report,
            redactor: &self.redactor,
        };
        redacted.json()
    }

    pub fn emit(&self, event: Event<'_>) {
        let r = &self.redactor;
        match event {
            Event::Step { host, step } => self.renderer.emit(&Event::Step {
                host,
                step: &r.apply(step),
            }),
            Event::Line { host, stream, line } => self.renderer.emit(&Event::Line {
                host,
                stream,
                line: &r.apply(line),
            }),
            Event::HostDone { host, ok, summary } => self.renderer.emit(&Event::HostDone {
                host,
                ok,
                summary: &r.apply(summary),
            }),
            Event::Note(text) => self.renderer.emit(&Event::Note(&r.apply(text))),
            Event::Fatal(text) => self.renderer.emit(&Event::Fatal(&r.apply(text))),
            Event::Done(report) => self.renderer.emit(&Event::Done(&redact::Redacted {
                inner: report,
                redactor: r,
            })),
            other @ Event::Progress { .. } => self.renderer.emit(&other),
        }
    }
}

/// Writes a generated document (a completion script, a manual page) to stdout as it is.
pub fn document(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

/// Writes what an interactive session's host wrote (`shipit shell`) to the local terminal
/// as it comes, byte for byte: no prefix, no redaction (the person typing sees their own
/// session, as with `ssh`).
pub fn terminal(stream: Stream, bytes: &[u8]) {
    use std::io::Write;
    let _ = match stream {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes).and_then(|()| out.flush())
        }
        Stream::Stderr => {
            let mut err = std::io::stderr().lock();
            err.write_all(bytes).and_then(|()| err.flush())
        }
    };
}

/// Prints an error that ends the run: on stderr for people, and with `--json` also as
/// `{"error": ...}` on stdout so a machine reading stdout always gets a document.
pub fn early_error(message: &str, json: bool) {
    eprintln!("error: {message}");
    if json {
        json::print(&serde_json::json!({ "error": message }));
    }
}
