//! Deploy benchmark on a loopback fleet of real sshd hosts (the test fixture's), reported as
//! ratios against plain OpenSSH doing the same job in the same run:
//!
//!   bench/run.sh                               # 1, 10 and 50 hosts, 20 MB, then 300 MB on 1 host,
//!                                              # then the 300 MB delta redeploy on 10 hosts
//!   SHIPIT_BENCH_HOSTS=1,10 SHIPIT_BENCH_MB=20 cargo bench --bench deploy
//!   SHIPIT_BENCH_DELTA_HOSTS=3 SHIPIT_BENCH_DELTA_MB=20 cargo bench --bench deploy
//!   bash bench/setup-others.sh && bench/run.sh # also pyinfra and Ansible, same fleet, same run
//!   SHIPIT_BENCH_GROWTH=10,50,100,200 cargo bench --bench deploy   # only the growth curve
//!
//! The job: upload an artifact, extract it to `releases/<id>`, switch `current`. Baseline:
//! plain OpenSSH with one ControlMaster connection per host, `tar -czf - dir | ssh host 'tar
//! -x'` into a new directory, then the same renamed-symlink switch, every host in parallel.
//! The `.tar.gz` rows are the floor: the artifact given as a prebuilt tar.gz (made outside
//! the timing), its bytes streamed into `tar -xzf -` on each host, against shipit deploying
//! that same file.
//! Client peak RSS is measured with wait4(2). After every run, every host's `current` must
//! resolve to a `releases/<id>` directory holding the artifact's files, byte for byte (md5),
//! so a tool that silently did nothing fails the benchmark instead of winning it.
//!
//! Columns: `openssh` (the baseline), `shipit` and its ratio to the baseline, shipit's peak
//! RSS, then `pyinfra` and `ansible` with their ratios to the same baseline. Those two are
//! taken from the venv `SHIPIT_BENCH_VENV` (default `target/bench-venv`, made by
//! `bash bench/setup-others.sh`) and show `-` when its `bin/pyinfra` or `bin/ansible-playbook`
//! is missing, and on the redeploy rows (they have no "nothing changed" shortcut to measure;
//! a redeploy is a new release for them). Both start by packing the artifact directory into
//! one tar.gz on the controller, inside the timed part, like shipit packs it and the baseline
//! compresses it per host:
//! - pyinfra: `files.put` of the tar.gz, then `server.shell` to extract it into a new release
//!   and to switch `current` with the same renamed symlink as the baseline. Its own SSH
//!   client (paramiko), all hosts in parallel (its default).
//! - Ansible: a playbook, `gather_facts: false`; `file` (create the release dir),
//!   `unarchive` copying the tar.gz from the controller, `file state=link force=true` for
//!   `current` (the file module replaces a symlink by a renamed temporary one, so atomically).
//!   `forks` = hosts (at most 50), `pipelining = True`, Ansible's default `ssh_args`
//!   (`-C -o ControlMaster=auto -o ControlPersist=60s`), the interpreter set to
//!   `/usr/bin/python3` (no discovery). Each run gets a fresh ControlPath dir, and its
//!   persisted masters are closed after the run (untimed), so no run reuses an earlier run's
//!   connections.
//!
//! Both use the fleet's client key and strict known_hosts, as root on 127.0.0.1. pyinfra and
//! Ansible run [`OTHER_RUNS`] times per scenario (best of), the others 3 times; every tool
//! runs once on the big-artifact row.
//!
//! The `check N hosts` rows: `shipit check` (which also checks tools, write access and free
//! disk) against one `ssh -o BatchMode=yes host true` per host, all in parallel; pyinfra runs
//! `exec -- true` and Ansible the `ping` module (a Python round trip) on the same hosts.
//!
//! Last, the delta redeploy (shipit only, no baseline): `SHIPIT_BENCH_DELTA_MB` (default 300)
//! of files shaped like a dependency tree (`node_modules/pkg-NNNN/...`, 1 KiB to 1 MiB each,
//! mostly small: about 3800 files for 300 MB; three in four of base64 text from a PRNG, one
//! in four source-like text) plus
//! one 10 KiB `src/changed.js`, deployed to `SHIPIT_BENCH_DELTA_HOSTS` (default 10) hosts
//! with `app.user = "nobody"` (a service user that is neither the SSH user nor root, so the
//! host hard-links the unchanged files). Timed, best of [`DELTA_RUNS`] each: a fresh deploy
//! (clean hosts), then redeploys each changing only `src/changed.js` (same size, new
//! content): with `artifact.delta` on (the default), and with `delta = false` (a whole
//! upload). It prints the fresh/delta ratio (the target is at most 0.1), the delta/full
//! ratio, shipit's peak RSS, and per host the `--json` report's `source`, `bytes_sent` against
//! `artifact_bytes`, how many files of its `current` are hard links, and its `stage_ms` in
//! the fresh, delta and full runs (upload, extract or clone and verify). Every host must be
//! on the new content (md5 of every file) and report `source = "delta"` with `bytes_sent`
//! under a tenth of `artifact_bytes` (the fresh deploy `uploaded`, the `delta = false` one
//! `uploaded`), or the benchmark panics.
//!
//! The growth curve (`SHIPIT_BENCH_GROWTH`, a list of fleet sizes; when set, nothing else
//! runs): for each size, a fresh fleet and a `SHIPIT_BENCH_GROWTH_MB` (default 5) artifact;
//! the OpenSSH baseline's deploy (above), shipit's fresh deploy (clean hosts), its redeploy
//! of the unchanged artifact, `ssh host true` on every host and `shipit check`, best of
//! `SHIPIT_BENCH_GROWTH_RUNS` (default [`GROWTH_RUNS`]) each, every deploy verified on every
//! host. shipit keeps its defaults (`rollout.parallel` = 10: ten hosts handshake and stage at
//! once, every connection stays open for the run) and runs with at most [`SHIPIT_NOFILE`]
//! open files. It prints a Markdown table: times, ratios to the baseline at the same size
//! (the redeploy against the baseline's fresh deploy: it has no shortcut), time and peak RSS
//! per host, per-host time at each size against the first size's, and the peak RSS each host
//! beyond the first size adds.

