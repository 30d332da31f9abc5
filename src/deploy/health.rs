//! The health gate: after a host restarts, poll `[health]` until it passes or its timeout
//! ends. A URL is fetched from the host's side through the host's connection (a
//! direct-tcpip channel over SSH), so it needs no public port and no curl on the host; a
//! command runs in the current release with the env file loaded and must exit 0.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::execute::{self, RemoteError, timeout};
use crate::inventory::{Health, HealthCheck};
use crate::shell::Cmd;
use crate::transport::Transport;
use crate::transport::fleet::Conn;

/// The plan step a failed check belongs to.
const STEP: &str = "health";

/// Largest response read (status line, headers and the start of the body).
const MAX_RESPONSE: usize = 64 << 10;

/// One attempt's result, kept for the failure message.
#[derive(Debug)]
enum Attempt {
    Pass,
    Fail(String),
}

/// The checks as made while the blue-green instance on `port` serves: a check of
/// `{{ port }}` is made on `port`; with no port known, such checks are left out.
pub fn at_port(checks: &[Health], port: Option<u16>) -> Vec<Health> {
    checks
        .iter()
        .filter(|h| port.is_some() || !h.check.on_live_port())
        .map(|h| Health {
            check: h.check.at_port(port),
            ..h.clone()
        })
        .collect()
}

/// Every check in order, each polled until it passes or its own timeout ends.
pub async fn wait_all(
    conn: &Conn<'_>,
    checks: &[Health],
    deploy_to: &str,
    env_path: Option<&str>,
) -> Result<(), RemoteError> {
    for (i, health) in checks.iter().enumerate() {
        wait(conn, health, deploy_to, env_path).await.map_err(|e| {
            let which = match (&health.check, checks.len()) {
                (_, 1) => return e,
                (HealthCheck::Url { url, .. }, n) => format!("check {} of {n}: `{url}`", i + 1),
                (HealthCheck::Command(_), n) => format!("check {} of {n}: a command", i + 1),
            };
            let message = format!("{} ({which})", e.message);
            e.saying(message)
        })?;
    }
    Ok(())
}

/// Polls until healthy. Errors say what the last attempt saw.
async fn wait(
    conn: &Conn<'_>,
    health: &Health,
    deploy_to: &str,
    env_path: Option<&str>,
) -> Result<(), RemoteError> {
    let deadline = Instant::now() + health.timeout;
    let mut last;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt_limit = left.clamp(Duration::from_secs(1), Duration::from_secs(10));
        last = match tokio::time::timeout(attempt_limit, attempt(conn, health, deploy_to, env_path))
            .await
        {
            Ok(a) => a,
            Err(_) => Attempt::Fail(format!(
                "no answer within {}",
                humantime::format_duration(attempt_limit)
            )),
        };
        match &last {
            Attempt::Pass => return Ok(()),
            Attempt::Fail(_) if Instant::now() + health.interval >= deadline => break,
            Attempt::Fail(_) => tokio::time::sleep(health.interval).await,
        }
    }
    let Attempt::Fail(why) = last else {
        unreachable!("passed attempts return")
    };
    Err(RemoteError::new(
        &conn.host.name,
        STEP,
        format!(
            "health check failed for {}: {why}",
            humantime::format_duration(health.timeout)
        ),
    ))
}

async fn attempt(
    conn: &Conn<'_>,
    health: &Health,
    deploy_to: &str,
    env_path: Option<&str>,
) -> Attempt {
    match &health.check {
        HealthCheck::Url {
            host,
            port,
            path,
            expect_status,
            expect_body,
            ..
        } => match get(conn.transport.as_ref(), host, *port, path).await {
            Ok((status, body)) => {
                if status != *expect_status {
                    Attempt::Fail(format!(
                        "GET {path} answered {status}, expected {expect_status}"
                    ))
                } else if let Some(want) = expect_body.as_deref().filter(|w| !body.contains(*w)) {
                    Attempt::Fail(format!(
                        "GET {path} answered {status} but the body lacks {want:?}"
                    ))
                } else {
                    Attempt::Pass
                }
            }
            Err(e) => Attempt::Fail(e),
        },
        HealthCheck::Command(command) => {
            let sudo = conn.transport.sudo_login().is_some();
            let cmd = command_check(deploy_to, env_path, sudo, command);
            let what = format!("`{command}`");
            match execute::run(conn, STEP, &what, &cmd, timeout::SHORT).await {
                Ok(_) => Attempt::Pass,
                Err(e) => Attempt::Fail(e.message),
            }
        }
    }
}

/// The health command, run in the current release with the env file loaded (so it can use
/// `$PORT` and friends without them on a command line; with `sudo`, read through `sudo -n`
/// when the SSH user cannot read it).
pub fn command_check(deploy_to: &str, env_path: Option<&str>, sudo: bool, command: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("dir", format!("{deploy_to}/current")),
        Cmd::assign("envfile", env_path.unwrap_or("")),
        Cmd::assign("envsudo", if sudo { "1" } else { "" }),
        Cmd::new(r#"cd -- "$dir" || exit 1"#),
        Cmd::new(crate::commands::task::LOAD_ENV),
        Cmd::user_script(command),
    ])
}

/// `GET path` over a TCP connection the host opens to `host:port`: (status, body start).
async fn get(
    transport: &dyn Transport,
    host: &str,
    port: u16,
    path: &str,
) -> Result<(u16, String), String> {
    let mut stream = transport
        .connect_tcp(host, port)
        .await
        .map_err(|e| format!("cannot connect to {host}:{port} from the host: {e}"))?;
    // HTTP/1.0 with `Connection: close`: the server ends the body by closing, no chunking.
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: shipit-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request to {host}:{port} failed: {e}"))?;
    let _ = stream.flush().await;
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                response.extend_from_slice(&buf[..n]);
                if response.len() >= MAX_RESPONSE {
                    break;
                }
            }
            // A reset after a complete response is still a response.
            Err(_) if !response.is_empty() => break,
            Err(e) => return Err(format!("reading from {host}:{port} failed: {e}")),
        }
    }
    parse_response(&response).ok_or_else(|| {
        if response.is_empty() {
            format!("{host}:{port} closed the connection without answering")
        } else {
            format!("{host}:{port} did not answer with HTTP")
        }
    })
}

fn parse_response(bytes: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(bytes);
    let status_line = text.lines().next()?;
    let mut words = status_line.split_whitespace();
    if !words.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = words.next()?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let r = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\nnot ready\n";
        assert_eq!(parse_response(r), Some((503, "not ready\n".to_owned())));
        assert_eq!(parse_response(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_response(b""), None);
    }

    #[test]
    fn gets_from_a_real_server_through_the_local_transport() {
        use crate::transport::local::LocalTransport;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                s.write_all(b"HTTP/1.0 200 OK\r\n\r\nready").await.unwrap();
            });
            let (status, body) = get(&LocalTransport, "127.0.0.1", port, "/readyz")
                .await
                .unwrap();
            assert_eq!((status, body.as_str()), (200, "ready"));
        });
    }
}
