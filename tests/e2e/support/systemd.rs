//! End-to-end fixture, tier 2: a throw-away fleet of hosts that boot real systemd.
//!
//! [`SystemdFleet::start`] boots one `systemd-nspawn --boot` container per host ("s1", "s2",
//! ...). Each runs systemd as its PID 1, with journald, dbus, logind, OpenSSH's `ssh.service`,
//! Debian's `nginx.service` (default site on port 80), `postgresql.service` (cluster 15/main
//! on 127.0.0.1:5432, created by the package) and `redis-server.service` (127.0.0.1:6379, no
//! password); python3, `psql`, `redis-cli` and `sudo` are installed. Use these hosts when a test needs
//! what the tier-1 hosts of [`super::Fleet`] cannot give: unit files that `systemctl
//! daemon-reload`, `enable --now`, `restart` really act on, a real nginx, and data services
//! managed by the host's own systemd.
//!
//! Rootfs: one Debian bookworm tree built with `debootstrap --variant=minbase` (1–2 min, once
//! per checkout) and cached in `<target dir>/nspawn-rootfs` (see [`rootfs`]). A marker file in
//! it records the recipe ([`recipe`]); a changed recipe rebuilds it. The build holds a lock
//! file, so parallel tests and processes never debootstrap twice, and happens in a temporary
//! directory renamed into place, so a killed build never leaves a half-built rootfs behind.
//!
//! Each host, all of it derived from a machine-wide "slot" `k` (1..=254):
//! - the guarded `rm` of the sshd hosts (see `super`), as `/usr/bin/rm`;
//! - a copy-on-write overlayfs (lower = the shared rootfs, read-only; upper/work under
//!   `<fleet dir>/sN/`) with its own host key, machine-id, hostname and the fleet's client key
//!   in `/root/.ssh/authorized_keys`. The overlay is mounted in a private mount namespace that
//!   only `systemd-nspawn` lives in (`unshare --mount`), so it vanishes with the container:
//!   nothing can stay mounted on this machine, nor be copied into the mount namespaces other
//!   tests create.
//! - its own network namespace `shipit-e2e-<k>` with a veth pair: `10.215.<k>.1/24` on this
//!   machine (`shipe2e-<k>`), `10.215.<k>.2/24` as `host0` in the container. So every host owns
//!   the real ports 22 and 80, and this machine reaches them directly; no route leaves the
//!   machine (no default route inside, no forwarding).
//! - its own cgroup `shipit-e2e-nspawn-<k>` in the named systemd (v1) and unified (v2)
//!   hierarchies, which the launching process joins before it execs nspawn: with
//!   `--keep-unit` all containers would otherwise share one cgroup, and their systemds trample
//!   each other's units (some hosts come up "degraded"). `--register=no --keep-unit`, because
//!   this machine has no systemd as PID 1 (plain `systemd-nspawn -b` fails with "Failed to open
//!   system bus").
//!
//! Slots: a slot is held by a "keeper" process (`flock -n <lock> sh -c KEEPER`) that keeps an
//! exclusive lock on `/run/shipit-e2e-nspawn/slot-<k>.lock` for as long as the host exists, so
//! concurrent fleets, in this process or any other, never share a subnet, netns, veth, cgroup
//! or machine name, and no per-fleet id is needed in those names. The keeper is also the
//! watchdog: its stdin is a pipe whose write end only the test process holds (never written).
//! When that pipe closes, because [`SystemdFleet`] was dropped or because the test process
//! died without unwinding (Ctrl-C, SIGKILL, a CI timeout), the keeper, still holding the lock,
//! powers the container off (SIGTERM to nspawn) if it still runs, kills whatever is left in its
//! cgroups, deletes the veth, netns and cgroups, and removes the host dir. A new keeper first
//! runs the same teardown for its slot, in case an earlier keeper was itself killed.
//!
//! Lifetime: dropping a [`SystemdFleet`] (also during a panic's unwind) sends SIGTERM to every
//! nspawn at once (a clean poweroff of the container, ~1–2 s), SIGKILLs any that takes too
//! long, reaps them, then lets each keeper tear its slot down and waits for it.
//!
//! Layout of the fleet dir:
//!
//! ```text
//! id_ed25519, id_ed25519.pub   client key (no passphrase), authorized for root on every host
//! known_hosts                  "10.215.K.2 ssh-ed25519 BASE64" for every host (port 22)
//! home/                        HOME for commands run by tests (empty, no ~/.ssh)
//! sN/                          one host: upper/ + work/ (overlayfs), merged/ (its root, mounted
//!                              only inside nspawn's mount namespace), console.log, nspawn.pid
//! ```
//!
//! Needs: root, debootstrap, systemd-container (`systemd-nspawn`), iproute2, util-linux
//! (`unshare`, `nsenter`, `flock`), OpenSSH client, overlayfs, network access to the Debian
//! mirror for the first build.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use super::{CLEAN_PATH, assert_success, children_of, clean_command, keygen, kill};

