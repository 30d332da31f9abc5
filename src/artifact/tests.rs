use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use tar::{Archive, EntryType, Header};

use super::manifest::{self, hex};
use super::pack::MTIME;
use super::tarcheck::check_symlink_target;
use super::*;
use flate2::read::GzDecoder;
use std::os::unix::fs::symlink;
use std::time::{Duration, SystemTime};

fn sha_of(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn write(path: &Path, content: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The tar inside a zstd or gzip file, by its magic bytes, or the plain tar.
fn gunzip(path: &Path) -> Vec<u8> {
    let bytes = fs::read(path).unwrap();
    let mut out = Vec::new();
    if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::new(&bytes[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        GzDecoder::new(&bytes[..]).read_to_end(&mut out).unwrap();
    } else {
        out = bytes;
    }
    out
}

/// One entry read back from a tar stream.
#[derive(Debug, PartialEq)]
struct Unpacked {
    path: String,
    kind: EntryType,
    mode: u32,
    link: Option<String>,
    data: Vec<u8>,
}

fn entries_of(tar: &[u8]) -> Vec<Unpacked> {
    let mut archive = Archive::new(tar);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header();
        assert_eq!(header.mtime().unwrap(), MTIME);
        assert_eq!(header.uid().unwrap(), 0);
        assert_eq!(header.gid().unwrap(), 0);
        assert_eq!(header.username_bytes().unwrap_or_default(), b"");
        assert_eq!(header.groupname_bytes().unwrap_or_default(), b"");
        let kind = header.entry_type();
        let mode = header.mode().unwrap();
        let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8(l.into_owned()).unwrap());
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push(Unpacked {
            path,
            kind,
            mode,
            link,
            data,
        });
    }
    out
}

fn refused(result: Result<Packed, ArtifactError>) -> (String, Refusal, String) {
    match result {
        Err(e @ ArtifactError::Refused { .. }) => {
            let message = e.to_string();
            let ArtifactError::Refused { entry, refusal, .. } = e else {
                unreachable!()
            };
            (entry, refusal, message)
        }
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(packed) => panic!("expected a refusal, got {} entries", packed.entries),
    }
}

/// The same tree, created file by file in `order`, with mtimes `age` seconds old.
fn make_tree(root: &Path, order: &[usize], age: u64) {
    let files: [(&str, &[u8], u32); 5] = [
        ("app.js", b"console.log(1)\n", 0o644),
        ("lib/a.js", b"a\n", 0o600),
        ("lib/sub/z.txt", b"z\n", 0o640),
        ("bin/run", b"#!/bin/sh\n", 0o700),
        ("a.txt", b"", 0o644),
    ];
    for &i in order {
        let (name, content, mode) = files[i];
        write(&root.join(name), content, mode);
    }
    symlink("../app.js", root.join("lib/app")).unwrap();
    let when = SystemTime::now() - Duration::from_secs(age);
    for (name, _, _) in files {
        File::options()
            .write(true)
            .open(root.join(name))
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
}

#[test]
fn same_content_packs_to_the_same_sha_whatever_order_mtime_or_mode_bits() {
    let temp = tempfile::tempdir().unwrap();
    let (a, b) = (temp.path().join("a"), temp.path().join("b"));
    make_tree(&a, &[0, 1, 2, 3, 4], 10);
    make_tree(&b, &[4, 3, 2, 1, 0], 999_999);
    // Different permission bits that map to the same packed mode.
    fs::set_permissions(b.join("lib/a.js"), fs::Permissions::from_mode(0o664)).unwrap();
    fs::set_permissions(b.join("bin/run"), fs::Permissions::from_mode(0o711)).unwrap();

    let first = pack(&a, temp.path()).unwrap();
    let second = pack(&b, temp.path()).unwrap();
    assert_eq!(first.sha256, second.sha256);
    assert_eq!(first.sha256.len(), 64);
    assert!(
        first
            .sha256
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(first.entries, 9);
    // Compressed for upload: zstd, and gzip for hosts without zstd, the same tar in
    // both, each with the manifest ahead of it.
    let tar = gunzip(first.tar().unwrap());
    for codec in [Codec::Zstd, Codec::Gzip] {
        let c = compress(
            first.tar().unwrap(),
            first.manifest.as_deref(),
            codec,
            temp.path(),
            None,
        )
        .unwrap();
        assert_eq!(c.codec, codec);
        let magic: &[u8] = match codec {
            Codec::Zstd => &[0x28, 0xb5, 0x2f, 0xfd],
            Codec::Gzip => &[0x1f, 0x8b],
        };
        assert!(fs::read(&c.file).unwrap().starts_with(magic));
        assert_eq!(gunzip(&c.file), tar);
        let upload = [c.prefix.clone(), fs::read(&c.file).unwrap()].concat();
        assert_eq!(sha_of(&upload), c.upload_sha256);
        assert_eq!(c.upload_size(), upload.len() as u64);
        assert_eq!(fs::metadata(&c.file).unwrap().len(), c.compressed_size);
        assert_eq!(
            codec.decompress_bytes(&c.prefix).unwrap(),
            first.manifest.as_ref().unwrap().render()
        );
    }

    assert_eq!(gunzip(second.tar().unwrap()), tar);
    // A directory's identity is its manifest's digest: what the tar holds, exactly.
    assert_eq!(first.manifest.as_ref().unwrap().sha256(), first.sha256);
    assert_eq!(tar.len() as u64, first.tar_size);
    let paths: Vec<String> = entries_of(&tar).into_iter().map(|e| e.path).collect();
    assert_eq!(
        paths,
        [
            "bin/",
            "lib/",
            "lib/sub/",
            "bin/run",
            "lib/app",
            "app.js",
            "lib/a.js",
            "a.txt",
            "lib/sub/z.txt"
        ]
    );
}

#[test]
fn modes_are_normalized_and_symlinks_kept() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("app");
    fs::create_dir_all(root.join("private")).unwrap();
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    write(&root.join("private/secret"), b"s", 0o600);
    write(&root.join("run"), b"#!/bin/sh\n", 0o750);
    write(&root.join("group-exec"), b"x", 0o610);
    symlink("private/secret", root.join("link")).unwrap();
    let packed = pack(&root, temp.path()).unwrap();
    let entries = entries_of(&gunzip(packed.tar().unwrap()));
    let find = |path: &str| entries.iter().find(|e| e.path == path).unwrap();
    assert_eq!(find("private/").kind, EntryType::Directory);
    assert_eq!(find("private/").mode, 0o755);
    assert_eq!(find("private/secret").mode, 0o644);
    assert_eq!(find("private/secret").data, b"s");
    assert_eq!(find("run").mode, 0o755);
    assert_eq!(find("group-exec").mode, 0o755);
    let link = find("link");
    assert_eq!(link.kind, EntryType::Symlink);
    assert_eq!(link.mode, 0o777);
    assert_eq!(link.link.as_deref(), Some("private/secret"));
    // The packed file is private to the deployer.
    let mode = fs::metadata(packed.tar().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0);
}

#[test]
fn long_names_and_link_targets_round_trip() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("app");
    let deep = format!("{}/{}", "d".repeat(80), "e".repeat(90));
    let file = format!("{deep}/{}.js", "f".repeat(120));
    write(&root.join(&file), b"long", 0o644);
    let target = format!("{}/{}.js", "e".repeat(90), "f".repeat(120));
    symlink(&target, root.join("d".repeat(80)).join("l".repeat(110))).unwrap();
    let packed = pack(&root, temp.path()).unwrap();
    let entries = entries_of(&gunzip(packed.tar().unwrap()));
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let dir = format!("{}/", "d".repeat(80));
    let link = format!("{}/{}", "d".repeat(80), "l".repeat(110));
    let deep_dir = format!("{deep}/");
    // Directories first, then by extension: the link has none, the file is `.js`.
    assert_eq!(paths, [&dir, &deep_dir, &link, &file]);
    assert_eq!(entries[3].data, b"long");
    assert_eq!(entries[2].link.as_deref(), Some(target.as_str()));
    // The size is known before the tar is written, long-name entries and all.
    let size = packed.tar_size;
    assert_eq!(fs::metadata(packed.tar().unwrap()).unwrap().len(), size);
}

#[test]
fn a_directory_tar_is_written_when_first_needed_and_only_as_listed() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("app");
    write(&root.join("a.txt"), b"alpha\n", 0o644);
    write(&root.join("b.bin"), &[3u8; 10_000], 0o644);
    let count_temps = || {
        fs::read_dir(temp.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("shipit-artifact-")
            })
            .count()
    };
    let packed = pack(&root, temp.path()).unwrap();
    assert_eq!(count_temps(), 0, "packing a directory writes no tar");
    let tar = packed.tar().unwrap().to_owned();
    assert_eq!(count_temps(), 1);
    assert_eq!(packed.tar().unwrap(), tar, "written once");
    assert_eq!(fs::metadata(&tar).unwrap().len(), packed.tar_size);
    drop(packed);
    assert!(!tar.exists(), "deleted with the packed artifact");

    // Changed after packing, before the tar is written: the same size, other bytes; or
    // another size. Either way nothing the identity does not name is written.
    for (content, name) in [(b"ALPHA\n".as_slice(), "same size"), (b"alpha!\n", "grown")] {
        let packed = pack(&root, temp.path()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        write(&root.join("a.txt"), content, 0o644);
        let err = packed.tar().unwrap_err();
        assert!(
            err.contains("`a.txt`") && err.contains("changed"),
            "{name}: {err}"
        );
        assert_eq!(packed.tar().unwrap_err(), err, "{name}: the failure stays");
        write(&root.join("a.txt"), b"alpha\n", 0o644);
    }
    assert_eq!(count_temps(), 0, "a failed write leaves no file");

    // Streamed straight from the files: the same check.
    let packed = pack(&root, temp.path()).unwrap();
    write(&root.join("b.bin"), &[4u8; 10_000], 0o644);
    let err = packed.lazy_tar().write_to(&mut Vec::new()).unwrap_err();
    assert!(err.contains("`b.bin`") && err.contains("changed"), "{err}");
}

