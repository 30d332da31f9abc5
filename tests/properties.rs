//! Properties checked over generated inputs (proptest): quoting survives the real `sh`, the
//! inventory parser never panics, the artifact checker accepts exactly the entries that
//! stay inside the tree, and what it accepts GNU `tar` reads as it does (hand-built headers:
//! GNU long names and links, pax records, ustar prefixes under odd versions).

use std::path::Path;

use proptest::prelude::*;
#[allow(dead_code)]
#[path = "common/rawtar.rs"]
mod rawtar;
use rawtar::{GNU, USTAR, padded};
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

// ---------------------------------------------------------------------------------------
// The artifact checker and GNU tar read the same members

/// How a name or link target is spelled in the archive.
#[derive(Clone, Debug)]
enum Spelling {
    /// In the header's own field (truncated to 100 bytes, as both readers truncate it).
    Field,
    /// Split over the ustar prefix and name fields, under these 8 bytes of magic and
    /// version.
    Prefix(&'static [u8; 8]),
    /// In a GNU `L` (`K`) entry; the header's field holds a harmless decoy.
    Long,
    /// In a pax `path` (`linkpath`) record; the header's field holds a decoy.
    Pax,
    /// A GNU long name (link) and a pax record on one entry: the value, then this other
    /// one (`None`: the value again).
    LongAndPax(Option<String>),
}

/// One member of a generated archive.
#[derive(Clone, Debug)]
struct Member {
    flag: u8,
    name: String,
    name_as: Spelling,
    link: String,
    link_as: Spelling,
    data: usize,
    /// Extra pax records: `size`, a repeated key, a harmless `mtime`.
    extra: Vec<(&'static str, String)>,
}

/// A raw 512-byte header (mode 0644, a fixed mtime), built byte by byte so that no library
/// can normalise it.
fn raw_header(
    name: &[u8],
    prefix: &[u8],
    flag: u8,
    link: &[u8],
    size: u64,
    magic: &[u8; 8],
) -> Vec<u8> {
    rawtar::header(name, prefix, flag, link, size, magic, 0o644, 0o14164014200)
}

fn pax_data(records: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let records: Vec<(&str, &[u8])> = records.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    rawtar::pax_data(&records)
}

/// The bytes of `members`, each preceded by the GNU `L`/`K` and pax `x` entries its
/// spellings need, then the end-of-archive blocks.
fn archive(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();
        let long = |out: &mut Vec<u8>, flag: u8, value: &[u8]| {
            let data = [value, b"\0"].concat();
            out.extend(raw_header(
                b"././@LongLink",
                b"",
                flag,
                b"",
                data.len() as u64,
                GNU,
            ));
            out.extend(padded(data));
        };
        let mut spell = |out: &mut Vec<u8>,
                         value: &str,
                         how: &Spelling,
                         flag: u8,
                         key: &'static str|
         -> (Vec<u8>, Vec<u8>, &'static [u8; 8]) {
            let decoy = b"decoy".to_vec();
            match how {
                Spelling::Field => (value.as_bytes().to_vec(), Vec::new(), GNU),
                Spelling::Prefix(magic) => match value
                    .rfind('/')
                    .filter(|&i| i > 0 && i <= 155 && value.len() - i - 1 <= 100)
                {
                    Some(i) => (
                        value.as_bytes()[i + 1..].to_vec(),
                        value.as_bytes()[..i].to_vec(),
                        magic,
                    ),
                    None => (value.as_bytes().to_vec(), Vec::new(), magic),
                },
                Spelling::Long => {
                    long(out, flag, value.as_bytes());
                    (decoy, Vec::new(), GNU)
                }
                Spelling::Pax => {
                    pax.push((key, value.as_bytes().to_vec()));
                    (decoy, Vec::new(), USTAR)
                }
                Spelling::LongAndPax(other) => {
                    long(out, flag, value.as_bytes());
                    pax.push((key, other.as_deref().unwrap_or(value).as_bytes().to_vec()));
                    (decoy, Vec::new(), USTAR)
                }
            }
        };
        let mut pre = Vec::new();
        let (name, prefix, magic) = spell(&mut pre, &m.name, &m.name_as, b'L', "path");
        let has_link = matches!(m.flag, b'1' | b'2');
        let (link, _, _) = if has_link {
            spell(&mut pre, &m.link, &m.link_as, b'K', "linkpath")
        } else {
            (Vec::new(), Vec::new(), GNU)
        };
        for (k, v) in &m.extra {
            pax.push((k, v.as_bytes().to_vec()));
        }
        if !pax.is_empty() {
            let data = pax_data(&pax);
            out.extend(raw_header(
                b"PaxHeader/x",
                b"",
                b'x',
                b"",
                data.len() as u64,
                USTAR,
            ));
            out.extend(padded(data));
        }
        out.extend(pre);
        let data = vec![b'd'; m.data];
        out.extend(raw_header(
            &name,
            &prefix,
            m.flag,
            &link,
            data.len() as u64,
            magic,
        ));
        out.extend(padded(data));
    }
    out.extend([0u8; 1024]);
    out
}

/// `a//./b/` is `a/b`: how a name lands on disk.
fn normal(name: &str) -> String {
    name.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// One member as listed: type (`-`, `d`, `l`, `h`), size of a file, normalized name,
/// link target (a hard link's normalized).
type Listed = (char, u64, String, String);

fn listed(kind: char, size: u64, name: &str, link: &str) -> Option<Listed> {
    let name = normal(name);
    if name.is_empty() {
        return None; // the archive's root
    }
    let link = if kind == 'h' {
        normal(link)
    } else {
        link.to_owned()
    };
    let size = if kind == '-' { size } else { 0 };
    Some((kind, size, name, link))
}

/// A C-quoted string at the start of `s` (GNU tar's `--quoting-style=c`) and the rest.
fn c_string(s: &[u8]) -> (Vec<u8>, &[u8]) {
    assert_eq!(s[0], b'"', "{}", String::from_utf8_lossy(s));
    let mut out = Vec::new();
    let mut i = 1;
    while s[i] != b'"' {
        if s[i] == b'\\' {
            i += 1;
            match s[i] {
                b'0'..=b'7' => {
                    let end = (i..i + 3)
                        .take_while(|&j| j < s.len() && (b'0'..=b'7').contains(&s[j]))
                        .last()
                        .unwrap()
                        + 1;
                    out.push(
                        u8::from_str_radix(std::str::from_utf8(&s[i..end]).unwrap(), 8).unwrap(),
                    );
                    i = end;
                    continue;
                }
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'a' => out.push(7),
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'v' => out.push(11),
                other => out.push(other),
            }
        } else {
            out.push(s[i]);
        }
        i += 1;
    }
    (out, &s[i + 1..])
}

/// GNU tar's reading of `tar`: `tar --numeric-owner --quoting-style=c -tvf -`; `None` when
/// it fails.
fn gnu_view(tar: &[u8]) -> Option<Vec<Listed>> {
    let out = rawtar::gnu_tv(tar);
    if !out.status.success() {
        return None;
    }
    let mut view = Vec::new();
    for line in out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let text = String::from_utf8_lossy(line);
        let fields: Vec<&str> = text.split_whitespace().collect();
        // `C`: contiguous, extracted as a regular file.
        let kind = match fields[0].chars().next().unwrap() {
            'C' => '-',
            k => k,
        };
        let size: u64 = fields[2].parse().unwrap_or(0);
        let at = line.iter().position(|&b| b == b'"').unwrap();
        let (name, rest) = c_string(&line[at..]);
        let link = match rest {
            [] => Vec::new(),
            r if r.starts_with(b" -> ") => c_string(&r[4..]).0,
            r if r.starts_with(b" link to ") => c_string(&r[9..]).0,
            r => panic!("unexpected listing tail {:?}", String::from_utf8_lossy(r)),
        };
        let (name, link) = (
            String::from_utf8_lossy(&name),
            String::from_utf8_lossy(&link),
        );
        view.extend(listed(kind, size, &name, &link));
    }
    Some(view)
}

/// The tar crate's reading of `tar`: what the checker saw when `tar` is the tarball, and
/// what it wrote when `tar` is its copy.
fn crate_view(tar: &[u8]) -> Vec<Listed> {
    let mut archive = tar::Archive::new(tar);
    let mut view = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let kind = match entry.header().entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::XGlobalHeader => continue,
            _ => '-',
        };
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        view.extend(listed(kind, entry.size(), &name, &link));
    }
    view
}

