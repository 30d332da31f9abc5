//! What a user's command runs in during a deploy: its variables (`$SHIPIT_RELEASE`, …, see
//! the README), the env file this run staged, and the hooks (user commands at named points
//! of the plan), their output streamed as the host's lines.

use crate::commands::task::{self, TaskVars};
use crate::execute::{RemoteError, timeout};
use crate::inventory::{HookPoint, Inventory};
use crate::output::{Event, Output};
use crate::plan::step::hook_point_str;
use crate::transport::fleet::Conn;
use crate::transport::{ExecRequest, Stream};

/// The env file run `token` stages (see [`TaskVars::env_next`]); `None` without `[env]`.
pub fn env_next(inventory: &Inventory, token: &str) -> Option<String> {
    let env = inventory.env.as_ref()?;
    Some(crate::commands::envfile::next_path(&env.path, token))
}

pub(crate) fn env_path(inventory: &Inventory) -> Option<&str> {
    inventory.env.as_ref().map(|e| e.path.as_str())
}

/// What a user's command learns about the deploy it runs in (documented in the README).
pub fn task_vars(
    inventory: &Inventory,
    host: &str,
    release: &str,
    previous: Option<&str>,
) -> TaskVars {
    let release_dir = format!("{}/releases/{release}", inventory.app.deploy_to);
    TaskVars {
        vars: vec![
            ("SHIPIT_APP", inventory.app.name.clone()),
            ("SHIPIT_HOST", host.to_owned()),
            ("SHIPIT_RELEASE", release.to_owned()),
            ("SHIPIT_RELEASE_DIR", release_dir.clone()),
            ("SHIPIT_PREVIOUS", previous.unwrap_or("").to_owned()),
            (
                "SHIPIT_FIRST_DEPLOY",
                if previous.is_none() { "1" } else { "0" }.to_owned(),
            ),
        ],
        compose: inventory.compose.as_ref().map(|c| {
            (
                c.project.clone(),
                format!("{release_dir}/{}", crate::deploy::stage::COMPOSE_FILE),
            )
        }),
        env_next: None,
        sudo: inventory.sudo(),
    }
}

/// `hook`: runs one hook's `command` in `release_dir`, output streamed as the host's lines.
pub async fn hook(
    conn: &Conn<'_>,
    inventory: &Inventory,
    point: HookPoint,
    command: &str,
    release_dir: &str,
    vars: &TaskVars,
    out: &Output,
) -> Result<(), RemoteError> {
    out.emit(Event::Step {
        host: &conn.host.name,
        step: &format!("hook {}", hook_point_str(point)),
    });
    let cmd = task::run(release_dir, env_path(inventory), vars, command);
    run_streamed(
        conn,
        "hook",
        &cmd,
        out,
        &format!("the {} hook `{}`", hook_point_str(point), command),
    )
    .await
}

pub(crate) async fn run_streamed(
    conn: &Conn<'_>,
    step: &str,
    cmd: &crate::shell::Cmd,
    out: &Output,
    what: &str,
) -> Result<(), RemoteError> {
    let host = conn.host.name.as_str();
    let pending = std::sync::Mutex::new([Vec::new(), Vec::new()]);
    let sink = |stream: Stream, chunk: &[u8]| {
        let mut pending = pending.lock().expect("lock");
        let buf = &mut pending[stream as usize];
        buf.extend_from_slice(chunk);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            out.emit(Event::Line {
                host,
                stream,
                line: String::from_utf8_lossy(&line[..line.len() - 1]).trim_end_matches('\r'),
            });
        }
    };
    let result = conn
        .transport
        .exec(ExecRequest::new(cmd, timeout::LONG).output(&sink))
        .await;
    for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
        let rest = std::mem::take(&mut pending.lock().expect("lock")[i]);
        if !rest.is_empty() {
            out.emit(Event::Line {
                host,
                stream,
                line: &String::from_utf8_lossy(&rest),
            });
        }
    }
    match result {
        Ok(o) if o.success() => Ok(()),
        Ok(o) => Err(
            RemoteError::from_output(host, step, what, &o).saying(format!(
                "{what} failed on `{host}` with {}: {}",
                o.exit,
                o.stderr.text().trim_end()
            )),
        ),
        Err(e) => Err(RemoteError::new(
            host,
            step,
            format!("{what} failed on `{host}`: {}", crate::error::chain(&e)),
        )),
    }
}
