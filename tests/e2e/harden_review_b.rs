//! Review of the hardening (issue #17) by cases its first tests did not see, on real sshd
//! hosts: `shipit backup` exits 5 when locked, like every command that takes the lock; a
//! release the operator rolled back from is never again a default rollback target, however
//! its deploy's history reads.

use std::path::{Path, PathBuf};

use crate::common::*;
use crate::support::Fleet;

fn inventory(fleet: &Fleet, hosts: &[&str], version: &str, extra: &str) -> PathBuf {
    let dir = fleet.dir().join(format!("app-{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("VERSION"), version).unwrap();
    let text = format!("[artifact]\npath = \"{}\"\n{extra}", dir.display());
    let text = inventory_text(fleet, hosts, &text).replace(
        "deploy_to = \"/opt/demo\"",
        "deploy_to = \"/opt/demo\"\nkeep_releases = 10",
    );
    write(fleet.dir(), &format!("inv-{version}.toml"), &text)
}

fn json(fleet: &Fleet, args: &[&str], inv: &Path) -> (i32, serde_json::Value, String) {
    let (code, stdout, stderr) = run(fleet.shipit().args(args).arg("--json").arg("-i").arg(inv));
    let report =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\nstderr: {stderr}"));
    (code, report, stderr)
}

fn deploy_ok(fleet: &Fleet, inv: &Path) -> String {
    let (code, report, stderr) = json(fleet, &["deploy", "test"], inv);
    assert_eq!(code, 0, "{stderr}");
    report["release"].as_str().unwrap().to_owned()
}

fn version(fleet: &Fleet, host: &str) -> String {
    fleet
        .sh_ok(host, "cat /opt/demo/current/VERSION")
        .trim()
        .to_owned()
}

/// README: exit 5 when locked, for `deploy`, `rollback`, `backup` and `task` alike; `backup`
/// exited 1.
#[test]
fn backup_exits_5_when_locked() {
    let fleet = Fleet::start(1);
    let backup =
        "[backup]\nkind = \"command\"\ncommand = \"echo data\"\ndir = \"/var/backups/demo\"\n";
    let inv = inventory(&fleet, &["h1"], "v1", backup);
    deploy_ok(&fleet, &inv);
    fleet.sh_ok(
        "h1",
        r#"mkdir /opt/demo/.shipit/lock && echo '{"token":"other","user":"bob","machine":"m","pid":1,"command":"shipit deploy test","started":"2026-01-01T00:00:00Z","started_unix":1767225600}' > /opt/demo/.shipit/lock/owner.json"#,
    );
    let (code, stdout, stderr) = run(fleet.shipit().args(["backup", "test", "-i"]).arg(&inv));
    assert_eq!(code, 5, "{stdout}\n{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("locked by"),
        "{stdout}\n{stderr}"
    );
    assert!(succeeds(
        &fleet,
        "h1",
        "grep -q other /opt/demo/.shipit/lock/owner.json"
    ));
    // Without the lock, it makes one (exit 0).
    fleet.sh_ok("h1", "rm -r /opt/demo/.shipit/lock");
    let (code, stdout, stderr) = run(fleet.shipit().args(["backup", "test", "-i"]).arg(&inv));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
}

/// v1, v2 deployed; the operator rolls back from v2 (to v1); v3 deployed. A default
/// rollback from v3 goes to v1, never back to v2, which the fleet turned away from (its
/// deploy's history line still says `success`): it stays reachable with `--to`, and passes
/// again when it does.
#[test]
fn a_release_rolled_back_from_is_no_default_target_until_it_passes_again() {
    let fleet = Fleet::start(2);
    let hosts = ["h1", "h2"];
    let v1_id = deploy_ok(&fleet, &inventory(&fleet, &hosts, "v1", ""));
    let v2 = inventory(&fleet, &hosts, "v2", "");
    let v2_id = deploy_ok(&fleet, &v2);
    let (code, report, stderr) = json(&fleet, &["rollback", "test"], &v2);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["release"], v1_id.as_str());
    let v3 = inventory(&fleet, &hosts, "v3", "");
    deploy_ok(&fleet, &v3);

    let (code, releases, stderr) = json(&fleet, &["releases", "test"], &v3);
    assert_eq!(code, 0, "{stderr}");
    let row = releases["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["release"] == v2_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["rollback_on"], serde_json::json!([]), "{row:#}");

    let (code, report, stderr) = json(&fleet, &["rollback", "test"], &v3);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["release"], v1_id.as_str(), "went back to v2");
    for h in hosts {
        assert_eq!(version(&fleet, h), "v1", "{h}");
    }
    // `--to` still reaches it; once it passed again, it is a target like any other.
    let (code, _, stderr) = json(&fleet, &["rollback", "test", "--to", &v2_id], &v3);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(version(&fleet, "h1"), "v2");
    deploy_ok(&fleet, &v3);
    let (code, report, stderr) = json(&fleet, &["rollback", "test"], &v3);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["release"], v2_id.as_str());
}

/// The env file a run staged vanishes before its switch (`shipit unlock` while the run
/// held the lock, or by hand): the switch stops and puts the host back, instead of making
/// the new release live with the old secrets and reporting success.
#[test]
fn a_staged_env_file_gone_at_the_switch_stops_it() {
    let fleet = Fleet::start(1);
    let env =
        |v: &str| format!("[env]\npath = \"/etc/demo.env\"\nvars = {{ SECRET_VALUE = \"{v}\" }}\n");
    deploy_ok(
        &fleet,
        &inventory(&fleet, &["h1"], "v1", &env("first-value")),
    );
    let hook = "[[hooks]]\nat = \"before_switch\"\ncommand = \"find /etc -maxdepth 1 -name 'demo.env.shipit-next-*' -delete\"\n";
    let v2 = inventory(
        &fleet,
        &["h1"],
        "v2",
        &format!("{}{hook}", env("second-value")),
    );
    let (code, stdout, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&v2));
    assert_ne!(code, 0, "{stdout}\n{stderr}");
    assert!(stderr.contains("staged, is gone"), "{stderr}");
    assert_eq!(version(&fleet, "h1"), "v1");
    let live = fleet.sh_ok("h1", "cat /etc/demo.env");
    assert!(live.contains("first-value"), "{live}");
    // A deploy whose env did not change stages nothing and needs nothing staged.
    let v3 = inventory(
        &fleet,
        &["h1"],
        "v3",
        &format!("{}{hook}", env("first-value")),
    );
    deploy_ok(&fleet, &v3);
    assert_eq!(version(&fleet, "h1"), "v3");
}

