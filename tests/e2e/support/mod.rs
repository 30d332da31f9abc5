//! End-to-end fixture: a throw-away fleet of real OpenSSH hosts on this machine.
//!
//! [`Fleet::start`] runs one real `/usr/sbin/sshd` per host ("h1", "h2", ...), each on its own
//! free 127.0.0.1 port and each inside its own mount, UTS and PID namespaces
//! (`unshare --mount --uts --pid --fork --kill-child --mount-proc`), so a deploy can write
//! `/opt/<app>`, `/etc/<app>.env`, `/etc/systemd/system/x.service`, `/var/www`, ... on h1
//! without h2 or the real machine seeing it. The fixture owns, per fleet, exactly one
//! temporary directory ([`Fleet::dir`]) and the processes it started; it never touches the
//! machine's `/etc/ssh`, `/root/.ssh` or any other real directory. With
//! [`FleetOptions::wan`] each host lives in its own network namespace instead, at its own
//! address behind shaped links (see [`wan`]); everything else is the same.
//!
//! Layout of the fleet dir:
//!
//! ```text
//! id_ed25519, id_ed25519.pub   client key (no passphrase), authorized on every host
//! authorized_keys              shared by all hosts' sshd (AuthorizedKeysFile)
//! known_hosts                  "[127.0.0.1]:PORT TYPE BASE64" for every host key
//!                              (the host's own address with `wan`)
//! ssh_config                   "Host hN" entries for `ssh -F`
//! home/                        HOME for commands run by tests (empty, no ~/.ssh)
//! hN/                          one host: sshd_config, ssh_host_*_key, sshd.log,
//!                              upper/ + work/ (overlayfs: everything the host wrote),
//!                              tmp/ (its /tmp), root/ (its /root, copied from /etc/skel)
//! ```
//!
//! What a host sees (set up by [`HOST_INIT`] before it execs sshd):
//! - copy-on-write overlays over `/etc /opt /srv /home /usr /var`. `/usr` and `/var` are
//!   overlaid as a whole (not just `/usr/local`, `/var/lib`, `/var/log`, `/var/www`,
//!   `/var/backups`): that covers every one of those, lets `/var/www` exist in a host although
//!   it does not exist on this machine (creating it must not write into the real `/var`),
//!   and keeps a deploy that installs into `/usr/bin` off the real machine.
//! - a private `/tmp` (mode 1777), a tmpfs `/run` (with `/run/sshd`, `/run/lock`) and a fresh
//!   `/root` from `/etc/skel`: the machine's own `/root/.bashrc` runs `pyenv init`, which made
//!   every non-interactive ssh command slow or hang.
//! - the fleet dir, read-only, at [`FLEET_DIR_IN_HOST`]: sshd needs its config, host keys and
//!   `authorized_keys`, but the fleet dir normally lives under the real `/tmp`, which the
//!   private `/tmp` hides. Mounting it elsewhere keeps the host's `/tmp` empty and the keys
//!   safe from whatever a test runs on the host.
//! - sshd is PID 1 of the host: when it dies, the kernel kills everything a deploy started.
//! - a guarded `rm` (`guarded_rm.pl`) as `/usr/bin/rm`: it refuses, and logs, any operand
//!   that resolves outside the directories a deploy may delete in (`/opt`, `/srv`, `/tmp`,
//!   `/etc/systemd`, `*.env*` under `/etc`, ...; a test may add roots to
//!   `/etc/shipit-e2e-rm-allow` inside the host). Dropping the [`Fleet`] fails the test when
//!   any host refused something, so a host script that would delete outside its tree fails a
//!   test instead of damaging the host or the machine. Hostile tests put their victims in
//!   `/var/victim-*`: private to the host (its `/var` is an overlay; `/` is the machine's)
//!   and outside every directory a deploy may delete in.
//!
//! `sshd_config` keeps OpenSSH's default `MaxSessions 10` on purpose, so tests see the limit a
//! real server has (a deployer multiplexing more than 10 channels on one connection must cope).
//!
//! Lifetime: dropping the [`Fleet`] (also during a panic's unwind) stops every sshd, reaps
//! every process it started and then deletes the fleet dir. Each `unshare` runs in its own
//! process group, so a Ctrl-C at the terminal does not kill hosts in the middle of a test;
//! instead every host holds the read end of a pipe whose write end only the test process owns,
//! and shuts itself down when that pipe closes. So hosts die with the test process even when
//! it is killed without unwinding (Ctrl-C, SIGKILL, a CI timeout): there is no libc crate for
//! `PR_SET_PDEATHSIG`, and this needs none.
//!
//! Needs: root, OpenSSH server and client, util-linux (`unshare`, `nsenter`), overlayfs.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

