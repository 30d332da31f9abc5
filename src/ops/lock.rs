//! `shipit lock <stage> -m "why"`: holds the deploy lock of every selected host on purpose
//! (a database migration by hand, a freeze before a launch), until `shipit unlock`.
//!
//! It is the deploy lock itself ([`crate::deploy::lock`]), all or nothing, with the message
//! in its owner.json: every deploy, rollback, restore, task and backup is refused with exit
//! 5 and shown who, since when and why; `status` and `check` show it too. Unlike the lock of
//! a run that died, it never turns stale after `rollout.lock_timeout`: nobody is expected to
//! be running, and only `shipit unlock` ends it. Taking it is recorded in each host's
//! history, like the unlock that ends it.

use crate::deploy::lock::{LockState, RunInfo};
use crate::inventory::Inventory;
use crate::output::report::history::Record;
use crate::output::report::lock::{HostLock, LockReport};
use crate::transport::fleet::Conn;

/// The longest message `shipit lock` takes, in characters.
const MESSAGE_MAX: usize = 500;

/// Checks the message of `shipit lock -m` (a usage error otherwise): some text, on one
/// line, without control characters (it is shown in other people's terminals), at most
/// [`MESSAGE_MAX`] characters.
pub fn check_message(message: &str) -> Result<(), String> {
    if message.trim().is_empty() {
        return Err("`--message` is empty: say why the stage is locked, e.g. `-m \"database maintenance until 14:00\"`".to_owned());
    }
    if message.chars().any(char::is_control) {
        return Err(
            "`--message` holds a control character (a newline, a tab, an escape): write it on one line".to_owned(),
        );
    }
    let len = message.chars().count();
    if len > MESSAGE_MAX {
        return Err(format!(
            "`--message` is {len} characters long; at most {MESSAGE_MAX}"
        ));
    }
    Ok(())
}

/// The report when some selected hosts could not be reached (`failed`: host and why):
/// nothing is locked, as a lock on part of the stage would not hold it.
pub fn not_reached(
    stage: &str,
    message: &str,
    hosts: &[&crate::inventory::Host],
    failed: &[(String, String)],
) -> LockReport {
    LockReport {
        stage: stage.to_owned(),
        message: message.to_owned(),
        locked: false,
        hosts: hosts
            .iter()
            .map(|h| HostLock {
                host: h.name.clone(),
                locked: false,
                held: false,
                held_by: None,
                error: Some(failed.iter().find(|(name, _)| *name == h.name).map_or_else(
                    || "not locked: another host could not be reached".to_owned(),
                    |(_, e)| e.clone(),
                )),
            })
            .collect(),
    }
}

/// Locks every connection with `message`, or none: when a host cannot be locked (held by
/// another run, or failing), the locks taken are released and the report says why.
pub async fn lock(
    stage: &str,
    conns: &[Conn<'_>],
    inventory: &Inventory,
    run: &RunInfo,
    message: &str,
) -> LockReport {
    let deploy_to = &inventory.app.deploy_to;
    let mut report = LockReport {
        stage: stage.to_owned(),
        message: message.to_owned(),
        locked: false,
        hosts: Vec::new(),
    };
    let host = |conn: &Conn<'_>, error: String| HostLock {
        host: conn.host.name.clone(),
        locked: false,
        held: false,
        held_by: None,
        error: Some(error),
    };
    // Before the lock, which writes under `deploy_to`: the same path check as every run.
    let checks = crate::deploy::strict::preflight(conns, inventory).await;
    if checks.iter().any(|c| c.is_err()) {
        for (conn, check) in conns.iter().zip(checks) {
            let error = check.err().map_or_else(
                || "not locked: another host has unsafe paths".to_owned(),
                |e| e.message,
            );
            report.hosts.push(host(conn, error));
        }
        return report;
    }
    let mut owner = run.owner();
    owner.message = Some(message.to_owned());
    let states = crate::deploy::lock::acquire_all_as(
        conns,
        deploy_to,
        inventory.env.as_ref().map(|e| e.path.as_str()),
        run,
        &owner,
    )
    .await;
    let taken: Vec<&Conn<'_>> = conns
        .iter()
        .zip(&states)
        .filter(|(_, s)| matches!(s, LockState::Taken))
        .map(|(c, _)| c)
        .collect();
    if taken.len() < conns.len() {
        crate::deploy::lock::release_all(&taken, deploy_to, &run.token).await;
        let first = conns.first().map_or("", |c| c.host.name.as_str());
        let now = crate::clock::now_unix();
        for (conn, state) in conns.iter().zip(states) {
            let error = state
                .problem(first, now, inventory.rollout.lock_timeout)
                .unwrap_or_else(|| "not locked: another host could not be".to_owned());
            let mut h = host(conn, error);
            if let LockState::Held(owner) = state {
                h.held = true;
                h.held_by = owner;
            }
            report.hosts.push(h);
        }
        return report;
    }
    let entry = Record {
        time: crate::plan::rfc3339_millis(run.started_millis),
        finished: Some(crate::plan::rfc3339_millis(crate::clock::now_millis())),
        action: "lock".to_owned(),
        outcome: "success".to_owned(),
        user: run.user.clone(),
        machine: run.machine.clone(),
        command: run.command.clone(),
        run: run.token.clone(),
        ci_url: run.ci_url.clone(),
        hosts: conns.iter().map(|c| c.host.name.clone()).collect(),
        message: Some(message.to_owned()),
        ..Default::default()
    };
    crate::ops::history::append(conns, deploy_to, &entry, &run.redactor).await;
    report.locked = true;
    report.hosts = conns
        .iter()
        .map(|c| HostLock {
            host: c.host.name.clone(),
            locked: true,
            held: false,
            held_by: None,
            error: None,
        })
        .collect();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_one_line_of_some_text() {
        assert!(check_message("database maintenance until 14:00, ask Ålice ✓").is_ok());
        for bad in [
            "",
            "   ",
            "two\nlines",
            "tab\there",
            "esc \u{1b}[31m",
            &"x".repeat(501),
        ] {
            assert!(check_message(bad).is_err(), "{bad:?}");
        }
    }
}
