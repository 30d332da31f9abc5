//! The artifact: what `artifact.path` names, turned into one tar file on local disk, plus
//! its sha256; [`compress`] makes the file a whole upload streams to a host.
//!
//! A directory is packed into a deterministic tar (sorted entries, fixed mtime, owners and
//! modes), so the same content gives the same sha256 on any machine. A `.tar.gz`, `.tgz` or
//! `.tar` is read in full and every entry checked before anything is uploaded: nothing that
//! could land outside the release directory on a host or into shipit's own files in it,
//! nothing but files, directories and links, nothing two `tar` readers could read
//! differently; what is uploaded is a fresh tar written from the checked entries, never the
//! tarball's own bytes, so the host extracts exactly what was checked. Both paths stream
//! through fixed buffers, so memory stays flat whatever the artifact's size. This module also runs `artifact.build`, the local command that makes
//! the artifact.
//!
//! Packing also writes the artifact's [`Manifest`] (each path's type, mode, size, sha256),
//! which travels to the host ahead of the tar stream.
//!
//! Blocking file I/O only: callers run [`pack`], [`compress`] and [`build`] under
//! `spawn_blocking`. May
//! depend on nothing else in the crate but [`crate::artifact::manifest`].

pub mod delta;
pub mod manifest;

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use tar::{Archive, EntryType, Header, PaxExtensions};
use tempfile::TempPath;

use manifest::Manifest;

/// How the packed file is compressed (the host runs the matching decompressor).
/// zstd is what [`pack`] makes: it decompresses several times faster than gzip, and the
/// hosts' CPU is what a fleet deploy spends; [`to_gzip`] makes the copy for hosts without
/// `zstd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Zstd,
    Gzip,
}

impl Codec {
    /// Compresses a small buffer (the manifest sent ahead of the artifact).
    pub fn compress(self, data: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Codec::Zstd => zstd::stream::encode_all(data, ZSTD_LEVEL),
            Codec::Gzip => {
                let mut gzip = GzEncoder::new(Vec::new(), Compression::fast());
                gzip.write_all(data)?;
                gzip.finish()
            }
        }
    }

    /// Decompresses a small buffer compressed by the host's tool.
    pub fn decompress_bytes(self, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        match self {
            Codec::Zstd => {
                zstd::stream::read::Decoder::new(data)?.read_to_end(&mut out)?;
            }
            Codec::Gzip => {
                MultiGzDecoder::new(data).read_to_end(&mut out)?;
            }
        }
        Ok(out)
    }

    /// The host's command that decompresses stdin to stdout.
    pub fn decompress(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd -dc",
            Codec::Gzip => "gzip -dc",
        }
    }
}

/// zstd's level: its default, compressing about as tightly as `gzip -6` at several times
/// the speed.
const ZSTD_LEVEL: i32 = 3;

/// The artifact, checked, as one uncompressed tar on local disk. [`compress`] makes what a
/// whole upload sends; a delta reads new content from here.
#[derive(Debug)]
pub struct Packed {
    /// The tar stream; deleted on drop.
    pub tar: TempPath,
    /// sha256 (lowercase hex) of the tar stream: the artifact's identity. The same content
    /// gives the same value on any machine, whatever the compression.
    pub sha256: String,
    /// The artifact's manifest; `None` when its names or entries cannot be described
    /// exactly (see [`crate::artifact::manifest`]): such an artifact is always sent whole.
    pub manifest: Option<Arc<Manifest>>,
    /// Size of the tar stream.
    pub tar_size: u64,
    /// Number of entries (files, dirs, symlinks).
    pub entries: u64,
}

/// The artifact compressed for a whole upload: the manifest, then the tar.
#[derive(Debug)]
pub struct Compressed {
    /// The compressed tar; deleted on drop.
    pub file: TempPath,
    pub codec: Codec,
    /// Size of `file` in bytes.
    pub compressed_size: u64,
    /// The manifest compressed with `codec`: sent ahead of `file` (empty without one).
    pub prefix: Vec<u8>,
    /// sha256 of `prefix` followed by `file`: what the host checks the bytes it received
    /// against.
    pub upload_sha256: String,
}

impl Compressed {
    /// Bytes a whole upload sends: the manifest and the compressed tar.
    pub fn upload_size(&self) -> u64 {
        self.prefix.len() as u64 + self.compressed_size
    }
}

