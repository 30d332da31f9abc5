//! Hostile `.tar.gz` artifacts against a real host (issue 17, findings 2 and 14): tarballs
//! whose entries GNU `tar` would read differently from the checker (a GNU long name or link
//! beside a pax record, a ustar prefix under an odd version), or that `tar` on the host
//! could not extract (a hard link to nothing), or that would break shipit's own files in a
//! release. Each is refused before any host is contacted: exit 2, the artifact and the
//! entry named, nothing written on the host, the victim directory intact. A tarball that
//! only uses long names, long link targets and pax records the ordinary way deploys as
//! GNU `tar` reads it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::support::Fleet;

use crate::rawtar::{GNU, USTAR, padded};

/// A raw 512-byte header (mode 0755, a fixed mtime), every field as given, so no library
/// normalises it.
fn header(
    name: &[u8],
    prefix: &[u8],
    flag: u8,
    link: &[u8],
    size: u64,
    magic: &[u8; 8],
) -> Vec<u8> {
    crate::rawtar::header(name, prefix, flag, link, size, magic, 0o755, 0o14164014200)
}

/// A member: its header, then its data padded to the block.
fn member(name: &[u8], flag: u8, link: &[u8], data: &[u8]) -> Vec<u8> {
    let out = header(name, b"", flag, link, data.len() as u64, GNU);
    padded([out, data.to_vec()].concat())
}

/// A GNU long name (`L`) or long link (`K`) entry.
fn long(flag: u8, value: &[u8]) -> Vec<u8> {
    member(b"././@LongLink", flag, b"", &[value, b"\0"].concat())
}

/// A pax extended header (`x`) with `records`.
fn pax(records: &[(&str, &str)]) -> Vec<u8> {
    let records: Vec<(&str, &[u8])> = records.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    let data = crate::rawtar::pax_data(&records);
    let out = header(b"PaxHeader/x", b"", b'x', b"", data.len() as u64, USTAR);
    padded([out, data].concat())
}

/// `members` as `<dir>/<name>.tar.gz`, after a harmless `app/VERSION`.
fn tarball(dir: &Path, name: &str, members: &[Vec<u8>]) -> PathBuf {
    let mut tar = member(b"app/", b'5', b"", b"");
    tar.extend(member(b"app/VERSION", b'0', b"", b"1\n"));
    for m in members {
        tar.extend_from_slice(m);
    }
    tar.extend_from_slice(&[0; 1024]);
    let raw = dir.join(format!("{name}.tar"));
    std::fs::write(&raw, &tar).unwrap();
    let status = Command::new("gzip").arg("-f").arg(&raw).status().unwrap();
    assert!(status.success());
    dir.join(format!("{name}.tar.gz"))
}

