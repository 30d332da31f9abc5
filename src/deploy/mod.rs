//! The fleet pipeline of `shipit deploy` and `shipit rollback`: lock, stage, once, switch in
//! waves, finish; and `shipit plan`'s read-only preview of it.

pub mod envfile;
pub mod health;
pub mod lock;
pub mod once;
pub mod pipeline;
pub mod preview;
pub mod stage;
pub mod strict;
pub mod switch;
pub mod templates;