fn path_like() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        8 => prop::sample::select(vec![
            "a".to_owned(),
            "b".to_owned(),
            "c".to_owned(),
            "l".repeat(70),
        ]),
        1 => prop::sample::select(vec![
            "..".to_owned(),
            ".".to_owned(),
            String::new(),
            "REVISION".to_owned(),
            ".shipit".to_owned(),
        ]),
    ];
    (
        prop::sample::select(vec!["", "", "", "./", "./", "/"]),
        prop::collection::vec(part, 1..4),
        prop::sample::select(vec![false, false, false, false, true]),
    )
        .prop_map(|(lead, parts, slash)| {
            format!("{lead}{}{}", parts.join("/"), if slash { "/" } else { "" })
        })
}

fn spelling() -> impl Strategy<Value = Spelling> {
    prop_oneof![
        3 => Just(Spelling::Field),
        1 => prop::sample::select(vec![USTAR, GNU, b"ustar\0xx", b"ustar\0  ", &[0u8; 8]]).prop_map(Spelling::Prefix),
        1 => Just(Spelling::Long),
        1 => Just(Spelling::Pax),
        1 => path_like().prop_map(|other| Spelling::LongAndPax(Some(other))),
        1 => Just(Spelling::LongAndPax(None)),
    ]
}

fn member() -> impl Strategy<Value = Member> {
    let extra = prop::sample::select(vec![
        vec![],
        vec![("mtime", "1.25".to_owned())],
        vec![("size", "3".to_owned())],
        vec![("size", "700".to_owned())],
        vec![("mtime", "1".to_owned()), ("mtime", "2".to_owned())],
        vec![("GNU.sparse.major", "1".to_owned())],
    ]);
    (
        prop::sample::select(vec![
            b'0', b'0', b'0', b'\0', b'5', b'5', b'2', b'2', b'1', b'7',
        ]),
        path_like(),
        spelling(),
        path_like(),
        spelling(),
        prop::sample::select(vec![0usize, 3, 700]),
        prop_oneof![6 => Just(vec![]), 1 => extra],
    )
        .prop_map(|(flag, name, name_as, link, link_as, data, extra)| Member {
            flag,
            name,
            name_as,
            link,
            link_as,
            data: if matches!(flag, b'0' | b'\0' | b'7') {
                data
            } else {
                0
            },
            extra,
        })
}

