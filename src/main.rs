//! The `shipit` binary: parse arguments, read the world (files, environment, clock,
//! terminal, signals), pick the transport and the output, run, and map the outcome to an
//! exit code.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use clap_complete::CompleteEnv;

use shipit::artifact;
use shipit::cli::{Cli, Command, Progress, Sharding};
use shipit::cli::{completion, manual};
use shipit::deploy::lock::RunInfo;
use shipit::deploy::pipeline::{self, Cancel};
use shipit::deploy::stage::Templates;
use shipit::error::{Error, code};
use shipit::inventory::{self, Inventory, LoadContext, TransportKind};
use shipit::ops::{backup, check, exec, history, releases, unlock};
use shipit::output::report::exec::{ExecReport, HostExec};
use shipit::output::report::unlock::HostUnlock;
use shipit::output::{self, Event, Mode, Output};
use shipit::shell::Secret;
use shipit::transport::SshSettings;
use shipit::transport::fleet::{self, Connector};

fn main() -> ExitCode {
    // A shell asking for completions (`SHIPIT_COMPLETE=bash shipit -- ...`): answer and exit.
    CompleteEnv::with_factory(Cli::command)
        .var(completion::VAR)
        .complete();
    let cli = Cli::parse();
    let json = cli.global.json;
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Host failures were already reported by the renderer, with every host.
            if !matches!(e, Error::HostsFailed { .. }) {
                output::early_error(&shipit::error::chain(&e), json);
            }
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<u8, Error> {
    match &cli.command {
        Command::Completions { shell } => {
            let argv0 = std::env::args_os()
                .next()
                .unwrap_or_else(|| "shipit".into());
            let cwd = std::env::current_dir().ok();
            let script =
                completion::registration(*shell, &completion::completer(&argv0, cwd.as_deref()));
            output::document(&script).map_err(|e| other(e, "cannot write to stdout"))?;
            return Ok(code::OK);
        }
        Command::Man { dir: None } => {
            let page = &manual::pages()[0];
            output::document(&page.roff).map_err(|e| other(e, "cannot write to stdout"))?;
            return Ok(code::OK);
        }
        Command::Man { dir: Some(dir) } => {
            let report = manual::write_all(dir).map_err(|e| Error::Other(e.into()))?;
            let out = Output::new(output_mode(&cli), &[], cli.global.verbose, None);
            out.emit(Event::Done(&report));
            return Ok(code::OK);
        }
        _ => {}
    }
    let stage = cli
        .command
        .stage()
        .expect("every other command names a stage")
        .to_owned();
    if let Command::Init { .. } = &cli.command {
        let dir =
            std::env::current_dir().map_err(|e| other(e, "cannot read the current directory"))?;
        let report = shipit::ops::init::scaffold(&dir, &stage)
            .map_err(|e| other(e, "cannot write the scaffold"))?;
        let out = Output::new(output_mode(&cli), &[], cli.global.verbose, None);
        out.emit(Event::Done(&report));
        return Ok(code::OK);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    let base_dir =
        std::env::current_dir().map_err(|e| other(e, "cannot read the current directory"))?;
    let inventory = load_inventory(&cli, &stage, &base_dir, home.as_deref())?;
    if let Command::Config { .. } = &cli.command {
        return show_config(&cli, &stage, &inventory);
    }
    let mut hosts = inventory.select(&cli.global.hosts, &cli.global.roles)?;
    // The migrate host of the whole selection, before a shard takes its part of it.
    let fleet_migrate_host = {
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        names[shipit::deploy::once::migrate_host_index(&inventory, &names)].to_owned()
    };
    let (release_id, once) = match sharding(&cli.command) {
        Some(s) => {
            hosts = shard_hosts(s, &inventory, hosts, &fleet_migrate_host, &stage)?;
            (s.release_id.clone(), once_steps(s))
        }
        None => (None, shipit::plan::shard::OnceSteps::Run),
    };
    if let Command::Task { name, .. } = &cli.command {
        let Some(task) = inventory.tasks.get(name) else {
            let known: Vec<String> = inventory.tasks.keys().map(|k| format!("`{k}`")).collect();
            return Err(Error::Usage(format!(
                "no task `{name}` in `{}`: {}",
                inventory.file.display(),
                if known.is_empty() {
                    "it has no `[tasks.<name>]` section".to_owned()
                } else {
                    format!("its tasks are {}", known.join(", "))
                }
            )));
        };
        hosts = shipit::ops::task::hosts_for(task, &inventory, &hosts);
        if hosts.is_empty() {
            return Err(Error::Usage(format!(
                "task `{name}` runs on hosts with the roles {:?}, and none of the selected hosts has one",
                task.roles
            )));
        }
    }
    match &cli.command {
        Command::Shell { .. } => {
            shipit::ops::shell::check_usage(&hosts, &stage).map_err(Error::Usage)?
        }
        Command::Lock { message, .. } => {
            shipit::ops::lock::check_message(message).map_err(Error::Usage)?
        }
        Command::Logs { .. } if !shipit::ops::logs::has_logs(&inventory) => {
            return Err(Error::Usage(format!(
                "`{}` has no `[[systemd]]` unit and no `[compose]` stack: no logs to read (`shipit exec {stage} -- tail FILE` reads a file)",
                inventory.file.display()
            )));
        }
        _ => {}
    }
    if cli.command.restores() {
        shipit::deploy::restore::can_restore(&inventory).map_err(Error::Usage)?;
        if !cli.global.yes && !std::io::stdin().is_terminal() {
            return Err(Error::Usage(
                "a restore replaces the database's content, and stdin is not a terminal to confirm on: pass `--yes` to restore without asking".to_owned(),
            ));
        }
    }
    let started_millis = shipit::clock::now_millis();
    let started_unix = started_millis / 1000;

    // Every secret value the run knows: none may be printed, whatever prints it.
    let ssh_secrets: Vec<Secret> = ["SHIPIT_SSH_KEY", "SHIPIT_SSH_PASSPHRASE"]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .map(Secret::new)
        .collect();
    let env_secrets = inventory
        .env
        .iter()
        .flat_map(|e| e.secrets.iter().map(|(_, v)| v));
    let redactor = shipit::deploy::envfile::redactor(env_secrets.chain(&ssh_secrets));

    // The build's lines go through an output of their own, without the hosts' bars: no host
    // is being worked on yet, and a failed build must not leave bars behind.
    let build_out = Output::new(output_mode(&cli), &[], cli.global.verbose, None)
        .redacting_with(redactor.clone());
    // The commit shipped, and whether the tree had uncommitted changes: read before the
    // build, which may write into the tree.
    let git = match cli.command.needs_artifact() {
        true => artifact::git::revision(&base_dir),
        false => None,
    };
    // Everything that can fail without a host comes before the first connection.
    let packed = match cli.command.needs_artifact() {
        true => Some(prepare_artifact(&inventory, &base_dir, &build_out)?),
        false => None,
    };
    if let (Some(id), Some(packed)) = (&release_id, &packed) {
        shipit::plan::shard::check_release_id(id, &packed.sha256)
            .map_err(|e| Error::Usage(e.to_string()))?;
    }
    let templates = match cli.command.needs_templates() {
        true => read_templates(&inventory)?,
        false => Templates::default(),
    };
    if cli.command.needs_artifact() {
        shipit::deploy::stage::check(&inventory, &hosts, &templates)?;
    }
    let env_content = inventory
        .env
        .as_ref()
        .map(|e| shipit::deploy::envfile::render(&e.vars, &e.secrets));

    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    let github = std::env::var("GITHUB_ACTIONS")
        .is_ok_and(|v| v == "true")
        .then(|| {
            std::env::var_os("GITHUB_STEP_SUMMARY")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        });
    let mode = output_mode(&cli);
    let mut out = Output::new(mode, &names, cli.global.verbose, github);
    // Sections only in plain output: with `--json` stdout is the report, and bars redraw.
    if mode == Mode::Plain && std::env::var("GITLAB_CI").is_ok_and(|v| v == "true") {
        out = out.gitlab_sections(&names);
    }
    let out = out.redacting_with(redactor.clone());
    let settings = ssh_settings(&inventory, home.as_deref());
    let reach = reach_hosts(&cli, &inventory, &hosts, &settings, home.as_deref())?;
    let run = run_info(started_millis, redactor);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| other(e, "cannot start the async runtime"))?;
    runtime.block_on(async {
        let connector = Connector::new(&inventory, &settings, reach);
        let deploy_to = &inventory.app.deploy_to;
        match &cli.command {
            Command::Check { .. } => {
                let verbose = cli.global.verbose > 0;
                let report =
                    check::run(&stage, &inventory, &hosts, &connector, &out, verbose).await;
                out.emit(Event::Done(&report));
                hosts_result(report.failed(), report.hosts.len())
            }
            Command::Exec { command, .. } => {
                let report = exec::run(&stage, command, &inventory, &hosts, &connector, &out).await;
                out.emit(Event::Done(&report));
                hosts_result(report.failed(), report.hosts.len())
            }
            Command::Logs { lines, follow, .. } => {
                let (conns, failed) = connect_reporting(&inventory, &hosts, &connector, &out).await;
                let (_stopper, stop) = tokio::sync::watch::channel(false);
                let stop = if *follow { stop_on_signals() } else { stop };
                let request = shipit::ops::logs::Request {
                    lines: *lines,
                    follow: *follow,
                };
                let mut report =
                    shipit::ops::logs::show(&stage, &conns, &inventory, request, stop, &out).await;
                for (host, e) in &failed {
                    report
                        .hosts
                        .push(HostExec::failed(&host.name, shipit::error::chain(e)));
                }
                out.emit(Event::Done(&report));
                fleet::close_all(&conns).await;
                hosts_result(report.failed(), report.hosts.len())
            }
            Command::Shell { .. } => shipit::ops::shell::run(&inventory, hosts[0], &connector)
                .await
                .map_err(|e| Error::Other(anyhow::anyhow!(e))),
            Command::Lock { message, .. } => {
                let (conns, failed) = connect_reporting(&inventory, &hosts, &connector, &out).await;
                let report = if failed.is_empty() {
                    shipit::ops::lock::lock(&stage, &conns, &inventory, &run, message).await
                } else {
                    let failed: Vec<(String, String)> = failed
                        .iter()
                        .map(|(h, e)| (h.name.clone(), shipit::error::chain(e)))
                        .collect();
                    shipit::ops::lock::not_reached(&stage, message, &hosts, &failed)
                };
                out.emit(Event::Done(&report));
                fleet::close_all(&conns).await;
                Ok(match (report.locked, report.held_elsewhere()) {
                    (true, _) => code::OK,
                    (false, true) => code::LOCKED,
                    (false, false) => code::FAILED,
                })
            }
            Command::Plan { waves, .. }
            | Command::Deploy {
                waves,
                dry_run: true,
                ..
            } => {
                let packed = packed.as_ref().expect("packed before connecting");
                let waves = parse_waves(waves)?;
                let (conns, failed) = connect_reporting(&inventory, &hosts, &connector, &out).await;
                let report = shipit::deploy::preview::show(
                    shipit::deploy::preview::Preview {
                        stage: &stage,
                        inventory: &inventory,
                        artifact: packed,
                        templates: &templates,
                        env_content: env_content.clone(),
                        now_unix: started_unix,
                        waves: waves.as_deref(),
                        migrate_host: fleet_migrate_host.clone(),
                        release_id: release_id.as_deref(),
                        once,
                        out: &out,
                    },
                    &conns,
                )
                .await;
                out.emit(Event::Done(&report));
                fleet::close_all(&conns).await;
                let ok = failed.is_empty() && report.hosts.iter().all(|h| h.error.is_none());
                Ok(if ok { code::OK } else { code::FAILED })
            }
            Command::Deploy { waves, .. } => {
                let packed = packed.as_ref().expect("packed before connecting");
                let waves = parse_waves(waves)?;
                let report = pipeline::deploy(pipeline::Deploy {
                    stage: &stage,
                    inventory: &inventory,
                    hosts: &hosts,
                    connector: &connector,
                    out: &out,
                    artifact: packed,
                    templates: &templates,
                    // A shard without the migrate host runs no once step and no `once` hook.
                    migrate_host: Some(fleet_migrate_host.clone())
                        .filter(|m| names.contains(&m.as_str())),
                    release_id: release_id.clone(),
                    once,
                    waves,
                    env_content: env_content.clone(),
                    now_unix: started_unix,
                    git: git.clone(),
                    run: &run,
                    cancel: cancel_on_signals(),
                })
                .await;
                out.emit(Event::Done(&report));
                let ran = ("deploy", report.exit_code);
                notify(&inventory, &stage, ran, &report, &base_dir, &out).await;
                Ok(report.exit_code)
            }
            Command::Rollback { to, .. } | Command::Restore { release: to, .. } => {
                let migrate_host =
                    names[shipit::deploy::once::migrate_host_index(&inventory, &names)].to_owned();
                let yes = cli.global.yes;
                let ask = |question: &str| yes || confirm(&out, question);
                let restore = cli.command.restores().then(|| pipeline::RestoreDb {
                    backup: match &cli.command {
                        Command::Restore { backup, .. } => Some(backup.clone()),
                        _ => None,
                    },
                    host: migrate_host,
                    confirm: &ask,
                });
                let report = pipeline::rollback(pipeline::Rollback {
                    stage: &stage,
                    inventory: &inventory,
                    hosts: &hosts,
                    connector: &connector,
                    out: &out,
                    to: to.clone(),
                    run: &run,
                    cancel: cancel_on_signals(),
                    templates: &templates,
                    restore,
                })
                .await;
                out.emit(Event::Done(&report));
                let command = match &cli.command {
                    Command::Restore { .. } => "restore",
                    _ => "rollback",
                };
                let ran = (command, report.exit_code);
                notify(&inventory, &stage, ran, &report, &base_dir, &out).await;
                Ok(report.exit_code)
            }
            Command::Task { name, .. } => {
                let task = &inventory.tasks[name];
                let (conns, failed) = connect_reporting(&inventory, &hosts, &connector, &out).await;
                if !failed.is_empty() {
                    // All or nothing: a task is not run on part of its hosts.
                    let mut report = ExecReport {
                        stage: stage.clone(),
                        task: Some(name.clone()),
                        command: task.command.clone(),
                        hosts: Vec::new(),
                    };
                    for host in &hosts {
                        let error = match failed.iter().find(|(h, _)| h.name == host.name) {
                            Some((_, e)) => shipit::error::chain(e),
                            None => "not run: another host could not be reached".to_owned(),
                        };
                        report.hosts.push(HostExec::failed(&host.name, error));
                    }
                    out.emit(Event::Done(&report));
                    fleet::close_all(&conns).await;
                    return hosts_result(report.failed(), report.hosts.len());
                }
                let (report, locked) =
                    shipit::ops::task::run(&stage, name, task, &conns, &inventory, &run, &out)
                        .await;
                out.emit(Event::Done(&report));
                fleet::close_all(&conns).await;
                if locked {
                    return Ok(code::LOCKED);
                }
                hosts_result(report.failed(), report.hosts.len())
            }
            Command::Backup { .. } | Command::Backups { .. } => {
                let index = shipit::deploy::once::migrate_host_index(&inventory, &names);
                let host = [hosts[index]];
                let (conns, failed) =
                    fleet::connect_all(&inventory, &host, &connector, |_| {}).await;
                if let Some((_, e)) = failed.first() {
                    return Err(Error::Other(anyhow::anyhow!(shipit::error::chain(e))));
                }
                let conn = &conns[0];
                let mut locked = false;
                let ok = if let Command::Backup {
                    verify_restore,
                    backup: name,
                    ..
                } = &cli.command
                {
                    let report = if *verify_restore {
                        backup::drill(&stage, conn, &inventory, &run, name.as_deref()).await
                    } else {
                        backup::backup_now(&stage, conn, &inventory, &run, &out).await
                    };
                    out.emit(Event::Done(&report));
                    locked = report.locked;
                    report.error.is_none()
                } else {
                    match backup::list(&stage, conn, &inventory).await {
                        Ok(report) => {
                            out.emit(Event::Done(&report));
                            true
                        }
                        Err(e) => {
                            out.emit(Event::Fatal(&e));
                            false
                        }
                    }
                };
                fleet::close_all(&conns).await;
                if locked {
                    return Ok(code::LOCKED);
                }
                Ok(if ok { code::OK } else { code::FAILED })
            }
            Command::Init { .. } | Command::Completions { .. } | Command::Man { .. } => {
                unreachable!("handled before loading an inventory")
            }
            Command::Config { .. } => unreachable!("handled before any connection"),
            Command::Releases { .. }
            | Command::History { .. }
            | Command::Unlock { .. }
            | Command::Status { .. } => {
                let (conns, failed) = connect_reporting(&inventory, &hosts, &connector, &out).await;
                let mut ok = failed.is_empty();
                match &cli.command {
                    Command::Releases { .. } => {
                        let report = releases::show(&stage, &conns, deploy_to, &out).await;
                        ok &= report.unreadable.is_empty();
                        out.emit(Event::Done(&report));
                    }
                    Command::History { .. } => {
                        let report = history::show(&stage, &conns, deploy_to, &out).await;
                        ok &= report.unreadable.is_empty();
                        out.emit(Event::Done(&report));
                    }
                    Command::Status { .. } => {
                        let report =
                            shipit::ops::status::show(&stage, &conns, &inventory, &out).await;
                        ok &= report.ok();
                        out.emit(Event::Done(&report));
                    }
                    _ => {
                        // Unlock removes the lock and staging and writes history: the same
                        // path check as every run that writes.
                        let checks = shipit::deploy::strict::preflight(&conns, &inventory).await;
                        let problem = conns.iter().zip(&checks).find_map(|(c, check)| {
                            check
                                .as_ref()
                                .err()
                                .map(|e| format!("{}: {e}", c.host.name))
                        });
                        if let Some(problem) = problem {
                            fleet::close_all(&conns).await;
                            return Err(Error::Other(anyhow::anyhow!(problem)));
                        }
                        let yes = cli.global.yes;
                        let env_path = inventory.env.as_ref().map(|e| e.path.as_str());
                        let report =
                            unlock::unlock(&stage, &conns, deploy_to, env_path, &run, |hosts| {
                                yes || confirm_unlock(&out, hosts, &inventory)
                            })
                            .await;
                        ok &= !report.failed();
                        out.emit(Event::Done(&report));
                    }
                }
                fleet::close_all(&conns).await;
                Ok(if ok { code::OK } else { code::FAILED })
            }
        }
    })
}

fn parse_waves(sizes: &[String]) -> Result<Option<Vec<shipit::inventory::Amount>>, Error> {
    if sizes.is_empty() {
        return Ok(None);
    }
    let mut waves = Vec::new();
    for size in sizes {
        match shipit::inventory::parse_amount(size) {
            Ok(a)
                if a != shipit::inventory::Amount::Count(0)
                    && a != shipit::inventory::Amount::Percent(0) =>
            {
                waves.push(a)
            }
            Ok(_) => {
                return Err(Error::Usage(
                    "`--waves`: a wave must have at least one host".to_owned(),
                ));
            }
            Err(e) => return Err(Error::Usage(format!("`--waves`: {e}"))),
        }
    }
    Ok(Some(waves))
}

fn other(e: impl std::error::Error + Send + Sync + 'static, context: &'static str) -> Error {
    Error::Other(anyhow::Error::new(e).context(context))
}

/// Connects to every selected host; the ones that cannot be reached are reported as done.
async fn connect_reporting<'h>(
    inventory: &Inventory,
    hosts: &[&'h shipit::inventory::Host],
    connector: &Connector,
    out: &Output,
) -> (
    Vec<fleet::Conn<'h>>,
    Vec<(&'h shipit::inventory::Host, shipit::transport::ConnectError)>,
) {
    let (conns, failed) = fleet::connect_all(inventory, hosts, connector, |h| {
        out.emit(Event::Step {
            host: h,
            step: "connecting",
        })
    })
    .await;
    for conn in &conns {
        if let Some(step) = fleet::host_key_step(conn.transport.as_ref()) {
            out.emit(Event::Step {
                host: &conn.host.name,
                step: &step,
            });
        }
    }
    for (host, e) in &failed {
        out.emit(Event::HostDone {
            host: &host.name,
            ok: false,
            summary: &shipit::error::chain(e),
        });
    }
    (conns, failed)
}

/// The `--release-id`, `--shard`, `--once-only`, `--skip-once` of `deploy` and `plan`.
fn sharding(command: &Command) -> Option<&Sharding> {
    match command {
        Command::Deploy { sharding, .. } | Command::Plan { sharding, .. } => Some(sharding),
        _ => None,
    }
}

fn once_steps(s: &Sharding) -> shipit::plan::shard::OnceSteps {
    use shipit::plan::shard::OnceSteps;
    match (s.once_only, s.skip_once) {
        (true, _) => OnceSteps::Only,
        (_, true) => OnceSteps::Skip,
        _ => OnceSteps::Run,
    }
}

/// The hosts a sharded run works on: with `--once-only` the migrate host alone, with
/// `--shard K/N` its part of the selection. Checks the flags before anything is built.
fn shard_hosts<'i>(
    s: &Sharding,
    inventory: &Inventory,
    hosts: Vec<&'i inventory::Host>,
    migrate_host: &str,
    stage: &str,
) -> Result<Vec<&'i inventory::Host>, Error> {
    use shipit::plan::shard::{self, Shard};
    let usage = |e: shard::ShardError| Error::Usage(e.to_string());
    if let Some(id) = &s.release_id {
        shard::check_release_id_form(id).map_err(usage)?;
    }
    if s.once_only {
        return Ok(hosts
            .into_iter()
            .filter(|h| h.name == migrate_host)
            .collect());
    }
    let Some(given) = &s.shard else {
        return Ok(hosts);
    };
    let part = Shard::parse(given).map_err(usage)?;
    if !s.skip_once && shard::has_once_steps(inventory) {
        return Err(Error::Usage(format!(
            "`--shard {part}` deploys part of the fleet, and `{}` has once steps (backup, migrations or `once` hooks at `after_upload`) that must finish before any shard switches: run them first with `shipit deploy {stage} --release-id ID --once-only`, then each shard with `--skip-once`",
            inventory.file.display()
        )));
    }
    let picked = part.pick(hosts.len()).map_err(usage)?;
    Ok(picked.into_iter().map(|i| hosts[i]).collect())
}

