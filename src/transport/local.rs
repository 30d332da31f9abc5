//! The local transport: commands run as child processes of shipit, through `/bin/sh -c`,
//! on the deployer's own machine (a CI runner living on the target VM, or the README demo).

use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{BoxFuture, Collector, ExecError, ExecOutput, ExecRequest, Exit, Stdin, Stream};

pub struct LocalTransport;

impl super::Transport for LocalTransport {
    fn exec<'a>(&'a self, req: ExecRequest<'a>) -> BoxFuture<'a, Result<ExecOutput, ExecError>> {
        Box::pin(run(req))
    }

    fn connect_tcp<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<Box<dyn super::Tunnel>, ExecError>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| ExecError::Start {
                    command: format!("connect to {host}:{port}"),
                    reason: e.to_string(),
                })?;
            Ok(Box::new(stream) as Box<dyn super::Tunnel>)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

async fn run(req: ExecRequest<'_>) -> Result<ExecOutput, ExecError> {
    let command = req.cmd.render();
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(&command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout can stop the whole pipeline it started.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ExecError::Start {
            command: command.clone(),
            reason: e.to_string(),
        })?;
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");

    let feed = async move {
        let result = match req.stdin {
            Stdin::Empty => Ok(()),
            Stdin::Bytes(bytes) => stdin.write_all(&bytes).await,
            Stdin::Secret(secret) => stdin.write_all(secret.expose().as_bytes()).await,
            Stdin::Reader(mut reader) => tokio::io::copy(&mut reader, &mut stdin).await.map(drop),
        };
        drop(stdin);
        // A command that exits without reading its stdin is not an error of ours.
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    };
    let mut collector = Collector::new(req.output);
    let drain = async {
        let mut out_buf = vec![0u8; 64 << 10];
        let mut err_buf = vec![0u8; 16 << 10];
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            tokio::select! {
                n = stdout.read(&mut out_buf), if out_open => match n {
                    Ok(0) | Err(_) => out_open = false,
                    Ok(n) => collector.push(Stream::Stdout, &out_buf[..n]),
                },
                n = stderr.read(&mut err_buf), if err_open => match n {
                    Ok(0) | Err(_) => err_open = false,
                    Ok(n) => collector.push(Stream::Stderr, &err_buf[..n]),
                },
            }
        }
    };
    let work = async {
        let (fed, ()) = tokio::join!(feed, drain);
        let status = child.wait().await;
        (fed, status)
    };
    let (fed, status) = match tokio::time::timeout(req.timeout, work).await {
        Ok(done) => done,
        Err(_) => {
            kill_group(pid);
            return Err(ExecError::Timeout {
                command,
                after: req.timeout,
            });
        }
    };
    fed.map_err(|source| ExecError::Stdin {
        command: command.clone(),
        source,
    })?;
    let status = status.map_err(|e| ExecError::Lost {
        command: command.clone(),
        reason: e.to_string(),
    })?;
    use std::os::unix::process::ExitStatusExt;
    let exit = match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code as u32),
        (None, Some(sig)) => Exit::Signal(sig.to_string()),
        (None, None) => Exit::Signal("unknown".to_owned()),
    };
    Ok(collector.finish(exit))
}

fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) else {
        return;
    };
    // Never signal group 0 or 1: that would be ourselves or every process.
    if pid > 1 {
        // SAFETY: killpg has no memory effects; the group is the child's own (process_group(0)).
        unsafe {
            libc::killpg(pid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::shell::{Cmd, Secret};
    use crate::transport::Transport;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn exit_status_and_both_streams() {
        let cmd = Cmd::new("echo")
            .arg("out")
            .and(Cmd::new("echo").arg("err").raw(">&2"))
            .and(Cmd::new("exit").arg("3"));
        let out = rt()
            .block_on(LocalTransport.exec(ExecRequest::new(&cmd, Duration::from_secs(10))))
            .unwrap();
        assert_eq!(out.exit, Exit::Code(3));
        assert_eq!(out.stdout.text(), "out\n");
        assert_eq!(out.stderr.text(), "err\n");
    }

    #[test]
    fn stdin_reaches_the_command() {
        let cmd = Cmd::new("cat");
        let req = ExecRequest::new(&cmd, Duration::from_secs(10))
            .stdin(Stdin::Secret(Secret::new("s3cret\n")));
        let out = rt().block_on(LocalTransport.exec(req)).unwrap();
        assert_eq!(out.stdout.text(), "s3cret\n");
    }

    #[test]
    fn timeout_kills_the_command() {
        let cmd = Cmd::new("sleep").arg("30");
        let started = std::time::Instant::now();
        let err = rt()
            .block_on(LocalTransport.exec(ExecRequest::new(&cmd, Duration::from_millis(300))))
            .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
