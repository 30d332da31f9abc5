//! shipit: an SSH push deployer. See `README.md` and `../shared/DESIGN.md` for the picture;
//! each module's own doc says what it owns and what it may depend on.
//!
//! - [`inventory`]: TOML → validated inventory (pure);
//! - [`plan`]: facts + inventory + artifact → the steps of a run (pure);
//! - [`commands`] and [`shell`]: remote commands as values (pure);
//! - [`artifact`]: the artifact on the deployer's side: build, pack, check, compress, delta;
//! - [`deploy`]: the fleet pipeline (stage, once, switch, finish) that executes a plan;
//! - [`ops`]: the other commands (check, exec, task, status, releases, history, unlock, …);
//! - [`ssh`]: ssh_config and known_hosts resolution as `ssh` does it;
//! - [`transport`]: running commands on a host (ssh, local);
//! - [`output`]: the event stream, the reports and their renderers, the only module that
//!   prints;
//! - [`secrets`]: the secrets of `[env.secrets.NAME]`, read on the deployer before any
//!   connection;
//! - [`notify`]: the `[[notify]]` commands run on the deployer with a run's report;
//! - [`clock`]: the deployer's clock (`now_unix`, `now_millis`).

pub mod artifact;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod deploy;
pub mod error;
pub mod execute;
pub mod inventory;
pub mod notify;
pub mod ops;
pub mod output;
pub mod plan;
pub mod secrets;
pub mod shell;
pub mod ssh;
pub mod transport;
