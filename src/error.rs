//! The errors that end a run, and the exit code each one maps to (documented in the README).

use crate::artifact::ArtifactError;
use crate::inventory::{InventoryError, SelectError};

/// Exit codes, the one table (the README's "Exit codes" paragraph says the same).
pub mod code {
    /// Success: the command did what it was asked (for `deploy`: every host deployed).
    pub const OK: u8 = 0;
    /// Failed, nothing switched (for `check`/`exec`: some host failed; every host is still
    /// reported).
    pub const FAILED: u8 = 1;
    /// Usage, inventory or artifact error: nothing was contacted.
    pub const USAGE: u8 = 2;
    /// Failed and rolled back: some host was switched back (never 0 after a rollback).
    pub const ROLLED_BACK: u8 = 3;
    /// The rollback failed: a human is needed.
    pub const ROLLBACK_FAILED: u8 = 4;
    /// Locked by another run, or on purpose (`shipit lock`): nothing was changed (`deploy`,
    /// `rollback`, `restore`, `backup`, `task`, `lock`).
    pub const LOCKED: u8 = 5;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error("cannot read inventory `{path}`: {reason}")]
    ReadInventory { path: String, reason: String },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Template(#[from] crate::deploy::templates::TemplateError),
    #[error(transparent)]
    SshConfig(#[from] crate::ssh::config::ConfigError),
    #[error(transparent)]
    Reach(#[from] crate::ssh::reach::ReachError),
    #[error("cannot read template `{path}`: {reason}")]
    ReadTemplate { path: String, reason: String },
    #[error("`deploy` needs an `[artifact]` section with `path` in `{file}`")]
    NoArtifact { file: String },
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
    #[error("{failed} of {total} hosts failed")]
    HostsFailed { failed: usize, total: usize },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Inventory(_)
            | Error::Select(_)
            | Error::ReadInventory { .. }
            | Error::NoArtifact { .. }
            | Error::ReadTemplate { .. }
            | Error::Usage(_)
            | Error::SshConfig(_)
            | Error::Reach(_)
            | Error::Secret(_)
            | Error::Template(_) => code::USAGE,
            Error::Artifact(e) => match e {
                ArtifactError::BuildStart { .. }
                | ArtifactError::BuildFailed { .. }
                | ArtifactError::Write { .. } => code::FAILED,
                // A missing, empty or unsafe artifact is bad input: nothing was contacted.
                _ => code::USAGE,
            },
            Error::HostsFailed { .. } | Error::Other(_) => code::FAILED,
        }
    }
}

/// An error and its causes, one after another: `cannot read x: permission denied`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Transparent wrappers repeat their inner message; say it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