pub mod docker;
pub mod load;
pub mod postgres;
pub mod registry;
pub mod systemd;
pub mod wan;

/// Where a host sees the fleet dir (read-only).
pub const FLEET_DIR_IN_HOST: &str = "/run/shipit-e2e";

/// `PATH` for every command the fixture starts: nothing from the developer's shell
/// (pyenv, cargo, ...) should leak into hosts or into the program under test.
pub const CLEAN_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

const SSHD: &str = "/usr/sbin/sshd";
const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

/// Real directories each host gets a private copy-on-write view of.
const OVERLAID_DIRS: &[&str] = &["/etc", "/opt", "/srv", "/home", "/usr", "/var"];

/// How long one sshd may take to answer with its host key.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Another process may take a port between `free_port` and sshd's bind; try new ports.
const BIND_ATTEMPTS: usize = 5;
/// How long a stopping host may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Runs as PID 1 of a new host's namespaces (`sh -c HOST_INIT init NAME HOSTDIR FLEETDIR`,
/// with `@CONST@` replaced by the constants above), builds its filesystem view, then becomes
/// sshd. `set -e`: any failed step aborts the start, and its error lands in sshd.log, which
/// the panic shows.
const HOST_INIT: &str = r#"set -eu
name=$1 hostdir=$2 fleetdir=$3
hostname "$name"
# Nothing mounted below may propagate to the real machine.
mount --make-rprivate /
mkdir -p "$hostdir/tmp" "$hostdir/root"
chmod 1777 "$hostdir/tmp"
cp -a /etc/skel/. "$hostdir/root/"
chmod 700 "$hostdir/root"
for d in @OVERLAID_DIRS@; do
  mkdir -p "$hostdir/upper$d" "$hostdir/work$d"
  mount -t overlay "shipit-e2e-$name" \
    -o "lowerdir=$d,upperdir=$hostdir/upper$d,workdir=$hostdir/work$d" "$d"
done
# Usual server dirs; these land in the host's upper dir, never on the machine.
mkdir -p /var/www /var/backups /usr/local /srv
# The guarded rm (see guarded_rm.pl) replaces the host's /usr/bin/rm, the real one kept aside.
mkdir -p /usr/lib/shipit-e2e
cp /usr/bin/rm /usr/lib/shipit-e2e/rm
cp "$fleetdir/guarded-rm" /usr/bin/rm
chmod 755 /usr/bin/rm
mount -t tmpfs -o mode=755 "shipit-e2e-$name-run" /run
mkdir -p /run/sshd /run/lock "@FLEET_DIR_IN_HOST@"
chmod 1777 /run/lock
mount --bind "$hostdir/root" /root
mount --bind "$fleetdir" "@FLEET_DIR_IN_HOST@"
mount -o remount,bind,ro "@FLEET_DIR_IN_HOST@"
# Last: the fleet dir, and so every $hostdir path, is usually under the real /tmp.
mount --bind "$hostdir/tmp" /tmp
echo "$name" >/etc/hostname
# Watchdog: stdin is a pipe only the test process writes to (never does); EOF means the test
# process is gone, with or without running Drop. sshd handles SIGTERM, so PID 1 gets it.
# Via fd 3: sh gives a background job /dev/null as its stdin, even with `<&0`.
exec 3<&0
( while read -r _ <&3; do :; done; kill -TERM 1 ) &
exec @SSHD@ -D -e -f "@FLEET_DIR_IN_HOST@/$name/sshd_config" </dev/null 3<&-
"#;

/// The guarded `rm` every host runs instead of its own (installed by [`HOST_INIT`]).
const GUARDED_RM: &str = include_str!("guarded_rm.pl");
/// Where a host logs the operands its guarded `rm` refused (in its overlay).
const REFUSED_RM_LOG: &str = "upper/var/log/shipit-e2e-rm.log";
/// Prints and clears the guarded `rm`'s log, inside a host (its overlay must not be
/// changed from outside while mounted).
const TAKE_REFUSED_RM: &str =
    "f=/var/log/shipit-e2e-rm.log; if [ -f $f ]; then cat $f && /usr/lib/shipit-e2e/rm -f $f; fi";