#[test]
fn hostile_tarballs_are_refused_naming_the_entry_and_change_nothing() {
    let fleet = Fleet::start(1);
    let h1 = fleet.host("h1");
    fleet.sh_ok(
        "h1",
        "mkdir -p /var/victim-tar/keep && echo precious > /var/victim-tar/keep/file",
    );
    let dir = fleet.dir().join("tarballs");
    std::fs::create_dir_all(&dir).unwrap();

    // Each: a name, the members after `app/`, the entry the error must name.
    let cases: Vec<(&str, Vec<Vec<u8>>, &str, &str)> = vec![
        (
            // The checker read the long link `harmless`; GNU tar the pax `/var/victim-tar`.
            "long link beside a pax linkpath",
            vec![
                long(b'K', b"harmless"),
                pax(&[("linkpath", "/var/victim-tar")]),
                member(b"app/data", b'2', b"x", b""),
            ],
            "app/data",
            "given twice, differently",
        ),
        (
            // The checker read `app/cfg`; GNU tar the pax `.shipit`, a link out of the tree.
            "long name beside a pax path",
            vec![
                long(b'L', b"app/cfg"),
                pax(&[("path", ".shipit")]),
                member(b"cfg", b'2', b"app", b""),
            ],
            "app/cfg",
            "given twice, differently",
        ),
        (
            // The checker read `history.jsonl`; GNU tar `.shipit/history.jsonl`.
            "ustar prefix under an odd version",
            vec![{
                let mut m = header(b"history.jsonl", b".shipit", b'0', b"", 3, b"ustar\0xx");
                m.extend_from_slice(&[b'x'; 512]);
                m
            }],
            "history.jsonl",
            "neither ustar, GNU nor old-style",
        ),
        (
            "pax size beside a different header size",
            vec![
                pax(&[("size", "512")]),
                member(b"app/a", b'0', b"", b""),
                member(b"app/b", b'0', b"", b""),
            ],
            "app/a",
            "sets `size`",
        ),
        (
            // Finding 14: `tar` on the host cannot make it.
            "hard link to a missing target",
            vec![member(b"app/h", b'1', b"app/missing", b"")],
            "app/h",
            "hard link to `app/missing`, which is not a file earlier in the archive",
        ),
        (
            "hard link to a symlink",
            vec![
                member(b"app/sub/", b'5', b"", b""),
                member(b"app/sub/l", b'2', b"../../x", b""),
                member(b"h", b'1', b"app/sub/l", b""),
            ],
            "h",
            "not a file earlier in the archive",
        ),
        (
            "symlink into .shipit",
            vec![member(b"app/conf", b'2', b"../.shipit", b"")],
            "app/conf",
            "shipit's own `.shipit`",
        ),
        (
            "REVISION as a directory",
            vec![member(b"REVISION/x", b'0', b"", b"x")],
            "REVISION/x",
            "`REVISION` at the top of a release",
        ),
        (
            "a path given twice",
            vec![
                member(b"app/run", b'0', b"", b"safe"),
                member(b"./app/run", b'2', b"VERSION", b""),
            ],
            "./app/run",
            "given by an earlier entry too",
        ),
    ];
    let before = written(&h1.dir);
    for (name, members, entry, why) in cases {
        let artifact = tarball(&dir, &name.replace(' ', "-"), &members);
        let inv = write(
            fleet.dir(),
            "inv.toml",
            &inventory_text(
                &fleet,
                &["h1"],
                &format!("[artifact]\npath = \"{}\"\n", artifact.display()),
            ),
        );
        let (code, stdout, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&inv));
        assert_eq!(code, 2, "{name}: {stdout}{stderr}");
        let named = format!(
            "cannot deploy `{entry}` from artifact `{}`",
            artifact.display()
        );
        assert!(
            stderr.contains(&named),
            "{name}: expected {named:?} in:\n{stderr}"
        );
        assert!(
            stderr.contains(why),
            "{name}: expected {why:?} in:\n{stderr}"
        );
        assert_eq!(written(&h1.dir), before, "{name} changed the host");
    }
    assert_eq!(
        fleet.sh_ok(
            "h1",
            "find /var/victim-tar | sort; cat /var/victim-tar/keep/file"
        ),
        "/var/victim-tar\n/var/victim-tar/keep\n/var/victim-tar/keep/file\nprecious\n"
    );
    assert!(!fleet.sh("h1", "test -e /opt/demo/current").status.success());
}

#[test]
fn a_tarball_with_long_names_links_and_pax_records_deploys_as_gnu_tar_reads_it() {
    let fleet = Fleet::start(1);
    let src = fleet.dir().join("src");
    let deep = format!("{}/{}", "d".repeat(80), "f".repeat(80));
    std::fs::create_dir_all(src.join(&deep).parent().unwrap()).unwrap();
    std::fs::write(src.join(&deep), "deep\n").unwrap();
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("bin/run"), "#!/bin/sh\necho run\n").unwrap();
    let far = format!("../{deep}");
    std::os::unix::fs::symlink(&far, src.join("bin/far")).unwrap();
    std::fs::hard_link(src.join("bin/run"), src.join("bin/again")).unwrap();
    let artifact = fleet.dir().join("app.tar.gz");
    let status = Command::new("tar")
        .args(["--format=pax", "-czf"])
        .arg(&artifact)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let inv = write(
        fleet.dir(),
        "inv.toml",
        &inventory_text(
            &fleet,
            &["h1"],
            &format!("[artifact]\npath = \"{}\"\n", artifact.display()),
        ),
    );
    let (code, stdout, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&inv));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let c = "/opt/demo/current";
    assert_eq!(fleet.sh_ok("h1", &format!("cat {c}/{deep}")), "deep\n");
    assert_eq!(
        fleet.sh_ok("h1", &format!("readlink {c}/bin/far")),
        format!("{far}\n")
    );
    assert_eq!(fleet.sh_ok("h1", &format!("cat {c}/bin/far")), "deep\n");
    assert_eq!(
        fleet.sh_ok(
            "h1",
            &format!("stat -c %i {c}/bin/run {c}/bin/again | uniq | wc -l")
        ),
        "1\n"
    );
    assert_eq!(fleet.sh_ok("h1", &format!("sh {c}/bin/again")), "run\n");
    // Deploying the same tarball again gives the same identity (the release id's tail).
    let (code, stdout, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&inv));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        fleet.sh_ok(
            "h1",
            "ls /opt/demo/releases | sed 's/.*-//' | sort | uniq -c | awk '{print $1}'"
        ),
        "2\n"
    );
}
