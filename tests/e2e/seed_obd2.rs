//! The OBD2 dashboard seed (`shared/seeds/002`), as `examples/obd2-dashboard/` ships it,
//! deployed by the real binary onto a host that boots real systemd with Debian's PostgreSQL,
//! Redis and Nginx, then checked against the guide's "Validation and Acceptance" from this
//! machine, through Nginx and TLS, the way a person with `curl` would.
//!
//! The inventory is the example's own `obd2.toml` with only what points at a place changed:
//! `[ssh]` and `[[hosts]]` name the test host, relative paths become absolute, later releases
//! deploy a copy of the app with one more migration, and `backup.keep` is 2 so that three
//! deploys exercise the retention.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::common::{run, write};
use crate::support::clean_command;
use crate::support::systemd::SystemdFleet;

/// The example, as the repository ships it.
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/obd2-dashboard");
/// Its inventory's relative paths are relative to the repository root.
const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// The site's name; the test's certificate is for it and curl resolves it to the host.
const SERVER_NAME: &str = "obd2.test";
const DB_PASSWORD: &str = "Obd2-db-pw-5e1c0a77";
const SESSION_SECRET: &str = "obd2-session-9b3f2d4e6a";
/// How many backups the test's inventory keeps (the example keeps 7).
const KEEP_BACKUPS: usize = 2;
/// RFC 6455's example key and the accept value a correct server derives from it.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// How long a test waits for something that, working, comes at once (a stream's first event,
/// a log line). Only a bound on a broken run: nothing here measures speed.
const PATIENCE: Duration = Duration::from_secs(30);
/// The row and key the data-survival checks plant.
const CANARY_VIN: &str = "WOBD2CANARY000001";
const CANARY_KEY: &str = "obd2:test:canary";
/// The migration a later release adds: it records itself, so applying it twice would show.
const MIGRATION_0003: &str = "CREATE TABLE IF NOT EXISTS migration_audit (\n    \
     id bigserial PRIMARY KEY,\n    event text NOT NULL\n);\n\
     INSERT INTO migration_audit (event) VALUES ('0003 applied');\n";

fn secrets() -> Vec<(&'static str, String)> {
    vec![
        (
            "DATABASE_URL",
            format!("postgres://obd2:{DB_PASSWORD}@127.0.0.1:5432/obd2"),
        ),
        ("REDIS_URL", "redis://127.0.0.1:6379/0".to_owned()),
        ("SESSION_SECRET", SESSION_SECRET.to_owned()),
    ]
}

/// The operator's part, done once before the first deploy: the service user, the database
/// role and database, and the TLS certificate (self-signed here, made on this machine).
struct Site {
    dir: PathBuf,
    address: String,
    cert: PathBuf,
}