/// Options for [`Fleet::start_with`].
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Number of hosts, named "h1".."hN".
    pub hosts: usize,
    /// Host key types every host serves: any of "ed25519", "rsa", "ecdsa".
    pub host_key_types: Vec<&'static str>,
    /// Certify every host key with this CA (`ssh-keygen -s`), so hosts also offer a host
    /// certificate.
    pub host_ca: Option<HostCa>,
    /// Put every host in its own network namespace behind shaped links (see [`wan`]), at
    /// its own address on port [`wan::SSH_PORT`]. `None`: every host on 127.0.0.1 with a
    /// port of its own.
    pub wan: Option<wan::Links>,
}

/// A certificate authority for host keys: its private key file, the principals
/// (comma-separated, as `ssh-keygen -n` takes them) each certificate names and its validity
/// (`ssh-keygen -V`, e.g. `-5m:+1h`).
#[derive(Clone, Debug)]
pub struct HostCa {
    pub key: PathBuf,
    pub principals: String,
    pub validity: String,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            hosts: 1,
            host_key_types: vec!["ed25519"],
            host_ca: None,
            wan: None,
        }
    }
}

/// One running test host.
#[derive(Clone, Debug)]
pub struct Host {
    /// "h1", "h2", ...; also its hostname.
    pub name: String,
    /// Its sshd listens on address:port.
    pub address: Ipv4Addr,
    pub port: u16,
    /// Its public host keys as "TYPE BASE64" (no comment), one per requested key type.
    pub host_keys: Vec<String>,
    /// This host's fixture dir (`<fleet dir>/<name>`): sshd_config, keys, sshd.log, and in
    /// `upper/` everything the host wrote to its overlaid directories.
    pub dir: PathBuf,
}

impl Host {
    /// The host's sshd log (sshd runs with `-e`, `LogLevel VERBOSE`).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// What the host's guarded `rm` refused to remove, one line per operand (empty: nothing).
    pub fn refused_rm(&self) -> String {
        fs::read_to_string(self.dir.join(REFUSED_RM_LOG)).unwrap_or_default()
    }
}

/// A fleet of running hosts; dropping it stops them and deletes [`Fleet::dir`].
pub struct Fleet {
    hosts: Vec<Host>,
    // Same order as `hosts`. Declared before `dir`, and stopped in `Drop`, so every process
    // and mount is gone before the directory is removed.
    procs: Vec<HostProcess>,
    // After `procs`: namespaces are deleted once nothing runs in them.
    network: Option<wan::Network>,
    dir: tempfile::TempDir,
}

impl Fleet {
    /// Starts `n` hosts with an ed25519 host key each.
    /// Panics with the sshd.log content if a host fails to come up.
    pub fn start(n: usize) -> Fleet {
        Fleet::start_with(FleetOptions {
            hosts: n,
            ..FleetOptions::default()
        })
    }

