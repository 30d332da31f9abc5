//! `shipit deploy`, `rollback`, `releases`, `history`, `unlock` against real sshd hosts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::Fleet;

/// A small app directory whose content (and so sha) depends on `version`.
fn app_dir(fleet: &Fleet, version: &str) -> PathBuf {
    let dir = fleet.dir().join(format!("app-{version}"));
    std::fs::create_dir_all(dir.join("public")).unwrap();
    std::fs::write(
        dir.join("public/index.html"),
        format!("<p>version {version}</p>\n"),
    )
    .unwrap();
    std::fs::write(dir.join("VERSION"), format!("{version}\n")).unwrap();
    dir
}

fn deploy_inventory(fleet: &Fleet, hosts: &[&str], artifact: &Path, keep: u32) -> PathBuf {
    let extra = format!(
        "[artifact]\npath = \"{}\"\nshared_dirs = [\"storage\"]\n",
        artifact.display()
    );
    let text = inventory_text(fleet, hosts, &extra).replace(
        "deploy_to = \"/opt/demo\"",
        &format!("deploy_to = \"/opt/demo\"\nkeep_releases = {keep}"),
    );
    write(
        fleet.dir(),
        &format!(
            "inv-{}.toml",
            artifact.file_name().unwrap().to_string_lossy()
        ),
        &text,
    )
}

fn shipit_json(fleet: &Fleet, args: &[&str], inv: &Path) -> (i32, serde_json::Value, String) {
    let (code, stdout, stderr) = run(fleet.shipit().args(args).arg("--json").arg("-i").arg(inv));
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\nstderr: {stderr}"));
    (code, json, stderr)
}

fn current(fleet: &Fleet, host: &str) -> String {
    fleet
        .sh_ok(host, "readlink /opt/demo/current")
        .trim()
        .to_owned()
}

fn releases_on(fleet: &Fleet, host: &str) -> Vec<String> {
    let out = fleet.sh_ok(host, "ls /opt/demo/releases 2>/dev/null || true");
    out.lines().map(str::to_owned).collect()
}

