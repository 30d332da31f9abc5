//! `rollback`, the automatic switch-back and the dead-deployer guard run the `after_switch`
//! and `after_restart` hooks again for the release they switch to (issue #22), on real sshd
//! hosts: an "app" that an `after_switch` hook starts in the release's directory (it kills
//! the one before and writes, every 0.1 s, its release and the `VERSION` file of the
//! directory it runs in) runs the old code again after each of them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::Fleet;

/// The `after_switch` hook that (re)starts the app, and an `after_restart` hook that logs
/// what it was told. `/run/hooks-fail` on a host makes the `after_switch` hook fail.
const HOOKS: &str = r#"
[[hooks]]
at = "after_switch"
command = '''
test ! -e /run/hooks-fail || exit 7
if [ -f /run/app.pid ]; then kill "$(cat /run/app.pid)" 2>/dev/null; fi
setsid sh -c 'echo $$ > /run/app.pid; while :; do echo "$SHIPIT_RELEASE $(cat VERSION)" > /run/app.tmp && mv -f /run/app.tmp /run/app.out; sleep 0.1; done' </dev/null >/dev/null 2>&1 &
echo "app started for $SHIPIT_RELEASE"
'''

[[hooks]]
at = "after_restart"
command = '''echo "$SHIPIT_RELEASE $SHIPIT_PREVIOUS $(cat VERSION) $PWD" >> /run/restarts.log'''
"#;

struct Rig {
    fleet: Fleet,
    hosts: Vec<&'static str>,
}

