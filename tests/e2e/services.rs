//! Services on hosts that boot real systemd: the 0600 env file, units, Nginx, the health
//! gate and automatic rollback, and a secrets audit of everything a deploy shows.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{run, write};
use crate::support::systemd::SystemdFleet;

/// Values systemd's `EnvironmentFile=` and `sh` must both read back exactly.
const NASTY: &[(&str, &str)] = &[
    ("SPACES", "two words  and more"),
    ("SINGLE", "it's"),
    ("DOUBLE", "say \"hi\""),
    ("DOLLAR", "$HOME and ${PATH}"),
    ("HASH", "#not a comment"),
    ("BACKSLASH", "a\\b\\\\c"),
    ("EQUALS", "a=b==c"),
    ("UNICODE", "ünïcødé ✓ 日本"),
    ("BACKTICK", "`id` and \\$x"),
    ("NEWLINE", "line1\nline2"),
];

/// The secrets of the test deploys: none may appear in any output, argv or history.
const SECRETS: &[(&str, &str)] = &[
    ("DATABASE_URL", "postgres://app:Sup3rS3cretPw@db/app"),
    ("SESSION_SECRET", "sess-9f8e7d6c5b4a-s3cret"),
];

/// A small HTTP service: /healthz is 200 unless VERSION says "broken"; /env/KEY echoes an
/// env var (to check what systemd read); / names the version.
const SERVER: &str = r#"import http.server, os
version = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "VERSION")).read().strip()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            sick = version == "broken" or os.path.exists("/etc/demo-sick")
            code, body = (500, "broken") if sick else (200, "ok")
        elif self.path.startswith("/env/"):
            code, body = 200, os.environ.get(self.path[5:], "<unset>")
        else:
            code, body = 200, "version " + version
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

const UNIT: &str = "[Unit]\nDescription={{ app.name }} api ({{ description }})\n\n[Service]\nEnvironmentFile={{ env.path }}\nWorkingDirectory={{ app.current }}\nExecStart=/usr/bin/python3 {{ app.current }}/server.py\nUser={{ app.user }}\nRestart=on-failure\n\n[Install]\nWantedBy=multi-user.target\n";

const SITE: &str = "server {\n    listen 8080;\n    location / {\n        proxy_pass http://127.0.0.1:8081;\n    }\n}\n";

struct Setup {
    dir: PathBuf,
}

impl Setup {
    fn new(fleet: &SystemdFleet) -> Setup {
        for h in fleet.hosts() {
            fleet.sh_ok(
                &h.name,
                "id demo >/dev/null 2>&1 || useradd --system --no-create-home demo",
            );
        }
        Setup {
            dir: fleet.dir().to_path_buf(),
        }
    }

