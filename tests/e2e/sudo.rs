//! `ssh.sudo = true` on hosts that boot real systemd: a deploy as a user that is not root,
//! with the env file in `/etc`, a unit and an Nginx site through `sudo -n`, the release tree
//! that user's; the same user without sudo rights stops with a clear message before
//! anything is switched; `check` tests sudo and what the inventory needs.

use std::path::{Path, PathBuf};

use crate::common::{run, write};
use crate::support::systemd::SystemdFleet;

/// A small HTTP service on port 8081: / names the version, /env/KEY echoes an env var.
const SERVER: &str = r#"import http.server, os
version = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "VERSION")).read().strip()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/env/"):
            body = os.environ.get(self.path[5:], "<unset>")
        else:
            body = "version " + version
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

const UNIT: &str = "[Unit]\nDescription={{ app.name }} ({{ release.id }})\n\n[Service]\nEnvironmentFile={{ env.path }}\nWorkingDirectory={{ app.current }}\nExecStart=/usr/bin/python3 {{ app.current }}/server.py\nRestart=on-failure\n\n[Install]\nWantedBy=multi-user.target\n";

const SITE: &str = "server {\n    listen 8080;\n    location / {\n        proxy_pass http://127.0.0.1:8081;\n    }\n}\n";

const SECRET: (&str, &str) = ("SESSION_SECRET", "sess-sudo-7f3a-s3cret");

/// Makes `deploy` on every host: a login with the fleet's client key, no password; with
/// `sudo`, allowed to run anything as root without one.
fn add_deploy_user(fleet: &SystemdFleet, sudo: bool) {
    for h in fleet.hosts() {
        fleet.sh_ok(
            &h.name,
            "useradd --create-home --shell /bin/sh deploy && \
             install -d -m 700 -o deploy -g deploy /home/deploy/.ssh && \
             install -m 600 -o deploy -g deploy /root/.ssh/authorized_keys /home/deploy/.ssh/authorized_keys",
        );
        set_sudo(fleet, &h.name, sudo);
    }
}

fn set_sudo(fleet: &SystemdFleet, host: &str, on: bool) {
    if on {
        fleet.sh_ok(
            host,
            "echo 'deploy ALL=(root) NOPASSWD: ALL' > /etc/sudoers.d/shipit && chmod 440 /etc/sudoers.d/shipit && visudo -c >/dev/null",
        );
    } else {
        // Moved away (the hosts' guarded `rm` keeps to the directories shipit may clear).
        fleet.sh_ok(
            host,
            "if [ -e /etc/sudoers.d/shipit ]; then mv /etc/sudoers.d/shipit /root/; fi",
        );
    }
}

fn app(dir: &Path, version: &str) -> PathBuf {
    let app = dir.join(format!("app-{version}"));
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("server.py"), SERVER).unwrap();
    std::fs::write(app.join("VERSION"), format!("{version}\n")).unwrap();
    app
}

/// The inventory: `deploy` with `ssh.sudo`, `deploy_to` under root's `/opt` (it does not
/// exist yet), the env file in `/etc`, a unit, a site, a migration and a hook that record
/// who ran them and what they read of the env file.
fn inventory(fleet: &SystemdFleet, app: &Path, extra: &str) -> PathBuf {
    let dir = fleet.dir();
    let unit = write(dir, "demo.service.j2", UNIT);
    let site = write(dir, "site.conf.j2", SITE);
    let mut text = format!(
        r#"[app]
name = "demo"
deploy_to = "/opt/demo"

[ssh]
user = "deploy"
sudo = true
identity = "{key}"
known_hosts = "{known}"

[artifact]
path = "{app}"
shared_dirs = ["storage"]

[env]
path = "/etc/demo.env"
from_env = ["{secret}"]
vars = {{ PORT = "8081" }}

[[systemd]]
unit = "demo.service"
template = "{unit}"

[nginx]
site = "demo"
template = "{site}"

[migrate]
command = "printf '%s %s' \"$(id -un)\" \"${secret}\" > migrated"

[[hooks]]
at = "after_switch"
command = "id -un > hooked"

[health]
url = "http://127.0.0.1:8081/"
timeout = "10s"
{extra}"#,
        key = fleet.client_key().display(),
        known = fleet.known_hosts().display(),
        app = app.display(),
        secret = SECRET.0,
        unit = unit.display(),
        site = site.display(),
    );
    for h in fleet.hosts() {
        text.push_str(&format!(
            "\n[[hosts]]\nname = \"{}\"\naddress = \"{}\"\n",
            h.name, h.address
        ));
    }
    write(dir, "inv.toml", &text)
}

