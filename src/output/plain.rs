//! Plain lines on stderr for CI logs and pipes: timestamped, no ANSI codes. Remote stdout
//! lines of `exec` go to stdout (prefixed by host), so they can be piped on, except under
//! `--json` ([`Plain::on_stderr`]), where stdout is the report's alone.

use std::io::Write;

use super::{Event, Renderer, table};
use crate::transport::Stream;

pub struct Plain {
    width: usize,
    verbose: u8,
    /// Remote stdout lines go to stderr too.
    all_on_stderr: bool,
}

impl Plain {
    pub fn new(hosts: &[&str], verbose: u8) -> Plain {
        Plain {
            width: hosts.iter().map(|h| h.len()).max().unwrap_or(0),
            verbose,
            all_on_stderr: false,
        }
    }

    /// The same lines, every one of them on stderr (remote stdout lines too).
    pub fn on_stderr(mut self) -> Plain {
        self.all_on_stderr = true;
        self
    }
}

fn stamp() -> String {
    crate::plan::rfc3339(crate::clock::now_unix())
}

impl Renderer for Plain {
    fn emit(&self, event: &Event<'_>) {
        let w = self.width;
        match event {
            Event::Step { host, step } => {
                if self.verbose > 0 {
                    eprintln!("{} {host:<w$} {step}", stamp());
                }
            }
            Event::Line { host, stream, line } => match stream {
                Stream::Stdout if self.all_on_stderr => eprintln!("{host:<w$} | {line}"),
                Stream::Stdout => {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{host:<w$} | {line}");
                }
                Stream::Stderr => eprintln!("{host:<w$} ! {line}"),
            },
            Event::HostDone { host, ok, summary } => {
                let word = if *ok { "ok" } else { "FAILED" };
                eprintln!("{} {host:<w$} {word}: {summary}", stamp());
            }
            Event::Progress {
                host,
                sent,
                total,
                artifact,
                delta,
            } => {
                if self.verbose > 0 {
                    let delta = if *delta {
                        format!(
                            " (changes only; the artifact is {})",
                            table::bytes(*artifact)
                        )
                    } else {
                        format!(" (the artifact is {})", table::bytes(*artifact))
                    };
                    eprintln!(
                        "{} {host:<w$} sent {} of {}{delta}",
                        stamp(),
                        table::bytes(*sent),
                        table::bytes(*total)
                    );
                }
            }
            Event::Note(text) => eprintln!("{} {text}", stamp()),
            Event::Done(report) => eprint!("{}", report.human()),
            Event::Fatal(message) => eprintln!("error: {message}"),
        }
    }
}