/// Two `[[hosts]]` that reach the same machine over SSH (the local transport refuses this at
/// load; an address cannot tell): the second finds the lock this very run took through the
/// first. That is no other run's lock (exit 5, "locked by" itself) but a setup error that
/// says so; nothing is changed and no lock stays.
#[test]
fn two_hosts_reaching_one_machine_are_told_apart_from_another_runs_lock() {
    let fleet = Fleet::start(1);
    let port = fleet.host("h1").port;
    let again =
        format!("[[hosts]]\nname = \"h1-again\"\naddress = \"127.0.0.1\"\nport = {port}\n\n");
    let inv = inventory(&fleet, &["h1"], "v1", &again);
    let (code, stdout, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&inv));
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("locked by this run through another host"),
        "{stderr}"
    );
    assert!(!succeeds(&fleet, "h1", "test -e /opt/demo/.shipit/lock"));
    assert!(!succeeds(&fleet, "h1", "test -e /opt/demo/current"));
}

/// A run killed after arming its guard and before it switched anything (here in its
/// `before_switch` hook): the guard that fires finds `current` never moved and nothing saved
/// to put back, so it restarts nothing and records no revert (history said the host was
/// switched back when it never was switched).
#[test]
fn a_guard_of_a_run_killed_before_it_switched_records_no_revert() {
    use std::time::{Duration, Instant};
    let fleet = Fleet::start(1);
    deploy_ok(&fleet, &inventory(&fleet, &["h1"], "v1", ""));
    let extra = "[[hooks]]\nat = \"before_switch\"\ncommand = \"sleep 30\"\n[rollout]\nconfirm_timeout = \"1s\"\n";
    let v2 = inventory(&fleet, &["h1"], "v2", extra);
    let mut child = fleet
        .shipit()
        .args(["deploy", "test", "-i"])
        .arg(&v2)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wait = |what: &str, script: &str| {
        let start = Instant::now();
        while !succeeds(&fleet, "h1", script) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "never saw: {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("the hook", "pgrep -f '[s]leep 30' >/dev/null");
    child.kill().unwrap();
    child.wait().unwrap();
    wait(
        "the guard to fire",
        "for d in /opt/demo/.shipit/guard/*.decision; do [ \"$(readlink \"$d\")\" = fired ] && exit 0; done; exit 1",
    );
    // Its script is done (it removes itself).
    wait(
        "the guard to finish",
        "! ls /opt/demo/.shipit/guard/*.sh >/dev/null 2>&1",
    );
    assert_eq!(version(&fleet, "h1"), "v1");
    let history = fleet.sh_ok("h1", "cat /opt/demo/.shipit/history.jsonl");
    assert!(!history.contains("\"action\":\"guard\""), "{history}");
}
