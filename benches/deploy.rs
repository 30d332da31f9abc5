//! Deploy benchmark on a loopback fleet of real sshd hosts (the test fixture's), reported as
//! ratios against plain OpenSSH doing the same job in the same run:
//!
//!   bench/run.sh                               # 1, 10 and 50 hosts, 20 MB, then 300 MB on 1 host
//!   SHIPIT_BENCH_HOSTS=1,10 SHIPIT_BENCH_MB=20 cargo bench --bench deploy
//!   bash bench/setup-others.sh && bench/run.sh # also pyinfra and Ansible, same fleet, same run
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

#[path = "../tests/e2e/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{Fleet, clean_command};

/// Runs per scenario (best of) for pyinfra and Ansible, which are slower than the others.
const OTHER_RUNS: usize = 2;
/// Where each tool deploys on a host.
const BASELINE_DIR: &str = "/opt/bench";
const SHIPIT_DIR: &str = "/opt/bench-shipit";
const PYINFRA_DIR: &str = "/opt/bench-pyinfra";
const ANSIBLE_DIR: &str = "/opt/bench-ansible";

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
    let tools = Tools::find();
    println!(
        "shipit deploy benchmark: {mb} MB artifact on {hosts:?} hosts, then {big_mb} MB on 1 host"
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

/// The artifact directory, and the md5 of its files as `md5sum` prints them.
struct App {
    dir: PathBuf,
    files: Vec<String>,
    md5: String,
}

impl App {
    /// Files of base64 text from /dev/urandom: compresses about like real bundles (~75%).
    fn make(dir: &Path, name: &str, megabytes: usize) -> App {
        let app = dir.join(name);
        std::fs::create_dir_all(&app).unwrap();
        let count = megabytes.div_ceil(4).max(1);
        let script = format!(
            "for i in $(seq 1 {count}); do head -c 3145728 /dev/urandom | base64 > {}/part-$i.txt; done",
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
        let files: Vec<String> = (1..=count).map(|i| format!("part-{i}.txt")).collect();
        let out = Command::new("md5sum")
            .args(&files)
            .current_dir(&app)
            .output()
            .unwrap();
        assert!(out.status.success(), "md5sum of the artifact");
        App {
            dir: app,
            files,
            md5: String::from_utf8(out.stdout).unwrap(),
        }
    }

    /// Panics unless every host's `<base>/current` resolves to a `<base>/releases/<id>`
    /// directory holding the artifact's files with the same content.
    fn verify(&self, fleet: &Fleet, base: &str, who: &str) {
        let script = format!(
            "d=$(readlink -f {base}/current) || exit 1\n\
             case $d in {base}/releases/?*) ;; *) echo \"current is $d\" >&2; exit 1;; esac\n\
             cd \"$d\" && md5sum {}",
            self.files.join(" ")
        );
        for h in fleet.hosts() {
            let out = fleet.sh(&h.name, &script);
            assert!(
                out.status.success() && out.stdout == self.md5.as_bytes(),
                "{who} did not deploy the artifact to {}'s {base}/current: {}{}",
                h.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A fresh deploy: no earlier release to reuse.
fn clean(fleet: &Fleet, dir: &str) {
    for h in fleet.hosts() {
        fleet.sh_ok(&h.name, &format!("rm -rf {dir}"));
    }
}

fn best_of(n: usize, mut f: impl FnMut() -> (Duration, u64)) -> (Duration, u64) {
    (0..n).map(|_| f()).min_by_key(|(d, _)| *d).expect("n > 0")
}

fn best_time(n: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..n).map(|_| f()).min().expect("n > 0")
}

/// A new release id: nanoseconds since the epoch.
fn release_id() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string()
}

/// Plain OpenSSH doing the same job, every host in parallel, one multiplexed connection per
/// host (ControlMaster): connect, `tar -czf - | ssh tar -x` into a new release directory,
/// switch `current` with a renamed symlink, disconnect.
fn baseline(fleet: &Fleet, app: &Path) -> (Duration, u64) {
    baseline_from(fleet, &format!("tar -czf - -C {} .", app.display()))
}

/// The baseline with `source` (a shell command) writing the tar.gz stream for each host.
fn baseline_from(fleet: &Fleet, source: &str) -> (Duration, u64) {
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
            let extract = format!("r={BASELINE_DIR}/releases/$(date +%s%N) && mkdir -p $r && tar -xzf - -C $r && echo $r > {BASELINE_DIR}/.last");
            let switch = format!("ln -sfn $(cat {BASELINE_DIR}/.last) {BASELINE_DIR}/current.tmp && mv -T {BASELINE_DIR}/current.tmp {BASELINE_DIR}/current");
            let script = format!(
                "{} && {source} | {} && {} ; {}",
                ssh("-o ControlMaster=yes -o ControlPersist=60 -fN", ""),
                ssh("", &extract),
                ssh("", &switch),
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

/// One `ssh -o BatchMode=yes host true` per host, all in parallel.
fn ssh_true(fleet: &Fleet) -> (Duration, u64) {
    let start = Instant::now();
    let children: Vec<_> = fleet
        .hosts()
        .iter()
        .map(|h| {
            fleet
                .ssh_command(&h.name)
                .args(["-o", "BatchMode=yes", "true"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "ssh true failed");
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

/// shipit's inventory for the fleet, deploying `app` to [`SHIPIT_DIR`].
fn shipit_inventory(fleet: &Fleet, app: &Path) -> PathBuf {
    let mut inv = format!(
        "[app]\nname = \"bench\"\ndeploy_to = \"{SHIPIT_DIR}\"\nkeep_releases = 3\n[ssh]\nidentity = \"{}\"\nknown_hosts = \"{}\"\n[artifact]\npath = \"{}\"\n[rollout]\nwaves = [\"100%\"]\n",
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
    path
}

fn shipit_deploy(fleet: &Fleet, app: &Path) -> (Duration, u64) {
    run_shipit(fleet, app, "deploy")
}

fn shipit_check(fleet: &Fleet, app: &Path) -> (Duration, u64) {
    run_shipit(fleet, app, "check")
}

/// `shipit <command> bench` on the whole fleet: time and peak RSS.
// The child is reaped by wait4 (for its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn run_shipit(fleet: &Fleet, app: &Path, command: &str) -> (Duration, u64) {
    let path = shipit_inventory(fleet, app);
    let start = Instant::now();
    let child = fleet
        .shipit()
        .args([command, "bench", "-i"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (status, rss) = wait_with_rss(child.id());
    let elapsed = start.elapsed();
    assert!(status == 0, "shipit {command} failed with {status}");
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

/// Packs the artifact directory into one tar.gz on the controller (gzip -6, tar's default).
fn pack(app: &Path, tarball: &Path) {
    let status = Command::new("tar")
        .arg("-czf")
        .arg(tarball)
        .arg("-C")
        .arg(app)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar -czf {}", tarball.display());
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
