//! Delta uploads against real sshd hosts: only new content travels, the release built from
//! the current one is exactly the artifact, older releases stay intact, and a current
//! release that no longer matches its manifest makes shipit send the whole artifact.

use std::path::{Path, PathBuf};

use crate::common::*;
use crate::support::Fleet;

fn chmod(root: &Path, path: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
}

/// About 1.6 MB in 16 files, a 40 KB file that the tests change, a script, a symlink.
fn app(fleet: &Fleet) -> PathBuf {
    let dir = fleet.dir().join("delta-app");
    for i in 0..16 {
        put(&dir, &format!("vendor/pkg{i}/lib.bin"), &noise(i, 100_000));
    }
    put(&dir, "src/changed.bin", &noise(100, 40_000));
    put(&dir, "bin/run.sh", b"#!/bin/sh\necho run\n");
    put(&dir, "gone.txt", b"only in the first release\n");
    put(&dir, "config/a.yml", b"a: 1\n");
    put(&dir, "config/b.yml", b"b: 2\n");
    std::os::unix::fs::symlink("config/a.yml", dir.join("config.yml")).unwrap();
    dir
}

fn inventory(fleet: &Fleet, hosts: &[&str], artifact: &Path, extra: &str) -> PathBuf {
    let text = inventory_text(
        fleet,
        hosts,
        &format!(
            "[artifact]\npath = \"{}\"\nshared_dirs = [\"storage\"]\n{extra}",
            artifact.display()
        ),
    );
    let name = format!("inv-delta-{}.toml", extra.len());
    write(fleet.dir(), &name, &text)
}