fn hosts_result(failed: usize, total: usize) -> Result<u8, Error> {
    if failed > 0 {
        return Err(Error::HostsFailed { failed, total });
    }
    Ok(code::OK)
}

fn load_inventory(
    cli: &Cli,
    stage: &str,
    base_dir: &Path,
    home: Option<&Path>,
) -> Result<Inventory, Error> {
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
    // An empty variable counts as unset: CI expands an undefined secret to "".
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let ctx = LoadContext {
        base_dir,
        home,
        env: &env,
        need_secrets: cli.command.needs_secrets(),
    };
    let read = |path: &Path| std::fs::read_to_string(path).map_err(|e| e.to_string());
    let mut inventory = inventory::parse_with(&text, &path, &ctx, &read)?;
    // Before any connection; commands and files only for the commands that need them.
    if let Some(env) = &mut inventory.env {
        shipit::secrets::resolve(env, cli.command.needs_secrets(), base_dir)?;
    }
    Ok(inventory)
}

/// `shipit config`: the resolved inventory on stdout, every secret value known replaced by
/// `<redacted>` (no secret command runs for it: see `needs_secrets`).
fn show_config(cli: &Cli, stage: &str, inventory: &Inventory) -> Result<u8, Error> {
    let mut doc = inventory::resolved(inventory);
    let env_secrets = inventory
        .env
        .iter()
        .flat_map(|e| e.secrets.iter().map(|(_, v)| v));
    let ssh_secrets: Vec<Secret> = ["SHIPIT_SSH_KEY", "SHIPIT_SSH_PASSPHRASE"]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .map(Secret::new)
        .collect();
    shipit::deploy::envfile::redactor(env_secrets.chain(&ssh_secrets))
        .apply_json_as(&mut doc, "<redacted>");
    let text = if cli.global.json {
        serde_json::to_string_pretty(&doc).expect("a JSON document") + "\n"
    } else {
        let mut files = format!("`{}`", inventory.file.display());
        for base in &inventory.bases {
            files.push_str(&format!(" extending `{}`", base.display()));
        }
        format!(
            "# shipit config {stage}: {files}, resolved: defaults filled in, local paths absolute,\n\
             # secrets by their source only. `[ssh]` keys absent here come from ~/.ssh/config,\n\
             # else their defaults.\n\n{}",
            inventory::to_toml(&doc)
        )
    };
    output::document(text.as_bytes()).map_err(|e| other(e, "cannot write to stdout"))?;
    Ok(code::OK)
}

