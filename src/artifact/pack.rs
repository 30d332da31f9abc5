//! Packing: a directory into a deterministic tar (sorted entries, fixed mtime, owners and
//! modes), or a tarball through the checker ([`super::tarcheck`]), into one uncompressed tar
//! on local disk with its sha256 and manifest. The tar writing and hashing both paths share
//! are here too.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};
use tempfile::TempPath;

use super::digests::{Digests, Stat};
use super::manifest::{self, Manifest, hex};
use super::tarcheck::{TarFormat, adopt_tarball, check_symlink_target};
use super::{ArtifactError, Refusal};

/// The artifact, checked: its identity and manifest, and the uncompressed tar on local disk
/// (for a directory, written when first asked for). [`compress`](fn@super::compress) makes
/// what a whole upload sends; a delta reads new content from the directory or the tar.
#[derive(Debug)]
pub struct Packed {
    /// The tar stream, or how to write it; deleted on drop.
    tar: Arc<LazyTar>,
    /// The artifact's identity (lowercase hex sha256): for a directory with a manifest, the
    /// manifest's sha256 (every path with its type, mode, size and content digest), else
    /// the tar stream's. The same content gives the same value on any machine, whatever the
    /// compression.
    pub sha256: String,
    /// The artifact's manifest; `None` when its names or entries cannot be described
    /// exactly (see [`crate::artifact::manifest`]): such an artifact is always sent whole.
    pub manifest: Option<Arc<Manifest>>,
    /// Size of the tar stream.
    pub tar_size: u64,
    /// Number of entries (files, dirs, symlinks).
    pub entries: u64,
    /// The tar's entries carry the fixed `MTIME` (a packed directory), not times of their own (a
    /// tarball's).
    pub fixed_mtime: bool,
    /// The modification time the hosts' files get instead of `MTIME` (see
    /// [`Packed::stamped`]); `None`: the tar's own.
    pub files_mtime: Option<u64>,
}

impl Packed {
    /// The files a deploy sends get `unix` as their modification time where the tar's is
    /// the fixed one (a packed directory): written into the stream sent, never into the
    /// packed tar, whose identity stays the content's.
    pub fn stamped(mut self, unix: u64) -> Packed {
        if self.fixed_mtime {
            self.files_mtime = Some(unix);
        }
        self
    }

    /// The tar on local disk, written now if this is its first use (blocking: callers in
    /// async code use spawn_blocking or block_in_place).
    pub fn tar(&self) -> Result<&Path, String> {
        self.tar.path()
    }

    /// The tar, to be written from another thread ([`LazyTar::path`]).
    pub fn lazy_tar(&self) -> Arc<LazyTar> {
        self.tar.clone()
    }

    /// Where packing writes its temporary files.
    pub fn temp_dir(&self) -> &Path {
        &self.tar.temp_dir
    }

    /// A packed directory's listing, to read new content from the files themselves.
    pub(crate) fn listing(&self) -> Option<&Listing> {
        self.tar.listing.as_ref()
    }
}

/// A packed artifact's tar: written at packing (a tarball, or a directory without a
/// manifest), or on first use from the directory's listing.
#[derive(Debug)]
pub struct LazyTar {
    made: OnceLock<Result<TempPath, String>>,
    temp_dir: PathBuf,
    listing: Option<Listing>,
    /// The digest cache the listing took digests from: forgotten when a file turns out to
    /// have changed behind an unchanged stat record.
    cache_dir: Option<PathBuf>,
}

impl LazyTar {
    fn written(tar: TempPath, temp_dir: &Path) -> LazyTar {
        LazyTar {
            made: OnceLock::from(Ok(tar)),
            temp_dir: temp_dir.to_owned(),
            listing: None,
            cache_dir: None,
        }
    }

    /// The tar on local disk, written from the listing on first use (blocking; a second
    /// caller waits for the first).
    pub fn path(&self) -> Result<&Path, String> {
        self.made
            .get_or_init(|| self.write().map_err(|e| crate::error::chain(&e)))
            .as_ref()
            .map(|tar| tar.as_ref())
            .map_err(Clone::clone)
    }