/// A fleet of `hosts`, the app, and its inventory (`extra` appended to `[artifact]`).
fn setup(hosts: usize, extra: &str) -> (Fleet, PathBuf, PathBuf) {
    let fleet = Fleet::start(hosts);
    let dir = app(&fleet);
    let names: Vec<String> = (1..=hosts).map(|i| format!("h{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let inv = inventory(&fleet, &names, &dir, extra);
    (fleet, dir, inv)
}

fn with_user(inv: &Path, user: &str) {
    let text = std::fs::read_to_string(inv).unwrap().replace(
        "deploy_to = \"/opt/demo\"",
        &format!("deploy_to = \"/opt/demo\"\nuser = \"{user}\""),
    );
    std::fs::write(inv, text).unwrap();
}

fn sent(report: &serde_json::Value, host: &str) -> u64 {
    host_entry(report, host)["bytes_sent"].as_u64().unwrap()
}

/// md5 of every file under `dir` on the host, with modes and symlink targets: what the
/// release holds, `.shipit` and what finishing added (REVISION, shared links) left out.
fn tree(fleet: &Fleet, host: &str, dir: &str) -> String {
    fleet.sh_ok(
        host,
        &format!(
            "cd {dir} && find . -path ./.shipit -prune -o -path ./REVISION -prune -o -path ./storage -prune -o -printf '%p %y %m %l\\n' | LC_ALL=C sort \
             && find . -path ./.shipit -prune -o -type f ! -name REVISION -print0 | LC_ALL=C sort -z | xargs -0 md5sum"
        ),
    )
}

/// The same listing of the artifact directory on this machine, as the host must hold it.
fn local_tree(dir: &Path) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(
            "find . -path ./.shipit -prune -o -path ./REVISION -prune -o -path ./storage -prune -o -printf '%p %y %m %l\\n' | LC_ALL=C sort \
             && find . -path ./.shipit -prune -o -type f ! -name REVISION -print0 | LC_ALL=C sort -z | xargs -0 md5sum",
        )
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_changed_file_sends_about_its_size_and_the_rest_is_linked() {
    let (fleet, dir, inv) = setup(2, "");
    // A service user other than the SSH user (root), who cannot write release files.
    with_user(&inv, "nobody");
    let first = deploy_report(&fleet, &inv);
    let id1 = first["release"].as_str().unwrap().to_owned();
    let whole = first["artifact_bytes"].as_u64().unwrap();
    for h in ["h1", "h2"] {
        let entry = host_entry(&first, h);
        assert_eq!(entry["source"], "uploaded", "{entry:#}");
        assert_eq!(sent(&first, h), whole);
        assert_eq!(entry["artifact_bytes"].as_u64(), Some(whole));
        // Every release carries its manifest.
        let manifest = fleet.sh_ok(h, &format!("cat /opt/demo/releases/{id1}/.shipit/manifest"));
        assert!(
            manifest.contains("src/changed.bin\tf\t644\t40000\t"),
            "{manifest}"
        );
    }

    put(&dir, "src/changed.bin", &noise(101, 40_000));
    let second = deploy_report(&fleet, &inv);
    let id2 = second["release"].as_str().unwrap().to_owned();
    for h in ["h1", "h2"] {
        let entry = host_entry(&second, h);
        assert_eq!(entry["source"], "delta", "{entry:#}");
        assert_eq!(entry["delta_fallback"], serde_json::Value::Null);
        let n = sent(&second, h);
        // The changed file's 40 KB (incompressible), plus the edit list, tar headers and
        // compression framing; not the 1.6 MB artifact.
        assert!(
            (40_000..48_000).contains(&n),
            "sent {n} bytes of {whole}: {entry:#}"
        );
        assert_eq!(entry["artifact_bytes"], second["artifact_bytes"]);
        assert_eq!(
            tree(&fleet, h, &format!("/opt/demo/releases/{id2}")),
            local_tree(&dir)
        );
        // Unchanged files are hard links into the release before; the changed one is new.
        let inode = |id: &str, f: &str| {
            fleet
                .sh_ok(h, &format!("stat -c %i /opt/demo/releases/{id}/{f}"))
                .trim()
                .to_owned()
        };
        assert_eq!(
            inode(&id1, "vendor/pkg3/lib.bin"),
            inode(&id2, "vendor/pkg3/lib.bin")
        );
        assert_ne!(
            inode(&id1, "src/changed.bin"),
            inode(&id2, "src/changed.bin")
        );
        // The service user cannot write a linked file, so cannot change the older release.
        assert!(!succeeds(
            &fleet,
            h,
            &format!(
                "runuser -u nobody -- sh -c 'echo x >> /opt/demo/releases/{id2}/vendor/pkg3/lib.bin'"
            )
        ));
        // The new release's manifest differs from the old one in the changed file only.
        let manifest =
            |id: &str| fleet.sh_ok(h, &format!("cat /opt/demo/releases/{id}/.shipit/manifest"));
        let (m1, m2) = (manifest(&id1), manifest(&id2));
        let others = |m: &str| {
            m.lines()
                .filter(|l| !l.starts_with("src/changed.bin\t"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(others(&m1), others(&m2));
        let sum = fleet.sh_ok(
            h,
            &format!("sha256sum /opt/demo/releases/{id2}/src/changed.bin"),
        );
        let sum = sum.split_whitespace().next().unwrap();
        assert!(
            m2.contains(&format!("src/changed.bin\tf\t644\t40000\t{sum}\n")),
            "{m2}"
        );
    }
}

#[test]
fn removed_files_mode_and_symlink_changes_arrive_and_the_older_release_keeps_its_own() {
    let (fleet, dir, inv) = setup(1, "");
    let first = deploy_report(&fleet, &inv);
    let id1 = first["release"].as_str().unwrap().to_owned();
    let before = tree(&fleet, "h1", &format!("/opt/demo/releases/{id1}"));
    assert_eq!(before, local_tree(&dir));

    std::fs::remove_file(dir.join("gone.txt")).unwrap();
    chmod(&dir, "bin/run.sh", 0o755);
    std::fs::remove_file(dir.join("config.yml")).unwrap();
    std::os::unix::fs::symlink("config/b.yml", dir.join("config.yml")).unwrap();
    // A file becomes a directory, and content moves to a new path.
    std::fs::remove_file(dir.join("config/a.yml")).unwrap();
    put(&dir, "config/a.yml/inner.yml", b"a: inner\n");
    put(&dir, "moved/lib.bin", &noise(7, 100_000));
    std::fs::remove_dir_all(dir.join("vendor/pkg7")).unwrap();

    let second = deploy_report(&fleet, &inv);
    let id2 = second["release"].as_str().unwrap().to_owned();
    let entry = host_entry(&second, "h1");
    assert_eq!(entry["source"], "delta", "{entry:#}");
    // The moved 100 KB file was linked from the old release, not sent.
    assert!(sent(&second, "h1") < 10_000, "{entry:#}");
    let release = format!("/opt/demo/releases/{id2}");
    assert_eq!(tree(&fleet, "h1", &release), local_tree(&dir));
    assert!(!succeeds(
        &fleet,
        "h1",
        &format!("test -e {release}/gone.txt")
    ));
    assert_eq!(
        fleet.sh_ok("h1", &format!("stat -c %a {release}/bin/run.sh")),
        "755\n"
    );
    assert_eq!(
        fleet.sh_ok("h1", &format!("readlink {release}/config.yml")),
        "config/b.yml\n"
    );
    assert_eq!(fleet.sh_ok("h1", "/opt/demo/current/bin/run.sh"), "run\n");

    // The release before is untouched: its mode, its link, its removed file.
    assert_eq!(
        tree(&fleet, "h1", &format!("/opt/demo/releases/{id1}")),
        before
    );
    let (code, _, stderr) = run(fleet
        .shipit()
        .args(["rollback", "test", "--yes", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        fleet.sh_ok("h1", "readlink /opt/demo/current"),
        format!("releases/{id1}\n")
    );
    assert_eq!(
        fleet.sh_ok("h1", "cat /opt/demo/current/gone.txt"),
        "only in the first release\n"
    );
}

#[test]
fn writing_into_a_release_in_place_cannot_change_an_older_one() {
    // No `app.user`: the service may run as the SSH user, who owns the release files and
    // can write them, so files are copied into the new release, not linked.
    let (fleet, dir, inv) = setup(1, "");
    let first = deploy_report(&fleet, &inv);
    let id1 = first["release"].as_str().unwrap().to_owned();
    put(&dir, "src/changed.bin", &noise(102, 40_000));
    let second = deploy_report(&fleet, &inv);
    assert_eq!(host_entry(&second, "h1")["source"], "delta");
    let id2 = second["release"].as_str().unwrap().to_owned();
    let old = format!("/opt/demo/releases/{id1}/vendor/pkg3/lib.bin");
    let sum_before = fleet.sh_ok("h1", &format!("md5sum < {old}"));
    // The `shared/`-style misuse: the app appends to a file of its current release.
    fleet.sh_ok(
        "h1",
        "echo 'written by the app' >> /opt/demo/current/vendor/pkg3/lib.bin",
    );
    assert_eq!(fleet.sh_ok("h1", &format!("md5sum < {old}")), sum_before);
    assert_ne!(
        fleet.sh_ok("h1", &format!("stat -c %i {old}")),
        fleet.sh_ok(
            "h1",
            &format!("stat -c %i /opt/demo/releases/{id2}/vendor/pkg3/lib.bin")
        )
    );

    // The current release no longer matches its manifest: the next deploy notices and
    // sends the whole artifact.
    put(&dir, "src/changed.bin", &noise(103, 40_000));
    let third = deploy_report(&fleet, &inv);
    let entry = host_entry(&third, "h1");
    assert_eq!(entry["source"], "uploaded", "{entry:#}");
    assert!(entry["delta_fallback"].is_string(), "{entry:#}");
    let id3 = third["release"].as_str().unwrap().to_owned();
    assert_eq!(
        tree(&fleet, "h1", &format!("/opt/demo/releases/{id3}")),
        local_tree(&dir)
    );

    // With `app.user` set to the SSH user itself, files are copied too.
    with_user(&inv, "root");
    put(&dir, "src/changed.bin", &noise(104, 40_000));
    let fourth = deploy_report(&fleet, &inv);
    assert_eq!(host_entry(&fourth, "h1")["source"], "delta");
    let id4 = fourth["release"].as_str().unwrap().to_owned();
    assert_ne!(
        fleet.sh_ok(
            "h1",
            &format!("stat -c %i /opt/demo/releases/{id3}/config/b.yml")
        ),
        fleet.sh_ok(
            "h1",
            &format!("stat -c %i /opt/demo/releases/{id4}/config/b.yml")
        )
    );
}

#[test]
fn a_current_release_that_no_longer_matches_its_manifest_gets_the_whole_artifact() {
    let (fleet, dir, inv) = setup(2, "");
    with_user(&inv, "nobody");
    let first = deploy_report(&fleet, &inv);
    let id1 = first["release"].as_str().unwrap().to_owned();
    // On h1, a file of the current release changes after its manifest was written (what
    // the deploy below reads is the manifest; what it links is the file).
    fleet.sh_ok(
        "h1",
        &format!("printf 'tampered' | dd of=/opt/demo/releases/{id1}/vendor/pkg5/lib.bin bs=1 seek=100 conv=notrunc 2>/dev/null"),
    );
    put(&dir, "src/changed.bin", &noise(104, 40_000));
    let second = deploy_report(&fleet, &inv);
    let id2 = second["release"].as_str().unwrap().to_owned();
    let whole = second["artifact_bytes"].as_u64().unwrap();

    let h1 = host_entry(&second, "h1");
    assert_eq!(h1["source"], "uploaded", "{h1:#}");
    let why = h1["delta_fallback"].as_str().unwrap();
    assert!(why.contains("did not match the new manifest"), "{why}");
    // The delta was sent, then the whole artifact.
    assert!(sent(&second, "h1") > whole, "{h1:#}");
    let h2 = host_entry(&second, "h2");
    assert_eq!(h2["source"], "delta", "{h2:#}");

    for h in ["h1", "h2"] {
        assert_eq!(
            tree(&fleet, h, &format!("/opt/demo/releases/{id2}")),
            local_tree(&dir),
            "{h}"
        );
        assert_eq!(
            fleet.sh_ok(h, "readlink /opt/demo/current"),
            format!("releases/{id2}\n")
        );
        // No partial directory or scratch file is left behind.
        assert_eq!(
            fleet.sh_ok(
                h,
                "ls -a /opt/demo/releases /opt/demo/.shipit | grep -c 'partial\\|delta-' || true"
            ),
            "0\n"
        );
    }
}

#[test]
fn delta_false_sends_the_whole_artifact() {
    let (fleet, dir, inv) = setup(1, "delta = false\n");
    deploy_report(&fleet, &inv);
    put(&dir, "src/changed.bin", &noise(105, 40_000));
    let second = deploy_report(&fleet, &inv);
    let entry = host_entry(&second, "h1");
    assert_eq!(entry["source"], "uploaded", "{entry:#}");
    assert_eq!(entry["delta_fallback"], serde_json::Value::Null);
    assert_eq!(
        sent(&second, "h1"),
        second["artifact_bytes"].as_u64().unwrap()
    );
    let id = second["release"].as_str().unwrap();
    assert_eq!(
        tree(&fleet, "h1", &format!("/opt/demo/releases/{id}")),
        local_tree(&dir)
    );
}

#[test]
fn a_host_without_zstd_gets_its_delta_as_gzip() {
    let (fleet, dir, inv) = setup(1, "");
    fleet.remove_program("h1", "zstd");
    deploy_report(&fleet, &inv);
    put(&dir, "src/changed.bin", &noise(106, 40_000));
    let second = deploy_report(&fleet, &inv);
    let entry = host_entry(&second, "h1");
    assert_eq!(entry["source"], "delta", "{entry:#}");
    assert!(sent(&second, "h1") < 60_000, "{entry:#}");
    let id = second["release"].as_str().unwrap();
    assert_eq!(
        tree(&fleet, "h1", &format!("/opt/demo/releases/{id}")),
        local_tree(&dir)
    );
}

#[test]
fn hosts_on_different_releases_each_get_their_own_delta_and_a_rollback_is_a_base_too() {
    let (fleet, dir, inv) = setup(2, "");
    with_user(&inv, "nobody");
    deploy_report(&fleet, &inv);
    // h1 moves on alone: the two hosts now run different releases.
    put(&dir, "src/changed.bin", &noise(110, 40_000));
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["deploy", "test", "--json", "--hosts", "h1", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    put(&dir, "config/b.yml", b"b: 3\n");
    let third = deploy_report(&fleet, &inv);
    let id3 = third["release"].as_str().unwrap().to_owned();
    for h in ["h1", "h2"] {
        let entry = host_entry(&third, h);
        assert_eq!(entry["source"], "delta", "{entry:#}");
        assert_eq!(
            tree(&fleet, h, &format!("/opt/demo/releases/{id3}")),
            local_tree(&dir),
            "{h}"
        );
    }
    // h2 had the first release: the changed 40 KB file goes to it, not to h1.
    assert!(sent(&third, "h2") > 40_000, "{third:#}");
    assert!(sent(&third, "h1") < 10_000, "{third:#}");

    // h1 back to its previous release, then both forward.
    let (code, _, stderr) = run(fleet
        .shipit()
        .args(["rollback", "test", "--yes", "--hosts", "h1", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{stderr}");
    put(&dir, "src/changed.bin", &noise(111, 40_000));
    let fourth = deploy_report(&fleet, &inv);
    let id4 = fourth["release"].as_str().unwrap().to_owned();
    for h in ["h1", "h2"] {
        assert_eq!(host_entry(&fourth, h)["source"], "delta", "{fourth:#}");
        assert_eq!(
            tree(&fleet, h, &format!("/opt/demo/releases/{id4}")),
            local_tree(&dir),
            "{h}"
        );
    }
}

#[test]
fn the_local_transport_redeploys_by_delta() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("app");
    put(&dir, "public/index.html", b"<p>one</p>\n");
    put(&dir, "vendor/big.bin", &noise(120, 200_000));
    let deploy_to = work.path().join("deployed");
    let inv = write(
        work.path(),
        "local.toml",
        &format!(
            "transport = \"local\"\n\n[app]\nname = \"demo\"\ndeploy_to = \"{}\"\n\n[artifact]\npath = \"{}\"\n",
            deploy_to.display(),
            dir.display()
        ),
    );
    let home = tempfile::tempdir().unwrap();
    let deploy = || {
        let (code, stdout, stderr) = run(crate::support::shipit_command(home.path())
            .args(["deploy", "local", "--json", "-i"])
            .arg(&inv));
        assert_eq!(code, 0, "{stderr}\n{stdout}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
    };
    let first = deploy();
    assert_eq!(first["hosts"][0]["source"], "uploaded");
    put(&dir, "public/index.html", b"<p>two</p>\n");
    let second = deploy();
    let entry = &second["hosts"][0];
    assert_eq!(entry["source"], "delta", "{entry:#}");
    assert!(entry["bytes_sent"].as_u64().unwrap() < 5_000, "{entry:#}");
    assert_eq!(
        std::fs::read(deploy_to.join("current/public/index.html")).unwrap(),
        b"<p>two</p>\n"
    );
    assert_eq!(
        std::fs::read(deploy_to.join("current/vendor/big.bin")).unwrap(),
        noise(120, 200_000)
    );

    // The progress display and the human report show the bytes sent against the artifact.
    put(&dir, "public/index.html", b"<p>three</p>\n");
    let (code, _, stderr) = run(crate::support::shipit_command(home.path())
        .args(["deploy", "local", "-v", "--progress", "never", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("(changes only; the artifact is "),
        "{stderr}"
    );
    let row = stderr
        .lines()
        .find(|l| l.starts_with("local") && l.contains(" delta "))
        .unwrap_or_else(|| panic!("no report row for the host: {stderr}"));
    assert!(row.contains(" of "), "{row}");
}

#[test]
fn a_supplied_tarball_redeploys_by_delta_too() {
    let fleet = Fleet::start(1);
    let dir = app(&fleet);
    let tarball = fleet.dir().join("app.tar.gz");
    let pack = || {
        // As a build would make it: `./`-prefixed names, the builder's own modes and times.
        let status = std::process::Command::new("tar")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(&dir)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
    };
    pack();
    let inv = inventory(&fleet, &["h1"], &tarball, "");
    let first = deploy_report(&fleet, &inv);
    assert_eq!(host_entry(&first, "h1")["source"], "uploaded");
    put(&dir, "src/changed.bin", &noise(130, 40_000));
    pack();
    let second = deploy_report(&fleet, &inv);
    let entry = host_entry(&second, "h1");
    assert_eq!(entry["source"], "delta", "{entry:#}");
    assert!((40_000..48_000).contains(&sent(&second, "h1")), "{entry:#}");
    let id = second["release"].as_str().unwrap();
    assert_eq!(
        tree(&fleet, "h1", &format!("/opt/demo/releases/{id}")),
        local_tree(&dir)
    );
}

#[test]
fn files_are_copied_where_hard_links_cannot_be_made() {
    let (fleet, dir, inv) = setup(1, "");
    // A service user who cannot write release files: links would be used if they could.
    with_user(&inv, "nobody");
    let first = deploy_report(&fleet, &inv);
    let id1 = first["release"].as_str().unwrap().to_owned();
    // The current release on a mount of its own: link(2) into another mount fails (EXDEV).
    let old = format!("/opt/demo/releases/{id1}");
    fleet.sh_ok("h1", &format!("mount --bind {old} {old}"));
    put(&dir, "src/changed.bin", &noise(140, 40_000));
    let second = deploy_report(&fleet, &inv);
    let entry = host_entry(&second, "h1");
    assert_eq!(entry["source"], "delta", "{entry:#}");
    assert!(sent(&second, "h1") < 48_000, "{entry:#}");
    let id2 = second["release"].as_str().unwrap().to_owned();
    assert_eq!(
        tree(&fleet, "h1", &format!("/opt/demo/releases/{id2}")),
        local_tree(&dir)
    );
    assert_ne!(
        fleet.sh_ok("h1", &format!("stat -c %i {old}/vendor/pkg3/lib.bin")),
        fleet.sh_ok(
            "h1",
            &format!("stat -c %i /opt/demo/releases/{id2}/vendor/pkg3/lib.bin")
        )
    );
    fleet.sh_ok("h1", &format!("umount {old}"));
}

#[test]
fn a_redeploy_with_the_deployers_digest_cache_puts_the_changed_file_on_the_host() {
    let (fleet, dir, inv) = setup(1, "");
    // Older than the cache's racy window, so the first deploy records every file.
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    let first = deploy_report(&fleet, &inv);
    let cache = fleet.home().join(".cache/shipit/digests");
    let files: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("\tsrc/changed.bin\n"), "{text}");
    assert!(text.contains("\tvendor/pkg3/lib.bin\n"), "{text}");

    // The same size, new bytes, right away: only the stat record tells it changed.
    put(&dir, "src/changed.bin", &noise(102, 40_000));
    let second = deploy_report(&fleet, &inv);
    assert_eq!(host_entry(&second, "h1")["source"], "delta", "{second:#}");
    assert_ne!(second["artifact_sha256"], first["artifact_sha256"]);
    let id2 = second["release"].as_str().unwrap();
    assert_eq!(
        tree(&fleet, "h1", &format!("/opt/demo/releases/{id2}")),
        local_tree(&dir)
    );

    // Packed without any cache, the artifact has the same identity: nothing is sent.
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .env("XDG_CACHE_HOME", fleet.dir().join("empty-cache"))
        .args(["deploy", "test", "--json", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{stderr}");
    let third: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(third["artifact_sha256"], second["artifact_sha256"]);
    let entry = host_entry(&third, "h1");
    assert_eq!(entry["source"], "reused", "{entry:#}");
    assert_eq!(entry["bytes_sent"], 0, "{entry:#}");
    assert!(fleet.dir().join("empty-cache/shipit/digests").is_dir());
}
