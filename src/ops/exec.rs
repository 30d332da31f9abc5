//! `shipit exec <stage> -- CMD...`: one command on every selected host in parallel.
//!
//! The words are joined with spaces and run by `sh` on the host, as `ssh host CMD...` does,
//! so pipes and globs work. Output streams line by line, each line prefixed by its host.

use std::sync::Mutex;

use crate::execute::timeout;
use crate::inventory::{Host, Inventory};
use crate::output::report::exec::{ExecReport, HostExec};
use crate::output::{Event, Output};
use crate::shell::Cmd;
use crate::transport::fleet::{self, Connector};
use crate::transport::{ExecRequest, Stream, Transport};

pub async fn run(
    stage: &str,
    words: &[String],
    inventory: &Inventory,
    hosts: &[&Host],
    connector: &Connector,
    out: &Output,
) -> ExecReport {
    let script = words.join(" ");
    let results = fleet::each_host(hosts, inventory.rollout.parallel, |host| {
        exec_host(&script, host, connector, out)
    })
    .await;
    ExecReport {
        stage: stage.to_owned(),
        task: None,
        command: script,
        hosts: results,
    }
}

async fn exec_host(script: &str, host: &Host, connector: &Connector, out: &Output) -> HostExec {
    out.emit(Event::Step {
        host: &host.name,
        step: "connecting",
    });
    let transport = match connector.connect(host).await {
        Ok(t) => t,
        Err(e) => {
            out.emit(Event::HostDone {
                host: &host.name,
                ok: false,
                summary: &crate::error::chain(&e),
            });
            return HostExec::failed(&host.name, crate::error::chain(&e));
        }
    };
    if let Some(step) = crate::transport::fleet::host_key_step(transport.as_ref()) {
        out.emit(Event::Step {
            host: &host.name,
            step: &step,
        });
    }
    out.emit(Event::Step {
        host: &host.name,
        step: "running",
    });
    let cmd = Cmd::user_script(script);
    let result = streamed(
        transport.as_ref(),
        &host.name,
        &cmd,
        timeout::UNBOUNDED,
        out,
    )
    .await;
    transport.close().await;
    result
}

/// Runs `cmd`, its output streamed line by line as the host's, and reports how it ended.
pub async fn streamed(
    transport: &dyn Transport,
    host: &str,
    cmd: &Cmd,
    timeout: std::time::Duration,
    out: &Output,
) -> HostExec {
    let req = ExecRequest::new(cmd, timeout);
    let (result, summary) = run_streamed(transport, host, req, out).await;
    out.emit(Event::HostDone {
        host,
        ok: result.ok,
        summary: &summary,
    });
    result
}

/// [`streamed`] with `stdin`, leaving it to the caller to say when the host is done.
pub async fn streamed_quietly(
    transport: &dyn Transport,
    host: &str,
    req: ExecRequest<'_>,
    out: &Output,
) -> HostExec {
    run_streamed(transport, host, req, out).await.0
}

async fn run_streamed(
    transport: &dyn Transport,
    host: &str,
    req: ExecRequest<'_>,
    out: &Output,
) -> (HostExec, String) {
    let lines = Lines::new(host, out);
    let sink = |stream: Stream, chunk: &[u8]| lines.push(stream, chunk);
    let outcome = transport.exec(req.output(&sink)).await;
    lines.flush();
    match outcome {
        Ok(output) => (
            HostExec {
                host: host.to_owned(),
                ok: output.success(),
                exit_code: match output.exit {
                    crate::transport::Exit::Code(code) => Some(code),
                    _ => None,
                },
                stdout: output.stdout.text(),
                stderr: output.stderr.text(),
                error: None,
            },
            output.exit.to_string(),
        ),
        Err(e) => (
            HostExec::failed(host, crate::error::chain(&e)),
            crate::error::chain(&e),
        ),
    }
}

/// Turns output chunks into whole lines, per stream, for prefixed display.
struct Lines<'a> {
    host: &'a str,
    out: &'a Output,
    partial: Mutex<[Vec<u8>; 2]>,
}

impl<'a> Lines<'a> {
    fn new(host: &'a str, out: &'a Output) -> Self {
        Lines {
            host,
            out,
            partial: Mutex::new([Vec::new(), Vec::new()]),
        }
    }

    fn push(&self, stream: Stream, chunk: &[u8]) {
        let mut partial = self.partial.lock().expect("lock");
        let buf = &mut partial[stream as usize];
        buf.extend_from_slice(chunk);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            self.emit(stream, &line[..line.len() - 1]);
        }
    }

    fn flush(&self) {
        let mut partial = self.partial.lock().expect("lock");
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            let rest = std::mem::take(&mut partial[i]);
            if !rest.is_empty() {
                self.emit(stream, &rest);
            }
        }
    }

    fn emit(&self, stream: Stream, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        self.out.emit(Event::Line {
            host: self.host,
            stream,
            line: text.trim_end_matches('\r'),
        });
    }
}