/// Debian release of the hosts.
const SUITE: &str = "bookworm";
/// Packages of the rootfs, on top of debootstrap's minbase.
const PACKAGES: &str = "systemd,systemd-sysv,dbus,openssh-server,nginx,python3,iproute2,\
                        ca-certificates,curl,procps,tar,gzip,passwd,postgresql,\
                        postgresql-client,redis-server,redis-tools,sudo";
/// sshd settings of every host (`/etc/ssh/sshd_config.d/shipit-e2e.conf`). Only the ed25519
/// host key, which each host gets its own of; the defaults would also look for rsa and ecdsa.
const SSHD_DROP_IN: &str = "# shipit e2e test host\n\
                            HostKey /etc/ssh/ssh_host_ed25519_key\n\
                            PermitRootLogin prohibit-password\n\
                            PasswordAuthentication no\n\
                            UseDNS no\n\
                            AllowTcpForwarding yes\n\
                            MaxStartups 200:30:400\n";
/// Units masked in the rootfs: no getty on the console (nspawn's console is a log file here),
/// nothing waiting for a network-online that no network manager will report, and no
/// background timers (apt, fstrim, ...) firing in the middle of a test.
const MASKED_UNITS: &[&str] = &[
    "console-getty.service",
    "getty@tty1.service",
    "systemd-networkd-wait-online.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
];
/// Units started at boot (Debian's maintainer scripts enable them already; made certain).
const ENABLED_UNITS: &[&str] = &[
    "ssh.service",
    "nginx.service",
    "postgresql.service",
    "redis-server.service",
];
/// Bump when [`prepare_rootfs`] changes in a way the constants above do not show.
const RECIPE_REVISION: u32 = 2;
/// In the rootfs: the recipe it was built from.
const RECIPE_MARKER: &str = ".shipit-e2e-rootfs-recipe";

/// First two octets of every host's subnet: host k is 10.215.k.2/24, this machine 10.215.k.1.
const NET_PREFIX: &str = "10.215";
/// Where slot locks live (machine-wide, shared by every checkout and process).
const SLOT_LOCK_DIR: &str = "/run/shipit-e2e-nspawn";
/// cgroup hierarchies a host gets its own cgroup in, where mounted: hybrid (this machine) has
/// the first two, a pure cgroup v2 machine only the last.
const CGROUP_HIERARCHIES: &[&str] = &[
    "/sys/fs/cgroup/systemd",
    "/sys/fs/cgroup/unified",
    "/sys/fs/cgroup",
];

/// How long a host may take from nspawn's start to systemd "running" and sshd answering.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a clean poweroff may take before nspawn is told to terminate at once.
const POWEROFF_GRACE: Duration = Duration::from_secs(10);
/// How long nspawn may take after the second SIGTERM (or a SIGKILL).
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How long a keeper may take to tear its slot down.
const KEEPER_GRACE: Duration = Duration::from_secs(30);

/// Holds slot `$1` (run by `flock -n` with the slot's lock held), then tears it down.
/// Prints "ready" once the slot is clean and usable, "foreign" (exit 76) if something that is
/// not ours routes its subnet. `@HIERARCHIES@` is replaced by [`CGROUP_HIERARCHIES`].
const KEEPER: &str = r#"k=$1 machine=$2 cg=$3 ns=$4 veth=$5 subnet=$6 hostdir=$7
# A live (not zombie) systemd-nspawn: after the test process died, its nspawn is orphaned and
# may stay a zombie; a recycled PID is something else.
alive() {
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = systemd-nspawn ] || return 1
  ! grep -q '^State:[[:space:]]*[ZX]' "/proc/$1/status" 2>/dev/null
}
procs() {
  for h in @HIERARCHIES@; do
    if [ -d "$h/$cg" ]; then find "$h/$cg" -name cgroup.procs -exec cat {} + 2>/dev/null; fi
  done
}
teardown() {
  pid=$(cat "$hostdir/nspawn.pid" 2>/dev/null)
  if [ -n "$pid" ] && alive "$pid"; then
    kill -TERM "$pid" # nspawn: clean poweroff
    i=0; while alive "$pid" && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  fi
  # A container whose nspawn was killed, or left over by a keeper that was killed itself.
  i=0
  while [ $i -lt 50 ]; do
    p=$(procs); [ -n "$p" ] || break
    kill -KILL $p 2>/dev/null; sleep 0.1; i=$((i+1))
  done
  ip link del "$veth" 2>/dev/null
  ip netns del "$ns" 2>/dev/null
  for h in @HIERARCHIES@; do
    i=0
    while [ -d "$h/$cg" ] && [ $i -lt 20 ]; do
      find "$h/$cg" -depth -type d -exec rmdir {} + 2>/dev/null || sleep 0.1; i=$((i+1))
    done
  done
  # nspawn leaves this behind when /run is not a tmpfs.
  rm -rf "/run/systemd/nspawn/propagate/$machine"
}
teardown >/dev/null 2>&1
if [ -n "$(ip -4 route show root "$subnet.0/24" 2>/dev/null)" ]; then echo foreign; exit 76; fi
echo ready
exec >/dev/null 2>&1
cat # the lifeline: returns when the test process closes it or dies
teardown
rm -rf "$hostdir"
"#;

