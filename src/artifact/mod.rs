//! The artifact: what `artifact.path` names, turned into one tar file on local disk, plus
//! its sha256; [`compress`] makes the file a whole upload streams to a host.
//!
//! A directory is packed into a deterministic tar (sorted entries, fixed mtime, owners and
//! modes), so the same content gives the same sha256 on any machine (`pack`). The files on
//! the hosts get a time that means something instead ([`files_time`]: the commit's), set in
//! the streams sent, never in the packed tar. A `.tar.gz`,
//! `.tgz` or `.tar` is read in full and every entry checked before anything is uploaded
//! (`tarcheck`): nothing that could land outside the release directory on a host or into
//! shipit's own files in it, nothing but files, directories and links, nothing two `tar`
//! readers could read differently; what is uploaded is a fresh tar written from the checked
//! entries, never the tarball's own bytes, so the host extracts exactly what was checked.
//! Both paths stream through fixed buffers, so memory stays flat whatever the artifact's
//! size. `build` runs `artifact.build`, the local command that makes the artifact;
//! `compress` holds the [`Codec`]; [`git`] reads the commit it is built from.
//!
//! Packing also writes the artifact's [`Manifest`](manifest::Manifest) (each path's type,
//! mode, size, sha256), which travels to the host ahead of the tar stream. A file whose stat
//! record is unchanged since the last pack on this machine takes its digest from the
//! deployer's cache ([`digests`]) instead of being hashed again.
//!
//! Blocking file I/O only: callers run [`pack`], [`compress`] and [`build`] under
//! `spawn_blocking`. May depend on nothing else in the crate but
//! [`crate::artifact::manifest`] and [`Stream`](crate::transport::Stream), which tags the
//! build's output lines.

pub mod delta;
pub mod git;
pub mod manifest;

mod build;
mod compress;
mod digests;
mod files_time;
mod pack;
mod tarcheck;

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

pub use build::build;
pub use compress::{Codec, Compressed, compress, compress_framed, prefix};
pub use digests::cache_dir;
pub use files_time::{FilesTime, files_time};
pub(crate) use pack::{Hashing, MTIME, header};
pub use pack::{LazyTar, Packed, pack, pack_cached};
pub(crate) use tarcheck::member_components;

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
    #[error(
        "`{entry}` in artifact `{artifact}` changed while shipit was deploying it; deploy again once the artifact is built"
    )]
    Changed { artifact: PathBuf, entry: String },
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

fn describe_status(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests;