mod common;
#[path = "../tests/e2e/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    App, BASELINE_DIR, CHANGED, CHANGED_BYTES, SERVICE_USER, SHIPIT_DIR, SHIPIT_NOFILE, Settings,
    ShipitRun, baseline_from, baseline_log, clean, human, pack, release_id, run_shipit_with,
    settle, shipit_inventory_as,
};
use support::{Fleet, clean_command};

/// Runs per scenario (best of) for pyinfra and Ansible, which are slower than the others.
const OTHER_RUNS: usize = 2;
/// Where pyinfra and Ansible deploy on a host.
const PYINFRA_DIR: &str = "/opt/bench-pyinfra";
const ANSIBLE_DIR: &str = "/opt/bench-ansible";

fn main() {
    raise_fd_limit();
    if let Ok(sizes) = std::env::var("SHIPIT_BENCH_GROWTH") {
        let sizes: Vec<usize> = sizes
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .filter(|&n| n > 0)
            .collect();
        assert!(
            !sizes.is_empty(),
            "SHIPIT_BENCH_GROWTH: give fleet sizes, e.g. 10,50,100,200"
        );
        let number = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
                .max(1)
        };
        growth(
            &sizes,
            number("SHIPIT_BENCH_GROWTH_MB", 5),
            number("SHIPIT_BENCH_GROWTH_RUNS", GROWTH_RUNS),
        );
        return;
    }
    let hosts: Vec<usize> = std::env::var("SHIPIT_BENCH_HOSTS")
        .unwrap_or_else(|_| "1,3".to_owned())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let mb: usize = std::env::var("SHIPIT_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let big_mb: usize = std::env::var("SHIPIT_BENCH_BIG_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let delta_hosts: usize = std::env::var("SHIPIT_BENCH_DELTA_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let delta_mb: usize = std::env::var("SHIPIT_BENCH_DELTA_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let tools = Tools::find();
    println!(
        "shipit deploy benchmark: {mb} MB artifact on {hosts:?} hosts, then {big_mb} MB on 1 host, \
         then a {delta_mb} MB delta redeploy on {delta_hosts} hosts"
    );
    tools.describe();
    Row::header();
    for &n in &hosts {
        let fleet = Fleet::start(n);
        let app = App::make(fleet.dir(), "app", mb);
        let deploy = compare(&fleet, &app, &tools, 3);
        deploy.print(&format!("{mb} MB to {n} hosts"));
        // The artifact given as a .tar.gz made beforehand: the floor is then a plain stream
        // of its bytes into `tar -xz` on every host, with no compression at all.
        let tgz = fleet.dir().join("app.tar.gz");
        pack(&app.dir, &tgz);
        let (floor, _) = best_of(3, || {
            let run = baseline_from(&fleet, &format!("cat {}", tgz.display()));
            app.verify(&fleet, BASELINE_DIR, "openssh floor");
            run
        });
        let (ours, rss) = best_of(3, || {
            clean(&fleet, SHIPIT_DIR);
            let run = shipit_deploy(&fleet, &tgz);
            app.verify(&fleet, SHIPIT_DIR, "shipit (tar.gz)");
            run
        });
        Row {
            base: floor,
            ours,
            rss_kb: Some(rss),
            pyinfra: None,
            ansible: None,
        }
        .print(&format!("{mb} MB .tar.gz to {n} hosts"));
        // Same artifact again: nothing should be uploaded.
        let (again, rss) = best_of(3, || {
            let run = shipit_deploy(&fleet, &app.dir);
            app.verify(&fleet, SHIPIT_DIR, "shipit redeploy");
            run
        });
        Row {
            ours: again,
            rss_kb: Some(rss),
            pyinfra: None,
            ansible: None,
            ..deploy
        }
        .print(&format!("{mb} MB redeploy to {n} hosts"));
        check_row(&fleet, &app.dir, &tools).print(&format!("check {n} hosts"));
    }
    let fleet = Fleet::start(1);
    let app = App::make(fleet.dir(), "big", big_mb);
    compare(&fleet, &app, &tools, 1).print(&format!("{big_mb} MB to 1 host"));
    drop(fleet);
    delta_redeploy(delta_hosts.max(1), delta_mb.max(1));
}

/// Every tool deploys `app` to a clean fleet: `runs` times each for the baseline and shipit
/// (at most [`OTHER_RUNS`] for the others), best of.
fn compare(fleet: &Fleet, app: &App, tools: &Tools, runs: usize) -> Row {
    let (base, _) = best_of(runs, || {
        let run = baseline(fleet, &app.dir);
        app.verify(fleet, BASELINE_DIR, "openssh baseline");
        run
    });
    let (ours, rss) = best_of(runs, || {
        clean(fleet, SHIPIT_DIR);
        let run = shipit_deploy(fleet, &app.dir);
        app.verify(fleet, SHIPIT_DIR, "shipit");
        run
    });
    let other_runs = runs.min(OTHER_RUNS);
    let pyinfra = tools.pyinfra.as_ref().map(|bin| {
        best_time(other_runs, || {
            clean(fleet, PYINFRA_DIR);
            let run = pyinfra_deploy(fleet, bin, &app.dir);
            app.verify(fleet, PYINFRA_DIR, "pyinfra");
            run
        })
    });
    let ansible = tools.ansible.as_ref().map(|bin| {
        best_time(other_runs, || {
            clean(fleet, ANSIBLE_DIR);
            let run = ansible_deploy(fleet, bin, &app.dir);
            app.verify(fleet, ANSIBLE_DIR, "ansible");
            run
        })
    });
    Row {
        base,
        ours,
        rss_kb: Some(rss),
        pyinfra,
        ansible,
    }
}

/// Runs per timing (best of) in the growth curve.
const GROWTH_RUNS: usize = 3;

/// Raises this process's soft limit on open files to its hard limit. The fixture holds a
/// pipe per host, and every host's sshd and every baseline ssh client inherits the limit;
/// 1024 is enough for 200 hosts, but not for many more.
fn raise_fd_limit() {
    // SAFETY: plain data in and out; changes only this process's limit.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// One fleet size of the growth curve: best times and shipit's peak RSS (KiB).
struct Growth {
    hosts: usize,
    /// The OpenSSH baseline's fresh deploy, and `ssh host true` on every host.
    base_deploy: Duration,
    base_check: Duration,
    deploy: (Duration, u64),
    redeploy: (Duration, u64),
    check: (Duration, u64),
}

/// The growth curve: for each fleet size, a fresh fleet, then the OpenSSH baseline's deploy,
/// shipit's fresh deploy, its unchanged redeploy, `ssh host true` and `shipit check`, best of
/// `runs` each, every deploy verified on every host. Prints each size as it is measured, then
/// the table with per-host figures and how they grow from the first size.
fn growth(sizes: &[usize], mb: usize, runs: usize) {
    println!(
        "growth curve: {mb} MB artifact to {sizes:?} hosts, best of {runs}; shipit with the \
         default rollout.parallel (10) and at most {SHIPIT_NOFILE} open files"
    );
    let mut curve = Vec::new();
    for &n in sizes {
        let started = Instant::now();
        let fleet = Fleet::start(n);
        let start_time = started.elapsed();
        let app = App::make(fleet.dir(), "app", mb);
        let (base_deploy, _) = best_of(runs, || {
            // Untimed; keeps 200 hosts' earlier releases out of memory (the tmpfs).
            clean(&fleet, BASELINE_DIR);
            let run = baseline(&fleet, &app.dir);
            app.verify(&fleet, BASELINE_DIR, "openssh baseline");
            run
        });
        clean(&fleet, BASELINE_DIR);
        let deploy = best_of(runs, || {
            clean(&fleet, SHIPIT_DIR);
            let run = shipit_deploy(&fleet, &app.dir);
            app.verify(&fleet, SHIPIT_DIR, "shipit");
            run
        });
        let redeploy = best_of(runs, || {
            let run = shipit_deploy(&fleet, &app.dir);
            app.verify(&fleet, SHIPIT_DIR, "shipit redeploy");
            run
        });
        let (base_check, _) = best_of(runs, || ssh_true(&fleet));
        let check = best_of(runs, || shipit_check(&fleet, &app.dir));
        let stopping = Instant::now();
        drop(fleet);
        let point = Growth {
            hosts: n,
            base_deploy,
            base_check,
            deploy,
            redeploy,
            check,
        };
        println!(
            "{n} hosts: openssh {:.2}s, shipit {:.2}s ({} MB), redeploy {:.2}s ({} MB), \
             ssh true {:.2}s, check {:.2}s ({} MB); fleet started in {:.1}s, stopped in {:.1}s",
            base_deploy.as_secs_f64(),
            deploy.0.as_secs_f64(),
            deploy.1 / 1024,
            redeploy.0.as_secs_f64(),
            redeploy.1 / 1024,
            base_check.as_secs_f64(),
            check.0.as_secs_f64(),
            check.1 / 1024,
            start_time.as_secs_f64(),
            stopping.elapsed().as_secs_f64()
        );
        curve.push(point);
    }
    print_growth(&curve, mb);
}

/// The growth table, in Markdown. Per host: time or peak RSS divided by the hosts; "vs N"
/// divides a per-host time by the same figure at the first size; "added" is the RSS each
/// host beyond the first size's costs.
fn print_growth(curve: &[Growth], mb: usize) {
    let first = &curve[0];
    println!(
        "\n| hosts | scenario | OpenSSH | shipit | ratio | OpenSSH per host | shipit per host \
         | OpenSSH per host vs {0} | shipit per host vs {0} | shipit peak RSS | per host | per added host |",
        first.hosts
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let per_host = |d: Duration, n: usize| d.as_secs_f64() / n as f64;
    for g in curve {
        let scenarios = [
            (
                format!("{mb} MB deploy"),
                g.base_deploy,
                g.deploy,
                first.base_deploy,
                first.deploy,
            ),
            (
                format!("{mb} MB redeploy (unchanged)"),
                g.base_deploy,
                g.redeploy,
                first.base_deploy,
                first.redeploy,
            ),
            (
                "check".to_owned(),
                g.base_check,
                g.check,
                first.base_check,
                first.check,
            ),
        ];
        for (name, base, (ours, rss), base0, (ours0, rss0)) in scenarios {
            let added = match g.hosts > first.hosts {
                true => format!(
                    "{:.0} KiB",
                    (rss as f64 - rss0 as f64) / (g.hosts - first.hosts) as f64
                ),
                false => "-".to_owned(),
            };
            println!(
                "| {} | {name} | {:.2} s | {:.2} s | {:.2}× | {:.1} ms | {:.1} ms | {:.2}× | {:.2}× \
                 | {:.1} MiB | {:.0} KiB | {added} |",
                g.hosts,
                base.as_secs_f64(),
                ours.as_secs_f64(),
                ours.as_secs_f64() / base.as_secs_f64(),
                1000.0 * per_host(base, g.hosts),
                1000.0 * per_host(ours, g.hosts),
                per_host(base, g.hosts) / per_host(base0, first.hosts),
                per_host(ours, g.hosts) / per_host(ours0, first.hosts),
                rss as f64 / 1024.0,
                rss as f64 / g.hosts as f64,
            );
        }
    }
}

/// `shipit check` against one `ssh host true` per host in parallel, and the other tools'
/// closest equivalents.
fn check_row(fleet: &Fleet, app: &Path, tools: &Tools) -> Row {
    let (base, _) = best_of(3, || ssh_true(fleet));
    let (ours, rss) = best_of(3, || shipit_check(fleet, app));
    let pyinfra = tools
        .pyinfra
        .as_ref()
        .map(|bin| best_time(OTHER_RUNS, || pyinfra_check(fleet, bin)));
    let ansible = tools.ansible.as_ref().map(|bin| {
        best_time(OTHER_RUNS, || {
            ansible_check(fleet, &bin.with_file_name("ansible"))
        })
    });
    Row {
        base,
        ours,
        rss_kb: Some(rss),
        pyinfra,
        ansible,
    }
}

/// One table row; times are the best run's.
#[derive(Clone, Copy)]
struct Row {
    base: Duration,
    ours: Duration,
    rss_kb: Option<u64>,
    pyinfra: Option<Duration>,
    ansible: Option<Duration>,
}

impl Row {
    fn header() {
        println!(
            "{:<28} {:>9} {:>9} {:>7} {:>12} {:>9} {:>7} {:>9} {:>7}",
            "scenario",
            "openssh",
            "shipit",
            "ratio",
            "shipit RSS",
            "pyinfra",
            "ratio",
            "ansible",
            "ratio"
        );
    }

    fn print(&self, name: &str) {
        let time = |d: Option<Duration>| match d {
            Some(d) => format!("{:.2}s", d.as_secs_f64()),
            None => "-".to_owned(),
        };
        let ratio = |d: Option<Duration>| match d {
            Some(d) => format!("{:.2}x", d.as_secs_f64() / self.base.as_secs_f64()),
            None => "-".to_owned(),
        };
        let rss = match self.rss_kb {
            Some(kb) => format!("{} MB", kb / 1024),
            None => "-".to_owned(),
        };
        println!(
            "{name:<28} {:>9} {:>9} {:>7} {rss:>12} {:>9} {:>7} {:>9} {:>7}",
            time(Some(self.base)),
            time(Some(self.ours)),
            ratio(Some(self.ours)),
            time(self.pyinfra),
            ratio(self.pyinfra),
            time(self.ansible),
            ratio(self.ansible),
        );
    }
}

/// pyinfra and Ansible from the venv `SHIPIT_BENCH_VENV` (default `target/bench-venv`, made
/// by `bench/setup-others.sh`), when installed there.
struct Tools {
    venv: PathBuf,
    pyinfra: Option<PathBuf>,
    ansible: Option<PathBuf>,
}

impl Tools {
    fn find() -> Tools {
        let venv = std::env::var_os("SHIPIT_BENCH_VENV")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-venv"));
        let venv = std::path::absolute(&venv).unwrap_or(venv);
        let bin = |name: &str| Some(venv.join("bin").join(name)).filter(|p| p.is_file());
        Tools {
            pyinfra: bin("pyinfra"),
            ansible: bin("ansible-playbook").filter(|p| p.with_file_name("ansible").is_file()),
            venv,
        }
    }

    fn describe(&self) {
        let version = |bin: &Path| {
            let out = Command::new(bin)
                .arg("--version")
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            out.lines().next().unwrap_or("?").trim().to_owned()
        };
        for (name, bin) in [("pyinfra", &self.pyinfra), ("ansible", &self.ansible)] {
            match bin {
                Some(bin) => println!("{name}: {} ({})", bin.display(), version(bin)),
                None => println!(
                    "{name}: not in {} (run `bash bench/setup-others.sh` to compare with it)",
                    self.venv.display()
                ),
            }
        }
    }
}

fn best_of(n: usize, mut f: impl FnMut() -> (Duration, u64)) -> (Duration, u64) {
    (0..n).map(|_| f()).min_by_key(|(d, _)| *d).expect("n > 0")
}

fn best_time(n: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..n).map(|_| f()).min().expect("n > 0")
}

/// Plain OpenSSH doing the same job, every host in parallel, one multiplexed connection per
/// host (ControlMaster): connect, `tar -czf - | ssh tar -x` into a new release directory,
/// switch `current` with a renamed symlink, disconnect.
fn baseline(fleet: &Fleet, app: &Path) -> (Duration, u64) {
    baseline_from(fleet, &format!("tar -czf - -C {} .", app.display()))
}

/// One `ssh -o BatchMode=yes host true` per host, all in parallel.
fn ssh_true(fleet: &Fleet) -> (Duration, u64) {
    let start = Instant::now();
    let children: Vec<_> = fleet
        .hosts()
        .iter()
        .map(|h| {
            let log = std::fs::File::create(baseline_log(fleet, h)).unwrap();
            fleet
                .ssh_command(&h.name)
                .args(["-o", "BatchMode=yes", "true"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap()
        })
        .collect();
    for (mut c, h) in children.into_iter().zip(fleet.hosts()) {
        let status = c.wait().unwrap();
        assert!(
            status.success(),
            "ssh {} true failed ({status}): {}",
            h.name,
            std::fs::read_to_string(baseline_log(fleet, h)).unwrap_or_default()
        );
    }
    (start.elapsed(), 0)
}

/// shipit's inventory for the fleet, deploying `app` to [`SHIPIT_DIR`].
fn shipit_inventory(fleet: &Fleet, app: &Path) -> PathBuf {
    shipit_inventory_as(fleet, app, "bench", &Settings::default())
}

fn shipit_deploy(fleet: &Fleet, app: &Path) -> (Duration, u64) {
    run_shipit(fleet, app, "deploy")
}

fn shipit_check(fleet: &Fleet, app: &Path) -> (Duration, u64) {
    run_shipit(fleet, app, "check")
}

/// `shipit <command> bench` on the whole fleet: time and peak RSS.
fn run_shipit(fleet: &Fleet, app: &Path, command: &str) -> (Duration, u64) {
    let run = run_shipit_with(fleet, &shipit_inventory(fleet, app), command, false);
    (run.time, run.rss_kb)
}

/// Runs per timing (best of) in the delta redeploy scenario: 300 MB to 10 hosts is slow.
const DELTA_RUNS: usize = 2;

/// The delta redeploy scenario (see the module doc): prints its rows, panics on any host
/// not on the new content or not deployed the expected way.
fn delta_redeploy(hosts: usize, mb: usize) {
    let fleet = Fleet::start(hosts);
    let app = App::make_tree(fleet.dir(), "tree", mb);
    let (files, bytes) = app.size();
    println!(
        "\ndelta redeploy: {} in {files} files (one is {CHANGED}, {}), {hosts} hosts, app.user = {SERVICE_USER:?}, best of {DELTA_RUNS}",
        human(bytes),
        human(CHANGED_BYTES as u64)
    );
    let settings = |delta| Settings {
        user: Some(SERVICE_USER),
        delta: Some(delta),
    };
    let delta_inv = shipit_inventory_as(&fleet, &app.dir, "bench-delta", &settings(true));
    let full_inv = shipit_inventory_as(&fleet, &app.dir, "bench-full", &settings(false));
    let best = |runs: Vec<ShipitRun>| runs.into_iter().min_by_key(|r| r.time).expect("runs");

    let fresh = best(
        (0..DELTA_RUNS)
            .map(|_| {
                clean(&fleet, SHIPIT_DIR);
                settle();
                let run = run_shipit_with(&fleet, &delta_inv, "deploy", true);
                app.verify(&fleet, SHIPIT_DIR, "shipit fresh deploy");
                host_sources(&run.report, &fleet, "uploaded", "the fresh deploy");
                run
            })
            .collect(),
    );
    let mut version = 0;
    let mut redeploy = |inventory: &Path, source: &str, what: &str| {
        best(
            (0..DELTA_RUNS)
                .map(|_| {
                    version += 1;
                    app.change(version);
                    settle();
                    let run = run_shipit_with(&fleet, inventory, "deploy", true);
                    app.verify(&fleet, SHIPIT_DIR, what);
                    host_sources(&run.report, &fleet, source, what);
                    run
                })
                .collect(),
        )
    };
    let delta = redeploy(&delta_inv, "delta", "the delta redeploy");
    let delta_hosts = host_sources(&delta.report, &fleet, "delta", "the delta redeploy");
    let linked: Vec<(usize, usize)> = delta_hosts
        .iter()
        .map(|h| linked_files(&fleet, &h.host))
        .collect();
    let full = redeploy(&full_inv, "uploaded", "the redeploy with delta = false");
    let full_hosts = host_sources(
        &full.report,
        &fleet,
        "uploaded",
        "the redeploy with delta = false",
    );

    let secs = |r: &ShipitRun| r.time.as_secs_f64();
    println!(
        "{mb} MB, one {} KB file changed, {hosts} hosts: fresh {:.2}s, delta redeploy {:.2}s, ratio delta/fresh = {:.3} (target <= 0.1)",
        CHANGED_BYTES / 1024,
        secs(&fresh),
        secs(&delta),
        secs(&delta) / secs(&fresh)
    );
    println!(
        "  same redeploy with delta = false: {:.2}s, ratio delta/full = {:.3}; sent up to {} to a host",
        secs(&full),
        secs(&delta) / secs(&full),
        human(full_hosts.iter().map(|h| h.sent).max().unwrap_or(0))
    );
    println!(
        "  shipit peak RSS: fresh {} MB, delta {} MB, full {} MB",
        fresh.rss_kb / 1024,
        delta.rss_kb / 1024,
        full.rss_kb / 1024
    );
    let fresh_hosts = host_sources(&fresh.report, &fleet, "uploaded", "the fresh deploy");
    println!(
        "  {:<6} {:<8} {:>12} {:>14} {:>9} {:>22} {:>26}",
        "host",
        "source",
        "bytes sent",
        "artifact bytes",
        "sent %",
        "hard-linked in current",
        "stage ms fresh/delta/full"
    );
    let ms = |hosts: &[HostBytes], name: &str| {
        let h = hosts.iter().find(|h| h.host == name);
        h.and_then(|h| h.stage_ms)
            .map_or("-".to_owned(), |ms| ms.to_string())
    };
    for (h, (links, total)) in delta_hosts.iter().zip(linked) {
        println!(
            "  {:<6} {:<8} {:>12} {:>14} {:>8.3}% {:>22} {:>26}",
            h.host,
            h.source,
            human(h.sent),
            human(h.whole),
            100.0 * h.sent as f64 / h.whole.max(1) as f64,
            format!("{links} of {total} files"),
            format!(
                "{}/{}/{}",
                ms(&fresh_hosts, &h.host),
                ms(&delta_hosts, &h.host),
                ms(&full_hosts, &h.host)
            )
        );
    }
}

/// One host of a deploy report.
struct HostBytes {
    host: String,
    source: String,
    sent: u64,
    whole: u64,
    /// The report's `stage_ms`: upload, extract (or clone, apply and verify), configure.
    stage_ms: Option<u64>,
}

/// The report's hosts; panics unless there is one per fleet host and each took its
/// release from `source` (with `delta_fallback`'s text when not), and for a `delta`, unless
/// it was sent at most a tenth of the whole artifact.
fn host_sources(
    report: &serde_json::Value,
    fleet: &Fleet,
    source: &str,
    what: &str,
) -> Vec<HostBytes> {
    let hosts = report["hosts"].as_array().unwrap_or_else(|| {
        panic!("{what}: no hosts in the report:\n{report:#}");
    });
    assert_eq!(
        hosts.len(),
        fleet.hosts().len(),
        "{what}: the report does not list every host"
    );
    hosts
        .iter()
        .map(|h| {
            let name = h["host"].as_str().unwrap_or("?").to_owned();
            let got = h["source"].as_str().unwrap_or("null");
            assert!(
                got == source,
                "{what}: {name} took its release from `{got}`, not `{source}` (delta_fallback: {})",
                h["delta_fallback"]
            );
            let host = HostBytes {
                host: name,
                source: got.to_owned(),
                sent: h["bytes_sent"].as_u64().unwrap_or(0),
                whole: h["artifact_bytes"].as_u64().unwrap_or(0),
                stage_ms: h["stage_ms"].as_u64(),
            };
            assert!(
                source != "delta" || host.sent.saturating_mul(10) <= host.whole,
                "{what}: sent {} bytes to {}, not far below the whole artifact ({} bytes)",
                host.sent,
                host.host,
                host.whole
            );
            host
        })
        .collect()
}

/// How many regular files of `host`'s [`SHIPIT_DIR`]`/current` are hard links (more than one
/// link), and how many there are.
fn linked_files(fleet: &Fleet, host: &str) -> (usize, usize) {
    let out = fleet.sh_ok(
        host,
        &format!(
            "cd \"$(readlink -f {SHIPIT_DIR}/current)\" && find . -type f -links +1 | wc -l && find . -type f | wc -l"
        ),
    );
    let n: Vec<usize> = out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

/// Runs `cmd` with stdout and stderr in `log` (a file, not a pipe: a ControlPersist master
/// that Ansible leaves behind would hold a pipe open); panics with the log's end on failure.
fn run_logged(mut cmd: Command, log: &Path, what: &str) {
    let file = std::fs::File::create(log).unwrap();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        panic!("{what} failed ({status}):\n{tail}");
    }
}

/// A directory of the fleet dir for one tool's files.
fn tool_dir(fleet: &Fleet, tool: &str) -> PathBuf {
    let dir = fleet.dir().join(tool);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// pyinfra's inventory: every host as root on 127.0.0.1:PORT with the fleet's key and strict
/// known_hosts, no agent, no other keys.
fn pyinfra_inventory(fleet: &Fleet) -> PathBuf {
    let mut inv = String::from("hosts = [\n");
    for h in fleet.hosts() {
        inv.push_str(&format!(
            "    ({:?}, {{\"ssh_hostname\": \"127.0.0.1\", \"ssh_port\": {}, \"ssh_user\": \"root\", \
             \"ssh_key\": {:?}, \"ssh_known_hosts_file\": {:?}, \
             \"ssh_strict_host_key_checking\": \"yes\", \"ssh_allow_agent\": False, \
             \"ssh_look_for_keys\": False}}),\n",
            h.name,
            h.port,
            fleet.client_key().display().to_string(),
            fleet.known_hosts().display().to_string(),
        ));
    }
    inv.push_str("]\n");
    let path = tool_dir(fleet, "pyinfra").join("inventory.py");
    std::fs::write(&path, inv).unwrap();
    path
}

/// pyinfra: upload the tar.gz (`files.put`), extract it into a new release and switch
/// `current` (`server.shell`).
fn pyinfra_deploy(fleet: &Fleet, bin: &Path, app: &Path) -> Duration {
    let dir = tool_dir(fleet, "pyinfra");
    let inventory = pyinfra_inventory(fleet);
    let id = release_id();
    let tarball = dir.join(format!("app-{id}.tar.gz"));
    let release = format!("{PYINFRA_DIR}/releases/{id}");
    let upload = format!("{PYINFRA_DIR}/upload-{id}.tar.gz");
    let extract = format!("mkdir -p {release} && tar -xzf {upload} -C {release} && rm {upload}");
    let switch = format!(
        "ln -sfn {release} {PYINFRA_DIR}/current.tmp && mv -T {PYINFRA_DIR}/current.tmp {PYINFRA_DIR}/current"
    );
    let deploy = dir.join("deploy.py");
    std::fs::write(
        &deploy,
        format!(
            "from pyinfra.operations import files, server\n\n\
             files.put(name=\"Upload the artifact\", src={:?}, dest={upload:?})\n\
             server.shell(name=\"Extract it into a new release\", commands=[{extract:?}])\n\
             server.shell(name=\"Switch current\", commands=[{switch:?}])\n",
            tarball.display().to_string()
        ),
    )
    .unwrap();
    let start = Instant::now();
    pack(app, &tarball);
    let mut cmd = clean_command(bin, &fleet.home());
    cmd.arg("-y").arg(&inventory).arg(&deploy).current_dir(&dir);
    run_logged(cmd, &dir.join("deploy.log"), "pyinfra deploy");
    let elapsed = start.elapsed();
    std::fs::remove_file(&tarball).unwrap();
    elapsed
}

/// `pyinfra inventory.py exec -- true`.
fn pyinfra_check(fleet: &Fleet, bin: &Path) -> Duration {
    let dir = tool_dir(fleet, "pyinfra");
    let inventory = pyinfra_inventory(fleet);
    let start = Instant::now();
    let mut cmd = clean_command(bin, &fleet.home());
    cmd.arg("-y")
        .arg(&inventory)
        .args(["exec", "--", "true"])
        .current_dir(&dir);
    run_logged(cmd, &dir.join("check.log"), "pyinfra exec");
    start.elapsed()
}

/// Ansible's config, inventory and playbook for the fleet; returns its directory.
fn ansible_setup(fleet: &Fleet) -> PathBuf {
    let dir = tool_dir(fleet, "ansible");
    let forks = fleet.hosts().len().min(50);
    std::fs::write(
        dir.join("ansible.cfg"),
        format!(
            "[defaults]\ninventory = {}\nforks = {forks}\nhost_key_checking = True\n\
             interpreter_python = /usr/bin/python3\nretry_files_enabled = False\n\
             [ssh_connection]\npipelining = True\n",
            dir.join("inventory.yml").display()
        ),
    )
    .unwrap();
    let mut inv = format!(
        "all:\n  vars:\n    ansible_user: root\n    ansible_ssh_private_key_file: {:?}\n    \
         ansible_ssh_common_args: \"-F /dev/null -o IdentitiesOnly=yes -o UserKnownHostsFile={} \
         -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes\"\n  hosts:\n",
        fleet.client_key().display().to_string(),
        fleet.known_hosts().display()
    );
    for h in fleet.hosts() {
        inv.push_str(&format!(
            "    {}:\n      ansible_host: 127.0.0.1\n      ansible_port: {}\n",
            h.name, h.port
        ));
    }
    std::fs::write(dir.join("inventory.yml"), inv).unwrap();
    std::fs::write(
        dir.join("deploy.yml"),
        format!(
            "- name: Deploy the bench artifact
  hosts: all
  gather_facts: false
  vars:
    release: \"{ANSIBLE_DIR}/releases/{{{{ release_id }}}}\"
  tasks:
    - name: Create the release directory
      ansible.builtin.file:
        path: \"{{{{ release }}}}\"
        state: directory
        mode: \"0755\"
    - name: Upload and extract the artifact
      ansible.builtin.unarchive:
        src: \"{{{{ tarball }}}}\"
        dest: \"{{{{ release }}}}\"
    - name: Switch current (a renamed temporary symlink)
      ansible.builtin.file:
        src: \"{{{{ release }}}}\"
        dest: \"{ANSIBLE_DIR}/current\"
        state: link
        force: true
"
        ),
    )
    .unwrap();
    dir
}

/// `program` (from the venv) with Ansible's config and a fresh ControlPath dir.
fn ansible_command(fleet: &Fleet, program: &Path, dir: &Path, control_dir: &Path) -> Command {
    let mut cmd = clean_command(program, &fleet.home());
    cmd.env("ANSIBLE_CONFIG", dir.join("ansible.cfg"))
        .env("ANSIBLE_SSH_CONTROL_PATH_DIR", control_dir)
        .current_dir(dir);
    cmd
}

/// Closes the ControlPersist masters a run left in `control_dir` (untimed).
fn close_masters(control_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(control_dir) else {
        return;
    };
    for e in entries.flatten() {
        let _ = Command::new("ssh")
            .args(["-F", "/dev/null", "-o"])
            .arg(format!("ControlPath={}", e.path().display()))
            .args(["-O", "exit", "bench"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = std::fs::remove_dir_all(control_dir);
}

/// `ansible-playbook deploy.yml`: `unarchive` from the controller into a new release, then
/// the `file` module's symlink switch.
fn ansible_deploy(fleet: &Fleet, bin: &Path, app: &Path) -> Duration {
    let dir = ansible_setup(fleet);
    let id = release_id();
    let tarball = dir.join(format!("app-{id}.tar.gz"));
    let control_dir = dir.join(format!("cp-{id}"));
    let mut cmd = ansible_command(fleet, bin, &dir, &control_dir);
    cmd.arg("deploy.yml")
        .args(["-e", &format!("release_id={id}"), "-e"])
        .arg(format!("tarball={}", tarball.display()));
    let start = Instant::now();
    pack(app, &tarball);
    run_logged(cmd, &dir.join("deploy.log"), "ansible-playbook");
    let elapsed = start.elapsed();
    close_masters(&control_dir);
    std::fs::remove_file(&tarball).unwrap();
    elapsed
}

/// `ansible all -m ping` (a Python round trip on every host).
fn ansible_check(fleet: &Fleet, bin: &Path) -> Duration {
    let dir = ansible_setup(fleet);
    let control_dir = dir.join(format!("cp-{}", release_id()));
    let mut cmd = ansible_command(fleet, bin, &dir, &control_dir);
    cmd.args(["all", "-m", "ansible.builtin.ping"]);
    let start = Instant::now();
    run_logged(cmd, &dir.join("check.log"), "ansible -m ping");
    let elapsed = start.elapsed();
    close_masters(&control_dir);
    elapsed
}
