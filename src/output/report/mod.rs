//! The reports commands end with, as plain data beside the events: what `--json` prints,
//! field for field, and how people read it (each type's [`Report`](super::Report) impl).
//!
//! Commands build these; renderers show them. A report names no command module: it may
//! depend on the pure modules (inventory, plan, ssh settings) and on the rest of `output`.

pub mod backup;
pub mod check;
pub mod deploy;
pub mod exec;
pub mod history;
pub mod init;
pub mod lock;
pub mod manual;
pub mod plan;
pub mod releases;
pub mod status;
pub mod unlock;
