//! The command line, as clap derive types only. Common flags are global: they work before
//! or after the command and stage, as people type them.

pub mod completion;
pub mod manual;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::engine::ArgValueCandidates;

#[derive(Debug, Parser)]
#[command(
    name = "shipit",
    version,
    about = "Ship a release to a fleet over SSH: strict host keys, atomic switch, one binary",
    after_help = "Examples:\n  shipit check staging                 can every host of inventory/staging.toml be deployed to?\n  shipit deploy staging                ship the artifact and switch every host to it\n  shipit rollback staging              back to the previous good release\n  shipit exec staging -- uptime        run a command on every host\n\nExit codes: 0 success; 1 failed, nothing switched; 2 usage or inventory error;\n3 failed and rolled back; 4 rollback failed, a human is needed; 5 locked by another run"
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
    /// More detail: each host's steps; with `check`, where each connection setting came from
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Answer yes to confirmations (`unlock`, `restore`, `rollback --restore-db`)
    #[arg(long, global = true)]
    pub yes: bool,
    /// Do not read `~/.ssh/config` and `/etc/ssh/ssh_config` (the inventory alone says how to connect)
    #[arg(long, global = true)]
    pub no_ssh_config: bool,
}

/// One release deployed by several jobs (a CI matrix): `deploy` and `plan` take the same.
#[derive(Clone, Debug, Default, Args)]
pub struct Sharding {
    /// Use this release id (as `shipit plan --json` prints it) instead of a new one: every job of a CI matrix deploys the same
    #[arg(long, value_name = "ID")]
    pub release_id: Option<String>,
    /// Only the K-th of N parts of the selected hosts (in inventory order, host i when i % N = K-1), e.g. `2/4`
    #[arg(
        long,
        value_name = "K/N",
        conflicts_with = "once_only",
        requires = "release_id"
    )]
    pub shard: Option<String>,
    /// Only the once steps: stage the migrate host, back up, migrate; switch nothing
    #[arg(long, conflicts_with = "skip_once", requires = "release_id")]
    pub once_only: bool,
    /// Skip the once steps (backup, migrations, `once` hooks at `after_upload`): a `--once-only` run did them
    #[arg(long)]
    pub skip_once: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    Auto,
    Always,
    Never,
}

