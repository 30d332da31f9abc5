//! Blue-green deploys (issue #19: a web release takes traffic only once it is healthy), with
//! `examples/blue-green/` as the repository ships it, deployed by the real binary onto a host
//! that boots real systemd and Nginx, under an open-loop load of 100 requests per second
//! through the host's Nginx (`support::load`): redeploys lose no request, a broken release
//! never answers one, a plain restart of the same app does lose requests (the control that
//! proves the load can see failures), a `keep_idle` rollback reuses the running old instance,
//! and the dead-deployer guard puts Nginx back on it.
//!
//! The inventory is the example's `shop.toml` with only what points at a place changed
//! (`[ssh]`, `[[hosts]]`, absolute paths, the release deployed) and, where a test waits for
//! it, a shorter drain or health timeout. Each test uses version strings of its own.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{run, write};
use crate::support::load::{Load, LoadReport};
use crate::support::systemd::SystemdFleet;

/// The example, as the repository ships it.
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/blue-green");
/// Its inventory's relative paths are relative to the repository root.
const REPO: &str = env!("CARGO_MANIFEST_DIR");
const HOST: &str = "s1";
/// The example's `app.deploy_to`.
const DEPLOY_TO: &str = "/opt/shop";
/// The example's `ports`.
const PORTS: [u16; 2] = [3001, 3002];
/// What the load asks for: the host's Nginx, port 80.
const URL: &str = "http://127.0.0.1/version";
const RATE: u32 = 100;
/// How long a test waits for something a working deploy or guard does soon (a hook to start,
/// a guard to fire). Only a bound on a broken run: nothing here measures speed.
const PATIENCE: Duration = Duration::from_secs(90);

/// A host provisioned as the example's README asks: the `shop` user, no default Nginx site.
struct Shop {
    fleet: SystemdFleet,
}

impl Shop {
    fn provision() -> Shop {
        let fleet = SystemdFleet::start(1);
        fleet.sh_ok(
            HOST,
            "useradd --system --user-group --no-create-home --shell /usr/sbin/nologin shop && \
             rm /etc/nginx/sites-enabled/default",
        );
        Shop { fleet }
    }

    /// A copy of the example's app saying `version`; `broken`: with a `BROKEN` file, so it
    /// refuses to start.
    fn release(&self, version: &str, broken: bool) -> PathBuf {
        let dir = self.fleet.dir().join(format!("app-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(Path::new(EXAMPLE).join("app")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        std::fs::write(dir.join("VERSION"), format!("{version}\n")).unwrap();
        if broken {
            std::fs::write(dir.join("BROKEN"), "refuse to start\n").unwrap();
        }
        dir
    }

    /// The example's inventory, pointed at the test host and deploying `version`, then
    /// changed by `edit`.
    fn inventory(
        &self,
        version: &str,
        broken: bool,
        edit: impl FnOnce(&mut toml::Table),
    ) -> PathBuf {
        let app = self.release(version, broken);
        let text = std::fs::read_to_string(Path::new(EXAMPLE).join("shop.toml")).unwrap();
        let mut inv: toml::Table = toml::from_str(&text).expect("shop.toml parses");
        let mut ssh = toml::Table::new();
        ssh.insert("user".into(), "root".into());
        ssh.insert("identity".into(), path_value(&self.fleet.client_key()));
        ssh.insert("known_hosts".into(), path_value(&self.fleet.known_hosts()));
        inv.insert("ssh".into(), ssh.into());
        let mut host = toml::Table::new();
        host.insert("name".into(), HOST.into());
        host.insert(
            "address".into(),
            self.fleet.host(HOST).address.as_str().into(),
        );
        inv.insert("hosts".into(), toml::Value::Array(vec![host.into()]));
        table(&mut inv, "artifact").insert("path".into(), path_value(&app));
        let template = absolute(unit(&mut inv)["template"].as_str().unwrap());
        unit(&mut inv).insert("template".into(), template);
        let template = absolute(table(&mut inv, "nginx")["template"].as_str().unwrap());
        table(&mut inv, "nginx").insert("template".into(), template);
        edit(&mut inv);
        write(
            self.fleet.dir(),
            &format!("shop-{version}.toml"),
            &toml::to_string(&inv).expect("serialize the inventory"),
        )
    }

    /// `shipit <args> -i inv --json`: (exit code, report, stderr).
    fn shipit(&self, args: &[&str], inv: &Path) -> (i32, serde_json::Value, String) {
        let (code, stdout, stderr) = run(self
            .fleet
            .shipit()
            .args(args)
            .arg("-i")
            .arg(inv)
            .arg("--json"));
        let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("shipit {args:?}: stdout is not JSON ({e}):\n{stdout}\nstderr:\n{stderr}")
        });
        (code, report, stderr)
    }