    /// Writes the tar stream into `out`: from the file if it was written, else straight
    /// from the directory's listing, checked as [`LazyTar::path`] checks it (blocking).
    pub fn write_to(&self, out: &mut dyn Write) -> Result<(), String> {
        let (Some(listing), None) = (&self.listing, self.made.get()) else {
            let tar = self.path()?;
            let mut file =
                File::open(tar).map_err(|e| format!("cannot read the packed artifact: {e}"))?;
            return io::copy(&mut file, out)
                .map(drop)
                .map_err(|e| format!("cannot read the packed artifact: {e}"));
        };
        let mut out = out;
        let written = listing.write(&mut out, &self.temp_dir);
        if let (Err(ArtifactError::Changed { .. }), Some(cache)) = (&written, &self.cache_dir) {
            super::digests::forget(cache, &listing.root);
        }
        written.map_err(|e| crate::error::chain(&e))
    }

    fn write(&self) -> Result<TempPath, ArtifactError> {
        let listing = self
            .listing
            .as_ref()
            .expect("a tar not written has a listing");
        let temp = new_temp(&self.temp_dir)?;
        let write_err = |source| ArtifactError::Write {
            dir: self.temp_dir.clone(),
            source,
        };
        let mut out = BufWriter::with_capacity(BUF_SIZE, temp.as_file());
        let written = listing.write(&mut out, &self.temp_dir);
        if let (Err(ArtifactError::Changed { .. }), Some(cache)) = (&written, &self.cache_dir) {
            // The next pack must read every file again.
            super::digests::forget(cache, &listing.root);
        }
        written?;
        out.flush().map_err(write_err)?;
        drop(out);
        Ok(temp.into_temp_path())
    }
}

/// Fixed mtime of every packed entry (2000-01-01T00:00:00Z): a real one would make the sha
/// depend on when the files were checked out or built. What hosts get instead is
/// [`Packed::files_mtime`], set in the streams sent ([`Restamp`]).
pub(crate) const MTIME: u64 = 946_684_800;

/// Read and write buffers: big enough for few syscalls, fixed so memory stays flat.
pub(super) const BUF_SIZE: usize = 64 * 1024;

/// Packs a directory, or checks and adopts a tarball. Blocking; callers use spawn_blocking.
pub fn pack(path: &Path, temp_dir: &Path) -> Result<Packed, ArtifactError> {
    pack_cached(path, temp_dir, None)
}