/// Directories first (each before what it holds), then files and symlinks by extension:
/// like content together, for the compressor.
#[test]
fn the_tar_holds_directories_first_then_files_grouped_by_extension() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("app");
    write(&root.join("z/b.js"), b"b\n", 0o644);
    write(&root.join("a/c.BIN"), &[1u8; 100], 0o644);
    write(&root.join("a/a.js"), b"a\n", 0o644);
    write(&root.join("README"), b"r\n", 0o644);
    write(&root.join("a/.hidden"), b"h\n", 0o644);
    write(&root.join("z/d.bin"), &[2u8; 100], 0o644);
    std::os::unix::fs::symlink("b.js", root.join("z/link.js")).unwrap();
    let packed = pack(&root, temp.path()).unwrap();
    let tar = fs::read(packed.tar().unwrap()).unwrap();
    let order: Vec<String> = entries_of(&tar).into_iter().map(|e| e.path).collect();
    assert_eq!(
        order,
        [
            "a/",
            "z/",
            "README",
            "a/.hidden",
            "a/c.BIN",
            "z/d.bin",
            "a/a.js",
            "z/b.js",
            "z/link.js"
        ]
    );
    // The order is the stream's only: the same files in another order pack the same.
    let (identity, tar_size) = (packed.sha256.clone(), packed.tar_size);
    drop(packed);
    let again = pack(&root, temp.path()).unwrap();
    assert_eq!((again.sha256.clone(), again.tar_size), (identity, tar_size));
    assert_eq!(fs::metadata(again.tar().unwrap()).unwrap().len(), tar_size);
}

#[test]
fn a_directory_the_manifest_cannot_describe_is_written_and_hashed_at_once() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("app");
    write(&root.join("back\\slash"), b"x", 0o644);
    let packed = pack(&root, temp.path()).unwrap();
    assert!(packed.manifest.is_none());
    let tar = fs::read(packed.tar().unwrap()).unwrap();
    assert_eq!(sha_of(&tar), packed.sha256);
    assert_eq!(tar.len() as u64, packed.tar_size);
}