#[test]
fn deploy_to_three_hosts_then_redeploy_sends_nothing() {
    let fleet = Fleet::start(3);
    let app = app_dir(&fleet, "1");
    let inv = deploy_inventory(&fleet, &["h1", "h2", "h3"], &app, 5);
    let (code, report, stderr) = shipit_json(&fleet, &["deploy", "test"], &inv);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    let id = report["release"].as_str().unwrap().to_owned();
    let sha = report["artifact_sha256"].as_str().unwrap().to_owned();
    assert!(id.ends_with(&sha[..12]), "{id}");
    for h in ["h1", "h2", "h3"] {
        assert_eq!(current(&fleet, h), format!("releases/{id}"));
        let revision = fleet.sh_ok(h, &format!("cat /opt/demo/releases/{id}/REVISION"));
        assert_eq!(revision.lines().next().unwrap(), sha);
        assert_eq!(fleet.sh_ok(h, "cat /opt/demo/current/VERSION"), "1\n");
        // The shared dir is a link into shared/.
        assert_eq!(
            fleet.sh_ok(h, "readlink /opt/demo/current/storage").trim(),
            "/opt/demo/shared/storage"
        );
        let entry = host_entry(&report, h);
        assert_eq!(entry["source"], "uploaded");
        assert!(entry["bytes_sent"].as_u64().unwrap() > 0);
        // The lock is released.
        assert!(fleet.sh(h, "test -e /opt/demo/.shipit/lock").status.code() == Some(1));
    }

    // The same artifact again: a new release on every host, made without sending a byte.
    std::thread::sleep(Duration::from_millis(1100));
    let (code, report, stderr) = shipit_json(&fleet, &["deploy", "test"], &inv);
    assert_eq!(code, 0, "{stderr}");
    let id2 = report["release"].as_str().unwrap();
    assert_ne!(id2, id);
    for h in ["h1", "h2", "h3"] {
        let entry = host_entry(&report, h);
        assert_eq!(entry["bytes_sent"], 0, "{entry:#}");
        assert_eq!(entry["source"], "reused");
        assert_eq!(entry["previous"], id.as_str());
        assert_eq!(current(&fleet, h), format!("releases/{id2}"));
        assert_eq!(fleet.sh_ok(h, "cat /opt/demo/current/VERSION"), "1\n");
    }

    // releases and history show the fleet.
    let (code, releases, _) = shipit_json(&fleet, &["releases", "test"], &inv);
    assert_eq!(code, 0);
    assert_eq!(releases["drift"], false);
    assert_eq!(releases["releases"][0]["release"], id2);
    assert_eq!(
        releases["releases"][0]["current_on"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let (code, history, _) = shipit_json(&fleet, &["history", "test"], &inv);
    assert_eq!(code, 0);
    let entries = history["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{history:#}");
    assert_eq!(entries[0]["release"], id2);
    assert_eq!(entries[0]["outcome"], "success");
    assert_eq!(entries[0]["hosts"].as_array().unwrap().len(), 3);
}

#[test]
fn a_host_without_zstd_gets_the_same_release_as_gzip() {
    let fleet = Fleet::start(2);
    // h2's /usr is its own: without zstd there, shipit must send gzip to it.
    fleet.remove_program("h2", "zstd");
    let app = app_dir(&fleet, "v1");
    // Something that compresses, so the two encodings differ in size.
    std::fs::write(app.join("data.txt"), "shipit ".repeat(50_000)).unwrap();
    let inv = deploy_inventory(&fleet, &["h1", "h2"], &app, 3);
    let (code, report, stderr) = shipit_json(&fleet, &["deploy", "test"], &inv);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    let sent = |h: &str| host_entry(&report, h)["bytes_sent"].as_u64().unwrap();
    assert!(sent("h1") > 0 && sent("h2") > 0);
    assert_ne!(sent("h1"), sent("h2"), "{report:#}");
    assert_eq!(sent("h1"), report["artifact_bytes"].as_u64().unwrap());
    for h in ["h1", "h2"] {
        assert_eq!(
            fleet.sh_ok(
                h,
                "cat /opt/demo/current/VERSION && md5sum < /opt/demo/current/data.txt"
            ),
            fleet.sh_ok(
                "h1",
                "cat /opt/demo/current/VERSION && md5sum < /opt/demo/current/data.txt"
            ),
        );
    }
    assert_eq!(current(&fleet, "h1"), current(&fleet, "h2"));
    // Both hosts recorded the same artifact identity, whatever the encoding.
    let rev = |h: &str| fleet.sh_ok(h, "head -1 /opt/demo/current/REVISION");
    assert_eq!(rev("h1"), rev("h2"));
    assert_eq!(
        rev("h1").trim(),
        report["artifact_sha256"].as_str().unwrap()
    );
}

#[test]
fn keep_releases_keeps_current_and_the_one_it_replaced() {
    let fleet = Fleet::start(1);
    let mut ids = Vec::new();
    for v in 1..=7 {
        let app = app_dir(&fleet, &v.to_string());
        let inv = deploy_inventory(&fleet, &["h1"], &app, 3);
        let (code, report, stderr) = shipit_json(&fleet, &["deploy", "test"], &inv);
        assert_eq!(code, 0, "{stderr}");
        ids.push(report["release"].as_str().unwrap().to_owned());
    }
    assert_eq!(releases_on(&fleet, "h1"), ids[4..].to_vec());

    // Go back to an old release, then deploy: the release it replaces survives cleanup
    // although it is not among the newest three.
    let inv = deploy_inventory(&fleet, &["h1"], &app_dir(&fleet, "8"), 3);
    let (code, _, stderr) = shipit_json(&fleet, &["rollback", "test", "--to", &ids[4]], &inv);
    assert_eq!(code, 0, "{stderr}");
    let (code, report, stderr) = shipit_json(&fleet, &["deploy", "test"], &inv);
    assert_eq!(code, 0, "{stderr}");
    let id8 = report["release"].as_str().unwrap().to_owned();
    let mut expect = vec![ids[4].clone(), ids[5].clone(), ids[6].clone(), id8];
    expect.sort();
    assert_eq!(releases_on(&fleet, "h1"), expect);
    assert_eq!(host_entry(&report, "h1")["previous"], ids[4].as_str());
}

#[test]
fn rollback_goes_to_the_previous_release_and_to_a_chosen_one() {
    let fleet = Fleet::start(2);
    let mut ids = Vec::new();
    let mut inv = PathBuf::new();
    for v in ["a", "b", "c"] {
        inv = deploy_inventory(&fleet, &["h1", "h2"], &app_dir(&fleet, v), 5);
        let (code, report, stderr) = shipit_json(&fleet, &["deploy", "test"], &inv);
        assert_eq!(code, 0, "{stderr}");
        ids.push(report["release"].as_str().unwrap().to_owned());
    }
    let (code, report, stderr) = shipit_json(&fleet, &["rollback", "test"], &inv);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["release"], ids[1].as_str());
    for h in ["h1", "h2"] {
        assert_eq!(fleet.sh_ok(h, "cat /opt/demo/current/VERSION"), "b\n");
    }
    let (code, _, stderr) = shipit_json(&fleet, &["rollback", "test", "--to", &ids[0]], &inv);
    assert_eq!(code, 0, "{stderr}");
    for h in ["h1", "h2"] {
        assert_eq!(fleet.sh_ok(h, "cat /opt/demo/current/VERSION"), "a\n");
    }
    // A release missing on one host: refused, naming it, nothing switched.
    fleet.sh_ok("h2", &format!("rm -rf /opt/demo/releases/{}", ids[2]));
    let (code, report, _) = shipit_json(&fleet, &["rollback", "test", "--to", &ids[2]], &inv);
    assert_eq!(code, 1);
    let message = report["message"].as_str().unwrap();
    assert!(
        message.contains(&ids[2]) && message.contains("h2"),
        "{message}"
    );
    assert_eq!(fleet.sh_ok("h1", "cat /opt/demo/current/VERSION"), "a\n");
    let (_, history, _) = shipit_json(&fleet, &["history", "test"], &inv);
    let actions: Vec<&str> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "rollback", "rollback", "rollback", "deploy", "deploy", "deploy"
        ]
    );
}