    fn deploy_ok(&self, inv: &Path) -> serde_json::Value {
        let (code, report, stderr) = self.shipit(&["deploy", "test"], inv);
        assert_eq!(code, 0, "{report:#}\n{stderr}");
        report
    }

    fn sh(&self, script: &str) -> String {
        self.fleet.sh_ok(HOST, script).trim().to_owned()
    }

    /// What Nginx serves on the host: `GET /version` on port 80.
    fn served(&self) -> String {
        self.sh("curl -sS --max-time 10 http://127.0.0.1/version")
    }

    /// `<deploy_to>/.shipit/live-port`.
    fn live_port(&self) -> u16 {
        let text = self.sh(&format!("cat {DEPLOY_TO}/.shipit/live-port"));
        text.parse()
            .unwrap_or_else(|_| panic!("live-port is not a port: {text:?}"))
    }

    /// `systemctl is-active` of the instance on `port`.
    fn state(&self, port: u16) -> String {
        let out = self
            .fleet
            .sh(HOST, &format!("systemctl is-active shop@{port}.service"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn main_pid(&self, port: u16) -> String {
        self.sh(&format!(
            "systemctl show --property=MainPID --value shop@{port}.service"
        ))
    }

    /// What `current` points at.
    fn current(&self) -> String {
        self.sh(&format!("readlink {DEPLOY_TO}/current"))
    }

    /// Nginx sends every request to the instance on `live`, which runs `version`; the other
    /// instance is stopped.
    fn assert_live(&self, live: u16, version: &str) {
        assert_eq!(self.live_port(), live);
        assert_eq!(self.served(), version, "through Nginx");
        assert_eq!(
            self.sh(&format!(
                "curl -sS --max-time 10 http://127.0.0.1:{live}/version"
            )),
            version,
            "the instance on {live}"
        );
        assert_eq!(self.state(live), "active", "shop@{live}");
        assert_stopped(&self.state(other(live)), other(live));
    }

    /// The host's deploy state, for a failure's message: history, guards, instances, site.
    fn dump(&self) -> String {
        let out = self.fleet.sh(
            HOST,
            &format!(
                "cd {DEPLOY_TO}; set -x; readlink current; cat .shipit/live-port; \
                 tail -n 3 .shipit/history.jsonl; ls -la .shipit/guard; \
                 systemctl list-units --all --no-pager 'shop@*' 'shipit-guard-*'; \
                 journalctl --no-pager -n 40 -u 'shipit-guard-*' -u 'shop@*'; \
                 grep -n proxy_pass /etc/nginx/sites-available/shop"
            ),
        );
        format!(
            "--- {HOST} ---\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Polls `script` on the host until it succeeds.
    fn wait_until(&self, what: &str, script: &str) {
        let start = Instant::now();
        while !self.fleet.sh(HOST, script).status.success() {
            assert!(
                start.elapsed() < PATIENCE,
                "never saw: {what}\n{}",
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn path_value(path: &Path) -> toml::Value {
    path.display().to_string().into()
}

fn absolute(relative: &str) -> toml::Value {
    Path::new(REPO).join(relative).display().to_string().into()
}

fn table<'t>(inv: &'t mut toml::Table, key: &str) -> &'t mut toml::Table {
    inv.get_mut(key)
        .and_then(toml::Value::as_table_mut)
        .unwrap_or_else(|| panic!("no [{key}] in the inventory"))
}

/// The first `[[key]]` table.
fn first<'t>(inv: &'t mut toml::Table, key: &str) -> &'t mut toml::Table {
    inv.get_mut(key)
        .and_then(toml::Value::as_array_mut)
        .and_then(|a| a.first_mut())
        .and_then(toml::Value::as_table_mut)
        .unwrap_or_else(|| panic!("no [[{key}]] in the inventory"))
}

/// The example's one `[[systemd]]` unit.
fn unit(inv: &mut toml::Table) -> &mut toml::Table {
    first(inv, "systemd")
}

fn drain(inv: &mut toml::Table, drain: &str) {
    unit(inv).insert("drain".into(), drain.into());
}

fn health_timeout(inv: &mut toml::Table, timeout: &str) {
    first(inv, "health").insert("timeout".into(), timeout.into());
}

/// The other port of the pair.
fn other(port: u16) -> u16 {
    assert!(PORTS.contains(&port), "{port} is not one of {PORTS:?}");
    PORTS[0] + PORTS[1] - port
}

fn assert_stopped(state: &str, port: u16) {
    // "failed" too: a stopped instance of a release that crashed keeps its last result.
    assert!(
        state == "inactive" || state == "failed",
        "shop@{port} should be stopped, is {state:?}"
    );
}

fn assert_no_failures(report: &LoadReport, during: &str) {
    assert!(report.sent > 0, "{during}: no request was sent: {report}");
    assert_eq!(report.failed, 0, "{during}: requests failed: {report}");
}

/// The report of `step` on the run's only host.
fn step<'r>(report: &'r serde_json::Value, step: &str) -> &'r serde_json::Value {
    report["hosts"][0]["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps in {report:#}"))
        .iter()
        .find(|s| s["step"] == step)
        .unwrap_or_else(|| panic!("no step {step} in {report:#}"))
}

#[test]
fn redeploys_under_load_lose_no_request() {
    let shop = Shop::provision();
    let versions = [
        "bg-redeploy-1",
        "bg-redeploy-2",
        "bg-redeploy-3",
        "bg-redeploy-4",
    ];
    let inventory = |v: &str| shop.inventory(v, false, |inv| drain(inv, "2s"));
    shop.deploy_ok(&inventory(versions[0]));
    let mut live = shop.live_port();
    shop.assert_live(live, versions[0]);

    let load = Load::start(&shop.fleet, HOST, URL, RATE);
    let mut ports = vec![live];
    for v in &versions[1..] {
        shop.deploy_ok(&inventory(v));
        // The deploy returns after the drain and `stop_old`: only the new instance runs.
        live = other(live);
        shop.assert_live(live, v);
        ports.push(shop.live_port());
    }
    let report = load.stop();

    assert_no_failures(&report, "three redeploys");
    assert_eq!(report.bodies_seen(), versions, "{report}");
    assert_eq!(report.last_body(), Some(versions[3]), "{report}");
    assert_eq!(shop.served(), versions[3]);
    // The live port alternates between the two.
    for pair in ports.windows(2) {
        assert_ne!(pair[0], pair[1], "live ports in turn: {ports:?}");
    }
    eprintln!("blue-green redeploys: {report}");
}

#[test]
fn a_broken_release_never_takes_a_request() {
    let shop = Shop::provision();
    shop.deploy_ok(&shop.inventory("bg-broken-1", false, |inv| drain(inv, "2s")));
    let live = shop.live_port();
    shop.assert_live(live, "bg-broken-1");
    let site = shop.sh("sha256sum /etc/nginx/sites-available/shop");
    let current = shop.current();

    // Its instance exits 1 at boot (systemd restarts it, in vain): `check_idle` fails once it
    // sees the instance is not active, or at the latest when the shortened timeout ends.
    let broken = shop.inventory("bg-broken-2", true, |inv| {
        drain(inv, "2s");
        health_timeout(inv, "6s");
    });
    let load = Load::start(&shop.fleet, HOST, URL, RATE);
    let (code, report, stderr) = shop.shipit(&["deploy", "test"], &broken);
    let load = load.stop();

    assert_eq!(code, 3, "{report:#}\n{stderr}");
    assert_eq!(report["outcome"], "rolled_back", "{report:#}");
    assert_eq!(
        report["hosts"][0]["error"]["step"], "check_idle",
        "{report:#}"
    );
    assert_eq!(
        step(&report, "check_idle")["status"],
        "failed",
        "{report:#}"
    );
    assert_eq!(
        step(&report, "point_site")["status"],
        "not_run",
        "{report:#}"
    );
    assert_no_failures(&load, "a broken release");
    assert_eq!(load.count("bg-broken-2"), 0, "{load}");
    assert_eq!(load.bodies_seen(), ["bg-broken-1"], "{load}");
    // Nginx never moved; the idle instance is stopped; `current` is back.
    assert_eq!(shop.sh("sha256sum /etc/nginx/sites-available/shop"), site);
    assert_eq!(shop.current(), current);
    shop.assert_live(live, "bg-broken-1");
    assert_eq!(shop.main_pid(other(live)), "0");
    eprintln!("blue-green broken release: {load}");
}

#[test]
fn a_plain_restart_under_the_same_load_loses_requests() {
    // The control: the same app, one plain unit on a fixed port, restarted in place. Its
    // instance is down for its boot (2 s), and the load must see that.
    let shop = Shop::provision();
    let unit_text = std::fs::read_to_string(Path::new(EXAMPLE).join("deploy/shop@.service"))
        .unwrap()
        .replace("%i", "3001");
    let unit_file = write(shop.fleet.dir(), "shop.service", &unit_text);
    let site_text = std::fs::read_to_string(Path::new(EXAMPLE).join("deploy/site.conf"))
        .unwrap()
        .replace("{{ port }}", "3001");
    let site_file = write(shop.fleet.dir(), "plain-site.conf", &site_text);
    let plain = |version: &str| {
        shop.inventory(version, false, |inv| {
            let mut unit = toml::Table::new();
            unit.insert("unit".into(), "shop.service".into());
            unit.insert("template".into(), path_value(&unit_file));
            inv.insert("systemd".into(), toml::Value::Array(vec![unit.into()]));
            table(inv, "nginx").insert("template".into(), path_value(&site_file));
            first(inv, "health").insert("url".into(), "http://127.0.0.1:3001/healthz".into());
        })
    };
    shop.deploy_ok(&plain("bg-plain-1"));
    assert_eq!(shop.served(), "bg-plain-1");

    let load = Load::start(&shop.fleet, HOST, URL, RATE);
    shop.deploy_ok(&plain("bg-plain-2"));
    let report = load.stop();

    assert!(
        report.failed > 0,
        "a plain restart lost no request: {report}"
    );
    assert_eq!(shop.served(), "bg-plain-2");
    eprintln!("plain restart: {report}");
}

#[test]
fn a_keep_idle_rollback_reuses_the_running_old_instance() {
    let shop = Shop::provision();
    let keep_idle = |inv: &mut toml::Table| {
        drain(inv, "2s");
        unit(inv).insert("keep_idle".into(), true.into());
    };
    shop.deploy_ok(&shop.inventory("bg-keep-1", false, keep_idle));
    let old = shop.live_port();
    let v2 = shop.inventory("bg-keep-2", false, keep_idle);
    shop.deploy_ok(&v2);
    let new = shop.live_port();
    assert_eq!(new, other(old));
    assert_eq!(shop.served(), "bg-keep-2");
    // Kept: the old instance still runs the old release.
    assert_eq!(shop.state(old), "active");
    assert_eq!(
        shop.sh(&format!(
            "curl -sS --max-time 10 http://127.0.0.1:{old}/version"
        )),
        "bg-keep-1"
    );
    let pid = shop.main_pid(old);

    let load = Load::start(&shop.fleet, HOST, URL, RATE);
    let (code, report, stderr) = shop.shipit(&["rollback", "test"], &v2);
    let load = load.stop();

    assert_eq!(code, 0, "{report:#}\n{stderr}");
    let start = step(&report, "start_idle");
    assert!(
        start["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("kept")),
        "{report:#}"
    );
    assert_eq!(shop.main_pid(old), pid, "the old instance was restarted");
    assert_eq!(shop.live_port(), old);
    assert_eq!(shop.served(), "bg-keep-1");
    assert_no_failures(&load, "a keep_idle rollback");
    assert_eq!(load.bodies_seen(), ["bg-keep-2", "bg-keep-1"], "{load}");
    assert_eq!(load.last_body(), Some("bg-keep-1"), "{load}");
    eprintln!("blue-green keep_idle rollback: {load}");
}

#[test]
fn the_dead_deployer_guard_puts_nginx_back_on_the_old_instance() {
    let shop = Shop::provision();
    shop.deploy_ok(&shop.inventory("bg-guard-1", false, |inv| drain(inv, "2s")));
    let old = shop.live_port();
    let current = shop.current();
    // v2 holds its run after Nginx moved (the hook); the deployer dies there.
    let v2 = shop.inventory("bg-guard-2", false, |inv| {
        drain(inv, "2s");
        health_timeout(inv, "8s");
        let mut hook = toml::Table::new();
        hook.insert("at".into(), "after_restart".into());
        // Only v2's: the guard runs the hook again for v1 when it goes back.
        hook.insert(
            "command".into(),
            "grep -qx bg-guard-1 VERSION || { touch /var/tmp/bg-guard-hook && sleep 60; }".into(),
        );
        inv.insert("hooks".into(), toml::Value::Array(vec![hook.into()]));
        let mut rollout = toml::Table::new();
        rollout.insert("confirm_timeout".into(), "3s".into());
        inv.insert("rollout".into(), rollout.into());
    });

    let load = Load::start(&shop.fleet, HOST, URL, RATE);
    let mut child = shop
        .fleet
        .shipit()
        .args(["deploy", "test", "-i"])
        .arg(&v2)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    shop.wait_until("the after_restart hook", "test -e /var/tmp/bg-guard-hook");
    child.kill().unwrap();
    child.wait().unwrap();
    // The new instance had taken traffic when the deployer died.
    assert_eq!(shop.live_port(), other(old));
    assert_eq!(shop.served(), "bg-guard-2");

    shop.wait_until(
        "the guard's history line",
        &format!("grep -q '\"action\": *\"guard\"' {DEPLOY_TO}/.shipit/history.jsonl"),
    );
    // The guard stops the new instance after the drain, like a deploy stops the old one.
    shop.wait_until(
        "the guard to stop the new instance",
        &format!("! systemctl is-active --quiet shop@{}.service", other(old)),
    );
    let report = load.stop();

    assert_eq!(shop.current(), current);
    shop.assert_live(old, "bg-guard-1");
    assert_no_failures(&report, "the guard's revert");
    assert_eq!(
        report.bodies_seen(),
        ["bg-guard-1", "bg-guard-2"],
        "{report}"
    );
    assert_eq!(report.last_body(), Some("bg-guard-1"), "{report}");
    eprintln!("blue-green guard: {report}");
}
