//! shipit: an SSH push deployer. See `README.md` and `../shared/DESIGN.md` for the picture;
//! each module's own doc says what it owns and what it may depend on.

pub mod check;
pub mod cli;
pub mod error;
pub mod exec;
pub mod facts;
pub mod fleet;
pub mod inventory;
pub mod output;
pub mod shell;
pub mod transport;