/// The checker's view of an accepted tarball is GNU tar's view of it, and of the tar the
/// host receives.
fn checker_agrees_with_gnu_tar(members: &[Member]) -> Result<bool, TestCaseError> {
    let bytes = archive(members);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.tar");
    std::fs::write(&path, &bytes).unwrap();
    let Ok(packed) = shipit::artifact::pack(&path, dir.path()) else {
        return Ok(false);
    };
    let sent = std::fs::read(packed.tar().unwrap()).unwrap();
    let checker = crate_view(&sent);
    let gnu_sent = gnu_view(&sent);
    prop_assert_eq!(
        gnu_sent.as_ref(),
        Some(&checker),
        "GNU tar reads the tar sent differently"
    );
    let gnu_given = gnu_view(&bytes);
    prop_assert_eq!(
        gnu_given.as_ref(),
        Some(&checker),
        "GNU tar reads the tarball differently"
    );
    Ok(true)
}

proptest! {
    #![proptest_config(config(600))]

    #[test]
    fn the_artifact_checker_reads_what_gnu_tar_reads(members in prop::collection::vec(member(), 1..4)) {
        checker_agrees_with_gnu_tar(&members)?;
    }
}

/// The generated shapes include accepted ones: long names and links, pax records, ustar
/// prefixes, hard links, mtime records.
#[test]
fn the_checker_accepts_long_pax_and_prefixed_spellings() {
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
    let m = |flag, name: &str, name_as, link: &str, link_as, data| Member {
        flag,
        name: name.to_owned(),
        name_as,
        link: link.to_owned(),
        link_as,
        data,
        extra: vec![],
    };
    let members = vec![
        m(b'5', "./", Spelling::Field, "", Spelling::Field, 0),
        m(b'0', &long, Spelling::Long, "", Spelling::Field, 3),
        m(
            b'0',
            &format!("p/{}", "q".repeat(90)),
            Spelling::Prefix(USTAR),
            "",
            Spelling::Field,
            700,
        ),
        m(b'0', "x/y", Spelling::Pax, "", Spelling::Field, 0),
        m(
            b'0',
            "same",
            Spelling::LongAndPax(None),
            "",
            Spelling::Field,
            1,
        ),
        m(
            b'2',
            "x/l",
            Spelling::Field,
            &format!("../{}", "t".repeat(150)),
            Spelling::Long,
            0,
        ),
        m(b'2', "x/m", Spelling::Field, "y", Spelling::Pax, 0),
        m(
            b'1',
            "h",
            Spelling::Field,
            &format!("./{long}"),
            Spelling::Long,
            0,
        ),
    ];
    match checker_agrees_with_gnu_tar(&members) {
        Ok(accepted) => assert!(accepted, "refused"),
        Err(e) => panic!("{e}"),
    }
}
