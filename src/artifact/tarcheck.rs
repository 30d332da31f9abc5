//! The checker of supplied tarballs (`.tar`, `.tar.gz`, `.tgz`): every entry is read and
//! checked before anything is uploaded, and what is uploaded is a fresh tar written from
//! the checked entries, never the tarball's own bytes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};
use tar::{Archive, EntryType, PaxExtensions};

use super::manifest::{self, Manifest, hex};
use super::pack::{BUF_SIZE, Behind, Summary, new_temp, packed, pad, write_member};
use super::{ArtifactError, Packed, Refusal};

/// Longest pax global header read into memory; real ones hold a comment or a few fields.
pub(super) const MAX_GLOBAL_PAX: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Tarball → checked, re-written tar

#[derive(Clone, Copy)]
pub(super) enum TarFormat {
    Gzip,
    Plain,
}

impl TarFormat {
    fn name(self) -> &'static str {
        match self {
            TarFormat::Gzip => "tar.gz",
            TarFormat::Plain => "tar",
        }
    }
}

/// Reads the tarball once, checking every entry, and writes a fresh tar of the entries as
/// checked (see [`copy_checked`]): what a host extracts is what was checked, whatever a
/// `tar` would have made of the tarball's own bytes.
pub(super) fn adopt_tarball(
    path: &Path,
    temp_dir: &Path,
    format: TarFormat,
) -> Result<Packed, ArtifactError> {
    let source = File::open(path).map_err(|source| ArtifactError::Read {
        path: path.to_owned(),
        source,
    })?;
    let temp = new_temp(temp_dir)?;
    let checked = copy_checked(path, source, format, temp_dir, temp.as_file())?;
    if checked.entries == 0 {
        return Err(ArtifactError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(packed(temp, checked, temp_dir))
}

/// Checks the tarball read from `source` and writes into `out` a new tar of what was
/// checked, never the tarball's own bytes.
///
/// Two `tar` readers can see different members in the same bytes (a GNU long name and a
/// pax `path` on one entry, a ustar prefix under a version one reader does not know, a pax
/// `size`, sparse maps): a checker and the host's GNU `tar` must never disagree. The copy
/// has one spelling only: GNU headers, a name or link target longer than its field in a
/// GNU `L`/`K` entry before it, no pax records, the names normalized (`./`, `//` dropped),
/// owner root, the mode as the host will have it ([`manifest::host_mode`]), the entry's
/// own mtime; the archive's root directory entry is left out (the release directory is
/// shipit's). Its sha256 is the artifact's identity: the same entries give the same
/// identity whether they came as `.tar` or `.tar.gz`, from GNU or pax `tar`.
///
/// What is ambiguous is refused rather than resolved (see [`EntryChecker::check`]), so a
/// tarball is deployed as every `tar` would read it, or not at all.
pub(super) fn copy_checked(
    path: &Path,
    source: File,
    format: TarFormat,
    temp_dir: &Path,
    out: &File,
) -> Result<Summary, ArtifactError> {
    let write_err = |source| ArtifactError::Write {
        dir: temp_dir.to_owned(),
        source,
    };
    // The copy is hashed and written on another thread while this one decompresses,
    // checks and hashes each file for the manifest.
    let sink = Behind::start(out.try_clone().map_err(write_err)?);
    let reader = BufReader::with_capacity(BUF_SIZE, source);
    // Every gzip member: what is checked is all that `gzip -dc | tar -x` would read.
    let reader: Box<dyn Read> = match format {
        TarFormat::Gzip => Box::new(MultiGzDecoder::new(reader)),
        TarFormat::Plain => Box::new(reader),
    };
    let (mut writer, entries, manifest) = check_tar(path, format, temp_dir, reader, sink)?;
    // End of archive: two zero blocks.
    writer.write_all(&[0; 1024]).map_err(write_err)?;
    let (sha256, tar_size) = writer.finish().map_err(write_err)?;
    Ok(Summary {
        sha256,
        tar_size,
        entries,
        manifest,
    })
}

/// Reads a whole tar stream, checking each entry and writing it to `out` as checked, then
/// what follows the end-of-archive marker. Gives back `out`, the entry count and the
/// manifest.
pub(super) fn check_tar<R: Read, W: Write>(
    path: &Path,
    format: TarFormat,
    temp_dir: &Path,
    reader: R,
    out: W,
) -> Result<(W, u64, Option<Manifest>), ArtifactError> {
    let invalid = |source| ArtifactError::NotTar {
        path: path.to_owned(),
        format: format.name(),
        source,
    };
    let mut archive = Archive::new(reader);
    let mut checker = EntryChecker {
        artifact: path,
        temp_dir,
        seen: HashMap::new(),
        entries: 0,
        manifest: manifest::Builder::new(),
        out,
        buf: vec![0; BUF_SIZE],
    };
    for entry in archive.entries().map_err(invalid)? {
        let mut entry = entry.map_err(invalid)?;
        checker.check(&mut entry, invalid)?;
    }
    let mut rest = archive.into_inner();
    // The tar crate stops at the first zero block, while `tar` may read on past a lone
    // one: a tarball with anything but zeros there means two things.
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = rest.read(&mut buf).map_err(invalid)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(invalid(io::Error::other(
                "it has data after the end-of-archive marker",
            )));
        }
    }
    Ok((checker.out, checker.entries, checker.manifest.finish()))
}