    fn app(&self, version: &str) -> PathBuf {
        let dir = self.dir.join(format!("app-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("server.py"), SERVER).unwrap();
        std::fs::write(dir.join("VERSION"), format!("{version}\n")).unwrap();
        dir
    }

    /// An inventory deploying `app` with a unit whose description is `description`.
    fn inventory(
        &self,
        fleet: &SystemdFleet,
        app: &Path,
        description: &str,
        site: &str,
    ) -> PathBuf {
        let unit = write(
            &self.dir,
            "api.service.j2",
            &UNIT.replace("{{ description }}", description),
        );
        let site = write(&self.dir, "site.conf.j2", site);
        let vars: Vec<String> = NASTY
            .iter()
            .map(|(k, v)| format!("{k} = {}", toml_string(v)))
            .chain(["PORT = \"8081\"".to_owned()])
            .collect();
        let secrets: Vec<String> = SECRETS.iter().map(|(k, _)| format!("\"{k}\"")).collect();
        let mut text = format!(
            r#"[app]
name = "demo"
deploy_to = "/opt/demo"
user = "demo"

[ssh]
identity = "{key}"
known_hosts = "{known}"

[artifact]
path = "{app}"

[env]
path = "/etc/demo.env"
from_env = [{secrets}]
vars = {{ {vars} }}

[[systemd]]
unit = "demo-api.service"
template = "{unit}"

[nginx]
site = "demo"
template = "{site}"

[health]
url = "http://127.0.0.1:8081/healthz"
timeout = "8s"
interval = "500ms"
"#,
            key = fleet.client_key().display(),
            known = fleet.known_hosts().display(),
            app = app.display(),
            secrets = secrets.join(", "),
            vars = vars.join(", "),
            unit = unit.display(),
            site = site.display(),
        );
        for h in fleet.hosts() {
            text.push_str(&format!(
                "\n[[hosts]]\nname = \"{}\"\naddress = \"{}\"\n",
                h.name, h.address
            ));
        }
        write(&self.dir, "inv.toml", &text)
    }
}

fn toml_string(v: &str) -> String {
    serde_json::to_string(v).unwrap()
}

fn deploy(fleet: &SystemdFleet, inv: &Path, json: bool) -> (i32, String, String) {
    let mut cmd = fleet.shipit();
    for (k, v) in SECRETS {
        cmd.env(k, v);
    }
    cmd.args(["deploy", "test", "-i"]).arg(inv);
    if json {
        cmd.arg("--json");
    }
    run(&mut cmd)
}

fn reloads(fleet: &SystemdFleet, host: &str) -> usize {
    let out = fleet.sh_ok(
        host,
        "journalctl -q --no-pager _PID=1 | grep -c 'Reloading' || true",
    );
    out.trim().parse().unwrap_or(0)
}

#[test]
fn deploy_with_env_file_units_nginx_and_health() {
    let fleet = SystemdFleet::start(2);
    let setup = Setup::new(&fleet);
    let inv = setup.inventory(&fleet, &setup.app("1"), "first", SITE);
    let (code, stdout, stderr) = deploy(&fleet, &inv, true);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for h in fleet.hosts() {
        let name = &h.name;
        // The env file: 0600, owned by the app user, exactly what was asked for.
        assert_eq!(
            fleet.sh_ok(name, "stat -c '%a %U' /etc/demo.env").trim(),
            "600 demo"
        );
        assert!(
            fleet
                .sh(
                    name,
                    "for f in /etc/demo.env.shipit-*; do test -e \"$f\" && exit 0; done; exit 1"
                )
                .status
                .code()
                == Some(1)
        );
        // systemd read every value exactly (the service echoes its environment)...
        for (key, value) in NASTY.iter().chain(SECRETS) {
            let got = fleet.sh_ok(name, &format!("curl -s http://127.0.0.1:8081/env/{key}"));
            assert_eq!(got, *value, "{name}: systemd read {key}");
            // ...and so does sh.
            let got = fleet.sh_ok(
                name,
                &format!("set -a; . /etc/demo.env; set +a; printf '%s' \"${key}\""),
            );
            assert_eq!(got, *value, "{name}: sh read {key}");
        }
        // The service answers through Nginx.
        let (status, body) = fleet.http_get(name, 8080, "/");
        assert_eq!((status, body.as_str()), (200, "version 1"), "{name}");
        assert_eq!(
            fleet
                .sh_ok(name, "systemctl is-enabled demo-api.service")
                .trim(),
            "enabled"
        );
        let entry = report["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["host"] == name.as_str())
            .unwrap();
        let mut added: Vec<&str> = entry["env_keys"]["added"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        added.sort();
        assert!(
            added.contains(&"DATABASE_URL") && added.contains(&"PORT"),
            "{entry:#}"
        );
    }

    // Same env, same unit: the env file is not rewritten and systemd is not reloaded.
    let env_before = fleet.sh_ok("s1", "stat -c '%i %Y' /etc/demo.env");
    let reloads_before = reloads(&fleet, "s1");
    let inv = setup.inventory(&fleet, &setup.app("2"), "first", SITE);
    let (code, _, stderr) = deploy(&fleet, &inv, false);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        fleet.sh_ok("s1", "stat -c '%i %Y' /etc/demo.env"),
        env_before
    );
    assert_eq!(
        reloads(&fleet, "s1"),
        reloads_before,
        "no unit change, no daemon-reload"
    );
    assert_eq!(fleet.http_get("s1", 8080, "/").1, "version 2");

    // A changed unit is installed and reloaded: systemd shows the new description.
    let inv = setup.inventory(&fleet, &setup.app("3"), "second", SITE);
    let (code, _, stderr) = deploy(&fleet, &inv, false);
    assert_eq!(code, 0, "{stderr}");
    assert!(reloads(&fleet, "s1") > reloads_before);
    assert_eq!(
        fleet
            .sh_ok(
                "s1",
                "systemctl show -p Description --value demo-api.service"
            )
            .trim(),
        "demo api (second)"
    );
    assert_eq!(fleet.http_get("s2", 8080, "/").1, "version 3");
}

#[test]
fn a_broken_nginx_template_fails_before_any_switch() {
    let fleet = SystemdFleet::start(1);
    let setup = Setup::new(&fleet);
    let inv = setup.inventory(&fleet, &setup.app("good"), "x", SITE);
    let (code, _, stderr) = deploy(&fleet, &inv, false);
    assert_eq!(code, 0, "{stderr}");
    let current = fleet.sh_ok("s1", "readlink /opt/demo/current");

    let broken = SITE.replace(
        "proxy_pass http://127.0.0.1:8081;",
        "proxy_pass http://127.0.0.1:8081; no_such_directive on;",
    );
    let inv = setup.inventory(&fleet, &setup.app("next"), "x", &broken);
    let (code, stdout, stderr) = deploy(&fleet, &inv, false);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("nginx -t") && stderr.contains("no_such_directive"),
        "{stderr}"
    );
    assert_eq!(
        fleet.sh_ok("s1", "readlink /opt/demo/current"),
        current,
        "nothing switched"
    );
    assert_eq!(
        fleet.http_get("s1", 8080, "/"),
        (200, "version good".to_owned())
    );
    assert!(
        !fleet
            .sh_ok("s1", "cat /etc/nginx/sites-available/demo")
            .contains("no_such_directive")
    );

    // A unit that systemd-analyze rejects: the same, before any switch.
    let inv = setup.inventory(&fleet, &setup.app("next2"), "x", SITE);
    write(
        fleet.dir(),
        "api.service.j2",
        &UNIT
            .replace("{{ description }}", "x")
            .replace("Restart=on-failure", "Restart=on-failure\nNoSuchKey=1"),
    );
    let (code, stdout, stderr) = deploy(&fleet, &inv, false);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("systemd-analyze verify") && stderr.contains("NoSuchKey"),
        "{stderr}"
    );
    assert_eq!(
        fleet.sh_ok("s1", "readlink /opt/demo/current"),
        current,
        "nothing switched"
    );
    assert!(
        !fleet
            .sh_ok("s1", "cat /etc/systemd/system/demo-api.service")
            .contains("NoSuchKey")
    );

    // A template error names the file and line, and stops before any connection.
    write(
        fleet.dir(),
        "api.service.j2",
        &UNIT
            .replace("{{ description }}", "x")
            .replace("{{ app.user }}", "{{ app.no_such_field }}"),
    );
    let (code, _, stderr) = deploy(&fleet, &inv, false);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("api.service.j2` line 8"), "{stderr}");
    assert_eq!(
        fleet.sh_ok("s1", "readlink /opt/demo/current"),
        current,
        "nothing switched"
    );
}

