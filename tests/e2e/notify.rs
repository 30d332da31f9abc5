//! `[[notify]]` through the real binary: after a deploy, a failed deploy and a rollback on
//! real hosts, each notifier whose `on` matches gets the JSON report on stdin (one through a
//! real HTTP listener with `curl -d @-`), its outcome in the environment and no app secret;
//! a failing or hanging notifier is reported on stderr and never changes the exit code.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::Fleet;

const SECRET: &str = "Notify-db-secret-31d7";

/// Accepts HTTP requests on 127.0.0.1 and sends each body on; answers 200.
fn listener() -> (u16, mpsc::Receiver<(String, String)>) {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in socket.incoming().take(10) {
            let Ok(mut stream) = stream else { return };
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send((
                request_line.trim().to_owned(),
                String::from_utf8_lossy(&body).into_owned(),
            ));
        }
    });
    (port, rx)
}

fn inventory(fleet: &Fleet, file: &str, app: &Path, migrate: &str, notify: &str) -> PathBuf {
    let extra = format!(
        "[artifact]\npath = \"{}\"\n\n[env]\npath = \"/etc/demo.env\"\nfrom_env = [\"DATABASE_URL\"]\n\n[migrate]\ncommand = \"{migrate}\"\n\n{notify}",
        app.display()
    );
    write(
        fleet.dir(),
        file,
        &inventory_text(fleet, &["h1", "h2"], &extra),
    )
}

#[test]
fn notifiers_get_the_report_and_never_change_the_outcome() {
    let fleet = Fleet::start(2);
    let dir = fleet.dir().to_owned();
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("VERSION"), "1\n").unwrap();
    let (port, bodies) = listener();
    let d = dir.display();
    let notify = format!(
        r#"[[notify]]
command = "cat > {d}/success.json; echo \"$SHIPIT_STAGE $SHIPIT_COMMAND $SHIPIT_OUTCOME $SHIPIT_EXIT_CODE [${{DATABASE_URL-unset}}]\" >> {d}/success.env; echo noise on stdout"
on = ["success"]

[[notify]]
command = "cat > {d}/failure.json; echo \"$SHIPIT_COMMAND $SHIPIT_OUTCOME $SHIPIT_EXIT_CODE\" >> {d}/failure.env"
on = ["failure"]

[[notify]]
command = "curl -fsS -H 'content-type: application/json' -d @- http://127.0.0.1:{port}/hook"

[[notify]]
command = "echo webhook down >&2; exit 7"

[[notify]]
command = "sleep 60"
timeout = "1s"
"#
    );
    let ok = inventory(&fleet, "ok.toml", &app, "true", &notify);
    let shipit = |args: &[&str], inv: &Path| {
        let started = Instant::now();
        let out = run(fleet
            .shipit()
            .env("DATABASE_URL", format!("postgres://app:{SECRET}@db/app"))
            .args(args)
            .arg("-i")
            .arg(inv));
        (out, started.elapsed())
    };

    let ((code, stdout, stderr), took) = shipit(&["deploy", "test", "--json"], &ok);
    assert_eq!(
        code, 0,
        "a failing notifier changed the exit code: {stderr}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // stdout is the report alone: a notifier's output never lands there.
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not the report ({e}): {stdout}"));
    assert!(
        stderr.contains("warning: notifier `echo webhook down >&2; exit 7` failed with exit status: 7: webhook down (the deploy outcome stands)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: notifier `sleep 60` did not finish within 1s and was killed"),
        "{stderr}"
    );
    let piped: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("success.json")).unwrap()).unwrap();
    assert_eq!(
        piped, report,
        "the notifier reads the report `--json` prints"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("success.env")).unwrap(),
        "test deploy success 0 [unset]\n",
        "outcome in the environment, the app's secret not"
    );
    assert!(
        !dir.join("failure.json").exists(),
        "`on = [\"failure\"]` ran on success"
    );
    let (request, body) = bodies.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(request, "POST /hook HTTP/1.1");
    let posted: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(posted, report, "the webhook got the report");

    // A failed deploy (the migration fails, nothing switched): the failure notifier, with
    // the exit code; the report it reads has the secret redacted.
    std::fs::write(app.join("VERSION"), "2\n").unwrap();
    let failing = inventory(
        &fleet,
        "failing.toml",
        &app,
        "echo cannot reach $DATABASE_URL >&2; exit 1",
        &notify,
    );
    let ((code, _, stderr), _) = shipit(&["deploy", "test"], &failing);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.join("failure.env")).unwrap(),
        "deploy failure 1\n"
    );
    let failure = std::fs::read_to_string(dir.join("failure.json")).unwrap();
    assert!(failure.contains("[REDACTED]"), "{failure}");
    assert!(!failure.contains(SECRET), "{failure}");
    let (_, body) = bodies.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(!body.contains(SECRET));

    // A second release, then a rollback: the notifiers hear of the rollback too.
    let ((code, _, stderr), _) = shipit(&["deploy", "test"], &ok);
    assert_eq!(code, 0, "{stderr}");
    let ((code, _, stderr), _) = shipit(&["rollback", "test"], &ok);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.join("success.env")).unwrap(),
        "test deploy success 0 [unset]\ntest deploy success 0 [unset]\ntest rollback success 0 [unset]\n"
    );
    let rollback: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("success.json")).unwrap()).unwrap();
    assert!(rollback.is_object(), "{rollback}");
    for h in ["h1", "h2"] {
        assert_eq!(fleet.sh_ok(h, "cat /opt/demo/current/VERSION"), "1\n");
    }
}