#[test]
fn symlink_targets_are_packed_byte_for_byte() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("app");
    write(&root.join("sub/x"), b"x", 0o644);
    for (name, target) in [("a", "sub/"), ("b", "./sub//x"), ("c", "sub/./x")] {
        symlink(target, root.join(name)).unwrap();
    }
    let packed = pack(&root, temp.path()).unwrap();
    let links: Vec<(String, Option<String>)> =
        entries_of(&fs::read(packed.tar().unwrap()).unwrap())
            .into_iter()
            .filter(|e| e.kind == EntryType::Symlink)
            .map(|e| (e.path, e.link))
            .collect();
    let want = |n: &str, t: &str| (n.to_owned(), Some(t.to_owned()));
    assert_eq!(
        links,
        [
            want("a", "sub/"),
            want("b", "./sub//x"),
            want("c", "sub/./x")
        ]
    );
    let m = packed.manifest.unwrap();
    assert_eq!(
        m.get("a").unwrap().kind,
        manifest::Kind::Symlink {
            target: "sub/".into()
        }
    );
}

#[test]
fn gnu_tar_extracts_the_packed_directory_exactly() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("app");
    write(&root.join("bin/server"), b"#!/bin/sh\necho hi\n", 0o755);
    write(&root.join("public/css/site.css"), b"body{}\n", 0o644);
    write(
        &root.join(format!("public/{}.txt", "n".repeat(150))),
        b"long\n",
        0o644,
    );
    fs::create_dir_all(root.join("empty")).unwrap();
    symlink("../bin/server", root.join("public/server")).unwrap();
    let packed = pack(&root, temp.path()).unwrap();

    let out = temp.path().join("out");
    fs::create_dir(&out).unwrap();
    let status = Command::new("tar")
        .arg("-xf")
        .arg(packed.tar().unwrap())
        .arg("-C")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&root)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    let mode = fs::metadata(out.join("bin/server"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111);
    assert_eq!(
        fs::read_link(out.join("public/server")).unwrap(),
        Path::new("../bin/server")
    );
}

#[test]
fn directory_refusals_name_the_entry() {
    let temp = tempfile::tempdir().unwrap();

    let root = temp.path().join("escape");
    write(&root.join("a/file"), b"x", 0o644);
    symlink("../../x", root.join("a/b")).unwrap();
    let (entry, refusal, message) = refused(pack(&root, temp.path()));
    assert_eq!(entry, "a/b");
    assert_eq!(
        refusal,
        Refusal::EscapingTarget {
            target: "../../x".into()
        }
    );
    assert!(message.contains("`a/b`"), "{message}");

    let root = temp.path().join("absolute");
    write(&root.join("a"), b"x", 0o644);
    symlink("/etc/passwd", root.join("passwd")).unwrap();
    let (entry, refusal, _) = refused(pack(&root, temp.path()));
    assert_eq!(entry, "passwd");
    assert!(matches!(refusal, Refusal::AbsoluteTarget { .. }));

    // shipit's own files in a release: REVISION is a file it writes, `.shipit` its
    // directory, never reached through a link.
    let root = temp.path().join("revision");
    write(&root.join("REVISION/x"), b"x", 0o644);
    let (entry, refusal, _) = refused(pack(&root, temp.path()));
    assert_eq!(
        (entry.as_str(), refusal),
        ("REVISION", Refusal::RevisionDir)
    );
    let root = temp.path().join("reserved");
    write(&root.join("a/REVISION"), b"x", 0o644);
    symlink("../.shipit/manifest", root.join("a/m")).unwrap();
    let (entry, refusal, _) = refused(pack(&root, temp.path()));
    assert_eq!(entry, "a/m");
    assert_eq!(
        refusal,
        Refusal::IntoReserved {
            target: "../.shipit/manifest".into()
        }
    );

    let root = temp.path().join("fifo");
    fs::create_dir_all(root.join("run")).unwrap();
    let fifo = std::ffi::CString::new(root.join("run/pipe").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let (entry, refusal, _) = refused(pack(&root, temp.path()));
    assert_eq!(entry, "run/pipe");
    assert_eq!(refusal, Refusal::Special { kind: "fifo" });

    let root = temp.path().join("socket");
    fs::create_dir_all(&root).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(root.join("s.sock")).unwrap();
    let (entry, refusal, _) = refused(pack(&root, temp.path()));
    assert_eq!(entry, "s.sock");
    assert_eq!(refusal, Refusal::Special { kind: "socket" });

    let root = temp.path().join("latin1");
    fs::create_dir_all(&root).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    fs::write(root.join(name), b"x").unwrap();
    let (entry, refusal, message) = refused(pack(&root, temp.path()));
    assert_eq!(entry, "caf\u{fffd}.txt");
    assert_eq!(refusal, Refusal::NameNotUtf8);
    assert!(message.contains("UTF-8"), "{message}");
}

#[test]
fn symlink_targets_are_judged_lexically() {
    assert_eq!(check_symlink_target(1, b"../c"), Ok(()));
    assert_eq!(check_symlink_target(0, b"./x/y"), Ok(()));
    assert_eq!(check_symlink_target(2, b"../../top"), Ok(()));
    assert_eq!(check_symlink_target(1, b".."), Ok(()));
    assert!(matches!(
        check_symlink_target(1, b"../../x"),
        Err(Refusal::EscapingTarget { .. })
    ));
    assert!(matches!(
        check_symlink_target(0, b".."),
        Err(Refusal::EscapingTarget { .. })
    ));
    assert!(matches!(
        check_symlink_target(3, b"x/../y"),
        Err(Refusal::UncheckableTarget { .. })
    ));
    assert!(matches!(
        check_symlink_target(3, b"/abs"),
        Err(Refusal::AbsoluteTarget { .. })
    ));
    assert_eq!(check_symlink_target(0, b""), Err(Refusal::EmptyTarget));
}

#[test]
fn empty_missing_and_unsupported_artifacts_are_errors() {
    let temp = tempfile::tempdir().unwrap();
    let empty = temp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let err = pack(&empty, temp.path()).unwrap_err();
    assert!(matches!(err, ArtifactError::Empty { .. }), "{err}");
    assert!(err.to_string().contains("nothing to deploy"));

    let missing = temp.path().join("nope");
    let err = pack(&missing, temp.path()).unwrap_err();
    assert!(matches!(err, ArtifactError::Missing { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("`{}`", missing.display()))
    );

    let zip = temp.path().join("app.zip");
    fs::write(&zip, b"PK").unwrap();
    let err = pack(&zip, temp.path()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "artifact `{}` is neither a directory nor a `.tar.gz`, `.tgz` or `.tar` file",
            zip.display()
        )
    );
}

// --- tarballs -------------------------------------------------------------------

/// Appends an entry with its name and link name written as raw bytes, bypassing the
/// tar crate's own refusals, as a hostile archive would be.
fn raw_entry(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &[u8],
    kind: EntryType,
    link: &[u8],
    data: &[u8],
) {
    let mut header = Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

/// Name, type, link name and data of one raw entry.
type RawEntry<'a> = (&'a [u8], EntryType, &'a [u8], &'a [u8]);

fn tar_of(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for &(name, kind, link, data) in entries {
        raw_entry(&mut builder, name, kind, link, data);
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

const FILE: EntryType = EntryType::Regular;

/// One pax record: `<length> <key>=<value>\n`, the length counting itself.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while (len.to_string().len() + body.len()) != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

fn pack_bytes(dir: &Path, name: &str, bytes: &[u8]) -> Result<Packed, ArtifactError> {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    pack(&path, dir)
}

#[test]
fn tarball_refusals_name_the_entry() {
    let temp = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<u8>, &str, Refusal)> = vec![
        (
            tar_of(&[(b"ok.txt", FILE, b"", b"x"), (b"../evil", FILE, b"", b"x")]),
            "../evil",
            Refusal::ParentComponent,
        ),
        (
            tar_of(&[(b"./a/../../evil", FILE, b"", b"x")]),
            "./a/../../evil",
            Refusal::ParentComponent,
        ),
        (
            tar_of(&[(b"/etc/passwd", FILE, b"", b"x")]),
            "/etc/passwd",
            Refusal::AbsolutePath,
        ),
        (
            tar_of(&[
                (b"a/", EntryType::Directory, b"", b""),
                (b"a/link", EntryType::Symlink, b"../../x", b""),
            ]),
            "a/link",
            Refusal::EscapingTarget {
                target: "../../x".into(),
            },
        ),
        (
            tar_of(&[(b"etc", EntryType::Symlink, b"/etc", b"")]),
            "etc",
            Refusal::AbsoluteTarget {
                target: "/etc".into(),
            },
        ),
        (
            tar_of(&[(b"shadow", EntryType::Link, b"/etc/shadow", b"")]),
            "shadow",
            Refusal::EscapingHardLink {
                target: "/etc/shadow".into(),
            },
        ),
        (
            tar_of(&[(b"up", EntryType::Link, b"../x", b"")]),
            "up",
            Refusal::EscapingHardLink {
                target: "../x".into(),
            },
        ),
        (
            tar_of(&[(b"dev/tty", EntryType::Char, b"", b"")]),
            "dev/tty",
            Refusal::Special {
                kind: "character device",
            },
        ),
        (
            tar_of(&[(b"sda", EntryType::Block, b"", b"")]),
            "sda",
            Refusal::Special {
                kind: "block device",
            },
        ),
        (
            tar_of(&[(b"pipe", EntryType::Fifo, b"", b"")]),
            "pipe",
            Refusal::Special { kind: "fifo" },
        ),
        (
            // The classic: a link to a directory, then a file written through it.
            tar_of(&[
                (b"sub/", EntryType::Directory, b"", b""),
                (b"l", EntryType::Symlink, b"sub", b""),
                (b"l/x", FILE, b"", b"x"),
            ]),
            "l/x",
            Refusal::UnderSymlink { link: "l".into() },
        ),
        (
            tar_of(&[
                (b"a/", EntryType::Directory, b"", b""),
                (b"a/up", EntryType::Symlink, b"..", b""),
                (b"b", EntryType::Symlink, b"a/up/..", b""),
            ]),
            "b",
            Refusal::UncheckableTarget {
                target: "a/up/..".into(),
            },
        ),
        (
            tar_of(&[(b"caf\xe9", FILE, b"", b"x")]),
            "caf\u{fffd}",
            Refusal::NameNotUtf8,
        ),
    ];
    for (i, (tar, entry, refusal)) in cases.into_iter().enumerate() {
        for (name, bytes) in [
            (format!("case{i}.tar"), tar.clone()),
            (format!("case{i}.tar.gz"), gzip(&tar)),
        ] {
            let (got_entry, got_refusal, message) = refused(pack_bytes(temp.path(), &name, &bytes));
            assert_eq!(
                (got_entry.as_str(), &got_refusal),
                (entry, &refusal),
                "{name}"
            );
            assert!(message.contains(&format!("`{entry}`")), "{message}");
            assert!(message.contains(&name), "{message}");
        }
    }
}

#[allow(dead_code)]
mod rawtar {
    include!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/common/rawtar.rs"
    ));
}
use rawtar::{GNU, USTAR, seal};