/// What an earlier entry left at a path (its parents are directories, listed or not).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    Dir,
    File,
    Symlink,
}

pub(super) struct EntryChecker<'a, W> {
    artifact: &'a Path,
    temp_dir: &'a Path,
    /// Every path (normalized, `/`-joined) earlier entries made, parents included: a later
    /// entry at or below a symlink would be written wherever the link points, one below a
    /// file or over an earlier entry fails or replaces it on the host, and a hard link must
    /// name a file made before it.
    seen: HashMap<Vec<u8>, Seen>,
    entries: u64,
    manifest: manifest::Builder,
    /// The tar written from the checked entries.
    out: W,
    buf: Vec<u8>,
}

/// Pax keys refused in any pax header: those that change which bytes are a member's data
/// or how its name is read, which the tar crate and GNU `tar` do not handle alike.
pub(super) fn pax_key_refused(key: &str) -> bool {
    key.starts_with("GNU.") || key == "hdrcharset"
}

impl<W: Write> EntryChecker<'_, W> {
    /// Checks one entry, then writes it to the copy. Refused, besides what could land
    /// outside the release: anything two `tar` readers may read differently (a header
    /// neither ustar, GNU nor old-style; a pax `path`/`linkpath` that differs from the GNU
    /// long name/link on the same entry; a pax key given twice; a pax `size` that is not
    /// the header's; pax sparse and charset keys; a NUL inside a name; a file named like a
    /// directory; data on a directory or link), and what would fail or be replaced on the
    /// host (a path given twice, an entry below a file, a hard link to anything but an
    /// earlier file).
    fn check<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        invalid: impl Fn(io::Error) -> ArtifactError,
    ) -> Result<(), ArtifactError> {
        let path = entry.path_bytes().into_owned();
        let refuse = |refusal| ArtifactError::Refused {
            artifact: self.artifact.to_owned(),
            entry: String::from_utf8_lossy(&path).into_owned(),
            refusal,
        };
        let kind = entry.header().entry_type();

        if kind == EntryType::XGlobalHeader {
            // Not an entry, but GNU tar applies its keys to every entry after it.
            let mut data = Vec::new();
            (&mut *entry)
                .take(MAX_GLOBAL_PAX)
                .read_to_end(&mut data)
                .map_err(&invalid)?;
            for ext in PaxExtensions::new(&data) {
                let key = ext
                    .ok()
                    .and_then(|e| e.key().ok())
                    .ok_or_else(|| refuse(Refusal::MalformedPax))?;
                if matches!(key, "path" | "linkpath" | "size") || pax_key_refused(key) {
                    return Err(refuse(Refusal::PaxOverride {
                        key: key.to_owned(),
                    }));
                }
            }
            return Ok(());
        }

        match kind {
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link => {}
            EntryType::Char => {
                return Err(refuse(Refusal::Special {
                    kind: "character device",
                }));
            }
            EntryType::Block => {
                return Err(refuse(Refusal::Special {
                    kind: "block device",
                }));
            }
            EntryType::Fifo => return Err(refuse(Refusal::Special { kind: "fifo" })),
            // Includes GNU long names and pax headers the tar crate did not take as such
            // (non-ustar headers), which another `tar` might still apply.
            other => {
                return Err(refuse(Refusal::UnsupportedType {
                    flag: other.as_byte(),
                }));
            }
        }

        // The header's format decides whether its prefix field is part of the name: the
        // tar crate reads it only under `ustar\0` version `00`, GNU tar under any
        // `ustar\0`. Only the three exact spellings are read alike.
        let raw = entry.header().as_bytes();
        let (magic, version) = (&raw[257..263], &raw[263..265]);
        let known = (magic == b"ustar\0" && version == b"00")
            || (magic == b"ustar " && version == b" \0")
            || raw[257..].iter().all(|&b| b == 0);
        if !known {
            return Err(refuse(Refusal::UnknownFormat));
        }

        // Each pax key once, none that one reader applies and another ignores, and a
        // name or link target that does not depend on which of a GNU long name and a pax
        // record wins (the tar crate prefers the former).
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(&invalid)? {
            for ext in exts {
                let ext = ext.map_err(|_| refuse(Refusal::MalformedPax))?;
                let key = ext.key().map_err(|_| refuse(Refusal::MalformedPax))?;
                if pax.iter().any(|(k, _)| k == key) {
                    return Err(refuse(Refusal::PaxTwice {
                        key: key.to_owned(),
                    }));
                }
                if pax_key_refused(key) {
                    return Err(refuse(Refusal::PaxOverride {
                        key: key.to_owned(),
                    }));
                }
                pax.push((key.to_owned(), ext.value_bytes().to_owned()));
            }
        }
        let pax_value = |key: &str| pax.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        if pax_value("path").is_some_and(|p| *p != path) {
            return Err(refuse(Refusal::Ambiguous { what: "name" }));
        }
        let link = entry.link_name_bytes().map(Cow::into_owned);
        if let Some(linkpath) = pax_value("linkpath")
            && link.as_ref() != Some(linkpath)
        {
            return Err(refuse(Refusal::Ambiguous {
                what: "link target",
            }));
        }
        let header_size = entry.header().entry_size().map_err(&invalid)?;
        if pax_value("size").is_some() && entry.size() != header_size {
            return Err(refuse(Refusal::PaxOverride { key: "size".into() }));
        }

        if std::str::from_utf8(&path).is_err() {
            return Err(refuse(Refusal::NameNotUtf8));
        }
        if path.contains(&0) {
            return Err(refuse(Refusal::NulInName));
        }
        let components = member_components(&path).map_err(&refuse)?;
        // The header's own name too: whichever one another `tar` believes must be safe.
        member_components(&entry.header().path_bytes()).map_err(&refuse)?;
        if components.is_empty() && kind != EntryType::Directory {
            return Err(refuse(Refusal::EmptyPath));
        }
        let is_file = matches!(
            kind,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
        );
        // GNU tar makes a directory of a file entry whose name ends with `/`.
        if is_file && path.ends_with(b"/") {
            return Err(refuse(Refusal::FileNamedAsDir));
        }
        if !is_file && entry.size() != 0 {
            return Err(refuse(Refusal::DataOnNonFile));
        }
        match components.first().copied() {
            Some(first) if first == manifest::RESERVED.as_bytes() => {
                return Err(refuse(Refusal::Reserved));
            }
            Some(b"REVISION") if components.len() > 1 || kind == EntryType::Directory => {
                return Err(refuse(Refusal::RevisionDir));
            }
            _ => {}
        }
        // UTF-8 was checked above, so this is the entry's path, normalized.
        let joined = components.join(&b'/');
        let name = String::from_utf8_lossy(&joined).into_owned();
        let what = match kind {
            EntryType::Directory => Seen::Dir,
            EntryType::Symlink => Seen::Symlink,
            _ => Seen::File,
        };
        // A hard link's target, checked before the link itself is recorded.
        let link_target = match (kind, &link) {
            (EntryType::Link, Some(target)) => {
                Some(self.hard_link_target(target).map_err(&refuse)?)
            }
            _ => None,
        };
        self.place(&components, what).map_err(&refuse)?;

        let mode = manifest::host_mode(entry.header().mode().map_err(&invalid)?);
        let mtime = entry.header().mtime().map_err(&invalid)?;
        let write_err = |source| ArtifactError::Write {
            dir: self.temp_dir.to_owned(),
            source,
        };
        match kind {
            EntryType::Symlink => {
                let target = link.ok_or_else(|| refuse(Refusal::MissingSymlinkTarget))?;
                if std::str::from_utf8(&target).is_err() {
                    return Err(refuse(Refusal::TargetNotUtf8));
                }
                if target.contains(&0) {
                    return Err(refuse(Refusal::NulInTarget));
                }
                check_symlink_target(components.len().saturating_sub(1), &target)
                    .map_err(&refuse)?;
                self.manifest
                    .symlink(&name, &String::from_utf8_lossy(&target));
                // The target as written: `sub/` and `sub` differ on the host.
                write_member(
                    &mut self.out,
                    &joined,
                    EntryType::Symlink,
                    &target,
                    0o777,
                    mtime,
                    0,
                )
                .map_err(write_err)?;
            }
            EntryType::Link => {
                let target = link_target.ok_or_else(|| refuse(Refusal::MissingHardLinkTarget))?;
                self.manifest
                    .hard_link(&name, &String::from_utf8_lossy(&target));
                write_member(
                    &mut self.out,
                    &joined,
                    EntryType::Link,
                    &target,
                    mode,
                    mtime,
                    0,
                )
                .map_err(write_err)?;
            }
            EntryType::Directory => {
                self.manifest.dir(&name, mode);
                if !joined.is_empty() {
                    let mut dir = joined.clone();
                    dir.push(b'/');
                    write_member(
                        &mut self.out,
                        &dir,
                        EntryType::Directory,
                        b"",
                        mode,
                        mtime,
                        0,
                    )
                    .map_err(write_err)?;
                }
            }
            _ => {
                // A file: its content is hashed for the manifest as it is copied.
                let size = entry.size();
                write_member(
                    &mut self.out,
                    &joined,
                    EntryType::Regular,
                    b"",
                    mode,
                    mtime,
                    size,
                )
                .map_err(write_err)?;
                let mut hasher = Sha256::new();
                let mut copied = 0u64;
                loop {
                    let n = entry.read(&mut self.buf).map_err(&invalid)?;
                    if n == 0 {
                        break;
                    }
                    copied += n as u64;
                    if copied > size {
                        break;
                    }
                    hasher.update(&self.buf[..n]);
                    self.out.write_all(&self.buf[..n]).map_err(write_err)?;
                }
                if copied != size {
                    return Err(invalid(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the data of `{name}` is not as long as its header says"),
                    )));
                }
                pad(&mut self.out, size).map_err(write_err)?;
                self.manifest
                    .file(&name, mode, size, hex(&hasher.finalize()));
            }
        }
        self.entries += 1;
        Ok(())
    }

    /// The normalized target of a hard link: a path from the archive root (not from the
    /// link's directory) to a file made by an earlier entry. `tar` links to what is on
    /// disk when it gets to the link: to nothing it fails, and a link to a symlink would
    /// be that symlink read from another directory.
    fn hard_link_target(&self, target: &[u8]) -> Result<Vec<u8>, Refusal> {
        let shown = || String::from_utf8_lossy(target).into_owned();
        if std::str::from_utf8(target).is_err() {
            return Err(Refusal::TargetNotUtf8);
        }
        let components =
            member_components(target).map_err(|_| Refusal::EscapingHardLink { target: shown() })?;
        if target.contains(&0) || components.is_empty() {
            return Err(Refusal::EscapingHardLink { target: shown() });
        }
        let joined = components.join(&b'/');
        if self.seen.get(&joined) != Some(&Seen::File) {
            return Err(Refusal::HardLinkToNothing { target: shown() });
        }
        Ok(joined)
    }

    /// Records the entry at `components` as `what`, refusing it where `tar -x` would
    /// follow a symlink, fail, or replace an earlier entry. Parents not listed are
    /// directories, as `tar` makes them; a directory may be listed again.
    fn place(&mut self, components: &[&[u8]], what: Seen) -> Result<(), Refusal> {
        let mut prefix = Vec::new();
        for (i, component) in components.iter().enumerate() {
            if i > 0 {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(component);
            let shown = || String::from_utf8_lossy(&prefix).into_owned();
            let last = i + 1 == components.len();
            match self.seen.get(&prefix) {
                Some(Seen::Symlink) => return Err(Refusal::UnderSymlink { link: shown() }),
                Some(Seen::File) if !last => return Err(Refusal::UnderFile { file: shown() }),
                Some(Seen::Dir) if !last || what == Seen::Dir => {}
                Some(_) => return Err(Refusal::Duplicate),
                None => {
                    let now = if last { what } else { Seen::Dir };
                    self.seen.insert(prefix.clone(), now);
                }
            }
        }
        Ok(())
    }
}

