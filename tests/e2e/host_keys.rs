//! Strict host keys: unknown and changed keys are refused, hashed entries and pins work.

use std::process::Command;

use crate::common::*;
use crate::support::{Fleet, FleetOptions};

#[test]
fn unknown_host_key_is_refused_with_fingerprint_and_line_to_add() {
    let fleet = Fleet::start(1);
    let h1 = fleet.host("h1");
    let empty = write(fleet.dir(), "empty_known_hosts", "");
    let text = inventory_trusting(&fleet, &["h1"], &empty);
    let inv = write(fleet.dir(), "inv.toml", &text);
    let (code, stdout, stderr) = run(fleet.shipit().args(["check", "test", "-i"]).arg(&inv));
    assert_eq!(code, 1, "{stdout}{stderr}");
    let fingerprint = openssh_fingerprint(fleet.dir(), &h1.host_keys[0]);
    assert!(stderr.contains("is not known"), "{stderr}");
    assert!(
        stderr.contains(&fingerprint),
        "expected {fingerprint} in:\n{stderr}"
    );
    let line = format!("[127.0.0.1]:{} {}", h1.port, h1.host_keys[0]);
    assert!(
        stderr.contains(&line),
        "expected the line to add in:\n{stderr}"
    );
    // No trust on first use: the file is untouched and the next run still refuses.
    assert_eq!(std::fs::read_to_string(&empty).unwrap(), "");
    let (code, _, _) = run(fleet.shipit().args(["check", "test", "-i"]).arg(&inv));
    assert_eq!(code, 1);
    // The refusal happened before authentication: the host never saw a login.
    assert!(!h1.log().contains("Accepted publickey"), "{}", h1.log());
}

#[test]
fn changed_host_key_is_refused_loudly() {
    let fleet = Fleet::start(2);
    let (h1, h2) = (fleet.host("h1"), fleet.host("h2"));
    // known_hosts claims h1's port has h2's key: what a re-keyed or spoofed host looks like.
    let forged = write(
        fleet.dir(),
        "forged_known_hosts",
        &format!("# comment\n\n[127.0.0.1]:{} {}\n", h1.port, h2.host_keys[0]),
    );
    let text = inventory_trusting(&fleet, &["h1"], &forged);
    let inv = write(fleet.dir(), "inv.toml", &text);
    let (code, report, stderr) = check_json(&fleet, &inv);
    assert_eq!(code, 1, "{stderr}");
    let entry = host_entry(&report, "h1");
    assert_eq!(entry["reachable"], true);
    assert_eq!(entry["host_key_verified"], false);
    let problem = entry["problems"][0].as_str().unwrap();
    assert!(problem.contains("HOST KEY CHANGED"), "{problem}");
    assert!(
        problem.contains(&openssh_fingerprint(fleet.dir(), &h1.host_keys[0])),
        "{problem}"
    );
    assert!(
        problem.contains(&openssh_fingerprint(fleet.dir(), &h2.host_keys[0])),
        "{problem}"
    );
    // The line number counts the comment and the blank line, as an editor shows it.
    assert!(problem.contains("line 3"), "{problem}");
}

#[test]
fn hashed_known_hosts_entry_is_accepted() {
    let fleet = Fleet::start(1);
    let hashed = fleet.dir().join("hashed_known_hosts");
    std::fs::copy(fleet.known_hosts(), &hashed).unwrap();
    let status = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&hashed)
        .output()
        .unwrap();
    assert!(status.status.success());
    let text = std::fs::read_to_string(&hashed).unwrap();
    assert!(
        text.starts_with("|1|") && !text.contains("127.0.0.1"),
        "{text}"
    );
    let inv_text = inventory_trusting(&fleet, &["h1"], &hashed);
    let inv = write(fleet.dir(), "inv.toml", &inv_text);
    let (code, report, stderr) = check_json(&fleet, &inv);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
}

#[test]
fn pinned_host_key_beats_known_hosts_and_a_wrong_pin_is_refused() {
    let fleet = Fleet::start(2);
    let (h1, h2) = (fleet.host("h1"), fleet.host("h2"));
    let empty = write(fleet.dir(), "empty_known_hosts", "");
    let base = inventory_trusting(&fleet, &[], &empty);
    let pinned = format!(
        "{base}[[hosts]]\nname = \"h1\"\naddress = \"127.0.0.1\"\nport = {}\nhost_key = \"{}\"\n",
        h1.port, h1.host_keys[0]
    );
    let inv = write(fleet.dir(), "pinned.toml", &pinned);
    let (code, _, stderr) = check_json(&fleet, &inv);
    assert_eq!(code, 0, "{stderr}");

    let wrong = format!(
        "{base}[[hosts]]\nname = \"h1\"\naddress = \"127.0.0.1\"\nport = {}\nhost_key = \"{}\"\n",
        h1.port, h2.host_keys[0]
    );
    let inv = write(fleet.dir(), "wrong.toml", &wrong);
    let (code, report, _) = check_json(&fleet, &inv);
    assert_eq!(code, 1);
    let problem = host_entry(&report, "h1")["problems"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        problem.contains("HOST KEY CHANGED") && problem.contains("pinned"),
        "{problem}"
    );
}

#[test]
fn host_key_type_follows_known_hosts() {
    // The host serves ed25519 and RSA keys; only its RSA key is on record. OpenSSH asks
    // for the recorded type; so must shipit, or it would see an "unknown" ed25519 key.
    let fleet = Fleet::start_with(FleetOptions {
        hosts: 1,
        host_key_types: vec!["ed25519", "rsa"],
        ..FleetOptions::default()
    });
    let h1 = fleet.host("h1");
    let rsa = h1
        .host_keys
        .iter()
        .find(|k| k.starts_with("ssh-rsa"))
        .unwrap();
    let only_rsa = write(
        fleet.dir(),
        "rsa_known_hosts",
        &format!("[127.0.0.1]:{} {rsa}\n", h1.port),
    );
    let text = inventory_trusting(&fleet, &["h1"], &only_rsa);
    let inv = write(fleet.dir(), "inv.toml", &text);
    let (code, report, stderr) = check_json(&fleet, &inv);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
}