/// A raw 512-byte header, every field as given (mode 0644, mtime 0): `magic` is the 8
/// bytes of magic and version at offset 257.
fn raw_header(name: &[u8], flag: u8, link: &[u8], size: u64, magic: &[u8; 8]) -> Vec<u8> {
    rawtar::header(name, b"", flag, link, size, magic, 0o644, 0)
}

/// A member: its header and its data, padded.
fn member(name: &[u8], flag: u8, link: &[u8], data: &[u8], magic: &[u8; 8]) -> Vec<u8> {
    let out = raw_header(name, flag, link, data.len() as u64, magic);
    rawtar::padded([out, data.to_vec()].concat())
}

fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    member(b"PaxHeader", b'x', b"", &rawtar::pax_data(records), USTAR)
}

fn end(members: &[Vec<u8>]) -> Vec<u8> {
    let mut out = members.concat();
    out.extend_from_slice(&[0; 1024]);
    out
}

#[test]
fn ambiguous_or_conflicting_entries_are_refused() {
    let temp = tempfile::tempdir().unwrap();
    let file = |name: &[u8]| member(name, b'0', b"", b"x", GNU);
    let link = |name: &[u8], flag: u8, target: &[u8]| member(name, flag, target, b"", GNU);
    let mut odd_prefix = raw_header(b"passwd", b'0', b"", 1, b"ustar\0xx");
    odd_prefix[345..349].copy_from_slice(b"/etc");
    seal(&mut odd_prefix);
    odd_prefix.extend_from_slice(&[b'x'; 512]);
    let cases: Vec<(Vec<u8>, Refusal)> = vec![
        // A GNU long name and a pax path on one symlink.
        (
            end(&[
                member(b"././@LongLink", b'L', b"", b"app/evil\0", GNU),
                pax(&[("path", b"app/fine")]),
                link(b"short", b'2', b"x"),
            ]),
            Refusal::Ambiguous { what: "name" },
        ),
        (
            end(&[
                member(b"././@LongLink", b'K', b"", b"/etc\0", GNU),
                pax(&[("linkpath", b"harmless")]),
                link(b"l", b'2', b"x"),
            ]),
            Refusal::Ambiguous {
                what: "link target",
            },
        ),
        (end(&[odd_prefix]), Refusal::UnknownFormat),
        (
            end(&[member(b"junk", b'0', b"", b"x", b"ustar\0  ")]),
            Refusal::UnknownFormat,
        ),
        (
            end(&[pax(&[("size", b"512")]), member(b"f", b'0', b"", b"", GNU)]),
            Refusal::PaxOverride { key: "size".into() },
        ),
        (
            end(&[pax(&[("path", b"a"), ("path", b"b")]), file(b"f")]),
            Refusal::PaxTwice { key: "path".into() },
        ),
        (
            end(&[pax(&[("GNU.sparse.major", b"1")]), file(b"f")]),
            Refusal::PaxOverride {
                key: "GNU.sparse.major".into(),
            },
        ),
        (
            end(&[pax(&[("path", b"a\0/../../x")]), file(b"f")]),
            Refusal::NulInName,
        ),
        (end(&[file(b"dir/")]), Refusal::FileNamedAsDir),
        (
            end(&[member(b"d/", b'5', b"", &[b'x'; 600], GNU)]),
            Refusal::DataOnNonFile,
        ),
        (end(&[file(b"a"), file(b"./a")]), Refusal::Duplicate),
        (
            end(&[link(b"a", b'2', b"b"), file(b"a")]),
            Refusal::UnderSymlink { link: "a".into() },
        ),
        (
            end(&[file(b"a"), file(b"a/b")]),
            Refusal::UnderFile { file: "a".into() },
        ),
        (end(&[file(b"a/b"), file(b"a")]), Refusal::Duplicate),
        // Finding 14: `tar` on the host fails on these.
        (
            end(&[link(b"h", b'1', b"missing")]),
            Refusal::HardLinkToNothing {
                target: "missing".into(),
            },
        ),
        (
            end(&[link(b"h", b'1', b"h")]),
            Refusal::HardLinkToNothing { target: "h".into() },
        ),
        (
            end(&[link(b"d/", b'5', b""), link(b"h", b'1', b"d")]),
            Refusal::HardLinkToNothing { target: "d".into() },
        ),
        // A hard link to a symlink is that symlink, read from another directory.
        (
            end(&[link(b"a/b/l", b'2', b"../x"), link(b"h", b'1', b"a/b/l")]),
            Refusal::HardLinkToNothing {
                target: "a/b/l".into(),
            },
        ),
        (end(&[link(b"REVISION/", b'5', b"")]), Refusal::RevisionDir),
        (end(&[file(b"./REVISION/x")]), Refusal::RevisionDir),
        (
            end(&[link(b"s", b'2', b"./.shipit")]),
            Refusal::IntoReserved {
                target: "./.shipit".into(),
            },
        ),
        (
            end(&[link(b"a/s", b'2', b"../.shipit/manifest")]),
            Refusal::IntoReserved {
                target: "../.shipit/manifest".into(),
            },
        ),
    ];
    for (i, (tar, refusal)) in cases.into_iter().enumerate() {
        let name = format!("case{i}.tar");
        let (entry, got, message) = refused(pack_bytes(temp.path(), &name, &tar));
        assert_eq!(got, refusal, "{name}: {message}");
        assert!(message.contains(&format!("`{entry}`")), "{message}");
        assert!(message.contains(&name), "{message}");
    }

    // Agreeing spellings are not ambiguous; a file may be named REVISION (shipit
    // replaces it), and a hard link may follow its file.
    let fine = end(&[
        member(b"././@LongLink", b'L', b"", b"app/same\0", GNU),
        pax(&[("path", b"app/same"), ("mtime", b"1.5")]),
        link(b"short", b'2', b"x"),
        file(b"REVISION"),
        link(b"h", b'1', b"./REVISION"),
        link(b"l", b'2', b".shipit-not"),
    ]);
    let packed = pack_bytes(temp.path(), "fine.tar", &fine).unwrap();
    assert_eq!(packed.entries, 4);
    assert_eq!(
        gnu_listing(&fs::read(packed.tar().unwrap()).unwrap()),
        gnu_listing(&fine)
    );
}

