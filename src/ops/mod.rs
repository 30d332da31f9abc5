//! The commands besides deploy and rollback: `check`, `exec`, `task`, `status`, `releases`,
//! `history`, `lock` and `unlock`, `logs`, `shell`, `backup` and `backups`, `init`. Each builds its report
//! ([`crate::output::report`]); the renderers show it.

pub mod backup;
pub mod check;
pub mod exec;
pub mod history;
pub mod init;
pub mod lock;
pub mod logs;
pub mod releases;
pub mod shell;
pub mod status;
pub mod task;
pub mod unlock;
