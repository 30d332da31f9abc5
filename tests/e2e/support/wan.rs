//! Shaped links for a fleet (the WAN benchmark's): every host in its own network namespace
//! behind a rate-limited link, and the whole fleet behind one shared, rate-limited uplink,
//! so deploys meet the bandwidth of a real network instead of loopback's.
//!
//! ```text
//!  this machine                  router netns                      one netns per host
//!  swan-K 10.217.K.1/30 ──────── up0 10.217.K.2/30
//!    tbf: uplink rate              tbf: uplink rate
//!                                br0 10.216.K.1/24 ─┬─ h1 ───────── eth0 10.216.K.2/24
//!                                                   │  tbf: host rate   tbf: host rate
//!                                                   └─ h2 ───────── eth0 10.216.K.3/24
//! ```
//!
//! `tc tbf` shapes every link on its sending side, in both directions: this machine's end of
//! the uplink (the upload direction, shared by every host), the router's end (downloads),
//! the router's port toward each host and each host's own `eth0`. When the kernel has `netem`
//! (checked once per network), each host link also gets half of [`Links::rtt`] as delay in
//! each direction; without it there is no added latency, which [`Network::latency`] reports.
//! Forwarding is on in the router namespace only; this machine routes `10.216.K.0/24` to it
//! and nothing else, and no namespace has a route leaving the machine.
//!
//! Slots: `K` (1..=[`SLOTS`]) names everything machine-wide (`shipit-wan-K-router`,
//! `shipit-wan-K-hN`, `swan-K`, the subnets). A network holds its slot with an exclusive
//! `flock` on `/run/shipit-wan/slot-K.lock` for as long as it exists, so two fleets (two test
//! processes, a test and the benchmark) never share one. The lock dies with the process, so a
//! run killed without unwinding (Ctrl-C, SIGKILL) leaves its namespaces behind but not its
//! lock: whoever takes the slot next first deletes whatever carries the slot's names.
//! Dropping the [`Network`] (also during a panic's unwind) deletes its namespaces and links;
//! [`super::Fleet`] stops the hosts before that.
//!
//! Needs: root, iproute2 (`ip`, `tc`), the kernel's veth, bridge and tbf.

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{CLEAN_PATH, assert_success};

/// How many networks can exist at once on this machine.
pub const SLOTS: u8 = 64;
/// Where the slot locks live.
const LOCK_DIR: &str = "/run/shipit-wan";
/// The port each host's sshd listens on, in its own namespace.
pub const SSH_PORT: u16 = 2222;
/// Hosts per network: one /24, minus the router and the broadcast address.
pub const MAX_HOSTS: usize = 253;

/// The shape of a fleet's network.
#[derive(Clone, Debug)]
pub struct Links {
    /// Each host's own link, Mbit/s, each direction.
    pub host_mbit: u32,
    /// The uplink every host is behind, Mbit/s, each direction.
    pub uplink_mbit: u32,
    /// Round-trip time added on each host's link when the kernel has `netem`.
    pub rtt: Duration,
}

impl Default for Links {
    fn default() -> Self {
        Links {
            host_mbit: 50,
            uplink_mbit: 100,
            rtt: Duration::from_millis(40),
        }
    }
}

/// A live network (see the module doc); dropping it deletes it.
#[derive(Debug)]
pub struct Network {
    slot: u8,
    hosts: usize,
    links: Links,
    /// Whether `netem` worked here, so [`Links::rtt`] was added.
    netem: bool,
    /// Holds the slot's `flock`; closing it releases the slot.
    _lock: File,
}

impl Network {
    /// Takes a free slot and builds its namespaces and links for `hosts` hosts. Panics (with
    /// the failing command's output) when it cannot.
    pub fn create(links: &Links, hosts: usize) -> Network {
        assert!(
            (1..=MAX_HOSTS).contains(&hosts),
            "a shaped network holds 1 to {MAX_HOSTS} hosts, not {hosts}"
        );
        assert!(
            links.host_mbit > 0 && links.uplink_mbit > 0,
            "link rates must be positive"
        );
        fs::create_dir_all(LOCK_DIR).expect("create the slot lock dir");
        for slot in 1..=SLOTS {
            let Some(lock) = try_lock(&Path::new(LOCK_DIR).join(format!("slot-{slot}.lock")))
            else {
                continue;
            };
            // Ours now; whatever carries the slot's names is left from a run that died.
            teardown(slot);
            if subnets_routed(slot) {
                // Not ours: something else on this machine uses these addresses.
                continue;
            }
            let mut net = Network {
                slot,
                hosts,
                links: links.clone(),
                netem: false,
                _lock: lock,
            };
            net.build();
            return net;
        }
        panic!("no free slot for a shaped network: all {SLOTS} in {LOCK_DIR} are taken or routed");
    }