/// Why an artifact cannot be packed or built.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact `{path}` does not exist")]
    Missing { path: PathBuf },
    #[error("cannot read `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("artifact `{path}` is neither a directory nor a `.tar.gz`, `.tgz` or `.tar` file")]
    Unsupported { path: PathBuf },
    #[error("artifact `{path}` is empty: there is nothing to deploy")]
    Empty { path: PathBuf },
    #[error("cannot deploy `{entry}` from artifact `{artifact}`: {refusal}")]
    Refused {
        artifact: PathBuf,
        /// The entry's path inside the artifact (lossy if it is not UTF-8).
        entry: String,
        refusal: Refusal,
    },
    #[error("artifact `{path}` is not a valid {format} file")]
    NotTar {
        path: PathBuf,
        /// `tar` or `tar.gz`.
        format: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the packed artifact in `{dir}`")]
    Write {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start `artifact.build` `{command}` in `{dir}`")]
    BuildStart {
        command: String,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`artifact.build` `{command}` failed with {} (in `{dir}`)", describe_status(.status))]
    BuildFailed {
        command: String,
        dir: PathBuf,
        status: ExitStatus,
    },
}

/// What is wrong with one entry of an artifact.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("it is a {kind}; only files, directories and links can be deployed")]
    Special { kind: &'static str },
    #[error("its entry type `{}` is not supported", .flag.escape_ascii())]
    UnsupportedType { flag: u8 },
    #[error("its name is not valid UTF-8, which `tar` and remote shells handle badly; rename it")]
    NameNotUtf8,
    #[error("its link target is not valid UTF-8, which `tar` and remote shells handle badly")]
    TargetNotUtf8,
    #[error("its path is absolute")]
    AbsolutePath,
    #[error("its path has a `..` component")]
    ParentComponent,
    #[error("its path is empty")]
    EmptyPath,
    #[error("its path is or goes through symlink `{link}`, earlier in the archive")]
    UnderSymlink { link: String },
    #[error("it is a symlink with an empty target")]
    EmptyTarget,
    #[error(
        "it is a symlink to absolute path `{target}`; only links inside the artifact can be deployed"
    )]
    AbsoluteTarget { target: String },
    #[error("it is a symlink to `{target}`, which is outside the artifact")]
    EscapingTarget { target: String },
    #[error(
        "it is a symlink to `{target}`, which has `..` after a name and so cannot be checked to stay inside the artifact; write it without that step back"
    )]
    UncheckableTarget { target: String },
    #[error("it is a hard link to `{target}`, which is not a path inside the artifact")]
    EscapingHardLink { target: String },
    #[error("it is a hard link with no target")]
    MissingHardLinkTarget,
    #[error("it is a symlink with no target")]
    MissingSymlinkTarget,
    #[error("its pax header sets `{key}`, which `tar` tools do not apply alike")]
    PaxOverride { key: String },
    #[error("its pax header is malformed")]
    MalformedPax,
    #[error("`.shipit` at the top of a release is reserved for shipit's own files; rename it")]
    Reserved,
    #[error(
        "`REVISION` at the top of a release is the file shipit writes there; it cannot be a directory"
    )]
    RevisionDir,
    #[error("it is a symlink to `{target}`, which is shipit's own `.shipit` in the release")]
    IntoReserved { target: String },
    #[error(
        "its header is neither ustar, GNU nor old-style tar, so `tar` tools may read its name differently"
    )]
    UnknownFormat,
    #[error(
        "its {what} is given twice, differently (a GNU long name or link and a pax header), so `tar` tools disagree on it"
    )]
    Ambiguous { what: &'static str },
    #[error("its pax header sets `{key}` twice")]
    PaxTwice { key: String },
    #[error("its name has a NUL byte, where `tar` tools end names")]
    NulInName,
    #[error("its link target has a NUL byte, where `tar` tools end names")]
    NulInTarget,
    #[error("it is a file whose name ends with `/`, which GNU `tar` makes a directory")]
    FileNamedAsDir,
    #[error(
        "it is a directory or link whose header gives it data, which `tar` tools skip differently"
    )]
    DataOnNonFile,
    #[error("its path is given by an earlier entry too; `tar` would replace one with the other")]
    Duplicate,
    #[error("its path goes through `{file}`, a file earlier in the archive")]
    UnderFile { file: String },
    #[error(
        "it is a hard link to `{target}`, which is not a file earlier in the archive; `tar` on the host could not make it"
    )]
    HardLinkToNothing { target: String },
}

/// Fixed mtime of every packed entry (2000-01-01T00:00:00Z): a real one would make the sha
/// depend on when the files were checked out or built.
const MTIME: u64 = 946_684_800;

