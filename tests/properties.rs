//! Properties checked over generated inputs (proptest): quoting survives the real `sh`, the
//! inventory parser never panics, and the artifact checker accepts exactly the entries that
//! stay inside the tree.

use std::path::Path;

use proptest::prelude::*;
use shipit::inventory::{self, LoadContext};
use shipit::shell::Cmd;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(96))]

    /// Any string without NUL (argv cannot hold one) reaches the program as one unchanged
    /// argument through the real /bin/sh.
    #[test]
    fn quoting_round_trips_through_real_sh(values in prop::collection::vec("[^\u{0}]{0,40}", 1..4)) {
        let cmd = Cmd::new("printf").arg("%s\\0").args(&values);
        let out = std::process::Command::new("/bin/sh").arg("-c").arg(cmd.render()).output().unwrap();
        prop_assert!(out.status.success());
        let got: Vec<String> = String::from_utf8(out.stdout).unwrap().split_terminator('\0').map(str::to_owned).collect();
        prop_assert_eq!(got, values);
    }
}

/// TOML-shaped text from the inventory's vocabulary: known and unknown keys, sections,
/// arrays of tables, values of every type, some broken syntax.
fn toml_like() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "transport",
        "name",
        "deploy_to",
        "keep_releases",
        "user",
        "port",
        "identity",
        "known_hosts",
        "jump",
        "connect_timeout",
        "address",
        "roles",
        "host_key",
        "vars",
        "path",
        "build",
        "shared_dirs",
        "from_env",
        "unit",
        "template",
        "site",
        "kind",
        "command",
        "dir",
        "keep",
        "url",
        "expect_status",
        "timeout",
        "parallel",
        "waves",
        "max_fail",
        "on_failure",
        "at",
        "once",
        "bogus",
        "x-y",
    ]);
    let value = prop::sample::select(vec![
        "\"ssh\"",
        "\"local\"",
        "\"/opt/app\"",
        "\"/\"",
        "\"relative\"",
        "1",
        "0",
        "-5",
        "99999999999",
        "true",
        "[]",
        "[\"1\", \"25%\"]",
        "[1, \"x\"]",
        "{ a = 1 }",
        "\"30s\"",
        "\"forever\"",
        "\"150%\"",
        "1.5",
        "\"\"",
        "\"a\\\"b\"",
        "2026-01-01T00:00:00Z",
        "[[1]]",
        "\"ssh-ed25519 AAAA\"",
    ]);
    let section = prop::sample::select(vec![
        "",
        "[app]",
        "[ssh]",
        "[[hosts]]",
        "[artifact]",
        "[env]",
        "[[systemd]]",
        "[nginx]",
        "[backup]",
        "[migrate]",
        "[[hooks]]",
        "[health]",
        "[rollout]",
        "[app.nested]",
        "[[app]]",
        "[",
        "= 1",
    ]);
    prop::collection::vec((section, prop::collection::vec((key, value), 0..5)), 0..8).prop_map(
        |sections| {
            let mut text = String::new();
            for (header, pairs) in sections {
                text.push_str(header);
                text.push('\n');
                for (k, v) in pairs {
                    text.push_str(&format!("{k} = {v}\n"));
                }
            }
            text
        },
    )
}

proptest! {
    #![proptest_config(config(512))]

    /// The parser returns a value or errors with positions inside the text; it never panics.
    #[test]
    fn inventory_parsing_never_panics(text in prop_oneof![toml_like(), ".{0,200}"]) {
        let env = |_: &str| Some("secret".to_owned());
        let ctx = LoadContext { base_dir: Path::new("/project"), home: Some(Path::new("/home/u")), env: &env, need_secrets: true };
        if let Err(e) = inventory::parse(&text, Path::new("inv.toml"), &ctx) {
            let lines = text.lines().count().max(1);
            for p in &e.problems {
                prop_assert!(p.line >= 1 && p.line <= lines + 1, "line {} of {}", p.line, lines);
                prop_assert!(p.column >= 1);
            }
        }
    }
}

/// A tarball with one entry (file or symlink) named `name`; written raw so that `..` and
/// absolute names are possible.
fn tarball(dir: &Path, name: &str, link_target: Option<&str>) -> std::path::PathBuf {
    let mut header = tar::Header::new_old();
    {
        let raw = header.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
    }
    header.set_mode(0o644);
    header.set_mtime(0);
    match link_target {
        Some(target) => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        }
        None => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(2);
        }
    }
    header.set_cksum();
    let path = dir.join("a.tar");
    let mut bytes = header.as_bytes().to_vec();
    if link_target.is_none() {
        let mut block = vec![0u8; 512];
        block[..2].copy_from_slice(b"x\n");
        bytes.extend(block);
    }
    bytes.extend(vec![0u8; 1024]);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The rule, written independently: a member path must be relative and name no `..`; a
/// symlink target must be relative, and resolved lexically from the link's directory it must
/// never climb above the root; `..` after a name is refused (it may pass through another
/// link on the host, so where it lands cannot be judged from the text).
fn inside(name: &str, link_target: Option<&str>) -> bool {
    if name.starts_with('/') {
        return false;
    }
    let parts: Vec<&str> = name
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        return false;
    }
    let Some(target) = link_target else {
        return true;
    };
    if target.is_empty() || target.starts_with('/') {
        return false;
    }
    let mut depth = parts.len() - 1;
    let mut seen_name = false;
    for c in target.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if c == ".." {
            if seen_name || depth == 0 {
                return false;
            }
            depth -= 1;
        } else {
            seen_name = true;
        }
    }
    true
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn the_artifact_checker_accepts_exactly_the_entries_inside_the_tree(
        lead in prop::sample::select(vec!["", "/", "./"]),
        parts in prop::collection::vec(prop::sample::select(vec!["a", "b", "..", ".", ""]), 1..5),
        link in prop::option::of((prop::sample::select(vec!["", "/"]), prop::collection::vec(prop::sample::select(vec!["a", "..", "."]), 1..5))),
    ) {
        let name = format!("{lead}{}", parts.join("/"));
        prop_assume!(!name.is_empty() && name.len() < 90 && !name.ends_with('/'));
        let target = link.map(|(l, t)| format!("{l}{}", t.join("/")));
        let dir = tempfile::tempdir().unwrap();
        let tar = tarball(dir.path(), &name, target.as_deref());
        let accepted = shipit::artifact::pack(&tar, dir.path()).is_ok();
        prop_assert_eq!(accepted, inside(&name, target.as_deref()), "name {:?} target {:?}", name, target);
    }
}