    /// The network namespace host `i` (0-based, host "h{i+1}") lives in, as a path for
    /// `nsenter --net=`.
    pub fn host_netns(&self, i: usize) -> PathBuf {
        Path::new("/run/netns").join(self.host_ns(i))
    }

    /// Host `i`'s address (0-based).
    pub fn host_address(&self, i: usize) -> Ipv4Addr {
        assert!(i < self.hosts, "no host {i} in this network");
        Ipv4Addr::new(10, 216, self.slot, i as u8 + 2)
    }

    pub fn links(&self) -> &Links {
        &self.links
    }

    /// The round-trip time added on each host link, or `None` when this kernel has no
    /// `netem` (then there is no added latency at all).
    pub fn latency(&self) -> Option<Duration> {
        self.netem.then_some(self.links.rtt)
    }

    /// Bytes the router has sent toward each host so far (Ethernet frames: IP, TCP and SSH
    /// overhead included), in host order.
    pub fn delivered_bytes(&self) -> Vec<u64> {
        let files: Vec<String> = (0..self.hosts)
            .map(|i| format!("/sys/class/net/h{}/statistics/tx_bytes", i + 1))
            .collect();
        // `ip netns exec` mounts the namespace's own /sys for the command.
        let out = Command::new("ip")
            .args(["netns", "exec", &self.router_ns(), "cat"])
            .args(&files)
            .env_clear()
            .env("PATH", CLEAN_PATH)
            .stdin(Stdio::null())
            .output()
            .expect("run ip netns exec");
        assert_success(&out, "read the router's byte counters");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().parse().expect("a byte counter"))
            .collect()
    }

    /// One line for a benchmark's header.
    pub fn describe(&self) -> String {
        let latency = match self.latency() {
            Some(rtt) => format!("{} ms RTT added on each host link (netem)", rtt.as_millis()),
            None => "no added latency (this kernel has no netem)".to_owned(),
        };
        format!(
            "each host behind its own {} Mbit/s link (tc tbf), all behind one shared {} Mbit/s uplink; {latency}",
            self.links.host_mbit, self.links.uplink_mbit
        )
    }

    fn router_ns(&self) -> String {
        router_ns(self.slot)
    }

    fn host_ns(&self, i: usize) -> String {
        format!("{}{}", host_ns_prefix(self.slot), i + 1)
    }

    fn build(&mut self) {
        let k = self.slot;
        let router = self.router_ns();
        let uplink = uplink_veth(k);
        ip(&["netns", "add", &router]);
        ip(&[
            "link", "add", "name", &uplink, "type", "veth", "peer", "name", "up0", "netns", &router,
        ]);
        ip(&["addr", "add", &format!("10.217.{k}.1/30"), "dev", &uplink]);
        ip(&["link", "set", &uplink, "up"]);
        ip(&["-n", &router, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("10.217.{k}.2/30"),
            "dev",
            "up0",
        ]);
        ip(&["-n", &router, "link", "set", "up0", "up"]);
        ip(&[
            "-n", &router, "link", "add", "name", "br0", "type", "bridge",
        ]);
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("10.216.{k}.1/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &router, "link", "set", "br0", "up"]);
        sh_in(&router, "echo 1 >/proc/sys/net/ipv4/ip_forward");
        ip(&[
            "route",
            "add",
            &format!("10.216.{k}.0/24"),
            "via",
            &format!("10.217.{k}.2"),
            "dev",
            &uplink,
        ]);
        self.netem = netem_works(&router);

        let up = self.links.uplink_mbit;
        self.shape(None, &uplink, up, None);
        self.shape(Some(&router), "up0", up, None);
        let delay = self.latency().map(|rtt| rtt / 2);
        for i in 0..self.hosts {
            let ns = self.host_ns(i);
            let port = format!("h{}", i + 1);
            ip(&["netns", "add", &ns]);
            ip(&[
                "-n", &router, "link", "add", "name", &port, "type", "veth", "peer", "name",
                "eth0", "netns", &ns,
            ]);
            ip(&["-n", &router, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &router, "link", "set", &port, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let address = format!("{}/24", self.host_address(i));
            ip(&["-n", &ns, "addr", "add", &address, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.216.{k}.1"),
            ]);
            let rate = self.links.host_mbit;
            self.shape(Some(&router), &port, rate, delay);
            self.shape(Some(&ns), "eth0", rate, delay);
        }
    }

    /// `tc tbf` at `mbit` on `dev`'s egress (in namespace `ns`, or this machine's), with
    /// `delay` from netem below it.
    fn shape(&self, ns: Option<&str>, dev: &str, mbit: u32, delay: Option<Duration>) {
        let rate = format!("{mbit}mbit");
        // A burst of 1 ms at the rate (at least 16 KiB); a queue of 50 ms at the rate, a
        // router's usual buffer.
        let burst = (mbit as u64 * 1_000_000 / 8 / 1000)
            .max(16 * 1024)
            .to_string();
        let tc = |args: &[&str]| {
            let mut all: Vec<&str> = Vec::new();
            if let Some(ns) = ns {
                all.extend(["-n", ns]);
            }
            all.extend(args);
            run("tc", &all);
        };
        tc(&[
            "qdisc", "add", "dev", dev, "root", "handle", "1:", "tbf", "rate", &rate, "burst",
            &burst, "latency", "50ms",
        ]);
        if let Some(delay) = delay {
            let ms = format!("{}ms", delay.as_millis());
            tc(&[
                "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "netem", "delay",
                &ms, "limit", "10000",
            ]);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        teardown(self.slot);
    }
}

fn router_ns(slot: u8) -> String {
    format!("shipit-wan-{slot}-router")
}

fn host_ns_prefix(slot: u8) -> String {
    format!("shipit-wan-{slot}-h")
}

/// This machine's end of the uplink (at most 15 bytes).
fn uplink_veth(slot: u8) -> String {
    format!("swan-{slot}")
}

/// Deletes everything named after `slot`: the uplink (its peer goes with it), every host
/// namespace and the router namespace (their veths go with them). Never panics: it runs in
/// Drop, and on slots that may be clean already.
fn teardown(slot: u8) {
    let _ = quiet("ip", &["link", "del", &uplink_veth(slot)]);
    let prefix = host_ns_prefix(slot);
    let router = router_ns(slot);
    let names: Vec<String> = fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    *n == router
                        || n.strip_prefix(&prefix)
                            .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default();
    for name in names {
        let _ = quiet("ip", &["netns", "del", &name]);
    }
}

/// Whether something on this machine already routes the slot's subnets.
fn subnets_routed(slot: u8) -> bool {
    [format!("10.216.{slot}.0/24"), format!("10.217.{slot}.0/30")]
        .iter()
        .any(|subnet| {
            let out = Command::new("ip")
                .args(["-4", "route", "show", "root", subnet])
                .env_clear()
                .env("PATH", CLEAN_PATH)
                .stdin(Stdio::null())
                .output()
                .expect("run ip route");
            !out.stdout.is_empty()
        })
}

/// Whether `tc` can add a netem qdisc (tried on the router's loopback, then removed).
fn netem_works(router: &str) -> bool {
    let added = quiet(
        "tc",
        &[
            "-n", router, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
        ],
    );
    if added {
        let _ = quiet("tc", &["-n", router, "qdisc", "del", "dev", "lo", "root"]);
    }
    added
}

/// An exclusive, non-blocking `flock` on `path` (created if missing), or `None` when another
/// process holds it.
fn try_lock(path: &Path) -> Option<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: flock on a file descriptor we own; no memory involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (rc == 0).then_some(file)
}

fn ip(args: &[&str]) {
    run("ip", args);
}

/// `sh -c script` in network namespace `ns`.
fn sh_in(ns: &str, script: &str) {
    run(
        "nsenter",
        &[&format!("--net=/run/netns/{ns}"), "--", "sh", "-c", script],
    );
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert_success(&out, &format!("{program} {}", args.join(" ")));
}

/// Runs and says whether it succeeded, output discarded.
fn quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
