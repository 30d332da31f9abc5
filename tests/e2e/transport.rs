//! The SSH transport as a library, against a real sshd: streaming uploads, timeouts, a session
//! killed mid-upload, and more parallel commands than sshd's `MaxSessions` allows.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use shipit::shell::Cmd;
use shipit::transport::ssh::{SshConnector, SshTransport};
use shipit::transport::{ExecError, ExecRequest, SshSettings, SshTarget, Transport};
use tokio::io::AsyncReadExt;

use crate::support::Fleet;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(fleet: &Fleet, host: &str) -> SshTransport {
    let settings = SshSettings {
        identity: Some(fleet.client_key()),
        ..Default::default()
    };
    let target = SshTarget {
        host: host.to_owned(),
        address: "127.0.0.1".to_owned(),
        port: fleet.host(host).port,
        user: "root".to_owned(),
        host_key: None,
        host_key_alias: None,
        jump: None,
        connect_timeout: Duration::from_secs(5),
        keepalive_interval: Duration::from_secs(15),
        identities: Vec::new(),
        identities_only: false,
        identities_default: false,
        revoked_host_keys: None,
        known_hosts: vec![fleet.known_hosts()],
    };
    SshConnector::new(&settings)
        .connect(&target)
        .await
        .expect("connect")
}

/// Deterministic bytes that do not compress to nothing.
fn payload(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn upload_streams_every_byte_to_the_remote_command() {
    let fleet = Fleet::start(1);
    runtime().block_on(async {
        let t = connect(&fleet, "h1").await;
        let data = payload(24 << 20);
        let expected = hex(&Sha256::digest(&data));
        let cmd = Cmd::new("sha256sum");
        let out = t
            .upload(
                &cmd,
                Box::new(std::io::Cursor::new(data)),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert!(out.success(), "{out:?}");
        assert_eq!(
            out.stdout.text().split_whitespace().next().unwrap(),
            expected
        );
        t.close().await;
    });
}

#[test]
fn a_session_killed_mid_upload_fails_fast_instead_of_hanging() {
    let fleet = Fleet::start(1);
    runtime().block_on(async {
        let t = connect(&fleet, "h1").await;
        // Endless input: only the dead session can end this upload.
        let endless = tokio::io::repeat(7).take(u64::MAX);
        let cmd = Cmd::new("cat").raw(">/dev/null");
        let upload = t.upload(&cmd, Box::new(endless), Duration::from_secs(120));
        let killer = async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            // The per-connection sshd process of the session ("sshd: root@notty").
            let out = fleet.sh("h1", "pkill -KILL -f 'sshd: roo[t]'; echo killed");
            assert!(String::from_utf8_lossy(&out.stdout).contains("killed"));
        };
        let started = Instant::now();
        let (result, ()) = tokio::join!(upload, killer);
        let err = result.expect_err("the upload must fail");
        assert!(matches!(err, ExecError::Lost { .. }), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
    });
}

#[test]
fn a_command_past_its_deadline_is_a_timeout() {
    let fleet = Fleet::start(1);
    runtime().block_on(async {
        let t = connect(&fleet, "h1").await;
        let cmd = Cmd::new("sleep").arg("30");
        let err = t
            .exec(ExecRequest::new(&cmd, Duration::from_millis(500)))
            .await
            .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        // The connection is still good for the next step.
        let ok = Cmd::new("true");
        assert!(
            t.exec(ExecRequest::new(&ok, Duration::from_secs(10)))
                .await
                .unwrap()
                .success()
        );
    });
}

#[test]
fn more_parallel_commands_than_max_sessions_all_succeed_on_one_connection() {
    let fleet = Fleet::start(1);
    runtime().block_on(async {
        let t = connect(&fleet, "h1").await;
        let cmds: Vec<Cmd> = (0..24)
            .map(|i| {
                Cmd::new("sleep")
                    .arg("0.2")
                    .and(Cmd::new("echo").arg(i.to_string()))
            })
            .collect();
        let runs = cmds
            .iter()
            .map(|c| t.exec(ExecRequest::new(c, Duration::from_secs(60))));
        let outs = futures::future::join_all(runs).await;
        for (i, out) in outs.into_iter().enumerate() {
            let out = out.unwrap_or_else(|e| panic!("command {i}: {e}"));
            assert_eq!(out.stdout.text(), format!("{i}\n"));
        }
    });
    assert_eq!(
        fleet.host("h1").log().matches("Accepted publickey").count(),
        1
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
