//! Delta uploads: when a host's current release has a manifest, send only the content it
//! does not have.
//!
//! [`plan`] compares the current release's manifest with the new one (pure); [`build`]
//! writes the stream the host's `commands::release::delta` script reads: the edit list,
//! then a tar of what the host cannot make from the current release: new directories and
//! symlinks, files with new content (each content once), and hard links to files of the
//! current release that moved. The host clones the current release, applies both, and keeps
//! the result only if it lists exactly as the new manifest.
//!
//! Paths of the current release that finishing it changed are never used as a source:
//! `REVISION` (rewritten by shipit) and the shared paths (symlinks into `shared/`, whose
//! files are live data).
//!
//! [`build`] does blocking file I/O: callers run it under `spawn_blocking` or
//! `block_in_place`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use tar::{Archive, EntryType};
use tempfile::TempPath;

use super::pack::{pad, write_member};
use crate::artifact::manifest::{Item, Kind, Manifest};
use crate::artifact::{self, ArtifactError, Codec, Hashing, Packed, header};

/// How the tar writes one path of the new release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A directory, new or with a new mode.
    Dir(u32),
    Symlink(String),
    /// A file whose content the current release does not have: sent.
    Content,
    /// A file whose content the current release has at this other path: hard-linked.
    Link(String),
}

/// What changes between the current release and the new one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Paths removed before the tar is extracted (gone, replaced, or of another type).
    pub remove: Vec<String>,
    pub ops: BTreeMap<String, Op>,
    /// Files whose content stays but whose mode changes (after the tar).
    pub modes: Vec<(String, u32)>,
    /// Sum of the sizes of the files sent.
    pub content_bytes: u64,
}

