//! Deploy benchmark over shaped links (the "WAN" one): shipit against the plain-OpenSSH floor
//! and rsync, as ratios measured in one run, on a fleet of the test fixture's real sshd hosts,
//! each in its own network namespace behind a 50 Mbit/s link, all behind one shared
//! 100 Mbit/s uplink (`tc tbf`; see `tests/e2e/support/wan.rs`):
//!
//!   bench/wan.sh                                     # 20 and 300 MB to 1, 10 and 50 hosts,
//!                                                    # rows over WAN_MAX MB × hosts skipped
//!   WAN_HOSTS=1,3 WAN_MB=5 bench/wan.sh              # a quick smoke run
//!   SHIPIT_WAN_HOSTS=1,3 SHIPIT_WAN_MB=5 cargo bench --bench wan
//!
//! Rows, for each artifact size and host count: a fresh deploy (clean hosts), an unchanged
//! redeploy and a one-file redeploy (one 10 KiB file given new content). The artifact is
//! [`App::make_tree_of`]'s dependency tree with [`Mix::TextAndBinary`]: files of 1 KiB to
//! 1 MiB (about 4000 for 300 MB), half base64 text, a quarter source-like text, a quarter
//! incompressible bytes.
//!
//! Tools, every host in parallel, each into `releases/<id>` then the same renamed-symlink
//! switch of `current`:
//! - the OpenSSH floor: the artifact as a `.tar.gz` made beforehand (`tar -czf`, outside the
//!   timing), its bytes streamed into `tar -xzf -` on each host over one ControlMaster
//!   connection per host. It sends the whole `.tar.gz` every time, so it is timed once per
//!   size and host count (as a fresh deploy) and that time stands on all three rows.
//! - shipit deploying the directory (`app.user = "nobody"`, so the hosts hard-link unchanged
//!   files; `waves = ["100%"]`; otherwise shipit's defaults).
//! - rsync: `rsync -a -z --delete` over ssh (one ControlMaster connection per host), into a
//!   new release directory, with `--link-dest` to the current release on redeploys (so
//!   unchanged files are hard links and only changed ones cross the link).
//!
//! Columns: each tool's time, shipit/floor and rsync/floor, and on the redeploy rows each
//! tool's time over its own fresh deploy (targets: fresh ≤ 1.0× the floor, one-file ≤ 0.05×
//! fresh). A second table gives bytes per host: the `.tar.gz`, shipit's `bytes_sent` (its
//! `--json` report) and its `source`, and what each tool put on the host's link (the
//! router's byte counter toward the host: IP, TCP and SSH overhead included).
//!
//! Fresh deploys are best of 3 when size × hosts ≤ 300 MB, else run once (300 MB to 10 hosts
//! is ~3 minutes per tool); redeploys are best of 3. After every run each host's `current`
//! must resolve to a release holding the artifact's files, byte for byte (md5), or the
//! benchmark panics. Each tool's releases are deleted before the next tool runs, so hosts
//! hold one tool's copies at a time (50 hosts × 300 MB is 15 GB of tmpfs).
//!
//! Settings (environment): `SHIPIT_WAN_HOSTS` (default 1,3), `SHIPIT_WAN_MB` (default 5),
//! `SHIPIT_WAN_MAX` (skip rows whose MB × hosts is above it; 0, the default, skips nothing).
//! `bench/wan.sh` passes `WAN_HOSTS`, `WAN_MB` and `WAN_MAX` (defaults 1,10,50; 20,300;
//! 3000) and puts the hosts on a tmpfs.

mod common;
#[path = "../tests/e2e/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    App, BASELINE_DIR, Mix, SERVICE_USER, SHIPIT_DIR, Settings, baseline_from, clean, human, pack,
    release_id, run_shipit_with, settle, shipit_inventory_as,
};
use support::wan::Links;
use support::{CLEAN_PATH, Fleet, FleetOptions, Host};