#[test]
fn tarball_with_a_pax_global_path_or_data_after_the_end_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    raw_entry(
        &mut builder,
        b"pax_global_header",
        EntryType::XGlobalHeader,
        b"",
        &pax_record("path", "../../evil"),
    );
    raw_entry(&mut builder, b"ok", FILE, b"", b"x");
    let tar = builder.into_inner().unwrap();
    let (entry, refusal, _) = refused(pack_bytes(temp.path(), "g.tar", &tar));
    assert_eq!(entry, "pax_global_header");
    assert_eq!(refusal, Refusal::PaxOverride { key: "path".into() });

    // A lone zero block, then an entry only a lenient `tar` would read.
    let mut tar = tar_of(&[(b"ok", FILE, b"", b"x")]);
    tar.truncate(tar.len() - 1024);
    tar.extend_from_slice(&[0; 512]);
    tar.extend_from_slice(&tar_of(&[(b"../evil", FILE, b"", b"x")]));
    let err = pack_bytes(temp.path(), "lone.tar", &tar).unwrap_err();
    assert!(
        matches!(err, ArtifactError::NotTar { format: "tar", .. }),
        "{err}"
    );
    let err = pack_bytes(temp.path(), "lone.tgz", &gzip(&tar)).unwrap_err();
    assert!(
        matches!(
            err,
            ArtifactError::NotTar {
                format: "tar.gz",
                ..
            }
        ),
        "{err}"
    );

    // A second gzip member holding a hostile entry.
    let mut two = gzip(&tar_of(&[(b"ok", FILE, b"", b"x")])[..1024]);
    two.extend_from_slice(&gzip(&tar_of(&[(b"../evil", FILE, b"", b"x")])));
    let (entry, _, _) = refused(pack_bytes(temp.path(), "two.tar.gz", &two));
    assert_eq!(entry, "../evil");
}

