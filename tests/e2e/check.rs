//! `shipit check` against real sshd hosts.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::{Fleet, free_port};

#[test]
fn check_reports_three_ready_hosts() {
    let fleet = Fleet::start(3);
    let inv = write(
        fleet.dir(),
        "inv.toml",
        &inventory_text(&fleet, &["h1", "h2", "h3"], ""),
    );
    let (code, report, stderr) = check_json(&fleet, &inv);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    for name in ["h1", "h2", "h3"] {
        let h = host_entry(&report, name);
        assert_eq!(h["ok"], true, "{h:#}");
        assert_eq!(h["reachable"], true);
        assert_eq!(h["host_key_verified"], true);
        assert_eq!(h["authenticated"], true);
        assert_eq!(h["facts"]["user"], "root");
        assert_eq!(h["facts"]["writable"], true);
        // /opt/demo does not exist yet: the write test ran in its parent.
        assert_eq!(h["facts"]["write_path"], "/opt");
        assert!(h["facts"]["free_bytes"].as_u64().unwrap() > 0);
        let tools: Vec<&str> = h["facts"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["present"] == true)
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            tools,
            [
                "sh",
                "tar",
                "gzip",
                "sha256sum",
                "mkdir",
                "ln",
                "mv",
                "mv -T"
            ]
        );
    }
    // The probe left nothing behind on the hosts.
    assert_eq!(
        fleet
            .sh_ok("h1", "ls -A /opt | grep -c shipit || true")
            .trim(),
        "0"
    );
}

#[test]
fn check_table_for_people_and_missing_tool_fails_the_host() {
    let fleet = Fleet::start(2);
    // Hide `sha256sum` on h2 only (its /usr is its own overlay).
    fleet.remove_program("h2", "sha256sum");
    let inv = write(
        fleet.dir(),
        "inv.toml",
        &inventory_text(&fleet, &["h1", "h2"], ""),
    );
    let (code, stdout, stderr) = run(fleet.shipit().args(["check", "test", "-i"]).arg(&inv));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stdout.is_empty(),
        "people's output goes to stderr: {stdout}"
    );
    assert!(stderr.contains("HOST"), "{stderr}");
    assert!(stderr.contains("h2: missing tools: sha256sum"), "{stderr}");
    assert!(stderr.contains("1 of 2 hosts ready, 1 failed"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no ANSI codes when stderr is not a terminal"
    );
}

#[test]
fn unreachable_and_silent_hosts_are_reported_within_the_connect_timeout() {
    let fleet = Fleet::start(2);
    let closed = free_port();
    // Accepts TCP but never speaks SSH: only the connect timeout can end this one.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let extra = format!(
        "[[hosts]]\nname = \"dead\"\naddress = \"127.0.0.1\"\nport = {closed}\n\n[[hosts]]\nname = \"mute\"\naddress = \"127.0.0.1\"\nport = {silent_port}\n"
    );
    let text = inventory_text(&fleet, &["h1", "h2"], &extra).replace("\"5s\"", "\"2s\"");
    let inv = write(fleet.dir(), "inv.toml", &text);
    let started = Instant::now();
    let (code, report, _) = check_json(&fleet, &inv);
    let elapsed = started.elapsed();
    assert_eq!(code, 1);
    assert_eq!(host_entry(&report, "h1")["ok"], true);
    assert_eq!(host_entry(&report, "h2")["ok"], true);
    let dead = host_entry(&report, "dead");
    assert_eq!(dead["ok"], false);
    assert_eq!(dead["reachable"], false);
    assert!(
        dead["problems"][0]
            .as_str()
            .unwrap()
            .contains("cannot reach `dead`"),
        "{dead:#}"
    );
    let mute = host_entry(&report, "mute");
    assert_eq!(mute["reachable"], false);
    assert!(
        mute["problems"][0]
            .as_str()
            .unwrap()
            .contains("did not complete the SSH handshake within 2s"),
        "{mute:#}"
    );
    // Bounded by the 2 s connect timeout, not by TCP's own minutes-long retries.
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    drop(silent);
}

#[test]
fn hosts_and_roles_select_a_subset() {
    let fleet = Fleet::start(3);
    let text = inventory_text(&fleet, &["h1", "h2", "h3"], "").replacen(
        "port = ",
        "roles = [\"web\"]\nport = ",
        1,
    );
    let inv = write(fleet.dir(), "inv.toml", &text);
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["check", "test", "--json", "--hosts", "h2,h3", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let names: Vec<&str> = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["h2", "h3"]);
    // Flags after the stage, before it, anywhere: as people type them.
    let (code, stdout, _) = run(fleet
        .shipit()
        .args(["--roles", "web", "check", "-i"])
        .arg(&inv)
        .args(["test", "--json"]));
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["hosts"].as_array().unwrap().len(), 1);
    assert_eq!(report["hosts"][0]["host"], "h1");
    let (code, _, stderr) = run(fleet
        .shipit()
        .args(["check", "test", "--hosts", "h9", "-i"])
        .arg(&inv));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("no host named `h9`") && stderr.contains("did you mean `h1`"),
        "{stderr}"
    );
}