/// The normal components of an archive member's path, refusing what could land outside the
/// extraction directory. `.` and empty components are dropped (`./app.js` is `app.js`).
pub(crate) fn member_components(path: &[u8]) -> Result<Vec<&[u8]>, Refusal> {
    if path.starts_with(b"/") {
        return Err(Refusal::AbsolutePath);
    }
    let mut components = Vec::new();
    for component in path.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(Refusal::ParentComponent),
            name => components.push(name),
        }
    }
    Ok(components)
}

/// Checks that a symlink whose directory is `depth` levels below the artifact root points
/// inside the artifact, judging its target lexically, and not into the release's
/// `.shipit` (shipit's own files, which it writes through paths of the release).
///
/// `..` is allowed only before any name: `x/../y` steps back through whatever `x` is on the
/// host, possibly another symlink, so where it lands cannot be decided from the text.
/// Leading `..`s climb real directories (entries below a symlink are refused elsewhere),
/// and names only descend, so a target of that shape stays inside when the climb does.
pub(super) fn check_symlink_target(depth: usize, target: &[u8]) -> Result<(), Refusal> {
    let shown = || String::from_utf8_lossy(target).into_owned();
    if target.is_empty() {
        return Err(Refusal::EmptyTarget);
    }
    if target.starts_with(b"/") {
        return Err(Refusal::AbsoluteTarget { target: shown() });
    }
    let mut depth = depth;
    let mut seen_name = false;
    for component in target.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." if seen_name => return Err(Refusal::UncheckableTarget { target: shown() }),
            b".." => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| Refusal::EscapingTarget { target: shown() })?;
            }
            name => {
                if !seen_name && depth == 0 && name == manifest::RESERVED.as_bytes() {
                    return Err(Refusal::IntoReserved { target: shown() });
                }
                seen_name = true;
            }
        }
    }
    Ok(())
}