impl Rig {
    fn new(hosts: &[&'static str]) -> Rig {
        Rig {
            fleet: Fleet::start(hosts.len()),
            hosts: hosts.to_vec(),
        }
    }

    /// An inventory deploying `VERSION` = `version`, with the hooks and `extra`.
    fn inventory(&self, version: &str, extra: &str) -> PathBuf {
        let dir = self.fleet.dir().join(format!("app-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("VERSION"), version).unwrap();
        let text = format!(
            "[artifact]\npath = \"{}\"\n[env]\npath = \"/etc/demo.env\"\nvars = {{ VERSION = \"{version}\" }}\n{HOOKS}{extra}",
            dir.display()
        );
        write(
            self.fleet.dir(),
            &format!("inv-{version}.toml"),
            &inventory_text(&self.fleet, &self.hosts, &text),
        )
    }

    fn json(&self, args: &[&str], inv: &Path) -> (i32, serde_json::Value, String) {
        let (code, stdout, stderr) = run(self
            .fleet
            .shipit()
            .args(args)
            .arg("--json")
            .arg("-i")
            .arg(inv));
        let report = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{e}: {stdout}\nstderr: {stderr}"));
        (code, report, stderr)
    }

    fn deploy_ok(&self, inv: &Path) -> String {
        let (code, report, stderr) = self.json(&["deploy", "test"], inv);
        assert_eq!(code, 0, "{stderr}");
        report["release"].as_str().unwrap().to_owned()
    }

    fn current(&self, host: &str) -> String {
        self.fleet
            .sh_ok(host, "readlink /opt/demo/current")
            .trim()
            .trim_start_matches("releases/")
            .to_owned()
    }

    /// Waits until the app on `host` says it runs `release` with `version`, and still says
    /// so a moment later (the app it replaced is gone, not writing any more).
    fn app_runs(&self, host: &str, release: &str, version: &str) {
        let want = format!("{release} {version}");
        let start = Instant::now();
        loop {
            let now = self
                .fleet
                .sh_ok(host, "cat /run/app.out 2>/dev/null || true");
            if now.trim() == want {
                std::thread::sleep(Duration::from_millis(500));
                let later = self.fleet.sh_ok(host, "cat /run/app.out");
                assert_eq!(later.trim(), want, "{host}: another app still writes");
                // The app's own `$(cat VERSION)` forks a copy of it for a moment: one
                // count of 1 in a few tries says no second app is running.
                let apps = (0..20)
                    .map(|_| {
                        let n = self
                            .fleet
                            .sh_ok(host, "pgrep -f '[a]pp[.]tmp' | wc -l")
                            .trim()
                            .to_owned();
                        if n != "1" {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        n
                    })
                    .find(|n| n == "1");
                assert_eq!(apps.as_deref(), Some("1"), "{host}: apps running");
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{host}: the app says {now:?}, not {want:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last line of `host`'s `after_restart` log: release, previous, VERSION, cwd.
    fn last_restart(&self, host: &str) -> Vec<String> {
        self.fleet
            .sh_ok(host, "tail -n 1 /run/restarts.log")
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

/// The steps of `host` in `report`: (name, status).
fn steps(report: &serde_json::Value, host: &str) -> Vec<(String, String)> {
    host_entry(report, host)["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// (a) `shipit rollback`: the app an `after_switch` hook started runs the old release again,
/// and the `after_restart` hooks ran with that release's variables, in its directory.
#[test]
fn a_rollback_runs_the_hooks_again_so_the_app_runs_the_old_release() {
    let rig = Rig::new(&["h1", "h2"]);
    let v1 = rig.deploy_ok(&rig.inventory("v1", ""));
    let inv = rig.inventory("v2", "");
    let v2 = rig.deploy_ok(&inv);
    for h in ["h1", "h2"] {
        rig.app_runs(h, &v2, "v2");
    }
    let (code, report, stderr) = rig.json(&["rollback", "test"], &inv);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["release"], v1.as_str());
    for h in ["h1", "h2"] {
        assert_eq!(rig.current(h), v1);
        rig.app_runs(h, &v1, "v1");
        assert_eq!(
            rig.last_restart(h),
            [
                v1.clone(),
                v2.clone(),
                "v1".into(),
                format!("/opt/demo/releases/{v1}")
            ]
        );
        let names: Vec<String> = steps(&report, h).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["switch", "hook", "hook", "mark_passed", "forget"],
            "{h}"
        );
        assert!(steps(&report, h).iter().all(|(_, s)| s == "ok"), "{h}");
    }
    // The hook's output is in the log, as a deploy's is (on stderr: `--json`).
    assert!(
        stderr.contains(&format!("h1 | app started for {v1}")),
        "{stderr}"
    );
}

/// (b) A deploy whose health gate fails is switched back, and the hooks run again for the
/// release it goes back to: on the host that failed (h2, in the second wave) and on the
/// canary switched before it (h1). A hook that then fails is a warning: the rest of the
/// switch-back is done, and the host counts as switched back.
#[test]
fn a_switch_back_runs_the_hooks_again_for_the_previous_release() {
    let rig = Rig::new(&["h1", "h2"]);
    let v1 = rig.deploy_ok(&rig.inventory("v1", ""));
    rig.fleet.sh_ok("h2", "touch /run/health-fail");
    let bad = rig.inventory(
        "v2",
        "[health]\ncommand = \"test \\\"$(cat VERSION)\\\" != v2 || test ! -e /run/health-fail\"\ntimeout = \"1s\"\ninterval = \"100ms\"\n",
    );
    let (code, report, stderr) = rig.json(&["deploy", "test"], &bad);
    assert_eq!(code, 3, "{stderr}");
    let v2 = report["release"].as_str().unwrap().to_owned();
    assert_eq!(host_entry(&report, "h2")["error"]["step"], "health");
    for h in ["h1", "h2"] {
        assert_eq!(rig.current(h), v1, "{h}");
        assert_eq!(host_entry(&report, h)["outcome"], "switched_back");
        // The app v2's hook started is gone; v1's runs.
        rig.app_runs(h, &v1, "v1");
        assert_eq!(
            rig.last_restart(h),
            [
                v1.clone(),
                v2.clone(),
                "v1".into(),
                format!("/opt/demo/releases/{v1}")
            ]
        );
    }
    assert!(
        stderr.contains(&format!("h1 | app started for {v1}")),
        "{stderr}"
    );

    // The `after_switch` hook fails on h1, for v3 and then for v1 when switching back: a
    // warning, the rest of the switch-back done, exit 3 (the host is back).
    rig.fleet.sh_ok("h1", "touch /run/hooks-fail");
    let (code, report, stderr) = rig.json(&["deploy", "test"], &rig.inventory("v3", ""));
    assert_eq!(code, 3, "{stderr}");
    let h1 = host_entry(&report, "h1");
    assert_eq!(h1["outcome"], "switched_back");
    assert_eq!(h1["error"]["step"], "hook");
    let warning = h1["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("the after_switch hook `test ! -e /run/hooks-fail")
            && warning.contains(&format!(
                "(run again for {v1}) failed on `h1` with exit status 7"
            )),
        "{warning}"
    );
    assert!(
        stderr.contains("warning: the after_switch hook"),
        "{stderr}"
    );
    assert!(stderr.contains("h1: warning: "), "{stderr}");
    // The rest of the switch-back was done: `current` and the env file.
    assert_eq!(rig.current("h1"), v1);
    assert!(
        rig.fleet
            .sh_ok("h1", "cat /etc/demo.env")
            .contains("VERSION=v1")
    );
    // h2, in the next wave, was never switched: its app still runs v1.
    assert_eq!(host_entry(&report, "h2")["outcome"], "not_switched");
    assert_eq!(rig.current("h2"), v1);
    rig.app_runs("h2", &v1, "v1");
}

/// (c) The guard of a deployer killed after the switch and before it confirmed switches the
/// host back and runs the hooks again: the app runs the previous release.
#[test]
fn the_guard_runs_the_hooks_again_for_the_previous_release() {
    let rig = Rig::new(&["h1"]);
    let v1 = rig.deploy_ok(&rig.inventory("v1", ""));
    // v2 holds in an `after_restart` hook of its own (not v1's) until killed.
    let slow = "[[hooks]]\nat = \"after_restart\"\ncommand = \"test \\\"$(cat VERSION)\\\" != v2 || sleep 30\"\n[rollout]\nconfirm_timeout = \"2s\"\n";
    let v2 = rig.inventory("v2", slow);
    let mut child = rig
        .fleet
        .shipit()
        .args(["deploy", "test", "-i"])
        .arg(&v2)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    // The killed run's release: the newest one.
    let v2_id = loop {
        let out = rig.fleet.sh(
            "h1",
            "id=$(grep ' v2$' /run/app.out 2>/dev/null | cut -d' ' -f1) && [ -n \"$id\" ] && pgrep -f '[s]leep 30' >/dev/null && echo \"$id\"",
        );
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "v2 never ran");
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        rig.fleet
            .sh_ok("h1", "ls /opt/demo/releases | sort | tail -n 1")
            .trim(),
        v2_id
    );
    // The guard fires (2 s after it was armed) and puts v1 back, its app included.
    rig.app_runs("h1", &v1, "v1");
    assert_eq!(rig.current("h1"), v1);
    let want = [
        v1.clone(),
        v2_id,
        "v1".into(),
        format!("/opt/demo/releases/{v1}"),
    ];
    let start = Instant::now();
    while rig.last_restart("h1") != want {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no after_restart hook for v1: {:?}",
            rig.last_restart("h1")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (c) on a host that runs systemd, where the guard is a transient unit: the app the guard's
/// `after_switch` hook starts outlives the guard's script (systemd would otherwise stop
/// what the unit started when the script ends).
#[test]
fn on_systemd_the_app_the_guard_restarts_outlives_the_guard() {
    use crate::support::systemd::SystemdFleet;
    let fleet = SystemdFleet::start(1);
    let inventory = |version: &str, extra: &str| {
        let dir = fleet.dir().join(format!("app-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("VERSION"), version).unwrap();
        let h = &fleet.hosts()[0];
        let text = format!(
            "[app]\nname = \"demo\"\ndeploy_to = \"/opt/demo\"\n\n[ssh]\nidentity = \"{}\"\nknown_hosts = \"{}\"\n\n[[hosts]]\nname = \"{}\"\naddress = \"{}\"\n\n[artifact]\npath = \"{}\"\n{HOOKS}{extra}",
            fleet.client_key().display(),
            fleet.known_hosts().display(),
            h.name,
            h.address,
            dir.display()
        );
        write(fleet.dir(), &format!("inv-{version}.toml"), &text)
    };
    let deploy = |inv: &Path| {
        let (code, stdout, stderr) = run(fleet
            .shipit()
            .args(["deploy", "test", "--json", "-i"])
            .arg(inv));
        assert_eq!(code, 0, "{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        report["release"].as_str().unwrap().to_owned()
    };
    let wait = |what: &str, script: &str| {
        let start = Instant::now();
        while !fleet.sh("s1", script).status.success() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "never saw: {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let v1 = deploy(&inventory("v1", ""));
    let slow = "[[hooks]]\nat = \"after_restart\"\ncommand = \"test \\\"$(cat VERSION)\\\" != v2 || sleep 30\"\n[rollout]\nconfirm_timeout = \"2s\"\n";
    let mut child = fleet
        .shipit()
        .args(["deploy", "test", "-i"])
        .arg(inventory("v2", slow))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait(
        "v2's app and its slow hook",
        "grep -q ' v2$' /run/app.out && pgrep -f '[s]leep 30' >/dev/null",
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The guard fired (a transient unit: systemd runs here), went back to v1 and is done.
    wait(
        "the guard's history line",
        "grep -q '\"action\":\"guard\"' /opt/demo/.shipit/history.jsonl && ! ls /opt/demo/.shipit/guard/*.sh",
    );
    assert!(
        fleet
            .sh_ok(
                "s1",
                "journalctl -q --no-pager -o cat _PID=1 | grep shipit-guard || true"
            )
            .contains("shipit-guard-"),
        "the guard was no systemd unit"
    );
    assert_eq!(
        fleet.sh_ok("s1", "readlink /opt/demo/current").trim(),
        format!("releases/{v1}")
    );
    // Well after the guard's script ended, v1's app still runs and writes.
    std::thread::sleep(Duration::from_secs(1));
    let apps = fleet.sh_ok("s1", "pgrep -f '[a]pp[.]tmp' | wc -l");
    assert_eq!(apps.trim(), "1");
    fleet.sh_ok("s1", "rm -f /run/app.out");
    wait(
        "v1's app to write again",
        &format!("grep -qx '{v1} v1' /run/app.out"),
    );
}