/// Path, type, link name and data of each member, as the tar crate reads them.
fn members(tar: &[u8]) -> Vec<(String, EntryType, Option<String>, Vec<u8>)> {
    let mut archive = Archive::new(tar);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8(l.into_owned()).unwrap());
        let kind = entry.header().entry_type();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push((path, kind, link, data));
    }
    out
}

/// GNU `tar -tv`'s listing of `tar`, the archive's root left out and `./` dropped
/// (dates, owners and the mode bits the host does not keep aside: the type, size and
/// name and link of each member).
fn gnu_listing(tar: &[u8]) -> Vec<String> {
    let out = rawtar::gnu_tv(tar);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (kind, size) = (&fields[0][..1], fields[2]);
            let rest = &line[line.find('"').unwrap()..];
            let rest = rest.replacen("\"./", "\"", 2);
            (rest != "\"\"" && rest != "\"./\"").then(|| format!("{kind} {size} {rest}"))
        })
        .collect()
}

#[test]
fn good_tarballs_are_adopted_as_a_fresh_tar_of_their_checked_entries() {
    let temp = tempfile::tempdir().unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    raw_entry(&mut builder, b"./", EntryType::Directory, b"", b"");
    raw_entry(&mut builder, b"./app/", EntryType::Directory, b"", b"");
    raw_entry(&mut builder, b"./app/main.js", FILE, b"", b"main\n");
    raw_entry(
        &mut builder,
        b"./app/up",
        EntryType::Symlink,
        b"../top.txt",
        b"",
    );
    raw_entry(&mut builder, b"./top.txt", FILE, b"", b"top\n");
    raw_entry(&mut builder, b"./hard", EntryType::Link, b"./top.txt", b"");
    let mut header = Header::new_gnu();
    header.set_size(4);
    header.set_mode(0o644);
    let long = format!("{}/{}.txt", "x".repeat(90), "y".repeat(90));
    builder
        .append_data(&mut header, format!("./{long}"), &b"long"[..])
        .unwrap();
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    let far = format!("{}/x", "z".repeat(120));
    builder
        .append_link(&mut header, "./far", format!("./{far}"))
        .unwrap();
    let tar = builder.into_inner().unwrap();

    let packed = pack_bytes(temp.path(), "plain.tar", &tar).unwrap();
    let copy = fs::read(packed.tar().unwrap()).unwrap();
    assert_eq!(packed.sha256, sha_of(&copy));
    assert_eq!(packed.tar_size, copy.len() as u64);
    assert_eq!(packed.entries, 8);
    // The copy: names normalized, no root entry, link targets as written.
    let member = |path: &str, kind, link: Option<&str>, data: &[u8]| {
        (
            path.to_owned(),
            kind,
            link.map(str::to_owned),
            data.to_vec(),
        )
    };
    assert_eq!(
        members(&copy),
        vec![
            member("app/", EntryType::Directory, None, b""),
            member("app/main.js", FILE, None, b"main\n"),
            member("app/up", EntryType::Symlink, Some("../top.txt"), b""),
            member("top.txt", FILE, None, b"top\n"),
            member("hard", EntryType::Link, Some("top.txt"), b""),
            member(&long, FILE, None, b"long"),
            member("far", EntryType::Symlink, Some(&format!("./{far}")), b""),
        ]
    );
    // GNU tar reads the copy as it reads the tarball.
    assert_eq!(gnu_listing(&copy), gnu_listing(&tar));
    // Its manifest is the tree `tar -x` makes: the hard link has its target's content.
    let m = packed.manifest.as_ref().unwrap();
    let top = sha_of(b"top\n");
    assert_eq!(m.get("hard"), m.get("top.txt"));
    assert_eq!(m.get("hard").unwrap().sha256(), Some(top.as_str()));
    assert_eq!(
        m.get("app/up").unwrap().kind,
        manifest::Kind::Symlink {
            target: "../top.txt".into()
        }
    );

    // The same entries, whatever the compression: the same copy and identity.
    let gz = gzip(&tar);
    let packed_gz = pack_bytes(temp.path(), "app.tgz", &gz).unwrap();
    assert_eq!(packed_gz.sha256, packed.sha256);
    assert_eq!(fs::read(packed_gz.tar().unwrap()).unwrap(), copy);
    assert_eq!(packed_gz.manifest, packed.manifest);
    let packed_gz = pack_bytes(temp.path(), "app.TAR.GZ", &gz).unwrap();
    assert_eq!(packed_gz.sha256, packed.sha256);
    // The copy is a fixed point.
    let again = pack_bytes(temp.path(), "copy.tar", &copy).unwrap();
    assert_eq!(again.sha256, packed.sha256);
}

#[test]
fn tarballs_made_by_gnu_tar_are_accepted() {
    let temp = tempfile::tempdir().unwrap();
    let src = temp.path().join("src");
    write(
        &src.join(format!("lib/{}/{}.js", "m".repeat(70), "n".repeat(70))),
        b"x",
        0o644,
    );
    write(&src.join("bin/run"), b"#!/bin/sh\n", 0o755);
    symlink("../bin/run", src.join("lib/run")).unwrap();
    symlink(format!("../bin/{}", "t".repeat(110)), src.join("lib/far")).unwrap();
    let mut shas = Vec::new();
    for (name, format) in [
        ("gnu.tar.gz", "gnu"),
        ("pax.tar.gz", "pax"),
        ("ustar.tar", "ustar"),
    ] {
        let out = temp.path().join(name);
        let compress = if name.ends_with(".gz") { "-czf" } else { "-cf" };
        let mut cmd = Command::new("tar");
        cmd.arg(format!("--format={format}"));
        if format == "ustar" {
            // ustar cannot hold the long name; leave that directory out.
            cmd.arg("--exclude=./lib");
        }
        cmd.arg(compress).arg(&out).arg("-C").arg(&src).arg(".");
        assert!(cmd.status().unwrap().success());
        let packed = pack(&out, temp.path()).unwrap();
        let tar = if name.ends_with(".gz") {
            gunzip(&out)
        } else {
            fs::read(&out).unwrap()
        };
        let copy = fs::read(packed.tar().unwrap()).unwrap();
        assert_eq!(gnu_listing(&copy), gnu_listing(&tar), "{name}");
        assert!(packed.entries >= 3, "{name}");
        shas.push(packed.sha256);
    }
    // The identity is the entries', not the format's.
    assert_eq!(shas[0], shas[1]);
    assert_ne!(shas[0], shas[2]);
}