/// Where rsync deploys on a host.
const RSYNC_DIR: &str = "/opt/bench-rsync";
/// Timed runs of a redeploy (best of).
const REDEPLOY_RUNS: usize = 3;
/// Fresh deploys are best of 3 up to this many MB × hosts, run once above.
const BEST_OF_UP_TO: usize = 300;

fn main() {
    let started = Instant::now();
    let hosts = list("SHIPIT_WAN_HOSTS", "1,3");
    let sizes = list("SHIPIT_WAN_MB", "5");
    let max: usize = std::env::var("SHIPIT_WAN_MAX")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let fits = |mb: usize, n: usize| max == 0 || mb * n <= max;
    let rsync = rsync_version();
    println!(
        "shipit WAN benchmark: {sizes:?} MB to {hosts:?} hosts; {rsync}; OpenSSH {}",
        openssh_version()
    );
    let links = Links::default();
    let mut results = Vec::new();
    let mut described = false;
    for &n in &hosts {
        let sizes: Vec<usize> = sizes.iter().copied().filter(|&mb| fits(mb, n)).collect();
        if sizes.is_empty() {
            continue;
        }
        let fleet = Fleet::start_with(FleetOptions {
            hosts: n,
            wan: Some(links.clone()),
            ..FleetOptions::default()
        });
        if !described {
            let net = fleet.network().expect("a shaped network");
            println!("network: {}", net.describe());
            Scenario::header();
            described = true;
        }
        for &mb in &sizes {
            let scenario = Scenario::run(&fleet, mb);
            scenario.print();
            results.push(scenario);
        }
    }
    println!();
    Scenario::bytes_header();
    for s in &results {
        s.print_bytes();
    }
    println!();
    for s in &results {
        s.print_targets();
    }
    let skipped: Vec<(usize, usize)> = hosts
        .iter()
        .flat_map(|&n| sizes.iter().map(move |&mb| (mb, n)))
        .filter(|&(mb, n)| !fits(mb, n))
        .collect();
    if !skipped.is_empty() {
        println!("skipped (MB × hosts over SHIPIT_WAN_MAX = {max}); to run one alone:");
        for (mb, n) in skipped {
            println!(
                "  {mb} MB to {}: WAN_HOSTS={n} WAN_MB={mb} WAN_MAX=0 bench/wan.sh",
                host_count(n)
            );
        }
    }
    println!(
        "wall time: {:.1} min",
        started.elapsed().as_secs_f64() / 60.0
    );
}

/// A comma-separated list of numbers from the environment.
fn list(var: &str, default: &str) -> Vec<usize> {
    std::env::var(var)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .filter(|&n| n > 0)
        .collect()
}

/// The three kinds of deploy each scenario times.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fresh,
    OneFile,
    Unchanged,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Fresh, Kind::OneFile, Kind::Unchanged];

    fn name(self) -> &'static str {
        match self {
            Kind::Fresh => "fresh",
            Kind::OneFile => "one file",
            Kind::Unchanged => "unchanged",
        }
    }
}

/// One timed deploy (the best run's).
#[derive(Clone, Default)]
struct Timed {
    time: Duration,
    /// Mean bytes the router sent toward a host during the run.
    wire: u64,
    /// shipit only: mean `bytes_sent` per host, and the hosts' `source`s.
    sent: Option<(u64, String)>,
}

/// Everything measured for one artifact size on one fleet.
struct Scenario {
    mb: usize,
    hosts: usize,
    files: usize,
    bytes: u64,
    tgz: u64,
    floor: Timed,
    /// In [`Kind::ALL`]'s order.
    shipit: Vec<Timed>,
    rsync: Vec<Timed>,
}

