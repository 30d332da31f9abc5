//! Pure builders of remote commands, one file per remote subject. A builder returns a
//! [`Cmd`](crate::shell::Cmd) and never runs anything; tests compare the rendered text and
//! run the scripts through a real `sh`.
//!
//! Remote scripts report state by exit code (constants in [`exit`]), never by prose that the
//! caller would have to match.

pub mod history;
pub mod lock;
pub mod release;

/// Exit codes of shipit's own remote scripts (chosen above what common tools return).
pub mod exit {
    /// The deploy lock is held by someone else; its owner.json is on stdout.
    pub const LOCK_HELD: u32 = 75;
    /// No lock is present.
    pub const NO_LOCK: u32 = 76;
    /// The uploaded bytes do not have the expected sha256.
    pub const SHA_MISMATCH: u32 = 81;
    /// A `shared_files` entry exists neither in `shared/` nor in the artifact.
    pub const SHARED_FILE_MISSING: u32 = 82;
    /// The release to switch to does not exist (complete) on the host.
    pub const RELEASE_MISSING: u32 = 83;
}
