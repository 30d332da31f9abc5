//! A scripted [`Transport`] for unit tests of the orchestration: it records every command
//! it is given (its rendered text, the host, and how many stdin bytes it read), answers
//! exit 0 by default, and fails the first command whose text contains a given marker on a
//! given host with a given exit code.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::shell::Cmd;
use crate::transport::{
    BoxFuture, ExecError, ExecOutput, ExecRequest, Exit, Stdin, Tail, Transport, Tunnel,
};

/// One command a host received.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub host: String,
    pub cmd: String,
    /// Bytes read from its stdin (an upload's stream is read to its end).
    pub stdin: usize,
    /// Its stdin as text, when it was given bytes (a guard's script, a file written); empty
    /// for a stream or a secret.
    pub stdin_text: String,
}

/// A scripted answer: the first command on `host` whose text contains `marker`.
struct Rule {
    host: String,
    marker: String,
    exit: u32,
    stdout: String,
    /// Answered once, then forgotten; otherwise every matching command gets it.
    once: bool,
}

/// What every fake connection of a test shares: the log of calls in the order they were
/// made (across hosts) and the scripted answers.
#[derive(Clone, Default)]
pub(crate) struct Script {
    calls: Arc<Mutex<Vec<Call>>>,
    rules: Arc<Mutex<Vec<Rule>>>,
}

impl Script {
    /// The first command on `host` whose text contains `marker` exits `code`.
    pub fn fail(&self, host: &str, marker: &str, code: u32) -> &Self {
        self.rules.lock().expect("lock").push(Rule {
            host: host.to_owned(),
            marker: marker.to_owned(),
            exit: code,
            stdout: String::new(),
            once: true,
        });
        self
    }

    /// Every command on `host` whose text contains `marker` prints `stdout` and exits 0.
    pub fn answer(&self, host: &str, marker: &str, stdout: &str) -> &Self {
        self.rules.lock().expect("lock").push(Rule {
            host: host.to_owned(),
            marker: marker.to_owned(),
            exit: 0,
            stdout: stdout.to_owned(),
            once: false,
        });
        self
    }

    /// A connection to `host` that answers from this script.
    pub fn transport(&self, host: &str) -> Box<dyn Transport> {
        Box::new(Fake {
            host: host.to_owned(),
            script: self.clone(),
        })
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("lock").clone()
    }

    /// The commands `host` received, in order.
    pub fn commands(&self, host: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.host == host)
            .map(|c| c.cmd)
            .collect()
    }

    fn answer_for(&self, host: &str, cmd: &str) -> (u32, String) {
        let mut rules = self.rules.lock().expect("lock");
        let Some(i) = rules
            .iter()
            .position(|r| r.host == host && cmd.contains(&r.marker))
        else {
            return (0, String::new());
        };
        let rule = &rules[i];
        let answer = (rule.exit, rule.stdout.clone());
        if rule.once {
            rules.remove(i);
        }
        answer
    }
}

struct Fake {
    host: String,
    script: Script,
}

async fn drain(stdin: Stdin) -> std::io::Result<(usize, String)> {
    Ok(match stdin {
        Stdin::Empty => (0, String::new()),
        Stdin::Bytes(b) => (b.len(), String::from_utf8_lossy(&b).into_owned()),
        Stdin::Secret(s) => (s.expose().len(), String::new()),
        Stdin::Reader(mut r) => (read_all(&mut r).await?, String::new()),
    })
}

async fn read_all(r: &mut (dyn AsyncRead + Send + Unpin)) -> std::io::Result<usize> {
    let mut sink = Vec::new();
    r.read_to_end(&mut sink).await
}

impl Transport for Fake {
    fn exec<'a>(&'a self, req: ExecRequest<'a>) -> BoxFuture<'a, Result<ExecOutput, ExecError>> {
        Box::pin(async move {
            let cmd = req.cmd.render();
            let (stdin, stdin_text) =
                drain(req.stdin).await.map_err(|source| ExecError::Stdin {
                    command: cmd.clone(),
                    source,
                })?;
            self.script.calls.lock().expect("lock").push(Call {
                host: self.host.clone(),
                cmd: cmd.clone(),
                stdin,
                stdin_text,
            });
            let (code, text) = self.script.answer_for(&self.host, &cmd);
            let mut stdout = Tail::new(1 << 20);
            stdout.push(text.as_bytes());
            if let Some(sink) = req.output {
                sink(crate::transport::Stream::Stdout, text.as_bytes());
            }
            let mut stderr = Tail::new(1 << 16);
            if code != 0 {
                stderr.push(b"scripted failure\n");
            }
            Ok(ExecOutput {
                exit: Exit::Code(code),
                stdout,
                stderr,
            })
        })
    }

    fn connect_tcp<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<Box<dyn Tunnel>, ExecError>> {
        Box::pin(async move {
            Err(ExecError::Start {
                command: format!("tcp {host}:{port}"),
                reason: "the fake transport has no tunnels".to_owned(),
            })
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The rendered text of `cmd`, for comparing with [`Call::cmd`].
pub(crate) fn text(cmd: &Cmd) -> String {
    cmd.render()
}
