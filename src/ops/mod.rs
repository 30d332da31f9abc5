//! The commands besides deploy and rollback: `check`, `exec`, `task`, `status`, `releases`,
//! `history`, `init`.

pub mod check;
pub mod exec;
pub mod history;
pub mod init;
pub mod releases;
pub mod status;
pub mod task;
