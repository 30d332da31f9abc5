//! Hostile release trees on real hosts (issue #17, findings 1, 10, 14): names in the
//! current release that would split the delta's line-based lists, a hot-patched release
//! offered for reuse, and directories in `releases/` that shipit did not make. Every
//! redeploy must succeed without touching anything outside the release it builds.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::*;
use crate::support::Fleet;

/// A small app: a few files, one of which the tests change.
fn app(fleet: &Fleet) -> PathBuf {
    let dir = fleet.dir().join("harden-delta-app");
    for i in 0..8 {
        put(
            &dir,
            &format!("lib/mod{i}.txt"),
            format!("module {i}\n").repeat(500).as_bytes(),
        );
    }
    put(&dir, "app.txt", b"v1\n");
    put(&dir, "bin/run.sh", b"#!/bin/sh\necho run\n");
    std::fs::set_permissions(
        dir.join("bin/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    dir
}

/// The inventory: `app` as the artifact, `app_extra` appended to `[app]`.
fn inventory(fleet: &Fleet, artifact: &Path, app_extra: &str) -> PathBuf {
    let text = inventory_text(
        fleet,
        &["h1"],
        &format!(
            "[artifact]\npath = \"{}\"\nshared_dirs = [\"storage\"]\n",
            artifact.display()
        ),
    )
    .replace(
        "deploy_to = \"/opt/demo\"",
        &format!("deploy_to = \"/opt/demo\"\n{app_extra}"),
    );
    write(fleet.dir(), "inv-harden-delta.toml", &text)
}

fn release_of(report: &serde_json::Value) -> String {
    report["release"].as_str().unwrap().to_owned()
}

/// A fresh directory of the host's own (its `/var` is a private overlay) with a file in it,
/// outside every directory a deploy may delete in.
struct Victim(PathBuf);

impl Victim {
    fn new(fleet: &Fleet, test: &str) -> Victim {
        let path = PathBuf::from(format!("/var/victim-{test}-{}", std::process::id()));
        fleet.sh_ok(
            "h1",
            &format!(
                "mkdir -p {0}/keep && echo precious > {0}/keep/file",
                path.display()
            ),
        );
        Victim(path)
    }

    fn intact(&self, fleet: &Fleet) -> bool {
        succeeds(
            fleet,
            "h1",
            &format!("grep -qx precious {}/keep/file", self.0.display()),
        )
    }
}

fn inode(fleet: &Fleet, path: &str) -> String {
    fleet
        .sh_ok("h1", &format!("stat -c %i {path}"))
        .trim()
        .to_owned()
}

#[test]
fn newline_names_in_the_current_release_never_delete_outside_it() {
    let fleet = Fleet::start(1);
    let dir = app(&fleet);
    let inv = inventory(&fleet, &dir, "");
    let id1 = release_of(&deploy_report(&fleet, &inv));
    put(&dir, "app.txt", b"v2\n");
    let id2 = release_of(&deploy_report(&fleet, &inv));
    let victim = Victim::new(&fleet, "newline");

    // The app (run as root: `app.user` unset) writes into its release: a directory whose
    // name, split at the newline, reads as the victim's absolute path, and one that reads
    // as the older release next to it.
    let names = [
        format!("b\n{}/inner", victim.0.display()),
        format!("a\n../{id1}/inner"),
    ];
    for name in &names {
        fleet.sh_ok("h1", &format!("mkdir -p '/opt/demo/current/{name}'"));
    }

    // A changed artifact: the delta cannot start from this tree; the whole artifact goes.
    put(&dir, "app.txt", b"v3\n");
    let report = deploy_report(&fleet, &inv);
    let id3 = release_of(&report);
    let entry = host_entry(&report, "h1");
    assert_eq!(entry["source"], "uploaded", "{entry:#}");
    assert!(entry["delta_fallback"].is_string(), "{entry:#}");
    assert!(victim.intact(&fleet), "the victim directory was removed");
    for id in [&id1, &id2] {
        assert!(
            succeeds(
                &fleet,
                "h1",
                &format!("test -f /opt/demo/releases/{id}/app.txt")
            ),
            "release {id} was damaged"
        );
    }
    assert_eq!(fleet.sh_ok("h1", "cat /opt/demo/current/app.txt"), "v3\n");
    assert_eq!(
        fleet.sh_ok("h1", "readlink /opt/demo/current").trim(),
        format!("releases/{id3}")
    );

    // The same again with the same artifact (a reuse): refused as well, nothing deleted,
    // and the new release holds none of the app's names.
    for name in &names {
        fleet.sh_ok("h1", &format!("mkdir -p '/opt/demo/current/{name}'"));
    }
    let report = deploy_report(&fleet, &inv);
    let id4 = release_of(&report);
    let entry = host_entry(&report, "h1");
    assert_eq!(entry["source"], "uploaded", "{entry:#}");
    assert!(victim.intact(&fleet), "the victim directory was removed");
    assert!(succeeds(
        &fleet,
        "h1",
        &format!(
            "test -f /opt/demo/releases/{id1}/app.txt && test -f /opt/demo/releases/{id3}/app.txt"
        )
    ));
    assert_eq!(
        fleet.sh_ok(
            "h1",
            &format!("ls -A /opt/demo/releases/{id4} | LC_ALL=C sort")
        ),
        ".shipit\nREVISION\napp.txt\nbin\nlib\nstorage\n"
    );
}

#[test]
fn a_hot_patched_release_is_not_reused_and_copies_follow_the_link_rule() {
    let fleet = Fleet::start(1);
    let dir = app(&fleet);
    let inv = inventory(&fleet, &dir, "");
    let id1 = release_of(&deploy_report(&fleet, &inv));

    // Someone patches a file of the live release in place.
    fleet.sh_ok("h1", "echo patched > /opt/demo/current/app.txt");
    let report = deploy_report(&fleet, &inv);
    let id2 = release_of(&report);
    let entry = host_entry(&report, "h1");
    // The copy did not verify: the artifact was uploaded.
    assert_eq!(entry["source"], "uploaded", "{entry:#}");
    assert!(entry["delta_fallback"].is_string(), "{entry:#}");
    assert_eq!(fleet.sh_ok("h1", "cat /opt/demo/current/app.txt"), "v1\n");
    let (old, new) = (
        format!("/opt/demo/releases/{id1}/app.txt"),
        format!("/opt/demo/releases/{id2}/app.txt"),
    );
    assert_ne!(inode(&fleet, &old), inode(&fleet, &new));

    // An intact release is reused; with `app.user` unset the app could write release
    // files, so the reuse copies them rather than link.
    let report = deploy_report(&fleet, &inv);
    let id3 = release_of(&report);
    let entry = host_entry(&report, "h1");
    assert_eq!(entry["source"], "reused", "{entry:#}");
    assert_eq!(entry["bytes_sent"], 0, "{entry:#}");
    let third = format!("/opt/demo/releases/{id3}/app.txt");
    assert_eq!(fleet.sh_ok("h1", &format!("cat {third}")), "v1\n");
    assert_ne!(inode(&fleet, &new), inode(&fleet, &third));
    // Its manifest is the artifact's, so the next delta can start from it.
    assert_eq!(
        fleet.sh_ok(
            "h1",
            &format!("cat /opt/demo/releases/{id3}/.shipit/manifest")
        ),
        fleet.sh_ok(
            "h1",
            &format!("cat /opt/demo/releases/{id2}/.shipit/manifest")
        )
    );

    // A service user who cannot write release files: linked.
    let inv = inventory(&fleet, &dir, "user = \"nobody\"");
    let report = deploy_report(&fleet, &inv);
    let id4 = release_of(&report);
    assert_eq!(host_entry(&report, "h1")["source"], "reused");
    let fourth = format!("/opt/demo/releases/{id4}/app.txt");
    assert_eq!(inode(&fleet, &third), inode(&fleet, &fourth));
}

#[test]
fn pruning_leaves_directories_shipit_did_not_make() {
    let fleet = Fleet::start(1);
    let dir = app(&fleet);
    let inv = inventory(&fleet, &dir, "keep_releases = 3");
    // Directories an operator put there, sorting before and after shipit's ids.
    let odd = [
        "00-backup",
        "zz-manual",
        "manual.partial",
        "20260101T000000Z-notmine",
    ];
    for name in odd {
        fleet.sh_ok(
            "h1",
            &format!(
                "mkdir -p /opt/demo/releases/{name} && echo mine > /opt/demo/releases/{name}/file"
            ),
        );
    }
    let mut ids = Vec::new();
    for v in 1..=4 {
        put(&dir, "app.txt", format!("v{v}\n").as_bytes());
        ids.push(release_of(&deploy_report(&fleet, &inv)));
    }
    // keep_releases = 3 counts shipit's own releases only: the oldest goes, the other
    // three stay, and nothing else is touched.
    let listing = fleet.sh_ok("h1", "ls -A /opt/demo/releases | LC_ALL=C sort");
    let mut want: Vec<String> = odd.iter().map(|s| s.to_string()).collect();
    want.extend(ids[1..].iter().cloned());
    want.sort();
    assert_eq!(listing, want.join("\n") + "\n");
    for name in odd {
        assert_eq!(
            fleet.sh_ok("h1", &format!("cat /opt/demo/releases/{name}/file")),
            "mine\n"
        );
    }
}
