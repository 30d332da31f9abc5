//! A CI matrix deploying one release: `plan --json` gives the id, a `--once-only` run stages
//! the migrate host and migrates, two shards started at once switch their halves of the fleet
//! to that id with `--skip-once`; re-running a shard changes nothing; an id older than what
//! the hosts have is refused.

use std::process::Stdio;

use crate::common::*;
use crate::support::Fleet;

const ALL: [&str; 4] = ["h1", "h2", "h3", "h4"];

fn currents(fleet: &Fleet) -> Vec<String> {
    ALL.iter()
        .map(|h| fleet.sh_ok(h, "readlink /opt/demo/current | xargs basename"))
        .map(|s| s.trim().to_owned())
        .collect()
}

/// The migration log of a host: one line per migration run there (its release directory).
fn migrations(fleet: &Fleet, host: &str) -> Vec<String> {
    fleet
        .sh_ok(host, "cat /srv/migrations.log 2>/dev/null || true")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn two_concurrent_shards_deploy_one_release_id_after_the_once_steps_ran_once() {
    let fleet = Fleet::start(4);
    let app = fleet.dir().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("VERSION"), "v0").unwrap();
    let extra = format!(
        "[artifact]\npath = \"{}\"\n\n[migrate]\ncommand = \"pwd >> /srv/migrations.log\"\n\n[[hooks]]\nat = \"after_upload\"\ncommand = \"echo seeded >> /srv/seed.log\"\nonce = true\n",
        app.display()
    );
    let inv = write(
        fleet.dir(),
        "inv.toml",
        &inventory_text(&fleet, &ALL, &extra),
    );
    let deploy = |args: &[&str]| {
        let mut cmd = fleet.shipit();
        cmd.args(["deploy", "test", "-i"]).arg(&inv).args(args);
        cmd
    };
    let (code, _, stderr) = run(&mut deploy(&[]));
    assert_eq!(code, 0, "{stderr}");
    let v0 = currents(&fleet)[0].clone();
    assert_eq!(migrations(&fleet, "h1").len(), 1);

    std::fs::write(app.join("VERSION"), "v1").unwrap();
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["plan", "test", "--json", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let id = plan["release"].as_str().unwrap().to_owned();
    assert!(id > v0, "{id} sorts after {v0}");

    // Bad ids, a shard that would not wait for the migrations, and flags that exclude each
    // other are refused before anything is connected to.
    for (args, want) in [
        (vec!["--release-id", "latest"], "is not a release id"),
        (vec!["--release-id", &id[..28]], "is not a release id"),
        (
            vec!["--release-id", &format!("{}ffffffffffff", &id[..17])],
            "planned for another artifact",
        ),
        (vec!["--release-id", &id, "--shard", "1/2"], "--once-only"),
        (
            vec!["--release-id", &id, "--shard", "3/2", "--skip-once"],
            "`K/N`",
        ),
        (
            vec!["--release-id", &id, "--once-only", "--shard", "1/2"],
            "cannot be used with",
        ),
        (
            vec!["--release-id", &id, "--once-only", "--skip-once"],
            "cannot be used with",
        ),
        (vec!["--shard", "1/2", "--skip-once"], "--release-id"),
    ] {
        let (code, _, stderr) = run(&mut deploy(&args));
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    assert_eq!(currents(&fleet), vec![v0.clone(); 4]);

    // The once job: h1 (the migrate host) staged and migrated in the new release, nothing
    // switched anywhere, no other host touched.
    let (code, stdout, stderr) = run(&mut deploy(&["--release-id", &id, "--once-only", "--json"]));
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["action"], "once", "{report}");
    assert_eq!(report["hosts"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(host_entry(&report, "h1")["outcome"], "staged", "{report}");
    assert_eq!(currents(&fleet), vec![v0.clone(); 4]);
    let release_dir = format!("/opt/demo/releases/{id}");
    assert_eq!(migrations(&fleet, "h1")[1], release_dir);
    for h in ["h2", "h3", "h4"] {
        assert!(
            !succeeds(&fleet, h, &format!("test -e {release_dir}")),
            "{h}"
        );
    }

    // The matrix: two shards at once, each with its own locks.
    let spawn = |k: &str| {
        deploy(&["--release-id", &id, "--shard", k, "--skip-once", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("1/2"), spawn("2/2"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for (o, hosts) in [(&a, ["h1", "h3"]), (&b, ["h2", "h4"])] {
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let names: Vec<&str> = report["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["host"].as_str().unwrap())
            .collect();
        assert_eq!(names, hosts, "{report}");
        assert_eq!(report["release"], id.as_str());
    }
    assert_eq!(currents(&fleet), vec![id.clone(); 4]);
    for h in ALL {
        assert_eq!(fleet.sh_ok(h, "cat /opt/demo/current/VERSION"), "v1", "{h}");
    }
    // The migration ran once for this release, on h1 only; the once hook too.
    assert_eq!(
        migrations(&fleet, "h1"),
        [format!("/opt/demo/releases/{v0}"), release_dir.clone()]
    );
    assert_eq!(fleet.sh_ok("h1", "cat /srv/seed.log").lines().count(), 2);
    for h in ["h2", "h3", "h4"] {
        assert!(migrations(&fleet, h).is_empty(), "{h}");
        assert!(!succeeds(&fleet, h, "test -e /srv/seed.log"), "{h}");
    }

    // A shard re-run (a retried CI job) is a no-op deploy of the same id.
    let (code, _, stderr) = run(&mut deploy(&[
        "--release-id",
        &id,
        "--shard",
        "1/2",
        "--skip-once",
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(currents(&fleet), vec![id.clone(); 4]);
    assert_eq!(migrations(&fleet, "h1").len(), 2);

    // A newer deploy, then an old job retried: refused, nothing changed.
    std::fs::write(app.join("VERSION"), "v2").unwrap();
    let (code, _, stderr) = run(&mut deploy(&[]));
    assert_eq!(code, 0, "{stderr}");
    let v2 = currents(&fleet);
    assert_ne!(v2[0], id);
    std::fs::write(app.join("VERSION"), "v1").unwrap();
    let (code, _, stderr) = run(&mut deploy(&[
        "--release-id",
        &id,
        "--shard",
        "2/2",
        "--skip-once",
    ]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("newer than `--release-id"), "{stderr}");
    assert!(stderr.contains(&v2[1]), "{stderr}");
    assert_eq!(currents(&fleet), v2);
    for h in ALL {
        assert!(
            !succeeds(&fleet, h, "test -e /opt/demo/.shipit/lock"),
            "{h}: lock left"
        );
    }
}
