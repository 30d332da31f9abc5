//! `[[notify]]`: commands run on the deployer after a deploy, a rollback or a restore, with
//! the run's JSON report (the one `--json` prints, secrets already redacted) on stdin: a
//! webhook is `curl -fsS -d @- https://…`, a chat message a small script.
//!
//! A notifier never changes the outcome: one that fails is reported on stderr and the exit
//! code stays the run's. One that hangs is killed with everything it started (its process
//! group) after its `timeout`. All run at once, in the directory shipit runs in, with:
//!
//! - `SHIPIT_STAGE`, `SHIPIT_COMMAND` (`deploy`, `rollback`, `restore`), `SHIPIT_OUTCOME`
//!   (`success` or `failure`) and `SHIPIT_EXIT_CODE`, for a message without parsing JSON;
//! - the deployer's environment, less the app's secrets (the variables `env.from_env` and
//!   `[env.secrets.NAME]` name) and shipit's own (`SHIPIT_SSH_KEY`, `SHIPIT_SSH_PASSPHRASE`):
//!   a notifier's token lives in a variable of its own.
//!
//! Its stdout is never shipit's (which `--json` keeps for the report): both of its streams
//! are read, and their last lines shown only when it fails.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::inventory::Notify;
use crate::output::{Event, Output};

/// The variables of shipit's own secrets, never handed to a notifier.
const SHIPIT_SECRETS: [&str; 2] = ["SHIPIT_SSH_KEY", "SHIPIT_SSH_PASSPHRASE"];

/// How many last lines of a failing notifier's output are shown.
const TAIL_LINES: usize = 5;

/// How long a notifier's pipes may stay open after it exited (a process it left running
/// in the background holding them) or was killed.
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// The run the notifiers hear about.
pub struct Finished<'a> {
    pub stage: &'a str,
    /// `deploy`, `rollback` or `restore`.
    pub command: &'a str,
    pub exit_code: u8,
    /// The report as `--json` prints it, redacted.
    pub report: &'a serde_json::Value,
    /// Variables the notifiers must not see (the names of the app's secrets).
    pub hidden: &'a [String],
    /// Where they run: the directory shipit runs in.
    pub dir: &'a Path,
}

/// Runs every notifier whose `on` matches the outcome, at once, and reports each one that
/// fails through `out` (a note on stderr).
pub async fn run_all(notifiers: &[Notify], finished: &Finished<'_>, out: &Output) {
    let success = finished.exit_code == 0;
    let chosen = notifiers
        .iter()
        .filter(|n| if success { n.on_success } else { n.on_failure });
    let runs = chosen.map(|n| async move { (n, run(n, finished).await) });
    for (n, result) in futures::future::join_all(runs).await {
        if let Err(problem) = result {
            out.emit(Event::Note(&format!(
                "warning: notifier `{}` {problem} (the {} outcome stands)",
                n.command, finished.command
            )));
        }
    }
}

/// Runs one notifier; `Err` says how it failed ("failed with exit status 22: …").
async fn run(n: &Notify, finished: &Finished<'_>) -> Result<(), String> {
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(&n.command)
        .current_dir(finished.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a timeout kills what it started too (`curl` under `sh`).
        .process_group(0)
        .kill_on_drop(true)
        .env("SHIPIT_STAGE", finished.stage)
        .env("SHIPIT_COMMAND", finished.command)
        .env(
            "SHIPIT_OUTCOME",
            if finished.exit_code == 0 {
                "success"
            } else {
                "failure"
            },
        )
        .env("SHIPIT_EXIT_CODE", finished.exit_code.to_string());
    for name in finished
        .hidden
        .iter()
        .map(String::as_str)
        .chain(SHIPIT_SECRETS)
    {
        command.env_remove(name);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("could not start: {e}"))?;
    let report = serde_json::to_vec_pretty(finished.report).unwrap_or_default();
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // Written on its own: a notifier that reads nothing must not stall shipit (the write
    // then fails with a broken pipe, which is its business).
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&report).await;
        let _ = stdin.shutdown().await;
    });
    let stdout = tokio::spawn(last_lines(child.stdout.take().expect("stdout is piped")));
    let stderr = tokio::spawn(last_lines(child.stderr.take().expect("stderr is piped")));
    let status = tokio::time::timeout(n.timeout, child.wait()).await;
    let timed_out = status.is_err();
    if timed_out {
        if let Some(pid) = child.id() {
            // SAFETY: kill has no memory preconditions; a negative pid names the process
            // group the notifier leads (process_group(0) above).
            unsafe {
                libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
            }
        }
        let _ = child.wait().await;
    }
    writer.abort();
    let read = |task: tokio::task::JoinHandle<String>| async move {
        let abort = task.abort_handle();
        match tokio::time::timeout(PIPE_GRACE, task).await {
            Ok(Ok(text)) => text,
            _ => {
                abort.abort();
                String::new()
            }
        }
    };
    let (stdout, stderr) = (read(stdout).await, read(stderr).await);
    let shown = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    let shown = match shown.trim() {
        "" => String::new(),
        text => format!(": {text}"),
    };
    match status {
        Err(_) => Err(format!(
            "did not finish within {} and was killed{shown}",
            humantime::format_duration(n.timeout)
        )),
        Ok(Err(e)) => Err(format!("could not be waited for: {e}")),
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("failed with {status}{shown}")),
    }
}