/// Runs the `[[notify]]` commands after `ran` (the command's name and exit code), with the
/// report as `--json` shows it; a notifier never changes the exit code.
async fn notify(
    inventory: &Inventory,
    stage: &str,
    ran: (&str, u8),
    report: &dyn output::Report,
    dir: &Path,
    out: &Output,
) {
    if inventory.notify.is_empty() {
        return;
    }
    let report = out.redacted_json(report);
    // The app's secrets by name: `from_env`'s, and a variable of the same name as an
    // `[env.secrets.NAME]` (its command may read it).
    let hidden: Vec<String> = inventory
        .env
        .iter()
        .flat_map(|e| {
            e.from_env
                .iter()
                .cloned()
                .chain(e.sources.iter().map(|s| s.name.clone()))
        })
        .collect();
    let finished = shipit::notify::Finished {
        stage,
        command: ran.0,
        exit_code: ran.1,
        report: &report,
        hidden: &hidden,
        dir,
    };
    shipit::notify::run_all(&inventory.notify, &finished, out).await;
}

/// Runs `artifact.build`, its output shown through `out` as lines of the host `build`, then
/// packs the artifact once for every host.
fn prepare_artifact(
    inventory: &Inventory,
    base_dir: &Path,
    out: &Output,
) -> Result<artifact::Packed, Error> {
    let Some(spec) = &inventory.artifact else {
        return Err(Error::NoArtifact {
            file: inventory.file.display().to_string(),
        });
    };
    if let Some(build) = &spec.build {
        artifact::build(build, base_dir, &|stream, line| {
            out.emit(Event::Line {
                host: "build",
                stream,
                line,
            })
        })?;
    }
    let cache = artifact::cache_dir(
        std::env::var_os("XDG_CACHE_HOME").as_deref(),
        std::env::var_os("HOME").as_deref(),
    );
    let packed = artifact::pack_cached(&spec.path, &std::env::temp_dir(), cache.as_deref())?;
    // What the hosts' files get instead of the packed tar's fixed time (see `files_time`).
    let time = artifact::files_time(base_dir, shipit::clock::now_unix());
    Ok(packed.stamped(time.unix()))
}