/// [`pack`], with a directory's file digests kept in the deployer's digest cache under
/// `cache_dir` ([`super::digests`]): a file whose stat record is unchanged since the last
/// pack is not hashed again. The tar, its sha256 and the manifest are the same bytes as
/// without the cache.
pub fn pack_cached(
    path: &Path,
    temp_dir: &Path,
    cache_dir: Option<&Path>,
) -> Result<Packed, ArtifactError> {
    let meta = fs::metadata(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            ArtifactError::Missing {
                path: path.to_owned(),
            }
        } else {
            ArtifactError::Read {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    if meta.is_dir() {
        return pack_dir(path, temp_dir, cache_dir);
    }
    if !meta.is_file() {
        return Err(ArtifactError::Unsupported {
            path: path.to_owned(),
        });
    }
    let name = path
        .file_name()
        .map(|n| n.as_bytes().to_ascii_lowercase())
        .unwrap_or_default();
    if name.ends_with(b".tar.gz") || name.ends_with(b".tgz") {
        adopt_tarball(path, temp_dir, TarFormat::Gzip)
    } else if name.ends_with(b".tar") {
        adopt_tarball(path, temp_dir, TarFormat::Plain)
    } else {
        Err(ArtifactError::Unsupported {
            path: path.to_owned(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Directory → deterministic tar

/// Packs a directory: lists and checks it, hashes its files (or takes their digests from
/// the cache), and leaves the tar to be written when a host first needs it. Its identity is
/// the manifest's sha256, which says exactly what the tar holds: a redeploy whose hosts all
/// take a delta or already hold the release reads only the files whose stat record changed.
/// A directory the manifest cannot describe is written and hashed whole at once.
pub(super) fn pack_dir(
    root: &Path,
    temp_dir: &Path,
    cache_dir: Option<&Path>,
) -> Result<Packed, ArtifactError> {
    let mut digests = cache_dir.map(|dir| Digests::open(dir, root));
    let listing = list_dir(root, digests.as_mut())?;
    if let Some(digests) = &digests {
        // A cache that cannot be saved only makes the next pack hash everything again.
        let _ = digests.save(now_ns());
    }
    let entries = listing.entries.len() as u64;
    let tar_size = listing.tar_size();
    let Some(manifest) = listing.manifest() else {
        let temp = new_temp(temp_dir)?;
        let write_err = |source| ArtifactError::Write {
            dir: temp_dir.to_owned(),
            source,
        };
        let mut sink = Behind::start(temp.as_file().try_clone().map_err(write_err)?);
        listing.write(&mut sink, temp_dir)?;
        let (sha256, tar_size) = sink.finish().map_err(write_err)?;
        let mut packed = packed(
            temp,
            Summary {
                sha256,
                tar_size,
                entries,
                manifest: None,
            },
            temp_dir,
        );
        packed.fixed_mtime = true;
        return Ok(packed);
    };
    Ok(Packed {
        tar: Arc::new(LazyTar {
            made: OnceLock::new(),
            temp_dir: temp_dir.to_owned(),
            listing: Some(listing),
            cache_dir: cache_dir.map(Path::to_owned),
        }),
        sha256: manifest.sha256(),
        manifest: Some(Arc::new(manifest)),
        tar_size,
        entries,
        fixed_mtime: true,
        files_mtime: None,
    })
}

/// The wall clock in nanoseconds since the epoch (what the digest cache compares file
/// times with).
fn now_ns() -> i128 {
    crate::clock::now_nanos() as i128
}

/// A packed directory's entries in tar order (depth first, each level sorted by name
/// bytes: `read_dir`'s order depends on the filesystem, the tar's must not), each file with
/// the digest and size it had when listed.
#[derive(Debug)]
pub(crate) struct Listing {
    pub(crate) root: PathBuf,
    pub(crate) entries: Vec<(String, Listed)>,
}

#[derive(Debug)]
pub(crate) enum Listed {
    Dir,
    File {
        /// 0o644 or 0o755.
        mode: u32,
        len: u64,
        sha256: String,
    },
    Symlink {
        target: String,
    },
}

/// Bytes a tar member takes: its header, a GNU `L` (`K`) entry for a name (link target)
/// longer than the header's field, its data padded to whole blocks. What [`write_member`]
/// and [`pad`] write.
fn member_size(name: usize, link: usize, size: u64) -> u64 {
    let long = |len: usize| {
        if len > 100 {
            512 + (len as u64 + 1).next_multiple_of(512)
        } else {
            0
        }
    };
    512 + long(name) + long(link) + size.next_multiple_of(512)
}

impl Listing {
    fn manifest(&self) -> Option<Manifest> {
        let mut builder = manifest::Builder::new();
        for (rel, entry) in &self.entries {
            match entry {
                Listed::Dir => builder.dir(rel, 0o755),
                Listed::File { mode, len, sha256 } => {
                    builder.file(rel, *mode, *len, sha256.clone())
                }
                Listed::Symlink { target } => builder.symlink(rel, target),
            }
        }
        builder.finish()
    }

    /// The size of the tar [`Listing::write`] writes, without writing it.
    fn tar_size(&self) -> u64 {
        let members: u64 = self
            .entries
            .iter()
            .map(|(rel, entry)| match entry {
                Listed::Dir => member_size(rel.len() + 1, 0, 0),
                Listed::File { len, .. } => member_size(rel.len(), 0, *len),
                Listed::Symlink { target } => member_size(rel.len(), target.len(), 0),
            })
            .sum();
        members + 1024
    }

    /// The order of the tar's members: every directory first, in path order (so each comes
    /// before what it holds), then files and symlinks grouped by extension, in path order
    /// within each. Like content then sits together, which a compressor rewards (as 7-Zip
    /// sorts a solid archive): zstd makes 3 % fewer bytes of a 20 MB tar whose random
    /// `.bin` files alternated with base64 `.js` text (more than `gzip -6` made of it
    /// before, fewer after). Only the stream changes: a directory's identity is its
    /// manifest, whose order is its own.
    fn tar_order(&self) -> Vec<&(String, Listed)> {
        let extension = |rel: &str| {
            let name = rel.rsplit('/').next().unwrap_or(rel);
            match name.rsplit_once('.') {
                Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
                _ => String::new(),
            }
        };
        let (mut dirs, mut rest): (Vec<_>, Vec<_>) = self
            .entries
            .iter()
            .partition(|(_, entry)| matches!(entry, Listed::Dir));
        dirs.sort_by(|a, b| a.0.cmp(&b.0));
        rest.sort_by_cached_key(|(rel, _)| (extension(rel), rel.clone()));
        dirs.extend(rest);
        dirs
    }

    /// Writes the tar (in [`Listing::tar_order`]), reading each file again: a file whose
    /// size or content is no longer what was listed (and hashed, or found in the digest
    /// cache) fails the write with [`ArtifactError::Changed`], so what is sent is always
    /// what the identity names.
    pub(crate) fn write(&self, out: &mut impl Write, temp_dir: &Path) -> Result<(), ArtifactError> {
        let write_err = |source| ArtifactError::Write {
            dir: temp_dir.to_owned(),
            source,
        };
        for (rel, entry) in self.tar_order() {
            match entry {
                Listed::Dir => {
                    let name = format!("{rel}/");
                    write_member(
                        out,
                        name.as_bytes(),
                        EntryType::Directory,
                        b"",
                        0o755,
                        MTIME,
                        0,
                    )
                    .map_err(write_err)?;
                }
                Listed::Symlink { target } => write_member(
                    out,
                    rel.as_bytes(),
                    EntryType::Symlink,
                    target.as_bytes(),
                    0o777,
                    MTIME,
                    0,
                )
                .map_err(write_err)?,
                Listed::File { mode, len, sha256 } => {
                    write_member(
                        out,
                        rel.as_bytes(),
                        EntryType::Regular,
                        b"",
                        *mode,
                        MTIME,
                        *len,
                    )
                    .map_err(write_err)?;
                    let got = self.copy_file(rel, *len, out, temp_dir)?;
                    if got != *sha256 {
                        return Err(self.changed(rel));
                    }
                    pad(out, *len).map_err(write_err)?;
                }
            }
        }
        out.write_all(&[0; 1024]).map_err(write_err)
    }

    /// Copies the listed file `rel` (exactly `len` bytes, or [`ArtifactError::Changed`])
    /// into `out`; gives its sha256.
    pub(crate) fn copy_file(
        &self,
        rel: &str,
        len: u64,
        out: &mut impl Write,
        temp_dir: &Path,
    ) -> Result<String, ArtifactError> {
        let full = self.root.join(rel);
        let read_err = |source| ArtifactError::Read {
            path: full.clone(),
            source,
        };
        // O_NOFOLLOW: a symlink that took the file's place is not followed.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&full)
            .map_err(read_err)?;
        if file.metadata().map_err(read_err)?.len() != len {
            return Err(self.changed(rel));
        }
        let mut data = Hashing::new(Exact::new(file, len));
        let mut buf = vec![0u8; BUF_SIZE];
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                // Exact's own errors: the file grew or shrank since it was listed.
                Err(e)
                    if data.inner.failed
                        && matches!(
                            e.kind(),
                            io::ErrorKind::UnexpectedEof | io::ErrorKind::Other
                        ) =>
                {
                    return Err(self.changed(rel));
                }
                Err(source) => return Err(read_err(source)),
            };
            out.write_all(&buf[..n])
                .map_err(|source| ArtifactError::Write {
                    dir: temp_dir.to_owned(),
                    source,
                })?;
        }
        Ok(data.finish().1)
    }

    fn changed(&self, rel: &str) -> ArtifactError {
        ArtifactError::Changed {
            artifact: self.root.clone(),
            entry: rel.to_owned(),
        }
    }
}

/// Lists and checks `root`, hashing each file (or taking its digest from `digests` while
/// its stat record is unchanged).
pub(super) fn list_dir(
    root: &Path,
    digests: Option<&mut Digests>,
) -> Result<Listing, ArtifactError> {
    let mut lister = Lister {
        root,
        entries: Vec::new(),
        digests,
    };
    lister.walk(root, "")?;
    if lister.entries.is_empty() {
        return Err(ArtifactError::Empty {
            path: root.to_owned(),
        });
    }
    Ok(Listing {
        root: root.to_owned(),
        entries: lister.entries,
    })
}

struct Lister<'a> {
    root: &'a Path,
    entries: Vec<(String, Listed)>,
    digests: Option<&'a mut Digests>,
}

impl Lister<'_> {
    /// Lists `dir`'s children, depth first, each level sorted by name bytes.
    fn walk(&mut self, dir: &Path, prefix: &str) -> Result<(), ArtifactError> {
        let read_err = |source| ArtifactError::Read {
            path: dir.to_owned(),
            source,
        };
        let mut names = fs::read_dir(dir)
            .map_err(read_err)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<Result<Vec<OsString>, _>>()
            .map_err(read_err)?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let full = dir.join(&name);
            let Some(name) = name.to_str() else {
                return Err(self.refuse(
                    format!("{prefix}{}", name.to_string_lossy()),
                    Refusal::NameNotUtf8,
                ));
            };
            let rel = format!("{prefix}{name}");
            if rel == manifest::RESERVED {
                return Err(self.refuse(rel, Refusal::Reserved));
            }
            let meta = fs::symlink_metadata(&full).map_err(|source| ArtifactError::Read {
                path: full.clone(),
                source,
            })?;
            let kind = meta.file_type();
            if kind.is_dir() && rel == "REVISION" {
                return Err(self.refuse(rel, Refusal::RevisionDir));
            }
            if kind.is_dir() {
                self.entries.push((rel.clone(), Listed::Dir));
                self.walk(&full, &format!("{rel}/"))?;
            } else if kind.is_file() {
                self.list_file(&full, rel, meta.permissions().mode())?;
            } else if kind.is_symlink() {
                self.list_symlink(&full, rel)?;
            } else {
                let kind = if kind.is_socket() {
                    "socket"
                } else if kind.is_fifo() {
                    "fifo"
                } else if kind.is_block_device() {
                    "block device"
                } else if kind.is_char_device() {
                    "character device"
                } else {
                    "special file"
                };
                return Err(self.refuse(rel, Refusal::Special { kind }));
            }
        }
        Ok(())
    }

    fn list_file(&mut self, full: &Path, rel: String, mode: u32) -> Result<(), ArtifactError> {
        let read_err = |source| ArtifactError::Read {
            path: full.to_owned(),
            source,
        };
        // O_NOFOLLOW: the entry was a regular file when listed; if a symlink took its place
        // since, fail rather than hash whatever it points to.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(full)
            .map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        let len = meta.len();
        let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        // Stat of the open file, taken before reading it: a change while it is read
        // changes its ctime, so the next pack does not take the digest recorded now.
        let stat = Stat::of(&meta);
        let cached = self.digests.as_mut().and_then(|d| d.get(&rel, &stat));
        let sha256 = match cached {
            Some(sha256) => sha256,
            None => {
                let mut data = Hashing::new(Exact::new(file, len));
                io::copy(&mut data, &mut io::sink()).map_err(read_err)?;
                data.finish().1
            }
        };
        if let Some(digests) = self.digests.as_mut() {
            digests.put(&rel, stat, sha256.clone());
        }
        self.entries.push((rel, Listed::File { mode, len, sha256 }));
        Ok(())
    }

    fn list_symlink(&mut self, full: &Path, rel: String) -> Result<(), ArtifactError> {
        let target = fs::read_link(full).map_err(|source| ArtifactError::Read {
            path: full.to_owned(),
            source,
        })?;
        let Some(target) = target.to_str() else {
            return Err(self.refuse(rel, Refusal::TargetNotUtf8));
        };
        let depth = rel.split('/').count() - 1;
        if let Err(refusal) = check_symlink_target(depth, target.as_bytes()) {
            return Err(self.refuse(rel, refusal));
        }
        let target = target.to_owned();
        self.entries.push((rel, Listed::Symlink { target }));
        Ok(())
    }

    fn refuse(&self, entry: String, refusal: Refusal) -> ArtifactError {
        ArtifactError::Refused {
            artifact: self.root.to_owned(),
            entry,
            refusal,
        }
    }
}

/// A header with everything but type, mode and size fixed, so two machines packing the same
/// tree write the same bytes.
pub(crate) fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(MTIME);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// Reads exactly `len` bytes of a file and fails if it turns out shorter or longer: the tar
/// header already says `len`, and a file changing under us must not corrupt the archive
/// nor be deployed half old, half new.
pub(super) struct Exact {
    file: File,
    remaining: u64,
    /// Set when this reader produced an error, so it is reported against the source file
    /// rather than the temp file.
    failed: bool,
}

impl Exact {
    fn new(file: File, len: u64) -> Exact {
        Exact {
            file,
            remaining: len,
            failed: false,
        }
    }
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = if self.remaining == 0 {
            match self.file.read(&mut [0u8; 1]) {
                Ok(0) => Ok(0),
                Ok(_) => Err(io::Error::other("the file grew while it was being packed")),
                Err(e) => Err(e),
            }
        } else {
            let max = buf
                .len()
                .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
            match self.file.read(&mut buf[..max]) {
                Ok(0) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was being packed",
                )),
                Ok(n) => {
                    self.remaining -= n as u64;
                    Ok(n)
                }
                Err(e) => Err(e),
            }
        };
        if result.is_err() {
            self.failed = true;
        }
        result
    }
}