impl Site {
    fn provision(fleet: &SystemdFleet) -> Site {
        let dir = fleet.dir().to_path_buf();
        let host = fleet.host("s1");
        // Data services come up at boot; wait until they answer.
        fleet.sh_ok(
            "s1",
            "for i in $(seq 60); do pg_isready -q -h 127.0.0.1 && \
             [ \"$(redis-cli ping)\" = PONG ] && exit 0; sleep 1; done; \
             systemctl status postgresql@15-main redis-server; exit 1",
        );
        fleet.sh_ok(
            "s1",
            "useradd --system --user-group --no-create-home --shell /usr/sbin/nologin obd2",
        );
        fleet.sh_ok(
            "s1",
            &format!(
                "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 \
                 -c \"CREATE ROLE obd2 LOGIN CREATEDB PASSWORD '{DB_PASSWORD}'\" \
                 -c 'CREATE DATABASE obd2 OWNER obd2'"
            ),
        );
        let cert = dir.join("fullchain.pem");
        let key = dir.join("privkey.pem");
        let out = clean_command("openssl", &fleet.home())
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", &format!("/CN={SERVER_NAME}")])
            .args(["-addext", &format!("subjectAltName=DNS:{SERVER_NAME}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl (apt-get install openssl)");
        crate::support::assert_success(&out, "openssl req -x509");
        for (file, mode) in [(&cert, "0644"), (&key, "0600")] {
            let pem = std::fs::read_to_string(file).unwrap();
            let name = file.file_name().unwrap().to_string_lossy();
            fleet.sh_ok(
                "s1",
                &format!(
                    "mkdir -p /etc/ssl/obd2 && umask 077 && \
                     cat > /etc/ssl/obd2/{name} <<'PEM'\n{pem}PEM\n\
                     chmod {mode} /etc/ssl/obd2/{name}"
                ),
            );
        }
        Site {
            dir,
            address: host.address.clone(),
            cert,
        }
    }

    /// A copy of the example's app, plus `extra` files (relative path, text).
    fn release(&self, name: &str, extra: &[(&str, &str)]) -> PathBuf {
        let to = self.dir.join(name);
        copy_tree(&Path::new(EXAMPLE).join("app"), &to);
        for (path, text) in extra {
            std::fs::write(to.join(path), text).unwrap();
        }
        to
    }

    /// The example's inventory, pointed at the test host and deploying `app`.
    fn inventory(&self, fleet: &SystemdFleet, app: &Path) -> PathBuf {
        let text = std::fs::read_to_string(Path::new(EXAMPLE).join("obd2.toml")).unwrap();
        let mut inv: toml::Table = toml::from_str(&text).expect("obd2.toml parses");
        let ssh: toml::Table = toml::from_str(&format!(
            "user = \"root\"\nidentity = {}\nknown_hosts = {}\nconnect_timeout = \"10s\"\n",
            toml_str(&fleet.client_key()),
            toml_str(&fleet.known_hosts()),
        ))
        .unwrap();
        inv.insert("ssh".into(), ssh.into());
        let hosts: toml::Table = toml::from_str(&format!(
            "[[hosts]]\nname = \"s1\"\naddress = \"{}\"\nroles = [\"web\", \"migrate\"]\n\
             vars = {{ server_name = \"{SERVER_NAME}\" }}\n",
            self.address
        ))
        .unwrap();
        inv.insert("hosts".into(), hosts["hosts"].clone());
        let table = |inv: &mut toml::Table, key: &str| -> toml::Table {
            inv[key]
                .as_table()
                .unwrap_or_else(|| panic!("[{key}]"))
                .clone()
        };
        let mut artifact = table(&mut inv, "artifact");
        artifact.insert("path".into(), app.display().to_string().into());
        inv.insert("artifact".into(), artifact.into());
        let mut units = inv["systemd"].as_array().unwrap().clone();
        for unit in &mut units {
            let unit = unit.as_table_mut().unwrap();
            let path = absolute(unit["template"].as_str().unwrap());
            unit.insert("template".into(), path.into());
            // The example's drain (30 s), shortened: every redeploy waits for it.
            unit.insert("drain".into(), "3s".into());
        }
        inv.insert("systemd".into(), units.into());
        let mut nginx = table(&mut inv, "nginx");
        let path = absolute(nginx["template"].as_str().unwrap());
        nginx.insert("template".into(), path.into());
        inv.insert("nginx".into(), nginx.into());
        let mut backup = table(&mut inv, "backup");
        backup.insert("keep".into(), (KEEP_BACKUPS as i64).into());
        inv.insert("backup".into(), backup.into());
        write(
            &self.dir,
            "obd2-test.toml",
            &toml::to_string(&inv).expect("serialize the inventory"),
        )
    }

    /// curl from this machine to the site, `obd2.test` resolved to the host, the test's
    /// certificate as the only trusted CA (so TLS is verified, not skipped).
    fn curl(&self, fleet: &SystemdFleet) -> Command {
        let mut cmd = clean_command("curl", &fleet.home());
        cmd.args(["--silent", "--show-error", "--http1.1", "--noproxy", "*"])
            .arg("--resolve")
            .arg(format!("{SERVER_NAME}:443:{}", self.address))
            .arg("--resolve")
            .arg(format!("{SERVER_NAME}:80:{}", self.address))
            .arg("--cacert")
            .arg(&self.cert)
            .stdin(Stdio::null());
        cmd
    }

    /// One request; (status, headers lowercased, body).
    fn get(&self, fleet: &SystemdFleet, url: &str, args: &[&str]) -> (u16, String, String) {
        let out = self
            .curl(fleet)
            .args(["--include", "--max-time", "30"])
            .args(args)
            .arg(url)
            .output()
            .expect("run curl (apt-get install curl)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "curl {url}: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {text:?}"));
        (status, head.to_lowercase(), body.to_owned())
    }

    /// A request whose response is read while it arrives (see [`Streamed`]).
    fn stream(&self, fleet: &SystemdFleet, url: &str, args: &[&str]) -> Streamed {
        let mut child = self
            .curl(fleet)
            .args(["--include", "--no-buffer"])
            .args(args)
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run curl");
        let mut stdout = child.stdout.take().unwrap();
        let seen = Arc::new((Mutex::new(Received::default()), Condvar::new()));
        let writer = Arc::clone(&seen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = stdout.read(&mut buf).unwrap_or(0);
                let (lock, cond) = &*writer;
                let mut state = lock.lock().unwrap();
                if n == 0 {
                    state.ended = true;
                } else {
                    state.bytes.extend_from_slice(&buf[..n]);
                }
                cond.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
        Streamed { child, seen }
    }
}

/// A response being received by a curl that keeps running (`--no-buffer`): what has arrived
/// so far, and whether the response has ended. Dropping it stops curl.
struct Streamed {
    child: Child,
    seen: Arc<(Mutex<Received>, Condvar)>,
}

/// What a [`Streamed`] response delivered so far.
#[derive(Default)]
struct Received {
    bytes: Vec<u8>,
    ended: bool,
}

impl Streamed {
    /// Waits until the response ends; returns all it delivered. Panics if it is still open
    /// after [`PATIENCE`].
    fn wait_end(&self) -> String {
        let (lock, cond) = &*self.seen;
        let deadline = Instant::now() + PATIENCE;
        let mut state = lock.lock().unwrap();
        while !state.ended {
            let now = Instant::now();
            if now >= deadline {
                let text = String::from_utf8_lossy(&state.bytes).into_owned();
                drop(state);
                panic!("the response is still open; received so far:\n{text}");
            }
            state = cond.wait_timeout(state, deadline - now).unwrap().0;
        }
        String::from_utf8_lossy(&state.bytes).into_owned()
    }

    /// Waits until what arrived contains `needle`; returns it all, and whether the response
    /// had ended by then. Panics, showing what arrived, if it does not come in [`PATIENCE`].
    fn wait_for(&self, needle: &str) -> (String, bool) {
        let (lock, cond) = &*self.seen;
        let deadline = Instant::now() + PATIENCE;
        let mut state = lock.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&state.bytes).into_owned();
            let ended = state.ended;
            if text.contains(needle) {
                return (text, ended);
            }
            let now = Instant::now();
            if ended || now >= deadline {
                drop(state); // not poisoned: the reader thread goes on until curl is stopped
                panic!(
                    "{needle:?} did not arrive (response {}); received so far:\n{text}",
                    if ended { "ended" } else { "still open" }
                );
            }
            state = cond.wait_timeout(state, deadline - now).unwrap().0;
        }
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn absolute(relative: &str) -> String {
    Path::new(REPO).join(relative).display().to_string()
}

fn toml_str(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "__pycache__" {
                copy_tree(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every output of shipit in this test, checked for secrets at the end.
#[derive(Default)]
struct Outputs(Vec<(String, String)>);

impl Outputs {
    fn run(&mut self, what: &str, cmd: &mut Command) -> (i32, String, String) {
        let (code, stdout, stderr) = run(cmd);
        self.0.push((format!("{what} stdout"), stdout.clone()));
        self.0.push((format!("{what} stderr"), stderr.clone()));
        (code, stdout, stderr)
    }

    /// `shipit deploy test -i <inventory> --json` with the secrets in its environment;
    /// asserts success and returns the report.
    fn deploy(&mut self, fleet: &SystemdFleet, inventory: &Path, what: &str) -> serde_json::Value {
        let mut cmd = fleet.shipit();
        cmd.args(["deploy", "test", "--json", "-i"]).arg(inventory);
        for (k, v) in secrets() {
            cmd.env(k, v);
        }
        let (code, stdout, stderr) = self.run(what, &mut cmd);
        assert_eq!(code, 0, "{what}:\n{stdout}\n{stderr}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{what}: {e}\n{stdout}"))
    }
}

/// On the host, as the database's superuser: one value.
fn sql(fleet: &SystemdFleet, query: &str) -> String {
    fleet
        .sh_ok(
            "s1",
            &format!("runuser -u postgres -- psql -X -q -A -t -d obd2 -c \"{query}\""),
        )
        .trim()
        .to_owned()
}

/// Every Redis key with its type and content (streams: info and groups), sorted.
fn redis_dump(fleet: &SystemdFleet) -> String {
    fleet.sh_ok(
        "s1",
        r#"redis-cli --scan | sort | while IFS= read -r k; do
  t=$(redis-cli type "$k"); echo "== $k ($t)"
  case $t in
    string) redis-cli get "$k" ;;
    stream) redis-cli xinfo stream "$k"; redis-cli xinfo groups "$k" ;;
    hash) redis-cli hgetall "$k" ;;
    *) redis-cli dump "$k" | od -An -c ;;
  esac
done"#,
    )
}

#[test]
fn the_obd2_dashboard_deploys_with_one_command_and_passes_its_acceptance_checks() {
    let fleet = SystemdFleet::start(1);
    let site = Site::provision(&fleet);
    let mut outputs = Outputs::default();

    // Release 1: the example as it is.
    let inv = site.inventory(&fleet, &site.release("release-1", &[]));
    let first = outputs.deploy(&fleet, &inv, "deploy 1");
    assert_eq!(first["outcome"], "deployed", "{first:#}");
    // Blue-green: the first deploy starts the instance on the first port and points the
    // site at it.
    assert_eq!(first["hosts"][0]["live_port"], 3000, "{first:#}");
    assert_eq!(
        fleet
            .sh_ok("s1", "systemctl is-active obd2-dashboard-api@3000.service")
            .trim(),
        "active"
    );
    assert_eq!(
        fleet
            .sh_ok("s1", "systemctl is-enabled obd2-dashboard-api@3000.service")
            .trim(),
        "enabled"
    );
    // The env file: 0600, the service user's, with every key.
    assert_eq!(
        fleet
            .sh_ok("s1", "stat -c '%a %U' /etc/obd2-dashboard.env")
            .trim(),
        "600 obd2"
    );
    let keys = fleet.sh_ok("s1", "cut -d= -f1 /etc/obd2-dashboard.env | sort");
    for key in ["DATABASE_URL", "REDIS_URL", "SESSION_SECRET"] {
        assert!(keys.lines().any(|k| k == key), "{key} in {keys}");
    }
    let unit = fleet.sh_ok("s1", "systemctl cat obd2-dashboard-api@3000.service");
    for line in [
        "EnvironmentFile=/etc/obd2-dashboard.env",
        "Environment=PORT=%i",
        "WorkingDirectory=/opt/obd2-dashboard/current",
        "Restart=on-failure",
        "User=obd2",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} in\n{unit}");
    }

    // HTTPS through Nginx, the certificate verified: both data services answer.
    let healthz = format!("https://{SERVER_NAME}/healthz");
    let (status, _, body) = site.get(&fleet, &healthz, &[]);
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&health["db"], &health["redis"]),
        (&"ok".into(), &"ok".into())
    );
    let (status, _, body) = site.get(&fleet, &format!("https://{SERVER_NAME}/readyz"), &[]);
    assert_eq!(status, 200, "{body}");
    // Plain HTTP is redirected to HTTPS.
    let (status, head, _) = site.get(&fleet, &format!("http://{SERVER_NAME}/healthz"), &[]);
    assert_eq!(status, 301, "{head}");
    assert_eq!(header(&head, "location"), Some(healthz.as_str()), "{head}");
    // A request id is kept when the client sends one, and made when it does not.
    let (_, head, _) = site.get(&fleet, &healthz, &["-H", "X-Request-ID: obd2-e2e-1"]);
    assert_eq!(header(&head, "x-request-id"), Some("obd2-e2e-1"), "{head}");
    let (_, head, _) = site.get(&fleet, &healthz, &[]);
    let made = header(&head, "x-request-id").unwrap_or_else(|| panic!("no x-request-id in {head}"));
    assert!(
        made.len() == 32 && made.chars().all(|c| c.is_ascii_hexdigit()),
        "{made}"
    );

    // Server-Sent Events through Nginx: the first event arrives while the API still holds
    // the stream open (it sends nothing more until a reading is posted), so nothing on the
    // way buffers it; a reading posted afterwards arrives on the same open stream.
    let events = site.stream(
        &fleet,
        &format!("https://{SERVER_NAME}/api/v1/streams/telemetry"),
        &[],
    );
    let (text, ended) = events.wait_for("event: hello\n");
    assert!(!ended, "the stream ended after its first event:\n{text}");
    let head = text.split("\r\n\r\n").next().unwrap().to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/event-stream"),
        "{head}"
    );
    assert!(!text.contains("event: telemetry"), "{text}");
    let (status, _, body) = site.get(
        &fleet,
        &format!("https://{SERVER_NAME}/api/v1/telemetry"),
        &[
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"vin": "WOBD2STREAM000001", "rpm": 2150}"#,
        ],
    );
    assert_eq!(status, 202, "{body}");
    let (text, ended) = events.wait_for("WOBD2STREAM000001");
    assert!(text.contains("event: telemetry\n"), "{text}");
    assert!(!ended, "{text}");
    drop(events);

    // WebSocket through Nginx: the upgrade is answered 101 with the right accept key, and
    // the API's first message comes through the upgraded connection.
    let ws = site.stream(
        &fleet,
        &format!("https://{SERVER_NAME}/api/v1/ws"),
        &[
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            &format!("Sec-WebSocket-Key: {WS_KEY}"),
        ],
    );
    let (text, _) = ws.wait_for(r#""type": "hello""#);
    let head = text.split("\r\n\r\n").next().unwrap().to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert_eq!(
        header(&head, "sec-websocket-accept"),
        Some(WS_ACCEPT.to_lowercase().as_str()),
        "{head}"
    );
    assert_eq!(header(&head, "upgrade"), Some("websocket"), "{head}");
    drop(ws);

    // An event stream opened before a redeploy stays on the old instance until the drain
    // ends, then ends when that instance stops; a new stream reaches the new instance.
    let old_stream = site.stream(
        &fleet,
        &format!("https://{SERVER_NAME}/api/v1/streams/telemetry"),
        &[],
    );
    old_stream.wait_for("event: hello\n");

    // Data planted between deploys.
    sql(
        &fleet,
        &format!("INSERT INTO vehicles (vin, name) VALUES ('{CANARY_VIN}', 'canary')"),
    );
    fleet.sh_ok("s1", &format!("redis-cli set {CANARY_KEY} planted-by-test"));

    // The Redis bootstrap run again, as an operator would, changes nothing.
    let before = redis_dump(&fleet);
    assert!(before.contains("== obd2:telemetry (stream)"), "{before}");
    assert!(
        before.contains("== obd2:schema_version (string)\n1\n"),
        "{before}"
    );
    // The example's named task, with no secret in the operator's environment: the host's
    // env file has them.
    let mut task = fleet.shipit();
    task.args(["task", "test", "redis-bootstrap", "-i"])
        .arg(&inv);
    let (code, stdout, stderr) = outputs.run("task", &mut task);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("already there"),
        "{stdout}\n{stderr}"
    );
    assert_eq!(redis_dump(&fleet), before, "the bootstrap changed Redis");

    // Release 2 adds a migration; release 3 changes nothing of the schema.
    let inv = site.inventory(
        &fleet,
        &site.release(
            "release-2",
            &[("migrations/0003_migration_audit.sql", MIGRATION_0003)],
        ),
    );
    let second = outputs.deploy(&fleet, &inv, "deploy 2");
    assert_eq!(second["hosts"][0]["live_port"], 3001, "{second:#}");
    // The deploy stopped the old instance after the drain: the stream it held has ended.
    let text = old_stream.wait_end();
    assert!(text.contains("event: hello"), "{text}");
    let events = site.stream(
        &fleet,
        &format!("https://{SERVER_NAME}/api/v1/streams/telemetry"),
        &[],
    );
    events.wait_for("event: hello\n");
    drop(events);
    assert_eq!(
        fleet
            .sh_ok(
                "s1",
                "systemctl is-active obd2-dashboard-api@3000.service obd2-dashboard-api@3001.service || true"
            )
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["inactive", "active"]
    );
    let inv = site.inventory(
        &fleet,
        &site.release(
            "release-3",
            &[
                ("migrations/0003_migration_audit.sql", MIGRATION_0003),
                ("BUILD", "3\n"),
            ],
        ),
    );
    let third = outputs.deploy(&fleet, &inv, "deploy 3");
    assert_ne!(second["release"], third["release"]);
    assert_eq!(
        fleet
            .sh_ok("s1", "basename $(readlink /opt/obd2-dashboard/current)")
            .trim(),
        third["release"].as_str().unwrap()
    );

    // The migration was applied exactly once; the data planted before survived both deploys.
    assert_eq!(
        sql(
            &fleet,
            "SELECT string_agg(version, ',' ORDER BY version) FROM schema_migrations"
        ),
        "0001,0002,0003"
    );
    assert_eq!(sql(&fleet, "SELECT count(*) FROM migration_audit"), "1");
    assert_eq!(
        sql(
            &fleet,
            &format!("SELECT name FROM vehicles WHERE vin = '{CANARY_VIN}'")
        ),
        "canary"
    );
    assert_eq!(
        fleet
            .sh_ok("s1", &format!("redis-cli get {CANARY_KEY}"))
            .trim(),
        "planted-by-test"
    );
    let after = redis_dump(&fleet);
    assert!(after.contains(&format!("== {CANARY_KEY} (string)\nplanted-by-test\n")));
    assert!(
        after.contains("== obd2:schema_version (string)\n1\n"),
        "{after}"
    );

    // A verified backup before every migration run, the newest `keep` of them kept; the one
    // taken before release 2 predates its migration, and it restores (read by root: the
    // backups are 0600).
    let path = |report: &serde_json::Value| report["backup"]["path"].as_str().unwrap().to_owned();
    let (b1, b2, b3) = (path(&first), path(&second), path(&third));
    let listed = fleet.sh_ok(
        "s1",
        "ls -1 /var/backups/obd2-dashboard/ | grep -v '[.]meta$'",
    );
    let mut kept: Vec<&str> = listed.lines().collect();
    kept.sort();
    let mut expected = vec![file_name(&b2), file_name(&b3)];
    expected.sort();
    assert_eq!(kept, expected, "keep = {KEEP_BACKUPS}; first was {b1}");
    let list = |file: &str| fleet.sh_ok("s1", &format!("pg_restore --list {file}"));
    assert!(
        !list(&b2).contains("migration_audit"),
        "{b2} is from before 0003"
    );
    assert!(list(&b3).contains("TABLE public migration_audit"));
    // The restore drill, as the example's README schedules it: the backup from before 0003
    // restored into a scratch database (dropped after), its tables counted.
    let with_secrets = |cmd: &mut Command| {
        for (k, v) in secrets() {
            cmd.env(k, v);
        }
    };
    let mut drill = fleet.shipit();
    drill
        .args(["backup", "test", "--verify-restore", "--json", "--backup"])
        .arg(file_name(&b2))
        .arg("-i")
        .arg(&inv);
    with_secrets(&mut drill);
    let (code, stdout, stderr) = outputs.run("drill", &mut drill);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let drilled: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let tables = drilled["drill"]["tables"].as_array().unwrap();
    let rows_of = |name: &str| {
        tables
            .iter()
            .find(|t| t["name"] == name)
            .and_then(|t| t["rows"].as_u64())
    };
    assert!(rows_of("public.vehicles").unwrap() >= 1, "{drilled:#}");
    assert_eq!(rows_of("public.migration_audit"), None, "{drilled:#}");
    assert!(
        drilled["drill"]["database"]
            .as_str()
            .unwrap()
            .starts_with("shipit_drill_")
    );
    assert_eq!(
        sql(
            &fleet,
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'shipit_drill%'"
        ),
        "0",
        "the scratch database is dropped"
    );

    // Still serving, through Nginx, the data planted before.
    let (status, _, body) = site.get(&fleet, &format!("https://{SERVER_NAME}/readyz"), &[]);
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = site.get(
        &fleet,
        &format!("https://{SERVER_NAME}/api/v1/vehicles"),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(CANARY_VIN), "{body}");

    // Undo deploy 3 with its data: what was written after the backup taken for it (a row
    // deleted, a table added by the app's user) is undone while the app's units are stopped,
    // then every host goes back to release 2.
    fleet.sh_ok(
        "s1",
        &format!(
            "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d obd2 \
             -c \"DELETE FROM vehicles WHERE vin = '{CANARY_VIN}'\" \
             -c 'SET ROLE obd2' -c 'CREATE TABLE written_after_backup (x int)'"
        ),
    );
    let mut back = fleet.shipit();
    back.args(["rollback", "test", "--restore-db", "--yes", "--json", "-i"])
        .arg(&inv);
    with_secrets(&mut back);
    let (code, stdout, stderr) = outputs.run("rollback --restore-db", &mut back);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let undone: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(undone["release"], second["release"], "{undone:#}");
    assert_eq!(undone["restored"]["backup"], file_name(&b3), "{undone:#}");
    assert!(
        stderr.contains(
            "stopped obd2-dashboard-api@3000.service obd2-dashboard-api@3001.service on every host for the restore"
        ),
        "{stderr}"
    );
    assert_eq!(
        fleet
            .sh_ok("s1", "basename $(readlink /opt/obd2-dashboard/current)")
            .trim(),
        second["release"].as_str().unwrap()
    );
    assert_eq!(
        sql(
            &fleet,
            "SELECT to_regclass('public.written_after_backup') IS NULL"
        ),
        "t",
        "the table made after the backup is gone"
    );
    assert_eq!(
        sql(
            &fleet,
            &format!("SELECT name FROM vehicles WHERE vin = '{CANARY_VIN}'")
        ),
        "canary",
        "the row deleted after the backup is back"
    );
    assert_eq!(
        sql(
            &fleet,
            "SELECT string_agg(version, ',' ORDER BY version) FROM schema_migrations"
        ),
        "0001,0002,0003",
        "the backup taken for release 3 holds what release 2 migrated"
    );
    assert!(
        fleet
            .sh_ok(
                "s1",
                "test ! -e /opt/obd2-dashboard/.shipit/stopped && echo gone"
            )
            .contains("gone")
    );
    let (status, _, body) = site.get(&fleet, &format!("https://{SERVER_NAME}/readyz"), &[]);
    assert_eq!(status, 200, "{body}");

    // No secret in anything shipit printed.
    for (what, text) in &outputs.0 {
        for secret in [DB_PASSWORD, SESSION_SECRET] {
            assert!(
                !text.contains(secret),
                "a secret appears in {what}:\n{text}"
            );
        }
    }
}

/// The value of header `name` (lowercase) in a lowercased response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        (n == name).then(|| v.trim())
    })
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap()
}