/// Reads the unit and site templates (before any connection: a missing file is an input
/// error).
fn read_templates(inventory: &Inventory) -> Result<Templates, Error> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| Error::ReadTemplate {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let mut templates = Templates::default();
    for unit in &inventory.systemd {
        let text = read(&unit.template)?;
        templates
            .units
            .push((unit.unit.clone(), unit.template.display().to_string(), text));
    }
    if let Some(compose) = &inventory.compose {
        let text = read(&compose.template)?;
        templates.compose = Some((compose.template.display().to_string(), text));
    }
    if let Some(nginx) = &inventory.nginx {
        let text = read(&nginx.template)?;
        templates.nginx = Some((
            nginx.site.clone(),
            nginx.template.display().to_string(),
            text,
        ));
    }
    Ok(templates)
}

/// Ctrl-C or SIGTERM asks the run to stop cleanly (locks released, nothing half-switched);
/// a second one ends the process at once.
fn cancel_on_signals() -> Cancel {
    Cancel::new(stop_on_signals())
}

/// Turns true at the first Ctrl-C or SIGTERM; a second one ends the process at once.
fn stop_on_signals() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        for round in 0.. {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if round > 0 {
                std::process::exit(130);
            }
            let _ = tx.send(true);
        }
    });
    rx
}