/// What packing learned about the tar stream.
pub(super) struct Summary {
    pub(super) sha256: String,
    pub(super) tar_size: u64,
    pub(super) entries: u64,
    pub(super) manifest: Option<Manifest>,
}

/// Writes one member's header(s) to a tar stream: a GNU header, with a GNU `L` (`K`)
/// entry ahead of it for a name (link target) longer than the header's field. The caller
/// writes `size` bytes of data and the padding.
pub(super) fn write_member(
    out: &mut impl Write,
    name: &[u8],
    kind: EntryType,
    link: &[u8],
    mode: u32,
    mtime: u64,
    size: u64,
) -> io::Result<()> {
    for (long, flag) in [
        (name, EntryType::GNULongName),
        (link, EntryType::GNULongLink),
    ] {
        if long.len() > 100 {
            // GNU tar reads the entry's data up to the NUL.
            let len = long.len() as u64 + 1;
            let mut header = header(flag, 0o644, len);
            header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
            header.set_mtime(0);
            header.set_cksum();
            out.write_all(header.as_bytes())?;
            out.write_all(long)?;
            out.write_all(&[0])?;
            pad(out, len)?;
        }
    }
    let mut header = header(kind, mode, size);
    header.set_mtime(mtime);
    let old = header.as_old_mut();
    old.name[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    old.linkname[..link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    header.set_cksum();
    out.write_all(header.as_bytes())
}

/// Zeros after `size` bytes of data, up to the next 512-byte block.
pub(super) fn pad(out: &mut impl Write, size: u64) -> io::Result<()> {
    let rem = (size % 512) as usize;
    if rem == 0 {
        return Ok(());
    }
    out.write_all(&[0; 512][rem..])
}

// ---------------------------------------------------------------------------------------
// Shared

/// Writes the tar stream to a file and hashes it on another thread, so that packing a
/// directory hashes each file (for the manifest) and the whole stream (the identity) on two
/// cores at once. Chunks go through a short queue: memory stays bounded.
pub(super) struct Behind {
    chunk: Vec<u8>,
    queue: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    worker: Option<std::thread::JoinHandle<io::Result<(String, u64)>>>,
}

/// Bytes per chunk handed to the writer thread.
pub(super) const CHUNK: usize = 256 * 1024;

impl Behind {
    pub(super) fn start(file: File) -> Behind {
        let (queue, chunks) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let worker = std::thread::spawn(move || {
            let mut out = Hashing::new(BufWriter::with_capacity(BUF_SIZE, file));
            let mut failed = None;
            for chunk in chunks {
                // After a failure, keep draining so the packer is not blocked.
                if failed.is_none()
                    && let Err(e) = out.write_all(&chunk)
                {
                    failed = Some(e);
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            let (mut sink, sha256, size) = out.finish();
            sink.flush()?;
            Ok((sha256, size))
        });
        Behind {
            chunk: Vec::with_capacity(CHUNK),
            queue: Some(queue),
            worker: Some(worker),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        if let Some(Ok(())) = self.queue.as_ref().map(|q| q.send(chunk)) {
            return Ok(());
        }
        // The writer stopped: its own error says why.
        drop(self.queue.take());
        match self.worker.take().map(|w| w.join()) {
            Some(Ok(Err(e))) => Err(e),
            _ => Err(io::Error::other("the artifact writer stopped")),
        }
    }

    /// The stream's sha256 (hex) and size, once everything is written.
    pub(super) fn finish(mut self) -> io::Result<(String, u64)> {
        let sent = self.send();
        drop(self.queue.take());
        let joined = match self.worker.take() {
            Some(worker) => worker
                .join()
                .map_err(|_| io::Error::other("the artifact writer panicked"))?,
            None => Err(io::Error::other("the artifact writer stopped")),
        };
        sent?;
        joined
    }
}

impl Write for Behind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Behind {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Hashes and counts the bytes passing through, in either direction: the sha256 of a
/// stream (a tar, an upload), computed as it streams by.
pub(crate) struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    bytes: u64,
}

impl<T> Hashing<T> {
    pub(crate) fn new(inner: T) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Like [`new`](Self::new), the digest starting with `prefix` (sent ahead of the
    /// stream, not written through here nor counted).
    pub(crate) fn with_prefix(inner: T, prefix: &[u8]) -> Self {
        let mut hashing = Hashing::new(inner);
        hashing.hasher.update(prefix);
        hashing
    }

    /// Bytes passed through so far.
    pub(crate) fn count(&self) -> u64 {
        self.bytes
    }

    /// The inner stream, the lowercase hex sha256 and the byte count.
    pub(crate) fn finish(self) -> (T, String, u64) {
        (self.inner, hex(&self.hasher.finalize()), self.bytes)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

pub(super) fn new_temp(temp_dir: &Path) -> Result<tempfile::NamedTempFile, ArtifactError> {
    // Created 0600 by tempfile: the artifact may hold anything the project ships.
    tempfile::Builder::new()
        .prefix("shipit-artifact-")
        .tempfile_in(temp_dir)
        .map_err(|source| ArtifactError::Write {
            dir: temp_dir.to_owned(),
            source,
        })
}

pub(super) fn packed(temp: tempfile::NamedTempFile, checked: Summary, temp_dir: &Path) -> Packed {
    Packed {
        tar: Arc::new(LazyTar::written(temp.into_temp_path(), temp_dir)),
        sha256: checked.sha256,
        manifest: checked.manifest.map(Arc::new),
        tar_size: checked.tar_size,
        entries: checked.entries,
        fixed_mtime: false,
        files_mtime: None,
    }
}

/// A writer that passes a tar stream through with the mtime of every file, directory and
/// link set to `mtime` (headers of long names and pax records left as they are): what a
/// packed directory's stream carries to the hosts instead of [`MTIME`].
pub(crate) struct Restamp<W> {
    inner: W,
    mtime: u64,
    block: Vec<u8>,
    /// Blocks of entry data still to pass before the next header.
    data_blocks: u64,
}

impl<W: Write> Restamp<W> {
    pub(crate) fn new(inner: W, mtime: u64) -> Restamp<W> {
        Restamp {
            inner,
            mtime,
            block: Vec::with_capacity(512),
            data_blocks: 0,
        }
    }

    fn block(&mut self) -> io::Result<()> {
        if self.data_blocks > 0 {
            self.data_blocks -= 1;
        } else if self.block.iter().any(|b| *b != 0) {
            let header = Header::from_byte_slice(&self.block);
            let size = header.entry_size()?;
            self.data_blocks = size.div_ceil(512);
            let kind = header.entry_type();
            if kind.is_file() || kind.is_dir() || kind.is_symlink() || kind.is_hard_link() {
                let mut header = header.clone();
                header.set_mtime(self.mtime);
                header.set_cksum();
                self.block.copy_from_slice(header.as_bytes());
            }
        }
        self.inner.write_all(&self.block)?;
        self.block.clear();
        Ok(())
    }

    /// The inner writer, once the whole stream (whole blocks) went through.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        if !self.block.is_empty() {
            return Err(io::Error::other(
                "a tar stream that does not end on a block",
            ));
        }
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Restamp<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.block.is_empty() && self.data_blocks > 0 && buf.len() >= 512 {
            // Whole blocks of entry data pass as they are.
            let blocks = self.data_blocks.min((buf.len() / 512) as u64);
            let len = blocks as usize * 512;
            self.inner.write_all(&buf[..len])?;
            self.data_blocks -= blocks;
            return Ok(len);
        }
        let n = buf.len().min(512 - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == 512 {
            self.block()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
