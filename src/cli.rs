//! The command line, as clap derive types only. Common flags are global: they work before
//! or after the command and stage, as people type them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "shipit",
    version,
    about = "Ship a release to a fleet over SSH: strict host keys, atomic switch, one binary",
    after_help = "Examples:\n  shipit check staging                 can every host of inventory/staging.toml be deployed to?\n  shipit exec staging -- uptime        run a command on every host\n  shipit check prod --hosts web-1 --json\n\nExit codes: 0 success; 1 a host failed; 2 usage or inventory error"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Inventory file [default: inventory/<STAGE>.toml]
    #[arg(short = 'i', long = "inventory", value_name = "PATH", global = true)]
    pub inventory: Option<PathBuf>,
    /// Only these hosts (comma-separated names)
    #[arg(long, value_delimiter = ',', value_name = "NAMES", global = true)]
    pub hosts: Vec<String>,
    /// Only hosts with one of these roles (comma-separated)
    #[arg(long, value_delimiter = ',', value_name = "ROLES", global = true)]
    pub roles: Vec<String>,
    /// Print the report as JSON on stdout (human output stays on stderr)
    #[arg(long, global = true)]
    pub json: bool,
    /// Progress display: bars on a terminal (auto), always, or plain lines (never)
    #[arg(long, value_enum, default_value_t = Progress::Auto, value_name = "WHEN", global = true)]
    pub progress: Progress,
    /// More detail (each host's steps)
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every host: reachable, host key, auth, tools, write access, free disk
    #[command(
        after_help = "Example:\n  shipit check staging\n  shipit check prod --roles web --json"
    )]
    Check {
        /// Stage name: reads inventory/<STAGE>.toml
        stage: String,
    },
    /// Run a shell command on every selected host in parallel
    #[command(
        after_help = "Example:\n  shipit exec staging -- systemctl status myapp\n  shipit exec prod --hosts web-1,web-2 -- 'df -h /opt | tail -1'"
    )]
    Exec {
        /// Stage name: reads inventory/<STAGE>.toml
        stage: String,
        /// The command; its words are joined with spaces and run by `sh` on each host
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
}

impl Command {
    pub fn stage(&self) -> &str {
        match self {
            Command::Check { stage } | Command::Exec { stage, .. } => stage,
        }
    }
}
