//! The errors that end a run, and the exit code each one maps to (documented in the README).

use crate::inventory::{InventoryError, SelectError};

/// Exit codes.
pub mod code {
    pub const OK: u8 = 0;
    /// Failed, nothing switched (for `check`/`exec`: some host failed).
    pub const FAILED: u8 = 1;
    /// Usage or inventory error: nothing was done.
    pub const USAGE: u8 = 2;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error("cannot read inventory `{path}`: {reason}")]
    ReadInventory { path: String, reason: String },
    #[error("{failed} of {total} hosts failed")]
    HostsFailed { failed: usize, total: usize },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Inventory(_) | Error::Select(_) | Error::ReadInventory { .. } => code::USAGE,
            Error::HostsFailed { .. } | Error::Other(_) => code::FAILED,
        }
    }
}