    /// Starts `opts.hosts` hosts in parallel.
    /// Panics with the sshd.log content if a host fails to come up.
    pub fn start_with(opts: FleetOptions) -> Fleet {
        assert!(opts.hosts > 0, "a fleet needs at least one host");
        assert!(
            !opts.host_key_types.is_empty(),
            "a host needs at least one host key type"
        );
        for t in &opts.host_key_types {
            assert!(
                ["ed25519", "rsa", "ecdsa"].contains(t),
                "unsupported host key type {t:?}"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("shipit-e2e-")
            .tempdir()
            .expect("create the fleet temp dir");
        let fleet_dir = dir.path().to_path_buf();
        // An overlay's upper dir must not lie inside its lower dir.
        for d in OVERLAID_DIRS {
            assert!(
                !fleet_dir.starts_with(d),
                "the fleet dir {} is under {d}, which hosts overlay; set TMPDIR elsewhere",
                fleet_dir.display()
            );
        }
        fs::create_dir(fleet_dir.join("home")).expect("create home dir");
        fs::write(fleet_dir.join("guarded-rm"), GUARDED_RM).expect("write the guarded rm");
        let client_key = fleet_dir.join("id_ed25519");
        keygen("ed25519", &client_key, "shipit-e2e-client");
        fs::copy(
            client_key.with_extension("pub"),
            fleet_dir.join("authorized_keys"),
        )
        .expect("write authorized_keys");

        // Before the hosts: if one fails to start, the others (`procs` below) are stopped
        // before the network is deleted.
        let network = opts
            .wan
            .as_ref()
            .map(|links| wan::Network::create(links, opts.hosts));
        let names: Vec<String> = (1..=opts.hosts).map(|i| format!("h{i}")).collect();
        let results: Vec<Result<(Host, HostProcess), String>> = thread::scope(|s| {
            let workers: Vec<_> = names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let (fleet_dir, types, ca) =
                        (&fleet_dir, &opts.host_key_types, opts.host_ca.as_ref());
                    let net = network.as_ref().map(|n| NetworkPlace {
                        netns: n.host_netns(i),
                        address: n.host_address(i),
                    });
                    s.spawn(move || start_host(fleet_dir, name, types, ca, net.as_ref()))
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("host start thread panicked"))
                .collect()
        });
        let mut hosts = Vec::new();
        let mut procs = Vec::new();
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok((host, proc)) => {
                    hosts.push(host);
                    procs.push(proc);
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            // The hosts that did start are stopped when `procs` drops, before `dir`.
            panic!("fleet failed to start:\n{}", errors.join("\n"));
        }

        let fleet = Fleet {
            hosts,
            procs,
            network,
            dir,
        };
        fleet.write_client_files();
        fleet
    }

    fn write_client_files(&self) {
        let mut known_hosts = String::new();
        let mut ssh_config = String::new();
        for h in &self.hosts {
            for key in &h.host_keys {
                known_hosts.push_str(&format!("[{}]:{} {key}\n", h.address, h.port));
            }
            ssh_config.push_str(&format!(
                "Host {}\n  HostName {}\n  Port {}\n",
                h.name, h.address, h.port
            ));
        }
        ssh_config.push_str(&format!(
            "Host *\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
             UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  \
             StrictHostKeyChecking yes\n  BatchMode yes\n",
            self.client_key().display(),
            self.known_hosts().display()
        ));
        fs::write(self.known_hosts(), known_hosts).expect("write known_hosts");
        fs::write(self.ssh_config(), ssh_config).expect("write ssh_config");
    }

    /// All hosts, in order h1..hN.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host called `name`; panics if there is none.
    pub fn host(&self, name: &str) -> &Host {
        &self.hosts[self.index(name)]
    }

    fn index(&self, name: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.name == name)
            .unwrap_or_else(|| {
                let names: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
                panic!("no host {name:?} in this fleet (hosts: {names:?})")
            })
    }

    /// The shaped network the hosts live in, when started with [`FleetOptions::wan`].
    pub fn network(&self) -> Option<&wan::Network> {
        self.network.as_ref()
    }

    /// The fleet's temp dir; tests may write their own files here (deleted with the fleet).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Private key (ed25519, no passphrase) authorized for root on every host.
    pub fn client_key(&self) -> PathBuf {
        self.dir().join("id_ed25519")
    }