/// Asks `question` on the terminal (the caller made sure stdin is one, or `--yes`).
fn confirm(out: &Output, question: &str) -> bool {
    out.emit(Event::Note(&format!("{question} [y/N]")));
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes")
}

fn confirm_unlock(out: &Output, hosts: &[HostUnlock], inventory: &Inventory) -> bool {
    let now = shipit::clock::now_unix();
    for h in hosts.iter().filter(|h| h.locked) {
        let who = h.owner.as_ref().map_or_else(
            || "an unknown owner (no owner.json)".to_owned(),
            |o| o.describe(now, inventory.rollout.lock_timeout),
        );
        out.emit(Event::Note(&format!("{}: locked by {who}", h.host)));
    }
    if !std::io::stdin().is_terminal() {
        out.emit(Event::Note(
            "not removing: stdin is not a terminal to confirm on; pass `--yes`",
        ));
        return false;
    }
    // A lock taken with `shipit lock` is ended by asking; another run's only once it is dead.
    let question = match hosts
        .iter()
        .filter(|h| h.locked)
        .all(|h| h.owner.as_ref().is_some_and(|o| o.deliberate()))
    {
        true => "remove these locks? [y/N]",
        false => "remove these locks? only if those runs are dead [y/N]",
    };
    out.emit(Event::Note(question));
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes")
}