/// The last [`TAIL_LINES`] lines of what `pipe` gives until it closes, read in bounded
/// memory.
async fn last_lines(mut pipe: impl AsyncRead + Unpin) -> String {
    const KEEP: usize = 16 * 1024;
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * KEEP {
            kept.drain(..kept.len() - KEEP);
        }
    }
    let text = String::from_utf8_lossy(&kept);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notifier(command: &str, timeout_ms: u64) -> Notify {
        Notify {
            command: command.to_owned(),
            on_success: true,
            on_failure: true,
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    async fn run_in(
        dir: &Path,
        command: &str,
        timeout_ms: u64,
        exit_code: u8,
    ) -> Result<(), String> {
        let report = serde_json::json!({ "stage": "prod", "hosts": [] });
        // As if `env.from_env` named HOME: a variable the test's environment has.
        let hidden = vec!["HOME".to_owned()];
        let finished = Finished {
            stage: "prod",
            command: "deploy",
            exit_code,
            report: &report,
            hidden: &hidden,
            dir,
        };
        run(&notifier(command, timeout_ms), &finished).await
    }

    #[tokio::test]
    async fn the_report_arrives_on_stdin_with_the_outcome_in_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            std::env::var_os("HOME").is_some(),
            "the test needs HOME set"
        );
        let script = "cat > report.json; echo \"$SHIPIT_STAGE $SHIPIT_COMMAND $SHIPIT_OUTCOME $SHIPIT_EXIT_CODE [${HOME-unset}]\" > env.txt";
        run_in(dir.path(), script, 5000, 3).await.unwrap();
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap())
                .unwrap();
        assert_eq!(report["stage"], "prod");
        let env = std::fs::read_to_string(dir.path().join("env.txt")).unwrap();
        assert_eq!(env, "prod deploy failure 3 [unset]\n");
    }

    #[tokio::test]
    async fn a_failure_says_how_with_the_last_lines_it_printed() {
        let dir = tempfile::tempdir().unwrap();
        let err = run_in(
            dir.path(),
            "echo out; echo 'curl: (22) 500' >&2; exit 22",
            5000,
            0,
        )
        .await
        .unwrap_err();
        assert_eq!(err, "failed with exit status: 22: curl: (22) 500");
        // One that reads nothing is not an error for that.
        run_in(dir.path(), "true", 5000, 0).await.unwrap();
    }

    #[tokio::test]
    async fn one_that_hangs_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        // Long enough for the shell to have written the pid on a busy machine.
        let err = run_in(dir.path(), "sleep 30 & echo $! > pid; wait", 2000, 0)
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(err, "did not finish within 2s and was killed");
        let pid: i32 = std::fs::read_to_string(dir.path().join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background `sleep` was in the notifier's process group: gone too (reaped by
        // init, or a zombie of an exited parent at most). A SIGKILL is delivered, not
        // obeyed at once: on a busy machine the process takes a moment to die.
        let gone =
            |state: &str| state.is_empty() || state.contains(") Z ") || state.contains(") X ");
        let mut state = String::new();
        for _ in 0..100 {
            state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if gone(&state) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(gone(&state), "{state}");
    }
}