impl Scenario {
    fn run(fleet: &Fleet, mb: usize) -> Scenario {
        let hosts = fleet.hosts().len();
        let runs = if mb * hosts <= BEST_OF_UP_TO { 3 } else { 1 };
        let app = App::make_tree_of(fleet.dir(), &format!("app-{mb}"), mb, Mix::TextAndBinary);
        let (files, bytes) = app.size();

        let tgz = fleet.dir().join(format!("app-{mb}.tar.gz"));
        pack(&app.dir, &tgz);
        let floor = best(runs, || {
            clean(fleet, BASELINE_DIR);
            settle();
            let (time, wire) = on_the_wire(fleet, || {
                baseline_from(fleet, &format!("cat {}", tgz.display())).0
            });
            app.verify(fleet, BASELINE_DIR, "the openssh floor");
            Timed {
                time,
                wire,
                sent: None,
            }
        });
        let tgz_bytes = std::fs::metadata(&tgz).unwrap().len();
        std::fs::remove_file(&tgz).unwrap();
        clean(fleet, BASELINE_DIR);

        let mut version = 0;
        let shipit = shipit_rows(fleet, &app, runs, &mut version);
        clean(fleet, SHIPIT_DIR);
        let rsync = rsync_rows(fleet, &app, runs, &mut version);
        clean(fleet, RSYNC_DIR);
        std::fs::remove_dir_all(&app.dir).unwrap();
        Scenario {
            mb,
            hosts,
            files,
            bytes,
            tgz: tgz_bytes,
            floor,
            shipit,
            rsync,
        }
    }

    fn label(&self, kind: Kind) -> String {
        format!(
            "{} MB {} to {}",
            self.mb,
            kind.name(),
            host_count(self.hosts)
        )
    }

    fn header() {
        println!(
            "{:<30} {:>9} {:>9} {:>7} {:>9} {:>7} {:>13} {:>12}",
            "scenario",
            "floor",
            "shipit",
            "/floor",
            "rsync",
            "/floor",
            "shipit/fresh",
            "rsync/fresh"
        );
    }

    fn print(&self) {
        let secs = |d: Duration| format!("{:.2}s", d.as_secs_f64());
        let ratio = |a: Duration, b: Duration| format!("{:.3}x", a.as_secs_f64() / b.as_secs_f64());
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            let (ours, theirs) = (&self.shipit[i], &self.rsync[i]);
            let (own_fresh, rsync_fresh) = match kind {
                Kind::Fresh => ("-".to_owned(), "-".to_owned()),
                _ => (
                    ratio(ours.time, self.shipit[0].time),
                    ratio(theirs.time, self.rsync[0].time),
                ),
            };
            println!(
                "{:<30} {:>9} {:>9} {:>7} {:>9} {:>7} {:>13} {:>12}",
                self.label(kind),
                secs(self.floor.time),
                secs(ours.time),
                ratio(ours.time, self.floor.time),
                secs(theirs.time),
                ratio(theirs.time, self.floor.time),
                own_fresh,
                rsync_fresh
            );
        }
    }

    fn bytes_header() {
        println!(
            "bytes per host (wire: what the host's link carried, all overhead included)\n\
             {:<30} {:>10} {:>12} {:>9} {:>11} {:>11} {:>11}",
            "scenario",
            ".tar.gz",
            "shipit sent",
            "source",
            "floor wire",
            "shipit wire",
            "rsync wire"
        );
    }

    fn print_bytes(&self) {
        println!(
            "  artifact: {} in {} files; its .tar.gz (gzip -6) is {:.0}% of that",
            human(self.bytes),
            self.files,
            100.0 * self.tgz as f64 / self.bytes as f64
        );
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            let (sent, source) = self.shipit[i]
                .sent
                .clone()
                .map_or(("-".to_owned(), "-".to_owned()), |(b, s)| (human(b), s));
            println!(
                "{:<30} {:>10} {:>12} {:>9} {:>11} {:>11} {:>11}",
                self.label(kind),
                human(self.tgz),
                sent,
                source,
                human(self.floor.wire),
                human(self.shipit[i].wire),
                human(self.rsync[i].wire)
            );
        }
    }

    /// The targets: fresh ≤ 1.0× the floor, one-file ≤ 0.05× fresh.
    fn print_targets(&self) {
        let fresh = self.shipit[0].time.as_secs_f64();
        let vs_floor = fresh / self.floor.time.as_secs_f64();
        let one_file = self.shipit[1].time.as_secs_f64() / fresh;
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        println!(
            "{} MB to {}: fresh {vs_floor:.3}x the floor (target <= 1.0: {}), one file {one_file:.3}x fresh (target <= 0.05: {})",
            self.mb,
            host_count(self.hosts),
            met(vs_floor <= 1.0),
            met(one_file <= 0.05)
        );
    }
}