/// Runs in nspawn's own mount namespace (`unshare --mount`): mounts the host's overlay, joins
/// the host's cgroups, becomes systemd-nspawn. Stdout and stderr are console.log.
const LAUNCH: &str = r#"set -eu
lower=$1 upper=$2 work=$3 merged=$4 cg=$5
shift 5
mount -t overlay shipit-e2e-nspawn -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$merged"
for h in @HIERARCHIES@; do
  if [ -d "$h/$cg" ]; then echo $$ >"$h/$cg/cgroup.procs"; fi
done
exec systemd-nspawn "$@"
"#;

/// One running host.
#[derive(Clone, Debug)]
pub struct SystemdHost {
    /// "s1", "s2", ...; also its hostname.
    pub name: String,
    /// Its address, `10.215.<k>.2`, reachable from this machine only.
    pub address: String,
    /// Its sshd's port: 22.
    pub port: u16,
    /// Its public host keys as "TYPE BASE64" (no comment): one ed25519 key.
    pub host_keys: Vec<String>,
}

/// A fleet of booted systemd hosts; dropping it powers them off and deletes [`Self::dir`].
pub struct SystemdFleet {
    hosts: Vec<SystemdHost>,
    // Same order as `hosts`. Declared before `dir`, and stopped in Drop, so every container
    // is gone before the directory is removed.
    machines: Vec<Machine>,
    dir: tempfile::TempDir,
}