#[test]
fn two_deploys_at_once_exactly_one_wins() {
    let fleet = Fleet::start(3);
    let inv_a = deploy_inventory(&fleet, &["h1", "h2", "h3"], &app_dir(&fleet, "a"), 5);
    let inv_b = deploy_inventory(&fleet, &["h1", "h2", "h3"], &app_dir(&fleet, "b"), 5);
    let spawn = |inv: &Path| {
        fleet
            .shipit()
            .args(["deploy", "test", "--json", "-i"])
            .arg(inv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(&inv_a), spawn(&inv_b));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let mut codes = [a.status.code().unwrap(), b.status.code().unwrap()];
    codes.sort();
    assert_eq!(
        codes,
        [0, 5],
        "a: {}\nb: {}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    let (winner, loser) = if a.status.code() == Some(0) {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let winner: serde_json::Value = serde_json::from_slice(&winner.stdout).unwrap();
    let loser: serde_json::Value = serde_json::from_slice(&loser.stdout).unwrap();
    assert_eq!(loser["outcome"], "locked");
    let held = loser["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| !h["locked_by"].is_null())
        .expect("names the holder");
    assert!(
        held["error"]["message"]
            .as_str()
            .unwrap()
            .contains("locked by"),
        "{held:#}"
    );
    assert_eq!(held["error"]["step"], "lock", "{held:#}");
    let won = winner["release"].as_str().unwrap();
    // The loser stopped before choosing a release id.
    assert!(loser["release"].is_null());
    for h in ["h1", "h2", "h3"] {
        assert_eq!(current(&fleet, h), format!("releases/{won}"));
        assert_eq!(
            releases_on(&fleet, h),
            [won],
            "only the winner's release is on {h}"
        );
        assert!(fleet.sh(h, "test -e /opt/demo/.shipit/lock").status.code() == Some(1));
    }
}

/// A directory of incompressible data, so an upload takes a while.
fn big_app(fleet: &Fleet, megabytes: usize) -> PathBuf {
    let dir = fleet.dir().join("big-app");
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("head")
        .arg("-c")
        .arg(format!("{}M", megabytes))
        .arg("/dev/urandom")
        .output()
        .unwrap();
    std::fs::write(dir.join("blob.bin"), out.stdout).unwrap();
    dir
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ctrl_c_during_upload_releases_locks_and_switches_nothing() {
    let fleet = Fleet::start(2);
    let first = deploy_inventory(&fleet, &["h1", "h2"], &app_dir(&fleet, "1"), 5);
    let (code, report, stderr) = shipit_json(&fleet, &["deploy", "test"], &first);
    assert_eq!(code, 0, "{stderr}");
    let before = report["release"].as_str().unwrap().to_owned();

    let inv = deploy_inventory(&fleet, &["h1", "h2"], &big_app(&fleet, 400), 5);
    let child = fleet
        .shipit()
        .args(["deploy", "test", "--json", "-i"])
        .arg(&inv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the upload to start", Duration::from_secs(60), || {
        fleet
            .sh("h1", "ls -d /opt/demo/releases/*.partial")
            .status
            .success()
    });
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "interrupted");
    for h in ["h1", "h2"] {
        assert_eq!(current(&fleet, h), format!("releases/{before}"));
        assert!(
            fleet.sh(h, "test -e /opt/demo/.shipit/lock").status.code() == Some(1),
            "lock left on {h}"
        );
    }
    // The next deploy succeeds and leaves no partial directory behind.
    let (code, _, stderr) = shipit_json(&fleet, &["deploy", "test"], &first);
    assert_eq!(code, 0, "{stderr}");
    for h in ["h1", "h2"] {
        assert!(
            !releases_on(&fleet, h)
                .iter()
                .any(|r| r.ends_with(".partial")),
            "{:?}",
            releases_on(&fleet, h)
        );
    }
}

#[test]
fn unlock_clears_the_lock_of_a_killed_deploy() {
    let fleet = Fleet::start(2);
    let inv = deploy_inventory(&fleet, &["h1", "h2"], &big_app(&fleet, 400), 5);
    let mut child = fleet
        .shipit()
        .args(["deploy", "test", "-i"])
        .arg(&inv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the upload to start", Duration::from_secs(60), || {
        fleet
            .sh("h1", "ls -d /opt/demo/releases/*.partial")
            .status
            .success()
    });
    child.kill().unwrap();
    child.wait().unwrap();

    // The lock stays and names its owner; a new deploy is refused with exit 5.
    let small = deploy_inventory(&fleet, &["h1", "h2"], &app_dir(&fleet, "1"), 5);
    let (code, stdout, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&small));
    assert_eq!(code, 5, "{stdout}{stderr}");
    assert!(
        stderr.contains("locked by") && stderr.contains("shipit deploy test"),
        "{stderr}"
    );

    // `check` shows the lock and who holds it.
    let (_, report, _) = check_json(&fleet, &small);
    let locked_by = host_entry(&report, "h1")["locked_by"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(locked_by.contains("shipit deploy test"), "{locked_by}");

    // Without a terminal, unlock asks for --yes and removes nothing.
    let (code, _, stderr) = run(fleet
        .shipit()
        .args(["unlock", "test", "-i"])
        .arg(&small)
        .stdin(Stdio::null()));
    assert_ne!(code, 0);
    assert!(stderr.contains("--yes"), "{stderr}");
    assert!(
        fleet
            .sh("h1", "test -d /opt/demo/.shipit/lock")
            .status
            .success()
    );

    let (code, _, stderr) = run(fleet
        .shipit()
        .args(["unlock", "test", "--yes", "-i"])
        .arg(&small));
    assert_eq!(code, 0, "{stderr}");
    let history = fleet.sh_ok("h1", "cat /opt/demo/.shipit/history.jsonl");
    assert!(history.contains("\"action\":\"unlock\""), "{history}");

    let (code, _, stderr) = shipit_json(&fleet, &["deploy", "test"], &small);
    assert_eq!(code, 0, "{stderr}");
}

fn tarball(fleet: &Fleet, name: &str, build: impl FnOnce(&Path) -> String) -> PathBuf {
    let dir = fleet.dir().join(format!("tar-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let script = build(&dir);
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
    dir.join("artifact.tar.gz")
}

#[test]
fn hostile_tarballs_are_refused_before_any_host_is_touched() {
    let fleet = Fleet::start(1);
    let cases = [
        (
            "dotdot",
            "mkdir -p a/b && echo x > evil && tar -czf artifact.tar.gz a/b/../../evil -P",
            "`..`",
        ),
        (
            "absolute",
            "echo x > /tmp/shipit-abs-$$ && tar -czPf artifact.tar.gz /tmp/shipit-abs-$$ && rm /tmp/shipit-abs-$$",
            "absolute",
        ),
        (
            "symlink",
            "mkdir s && ln -s /etc/passwd s/pw && tar -czf artifact.tar.gz -C s .",
            "symlink to absolute path `/etc/passwd`",
        ),
        (
            "escaping",
            "mkdir s && ln -s ../../outside s/up && tar -czf artifact.tar.gz -C s .",
            "outside the artifact",
        ),
    ];
    for (name, script, expect) in cases {
        let artifact = tarball(&fleet, name, |_| script.to_owned());
        let inv = deploy_inventory(&fleet, &["h1"], &artifact, 5);
        let (code, stdout, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&inv));
        assert_eq!(code, 2, "{name}: {stdout}{stderr}");
        assert!(
            stderr.contains(expect),
            "{name}: expected {expect:?} in {stderr}"
        );
        // Nothing reached the host: not even the deploy directory exists.
        assert!(
            !fleet.sh("h1", "test -e /opt/demo").status.success(),
            "{name} touched the host"
        );
        assert!(
            !fleet.host("h1").log().contains("Accepted publickey"),
            "{name} connected"
        );
    }
}

#[test]
fn a_supplied_tarball_deploys() {
    let fleet = Fleet::start(1);
    let artifact = tarball(&fleet, "good", |_| {
        "mkdir -p s/bin && echo hi > s/bin/hello && chmod +x s/bin/hello && ln -s bin/hello s/link && tar -czf artifact.tar.gz -C s .".to_owned()
    });
    let inv = deploy_inventory(&fleet, &["h1"], &artifact, 5);
    let (code, _, stderr) = shipit_json(&fleet, &["deploy", "test"], &inv);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(fleet.sh_ok("h1", "cat /opt/demo/current/link"), "hi\n");
    assert!(
        fleet
            .sh("h1", "test -x /opt/demo/current/bin/hello")
            .status
            .success()
    );
}

#[test]
fn readme_first_command_deploys_from_a_fresh_copy() {
    // A fresh clone's layout: inventory/local.toml and examples/hello, nothing else.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let clone = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(clone.path().join("inventory")).unwrap();
    std::fs::copy(
        root.join("inventory/local.toml"),
        clone.path().join("inventory/local.toml"),
    )
    .unwrap();
    let copy = Command::new("cp")
        .arg("-r")
        .arg(root.join("examples"))
        .arg(clone.path())
        .status()
        .unwrap();
    assert!(copy.success());
    let home = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(crate::support::shipit_command(home.path())
        .current_dir(clone.path())
        .args(["deploy", "local"]));
    assert_eq!(code, 0, "{stderr}");
    let current = clone.path().join("target/shipit-local/hello/current");
    assert!(current.join("public/index.html").exists(), "{stderr}");
    assert!(
        std::fs::read_link(&current)
            .unwrap()
            .starts_with("releases")
    );
}

#[test]
fn a_session_killed_mid_upload_fails_cleanly_and_a_rerun_converges() {
    let fleet = Fleet::start(2);
    let first = deploy_inventory(&fleet, &["h1", "h2"], &app_dir(&fleet, "1"), 5);
    let (code, report, stderr) = shipit_json(&fleet, &["deploy", "test"], &first);
    assert_eq!(code, 0, "{stderr}");
    let before = report["release"].as_str().unwrap().to_owned();

    let inv = deploy_inventory(&fleet, &["h1", "h2"], &big_app(&fleet, 300), 5);
    let child = fleet
        .shipit()
        .args(["deploy", "test", "--json", "-i"])
        .arg(&inv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the upload to start", Duration::from_secs(60), || {
        fleet
            .sh("h1", "ls -d /opt/demo/releases/*.partial")
            .status
            .success()
    });
    // The host side of the deployer's connection dies (an sshd crash, a network cut).
    fleet.sh("h1", "pkill -KILL -f 'sshd: roo[t]'");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for h in ["h1", "h2"] {
        assert_eq!(
            current(&fleet, h),
            format!("releases/{before}"),
            "{h} was switched"
        );
        assert!(
            fleet.sh(h, "test -e /opt/demo/.shipit/lock").status.code() == Some(1),
            "lock left on {h}"
        );
    }
    let last = fleet.sh_ok("h1", "tail -n 1 /opt/demo/.shipit/history.jsonl");
    assert!(last.contains("\"outcome\":\"failed\""), "{last}");
    // The same deploy again converges, with no manual step.
    let (code, _, stderr) = shipit_json(&fleet, &["deploy", "test"], &inv);
    assert_eq!(code, 0, "{stderr}");
    for h in ["h1", "h2"] {
        assert!(
            !releases_on(&fleet, h)
                .iter()
                .any(|r| r.ends_with(".partial"))
        );
        assert!(
            fleet
                .sh(h, "test -f /opt/demo/current/blob.bin")
                .status
                .success(),
            "{h} runs the new release"
        );
    }
}
