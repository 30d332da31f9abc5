//! The modification time of a release's files on the hosts (issue #22): the commit time of
//! the deployed revision from a clean git checkout, else the time of packing; the same
//! commit gives the same artifact (its sha256, a copy instead of an upload), and a delta
//! gives the new time to the files whose content it sends only.

use std::path::Path;
use std::process::Command;

use crate::common::*;
use crate::support::Fleet;

const T1: u64 = 1_700_000_123;
const T2: u64 = 1_700_000_999;

fn git(dir: &Path, args: &[&str], time: Option<u64>) {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com");
    if let Some(t) = time {
        // The author's time is not the one: a rebase keeps it, the commit is new.
        cmd.env("GIT_AUTHOR_DATE", "@1500000000 +0000")
            .env("GIT_COMMITTER_DATE", format!("@{t} +0000"));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deploys `project/dist` with shipit running in `project`: (exit code, report, stderr).
fn deploy(fleet: &Fleet, project: &Path) -> (i32, serde_json::Value, String) {
    let inv = write(
        fleet.dir(),
        "inv.toml",
        &inventory_text(
            fleet,
            &["h1"],
            &format!("[artifact]\npath = \"{}/dist\"\n", project.display()),
        ),
    );
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .current_dir(project)
        .args(["deploy", "test", "--json", "-i"])
        .arg(&inv));
    let report =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (code, report, stderr)
}

fn mtime(fleet: &Fleet, file: &str) -> u64 {
    fleet
        .sh_ok("h1", &format!("stat -c %Y /opt/demo/current/{file}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn files_get_the_commit_time_of_a_clean_checkout_else_the_time_of_packing() {
    let fleet = Fleet::start(1);
    let project = fleet.dir().join("project");
    std::fs::create_dir_all(project.join("dist/static")).unwrap();
    std::fs::write(project.join("dist/index.html"), "<h1>v1</h1>\n").unwrap();
    std::fs::write(project.join("dist/static/app.css"), "body {}\n").unwrap();
    git(&project, &["init", "-q"], None);
    git(&project, &["add", "."], None);
    git(&project, &["commit", "-q", "-m", "v1"], Some(T1));

    // Commit C1: every file has C1's commit time.
    let (code, first, stderr) = deploy(&fleet, &project);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(host_entry(&first, "h1")["source"], "uploaded");
    assert_eq!(mtime(&fleet, "index.html"), T1);
    assert_eq!(mtime(&fleet, "static/app.css"), T1);

    // The same commit checked out elsewhere, at another time: the same artifact (a copy on
    // the host, no upload), the same times.
    let clone = fleet.dir().join("clone");
    git(
        fleet.dir(),
        &["clone", "-q", project.to_str().unwrap(), "clone"],
        None,
    );
    let (code, again, stderr) = deploy(&fleet, &clone);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(again["artifact_sha256"], first["artifact_sha256"]);
    assert_eq!(host_entry(&again, "h1")["source"], "reused");
    assert_eq!(mtime(&fleet, "index.html"), T1);

    // Commit C2 changes index.html: the delta sends it with C2's time; app.css, unchanged,
    // keeps C1's (its cached copies stay good).
    std::fs::write(project.join("dist/index.html"), "<h1>v2</h1>\n").unwrap();
    git(&project, &["commit", "-q", "-am", "v2"], Some(T2));
    let (code, second, stderr) = deploy(&fleet, &project);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(host_entry(&second, "h1")["source"], "delta");
    assert_eq!(mtime(&fleet, "index.html"), T2);
    assert_eq!(mtime(&fleet, "static/app.css"), T1);

    // Uncommitted changes: not C2's content, so not C2's time, the time of packing.
    std::fs::write(project.join("dist/index.html"), "<h1>v3 draft</h1>\n").unwrap();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (code, third, stderr) = deploy(&fleet, &project);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(host_entry(&third, "h1")["source"], "delta");
    let t = mtime(&fleet, "index.html");
    assert!(t >= before && t < before + 600, "{t} vs {before}");
    assert_eq!(mtime(&fleet, "static/app.css"), T1);
}