/// "1 host", "10 hosts".
fn host_count(n: usize) -> String {
    match n {
        1 => "1 host".to_owned(),
        n => format!("{n} hosts"),
    }
}

/// The best (fastest) of `runs` runs.
fn best(runs: usize, mut f: impl FnMut() -> Timed) -> Timed {
    (0..runs)
        .map(|_| f())
        .min_by_key(|t| t.time)
        .expect("runs > 0")
}

/// Runs `f` (which returns its own timing) and the mean bytes the router sent toward a host
/// meanwhile.
fn on_the_wire(fleet: &Fleet, f: impl FnOnce() -> Duration) -> (Duration, u64) {
    let net = fleet.network().expect("a shaped network");
    let before = net.delivered_bytes();
    let time = f();
    let after = net.delivered_bytes();
    let total: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    (time, total / before.len() as u64)
}

/// shipit's fresh deploy, unchanged redeploy and one-file redeploy, in [`Kind::ALL`]'s order.
fn shipit_rows(fleet: &Fleet, app: &App, runs: usize, version: &mut u64) -> Vec<Timed> {
    let settings = Settings {
        user: Some(SERVICE_USER),
        delta: None,
    };
    let inventory = shipit_inventory_as(fleet, &app.dir, "bench-wan", &settings);
    let deploy = |what: &str| {
        settle();
        let mut report = serde_json::Value::Null;
        let (time, wire) = on_the_wire(fleet, || {
            let run = run_shipit_with(fleet, &inventory, "deploy", true);
            report = run.report;
            run.time
        });
        app.verify(fleet, SHIPIT_DIR, what);
        Timed {
            time,
            wire,
            sent: Some(sent(&report, fleet, what)),
        }
    };
    let fresh = best(runs, || {
        clean(fleet, SHIPIT_DIR);
        deploy("shipit (fresh)")
    });
    let unchanged = best(REDEPLOY_RUNS, || deploy("shipit (unchanged)"));
    let one_file = best(REDEPLOY_RUNS, || {
        *version += 1;
        app.change(*version);
        deploy("shipit (one file)")
    });
    vec![fresh, one_file, unchanged]
}

/// The mean `bytes_sent` per host of a `--json` report, and the distinct `source`s.
fn sent(report: &serde_json::Value, fleet: &Fleet, what: &str) -> (u64, String) {
    let hosts = report["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no hosts in the report:\n{report:#}"));
    assert_eq!(
        hosts.len(),
        fleet.hosts().len(),
        "{what}: the report does not list every host"
    );
    let total: u64 = hosts
        .iter()
        .map(|h| h["bytes_sent"].as_u64().unwrap_or(0))
        .sum();
    let mut sources: Vec<&str> = hosts
        .iter()
        .map(|h| h["source"].as_str().unwrap_or("-"))
        .collect();
    sources.sort();
    sources.dedup();
    (total / hosts.len() as u64, sources.join(","))
}

/// rsync's fresh deploy, unchanged redeploy and one-file redeploy, in [`Kind::ALL`]'s order.
fn rsync_rows(fleet: &Fleet, app: &App, runs: usize, version: &mut u64) -> Vec<Timed> {
    let deploy = |link_dest: bool, what: &str| {
        settle();
        let (time, wire) = on_the_wire(fleet, || rsync_deploy(fleet, &app.dir, link_dest));
        app.verify(fleet, RSYNC_DIR, what);
        Timed {
            time,
            wire,
            sent: None,
        }
    };
    let fresh = best(runs, || {
        clean(fleet, RSYNC_DIR);
        deploy(false, "rsync (fresh)")
    });
    let unchanged = best(REDEPLOY_RUNS, || deploy(true, "rsync (unchanged)"));
    let one_file = best(REDEPLOY_RUNS, || {
        *version += 1;
        // rsync's quick check compares whole-second mtimes: a file rewritten (same size)
        // within the second of the previous version would look unchanged to it.
        next_second();
        app.change(*version);
        deploy(true, "rsync (one file)")
    });
    vec![fresh, one_file, unchanged]
}