/// The paths the host changed when it finished the current release, so not its content.
fn finished_path(path: &str, shared: &[String]) -> bool {
    path == "REVISION"
        || shared.iter().any(|s| {
            let s = s.trim_matches('/');
            path == s
                || path
                    .strip_prefix(s)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// What turns the release `old` describes into the one `new` describes. `shared` are the
/// inventory's shared dirs and files.
pub fn changes(old: &Manifest, new: &Manifest, shared: &[String]) -> Changes {
    let usable: BTreeMap<&str, &Item> = old
        .entries
        .iter()
        .filter(|(p, _)| !finished_path(p, shared))
        .map(|(p, e)| (p.as_str(), e))
        .collect();
    // Where each content is, first by path order.
    let mut by_sha: HashMap<&str, Vec<(&str, u32)>> = HashMap::new();
    for (path, entry) in &usable {
        if let Some(sha) = entry.sha256() {
            by_sha.entry(sha).or_default().push((path, entry.mode));
        }
    }
    let mut p = Changes::default();
    if old.entries.contains_key("REVISION") {
        // The host's REVISION is the one shipit wrote, not the artifact's.
        p.remove.push("REVISION".to_owned());
    }
    for (path, entry) in &new.entries {
        let before = usable.get(path.as_str()).copied();
        match &entry.kind {
            Kind::Dir => match before {
                Some(b) if b.is_dir() => {
                    if b.mode != entry.mode {
                        p.ops.insert(path.clone(), Op::Dir(entry.mode));
                    }
                }
                _ => {
                    if before.is_some() {
                        p.remove.push(path.clone());
                    }
                    p.ops.insert(path.clone(), Op::Dir(entry.mode));
                }
            },
            Kind::Symlink { target } => {
                if before != Some(entry) {
                    if before.is_some() {
                        p.remove.push(path.clone());
                    }
                    p.ops.insert(path.clone(), Op::Symlink(target.clone()));
                }
            }
            Kind::File { size, sha256 } => {
                if let Some(b) = before
                    && b.sha256() == Some(sha256)
                {
                    if b.mode != entry.mode {
                        p.modes.push((path.clone(), entry.mode));
                    }
                    continue;
                }
                if before.is_some() {
                    p.remove.push(path.clone());
                }
                // A file that replaces one of the same size is sent, never linked to the
                // current release's: the link would keep that file's time, and the same
                // size and time (one upload gave them both) tell a browser's cache the
                // old content is still good (`304 Not Modified`).
                let same_size = matches!(before, Some(Item { kind: Kind::File { size: s, .. }, .. }) if s == size);
                let sources = by_sha.get(sha256.as_str()).filter(|_| !same_size);
                let source = sources.and_then(|s| {
                    s.iter()
                        .find(|(_, mode)| *mode == entry.mode)
                        .or_else(|| s.first())
                });
                match source {
                    Some((from, mode)) => {
                        p.ops.insert(path.clone(), Op::Link((*from).to_owned()));
                        if *mode != entry.mode {
                            p.modes.push((path.clone(), entry.mode));
                        }
                    }
                    None => {
                        p.ops.insert(path.clone(), Op::Content);
                        p.content_bytes += size;
                    }
                }
            }
        }
    }
    for path in usable.keys() {
        if !new.entries.contains_key(*path) {
            p.remove.push((*path).to_owned());
        }
    }
    p.remove.sort();
    p.remove.dedup();
    p
}

impl Changes {
    /// The edit list the host script reads, tab-separated lines (`op`, argument, path):
    /// `rm` (remove first), `new` (a file the tar writes), `link` (a file the tar links to
    /// the current release's), `mode` (a file whose mode changes).
    pub fn edits(&self) -> Vec<u8> {
        let mut out = String::new();
        for path in &self.remove {
            out.push_str(&format!("rm\t-\t{path}\n"));
        }
        for (path, op) in &self.ops {
            match op {
                Op::Link(_) => out.push_str(&format!("link\t-\t{path}\n")),
                Op::Content => out.push_str(&format!("new\t-\t{path}\n")),
                Op::Dir(_) | Op::Symlink(_) => {}
            }
        }
        for (path, mode) in &self.modes {
            out.push_str(&format!("mode\t{mode:o}\t{path}\n"));
        }
        out.into_bytes()
    }
}

/// A delta stream, ready to upload.
#[derive(Debug)]
pub struct Delta {
    /// The compressed edit list, then the compressed tar; deleted on drop.
    pub file: TempPath,
    pub size: u64,
    pub sha256: String,
    pub edits_len: u64,
    /// Sum of the sizes of the files whose content is sent.
    pub content_bytes: u64,
    /// sha256 of the new release's manifest.
    pub manifest_sha256: String,
}

/// Why a delta stream could not be made (the host then gets the whole artifact).
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("cannot read the packed artifact or write the delta in `{dir}`")]
    Io {
        dir: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the packed artifact does not match its manifest at `{path}`")]
    Mismatch { path: String },
    #[error(transparent)]
    Read(ArtifactError),
}

/// Writes the delta stream for `plan`, compressed with `codec`, reading new content from the
/// packed artifact. What it sends carries the artifact's [`Packed::files_mtime`] (else a
/// file its own time in the packed tar).
pub fn build(
    packed: &Packed,
    new: &Manifest,
    plan: &Changes,
    codec: Codec,
    temp_dir: &Path,
) -> Result<Delta, DeltaError> {
    let io_err = |source| DeltaError::Io {
        dir: temp_dir.to_owned(),
        source,
    };
    let temp = tempfile::Builder::new()
        .prefix("shipit-delta-")
        .tempfile_in(temp_dir)
        .map_err(io_err)?;
    let edits = codec.compress(&plan.edits()).map_err(io_err)?;
    // The stream's digest is taken as it is written.
    let mut out = Hashing::new(BufWriter::with_capacity(64 * 1024, temp.as_file()));
    out.write_all(&edits).map_err(io_err)?;
    match codec {
        Codec::Zstd => {
            let mut zstd = zstd::stream::write::Encoder::new(&mut out, 3).map_err(io_err)?;
            write_tar(packed, new, plan, &mut zstd)?;
            zstd.finish().map_err(io_err)?;
        }
        Codec::Gzip => {
            let mut gzip = flate2::write::GzEncoder::new(&mut out, flate2::Compression::fast());
            write_tar(packed, new, plan, &mut gzip)?;
            gzip.finish().map_err(io_err)?;
        }
    }
    let (mut file, sha256, size) = out.finish();
    file.flush().map_err(io_err)?;
    drop(file);
    Ok(Delta {
        file: temp.into_temp_path(),
        size,
        sha256,
        edits_len: edits.len() as u64,
        content_bytes: plan.content_bytes,
        manifest_sha256: new.sha256(),
    })
}

/// The tar: directories first (parents before children), then the new content in the
/// artifact's order, then links and symlinks.
fn write_tar<W: Write>(
    packed: &Packed,
    new: &Manifest,
    plan: &Changes,
    sink: W,
) -> Result<(), DeltaError> {
    let dir = packed.temp_dir().to_owned();
    let io_err = |source| DeltaError::Io {
        dir: dir.clone(),
        source,
    };
    let mut tar = tar::Builder::new(sink);
    let header = |kind, mode, size| {
        let mut h = header(kind, mode, size);
        h.set_mtime(packed.files_mtime.unwrap_or(artifact::MTIME));
        h
    };
    for (path, op) in &plan.ops {
        if let Op::Dir(mode) = op {
            let mut h = header(EntryType::Directory, *mode, 0);
            tar.append_data(&mut h, format!("{path}/"), io::empty())
                .map_err(io_err)?;
        }
    }

    // New content, read from the packed artifact; each content sent once, later paths
    // with the same content linked to the first.
    let mut sent: HashMap<String, String> = HashMap::new();
    let mut written: std::collections::HashSet<String> = std::collections::HashSet::new();
    let wanted = plan.ops.values().filter(|op| **op == Op::Content).count();
    if let (true, Some(listing)) = (wanted > 0, packed.listing()) {
        // A packed directory: the content is read from its files, each checked against
        // the digest the manifest has for it.
        for (path, _) in &listing.entries {
            if plan.ops.get(path) != Some(&Op::Content) {
                continue;
            }
            let Some(Item {
                kind: Kind::File { size, sha256 },
                mode,
            }) = new.get(path)
            else {
                return Err(DeltaError::Mismatch { path: path.clone() });
            };
            if let Some(first) = sent.get(sha256) {
                let mut h = header(EntryType::Link, *mode, 0);
                tar.append_link(&mut h, path, first).map_err(io_err)?;
                written.insert(path.clone());
                continue;
            }
            let mtime = packed.files_mtime.unwrap_or(artifact::MTIME);
            let out = tar.get_mut();
            write_member(
                out,
                path.as_bytes(),
                EntryType::Regular,
                b"",
                *mode,
                mtime,
                *size,
            )
            .map_err(io_err)?;
            let got = match listing.copy_file(path, *size, out, &dir) {
                Ok(got) => got,
                Err(ArtifactError::Changed { .. }) => {
                    return Err(DeltaError::Mismatch { path: path.clone() });
                }
                Err(e) => return Err(DeltaError::Read(e)),
            };
            pad(out, *size).map_err(io_err)?;
            if got != *sha256 {
                return Err(DeltaError::Mismatch { path: path.clone() });
            }
            sent.insert(sha256.clone(), path.clone());
            written.insert(path.clone());
        }
    } else if wanted > 0 {
        let tar_path = packed.tar().map_err(|e| io_err(io::Error::other(e)))?;
        // The tar is seekable: the data of files not sent is skipped, not read.
        let mut archive = Archive::new(File::open(tar_path).map_err(io_err)?);
        for entry in archive.entries_with_seek().map_err(io_err)? {
            let mut entry = entry.map_err(io_err)?;
            // Checked when packed: no `..`, not absolute; `./` and empty parts dropped.
            let path = artifact::member_components(&entry.path_bytes())
                .map(|parts| String::from_utf8_lossy(&parts.join(&b'/')).into_owned())
                .unwrap_or_default();
            if plan.ops.get(&path) != Some(&Op::Content) {
                continue;
            }
            let Some(Item {
                kind: Kind::File { size, sha256 },
                mode,
            }) = new.get(&path)
            else {
                return Err(DeltaError::Mismatch { path });
            };
            if let Some(first) = sent.get(sha256) {
                let mut h = header(EntryType::Link, *mode, 0);
                tar.append_link(&mut h, &path, first).map_err(io_err)?;
                written.insert(path);
                continue;
            }
            if entry.header().entry_type() == EntryType::Link {
                // The artifact's own hard link to content not sent yet: cannot happen for
                // a well-formed archive (its target comes first).
                return Err(DeltaError::Mismatch { path });
            }
            let mut h = header(EntryType::Regular, *mode, *size);
            if packed.files_mtime.is_none() {
                h.set_mtime(entry.header().mtime().map_err(io_err)?);
            }
            let mut data = Hashing::new(&mut entry);
            tar.append_data(&mut h, &path, &mut data).map_err(io_err)?;
            if data.finish().1 != *sha256 {
                return Err(DeltaError::Mismatch { path });
            }
            sent.insert(sha256.clone(), path.clone());
            written.insert(path);
        }
    }
    if let Some((path, _)) = plan
        .ops
        .iter()
        .find(|(p, op)| **op == Op::Content && !written.contains(p.as_str()))
    {
        return Err(DeltaError::Mismatch { path: path.clone() });
    }

    for (path, op) in &plan.ops {
        match op {
            Op::Link(from) => {
                let mut h = header(EntryType::Link, 0o644, 0);
                tar.append_link(&mut h, path, format!(".shipit/base/{from}"))
                    .map_err(io_err)?;
            }
            Op::Symlink(target) => {
                let mut h = header(EntryType::Symlink, 0o777, 0);
                tar.append_link(&mut h, path, target).map_err(io_err)?;
            }
            Op::Dir(_) | Op::Content => {}
        }
    }
    tar.into_inner().map_err(io_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(c: char, mode: u32) -> Item {
        Item {
            kind: Kind::File {
                size: 3,
                sha256: c.to_string().repeat(64),
            },
            mode,
        }
    }

    fn dir(mode: u32) -> Item {
        Item {
            kind: Kind::Dir,
            mode,
        }
    }

    fn link(target: &str) -> Item {
        Item {
            kind: Kind::Symlink {
                target: target.to_owned(),
            },
            mode: 0o777,
        }
    }

    fn manifest(entries: &[(&str, Item)]) -> Manifest {
        Manifest {
            entries: entries
                .iter()
                .map(|(p, e)| ((*p).to_owned(), e.clone()))
                .collect(),
        }
    }

    #[test]
    fn plans_only_what_changed() {
        let old = manifest(&[
            ("REVISION", file('r', 0o644)),
            ("a", file('a', 0o644)),
            ("bin", dir(0o755)),
            ("bin/run", file('b', 0o644)),
            ("gone", file('g', 0o644)),
            ("lib", dir(0o755)),
            ("lib/cur", link("v1")),
            ("moved", file('m', 0o644)),
            ("storage", dir(0o755)),
            ("storage/seed", file('s', 0o644)),
            ("x", dir(0o755)),
        ]);
        let new = manifest(&[
            ("a", file('A', 0o644)),
            ("bin", dir(0o700)),
            ("bin/run", file('b', 0o755)),
            ("lib", dir(0o755)),
            ("lib/cur", link("v2")),
            ("new", dir(0o755)),
            ("new/moved", file('m', 0o644)),
            ("storage", dir(0o755)),
            ("storage/seed", file('s', 0o644)),
            ("x", file('x', 0o644)),
        ]);
        let p = changes(&old, &new, &["storage".to_owned()]);
        assert_eq!(
            p.remove,
            ["REVISION", "a", "gone", "lib/cur", "moved", "x"].map(str::to_owned)
        );
        let ops: Vec<(&str, &Op)> = p.ops.iter().map(|(k, v)| (k.as_str(), v)).collect();
        assert_eq!(
            ops,
            [
                ("a", &Op::Content),
                ("bin", &Op::Dir(0o700)),
                ("lib/cur", &Op::Symlink("v2".into())),
                ("new", &Op::Dir(0o755)),
                ("new/moved", &Op::Link("moved".into())),
                ("storage", &Op::Dir(0o755)),
                // Not linked from the shared path's old content: sent.
                ("storage/seed", &Op::Content),
                ("x", &Op::Content),
            ]
        );
        assert_eq!(p.modes, [("bin/run".to_owned(), 0o755)]);
        assert_eq!(p.content_bytes, 9);
        let edits = String::from_utf8(p.edits()).unwrap();
        assert!(edits.starts_with("rm\t-\tREVISION\n"), "{edits}");
        assert!(edits.contains("link\t-\tnew/moved\n"), "{edits}");
        assert!(edits.ends_with("mode\t755\tbin/run\n"), "{edits}");
        // Nothing changed: nothing to do but REVISION.
        let same = changes(&new, &new, &[]);
        assert_eq!(same.ops, BTreeMap::new());
        assert!(same.remove.is_empty() && same.modes.is_empty());
    }
}

/// The client's half and the host's half together, in real `sh` with the host's tools: a
/// release uploaded whole, then one built from a delta, then a tampered current release.
#[cfg(test)]
mod host_tests {
    use super::*;
    use crate::artifact;
    use crate::artifact::manifest;
    use crate::commands::release;
    use crate::shell::Cmd;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn sh(cmd: &Cmd, stdin: &[u8]) -> (i32, String, String) {
        release::tests::run_sh(cmd, stdin, None)
    }

    fn write(root: &Path, path: &str, content: &[u8], mode: u32) {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, content).unwrap();
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    pub(super) fn upload_whole(base: &str, id: &str, packed: &Packed) {
        let dir = packed.temp_dir();
        let c = artifact::compress(
            packed.tar().unwrap(),
            packed.manifest.as_deref(),
            Codec::Zstd,
            dir,
            packed.files_mtime,
        )
        .unwrap();
        let stream = [c.prefix.clone(), std::fs::read(&c.file).unwrap()].concat();
        let cmd = release::receive(
            base,
            id,
            &c.upload_sha256,
            c.codec.decompress_cmd(),
            c.prefix.len() as u64,
        );
        let (code, _, err) = sh(&cmd, &stream);
        assert_eq!(code, 0, "{err}");
    }

    fn finish(base: &str, id: &str) {
        let cmd = release::finish(base, id, "sha", &["storage".to_owned()], &[], None, false);
        let (code, _, err) = sh(&cmd, b"");
        assert_eq!(code, 0, "{err}");
    }

    fn listing(dir: &Path) -> String {
        let (code, out, err) = sh(&release::listing(dir.to_str().unwrap()), b"");
        assert_eq!(code, 0, "{err}");
        out
    }

    fn send_delta(
        base: &Path,
        id: &str,
        current: &str,
        packed: &Packed,
        svc: &str,
    ) -> (i32, Changes) {
        let (code, err, plan) = delta_with(base, id, current, packed, svc, &["storage".to_owned()]);
        assert!(code == 0 || code == 94, "{code}: {err}");
        (code, plan)
    }

    /// Sends the delta from `current` to `packed` as `id`, with `shared` paths: (exit code,
    /// stderr, the plan sent).
    pub(super) fn delta_with(
        base: &Path,
        id: &str,
        current: &str,
        packed: &Packed,
        svc: &str,
        shared: &[String],
    ) -> (i32, String, Changes) {
        let old_text =
            std::fs::read(base.join("releases").join(current).join(manifest::PATH)).unwrap();
        let old = Manifest::parse(&old_text).unwrap();
        let new = packed.manifest.as_ref().unwrap();
        let plan = changes(&old, new, shared);
        let delta = build(packed, new, &plan, Codec::Zstd, base.parent().unwrap()).unwrap();
        let args = release::DeltaArgs {
            deploy_to: base.to_str().unwrap(),
            id,
            current,
            current_manifest: &manifest::sha256_hex(&old_text),
            manifest: &delta.manifest_sha256,
            upload_sha256: &delta.sha256,
            decompress: Codec::Zstd.decompress_cmd(),
            edits_len: delta.edits_len,
            service_user: svc,
        };
        let (code, _, err) = sh(&release::delta(&args), &std::fs::read(&delta.file).unwrap());
        (code, err, plan)
    }

    /// A whole upload gives every file the artifact's files' time; a delta gives it to the
    /// files whose content it sends, and the others keep theirs (their content did not
    /// change). A file replaced by content of the same size the release had elsewhere is
    /// sent, not linked: linked, it would keep the time and size of the content it replaces.
    #[test]
    fn a_delta_reads_new_content_from_the_directory_and_refuses_a_file_changed_since() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        write(&src, "app.js", b"v1\n", 0o644);
        write(&src, "keep.js", b"kept\n", 0o644);
        let v1 = artifact::pack(&src, dir.path()).unwrap();
        write(&src, "app.js", b"v2\n", 0o644);
        let v2 = artifact::pack(&src, dir.path()).unwrap();
        let (old, new) = (v1.manifest.unwrap(), v2.manifest.clone().unwrap());
        let plan = changes(&old, &new, &[]);
        assert_eq!(plan.ops.get("app.js"), Some(&Op::Content));
        let delta = build(&v2, &new, &plan, Codec::Gzip, dir.path()).unwrap();
        assert_eq!(delta.content_bytes, 3);
        // The tar of the whole artifact was never needed.
        let temps = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("shipit-artifact-")
            })
            .count();
        assert_eq!(temps, 0);
        // Changed after packing: the delta is refused, never sent with other bytes.
        write(&src, "app.js", b"v3\n", 0o644);
        let err = build(&v2, &new, &plan, Codec::Gzip, dir.path()).unwrap_err();
        assert!(
            matches!(&err, DeltaError::Mismatch { path } if path == "app.js"),
            "{err:?}"
        );
    }

    #[test]
    fn files_get_the_time_of_the_deploy_that_sent_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let b = base.to_str().unwrap();
        let src = dir.path().join("src");
        write(&src, "app.js", b"v1\n", 0o644);
        write(&src, "lib/keep.js", b"kept\n", 0o644);
        write(&src, "a.txt", b"1111", 0o644);
        write(&src, "b.txt", b"2222", 0o644);
        const T1: u64 = 1_600_000_000;
        const T2: u64 = 1_700_000_000;
        let v1 = artifact::pack(&src, dir.path()).unwrap().stamped(T1);
        upload_whole(b, "r1", &v1);
        finish(b, "r1");
        let mtime = |rel: &str, p: &str| {
            std::fs::metadata(base.join("releases").join(rel).join(p))
                .unwrap()
                .mtime() as u64
        };
        for p in ["app.js", "lib/keep.js", "a.txt", "b.txt"] {
            assert_eq!(mtime("r1", p), T1, "{p}");
        }
        write(&src, "app.js", b"v2\n", 0o644);
        write(&src, "a.txt", b"2222", 0o644);
        std::fs::remove_file(src.join("b.txt")).unwrap();
        write(&src, "moved/keep.js", b"kept\n", 0o644);
        let v2 = artifact::pack(&src, dir.path()).unwrap().stamped(T2);
        let (code, plan) = send_delta(&base, "r2", "r1", &v2, "nobody");
        assert_eq!(code, 0);
        assert_eq!(plan.ops.get("a.txt"), Some(&Op::Content));
        assert_eq!(
            plan.ops.get("moved/keep.js"),
            Some(&Op::Link("lib/keep.js".into()))
        );
        let r2 = "r2.partial";
        assert_eq!(mtime(r2, "app.js"), T2);
        assert_eq!(mtime(r2, "a.txt"), T2);
        assert_eq!(
            std::fs::read(base.join("releases/r2.partial/a.txt")).unwrap(),
            b"2222"
        );
        assert_eq!(mtime(r2, "lib/keep.js"), T1);
        assert_eq!(mtime(r2, "moved/keep.js"), T1);
        // The release it came from is as it was.
        assert_eq!(mtime("r1", "a.txt"), T1);
        assert_eq!(
            std::fs::read(base.join("releases/r1/a.txt")).unwrap(),
            b"1111"
        );
    }

    #[test]
    fn a_delta_builds_the_same_tree_as_a_whole_upload_and_refuses_a_tampered_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("my app");
        let b = base.to_str().unwrap();
        let src = dir.path().join("src");
        let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        write(&src, "app.js", b"v1\n", 0o644);
        write(&src, "lib/a.js", b"a\n", 0o644);
        write(&src, "bin/run", b"#!/bin/sh\n", 0o755);
        write(&src, "big.bin", &big, 0o644);
        write(&src, "gone.txt", b"bye\n", 0o644);
        write(&src, "storage/seed.txt", b"seed\n", 0o644);
        write(&src, "dir with space/-dash é.txt", b"odd names\n", 0o644);
        write(&src, "same1.txt", b"aaaa", 0o644);
        write(&src, "same2.txt", b"bbbb", 0o644);
        std::fs::create_dir_all(src.join("empty")).unwrap();
        std::os::unix::fs::symlink("lib/a.js", src.join("link")).unwrap();

        let v1 = artifact::pack(&src, dir.path()).unwrap();
        upload_whole(b, "r1", &v1);
        // What the host extracted lists exactly as the client's manifest.
        let text = String::from_utf8(v1.manifest.as_ref().unwrap().render()).unwrap();
        assert_eq!(listing(&base.join("releases/r1.partial")), text);
        assert_eq!(
            std::fs::read_to_string(base.join("releases/r1.partial/.shipit/manifest")).unwrap(),
            text
        );
        finish(b, "r1");

        // v2: one file changed, one mode, one symlink, one removed, content moved, a new dir.
        write(&src, "app.js", b"v2 with more\n", 0o644);
        std::fs::set_permissions(src.join("bin/run"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::fs::remove_file(src.join("link")).unwrap();
        std::os::unix::fs::symlink("app.js", src.join("link")).unwrap();
        std::fs::remove_file(src.join("gone.txt")).unwrap();
        write(&src, "moved/copy.bin", &big, 0o644);
        write(&src, "newdir/file.txt", b"new\n", 0o600);
        write(&src, "dir with space/new -x.txt", b"more odd\n", 0o644);
        let v2 = artifact::pack(&src, dir.path()).unwrap();
        let (code, plan) = send_delta(&base, "r2", "r1", &v2, "nobody");
        assert_eq!(code, 0);
        assert_eq!(plan.content_bytes, 13 + 4 + 5 + 9, "{plan:#?}");
        let r2 = base.join("releases/r2.partial");
        let text = String::from_utf8(v2.manifest.as_ref().unwrap().render()).unwrap();
        assert_eq!(listing(&r2), text);
        assert_eq!(
            std::fs::read_to_string(r2.join(manifest::PATH)).unwrap(),
            text
        );
        assert!(!r2.join("gone.txt").exists());
        assert!(!r2.join(".shipit/base").exists());
        assert_eq!(
            std::fs::read_link(r2.join("link")).unwrap(),
            Path::new("app.js")
        );
        let r1 = base.join("releases/r1");
        // Unchanged content is linked, not copied, for a service user who cannot write it...
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&r2.join("big.bin")), ino(&r1.join("big.bin")));
        assert_eq!(ino(&r2.join("moved/copy.bin")), ino(&r1.join("big.bin")));
        // ...but a mode change does not reach the older release.
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&r1.join("bin/run")), 0o755);
        assert_eq!(mode(&r2.join("bin/run")), 0o644);
        assert_eq!(std::fs::read(r1.join("app.js")).unwrap(), b"v1\n");
        finish(b, "r2");

        // When the service user could write release files, they are copies.
        let (code, _) = send_delta(&base, "r3", "r2", &v2, "");
        assert_eq!(code, 0);
        let r3 = base.join("releases/r3.partial");
        assert_ne!(
            ino(&r3.join("big.bin")),
            ino(&base.join("releases/r2/big.bin"))
        );
        assert_eq!(listing(&r3), text);
        std::fs::remove_dir_all(&r3).unwrap();

        // Pruning r1 changes the ctime of the files r2 shares with it; the record is
        // refreshed, so every file of r2 stays known (not read again by the next delta).
        let (code, _, err) = sh(&release::prune(b, &["r1".to_owned()]), b"");
        assert_eq!(code, 0, "{err}");
        std::os::unix::fs::symlink("releases/r2", base.join("current")).unwrap();
        let (code, _, err) = sh(&release::prune(b, &[]), b"");
        assert_eq!(code, 0, "{err}");
        let recorded = std::fs::read_to_string(base.join("releases/r2/.shipit/stat")).unwrap();
        let files = text.lines().filter(|l| l.contains("\tf\t")).count();
        // Less the shared dir's file, replaced by a link when r2 was finished.
        assert_eq!(recorded.lines().count(), files - 1, "{recorded}");
        write(&src, "app.js", b"v2b\n", 0o644);
        let v2b = artifact::pack(&src, dir.path()).unwrap();
        let (code, _) = send_delta(&base, "r3", "r2", &v2b, "nobody");
        assert_eq!(code, 0);
        std::fs::remove_dir_all(base.join("releases/r3.partial")).unwrap();

        // A file overwritten in place with same-size content, its mtime put back (`cp -p`
        // from a file with the same fixed mtime): only its ctime tells, and it is refused.
        let r2 = base.join("releases/r2");
        let (code, _, err) = sh(
            &crate::shell::Cmd::new("cp")
                .arg("-p")
                .arg(r2.join("same2.txt").to_str().unwrap())
                .arg(r2.join("same1.txt").to_str().unwrap()),
            b"",
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(std::fs::read(r2.join("same1.txt")).unwrap(), b"bbbb");
        let (code, _) = send_delta(&base, "r4", "r2", &v2b, "nobody");
        assert_eq!(code, 94);

        // A current release changed after its manifest was written: no release is kept.
        std::fs::OpenOptions::new()
            .append(true)
            .open(base.join("releases/r2/big.bin"))
            .unwrap()
            .write_all(b"tampered")
            .unwrap();
        write(&src, "app.js", b"v3\n", 0o644);
        let v3 = artifact::pack(&src, dir.path()).unwrap();
        let (code, _) = send_delta(&base, "r4", "r2", &v3, "nobody");
        assert_eq!(code, 94);
        assert!(!base.join("releases/r4.partial").exists());
        assert!(!base.join(".shipit/delta-r4").exists());
    }
}

