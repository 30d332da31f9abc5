//! Open-loop HTTP load on a systemd test host, for tests that claim "no request failed".
//!
//! [`Load::start`] copies `load.py` (next to this file) onto a host of a [`SystemdFleet`] and
//! starts it in the background there, outside every unit (entered with `nsenter`, so no
//! `systemctl` of a deploy touches it), against a URL the host serves (its Nginx, say). It
//! sends one request every 1/rate s, each on its own thread, whatever the answers take, so a
//! stalled or refusing server shows up as failed requests instead of a slower sender (a
//! closed-loop tool waits for answers and under-counts). [`Load::stop`] asks it to stop,
//! waits for the requests in flight and returns its [`LoadReport`].
//!
//! On the host, each load owns `/var/tmp/shipit-load-<n>/`: the script, its log, the stop
//! and ready files and the report.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::systemd::SystemdFleet;

/// The generator, run with the host's python3.
const SCRIPT: &str = include_str!("load.py");
/// Heredoc delimiter for copying [`SCRIPT`]; it must not be a line of the script.
const EOF_MARK: &str = "SHIPIT_LOAD_PY_EOF";
/// How long one request may take before it counts as failed (`TimeoutError`).
const REQUEST_TIMEOUT_SECS: u32 = 5;
/// How long the generator may take to send its first request, or to write its report after
/// the stop file appeared (in-flight requests end within [`REQUEST_TIMEOUT_SECS`]). Only a
/// bound on a broken run.
const PATIENCE: Duration = Duration::from_secs(30);

/// Numbers the loads of this process, so two never share a directory on a host.
static NEXT: AtomicUsize = AtomicUsize::new(1);

/// A running load; [`Load::stop`] it to get the numbers.
pub struct Load<'a> {
    fleet: &'a SystemdFleet,
    host: String,
    /// Its directory on the host.
    dir: String,
}

/// What `load.py` counted (see its docstring).
#[derive(Debug, Deserialize)]
pub struct LoadReport {
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Every other answer, and requests that got none (refused, reset, timed out).
    pub failed: u64,
    /// How late the sender ever was for a request: near 0 unless the host was starved.
    pub max_lag_ms: f64,
    /// Failed requests by kind: `HTTP <status>` or the Python exception's class name.
    pub failures: BTreeMap<String, u64>,
    /// 2xx bodies (stripped), in the order of the first request that got each.
    pub bodies: Vec<BodyCount>,
    pub latency_ms: Latency,
    /// The first few failed requests, in the order they were sent.
    pub first_failures: Vec<Failure>,
}

#[derive(Debug, Deserialize)]
pub struct BodyCount {
    pub body: String,
    pub count: u64,
    /// When the first and the last request answered with this body were sent (ms from the
    /// start of the load).
    pub first_ms: f64,
    pub last_ms: f64,
}

#[derive(Debug, Deserialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub struct Failure {
    /// When it was sent, ms from the start of the load.
    pub at_ms: f64,
    /// When it was sent, the host's clock (ISO 8601, UTC).
    pub wall: String,
    pub kind: String,
}

impl<'a> Load<'a> {
    /// Starts `rate` requests per second to `url` on `host` (the URL as the host sees it,
    /// e.g. `http://127.0.0.1/version`); returns once the first request has been sent.
    pub fn start(fleet: &'a SystemdFleet, host: &str, url: &str, rate: u32) -> Load<'a> {
        assert!(
            !url.contains('\'') && !SCRIPT.lines().any(|l| l == EOF_MARK),
            "load: {url:?} or the script cannot be passed through sh as written"
        );
        let dir = format!(
            "/var/tmp/shipit-load-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        fleet.sh_ok(
            host,
            &format!(
                "rm -rf {dir} && mkdir -p {dir} && cat > {dir}/load.py <<'{EOF_MARK}'\n\
                 {SCRIPT}{EOF_MARK}\n"
            ),
        );
        // Detached, output to a file: `sh` returns at once and nsenter's pipes close.
        fleet.sh_ok(
            host,
            &format!(
                "cd {dir} && nohup python3 load.py '{url}' --rate {rate} --out report.json \
                 --stop-file stop --ready ready --timeout {REQUEST_TIMEOUT_SECS} \
                 </dev/null >load.log 2>&1 &"
            ),
        );
        let load = Load {
            fleet,
            host: host.to_owned(),
            dir,
        };
        load.wait_for("ready", "to send its first request");
        load
    }

    /// Stops sending, waits for the requests in flight, and returns the report.
    pub fn stop(self) -> LoadReport {
        self.fleet
            .sh_ok(&self.host, &format!("touch {}/stop", self.dir));
        self.wait_for("report.json", "to write its report");
        let text = self
            .fleet
            .sh_ok(&self.host, &format!("cat {}/report.json", self.dir));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("load on {}: report is not JSON ({e}):\n{text}", self.host))
    }

    /// Waits until `file` exists in the load's directory; panics with the generator's log
    /// if it does not within [`PATIENCE`].
    fn wait_for(&self, file: &str, what: &str) {
        let start = Instant::now();
        let check = format!("test -e {}/{file}", self.dir);
        while !self.fleet.sh(&self.host, &check).status.success() {
            if start.elapsed() > PATIENCE {
                let log = self
                    .fleet
                    .sh(&self.host, &format!("cat {}/load.log", self.dir));
                panic!(
                    "load on {}: the generator did not manage {what} in {PATIENCE:?}; its log:\n{}",
                    self.host,
                    String::from_utf8_lossy(&log.stdout)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl LoadReport {
    /// The 2xx bodies seen, in the order they first came.
    pub fn bodies_seen(&self) -> Vec<&str> {
        self.bodies.iter().map(|b| b.body.as_str()).collect()
    }

    /// How many 2xx answers had `body`.
    pub fn count(&self, body: &str) -> u64 {
        self.bodies
            .iter()
            .find(|b| b.body == body)
            .map_or(0, |b| b.count)
    }

    /// The body of the last request sent that got a 2xx answer.
    pub fn last_body(&self) -> Option<&str> {
        self.bodies
            .iter()
            .max_by(|a, b| a.last_ms.total_cmp(&b.last_ms))
            .map(|b| b.body.as_str())
    }
}

/// One line for assertion messages: counts, failures by kind, bodies, latency.
impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {}, ok {}, failed {} {:?}; bodies",
            self.sent, self.ok, self.failed, self.failures
        )?;
        for b in &self.bodies {
            write!(
                f,
                " {:?}x{} ({:.0}..{:.0} ms)",
                b.body, b.count, b.first_ms, b.last_ms
            )?;
        }
        write!(
            f,
            "; latency p50 {:?} p99 {:?} max {:?} ms; sender late by up to {:.0} ms; first failures {:?}",
            self.latency_ms.p50,
            self.latency_ms.p99,
            self.latency_ms.max,
            self.max_lag_ms,
            self.first_failures
                .iter()
                .map(|f| format!("{} at {:.0} ms ({})", f.kind, f.at_ms, f.wall))
                .collect::<Vec<_>>()
        )
    }
}
