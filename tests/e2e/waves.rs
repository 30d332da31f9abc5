//! Fleet rollouts on a 10-host real-sshd fleet: the canary, `max_fail`, `on_failure`, and the
//! dead-deployer guard.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::Fleet;

const HOSTS: [&str; 10] = ["h1", "h2", "h3", "h4", "h5", "h6", "h7", "h8", "h9", "h10"];

fn app(fleet: &Fleet, version: &str) -> PathBuf {
    let dir = fleet.dir().join(format!("app-{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("VERSION"), version).unwrap();
    dir
}

/// The health check fails for version `bad`, and on a host whose `/etc/sick` names the
/// version (so switching back to the previous version heals it).
fn inventory(fleet: &Fleet, hosts: &[&str], app: &Path, rollout: &str) -> PathBuf {
    let extra = format!(
        "[artifact]\npath = \"{}\"\n\n[health]\ncommand = \"! grep -qx \\\"$(cat VERSION)\\\" /etc/sick 2>/dev/null && test \\\"$(cat VERSION)\\\" != bad\"\ntimeout = \"1s\"\ninterval = \"200ms\"\n\n[rollout]\n{rollout}\n",
        app.display()
    );
    write(
        fleet.dir(),
        "inv.toml",
        &inventory_text(fleet, hosts, &extra),
    )
}

fn deploy(fleet: &Fleet, inv: &Path) -> (i32, serde_json::Value, String) {
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["deploy", "test", "--json", "-i"])
        .arg(inv));
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (code, json, stderr)
}

fn versions(fleet: &Fleet, hosts: &[&str]) -> Vec<String> {
    hosts
        .iter()
        .map(|h| {
            fleet
                .sh_ok(h, "cat /opt/demo/current/VERSION 2>/dev/null || echo none")
                .trim()
                .to_owned()
        })
        .collect()
}

fn start_all_on_v1(fleet: &Fleet, rollout: &str) {
    let inv = inventory(fleet, &HOSTS, &app(fleet, "v1"), rollout);
    let (code, _, stderr) = deploy(fleet, &inv);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(versions(fleet, &HOSTS), vec!["v1"; 10]);
}

#[test]
fn a_failing_canary_stops_after_one_host_and_is_rolled_back() {
    let fleet = Fleet::start(10);
    let waves = "waves = [\"1\", \"25%\"]";
    start_all_on_v1(&fleet, waves);
    let inv = inventory(&fleet, &HOSTS, &app(&fleet, "bad"), waves);
    let (code, report, stderr) = deploy(&fleet, &inv);
    assert_eq!(code, 3, "{stderr}");
    assert_eq!(report["outcome"], "rolled_back");
    assert!(
        report["message"].as_str().unwrap().contains("wave 1 of 4"),
        "{report:#}"
    );
    assert_eq!(versions(&fleet, &HOSTS), vec!["v1"; 10]);
    assert_eq!(host_entry(&report, "h1")["rolled_back"], true);
    assert_eq!(host_entry(&report, "h1")["outcome"], "switched_back");
    for h in &HOSTS[1..] {
        // Never switched: staged, but `current` never moved and no switch-back was needed.
        let entry = host_entry(&report, h);
        assert!(entry["rolled_back"].is_null(), "{entry:#}");
        assert_eq!(entry["outcome"], "not_switched");
        assert_eq!(
            entry["current"],
            serde_json::Value::Null,
            "{h} was switched"
        );
    }
}

