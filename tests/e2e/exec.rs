//! `shipit exec` against real sshd hosts.

use crate::common::*;
use crate::support::Fleet;

#[test]
fn exec_runs_on_every_host_with_prefixed_output() {
    let fleet = Fleet::start(3);
    let inv = write(
        fleet.dir(),
        "inv.toml",
        &inventory_text(&fleet, &["h1", "h2", "h3"], ""),
    );
    let (code, stdout, stderr) = run(fleet.shipit().args(["exec", "test", "-i"]).arg(&inv).args([
        "--",
        "echo",
        "from-$(hostname)",
        "|",
        "tr",
        "a-z",
        "A-Z",
    ]));
    assert_eq!(code, 0, "{stderr}");
    for n in 1..=3 {
        assert!(stdout.contains(&format!("h{n} | FROM-H{n}\n")), "{stdout}");
    }
    assert!(stderr.contains("3 of 3 hosts succeeded"), "{stderr}");
}

#[test]
fn exec_fails_when_one_host_fails_and_reports_all() {
    let fleet = Fleet::start(3);
    let inv = write(
        fleet.dir(),
        "inv.toml",
        &inventory_text(&fleet, &["h1", "h2", "h3"], ""),
    );
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["exec", "test", "--json", "-i"])
        .arg(&inv)
        .args([
            "--",
            "echo out-$(hostname); echo err-$(hostname) >&2; test $(hostname) != h2",
        ]));
    assert_eq!(code, 1, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let hosts = report["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3);
    for h in hosts {
        let name = h["host"].as_str().unwrap();
        assert_eq!(h["stdout"], format!("out-{name}\n"));
        assert_eq!(h["stderr"], format!("err-{name}\n"));
        let failed = name == "h2";
        assert_eq!(h["ok"], !failed);
        assert_eq!(h["exit_code"], if failed { 1 } else { 0 });
    }
}

#[test]
fn exec_feeds_no_stdin_and_keeps_one_connection_per_host() {
    let fleet = Fleet::start(1);
    let inv = write(
        fleet.dir(),
        "inv.toml",
        &inventory_text(&fleet, &["h1"], ""),
    );
    // `cat` must see EOF at once rather than hang on the deployer's stdin.
    let (code, _, stderr) = run(fleet
        .shipit()
        .args(["exec", "test", "-i"])
        .arg(&inv)
        .args(["--", "cat; echo done"]));
    assert_eq!(code, 0, "{stderr}");
    let accepted = fleet.host("h1").log().matches("Accepted publickey").count();
    assert_eq!(accepted, 1, "one connection: {}", fleet.host("h1").log());
}
