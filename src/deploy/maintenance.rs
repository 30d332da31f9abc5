//! The maintenance window of `migrate.maintenance`: while the migrations run on the migrate
//! host, every host of the run holds a flag that makes its Nginx site answer 503 with
//! `Retry-After` (the site places `{{ maintenance }}`).
//!
//! Each host's flag lives as long as one command on that host's connection: it writes the
//! flag, reads its stdin to the end, then removes the flag. The deployer ends the window by
//! closing that stdin, on success and on failure alike; a deployer that dies closes its
//! connections, which ends the command the same way; and the command gives up by itself
//! after the migration's own time limit.

use std::future::Future;
use std::time::{Duration, Instant};

use super::Ctx;
use crate::commands;
use crate::execute::timeout;
use crate::transport::fleet::Conn;
use crate::transport::{ExecRequest, Stdin};

/// How long the deployer waits for every host's flag before the migrations start anyway.
const READY_WITHIN: Duration = Duration::from_secs(15);

/// Runs `work` (the migrations, or a restore: `while` says which, as in "the sites answer
/// 503 while ...") inside the maintenance window of every host in `conns`. A host whose flag
/// could not be set is a note, not a failure: its site keeps serving.
pub async fn during<T>(
    ctx: &Ctx<'_>,
    conns: &[Conn<'_>],
    while_: &str,
    work: impl Future<Output = T>,
) -> T {
    let deploy_to = ctx.inventory.app.deploy_to.as_str();
    let hold = commands::nginx::maintenance_hold(deploy_to, ctx.token, timeout::LONG.as_secs());
    let mut ends = Vec::new();
    let holds: Vec<_> = conns
        .iter()
        .map(|c| {
            let (end, stdin) = tokio::io::duplex(8);
            ends.push(end);
            let req = ExecRequest::new(&hold, timeout::LONG + timeout::SHORT)
                .stdin(Stdin::Reader(Box::new(stdin)));
            async move { (c, c.transport.exec(req).await) }
        })
        .collect();
    let inside = async {
        let ready = futures::future::join_all(conns.iter().map(|c| flag_set(ctx, c))).await;
        for (c, ready) in conns.iter().zip(ready) {
            if !ready {
                ctx.note(&format!(
                    "{}: the maintenance window could not be opened; its site keeps serving while {while_}",
                    c.host.name
                ));
            }
        }
        ctx.note(&format!(
            "maintenance window open: the sites answer 503 while {while_}"
        ));
        let out = work.await;
        drop(ends);
        out
    };
    let (out, held) = futures::join!(inside, futures::future::join_all(holds));
    for (c, result) in held {
        match result {
            Ok(o) if o.success() => {}
            Ok(o) => ctx.note(&format!(
                "{}: closing the maintenance window failed ({}): {}",
                c.host.name,
                o.exit,
                o.stderr.text().trim()
            )),
            Err(e) => ctx.note(&format!(
                "{}: closing the maintenance window failed: {e}",
                c.host.name
            )),
        }
    }
    ctx.note("maintenance window closed");
    out
}

/// Waits until the host's flag is this run's.
async fn flag_set(ctx: &Ctx<'_>, c: &Conn<'_>) -> bool {
    let cmd = commands::nginx::maintenance_state(&ctx.inventory.app.deploy_to);
    let deadline = Instant::now() + READY_WITHIN;
    while Instant::now() < deadline {
        if let Ok(o) = c
            .transport
            .exec(ExecRequest::new(&cmd, timeout::SHORT))
            .await
            && o.stdout.text().trim() == ctx.token
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