#[test]
fn a_release_failing_its_health_check_is_rolled_back() {
    let fleet = SystemdFleet::start(2);
    let setup = Setup::new(&fleet);
    let inv = setup.inventory(&fleet, &setup.app("good"), "x", SITE);
    let (code, _, stderr) = deploy(&fleet, &inv, false);
    assert_eq!(code, 0, "{stderr}");
    let good = fleet.sh_ok("s1", "readlink /opt/demo/current");

    let inv = setup.inventory(&fleet, &setup.app("broken"), "x", SITE);
    let (code, stdout, stderr) = deploy(&fleet, &inv, true);
    assert_eq!(code, 3, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcome"], "rolled_back");
    let bad = report["release"].as_str().unwrap().to_owned();
    for h in fleet.hosts() {
        assert_eq!(
            fleet.sh_ok(&h.name, "readlink /opt/demo/current"),
            good,
            "{}",
            h.name
        );
        assert_eq!(
            fleet.http_get(&h.name, 8080, "/"),
            (200, "version good".to_owned())
        );
        assert_eq!(
            fleet
                .sh_ok(&h.name, "systemctl is-active demo-api.service")
                .trim(),
            "active"
        );
    }
    let error = report["hosts"][0]["error"]["message"].as_str().unwrap();
    assert!(error.contains("health check failed"), "{error}");
    assert_eq!(report["hosts"][0]["error"]["step"], "health");
    let history = fleet.sh_ok("s1", "tail -n 1 /opt/demo/.shipit/history.jsonl");
    let last: serde_json::Value = serde_json::from_str(&history).unwrap();
    assert!(
        last["switched_back"]
            .as_str()
            .unwrap()
            .contains("switched back")
    );
    assert_eq!(
        (
            last["release"].as_str().unwrap(),
            last["outcome"].as_str().unwrap()
        ),
        (bad.as_str(), "failed")
    );
    // `rollback` never goes to a release whose deploy failed.
    let releases: Vec<String> = fleet
        .sh_ok("s1", "ls /opt/demo/releases")
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(releases.contains(&bad));
}

#[test]
fn a_failed_switch_back_exits_4_and_says_where_the_host_is() {
    let fleet = SystemdFleet::start(1);
    let setup = Setup::new(&fleet);
    let inv = setup.inventory(&fleet, &setup.app("good"), "x", SITE);
    let (code, _, stderr) = deploy(&fleet, &inv, false);
    assert_eq!(code, 0, "{stderr}");
    // From now on every release is sick, the previous one too: switching back cannot heal.
    fleet.sh_ok("s1", "touch /etc/demo-sick");
    let inv = setup.inventory(&fleet, &setup.app("next"), "x", SITE);
    let (code, stdout, stderr) = deploy(&fleet, &inv, true);
    assert_eq!(code, 4, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcome"], "rollback_failed");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("a human is needed")
    );
    let error = report["hosts"][0]["error"]["message"].as_str().unwrap();
    assert!(
        error.contains("SWITCHING BACK FAILED") && error.contains("after switching back"),
        "{error}"
    );
    assert_eq!(report["hosts"][0]["rolled_back"], false);
}

#[test]
fn no_secret_appears_in_argv_output_json_or_history() {
    let fleet = SystemdFleet::start(1);
    let setup = Setup::new(&fleet);
    let inv = setup.inventory(&fleet, &setup.app("1"), "x", SITE);
    // Sample every process's argv on the host for as long as the deploy runs.
    let done = AtomicBool::new(false);
    let (argv, text, json) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut seen = String::new();
            while !done.load(Ordering::Relaxed) {
                let out = fleet.sh(
                    "s1",
                    "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f 2>/dev/null; echo; done",
                );
                seen.push_str(&String::from_utf8_lossy(&out.stdout));
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        });
        let text = deploy(&fleet, &inv, false);
        let inv2 = setup.inventory(&fleet, &setup.app("2"), "x", SITE);
        let json = deploy(&fleet, &inv2, true);
        done.store(true, Ordering::Relaxed);
        (sampler.join().unwrap(), text, json)
    });
    assert_eq!(text.0, 0, "{}", text.2);
    assert_eq!(json.0, 0, "{}", json.2);
    assert!(
        argv.contains("sha256sum") || argv.contains("sshd"),
        "the sampler saw processes"
    );
    let history = fleet.sh_ok("s1", "cat /opt/demo/.shipit/history.jsonl");
    let journal = fleet.sh_ok("s1", "journalctl -q --no-pager | tail -n 2000");
    for (key, secret) in SECRETS {
        for (what, haystack) in [
            ("argv", &argv),
            ("text stdout", &text.1),
            ("text stderr", &text.2),
            ("json stdout", &json.1),
            ("json stderr", &json.2),
            ("history", &history),
            ("journal", &journal),
        ] {
            assert!(
                !haystack.contains(secret),
                "{key}'s value appears in {what}"
            );
        }
    }
    // Key names are reported; values never.
    assert!(json.1.contains("SESSION_SECRET") || text.2.contains("SESSION_SECRET"));
}