fn run_info(started_millis: u64, redactor: output::redact::Redactor) -> RunInfo {
    let pid = std::process::id();
    let machine = hostname();
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(login_name);
    let nanos = shipit::clock::now_nanos();
    let token = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{nanos}/{pid}/{machine}/{user}").as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    };
    let ci_url = match (
        std::env::var("GITHUB_SERVER_URL"),
        std::env::var("GITHUB_REPOSITORY"),
        std::env::var("GITHUB_RUN_ID"),
    ) {
        (Ok(server), Ok(repo), Ok(id))
            if !server.is_empty() && !repo.is_empty() && !id.is_empty() =>
        {
            Some(format!("{server}/{repo}/actions/runs/{id}"))
        }
        _ => None,
    };
    let command = std::iter::once("shipit".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    RunInfo {
        token,
        user,
        machine,
        pid,
        command,
        ci_url,
        started_unix: started_millis / 1000,
        started_millis,
        redactor,
    }
}

/// The name of the user shipit runs as, from the password database.
fn login_name() -> String {
    // SAFETY: getuid cannot fail; getpwuid returns NULL or a pointer to static storage that
    // stays valid until the next call, and this runs once, before any other thread exists.
    unsafe {
        let uid = libc::getuid();
        let pw = libc::getpwuid(uid);
        if pw.is_null() || (*pw).pw_name.is_null() {
            return format!("uid{uid}");
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we read only up to the first NUL.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_owned();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn output_mode(cli: &Cli) -> Mode {
    if cli.global.json {
        return Mode::Json;
    }
    // The shell owns the terminal: no bars drawing over it.
    if let Command::Shell { .. } = cli.command {
        return Mode::Plain;
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

/// OpenSSH's system-wide client config, read after the user's `~/.ssh/config`.
const SYSTEM_SSH_CONFIG: &str = "/etc/ssh/ssh_config";

/// How each selected host is reached: the inventory, then `~/.ssh/config` (unless
/// `--no-ssh-config`), then defaults. A bad config line or an unusable setting (a
/// `ProxyCommand`, a jump chain) stops the run before any connection.
fn reach_hosts(
    cli: &Cli,
    inventory: &Inventory,
    hosts: &[&inventory::Host],
    settings: &SshSettings,
    home: Option<&Path>,
) -> Result<Vec<shipit::ssh::reach::Reach>, Error> {
    if inventory.transport == TransportKind::Local {
        return Ok(Vec::new());
    }
    let local = shipit::ssh::config::Local {
        home: home.map(Path::to_path_buf).unwrap_or_default(),
        user: login_name(),
        uid: current_uid(),
        hostname: hostname(),
        // Names or values that are not UTF-8 cannot be named in a config line anyway.
        env: std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect(),
    };
    let config = if cli.global.no_ssh_config {
        None
    } else {
        // Without a home there is no user file; an empty path reads as missing.
        let user_file = home.map_or_else(PathBuf::new, |h| h.join(".ssh").join("config"));
        Some(shipit::ssh::config::SshConfig::load(
            &user_file,
            Some(Path::new(SYSTEM_SSH_CONFIG)),
            &local,
        )?)
    };
    let resolver = shipit::ssh::reach::Resolver {
        inventory,
        config: config.as_ref(),
        local: &local,
        run_key: settings
            .key_text
            .is_some()
            .then_some("the key in SHIPIT_SSH_KEY"),
    };
    hosts
        .iter()
        .map(|h| resolver.resolve(h).map_err(Error::from))
        .collect()
}

fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

fn ssh_settings(inventory: &Inventory, home: Option<&Path>) -> SshSettings {
    let secret = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .map(Secret::new)
    };
    if inventory.transport == TransportKind::Local {
        return SshSettings::default();
    }
    SshSettings {
        identity: inventory.ssh.identity.clone(),
        key_text: secret("SHIPIT_SSH_KEY"),
        passphrase: secret("SHIPIT_SSH_PASSPHRASE"),
        agent_socket: std::env::var_os("SSH_AUTH_SOCK")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        default_identities: fleet::default_identities(home),
    }
}