/// The shells `shipit completions` writes a script for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ship the artifact to every selected host and switch `current` to it
    #[command(
        after_help = "Example:\n  shipit deploy staging\n  shipit deploy prod --json > report.json"
    )]
    Deploy {
        /// Stage name: reads inventory/<STAGE>.toml
        #[arg(add = ArgValueCandidates::new(completion::stages))]
        stage: String,
        /// Wave sizes, overriding `rollout.waves`: e.g. `1,25%` (the last size repeats)
        #[arg(long, value_delimiter = ',', value_name = "SIZES")]
        waves: Vec<String>,
        /// Show what would happen (= `shipit plan`) and change nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        sharding: Sharding,
    },
    /// Show the current release, services, health and lock of every host
    #[command(after_help = "Example:\n  shipit status staging")]
    Status {
        /// Stage name: reads inventory/<STAGE>.toml
        #[arg(add = ArgValueCandidates::new(completion::stages))]
        stage: String,
    },
    /// Scaffold inventory/<STAGE>.toml, templates, known_hosts and a GitHub Actions workflow
    #[command(
        after_help = "Example:\n  shipit init                    inventory/staging.toml and friends\n  shipit init production"
    )]
    Init {
        /// Stage name for the new inventory
        #[arg(default_value = "staging")]
        stage: String,
    },
    /// Show what a deploy would do on every host, changing nothing
    #[command(after_help = "Example:\n  shipit plan staging\n  shipit plan prod --json")]
    Plan {
        /// Stage name: reads inventory/<STAGE>.toml
        #[arg(add = ArgValueCandidates::new(completion::stages))]
        stage: String,
        /// Wave sizes, overriding `rollout.waves`
        #[arg(long, value_delimiter = ',', value_name = "SIZES")]
        waves: Vec<String>,
        #[command(flatten)]
        sharding: Sharding,
    },
    /// Switch every selected host back to an earlier release
    #[command(
        after_help = "Example:\n  shipit rollback staging                       the newest good release before current\n  shipit rollback staging --to 20261122T101500Z-3f2a9c1d0b7e"
    )]
    Rollback {
        /// Stage name: reads inventory/<STAGE>.toml
        #[arg(add = ArgValueCandidates::new(completion::stages))]
        stage: String,
        /// The release id to go back to (see `shipit releases`)
        #[arg(long, value_name = "ID")]
        to: Option<String>,
        /// Also restore the database backup taken before the current release's migrations (asks first; `--yes` to skip)
        #[arg(long)]
        restore_db: bool,
    },
    /// Restore a database backup (as `shipit backups` lists it) on the migrate host, with the app stopped meanwhile
    #[command(
        after_help = "Example:\n  shipit restore prod shop-20261122T101500Z-3f2a9c1d0b7e-20261122T101502Z.dump\n  shipit restore prod shop-manual-20261120T080000Z.dump --release 20261119T170000Z-0a1b2c3d4e5f"
    )]
    Restore {
        /// Stage name: reads inventory/<STAGE>.toml
        #[arg(add = ArgValueCandidates::new(completion::stages))]
        stage: String,
        /// The backup's file name, as `shipit backups` lists it
        #[arg(value_name = "BACKUP")]
        backup: String,
        /// Also switch every host to this release (see `shipit releases`); by default the release stays
        #[arg(long, value_name = "ID")]
        release: Option<String>,
    },
    /// Print the resolved inventory (bases merged, defaults filled in, secrets redacted) as TOML, or JSON with `--json`
    #[command(
        after_help = "Example:\n  shipit config staging                 what inventory/staging.toml (and the base it extends) amounts to\n  shipit config prod --json\n\nNo host is contacted and no secret command runs. The TOML is itself an inventory: shipit loads it\nas the same one (where a secret value appeared, `<redacted>` stands in its place)."
    )]
    Config {
        /// Stage name: reads inventory/<STAGE>.toml
        #[arg(add = ArgValueCandidates::new(completion::stages))]
        stage: String,
    },
    /// List releases: which hosts hold each, and where it is current
    #[command(after_help = "Example:\n  shipit releases staging")]
    Releases {
        /// Stage name: reads inventory/<STAGE>.toml
        #[arg(add = ArgValueCandidates::new(completion::stages))]
        stage: String,
    },
    /// Show the fleet's deploy history, newest first
    #[command(after_help = "Example:\n  shipit history staging\n  shipit history prod --json")]
    History {
        /// Stage name: reads inventory/<STAGE>.toml
        #[arg(add = ArgValueCandidates::new(completion::stages))]
        stage: String,
    },
    /// Make one verified database backup now, on the migrate host, under the deploy lock
    #[command(
        after_help = "Example:\n  shipit backup prod\n  shipit backup prod --verify-restore       the restore drill, on the newest backup"
    )]
    Backup {
        /// Stage name: reads inventory/<STAGE>.toml
        #[arg(add = ArgValueCandidates::new(completion::stages))]
        stage: String,
        /// Make no backup: restore the newest (or `--backup`) into a scratch database, count its tables and rows, drop it; fails when empty
        #[arg(long)]
        verify_restore: bool,
        /// With `--verify-restore`: this backup instead of the newest
        #[arg(long, value_name = "NAME", requires = "verify_restore")]
        backup: Option<String>,
    },
    /// List the database backups on the migrate host, newest first, with sizes and times
    #[command(after_help = "Example:\n  shipit backups prod")]
    Backups {
        /// Stage name: reads inventory/<STAGE>.toml
        #[arg(add = ArgValueCandidates::new(completion::stages))]
        stage: String,
    },
    /// Remove a deploy lock: one left by a run that died, or one taken with `shipit lock` (asks first; `--yes` to skip)
    #[command(after_help = "Example:\n  shipit unlock staging\n  shipit unlock staging --yes")]
    Unlock {
        /// Stage name: reads inventory/<STAGE>.toml
        #[arg(add = ArgValueCandidates::new(completion::stages))]
        stage: String,
    },
    /// Check every host: reachable, host key, auth, tools, write access, free disk
    #[command(
        after_help = "Example:\n  shipit check staging\n  shipit check prod --roles web --json"
    )]
    Check {
        /// Stage name: reads inventory/<STAGE>.toml
        #[arg(add = ArgValueCandidates::new(completion::stages))]
        stage: String,
    },
    /// Run a named task from `[tasks.<name>]` in the current release, under the deploy lock
    #[command(
        after_help = "Example:\n  shipit task staging seed          run `[tasks.seed]` (with `once`, on the migrate host only)\n  shipit task prod cache-clear --hosts web-1"
    )]
    Task {
        /// Stage name: reads inventory/<STAGE>.toml
        #[arg(add = ArgValueCandidates::new(completion::stages))]
        stage: String,
        /// The task's name, as in `[tasks.<NAME>]`
        name: String,
    },
    /// Run a shell command on every selected host in parallel
    #[command(
        after_help = "Example:\n  shipit exec staging -- systemctl status myapp\n  shipit exec prod --hosts web-1,web-2 -- 'df -h /opt | tail -1'"
    )]
    Exec {
        /// Stage name: reads inventory/<STAGE>.toml
        #[arg(add = ArgValueCandidates::new(completion::stages))]
        stage: String,
        /// The command; its words are joined with spaces and run by `sh` on each host
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Show each host's service logs: the `[[systemd]]` units' journal, or the `[compose]` services' logs
    #[command(
        after_help = "Example:\n  shipit logs staging                        the last 100 lines of every host\n  shipit logs prod -n 20 -f --hosts web-1    follow one host until Ctrl-C"
    )]
    Logs {
        /// Stage name: reads inventory/<STAGE>.toml
        #[arg(add = ArgValueCandidates::new(completion::stages))]
        stage: String,
        /// How many lines to show first, per unit or service
        #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 100)]
        lines: u32,
        /// Keep printing new lines until Ctrl-C
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Open an interactive login shell on one host, in its current release
    #[command(
        after_help = "Example:\n  shipit shell prod --hosts web-1\n\nThe exit status of the remote shell is shipit's."
    )]
    Shell {
        /// Stage name: reads inventory/<STAGE>.toml
        #[arg(add = ArgValueCandidates::new(completion::stages))]
        stage: String,
    },
    /// Hold the deploy lock on purpose, with a message, until `shipit unlock`
    #[command(
        after_help = "Example:\n  shipit lock prod -m \"database maintenance until 14:00, ask alice\"\n  shipit unlock prod"
    )]
    Lock {
        /// Stage name: reads inventory/<STAGE>.toml
        #[arg(add = ArgValueCandidates::new(completion::stages))]
        stage: String,
        /// Why: shown by `status`, `check` and to every deploy, rollback or task it refuses
        #[arg(short = 'm', long = "message", value_name = "TEXT", required = true)]
        message: String,
    },
    /// Print a script that completes commands and stage names (`inventory/*.toml`) in a shell
    #[command(
        after_help = "Example:\n  shipit completions bash > ~/.local/share/bash-completion/completions/shipit\n  echo 'source <(shipit completions zsh)' >> ~/.zshrc\n  shipit completions fish > ~/.config/fish/completions/shipit.fish"
    )]
    Completions {
        /// The shell to complete in
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print shipit's manual page (roff), or write one page per command into a directory
    #[command(
        after_help = "Example:\n  shipit man | man -l -\n  shipit man --dir ~/.local/share/man/man1"
    )]
    Man {
        /// Write `shipit.1` and `shipit-<COMMAND>.1` into this directory (created if missing)
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

impl Command {
    /// The stage the command works on; `None` for commands that need no inventory.
    pub fn stage(&self) -> Option<&str> {
        let stage = match self {
            Command::Check { stage }
            | Command::Exec { stage, .. }
            | Command::Task { stage, .. }
            | Command::Deploy { stage, .. }
            | Command::Plan { stage, .. }
            | Command::Status { stage }
            | Command::Init { stage }
            | Command::Rollback { stage, .. }
            | Command::Releases { stage }
            | Command::Config { stage }
            | Command::History { stage }
            | Command::Unlock { stage }
            | Command::Backup { stage, .. }
            | Command::Restore { stage, .. }
            | Command::Backups { stage }
            | Command::Logs { stage, .. }
            | Command::Shell { stage }
            | Command::Lock { stage, .. } => stage,
            Command::Completions { .. } | Command::Man { .. } => return None,
        };
        Some(stage)
    }

    /// Whether the command ships the artifact (built and packed before any connection).
    pub fn needs_artifact(&self) -> bool {
        matches!(self, Command::Deploy { .. } | Command::Plan { .. })
    }

    /// Whether the command renders the unit, site and compose templates (read and checked
    /// before any connection).
    pub fn needs_templates(&self) -> bool {
        matches!(
            self,
            Command::Deploy { .. }
                | Command::Rollback { .. }
                | Command::Restore { .. }
                | Command::Plan { .. }
        )
    }

    /// Whether the command needs the secrets of `env.from_env`: only these write the env
    /// file or hand a secret to the host (and `check` says whether a deploy could); `exec`,
    /// `task`, `status`, `rollback`... run without them and redact the ones that are set.
    pub fn needs_secrets(&self) -> bool {
        matches!(
            self,
            Command::Deploy { .. }
                | Command::Plan { .. }
                | Command::Backup { .. }
                | Command::Restore { .. }
                | Command::Rollback {
                    restore_db: true,
                    ..
                }
                | Command::Check { .. }
        )
    }

    /// Whether the command restores a database backup (asks first, unless `--yes`).
    pub fn restores(&self) -> bool {
        matches!(
            self,
            Command::Restore { .. }
                | Command::Rollback {
                    restore_db: true,
                    ..
                }
        )
    }
}
