//! For a person at a terminal: one indicatif line per host showing its current step, then
//! the summary table. Remote output lines print above the bars.

use std::collections::HashMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::{Event, Renderer, table};
use crate::transport::Stream;

pub struct Tty {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    width: usize,
    /// When each host's upload started, for its rate.
    uploads: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

impl Tty {
    pub fn new(hosts: &[&str]) -> Tty {
        let multi = MultiProgress::new();
        let width = hosts.iter().map(|h| h.len()).max().unwrap_or(0);
        let style =
            ProgressStyle::with_template("{spinner} {prefix} {msg}").expect("static template");
        let bars = hosts
            .iter()
            .map(|h| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(format!("{h:<width$}"));
                bar.set_message("waiting");
                bar.enable_steady_tick(Duration::from_millis(120));
                (h.to_string(), bar)
            })
            .collect();
        Tty {
            multi,
            bars,
            width,
            uploads: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn finish_all(&self) {
        for bar in self.bars.values() {
            if !bar.is_finished() {
                bar.finish();
            }
        }
    }
}

impl Renderer for Tty {
    fn emit(&self, event: &Event<'_>) {
        let w = self.width;
        match event {
            Event::Step { host, step } => {
                if let Some(bar) = self.bars.get(*host) {
                    bar.set_message(step.to_string());
                }
            }
            Event::Line { host, stream, line } => {
                // suspend() also prints when the bars are hidden.
                self.multi.suspend(|| match stream {
                    Stream::Stdout => println!("{host:<w$} | {line}"),
                    Stream::Stderr => eprintln!("{host:<w$} ! {line}"),
                });
            }
            Event::HostDone { host, ok, summary } => {
                if let Some(bar) = self.bars.get(*host) {
                    let word = if *ok { "✓" } else { "✗" };
                    bar.finish_with_message(format!("{word} {summary}"));
                }
            }
            Event::Progress {
                host,
                sent,
                total,
                artifact,
                delta,
            } => {
                let started = *self
                    .uploads
                    .lock()
                    .expect("lock")
                    .entry((*host).to_owned())
                    .or_insert_with(std::time::Instant::now);
                let secs = started.elapsed().as_secs_f64().max(0.001);
                if let Some(bar) = self.bars.get(*host) {
                    let what = if *delta { "changes" } else { "artifact" };
                    bar.set_message(format!(
                        "uploading {what} {} / {} (artifact {}, {}/s)",
                        table::bytes(*sent),
                        table::bytes(*total),
                        table::bytes(*artifact),
                        table::bytes((*sent as f64 / secs) as u64)
                    ));
                }
            }
            Event::Note(text) => self.multi.suspend(|| eprintln!("{text}")),
            Event::Done(report) => {
                self.finish_all();
                self.multi.suspend(|| eprint!("{}", report.human()));
            }
            Event::Fatal(message) => {
                self.finish_all();
                self.multi.suspend(|| eprintln!("error: {message}"));
            }
        }
    }
}