fn shipit(fleet: &SystemdFleet, args: &[&str], inv: &Path) -> (i32, String, String) {
    let mut cmd = fleet.shipit();
    cmd.env(SECRET.0, SECRET.1).args(args).arg("-i").arg(inv);
    run(&mut cmd)
}

fn current(fleet: &SystemdFleet, host: &str) -> String {
    fleet
        .sh_ok(host, "readlink /opt/demo/current || true")
        .trim()
        .to_owned()
}

#[test]
fn a_user_with_passwordless_sudo_deploys_env_file_unit_and_site_and_owns_the_releases() {
    let fleet = SystemdFleet::start(1);
    add_deploy_user(&fleet, true);
    let inv = inventory(&fleet, &app(fleet.dir(), "1"), "");

    let (code, report, stderr) = shipit(&fleet, &["check", "test", "--json"], &inv);
    assert_eq!(code, 0, "{report}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let h = &report["hosts"][0];
    assert_eq!(h["sudo"], true, "{h:#}");
    assert_eq!(h["facts"]["user"], "deploy");
    let needs: Vec<&str> = h["needs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["ok"] == true)
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        needs,
        ["nginx", "nginx_dir", "systemd", "unit_dir", "env_dir"]
    );

    let (code, out, stderr) = shipit(&fleet, &["deploy", "test"], &inv);
    assert_eq!(code, 0, "{out}\n{stderr}");
    assert!(!stderr.contains(SECRET.1) && !out.contains(SECRET.1));
    let first = current(&fleet, "s1");
    // The release tree is deploy's (`/opt/demo` made for it through sudo), the env file too,
    // 0600: the migration and hooks run as deploy and read it.
    assert_eq!(
        fleet
            .sh_ok(
                "s1",
                "stat -c '%U %a' /opt/demo; stat -c %U /opt/demo/current/ /opt/demo/shared /opt/demo/.shipit | sort -u"
            )
            .trim(),
        "deploy 755\ndeploy"
    );
    assert_eq!(
        fleet.sh_ok("s1", "stat -c '%U %a' /etc/demo.env").trim(),
        "deploy 600"
    );
    assert_eq!(
        fleet.sh_ok("s1", "cat /opt/demo/current/migrated"),
        format!("deploy {}", SECRET.1)
    );
    assert_eq!(
        fleet.sh_ok("s1", "cat /opt/demo/current/hooked").trim(),
        "deploy"
    );
    // The unit (installed by root) runs the release, and Nginx serves it.
    assert_eq!(
        fleet
            .sh_ok(
                "s1",
                "stat -c %U /etc/systemd/system/demo.service; systemctl is-active demo.service"
            )
            .trim(),
        "root\nactive"
    );
    assert_eq!(fleet.http_get("s1", 8080, "/").1, "version 1");
    assert_eq!(
        fleet.sh_ok("s1", "curl -s http://127.0.0.1:8081/env/SESSION_SECRET"),
        SECRET.1
    );

    // Again, with a changed unit: the guard is armed as deploy, which clears what root saved
    // under `.shipit/previous` last time, and root saves the unit and site again.
    let inv = inventory(&fleet, &app(fleet.dir(), "2"), "");
    let (code, out, stderr) = shipit(&fleet, &["deploy", "test"], &inv);
    assert_eq!(code, 0, "{out}\n{stderr}");
    assert_eq!(fleet.http_get("s1", 8080, "/").1, "version 2");
    assert_ne!(current(&fleet, "s1"), first);
    // Nothing under the release tree is root's but what root saved for a switch-back (in
    // directories that are deploy's).
    assert_eq!(
        fleet
            .sh_ok(
                "s1",
                "cd /opt/demo && find . -user root ! -path './.shipit/previous/*' -print; find .shipit/previous -type d ! -user deploy -print"
            )
            .trim(),
        ""
    );

    // Rollback as deploy: units, site and env file put back through sudo.
    let (code, out, stderr) = shipit(&fleet, &["rollback", "test", "--yes"], &inv);
    assert_eq!(code, 0, "{out}\n{stderr}");
    assert_eq!(current(&fleet, "s1"), first);
    assert_eq!(fleet.http_get("s1", 8080, "/").1, "version 1");

    // `logs` reads the unit's journal through sudo: deploy is in no journal group.
    assert!(
        fleet
            .sh_ok("s1", "id -nG deploy")
            .split_whitespace()
            .all(|g| g != "systemd-journal" && g != "adm")
    );
    let (code, out, stderr) = shipit(&fleet, &["logs", "test", "-n", "50"], &inv);
    assert_eq!(code, 0, "{out}\n{stderr}");
    let logs = format!("{out}{stderr}");
    // systemd's own line for the unit, `Started demo.service - demo (<release>)`, is in its
    // journal only for a reader allowed to see the system journal.
    let started = format!("demo ({})", first.trim_start_matches("releases/"));
    assert!(
        logs.lines()
            .any(|l| l.starts_with("s1") && l.contains(&started)),
        "{logs}"
    );

    // With `app.user`, the env file is that user's (0600), which deploy cannot read: the
    // migration, run as deploy, gets its values through `sudo -n cat`.
    fleet.sh_ok("s1", "useradd --system --no-create-home demo");
    let text = std::fs::read_to_string(inventory(&fleet, &app(fleet.dir(), "3"), ""))
        .unwrap()
        .replace(
            "deploy_to = \"/opt/demo\"\n",
            "deploy_to = \"/opt/demo\"\nuser = \"demo\"\n",
        )
        .replace("[\"storage\"]", "[\"storage\", \"uploads\"]");
    let inv = write(fleet.dir(), "inv-demo.toml", &text);
    let (code, out, stderr) = shipit(&fleet, &["deploy", "test"], &inv);
    assert_eq!(code, 0, "{out}\n{stderr}");
    assert_eq!(
        fleet.sh_ok("s1", "stat -c '%U %a' /etc/demo.env").trim(),
        "demo 600"
    );
    // A new shared dir is the app user's (given through sudo: deploy cannot give files away).
    assert_eq!(
        fleet
            .sh_ok("s1", "stat -c %U /opt/demo/shared/uploads")
            .trim(),
        "demo"
    );
    assert_eq!(
        fleet.sh_ok("s1", "cat /opt/demo/current/migrated"),
        format!("deploy {}", SECRET.1)
    );
    assert_eq!(fleet.http_get("s1", 8080, "/").1, "version 3");
}

#[test]
fn without_sudo_rights_the_deploy_stops_before_switching_and_check_says_what_to_do() {
    let fleet = SystemdFleet::start(1);
    add_deploy_user(&fleet, false);
    let inv = inventory(&fleet, &app(fleet.dir(), "1"), "");

    // `check` refuses to call the host ready, and says which sudoers rule to add.
    let (code, report, stderr) = shipit(&fleet, &["check", "test", "--json"], &inv);
    assert_eq!(code, 1, "{report}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let h = &report["hosts"][0];
    assert_eq!(
        (&h["ok"], &h["sudo"]),
        (&false.into(), &false.into()),
        "{h:#}"
    );
    let problems = h["problems"].to_string();
    assert!(
        problems.contains("`deploy` cannot run commands as root on `s1` through `sudo -n`")
            && problems.contains("deploy ALL=(root) NOPASSWD: ALL"),
        "{problems}"
    );

    let (code, out, stderr) = shipit(&fleet, &["deploy", "test"], &inv);
    assert_eq!(code, 1, "{out}\n{stderr}");
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert!(
        stderr.contains("cannot run commands as root on `s1` through `sudo -n`")
            && stderr.contains("a password is required")
            && stderr.contains("deploy ALL=(root) NOPASSWD: ALL"),
        "{stderr}"
    );
    // Nothing was switched, nor written: the preflight stopped it before the lock.
    assert_eq!(current(&fleet, "s1"), "");
    assert!(
        fleet
            .sh("s1", "test -e /opt/demo || test -e /etc/demo.env")
            .status
            .code()
            == Some(1)
    );

    // Without `ssh.sudo`, `check` says deploy cannot write where the inventory needs.
    let text = std::fs::read_to_string(&inv)
        .unwrap()
        .replace("sudo = true\n", "");
    let plain = write(fleet.dir(), "plain.toml", &text);
    let (code, _, stderr) = shipit(&fleet, &["check", "test"], &plain);
    assert_eq!(code, 1, "{stderr}");
    for dir in ["/etc/systemd/system", "/etc/nginx/sites-available", "/etc"] {
        assert!(
            stderr.contains(&format!("user `deploy` cannot write to `{dir}`"))
                && stderr.contains("set `ssh.sudo = true`"),
            "{dir}: {stderr}"
        );
    }
    // Nginx is there (in /usr/sbin, which a login that is not root may not have on PATH).
    assert!(!stderr.contains("needs Nginx"), "{stderr}");

    // With sudo, a host without Nginx is not ready either, and `check` says so.
    set_sudo(&fleet, "s1", true);
    fleet.sh_ok("s1", "mv /usr/sbin/nginx /usr/sbin/nginx.away");
    let (code, _, stderr) = shipit(&fleet, &["check", "test"], &inv);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("s1: `[nginx]` needs Nginx on the host: `nginx -v` does not run"),
        "{stderr}"
    );
    assert!(!stderr.contains("sudo -n"), "sudo works now: {stderr}");
}

/// Waits up to 60 s for `script` to succeed on `host`.
fn wait_until(fleet: &SystemdFleet, host: &str, what: &str, script: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !fleet.sh(host, script).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The dead-deployer guard runs as deploy (its lock and `.shipit/` files stay deploy's) and
/// puts back, through sudo, what root changed: the unit, the env file, the site.
#[test]
fn the_guard_of_a_dead_deployer_puts_back_units_and_env_file_through_sudo() {
    let fleet = SystemdFleet::start(1);
    add_deploy_user(&fleet, true);
    let inv = inventory(&fleet, &app(fleet.dir(), "1"), "");
    let (code, out, stderr) = shipit(&fleet, &["deploy", "test"], &inv);
    assert_eq!(code, 0, "{out}\n{stderr}");
    let first = current(&fleet, "s1");
    let description = |fleet: &SystemdFleet| {
        fleet
            .sh_ok("s1", "systemctl show -p Description --value demo.service")
            .trim()
            .to_owned()
    };
    assert_eq!(
        description(&fleet),
        format!("demo ({})", first.trim_start_matches("releases/"))
    );
    let env_before = fleet.sh_ok("s1", "cat /etc/demo.env");

    // v2 changes the env file and the unit, then holds its run after the restart; the
    // deployer dies there. (The guard runs the hook again for release 1, which goes on.)
    let extra = "\n[rollout]\nconfirm_timeout = \"3s\"\n\n[[hooks]]\nat = \"after_restart\"\ncommand = \"grep -qx 1 VERSION || { touch /var/tmp/sudo-guard-hook && sleep 60; }\"\n";
    let text = std::fs::read_to_string(inventory(&fleet, &app(fleet.dir(), "2"), extra))
        .unwrap()
        .replace(
            "vars = { PORT = \"8081\" }",
            "vars = { PORT = \"8081\", V = \"2\" }",
        );
    let v2 = write(fleet.dir(), "inv-v2.toml", &text);
    let mut child = fleet
        .shipit()
        .env(SECRET.0, SECRET.1)
        .args(["deploy", "test", "-i"])
        .arg(&v2)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        &fleet,
        "s1",
        "after_restart hook",
        "test -e /var/tmp/sudo-guard-hook",
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_ne!(current(&fleet, "s1"), first);
    assert_eq!(fleet.http_get("s1", 8080, "/").1, "version 2");

    wait_until(
        &fleet,
        "s1",
        "guard history line",
        "grep -q '\"action\": *\"guard\"' /opt/demo/.shipit/history.jsonl",
    );
    assert_eq!(current(&fleet, "s1"), first);
    assert_eq!(fleet.sh_ok("s1", "cat /etc/demo.env"), env_before);
    assert_eq!(
        fleet.sh_ok("s1", "stat -c '%U %a' /etc/demo.env").trim(),
        "deploy 600"
    );
    assert_eq!(
        description(&fleet),
        format!("demo ({})", first.trim_start_matches("releases/"))
    );
    assert_eq!(fleet.http_get("s1", 8080, "/").1, "version 1");
    // What the guard wrote under `deploy_to` is deploy's: the next deploy takes the lock.
    assert_eq!(
        fleet
            .sh_ok(
                "s1",
                "cd /opt/demo/.shipit && find . -user root ! -path './previous/*' -print"
            )
            .trim(),
        ""
    );
    let (code, out, stderr) = shipit(&fleet, &["unlock", "test", "--yes"], &inv);
    assert_eq!(code, 0, "{out}\n{stderr}");
    // (`inventory` writes the same file: v3's has neither the hook nor the short timeout.)
    let inv = inventory(&fleet, &app(fleet.dir(), "3"), "");
    let (code, out, stderr) = shipit(&fleet, &["deploy", "test"], &inv);
    assert_eq!(code, 0, "{out}\n{stderr}");
    assert_eq!(fleet.http_get("s1", 8080, "/").1, "version 3");
}