/// Read and write buffers: big enough for few syscalls, fixed so memory stays flat.
const BUF_SIZE: usize = 64 * 1024;

/// Longest pax global header read into memory; real ones hold a comment or a few fields.
const MAX_GLOBAL_PAX: u64 = 1024 * 1024;

/// Packs a directory, or checks and adopts a tarball. Blocking; callers use spawn_blocking.
pub fn pack(path: &Path, temp_dir: &Path) -> Result<Packed, ArtifactError> {
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
        return pack_dir(path, temp_dir);
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

/// Runs `artifact.build` locally with `sh -c` in `dir`, its stdout and stderr both going to
/// shipit's stderr, because shipit's stdout is reserved for `--json` data.
pub fn build(command: &str, dir: &Path) -> Result<(), ArtifactError> {
    let start = |source| ArtifactError::BuildStart {
        command: command.to_owned(),
        dir: dir.to_owned(),
        source,
    };
    let stderr = io::stderr().as_fd().try_clone_to_owned().map_err(start)?;
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .stderr(Stdio::inherit())
        .status()
        .map_err(start)?;
    if status.success() {
        Ok(())
    } else {
        Err(ArtifactError::BuildFailed {
            command: command.to_owned(),
            dir: dir.to_owned(),
            status,
        })
    }
}

fn describe_status(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Directory → deterministic tar

fn pack_dir(root: &Path, temp_dir: &Path) -> Result<Packed, ArtifactError> {
    let temp = new_temp(temp_dir)?;
    let checked = write_dir_tar(root, temp_dir, temp.as_file())?;
    Ok(packed(temp, checked))
}

/// Writes `root` as a tar into `out`.
fn write_dir_tar(root: &Path, temp_dir: &Path, out: &File) -> Result<Summary, ArtifactError> {
    let write_err = |source| ArtifactError::Write {
        dir: temp_dir.to_owned(),
        source,
    };
    let sink = Behind::start(out.try_clone().map_err(write_err)?);
    let mut packer = DirPacker {
        root,
        temp_dir,
        builder: tar::Builder::new(sink),
        entries: 0,
        manifest: manifest::Builder::new(),
    };
    packer.walk(root, "")?;
    if packer.entries == 0 {
        return Err(ArtifactError::Empty {
            path: root.to_owned(),
        });
    }
    let entries = packer.entries;
    let manifest = packer.manifest.finish();
    let sink = packer.builder.into_inner().map_err(write_err)?;
    let (sha256, tar_size) = sink.finish().map_err(write_err)?;
    Ok(Summary {
        sha256,
        tar_size,
        entries,
        manifest,
    })
}

type DirSink = Behind;

struct DirPacker<'a> {
    root: &'a Path,
    temp_dir: &'a Path,
    builder: tar::Builder<DirSink>,
    entries: u64,
    manifest: manifest::Builder,
}

impl DirPacker<'_> {
    /// Appends `dir`'s children, depth first, each level sorted by name bytes: the order
    /// `read_dir` returns depends on the filesystem, and the tar must not.
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
                self.manifest.dir(&rel, 0o755);
                let rel = format!("{rel}/");
                let mut header = header(EntryType::Directory, 0o755, 0);
                self.append(&rel, &mut header, io::empty())?;
                self.walk(&full, &rel)?;
            } else if kind.is_file() {
                self.append_file(&full, &rel, meta.permissions().mode())?;
            } else if kind.is_symlink() {
                self.append_symlink(&full, &rel)?;
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

    fn append_file(&mut self, full: &Path, rel: &str, mode: u32) -> Result<(), ArtifactError> {
        let read_err = |source| ArtifactError::Read {
            path: full.to_owned(),
            source,
        };
        // O_NOFOLLOW: the entry was a regular file when listed; if a symlink took its place
        // since, fail rather than pack whatever it points to.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(full)
            .map_err(read_err)?;
        let len = file.metadata().map_err(read_err)?.len();
        let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        let mut header = header(EntryType::Regular, mode, len);
        let mut data = Hashing::new(Exact::new(file, len));
        self.append(rel, &mut header, &mut data)
            .map_err(|e| match (e, data.inner.failed) {
                (ArtifactError::Write { source, .. }, true) => read_err(source),
                (e, _) => e,
            })?;
        let (_, sha256, size) = data.finish();
        self.manifest.file(rel, mode, size, sha256);
        Ok(())
    }

    fn append_symlink(&mut self, full: &Path, rel: &str) -> Result<(), ArtifactError> {
        let target = fs::read_link(full).map_err(|source| ArtifactError::Read {
            path: full.to_owned(),
            source,
        })?;
        let Some(target) = target.to_str() else {
            return Err(self.refuse(rel.to_owned(), Refusal::TargetNotUtf8));
        };
        let depth = rel.split('/').count() - 1;
        if let Err(refusal) = check_symlink_target(depth, target.as_bytes()) {
            return Err(self.refuse(rel.to_owned(), refusal));
        }
        // Written as read: the tar crate's `append_link` drops `.` steps and a trailing
        // `/`, and the host's link would then differ from the manifest's.
        write_member(
            self.builder.get_mut(),
            rel.as_bytes(),
            EntryType::Symlink,
            target.as_bytes(),
            0o777,
            MTIME,
            0,
        )
        .map_err(|source| self.write_err(source))?;
        self.manifest.symlink(rel, target);
        self.entries += 1;
        Ok(())
    }

    /// Appends one entry; I/O errors are the temp file's unless the caller knows better.
    fn append(
        &mut self,
        rel: &str,
        header: &mut Header,
        data: impl Read,
    ) -> Result<(), ArtifactError> {
        self.builder
            .append_data(header, rel, data)
            .map_err(|source| self.write_err(source))?;
        self.entries += 1;
        Ok(())
    }

    fn write_err(&self, source: io::Error) -> ArtifactError {
        ArtifactError::Write {
            dir: self.temp_dir.to_owned(),
            source,
        }
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
struct Exact {
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

// ---------------------------------------------------------------------------------------
// Tarball → checked, re-written tar

#[derive(Clone, Copy)]
enum TarFormat {
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
fn adopt_tarball(path: &Path, temp_dir: &Path, format: TarFormat) -> Result<Packed, ArtifactError> {
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
    Ok(packed(temp, checked))
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
fn copy_checked(
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

/// What packing learned about the tar stream.
struct Summary {
    sha256: String,
    tar_size: u64,
    entries: u64,
    manifest: Option<Manifest>,
}

/// Reads a whole tar stream, checking each entry and writing it to `out` as checked, then
/// what follows the end-of-archive marker. Gives back `out`, the entry count and the
/// manifest.
fn check_tar<R: Read, W: Write>(
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
enum Seen {
    Dir,
    File,
    Symlink,
}

struct EntryChecker<'a, W> {
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
fn pax_key_refused(key: &str) -> bool {
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

/// Writes one member's header(s) to a tar stream: a GNU header, with a GNU `L` (`K`)
/// entry ahead of it for a name (link target) longer than the header's field. The caller
/// writes `size` bytes of data and the padding.
fn write_member(
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
fn pad(out: &mut impl Write, size: u64) -> io::Result<()> {
    let rem = (size % 512) as usize;
    if rem == 0 {
        return Ok(());
    }
    out.write_all(&[0; 512][rem..])
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
fn check_symlink_target(depth: usize, target: &[u8]) -> Result<(), Refusal> {
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

// ---------------------------------------------------------------------------------------
// Shared

/// Writes the tar stream to a file and hashes it on another thread, so that packing a
/// directory hashes each file (for the manifest) and the whole stream (the identity) on two
/// cores at once. Chunks go through a short queue: memory stays bounded.
struct Behind {
    chunk: Vec<u8>,
    queue: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    worker: Option<std::thread::JoinHandle<io::Result<(String, u64)>>>,
}

/// Bytes per chunk handed to the writer thread.
const CHUNK: usize = 256 * 1024;

impl Behind {
    fn start(file: File) -> Behind {
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
    fn finish(mut self) -> io::Result<(String, u64)> {
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

use manifest::hex;

fn new_temp(temp_dir: &Path) -> Result<tempfile::NamedTempFile, ArtifactError> {
    // Created 0600 by tempfile: the artifact may hold anything the project ships.
    tempfile::Builder::new()
        .prefix("shipit-artifact-")
        .tempfile_in(temp_dir)
        .map_err(|source| ArtifactError::Write {
            dir: temp_dir.to_owned(),
            source,
        })
}

fn packed(temp: tempfile::NamedTempFile, checked: Summary) -> Packed {
    Packed {
        tar: temp.into_temp_path(),
        sha256: checked.sha256,
        manifest: checked.manifest.map(Arc::new),
        tar_size: checked.tar_size,
        entries: checked.entries,
    }
}

/// Compresses the packed tar for a whole upload with `codec` (zstd; gzip for hosts that
/// have no `zstd`), with the manifest to send ahead of it. Blocking.
pub fn compress(
    tar: &Path,
    manifest: Option<&Manifest>,
    codec: Codec,
    temp_dir: &Path,
) -> Result<Compressed, ArtifactError> {
    let write_err = |source| ArtifactError::Write {
        dir: temp_dir.to_owned(),
        source,
    };
    let prefix = match manifest {
        Some(manifest) => codec.compress(&manifest.render()).map_err(write_err)?,
        None => Vec::new(),
    };
    let temp = new_temp(temp_dir)?;
    let mut source = BufReader::with_capacity(BUF_SIZE, File::open(tar).map_err(write_err)?);
    // The upload's digest is taken as the compressed bytes are written.
    let sink = Hashing::with_prefix(BufWriter::with_capacity(BUF_SIZE, temp.as_file()), &prefix);
    let written = match codec {
        Codec::Zstd => zstd::stream::write::Encoder::new(sink, ZSTD_LEVEL).and_then(|mut zstd| {
            io::copy(&mut source, &mut zstd)?;
            zstd.finish()
        }),
        Codec::Gzip => {
            let mut gzip = GzEncoder::new(sink, Compression::fast());
            io::copy(&mut source, &mut gzip).and_then(|_| gzip.finish())
        }
    };
    let (mut file, upload_sha256, compressed_size) = written.map_err(write_err)?.finish();
    file.flush().map_err(write_err)?;
    drop(file);
    Ok(Compressed {
        file: temp.into_temp_path(),
        codec,
        compressed_size,
        prefix,
        upload_sha256,
    })
}

#[cfg(test)]
mod tests {
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
        let tar = gunzip(&first.tar);
        for codec in [Codec::Zstd, Codec::Gzip] {
            let c = compress(&first.tar, first.manifest.as_deref(), codec, temp.path()).unwrap();
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

        assert_eq!(gunzip(&second.tar), tar);
        assert_eq!(sha_of(&tar), first.sha256);
        assert_eq!(tar.len() as u64, first.tar_size);
        let paths: Vec<String> = entries_of(&tar).into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "a.txt",
                "app.js",
                "bin/",
                "bin/run",
                "lib/",
                "lib/a.js",
                "lib/app",
                "lib/sub/",
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
        let entries = entries_of(&gunzip(&packed.tar));
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
        let mode = fs::metadata(&packed.tar).unwrap().permissions().mode();
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
        let entries = entries_of(&gunzip(&packed.tar));
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        let dir = format!("{}/", "d".repeat(80));
        let link = format!("{}/{}", "d".repeat(80), "l".repeat(110));
        let deep_dir = format!("{deep}/");
        assert_eq!(paths, [&dir, &deep_dir, &file, &link]);
        assert_eq!(entries[2].data, b"long");
        assert_eq!(entries[3].link.as_deref(), Some(target.as_str()));
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
        let links: Vec<(String, Option<String>)> = entries_of(&fs::read(&packed.tar).unwrap())
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
            .arg(&*packed.tar)
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
                let (got_entry, got_refusal, message) =
                    refused(pack_bytes(temp.path(), &name, &bytes));
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
            gnu_listing(&fs::read(&packed.tar).unwrap()),
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
        let copy = fs::read(&packed.tar).unwrap();
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
        assert_eq!(fs::read(&packed_gz.tar).unwrap(), copy);
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
            let copy = fs::read(&packed.tar).unwrap();
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
        let copy = fs::read(&packed.tar).unwrap();
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
        let c = compress(&packed.tar, None, Codec::Zstd, temp.path()).unwrap();
        assert!(c.compressed_size < 2 << 20, "{}", c.compressed_size);
    }

    #[test]
    fn build_runs_in_the_directory_and_reports_the_exit_status() {
        let temp = tempfile::tempdir().unwrap();
        build("echo built > out.txt", temp.path()).unwrap();
        assert_eq!(fs::read(temp.path().join("out.txt")).unwrap(), b"built\n");

        let err = build("echo failing; exit 3", temp.path()).unwrap_err();
        assert!(matches!(err, ArtifactError::BuildFailed { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "`artifact.build` `echo failing; exit 3` failed with exit status 3 (in `{}`)",
                temp.path().display()
            )
        );
        let err = build("true", &temp.path().join("missing")).unwrap_err();
        assert!(matches!(err, ArtifactError::BuildStart { .. }), "{err}");
    }
}
