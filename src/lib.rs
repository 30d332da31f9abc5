//! shipit: an SSH push deployer. See `README.md` and `../shared/DESIGN.md` for the picture;
//! each module's own doc says what it owns and what it may depend on.

pub mod artifact;
pub mod candidates;
pub mod check;
pub mod cli;
pub mod commands;
pub mod database;
pub mod envfile;
pub mod error;
pub mod exec;
pub mod facts;
pub mod fleet;
pub mod health;
pub mod history;
pub mod init;
pub mod inventory;
pub mod lock;
pub mod output;
pub mod plan;
pub mod preview;
pub mod releases;
pub mod rollout;
pub mod shell;
pub mod status;
pub mod switch;
pub mod templates;
pub mod transport;