#[test]
fn gnu_sparse_files_are_sent_whole() {
    let temp = tempfile::tempdir().unwrap();
    let src = temp.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut file = File::create(src.join("holes")).unwrap();
    file.set_len(1 << 20).unwrap();
    std::io::Seek::seek(&mut file, io::SeekFrom::Start(512 << 10)).unwrap();
    file.write_all(b"middle").unwrap();
    drop(file);
    let out = temp.path().join("sparse.tar");
    let status = Command::new("tar")
        .args(["--format=gnu", "-S", "-cf"])
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .arg("holes")
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        fs::read(&out).unwrap()[156],
        b'S',
        "GNU tar wrote no sparse entry"
    );
    let packed = pack(&out, temp.path()).unwrap();
    let copy = fs::read(packed.tar().unwrap()).unwrap();
    let mut want = vec![0u8; 1 << 20];
    want[512 << 10..(512 << 10) + 6].copy_from_slice(b"middle");
    assert_eq!(members(&copy), vec![("holes".into(), FILE, None, want)]);
    assert_eq!(gnu_listing(&copy), gnu_listing(&fs::read(&out).unwrap()));
}

#[test]
fn corrupt_tarballs_are_not_valid() {
    let temp = tempfile::tempdir().unwrap();
    let tar = tar_of(&[(b"a", FILE, b"", &[7u8; 5000])]);
    let gz = gzip(&tar);
    let err = pack_bytes(temp.path(), "cut.tar.gz", &gz[..gz.len() / 2]).unwrap_err();
    assert!(matches!(err, ArtifactError::NotTar { .. }), "{err}");
    assert!(
        err.to_string().ends_with("is not a valid tar.gz file"),
        "{err}"
    );
    let err = pack_bytes(temp.path(), "plain.tgz", &tar).unwrap_err();
    assert!(matches!(err, ArtifactError::NotTar { .. }), "{err}");
    let err = pack_bytes(temp.path(), "cut.tar", &tar[..1000]).unwrap_err();
    assert!(
        matches!(err, ArtifactError::NotTar { format: "tar", .. }),
        "{err}"
    );
    let err = pack_bytes(temp.path(), "junk.tar", &[b'j'; 2048]).unwrap_err();
    assert!(matches!(err, ArtifactError::NotTar { .. }), "{err}");
    let err = pack_bytes(temp.path(), "empty.tar", &[0; 1024]).unwrap_err();
    assert!(matches!(err, ArtifactError::Empty { .. }), "{err}");
}

#[test]
fn a_large_directory_streams_through() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("big");
    fs::create_dir(&root).unwrap();
    for i in 0..4 {
        // Sparse on most filesystems: 100 MB to read, little disk used.
        File::create(root.join(format!("zeros{i}")))
            .unwrap()
            .set_len(25 << 20)
            .unwrap();
    }
    let packed = pack(&root, temp.path()).unwrap();
    assert_eq!(packed.entries, 4);
    assert!(packed.tar_size > 100 << 20);
    let c = compress(packed.tar().unwrap(), None, Codec::Zstd, temp.path(), None).unwrap();
    assert!(c.compressed_size < 2 << 20, "{}", c.compressed_size);
}

/// A packed directory sent with the files' time: every entry of the stream carries it
/// (long names and long link targets included), the entries are otherwise the packed
/// tar's, and GNU `tar` gives the files that time; the packed tar and its sha256 do not
/// change. A tarball's entries keep their own times.
#[test]
fn a_stamped_stream_carries_the_files_time_and_the_same_entries() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("dist");
    let deep = format!("{}/{}", "d".repeat(60), "f".repeat(60));
    write(&root.join(&deep), b"deep", 0o644);
    write(&root.join("block"), &[7u8; 512], 0o644);
    write(&root.join("big.bin"), &vec![9u8; 300_000], 0o755);
    write(&root.join("empty"), b"", 0o644);
    fs::create_dir_all(root.join("static/css")).unwrap();
    symlink(&deep, root.join("to-deep")).unwrap();
    let packed = pack(&root, temp.path()).unwrap();
    let sha = packed.sha256.clone();
    let plain = gunzip(packed.tar().unwrap());
    const T: u64 = 1_700_000_123;
    let packed = packed.stamped(T);
    assert_eq!((packed.fixed_mtime, packed.files_mtime), (true, Some(T)));
    // Stamping changes neither the identity nor the packed tar.
    assert_eq!(packed.sha256, sha);
    assert_eq!(gunzip(packed.tar().unwrap()), plain);

    let read = |tar: &[u8]| -> Vec<(String, EntryType, u64, Vec<u8>)> {
        let mut out = Vec::new();
        for entry in Archive::new(tar).entries().unwrap() {
            let mut entry = entry.unwrap();
            let mtime = entry.header().mtime().unwrap();
            let kind = entry.header().entry_type();
            let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push((path, kind, mtime, data));
        }
        out
    };
    let before = read(&plain);
    assert!(before.iter().all(|e| e.2 == MTIME));
    for codec in [Codec::Zstd, Codec::Gzip] {
        let c = compress(
            packed.tar().unwrap(),
            packed.manifest.as_deref(),
            codec,
            temp.path(),
            packed.files_mtime,
        )
        .unwrap();
        let stamped = gunzip(&c.file);
        assert_eq!(stamped.len(), plain.len());
        let after = read(&stamped);
        assert_eq!(after.len(), before.len());
        for (a, b) in after.iter().zip(&before) {
            assert_eq!((&a.0, a.1, &a.3), (&b.0, b.1, &b.3));
            assert_eq!(a.2, T, "{}", a.0);
        }
        let upload = [c.prefix.clone(), fs::read(&c.file).unwrap()].concat();
        assert_eq!(sha_of(&upload), c.upload_sha256);
    }
    // What the hosts' GNU `tar` makes of it.
    let c = compress(
        packed.tar().unwrap(),
        None,
        Codec::Gzip,
        temp.path(),
        Some(T),
    )
    .unwrap();
    let out = temp.path().join("out");
    fs::create_dir(&out).unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&c.file)
        .arg("-C")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    use std::os::unix::fs::MetadataExt;
    for path in [deep.as_str(), "block", "big.bin", "empty", "static/css"] {
        assert_eq!(
            fs::metadata(out.join(path)).unwrap().mtime(),
            T as i64,
            "{path}"
        );
    }

    // A tarball: its entries' own times, never the files' time.
    let tarball = temp.path().join("app.tar");
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&tarball)
        .arg("-C")
        .arg(&root)
        .arg("block")
        .status()
        .unwrap();
    assert!(status.success());
    let adopted = pack(&tarball, temp.path()).unwrap().stamped(T);
    assert_eq!((adopted.fixed_mtime, adopted.files_mtime), (false, None));
}