/// Sleeps (untimed) until the wall clock's second changes, and 20 ms more: file times come
/// from the kernel's coarse clock, which lags by up to a tick (10 ms at HZ=100); 1 ms was
/// not enough, and a file rewritten just after the second could keep the last one's mtime.
fn next_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(Duration::from_nanos(
        1_000_000_000 - now.subsec_nanos() as u64 + 20_000_000,
    ));
}

/// `rsync -a -z --delete` of `app` into a new release on every host in parallel (with
/// `--link-dest` to `current` if `link_dest`), then the renamed-symlink switch; one
/// ControlMaster connection per host.
fn rsync_deploy(fleet: &Fleet, app: &Path, link_dest: bool) -> Duration {
    let id = release_id();
    let release = format!("{RSYNC_DIR}/releases/{id}");
    let start = Instant::now();
    let children: Vec<_> = fleet
        .hosts()
        .iter()
        .map(|h| {
            let ssh = ssh_words(fleet, h).join(" ");
            let dest = format!("root@{}", h.address);
            let link = match link_dest {
                true => format!("--link-dest={RSYNC_DIR}/current/"),
                false => String::new(),
            };
            let switch = quote(&format!(
                "ln -sfn {release} {RSYNC_DIR}/current.tmp && mv -T {RSYNC_DIR}/current.tmp {RSYNC_DIR}/current"
            ));
            let script = format!(
                "{ssh} -o ControlMaster=yes -o ControlPersist=60 -fN {dest} && \
                 rsync -a -z --delete --mkpath {link} -e {} {}/ {dest}:{release}/ && \
                 {ssh} {dest} {switch}; s=$?; {ssh} -O exit {dest} 2>/dev/null; exit $s",
                quote(&ssh),
                app.display(),
            );
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .env_clear()
                .env("PATH", CLEAN_PATH)
                .env("HOME", fleet.home())
                .env("LANG", "C.UTF-8")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (c, h) in children.into_iter().zip(fleet.hosts()) {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "rsync to {} failed ({}): {}",
            h.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    start.elapsed()
}

/// `ssh` with the fleet's key and strict known_hosts, no config of this machine, through the
/// host's ControlMaster socket; the destination is left to the caller.
fn ssh_words(fleet: &Fleet, h: &Host) -> Vec<String> {
    let sock = fleet.dir().join(format!("rsync-cm-{}", h.name));
    [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        &fleet.client_key().display().to_string(),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        &format!("UserKnownHostsFile={}", fleet.known_hosts().display()),
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        &format!("ControlPath={}", sock.display()),
        "-p",
        &h.port.to_string(),
    ]
    .iter()
    .map(|w| w.to_string())
    .collect()
}

/// `word` single-quoted for `sh`.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// `rsync --version`'s first line; panics with how to install it when rsync is missing.
fn rsync_version() -> String {
    let out = Command::new("rsync")
        .arg("--version")
        .env("PATH", CLEAN_PATH)
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .unwrap_or_else(|| {
            panic!("rsync is not installed: run `bash bench/setup-others.sh rsync` first")
        });
    first_line(&out.stdout)
}

/// `ssh -V`'s version (printed on stderr).
fn openssh_version() -> String {
    let out = Command::new("ssh")
        .arg("-V")
        .stdin(Stdio::null())
        .output()
        .expect("run ssh -V");
    first_line(&out.stderr)
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or("?")
        .trim()
        .to_owned()
}