impl SystemdFleet {
    /// Builds (or reuses) the cached rootfs and boots `n` hosts "s1".."sN" in parallel; returns
    /// once each one's systemd is "running" (or "degraded": its failed units are printed) and
    /// its sshd answers with its host key. Panics with the console log of a host that fails.
    pub fn start(n: usize) -> SystemdFleet {
        assert!(n > 0, "a fleet needs at least one host");
        let rootfs = rootfs();
        let dir = tempfile::Builder::new()
            .prefix("shipit-systemd-")
            .tempdir()
            .expect("create the fleet temp dir");
        let fleet_dir = dir.path().to_path_buf();
        // Overlay options are comma-separated, and ':' separates lower dirs.
        for p in [&fleet_dir, &rootfs] {
            let s = p.to_string_lossy();
            assert!(
                !s.contains([',', ':']),
                "{s}: overlayfs cannot use a path with ',' or ':'"
            );
        }
        fs::create_dir(fleet_dir.join("home")).expect("create home dir");
        let client_key = fleet_dir.join("id_ed25519");
        keygen("ed25519", &client_key, "shipit-e2e-client");
        let client_pub = fs::read_to_string(client_key.with_extension("pub")).expect("read key");

        let mut fleet = SystemdFleet {
            hosts: Vec::new(),
            machines: Vec::new(),
            dir,
        };
        // Setup is cheap and partly machine-global (slots, `ip netns add`): one host at a time.
        // Booting is what takes time, and all hosts boot at once from here on. A panic drops
        // `fleet`, which stops whatever was started.
        for i in 1..=n {
            let name = format!("s{i}");
            let (host, machine) = launch_host(&rootfs, &fleet_dir, &name, &client_pub);
            fleet.hosts.push(host);
            fleet.machines.push(machine);
        }
        let results: Vec<Result<Option<String>, String>> = thread::scope(|s| {
            let workers: Vec<_> = fleet
                .machines
                .iter()
                .zip(&fleet.hosts)
                .map(|(m, h)| s.spawn(move || m.wait_ready(h)))
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("readiness thread panicked"))
                .collect()
        });
        let mut errors = Vec::new();
        for (r, m) in results.into_iter().zip(&fleet.machines) {
            match r {
                Ok(None) => {}
                Ok(Some(failed)) => eprintln!(
                    "systemd fleet: {} is degraded; failed units:\n{failed}",
                    m.name
                ),
                Err(why) => errors.push(format!(
                    "host {} did not come up: {why}\n--- {} console.log ---\n{}--- end ---",
                    m.name,
                    m.name,
                    m.console_log()
                )),
            }
        }
        if !errors.is_empty() {
            panic!("systemd fleet failed to start:\n{}", errors.join("\n"));
        }
        fleet.write_client_files();
        fleet
    }

    fn write_client_files(&self) {
        let mut known_hosts = String::new();
        for h in &self.hosts {
            for key in &h.host_keys {
                // Port 22: OpenSSH writes and looks up the bare address.
                known_hosts.push_str(&format!("{} {key}\n", h.address));
            }
        }
        fs::write(self.known_hosts(), known_hosts).expect("write known_hosts");
    }

    /// All hosts, in order s1..sN.
    pub fn hosts(&self) -> &[SystemdHost] {
        &self.hosts
    }

    /// The host called `name`; panics if there is none.
    pub fn host(&self, name: &str) -> &SystemdHost {
        &self.hosts[self.index(name)]
    }

    /// Takes what `host`'s guarded `rm` refused so far (so a test that provokes a refusal
    /// on purpose can assert it without failing on drop).
    pub fn take_refused_rm(&self, host: &str) -> String {
        self.sh_ok(host, super::TAKE_REFUSED_RM)
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

    /// The fleet's temp dir; tests may write their own files here (deleted with the fleet).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Private key (ed25519, no passphrase) authorized for root on every host.
    pub fn client_key(&self) -> PathBuf {
        self.dir().join("id_ed25519")
    }

    /// known_hosts with every host's key, as `ADDRESS TYPE BASE64` (port 22: no brackets).
    pub fn known_hosts(&self) -> PathBuf {
        self.dir().join("known_hosts")
    }

    /// An empty directory to use as `HOME` for client programs (no `~/.ssh`, no dotfiles).
    pub fn home(&self) -> PathBuf {
        self.dir().join("home")
    }

    /// The shipit binary with a clean environment and `HOME` = [`Self::home`].
    pub fn shipit(&self) -> Command {
        super::shipit_command(&self.home())
    }

    /// Runs `sh -c script` as root inside `host` (all of its namespaces, entered with
    /// `nsenter` at its systemd; not over ssh), with a clean environment and stdin from
    /// /dev/null. The process is not in one of the host's units: systemd does not track it.
    pub fn sh(&self, host: &str, script: &str) -> Output {
        let m = &self.machines[self.index(host)];
        let pid = m
            .live_init_pid()
            .unwrap_or_else(|| panic!("host {host} is not running"));
        nsenter(pid, script)
    }

    /// [`Self::sh`], asserting success; returns stdout.
    pub fn sh_ok(&self, host: &str, script: &str) -> String {
        let out = self.sh(host, script);
        assert_success(&out, &format!("on {host} (nsenter): {script}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
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
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .args(["-o", "ConnectTimeout=10", "-p", &h.port.to_string()])
            .arg(format!("root@{}", h.address))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `script` on `host` over real ssh (see [`Self::ssh_command`]).
    pub fn ssh(&self, host: &str, script: &str) -> Output {
        self.ssh_command(host)
            .arg(script)
            .output()
            .expect("run ssh")
    }

    /// [`Self::ssh`], asserting success; returns stdout.
    pub fn ssh_ok(&self, host: &str, script: &str) -> String {
        let out = self.ssh(host, script);
        assert_success(&out, &format!("on {host} (ssh): {script}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `GET path` over HTTP/1.0 from this machine to `host`'s address and `port`: status code
    /// and body. Panics if nothing answers; see [`Self::try_http_get`].
    pub fn http_get(&self, host: &str, port: u16, path: &str) -> (u16, String) {
        self.try_http_get(host, port, path)
            .unwrap_or_else(|e| panic!("GET http://{host}:{port}{path}: {e}"))
    }

    /// [`Self::http_get`] that returns connection and protocol errors instead of panicking
    /// (to wait for a service, or to check that it stopped answering).
    pub fn try_http_get(&self, host: &str, port: u16, path: &str) -> io::Result<(u16, String)> {
        let address = &self.host(host).address;
        let addr: SocketAddr = format!("{address}:{port}")
            .parse()
            .expect("host address is an IPv4 address");
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: shipit-e2e\r\n\r\n"
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let text = String::from_utf8_lossy(&response);
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what} in HTTP response {text:?}"),
            )
        };
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| bad("no header end"))?;
        let status = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status code"))?;
        Ok((status, body.to_string()))
    }

    /// The host's console: nspawn's own messages and systemd's boot and shutdown output.
    pub fn console_log(&self, host: &str) -> String {
        self.machines[self.index(host)].console_log()
    }

    /// PID of the host's `systemd-nspawn` (in this machine's PID namespace). Still returns the
    /// old PID after the fleet is gone.
    pub fn nspawn_pid(&self, host: &str) -> u32 {
        self.machines[self.index(host)].nspawn_pid
    }

    /// Name of the host's network namespace (`ip netns`, `/run/netns/<name>`).
    pub fn netns(&self, host: &str) -> String {
        self.machines[self.index(host)].slot.netns()
    }
}

impl Drop for SystemdFleet {
    fn drop(&mut self) {
        let refused: Vec<String> = self
            .machines
            .iter()
            .map(|m| {
                let log = fs::read_to_string(m.dir.join(super::REFUSED_RM_LOG));
                (m, log.unwrap_or_default())
            })
            .filter(|(_, log)| !log.is_empty())
            .map(|(m, log)| format!("{}:\n{log}", m.name))
            .collect();
        if thread::panicking() {
            // The fleet dir, console logs included, is deleted right after this.
            for m in &self.machines {
                let log = m.console_log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                // eprint!, not io::stderr(): the test harness captures only the former.
                eprint!(
                    "--- {} console.log (last {} lines) ---\n{}\n",
                    m.name,
                    tail.len(),
                    tail.join("\n")
                );
            }
        }
        // Every host powers off at once; then each is waited for (Machine's Drop).
        for m in &self.machines {
            m.signal("TERM");
        }
        self.machines.clear();
        if !refused.is_empty() && !thread::panicking() {
            panic!(
                "a host's guarded rm refused to delete outside the allowed directories:\n{}",
                refused.join("\n")
            );
        }
    }
}

/// The running parts of one host.
struct Machine {
    name: String,
    /// `<fleet dir>/<name>`.
    dir: PathBuf,
    /// `unshare`, which exec'd `sh`, which exec'd `systemd-nspawn`: one process.
    nspawn: Mutex<Child>,
    nspawn_pid: u32,
    /// The container's systemd, once seen (0 before).
    init_pid: Mutex<u32>,
    /// Dropped after the container is stopped (Machine's Drop runs first): the keeper then
    /// removes the network and cgroups.
    slot: Slot,
}

impl Machine {
    fn lock(&self) -> MutexGuard<'_, Child> {
        // Drop must never panic, so a poisoned lock is still used.
        self.nspawn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running(&self) -> bool {
        matches!(self.lock().try_wait(), Ok(None))
    }

    /// The container's systemd if the host is still running. Checked against nspawn's
    /// children each time, so a recycled PID is never mistaken for it.
    fn live_init_pid(&self) -> Option<u32> {
        if !self.running() {
            return None;
        }
        let mut known = self.init_pid.lock().unwrap_or_else(|e| e.into_inner());
        let children = children_of(self.nspawn_pid);
        if *known != 0 {
            return children.contains(&*known).then_some(*known);
        }
        // Until the child has exec'd systemd, it is nspawn setting up the container.
        let pid = children.into_iter().find(|p| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "systemd")
        })?;
        *known = pid;
        Some(pid)
    }

    fn console_log(&self) -> String {
        let bytes = fs::read(self.dir.join("console.log")).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Waits until systemd is "running" or "degraded" (then returns the failed units) and
    /// sshd answers with `host`'s key.
    fn wait_ready(&self, host: &SystemdHost) -> Result<Option<String>, String> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let mut state = String::from("(systemd not started yet)");
        let degraded = loop {
            if let Ok(Some(status)) = self.lock().try_wait() {
                return Err(format!("systemd-nspawn exited ({status})"));
            }
            if let Some(pid) = self.live_init_pid() {
                // Fails until systemd's private socket exists.
                let out = nsenter(pid, "systemctl is-system-running");
                state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                match state.as_str() {
                    "running" => break false,
                    "degraded" => break true,
                    _ => {}
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "systemd is not running after {BOOT_TIMEOUT:?} (state: {state})"
                ));
            }
            thread::sleep(Duration::from_millis(50));
        };
        while !keyscan_has(&host.address, &host.host_keys) {
            if Instant::now() > deadline {
                return Err(format!(
                    "{}:22 did not answer with its host key within {BOOT_TIMEOUT:?}",
                    host.address
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
        if !degraded {
            return Ok(None);
        }
        let pid = self
            .live_init_pid()
            .ok_or("it stopped right after booting")?;
        let out = nsenter(pid, "systemctl --failed --no-legend --plain --no-pager");
        Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    fn signal(&self, sig: &str) {
        if self.running() {
            kill(sig, self.nspawn_pid);
        }
    }

    /// Stops the container and reaps nspawn: SIGTERM (a clean poweroff), a second SIGTERM
    /// (nspawn: "immediate termination") after [`POWEROFF_GRACE`], SIGKILL as a last resort.
    /// Never panics: it runs in Drop.
    fn stop(&self) {
        self.signal("TERM");
        if !self.wait_exit(POWEROFF_GRACE) {
            self.signal("TERM");
            if !self.wait_exit(KILL_GRACE) {
                // The keeper kills whatever of the container is left in its cgroups.
                let _ = self.lock().kill();
            }
        }
        let _ = self.lock().wait();
    }

    fn wait_exit(&self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        while self.running() {
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A slot `k` held by its keeper process (see the module doc).
struct Slot {
    k: u8,
    /// `flock`, whose child is the keeper shell.
    keeper: Child,
    /// The keeper's stdin; dropping it starts the teardown.
    lifeline: Option<ChildStdin>,
}

impl Slot {
    /// The first free slot, held until the returned value is dropped. `host_dir` is removed
    /// by the keeper on teardown.
    fn acquire(host_dir: &Path) -> Slot {
        fs::create_dir_all(SLOT_LOCK_DIR).expect("create the slot lock dir");
        let keeper_script = KEEPER.replace("@HIERARCHIES@", &CGROUP_HIERARCHIES.join(" "));
        for k in 1..=254u8 {
            let names = SlotNames::new(k);
            let mut child = Command::new("flock")
                .args(["-n", "-E", "75"])
                .arg(format!("{SLOT_LOCK_DIR}/slot-{k}.lock"))
                .args(["sh", "-c", &keeper_script, "shipit-e2e-keeper"])
                .arg(k.to_string())
                .args([&names.machine, &names.cgroup, &names.netns, &names.veth])
                .arg(&names.subnet)
                .arg(host_dir)
                .env_clear()
                .env("PATH", CLEAN_PATH)
                .current_dir("/")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                // Not killed by a Ctrl-C at the terminal: it must outlive the test process.
                .process_group(0)
                .spawn()
                .expect("run flock");
            let lifeline = child.stdin.take();
            // "ready", or nothing (EOF) when flock found the slot locked.
            let mut line = String::new();
            let stdout = child.stdout.take().expect("piped stdout");
            let _ = BufReader::new(stdout).read_line(&mut line);
            if line.trim() == "ready" {
                return Slot {
                    k,
                    keeper: child,
                    lifeline,
                };
            }
            // Locked by another fleet (flock exits 75), or the subnet is in use by something
            // else ("foreign").
            drop(lifeline);
            let _ = child.wait();
        }
        panic!("no free slot for a systemd test host: all 254 in {SLOT_LOCK_DIR} are taken");
    }

    fn names(&self) -> SlotNames {
        SlotNames::new(self.k)
    }

    fn netns(&self) -> String {
        self.names().netns
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        let deadline = Instant::now() + KEEPER_GRACE;
        while matches!(self.keeper.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if matches!(self.keeper.try_wait(), Ok(None)) {
            eprintln!(
                "systemd fleet: the keeper of slot {} did not finish its teardown in {KEEPER_GRACE:?}",
                self.k
            );
            let _ = self.keeper.kill();
        }
        let _ = self.keeper.wait();
    }
}

/// Every machine-wide name of slot `k`.
struct SlotNames {
    /// nspawn's `--machine`.
    machine: String,
    /// In each of [`CGROUP_HIERARCHIES`].
    cgroup: String,
    netns: String,
    /// This machine's end of the veth pair (at most 15 bytes).
    veth: String,
    /// "10.215.k".
    subnet: String,
}

impl SlotNames {
    fn new(k: u8) -> SlotNames {
        SlotNames {
            machine: format!("shipit-e2e-{k}"),
            cgroup: format!("shipit-e2e-nspawn-{k}"),
            netns: format!("shipit-e2e-{k}"),
            veth: format!("shipe2e-{k}"),
            subnet: format!("{NET_PREFIX}.{k}"),
        }
    }
}

/// Sets up one host (slot, files, network, cgroups) and starts its nspawn; does not wait.
fn launch_host(
    rootfs: &Path,
    fleet_dir: &Path,
    name: &str,
    client_pub: &str,
) -> (SystemdHost, Machine) {
    let dir = fleet_dir.join(name);
    for d in ["upper", "work", "merged"] {
        fs::create_dir_all(dir.join(d)).expect("create host dirs");
    }
    let slot = Slot::acquire(&dir);
    let names = slot.names();
    let upper = dir.join("upper");

    // The host's own files, in its upper dir. Parent dirs get the rootfs' modes: an upper dir
    // hides the lower dir's attributes (a 755 /root would be visible to everyone).
    mkdirs_like(rootfs, &upper, "etc/ssh");
    mkdirs_like(rootfs, &upper, "root/.ssh");
    fs::set_permissions(upper.join("root/.ssh"), fs::Permissions::from_mode(0o700))
        .expect("chmod /root/.ssh");
    let host_key = upper.join("etc/ssh/ssh_host_ed25519_key");
    keygen("ed25519", &host_key, name);
    let public = fs::read_to_string(host_key.with_extension("pub")).expect("read host key");
    let host_keys = vec![
        public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "),
    ];
    write_mode(&upper.join("root/.ssh/authorized_keys"), client_pub, 0o600);
    write_mode(&upper.join("etc/hostname"), &format!("{name}\n"), 0o644);
    write_mode(
        &upper.join("etc/hosts"),
        &format!(
            "127.0.0.1 localhost\n127.0.1.1 {name}\n::1 localhost ip6-localhost ip6-loopback\n"
        ),
        0o644,
    );
    // The rootfs' machine-id is the same for every host; systemd and journald key on it.
    write_mode(
        &upper.join("etc/machine-id"),
        &format!("{}\n", machine_id()),
        0o444,
    );

    // The guarded rm (see `super::GUARDED_RM`) in place of the host's own, kept aside.
    mkdirs_like(rootfs, &upper, "usr/bin");
    mkdirs_like(rootfs, &upper, "usr/lib/shipit-e2e");
    fs::copy(
        rootfs.join("usr/bin/rm"),
        upper.join("usr/lib/shipit-e2e/rm"),
    )
    .expect("keep the host's real rm");
    write_mode(&upper.join("usr/bin/rm"), super::GUARDED_RM, 0o755);

    // The network: this machine 10.215.k.1, the host 10.215.k.2, nothing else routed.
    let address = format!("{}.2", names.subnet);
    let ns = names.netns.as_str();
    ip(&["netns", "add", ns]);
    ip(&[
        "link",
        "add",
        &names.veth,
        "type",
        "veth",
        "peer",
        "name",
        "host0",
        "netns",
        ns,
    ]);
    ip(&[
        "addr",
        "add",
        &format!("{}.1/24", names.subnet),
        "dev",
        &names.veth,
    ]);
    ip(&["link", "set", &names.veth, "up"]);
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{address}/24"),
        "dev",
        "host0",
    ]);
    ip(&["-n", ns, "link", "set", "host0", "up"]);
    ip(&["-n", ns, "link", "set", "lo", "up"]);

    for h in CGROUP_HIERARCHIES {
        if Path::new(h).join("cgroup.procs").exists() {
            fs::create_dir_all(Path::new(h).join(&names.cgroup))
                .unwrap_or_else(|e| panic!("create cgroup {h}/{}: {e}", names.cgroup));
        }
    }

    let console = File::create(dir.join("console.log")).expect("create console.log");
    let launch = LAUNCH.replace("@HIERARCHIES@", &CGROUP_HIERARCHIES.join(" "));
    let child = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &launch,
        ])
        .arg("shipit-e2e-launch")
        .arg(rootfs)
        .arg(&upper)
        .arg(dir.join("work"))
        .arg(dir.join("merged"))
        .arg(&names.cgroup)
        .arg("--directory")
        .arg(dir.join("merged"))
        .args(["--boot", "--register=no", "--keep-unit"])
        .arg(format!("--machine={}", names.machine))
        .arg(format!("--hostname={name}"))
        .arg(format!("--network-namespace-path=/run/netns/{ns}"))
        // read-only: a pty whose output is copied to console.log. With "pipe", systemd has no
        // terminal and prints no boot status, which is what a failed boot needs to show.
        .args(["--console=read-only", "--resolv-conf=off", "--timezone=off"])
        .args(["--link-journal=no", "--setenv=SYSTEMD_COLORS=0"])
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .env("LANG", "C.UTF-8")
        .env("SYSTEMD_COLORS", "0")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(console.try_clone().expect("dup console.log"))
        .stderr(console)
        // Not killed by a Ctrl-C at the terminal; the keeper stops it when the test is gone.
        .process_group(0)
        .spawn()
        .expect("run unshare (systemd-nspawn)");
    let nspawn_pid = child.id();
    let machine = Machine {
        name: name.to_string(),
        dir: dir.clone(),
        nspawn: Mutex::new(child),
        nspawn_pid,
        init_pid: Mutex::new(0),
        slot,
    };
    // For the keeper, when it has to stop the container without us.
    fs::write(dir.join("nspawn.pid"), format!("{nspawn_pid}\n")).expect("write nspawn.pid");
    let host = SystemdHost {
        name: name.to_string(),
        address,
        port: 22,
        host_keys,
    };
    (host, machine)
}

/// Runs `sh -c script` in all namespaces of `pid` (a container's systemd).
fn nsenter(pid: u32, script: &str) -> Output {
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-a", "-r", "-w", "--"])
        .args(["sh", "-c", script])
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .output()
        .expect("run nsenter")
}

/// Does `address`:22 serve every one of `host_keys` (ed25519)?
fn keyscan_has(address: &str, host_keys: &[String]) -> bool {
    let out = Command::new("ssh-keyscan")
        .args(["-T", "2", "-t", "ed25519", address])
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
                .all(|k| text.lines().any(|l| l.ends_with(k.as_str())))
        }
        Err(_) => false,
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .stdin(Stdio::null())
        .output()
        .expect("run ip");
    assert_success(&out, &format!("ip {}", args.join(" ")));
}

/// Creates `upper/rel` and its missing parents with the modes they have under `lower`.
fn mkdirs_like(lower: &Path, upper: &Path, rel: &str) {
    let mut path = PathBuf::new();
    for part in Path::new(rel) {
        path.push(part);
        let target = upper.join(&path);
        if target.is_dir() {
            continue;
        }
        fs::create_dir(&target).unwrap_or_else(|e| panic!("create {}: {e}", target.display()));
        let mode = fs::metadata(lower.join(&path))
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o755);
        fs::set_permissions(&target, fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

fn write_mode(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A random machine-id: 32 lowercase hex digits.
fn machine_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("read a random uuid")
        .trim()
        .replace('-', "")
}

/// The cached rootfs, built on first use (see the module doc). Every caller in this process
/// waits for the first one's build; other processes wait on the lock file.
pub fn rootfs() -> PathBuf {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(build_rootfs).clone()
}

/// `<target dir>/nspawn-rootfs`: `CARGO_TARGET_DIR` if set (relative to the package, as cargo
/// reads it), else the package's `target/`.
fn rootfs_dir() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if !t.is_empty() => manifest_dir.join(t),
        _ => manifest_dir.join("target"),
    };
    target.join("nspawn-rootfs")
}

/// What the rootfs is built from; stored in it as [`RECIPE_MARKER`].
fn recipe() -> String {
    format!(
        "revision {RECIPE_REVISION}\nsuite {SUITE}\npackages {PACKAGES}\n\
         masked {MASKED_UNITS:?}\nenabled {ENABLED_UNITS:?}\nsshd:\n{SSHD_DROP_IN}"
    )
}

fn is_current(dir: &Path) -> bool {
    fs::read_to_string(dir.join(RECIPE_MARKER)).is_ok_and(|r| r == recipe())
}

fn build_rootfs() -> PathBuf {
    let dir = rootfs_dir();
    if is_current(&dir) {
        return dir;
    }
    let parent = dir.parent().expect("rootfs dir has a parent");
    fs::create_dir_all(parent).expect("create the target dir");
    let lock = File::create(parent.join("nspawn-rootfs.lock")).expect("create the rootfs lock");
    // Released when `lock` is closed, also if this process dies.
    lock.lock().expect("lock the rootfs lock");
    if is_current(&dir) {
        return dir; // another process built it while we waited
    }
    let base = dir.file_name().unwrap().to_string_lossy().into_owned();
    // Leftovers of builds that were killed: only the lock holder builds, and that is us now.
    for entry in fs::read_dir(parent).expect("list the target dir").flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!("{base}.tmp-")) || n.starts_with(&format!("{base}.old-")) {
            remove_tree(&entry.path());
        }
    }
    let pid = std::process::id();
    let tmp = parent.join(format!("{base}.tmp-{pid}"));
    let log = parent.join("nspawn-rootfs.log");
    let mirror = debian_mirror();
    let started = Instant::now();
    eprintln!(
        "systemd fleet: building the test rootfs {} with debootstrap from {mirror} (once; \
         1-2 min; log: {})",
        dir.display(),
        log.display()
    );
    let _ = fs::remove_file(&log);
    let mut built = false;
    // Downloaded packages are kept next to the rootfs: a retry, or a rebuild for a changed
    // recipe, only fetches what is missing.
    let debs = parent.join("nspawn-rootfs-debs");
    fs::create_dir_all(&debs).expect("create the package cache dir");
    // A mirror hiccup should not fail the first test run: one retry, from scratch.
    for attempt in 1..=2 {
        remove_tree(&tmp);
        if debootstrap(&tmp, &mirror, &debs, &log, attempt) {
            built = true;
            break;
        }
    }
    if !built {
        remove_tree(&tmp);
        let text = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "debootstrap of the systemd test rootfs failed twice (log: {}):\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    prepare_rootfs(&tmp);
    fs::write(tmp.join(RECIPE_MARKER), recipe()).expect("write the recipe marker");
    // An outdated rootfs is moved aside first: rename cannot replace a non-empty dir.
    if dir.exists() {
        let old = parent.join(format!("{base}.old-{pid}"));
        fs::rename(&dir, &old).expect("move the outdated rootfs aside");
        remove_tree(&old);
    }
    fs::rename(&tmp, &dir).expect("move the new rootfs into place");
    eprintln!("systemd fleet: rootfs built in {:.0?}", started.elapsed());
    dir
}

/// One debootstrap run into `dir`, appending its output to `log`.
fn debootstrap(dir: &Path, mirror: &str, debs: &Path, log: &Path, attempt: u32) -> bool {
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the debootstrap log");
    let _ = writeln!(
        out,
        "=== attempt {attempt}: debootstrap into {}",
        dir.display()
    );
    let status = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={PACKAGES}")])
        .arg(format!("--cache-dir={}", debs.display()))
        .arg(SUITE)
        .arg(dir)
        .arg(mirror)
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .env("LANG", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup log"))
        .stderr(out)
        .status()
        .expect("run debootstrap (apt-get install debootstrap)");
    status.success()
}

/// Makes the fresh debootstrap tree in `r` a test host image.
fn prepare_rootfs(r: &Path) {
    // Each host gets its own host key at start.
    for entry in fs::read_dir(r.join("etc/ssh"))
        .expect("list etc/ssh")
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
            fs::remove_file(entry.path()).expect("remove a generated host key");
        }
    }
    fs::create_dir_all(r.join("etc/ssh/sshd_config.d")).expect("create sshd_config.d");
    fs::write(
        r.join("etc/ssh/sshd_config.d/shipit-e2e.conf"),
        SSHD_DROP_IN,
    )
    .expect("write the sshd drop-in");
    let units = r.join("etc/systemd/system");
    for unit in MASKED_UNITS {
        let link = units.join(unit);
        let _ = fs::remove_file(&link);
        symlink("/dev/null", &link).expect("mask a unit");
    }
    let wants = units.join("multi-user.target.wants");
    fs::create_dir_all(&wants).expect("create multi-user.target.wants");
    for unit in ENABLED_UNITS {
        let link = wants.join(unit);
        if fs::symlink_metadata(&link).is_err() {
            symlink(format!("/lib/systemd/system/{unit}"), &link).expect("enable a unit");
        }
    }
    // Installed packages (~50 MB; debootstrap's --cache-dir keeps its own copy).
    if let Ok(entries) = fs::read_dir(r.join("var/cache/apt/archives")) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".deb") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// The Debian mirror this machine's apt uses: the first deb822 `URIs:` ending in `/debian`,
/// else the first `URIs:`, else the first `deb` line of sources.list, else deb.debian.org.
fn debian_mirror() -> String {
    let mut files: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut uris = Vec::new();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "sources"))
    {
        let text = fs::read_to_string(f).unwrap_or_default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("URIs:")
                && let Some(uri) = rest.split_whitespace().next()
            {
                uris.push(uri.to_string());
            }
        }
    }
    if let Some(u) = uris
        .iter()
        .find(|u| u.trim_end_matches('/').ends_with("/debian"))
    {
        return u.clone();
    }
    if let Some(u) = uris.first() {
        return u.clone();
    }
    let list = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    for line in list.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("deb")
            && let Some(uri) = words.find(|w| w.contains("://"))
        {
            return uri.to_string();
        }
    }
    "http://deb.debian.org/debian".to_string()
}

/// `rm -rf path` without following symlinks out of it (the rootfs is full of absolute ones).
fn remove_tree(path: &Path) {
    match fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", path.display()),
    }
}