#[test]
fn pack_takes_an_unchanged_files_digest_from_the_cache_and_rehashes_a_changed_one() {
    use super::digests::{Digests, Stat};
    let temp = tempfile::tempdir().unwrap();
    let cache = temp.path().join("cache");
    let src = temp.path().join("app");
    write(&src.join("a.txt"), b"alpha\n", 0o644);
    write(&src.join("lib/b.bin"), &[7u8; 70_000], 0o755);
    let plain = pack(&src, temp.path()).unwrap();

    // A first pack with the cache: the same tar, sha256 and manifest as without it.
    let first = pack_cached(&src, temp.path(), Some(&cache)).unwrap();
    assert_eq!(first.sha256, plain.sha256);
    assert_eq!(first.manifest, plain.manifest);
    assert_eq!(
        fs::read(first.tar().unwrap()).unwrap(),
        fs::read(plain.tar().unwrap()).unwrap()
    );

    // A cache that says `a.txt` (as it stands) has another digest: trusted while the stat
    // record matches, which shows the file was not hashed again.
    let poisoned = "e".repeat(64);
    let stat_a = || Stat::of(&fs::symlink_metadata(src.join("a.txt")).unwrap());
    let mut digests = Digests::open(&cache, &src);
    digests.put("a.txt", stat_a(), poisoned.clone());
    digests.save(i128::MAX / 2).unwrap();
    let hit = pack_cached(&src, temp.path(), Some(&cache)).unwrap();
    let sha_of_a = |p: &Packed| {
        p.manifest
            .as_ref()
            .unwrap()
            .get("a.txt")
            .unwrap()
            .sha256()
            .unwrap()
            .to_owned()
    };
    assert_eq!(sha_of_a(&hit), poisoned);
    assert_ne!(
        hit.sha256, plain.sha256,
        "the identity follows the manifest"
    );
    // Nothing is sent that the identity does not name: writing the tar reads the file
    // again, finds another digest, fails and forgets the cache.
    let err = hit.tar().unwrap_err();
    assert!(err.contains("`a.txt`") && err.contains("changed"), "{err}");
    assert_eq!(fs::read_dir(cache.join("digests")).unwrap().count(), 0);
    let again = pack_cached(&src, temp.path(), Some(&cache)).unwrap();
    assert_eq!(again.sha256, plain.sha256);

    // The same size, new content: the stat record changed, so it is read again.
    let mut digests = Digests::open(&cache, &src);
    digests.put("a.txt", stat_a(), poisoned.clone());
    digests.save(i128::MAX / 2).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    write(&src.join("a.txt"), b"ALPHA\n", 0o644);
    let miss = pack_cached(&src, temp.path(), Some(&cache)).unwrap();
    assert_eq!(sha_of_a(&miss), sha_of(b"ALPHA\n"));
    assert_eq!(miss.manifest, pack(&src, temp.path()).unwrap().manifest);

    // A corrupt cache is ignored: digests computed, the file rewritten.
    let file = fs::read_dir(cache.join("digests"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::write(&file, b"shipit-digests 1\ngarbage").unwrap();
    let fresh = pack_cached(&src, temp.path(), Some(&cache)).unwrap();
    assert_eq!(fresh.manifest, miss.manifest);
    assert!(
        fs::read_to_string(&file)
            .unwrap()
            .starts_with("shipit-digests 1\n/")
    );
}

#[test]
fn a_framed_stream_decompresses_to_the_tar_whatever_the_levels_the_pace_chose() {
    use std::sync::atomic::AtomicU64;
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("app");
    // Half text, half noise: 9 MB, so several frames.
    let text: Vec<u8> = (0..4_500_000u32)
        .map(|i| b"the quick brown fox "[i as usize % 20])
        .collect();
    let mut x = 7u64;
    let noise: Vec<u8> = (0..4_500_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    write(&root.join("text.txt"), &text, 0o644);
    write(&root.join("noise.bin"), &noise, 0o644);
    let packed = pack(&root, temp.path()).unwrap();
    // Straight from the files, before any tar file exists; then from the tar file.
    let mut streamed = Vec::new();
    packed.lazy_tar().write_to(&mut streamed).unwrap();
    let tar = fs::read(packed.tar().unwrap()).unwrap();
    assert_eq!(streamed, tar);
    let prefix = b"head".to_vec();
    // Nobody reads (the level climbs every frame), and a reader always caught up (it
    // falls to the fastest).
    for (codec, tool, pace) in [
        (Codec::Zstd, "zstd", 0u64),
        (Codec::Zstd, "zstd", u64::MAX),
        (Codec::Gzip, "gzip", 0),
    ] {
        let out = temp.path().join("out");
        let pace = AtomicU64::new(pace);
        let mut sizes = Vec::new();
        let lazy = packed.lazy_tar();
        let mut source = |out: &mut dyn Write| lazy.write_to(out).map_err(std::io::Error::other);
        let (sha, size) = crate::artifact::compress_framed(
            &mut source,
            &prefix,
            codec,
            File::create(&out).unwrap(),
            None,
            Some(&pace),
            &mut |n| sizes.push(n),
        )
        .unwrap();
        let bytes = fs::read(&out).unwrap();
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(sha, sha_of(&[prefix.clone(), bytes].concat()));
        assert!(sizes.len() >= 4, "{sizes:?}");
        assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
        assert_eq!(*sizes.last().unwrap(), size);
        // What the host runs: the frames read as one stream.
        let got = Command::new("sh")
            .arg("-c")
            .arg(format!("{tool} -dc < '{}'", out.display()))
            .output()
            .unwrap();
        assert!(got.status.success(), "{codec:?}");
        assert_eq!(got.stdout, tar, "{codec:?}");
    }
}