#[test]
fn a_failure_in_wave_two_rolls_back_wave_one_or_halts() {
    let fleet = Fleet::start(10);
    let waves = "waves = [\"1\", \"2\"]";
    start_all_on_v1(&fleet, waves);
    fleet.sh_ok("h3", "printf 'v2\\nv3\\nv4\\n' > /etc/sick");

    // on_failure = "rollback": h1 (wave 1) and h2 (wave 2) go back with h3.
    let inv = inventory(
        &fleet,
        &HOSTS,
        &app(&fleet, "v2"),
        &format!("{waves}\non_failure = \"rollback\""),
    );
    let (code, report, stderr) = deploy(&fleet, &inv);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        report["message"].as_str().unwrap().contains("wave 2 of"),
        "{report:#}"
    );
    assert_eq!(versions(&fleet, &HOSTS), vec!["v1"; 10]);
    for h in ["h1", "h2", "h3"] {
        assert_eq!(host_entry(&report, h)["rolled_back"], true, "{h}");
    }

    // on_failure = "halt": h1 and h2 keep v3, h3 is back on v1, the rest untouched.
    let inv = inventory(
        &fleet,
        &HOSTS,
        &app(&fleet, "v3"),
        &format!("{waves}\non_failure = \"halt\""),
    );
    let (code, report, stderr) = deploy(&fleet, &inv);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        report["message"].as_str().unwrap().contains("halt"),
        "{report:#}"
    );
    let mut expect = vec!["v3", "v3", "v1"];
    expect.extend(vec!["v1"; 7]);
    assert_eq!(versions(&fleet, &HOSTS), expect);

    // max_fail tolerates one sick host: every wave runs, h3 alone is switched back.
    let inv = inventory(
        &fleet,
        &HOSTS,
        &app(&fleet, "v4"),
        &format!("{waves}\nmax_fail = 1"),
    );
    let (code, report, stderr) = deploy(&fleet, &inv);
    assert_eq!(code, 3, "a rolled-back host never exits 0: {stderr}");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("within `max_fail`"),
        "{report:#}"
    );
    let mut expect = vec!["v4", "v4", "v1"];
    expect.extend(vec!["v4"; 7]);
    assert_eq!(versions(&fleet, &HOSTS), expect);
}

#[test]
fn the_guard_reverts_a_host_when_the_deployer_dies_after_its_switch() {
    let fleet = Fleet::start(2);
    let hosts = ["h1", "h2"];
    // A slow health check holds the deployer between the switch and its confirmation.
    let slow = |fleet: &Fleet, version: &str| {
        let extra = format!(
            "[artifact]\npath = \"{}\"\n\n[health]\ncommand = \"sleep 3\"\ntimeout = \"2s\"\n\n[rollout]\nwaves = [\"1\"]\nconfirm_timeout = \"1s\"\n",
            app(fleet, version).display()
        );
        write(
            fleet.dir(),
            "slow.toml",
            &inventory_text(fleet, &hosts, &extra),
        )
    };
    let inv = slow(&fleet, "v1");
    let text = std::fs::read_to_string(&inv)
        .unwrap()
        .replace("command = \"sleep 3\"", "command = \"true\"");
    let quick = write(fleet.dir(), "quick.toml", &text);
    let (code, _, stderr) = deploy(&fleet, &quick);
    assert_eq!(code, 0, "{stderr}");
    let v1 = fleet.sh_ok("h1", "readlink /opt/demo/current");

    let inv = slow(&fleet, "v2");
    let mut child = fleet
        .shipit()
        .args(["deploy", "test", "-i"])
        .arg(&inv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while fleet.sh_ok("h1", "readlink /opt/demo/current") == v1 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "h1 was never switched"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        fleet.sh_ok("h1", "cat /opt/demo/current/VERSION"),
        "v2",
        "killed between switch and confirm"
    );
    // The guard fires after confirm_timeout + the health timeout (3 s) and switches back.
    let start = Instant::now();
    while fleet.sh_ok("h1", "readlink /opt/demo/current") != v1 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the guard did not revert h1"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let history = fleet.sh_ok("h1", "tail -n 1 /opt/demo/.shipit/history.jsonl");
    assert!(history.contains("\"action\":\"guard\""), "{history}");
    assert_eq!(
        fleet.sh_ok("h2", "readlink /opt/demo/current"),
        v1,
        "h2 was never switched"
    );
}

/// A run whose hosts would not fit under the soft limit on open files it was given raises
/// it (up to the hard limit) instead of failing hosts with "too many open files".
#[test]
fn a_fleet_larger_than_the_open_files_limit_deploys() {
    use std::os::unix::process::CommandExt;
    let fleet = Fleet::start(HOSTS.len());
    let inv = inventory(&fleet, &HOSTS, &app(&fleet, "v1"), "parallel = 10");
    let mut cmd = fleet.shipit();
    cmd.args(["deploy", "test", "--json", "-i"]).arg(&inv);
    // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            // Room for the run itself, not for ten more sockets.
            limit.rlim_cur = 24;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            Ok(())
        });
    }
    let (code, stdout, stderr) = run(&mut cmd);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(versions(&fleet, &HOSTS), vec!["v1"; 10]);
}