    /// known_hosts with every host key of every host, as `[ADDRESS]:PORT TYPE BASE64`.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir().join("known_hosts")
    }

    /// An OpenSSH client config: `ssh -F <this> h1 CMD` logs in as root with strict host keys.
    pub fn ssh_config(&self) -> PathBuf {
        self.dir().join("ssh_config")
    }

    /// An empty directory to use as `HOME` for client programs (no `~/.ssh`, no dotfiles).
    pub fn home(&self) -> PathBuf {
        self.dir().join("home")
    }

    /// Lets `pubkey_line` ("TYPE BASE64 [comment]") log in as root on every host.
    /// Appends in place: each host sees the file through a bind mount of the fleet dir, and
    /// sshd reads it on every login.
    pub fn authorize_key(&self, pubkey_line: &str) {
        let mut f = OpenOptions::new()
            .append(true)
            .open(self.dir().join("authorized_keys"))
            .expect("open authorized_keys");
        writeln!(f, "{}", pubkey_line.trim_end()).expect("append to authorized_keys");
    }

    /// Runs `sh -c script` as root inside `host`'s mount, UTS and PID namespaces (not over
    /// ssh), with a clean environment and stdin from /dev/null.
    pub fn sh(&self, host: &str, script: &str) -> Output {
        let pid = self.procs[self.index(host)]
            .live_sshd_pid()
            .unwrap_or_else(|| panic!("host {host} is not running"));
        Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "-u", "-p", "--wd=/", "--"])
            .args(["sh", "-c", script])
            .env_clear()
            .env("PATH", CLEAN_PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// [`Fleet::sh`], asserting success; returns stdout.
    pub fn sh_ok(&self, host: &str, script: &str) -> String {
        let out = self.sh(host, script);
        assert_success(&out, &format!("on {host} (nsenter): {script}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Takes what `host`'s guarded `rm` refused so far (so a test that provokes a refusal
    /// on purpose can assert it without failing on drop).
    pub fn take_refused_rm(&self, host: &str) -> String {
        self.sh_ok(host, TAKE_REFUSED_RM)
    }

    /// Takes `program` (found on the host's PATH) away from `host`, with the host's real
    /// `rm`: the guarded one refuses anything under `/usr/bin`, as it should for a deploy.
    pub fn remove_program(&self, host: &str, program: &str) {
        let script = format!(
            "p=$(command -v {program}) && /usr/lib/shipit-e2e/rm -f \"$p\" && ! command -v {program}"
        );
        self.sh_ok(host, &script);
    }

    /// An OpenSSH `ssh` command logging in to `host` as root with the fleet's client key and
    /// strict host key checking, ignoring every config and key of this machine. Append the
    /// remote command with `.arg(...)`.
    pub fn ssh_command(&self, host: &str) -> Command {
        let h = self.host(host);
        let mut cmd = clean_command("ssh", &self.home());
        cmd.args(["-F", "/dev/null", "-i"])
            .arg(self.client_key())
            .args(["-o", "IdentitiesOnly=yes", "-o"])
            .arg(format!(
                "UserKnownHostsFile={}",
                self.known_hosts().display()
            ))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                "-p",
                &h.port.to_string(),
            ])
            .arg(format!("root@{}", h.address))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `script` on `host` over real ssh (see [`Fleet::ssh_command`]).
    pub fn ssh(&self, host: &str, script: &str) -> Output {
        self.ssh_command(host)
            .arg(script)
            .output()
            .expect("run ssh")
    }

    /// [`Fleet::ssh`], asserting success; returns stdout.
    pub fn ssh_ok(&self, host: &str, script: &str) -> String {
        let out = self.ssh(host, script);
        assert_success(&out, &format!("on {host} (ssh): {script}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// PID (in this machine's PID namespace) of the host's sshd, which is PID 1 of the host.
    /// Still returns the old PID after the host stopped.
    pub fn sshd_pid(&self, host: &str) -> u32 {
        self.procs[self.index(host)].sshd_pid
    }

    /// Kills `host` at once, as in a power cut: SIGKILL to its sshd (PID 1 of the host, so
    /// everything running in it dies too), then its `unshare` exits and is reaped (SIGKILLed
    /// if it does not). Killing `unshare` first would orphan the sshd to this machine's PID 1.
    /// When this returns, the port refuses connections; other hosts keep running.
    pub fn stop_host(&self, host: &str) {
        let p = &self.procs[self.index(host)];
        p.signal("KILL");
        p.reap(STOP_GRACE);
    }

    /// The shipit binary with a clean environment and `HOME` = [`Fleet::home`].
    pub fn shipit(&self) -> Command {
        shipit_command(&self.home())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let refused: Vec<String> = self
            .hosts
            .iter()
            .map(|h| (h, h.refused_rm()))
            .filter(|(_, log)| !log.is_empty())
            .map(|(h, log)| format!("{}:\n{log}", h.name))
            .collect();
        if thread::panicking() {
            // The fleet dir, logs included, is deleted right after this; show what the
            // hosts' sshd saw, next to the failed test's output.
            for h in &self.hosts {
                let log = h.log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                // eprint!, not io::stderr(): the test harness captures only the former, so
                // the log shows up with the failed test.
                eprint!(
                    "--- {} sshd.log (last {} lines) ---\n{}\n",
                    h.name,
                    tail.len(),
                    tail.join("\n")
                );
            }
        }
        // All hosts at once: TERM everyone, then wait.
        for p in &self.procs {
            p.signal("TERM");
        }
        for p in &self.procs {
            p.reap(STOP_GRACE);
        }
        // After the hosts are stopped, so the fleet is cleaned up either way.
        if !refused.is_empty() && !thread::panicking() {
            panic!(
                "a host's guarded rm refused to delete outside the allowed directories:\n{}",
                refused.join("\n")
            );
        }
    }
}

/// The `unshare` process of one host, and what is needed to stop it.
struct HostProcess {
    /// `unshare`; its only child is the host's sshd.
    child: Mutex<Child>,
    /// Keeps the host's watchdog pipe open; never written.
    _lifeline: ChildStdin,
    sshd_pid: u32,
}

impl HostProcess {
    fn lock(&self) -> MutexGuard<'_, Child> {
        // Drop must never panic, so a poisoned lock is still used.
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sshd PID if the host is still running. Read from `unshare`'s children, not the
    /// cached PID, so a dead sshd's recycled PID is never mistaken for it.
    fn live_sshd_pid(&self) -> Option<u32> {
        let mut child = self.lock();
        if !matches!(child.try_wait(), Ok(None)) {
            return None;
        }
        children_of(child.id()).into_iter().next()
    }

    /// Sends `sig` to the sshd. `unshare --fork` ignores SIGTERM while it waits, so the
    /// signal must go to its child; `unshare` then reaps it and exits.
    fn signal(&self, sig: &str) {
        if let Some(pid) = self.live_sshd_pid() {
            kill(sig, pid);
        }
    }

    /// Waits up to `grace` for `unshare` to exit, then SIGKILLs it (`--kill-child` takes the
    /// sshd with it) and reaps it. Never panics: it runs in Drop.
    fn reap(&self, grace: Duration) {
        let mut child = self.lock();
        let deadline = Instant::now() + grace;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if matches!(child.try_wait(), Ok(None)) {
            for pid in children_of(child.id()) {
                kill("KILL", pid);
            }
            let _ = child.kill();
        }
        let _ = child.wait();
        // The sshd exited before `unshare`, unless `unshare` was killed first: then wait
        // (bounded) until the kernel has killed the sshd too, so its port is closed.
        let gone_by = Instant::now() + grace;
        while is_alive(self.sshd_pid) && Instant::now() < gone_by {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for HostProcess {
    /// Only does work for hosts not stopped by [`Fleet`]'s Drop (a fleet that failed to start,
    /// a retried bind); reaping an already reaped host is a no-op.
    fn drop(&mut self) {
        self.signal("TERM");
        self.reap(STOP_GRACE);
    }
}

enum Startup {
    Ready(HostProcess),
    /// sshd died because its port was taken in the meantime.
    PortTaken,
    Failed(String),
}

/// Where a host of a shaped network listens: inside its own network namespace.
struct NetworkPlace {
    netns: PathBuf,
    address: Ipv4Addr,
}

/// Generates the host's keys, then starts it on a fresh port until one sticks (on
/// [`wan::SSH_PORT`] of its own address in a shaped network, where nobody else can bind).
fn start_host(
    fleet_dir: &Path,
    name: &str,
    key_types: &[&'static str],
    ca: Option<&HostCa>,
    net: Option<&NetworkPlace>,
) -> Result<(Host, HostProcess), String> {
    let dir = fleet_dir.join(name);
    fs::create_dir(&dir).map_err(|e| format!("{name}: create {}: {e}", dir.display()))?;
    let mut host_keys = Vec::new();
    for t in key_types {
        let key = dir.join(format!("ssh_host_{t}_key"));
        keygen(t, &key, name);
        let public = fs::read_to_string(key.with_extension("pub")).expect("read host key");
        let fields: Vec<&str> = public.split_whitespace().take(2).collect();
        host_keys.push(fields.join(" "));
        if let Some(ca) = ca {
            certify(ca, &key.with_extension("pub"), name);
        }
    }
    let address = net.map_or(Ipv4Addr::LOCALHOST, |n| n.address);
    for attempt in 0..BIND_ATTEMPTS {
        if attempt > 0 {
            forget_attempt(&dir).map_err(|e| host_failure(name, &dir, &e))?;
        }
        let port = match net {
            Some(_) => wan::SSH_PORT,
            None => free_port(),
        };
        write_sshd_config(&dir, name, address, port, key_types, ca.is_some());
        let netns = net.map(|n| n.netns.as_path());
        match spawn_host(fleet_dir, &dir, name, (address, port), netns, &host_keys) {
            Startup::Ready(proc) => {
                let host = Host {
                    name: name.to_string(),
                    address,
                    port,
                    host_keys,
                    dir,
                };
                return Ok((host, proc));
            }
            Startup::PortTaken => continue,
            Startup::Failed(why) => return Err(host_failure(name, &dir, &why)),
        }
    }
    Err(host_failure(
        name,
        &dir,
        &format!("its port was taken {BIND_ATTEMPTS} times in a row"),
    ))
}

/// Deletes what a failed start attempt of a host wrote (its overlays' upper and work dirs,
/// its /tmp and /root), so the next attempt starts from the machine's files again: an upper
/// dir kept from the attempt before would give [`HOST_INIT`] the guarded `rm` as the real
/// one to keep aside, and every `rm` on that host would then exec itself forever.
fn forget_attempt(dir: &Path) -> Result<(), String> {
    for sub in ["upper", "work", "tmp", "root"] {
        let path = dir.join(sub);
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot delete {}: {e}", path.display())),
        }
    }
    Ok(())
}

fn host_failure(name: &str, dir: &Path, why: &str) -> String {
    let log = fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
    format!("host {name} did not come up: {why}\n--- {name} sshd.log ---\n{log}--- end ---")
}

/// `ssh-keygen -s`: a host certificate for `public` (written beside it as `*-cert.pub`).
fn certify(ca: &HostCa, public: &Path, name: &str) {
    let out = Command::new("ssh-keygen")
        .arg("-s")
        .arg(&ca.key)
        .args([
            "-q",
            "-h",
            "-I",
            name,
            "-n",
            &ca.principals,
            "-V",
            &ca.validity,
        ])
        .arg(public)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen -s");
    assert_success(&out, &format!("ssh-keygen -s for {}", public.display()));
}

fn write_sshd_config(
    dir: &Path,
    name: &str,
    address: Ipv4Addr,
    port: u16,
    key_types: &[&str],
    certified: bool,
) {
    // Paths as the host sees them (see FLEET_DIR_IN_HOST).
    let in_host = format!("{FLEET_DIR_IN_HOST}/{name}");
    let mut c = format!(
        "# generated by the shipit e2e fixture for host {name}; not the system sshd_config\n\
         ListenAddress {address}:{port}\n"
    );
    for t in key_types {
        c.push_str(&format!("HostKey {in_host}/ssh_host_{t}_key\n"));
        if certified {
            c.push_str(&format!(
                "HostCertificate {in_host}/ssh_host_{t}_key-cert.pub\n"
            ));
        }
    }
    c.push_str(&format!(
        "PidFile none\n\
         AuthorizedKeysFile {FLEET_DIR_IN_HOST}/authorized_keys\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         StrictModes no\n\
         UseDNS no\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         # Many parallel handshakes from one client are what a deployer does.\n\
         MaxStartups 200:30:400\n\
         # OpenSSH's default, kept on purpose: real servers limit channels per connection.\n\
         MaxSessions 10\n\
         AllowTcpForwarding yes\n\
         Subsystem sftp {SFTP_SERVER}\n\
         LogLevel VERBOSE\n"
    ));
    fs::write(dir.join("sshd_config"), c).expect("write sshd_config");
}

/// Starts one attempt of a host (in network namespace `netns` if given) and waits until its
/// address and port answer with its own host keys.
fn spawn_host(
    fleet_dir: &Path,
    dir: &Path,
    name: &str,
    (address, port): (Ipv4Addr, u16),
    netns: Option<&Path>,
    host_keys: &[String],
) -> Startup {
    let log = File::create(dir.join("sshd.log")).expect("create sshd.log");
    let script = HOST_INIT
        .replace("@OVERLAID_DIRS@", &OVERLAID_DIRS.join(" "))
        .replace("@FLEET_DIR_IN_HOST@", FLEET_DIR_IN_HOST)
        .replace("@SSHD@", SSHD);
    // nsenter execs unshare, so the child is still `unshare` (see HostProcess).
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display()))
                .args(["--", "unshare"]);
            c
        }
        None => Command::new("unshare"),
    };
    let mut child = match command
        .args([
            "--mount",
            "--uts",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "sh",
            "-c",
            &script,
            "shipit-e2e-init",
            name,
        ])
        .arg(dir)
        .arg(fleet_dir)
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .env("LANG", "C.UTF-8")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(log.try_clone().expect("dup sshd.log"))
        .stderr(log)
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Startup::Failed(format!("cannot run unshare: {e}")),
    };
    let lifeline = child.stdin.take().expect("piped stdin");
    // From here on, HostProcess's Drop cleans up on every path.
    let mut proc = HostProcess {
        child: Mutex::new(child),
        _lifeline: lifeline,
        sshd_pid: 0,
    };

    let types: Vec<&str> = host_keys
        .iter()
        .map(|k| keyscan_type(k.split(' ').next().unwrap_or_default()))
        .collect();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let exited: Option<ExitStatus> = proc.lock().try_wait().ok().flatten();
        if let Some(status) = exited {
            let log = fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
            if log.contains("Address already in use") {
                return Startup::PortTaken;
            }
            return Startup::Failed(format!("it exited ({status})"));
        }
        // Only probe once our sshd says it has bound the port: the port may belong to someone
        // else who won the race, and a non-ssh listener would stall ssh-keyscan for -T
        // seconds. Then check that the port really answers with this host's keys.
        let log = fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
        if log.contains(&format!("Server listening on {address} port {port}."))
            && keyscan_has(address, port, &types, host_keys)
        {
            break;
        }
        if Instant::now() > deadline {
            return Startup::Failed(format!(
                "{address}:{port} did not answer with its host key within {READY_TIMEOUT:?}"
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
    match proc.live_sshd_pid() {
        Some(pid) => {
            proc.sshd_pid = pid;
            Startup::Ready(proc)
        }
        None => Startup::Failed("its sshd vanished right after answering".into()),
    }
}

/// ssh-keyscan's `-t` name for a public key algorithm.
fn keyscan_type(algorithm: &str) -> &'static str {
    match algorithm {
        "ssh-ed25519" => "ed25519",
        "ssh-rsa" => "rsa",
        a if a.starts_with("ecdsa-") => "ecdsa",
        a => panic!("unexpected host key algorithm {a:?}"),
    }
}

/// Does address:port serve every one of `host_keys`?
fn keyscan_has(address: Ipv4Addr, port: u16, types: &[&str], host_keys: &[String]) -> bool {
    let out = Command::new("ssh-keyscan")
        .args(["-T", "5", "-p", &port.to_string(), "-t", &types.join(",")])
        .arg(address.to_string())
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            host_keys
                .iter()
                .all(|k| text.lines().any(|l| l.ends_with(k)))
        }
        Err(_) => false,
    }
}

fn keygen(key_type: &str, path: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", key_type, "-N", "", "-C", comment, "-f"])
        .arg(path)
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen");
    assert_success(
        &out,
        &format!("ssh-keygen -t {key_type} {}", path.display()),
    );
}

/// PIDs of the live children of `pid` (Linux `/proc/PID/task/PID/children`).
fn children_of(pid: u32) -> Vec<u32> {
    let mut s = String::new();
    let _ = File::open(format!("/proc/{pid}/task/{pid}/children"))
        .and_then(|mut f| f.read_to_string(&mut s));
    s.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Is `pid` a process that has not exited yet? A zombie has closed its sockets already, and
/// may stay a zombie if it was orphaned to a PID 1 that does not reap.
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "PID (COMM) STATE ...": COMM may contain spaces and parentheses.
    match stat.rfind(')') {
        Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
        None => false,
    }
}

fn kill(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Panics with the command's output unless it exited 0.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A free 127.0.0.1 port nobody listens on (bound then released).
/// Someone may take it before the caller binds it; [`Fleet`] retries with a new port.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Path of the shipit binary built for these tests.
pub fn shipit_bin() -> &'static str {
    env!("CARGO_BIN_EXE_shipit")
}

/// `program` with a clean environment: only `PATH` ([`CLEAN_PATH`]), `HOME` and
/// `LANG=C.UTF-8`; no `SSH_AUTH_SOCK`, `SHIPIT_*`, CI or cargo variables unless the test adds
/// them.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", CLEAN_PATH)
        .env("HOME", home)
        .env("LANG", "C.UTF-8");
    cmd
}

/// The shipit binary with a clean environment (see [`clean_command`]) and `HOME` = `home`,
/// which the caller keeps alive (e.g. [`Fleet::home`], or a [`tempfile::TempDir`]).
pub fn shipit_command(home: &Path) -> Command {
    clean_command(shipit_bin(), home)
}