/// Hostile release trees against the host scripts, in real `sh` inside a temp dir: names
/// that would split the line-based lists, a hot-patched release offered for reuse, paths
/// that lead out of the directory a script works in.
#[cfg(test)]
mod hostile_host_tests {
    use super::*;
    use crate::artifact;
    use crate::artifact::manifest;
    use crate::commands::{exit, release};
    use crate::shell::Cmd;
    use std::os::unix::fs::MetadataExt;

    fn sh(cmd: &Cmd, stdin: &[u8]) -> (i32, String, String) {
        release::tests::run_sh(cmd, stdin, None)
    }

    fn put(root: &Path, path: &str, content: &[u8]) {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }

    /// `releases/<id>` made the way a deploy makes it: a whole upload, then finish.
    fn release(base: &Path, id: &str, packed: &Packed) {
        let b = base.to_str().unwrap();
        super::host_tests::upload_whole(b, id, packed);
        let (code, _, err) = sh(&release::finish(b, id, "sha", &[], &[], None, false), b"");
        assert_eq!(code, 0, "{err}");
    }

    fn delta_from(base: &Path, id: &str, current: &str, packed: &Packed) -> i32 {
        super::host_tests::delta_with(base, id, current, packed, "nobody", &[]).0
    }

    #[test]
    fn newline_names_in_the_current_release_delete_nothing_outside_it() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let src = dir.path().join("src");
        put(&src, "app.js", b"v1\n");
        put(&src, "lib/a.js", b"a\n");
        let v1 = artifact::pack(&src, dir.path()).unwrap();
        release(&base, "r0", &v1);
        release(&base, "r1", &v1);
        // What an app writing into its release can make: names that, split at the newline,
        // read as an absolute path and as a sibling release.
        let victim = dir.path().join("victim-delta");
        std::fs::create_dir_all(victim.join("keep")).unwrap();
        let r1 = base.join("releases/r1");
        for name in [
            format!("b\n{}", victim.display()),
            "a\n../r0".to_owned(),
            "c\n../../..".to_owned(),
        ] {
            std::fs::create_dir_all(r1.join(&name).join("x")).unwrap();
        }
        // A symlink whose target would read as a file to hash.
        std::os::unix::fs::symlink("x\n/dev/zero\tf", r1.join("lib/evil")).unwrap();
        put(&src, "app.js", b"v2\n");
        let v2 = artifact::pack(&src, dir.path()).unwrap();
        assert_eq!(
            delta_from(&base, "r2", "r1", &v2),
            exit::DELTA_FAILED as i32
        );
        assert!(victim.join("keep").is_dir());
        assert!(base.join("releases/r0/app.js").is_file());
        assert!(!base.join("releases/r2.partial").exists());
        // The same tree offered for reuse is refused too.
        let want = v1.manifest.as_ref().unwrap().sha256();
        let (code, _, err) = sh(
            &release::reuse(base.to_str().unwrap(), "r1", "r3", &want, ""),
            b"",
        );
        assert_eq!(code, exit::REUSE_UNVERIFIED as i32, "{err}");
        assert!(victim.join("keep").is_dir());
        assert!(base.join("releases/r0/app.js").is_file());
        assert!(!base.join("releases/r3.partial").exists());
        // Refreshing its stat record drops it (a listing of such a tree fails).
        let (code, _, err) = sh(&release::prune(base.to_str().unwrap(), &[]), b"");
        assert_eq!(code, 0, "{err}");
        // A clean current release still takes a delta.
        std::fs::remove_dir_all(&r1).unwrap();
        release(&base, "r1", &v1);
        assert_eq!(delta_from(&base, "r2", "r1", &v2), 0);
    }

    #[test]
    fn an_edit_list_naming_paths_outside_the_release_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let src = dir.path().join("src");
        put(&src, "app.js", b"v1\n");
        put(&src, "lib/a.js", b"a\n");
        std::os::unix::fs::symlink("lib", src.join("link")).unwrap();
        let v1 = artifact::pack(&src, dir.path()).unwrap();
        release(&base, "r0", &v1);
        release(&base, "r1", &v1);
        put(&src, "app.js", b"v2\n");
        let v2 = artifact::pack(&src, dir.path()).unwrap();
        let old_text = std::fs::read(base.join("releases/r1").join(manifest::PATH)).unwrap();
        let old = Manifest::parse(&old_text).unwrap();
        let new = v2.manifest.as_ref().unwrap();
        // Edit lists a client could send: up, absolute, through a symlink of the release.
        for bad in ["../r0", "/tmp", "lib/../../r0", "link/a.js", ""] {
            let mut p = changes(&old, new, &[]);
            p.remove.push(bad.to_owned());
            let delta = build(&v2, new, &p, Codec::Zstd, dir.path()).unwrap();
            let args = release::DeltaArgs {
                deploy_to: base.to_str().unwrap(),
                id: "r2",
                current: "r1",
                current_manifest: &manifest::sha256_hex(&old_text),
                manifest: &delta.manifest_sha256,
                upload_sha256: &delta.sha256,
                decompress: Codec::Zstd.decompress_cmd(),
                edits_len: delta.edits_len,
                service_user: "nobody",
            };
            let (code, _, err) = sh(&release::delta(&args), &std::fs::read(&delta.file).unwrap());
            assert_eq!(code, exit::DELTA_FAILED as i32, "{bad:?}: {err}");
            assert!(base.join("releases/r0/app.js").is_file(), "{bad:?}");
            assert!(base.join("releases/r1/lib/a.js").is_file(), "{bad:?}");
            assert!(!base.join("releases/r2.partial").exists());
        }
    }

    #[test]
    fn reuse_verifies_its_source_and_follows_the_link_or_copy_rule() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let b = base.to_str().unwrap();
        let src = dir.path().join("src");
        put(&src, "app.js", b"v1\n");
        put(&src, "lib/a.js", b"a\n");
        let v1 = artifact::pack(&src, dir.path()).unwrap();
        let want = v1.manifest.as_ref().unwrap().sha256();
        release(&base, "r1", &v1);
        let r1 = base.join("releases/r1");
        // Written into the release after it was made: not copied.
        put(&r1, "log/today.log", b"x\n");
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();

        // A service user who cannot write release files: links.
        let (code, _, err) = sh(&release::reuse(b, "r1", "r2", &want, "nobody"), b"");
        assert_eq!(code, 0, "{err}");
        let r2 = base.join("releases/r2.partial");
        assert_eq!(ino(&r2.join("app.js")), ino(&r1.join("app.js")));
        assert!(!r2.join("log").exists());
        assert!(!r2.join("REVISION").exists());
        assert_eq!(
            std::fs::read(r2.join(manifest::PATH)).unwrap(),
            v1.manifest.as_ref().unwrap().render()
        );
        assert!(r2.join(".shipit/stat").is_file());
        std::fs::remove_dir_all(&r2).unwrap();

        // One who could (unknown, root, the SSH user): copies.
        for svc in ["", "root"] {
            let (code, _, err) = sh(&release::reuse(b, "r1", "r2", &want, svc), b"");
            assert_eq!(code, 0, "{err}");
            assert_ne!(ino(&r2.join("app.js")), ino(&r1.join("app.js")));
            std::fs::remove_dir_all(&r2).unwrap();
        }

        // A hot patch, even one that keeps size and mtime: refused, nothing kept.
        let mtime = std::fs::metadata(r1.join("app.js"))
            .unwrap()
            .modified()
            .unwrap();
        std::fs::write(r1.join("app.js"), b"v9\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(r1.join("app.js"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        for svc in ["", "nobody"] {
            let (code, _, err) = sh(&release::reuse(b, "r1", "r2", &want, svc), b"");
            assert_eq!(code, exit::REUSE_UNVERIFIED as i32, "{err}");
            assert!(!r2.exists());
            assert!(!base.join(".shipit/delta-r2").exists());
        }
        // A source of another artifact, or without a manifest: refused.
        std::fs::write(r1.join("app.js"), b"v1\n").unwrap();
        let other = "0".repeat(64);
        let (code, _, _) = sh(&release::reuse(b, "r1", "r2", &other, ""), b"");
        assert_eq!(code, exit::REUSE_UNVERIFIED as i32);
        std::fs::remove_file(r1.join(manifest::PATH)).unwrap();
        let (code, _, _) = sh(&release::reuse(b, "r1", "r2", &want, ""), b"");
        assert_eq!(code, exit::REUSE_UNVERIFIED as i32);
    }

    #[test]
    fn scripts_refuse_paths_that_leave_their_directory() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let b = base.to_str().unwrap();
        let victim = dir.path().join("victim-paths");
        std::fs::create_dir_all(victim.join("uploads/keep")).unwrap();
        let src = dir.path().join("src");
        put(&src, "app.js", b"v1\n");
        let v1 = artifact::pack(&src, dir.path()).unwrap();
        let c = artifact::compress(
            v1.tar().unwrap(),
            v1.manifest.as_deref(),
            Codec::Gzip,
            dir.path(),
            None,
        )
        .unwrap();
        let stream = [c.prefix.clone(), std::fs::read(&c.file).unwrap()].concat();
        let receive = release::receive(
            b,
            "r1",
            &c.upload_sha256,
            Codec::Gzip.decompress_cmd(),
            c.prefix.len() as u64,
        );
        assert_eq!(sh(&receive, &stream).0, 0);
        // A symlink out of the release (the checker refuses one in an artifact; the tree
        // is checked anyway), below which a shared path lies.
        std::os::unix::fs::symlink(&victim, base.join("releases/r1.partial/public")).unwrap();
        for shared in ["../../victim-paths", "/tmp", "a/./b", ""] {
            let finish = release::finish(b, "r1", "sha", &[shared.to_owned()], &[], None, false);
            assert_eq!(sh(&finish, b"").0, exit::PATH_OUTSIDE as i32, "{shared}");
            let finish = release::finish(b, "r1", "sha", &[], &[shared.to_owned()], None, false);
            assert_eq!(sh(&finish, b"").0, exit::PATH_OUTSIDE as i32, "{shared}");
        }
        // Through the link: refused (and the release dropped) by the shared-path check.
        let finish = release::finish(
            b,
            "r1",
            "sha",
            &["public/uploads".to_owned()],
            &[],
            None,
            false,
        );
        assert_ne!(sh(&finish, b"").0, 0);
        assert!(victim.join("uploads/keep").is_dir());

        // Names to prune or ids to write that are not plain names: nothing removed.
        std::fs::create_dir_all(base.join("releases/old")).unwrap();
        for bad in ["..", "../../victim-paths", "old/../..", "", ".", "a\nb"] {
            let names = ["old".to_owned(), bad.to_owned()];
            assert_eq!(
                sh(&release::prune(b, &names), b"").0,
                exit::PATH_OUTSIDE as i32,
                "{bad:?}"
            );
            assert!(base.join("releases/old").is_dir());
            let receive = release::receive(b, bad, "0", Codec::Gzip.decompress_cmd(), 0);
            assert_eq!(sh(&receive, b"").0, exit::PATH_OUTSIDE as i32, "{bad:?}");
        }
        assert!(victim.join("uploads/keep").is_dir());
        assert_eq!(sh(&release::prune(b, &["old".to_owned()]), b"").0, 0);
        assert!(!base.join("releases/old").exists());
    }

    /// A delta's `mode` and `link` edits rewrite a file of the clone through a scratch
    /// name next to it: a symlink the new artifact puts at that name (`app.txt.shipit-delta
    /// -> other.txt`, a link inside the artifact, so the checker accepts it) made the copy
    /// and the chmod land in `other.txt`, a hard link shared with the live release.
    #[test]
    fn an_artifact_symlink_at_the_scratch_name_does_not_reach_the_live_release() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let src = dir.path().join("src");
        put(&src, "app.txt", b"app\n");
        put(&src, "other.txt", b"precious\n");
        for f in ["app.txt", "other.txt"] {
            std::fs::set_permissions(src.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let v1 = artifact::pack(&src, dir.path()).unwrap();
        release(&base, "r1", &v1);
        std::fs::set_permissions(src.join("app.txt"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("other.txt", src.join("app.txt.shipit-delta")).unwrap();
        let v2 = artifact::pack(&src, dir.path()).unwrap();
        let code = delta_from(&base, "r2", "r1", &v2);
        let live = base.join("releases/r1/other.txt");
        assert_eq!(std::fs::read(&live).unwrap(), b"precious\n");
        let mode = std::fs::metadata(&live).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(code, 0);
        let r2 = base.join("releases/r2.partial");
        let text = String::from_utf8(v2.manifest.as_ref().unwrap().render()).unwrap();
        let (c, listed, err) = sh(&release::listing(r2.to_str().unwrap()), b"");
        assert_eq!(c, 0, "{err}");
        assert_eq!(listed, text);
    }
}
