//! The `shipit` binary: parse arguments, read the world (files, environment, terminal),
//! pick the transport and the output, run, and map the outcome to an exit code.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use shipit::cli::{Cli, Command, Progress};
use shipit::error::{Error, code};
use shipit::inventory::{self, Inventory, LoadContext};
use shipit::output::{self, Event, Mode, Output};
use shipit::shell::Secret;
use shipit::transport::SshSettings;
use shipit::{check, exec, fleet};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.global.json;
    match run(cli) {
        Ok(()) => ExitCode::from(code::OK),
        Err(e) => {
            // Host failures were already reported by the renderer, with every host.
            if !matches!(e, Error::HostsFailed { .. }) {
                output::early_error(&e.to_string(), json);
            }
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    let stage = cli.command.stage().to_owned();
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    let inventory = load_inventory(&cli, &stage, home.as_deref())?;
    let hosts = inventory.select(&cli.global.hosts, &cli.global.roles)?;
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    let out = Output::new(output_mode(&cli), &names, cli.global.verbose);
    let settings = ssh_settings(&inventory, home.as_deref());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Error::Other(anyhow::Error::new(e).context("cannot start the async runtime"))
        })?;
    runtime.block_on(async {
        let connector = fleet::Connector::new(&inventory, &settings);
        let (failed, total) = match &cli.command {
            Command::Check { .. } => {
                let report = check::run(&stage, &inventory, &hosts, &connector, &out).await;
                out.emit(Event::CheckDone(&report));
                (report.failed(), report.hosts.len())
            }
            Command::Exec { command, .. } => {
                let report = exec::run(&stage, command, &inventory, &hosts, &connector, &out).await;
                out.emit(Event::ExecDone(&report));
                (report.failed(), report.hosts.len())
            }
        };
        if failed > 0 {
            return Err(Error::HostsFailed { failed, total });
        }
        Ok(())
    })
}

fn load_inventory(cli: &Cli, stage: &str, home: Option<&Path>) -> Result<Inventory, Error> {
    let path = match &cli.global.inventory {
        Some(path) => path.clone(),
        None => {
            if stage.is_empty() || stage.contains(['/', '\\']) || stage.starts_with('.') {
                return Err(Error::ReadInventory {
                    path: stage.to_owned(),
                    reason: "a stage is a name like `staging`; use `-i PATH` for a file".to_owned(),
                });
            }
            PathBuf::from("inventory").join(format!("{stage}.toml"))
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|e| Error::ReadInventory {
        path: path.display().to_string(),
        reason: if e.kind() == std::io::ErrorKind::NotFound {
            "no such file; create it (see examples/) or pass `-i PATH`".to_owned()
        } else {
            e.to_string()
        },
    })?;
    let base_dir = std::env::current_dir().map_err(|e| {
        Error::Other(anyhow::Error::new(e).context("cannot read the current directory"))
    })?;
    // An empty variable counts as unset: CI expands an undefined secret to "".
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let ctx = LoadContext {
        base_dir: &base_dir,
        home,
        env: &env,
    };
    Ok(inventory::parse(&text, &path, &ctx)?)
}

fn output_mode(cli: &Cli) -> Mode {
    if cli.global.json {
        return Mode::Json;
    }
    match cli.global.progress {
        Progress::Always => Mode::Tty,
        Progress::Never => Mode::Plain,
        Progress::Auto => {
            let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
            let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
            if std::io::stderr().is_terminal() && !ci && !dumb {
                Mode::Tty
            } else {
                Mode::Plain
            }
        }
    }
}

fn ssh_settings(inventory: &Inventory, home: Option<&Path>) -> SshSettings {
    let secret = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .map(Secret::new)
    };
    let known_hosts = match &inventory.ssh.known_hosts {
        Some(file) => vec![file.clone()],
        None => home
            .map(|h| vec![h.join(".ssh").join("known_hosts")])
            .unwrap_or_default(),
    };
    SshSettings {
        identity: inventory.ssh.identity.clone(),
        key_text: secret("SHIPIT_SSH_KEY"),
        passphrase: secret("SHIPIT_SSH_PASSPHRASE"),
        agent_socket: std::env::var_os("SSH_AUTH_SOCK")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        default_identities: fleet::default_identities(home),
        known_hosts,
    }
}
