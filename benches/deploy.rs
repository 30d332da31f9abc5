//! Deploy benchmark on a loopback fleet of real sshd hosts (the test fixture's), reported as
//! ratios against plain OpenSSH doing the same job in the same run:
//!
//!   bench/run.sh                               # 1, 10 and 50 hosts, 20 MB, then 300 MB on 1 host
//!   SHIPIT_BENCH_HOSTS=1,10 SHIPIT_BENCH_MB=20 cargo bench --bench deploy
//!
//! The job: upload an artifact, extract it to `releases/<id>`, switch `current`. Baseline:
//! plain OpenSSH with one ControlMaster connection per host, `tar -czf - dir | ssh host 'tar
//! -x'` into a new directory, then the same renamed-symlink switch, every host in parallel.
//! Client peak RSS is measured with wait4(2).

#[path = "../tests/e2e/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Fleet;

fn main() {
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
    println!(
        "shipit deploy benchmark: {mb} MB artifact on {hosts:?} hosts, then {big_mb} MB on 1 host"
    );
    println!(
        "{:<28} {:>9} {:>9} {:>7} {:>12}",
        "scenario", "openssh", "shipit", "ratio", "shipit RSS"
    );
    for &n in &hosts {
        let fleet = Fleet::start(n);
        let app = make_app(fleet.dir(), "app", mb);
        let (base, _) = best_of(3, || baseline(&fleet, &app));
        let (ours, rss) = best_of(3, || {
            clean(&fleet);
            shipit_deploy(&fleet, &app)
        });
        report(&format!("{mb} MB to {n} hosts"), base, ours, rss);
        // Same artifact again: nothing should be uploaded.
        let (again, rss) = best_of(3, || shipit_deploy(&fleet, &app));
        report(&format!("{mb} MB redeploy to {n} hosts"), base, again, rss);
    }
    let fleet = Fleet::start(1);
    let app = make_app(fleet.dir(), "big", big_mb);
    let (base, _) = best_of(1, || baseline(&fleet, &app));
    let (ours, rss) = best_of(1, || shipit_deploy(&fleet, &app));
    report(&format!("{big_mb} MB to 1 host"), base, ours, rss);
}

/// A fresh deploy: no earlier release to reuse.
fn clean(fleet: &Fleet) {
    for h in fleet.hosts() {
        fleet.sh_ok(&h.name, "rm -rf /opt/bench-shipit");
    }
}

fn report(name: &str, base: Duration, ours: Duration, rss_kb: u64) {
    println!(
        "{name:<28} {:>8.2}s {:>8.2}s {:>6.2}x {:>9} MB",
        base.as_secs_f64(),
        ours.as_secs_f64(),
        ours.as_secs_f64() / base.as_secs_f64(),
        rss_kb / 1024
    );
}

fn best_of(n: usize, mut f: impl FnMut() -> (Duration, u64)) -> (Duration, u64) {
    (0..n).map(|_| f()).min_by_key(|(d, _)| *d).expect("n > 0")
}

/// Files of base64 text from /dev/urandom: compresses about like real bundles (~75%).
fn make_app(dir: &Path, name: &str, megabytes: usize) -> PathBuf {
    let app = dir.join(name);
    std::fs::create_dir_all(&app).unwrap();
    let files = megabytes.div_ceil(4).max(1);
    let script = format!(
        "for i in $(seq 1 {files}); do head -c 3145728 /dev/urandom | base64 > {}/part-$i.txt; done",
        app.display()
    );
    assert!(
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .status()
            .unwrap()
            .success()
    );
    app
}

/// Plain OpenSSH doing the same job, every host in parallel, one multiplexed connection per
/// host (ControlMaster): connect, `tar -czf - | ssh tar -x` into a new release directory,
/// switch `current` with a renamed symlink, disconnect.
fn baseline(fleet: &Fleet, app: &Path) -> (Duration, u64) {
    let start = Instant::now();
    let children: Vec<_> = fleet
        .hosts()
        .iter()
        .map(|h| {
            let sock = fleet.dir().join(format!("cm-{}", h.name));
            let ssh = |extra: &str, remote: &str| {
                let mut cmd = fleet.ssh_command(&h.name);
                cmd.args(["-o", &format!("ControlPath={}", sock.display())]);
                for word in extra.split_whitespace() {
                    cmd.arg(word);
                }
                if !remote.is_empty() {
                    cmd.arg(remote);
                }
                shell_words(&cmd)
            };
            let extract = "r=/opt/bench/releases/$(date +%s%N) && mkdir -p $r && tar -xzf - -C $r && echo $r > /opt/bench/.last";
            let switch = "ln -sfn $(cat /opt/bench/.last) /opt/bench/current.tmp && mv -T /opt/bench/current.tmp /opt/bench/current";
            let script = format!(
                "{} && tar -czf - -C {} . | {} && {} ; {}",
                ssh("-o ControlMaster=yes -o ControlPersist=60 -fN", ""),
                app.display(),
                ssh("", extract),
                ssh("", switch),
                ssh("-O exit", "")
            );
            Command::new("sh").arg("-c").arg(script).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "baseline failed");
    }
    (start.elapsed(), 0)
}

fn shell_words(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    let env: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    let quoted: Vec<String> = env
        .into_iter()
        .chain(words)
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect();
    format!("env -i {}", quoted.join(" "))
}

// The child is reaped by wait4 (for its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn shipit_deploy(fleet: &Fleet, app: &Path) -> (Duration, u64) {
    let mut inv = format!(
        "[app]\nname = \"bench\"\ndeploy_to = \"/opt/bench-shipit\"\nkeep_releases = 3\n[ssh]\nidentity = \"{}\"\nknown_hosts = \"{}\"\n[artifact]\npath = \"{}\"\n[rollout]\nwaves = [\"100%\"]\n",
        fleet.client_key().display(),
        fleet.known_hosts().display(),
        app.display()
    );
    for h in fleet.hosts() {
        inv.push_str(&format!(
            "[[hosts]]\nname = \"{}\"\naddress = \"127.0.0.1\"\nport = {}\n",
            h.name, h.port
        ));
    }
    let path = fleet.dir().join("bench.toml");
    std::fs::write(&path, inv).unwrap();
    let start = Instant::now();
    let child = fleet
        .shipit()
        .args(["deploy", "bench", "-i"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (status, rss) = wait_with_rss(child.id());
    let elapsed = start.elapsed();
    assert!(status == 0, "shipit deploy failed with {status}");
    (elapsed, rss)
}

/// Waits for `pid`; returns its exit status and peak RSS in KiB.
fn wait_with_rss(pid: u32) -> (i32, u64) {
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid as i32, "wait4");
    (libc::WEXITSTATUS(status), usage.ru_maxrss as u64)
}
