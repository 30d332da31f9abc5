//! Tests of the systemd-nspawn fixture itself (`support::systemd`): if these fail, every
//! test on [`SystemdFleet`] hosts is suspect.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::systemd::SystemdFleet;
use crate::support::{CLEAN_PATH, assert_success, clean_command, is_alive};

/// A name no earlier or concurrent run can have used, so a stale file cannot fake a result.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// stdout of a command on this machine, asserting success.
fn machine_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .output()
        .unwrap();
    assert_success(&out, &format!("{program} {}", args.join(" ")));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn hosts_boot_systemd_and_answer_real_openssh_with_strict_host_keys() {
    let started = Instant::now();
    let fleet = SystemdFleet::start(2);
    eprintln!("2 systemd hosts booted in {:.1?}", started.elapsed());

    let names: Vec<&str> = fleet.hosts().iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["s1", "s2"]);
    let (s1, s2) = (fleet.host("s1"), fleet.host("s2"));
    assert_ne!(s1.address, s2.address);
    assert_ne!(s1.host_keys, s2.host_keys);
    let known_hosts = std::fs::read_to_string(fleet.known_hosts()).unwrap();

    for h in fleet.hosts() {
        assert_eq!(h.port, 22);
        assert!(h.address.starts_with("10.215."), "{}", h.address);
        assert_eq!(h.host_keys.len(), 1);
        assert!(
            h.host_keys[0].starts_with("ssh-ed25519 AAAA"),
            "{:?}",
            h.host_keys
        );
        // Port 22: the bare address, as OpenSSH writes it.
        assert!(
            known_hosts
                .lines()
                .any(|l| l == format!("{} {}", h.address, h.host_keys[0])),
            "{known_hosts}"
        );

        let state = fleet.sh(&h.name, "systemctl is-system-running");
        let state = String::from_utf8_lossy(&state.stdout);
        assert!(
            ["running", "degraded"].contains(&state.trim()),
            "{}: systemd is {state:?}",
            h.name
        );

        // Spelled out rather than via SystemdFleet::ssh_command: this is the contract other
        // tests (and the program under test) rely on.
        let out = clean_command("ssh", &fleet.home())
            .args(["-F", "/dev/null", "-i"])
            .arg(fleet.client_key())
            .args(["-o", "IdentitiesOnly=yes", "-o"])
            .arg(format!(
                "UserKnownHostsFile={}",
                fleet.known_hosts().display()
            ))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .arg(format!("root@{}", h.address))
            .arg("hostname; ps -p 1 -o comm=; id -u")
            .output()
            .unwrap();
        assert_success(&out, &format!("ssh to {}", h.name));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{}\nsystemd\n0\n", h.name)
        );
    }
}

#[test]
fn a_unit_written_over_ssh_starts_and_nginx_serves_port_80() {
    let fleet = SystemdFleet::start(2);
    let unit = unique("shipit-probe").replace('-', "_");
    // A real service: python3's http.server on port 8000, serving a file written over ssh.
    fleet.ssh_ok(
        "s1",
        &format!(
            "mkdir -p /srv/{unit} && echo hello-from-s1 >/srv/{unit}/hello.txt && \
             cat >/etc/systemd/system/{unit}.service <<'EOF'\n\
             [Unit]\n\
             Description=shipit e2e probe\n\
             [Service]\n\
             WorkingDirectory=/srv/{unit}\n\
             ExecStart=/usr/bin/python3 -m http.server 8000 --bind 0.0.0.0\n\
             [Install]\n\
             WantedBy=multi-user.target\n\
             EOF\n\
             systemctl daemon-reload && systemctl start {unit}.service"
        ),
    );
    assert_eq!(
        fleet
            .ssh_ok("s1", &format!("systemctl is-active {unit}.service"))
            .trim(),
        "active"
    );
    // systemd runs it in the unit's own cgroup: it is systemd's service, not a child of ssh.
    let cgroup = fleet.ssh_ok(
        "s1",
        &format!("cat /proc/$(systemctl show -P MainPID {unit}.service)/cgroup"),
    );
    assert!(
        cgroup.contains(&format!("/system.slice/{unit}.service")),
        "{cgroup}"
    );
    // Reachable from this machine once python has bound the port.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        match fleet.try_http_get("s1", 8000, "/hello.txt") {
            Ok(r) => break r,
            Err(e) if Instant::now() > deadline => panic!("python http.server on s1: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert_eq!((status, body.as_str()), (200, "hello-from-s1\n"));
    // The unit exists only on s1.
    let on_s2 = fleet.ssh_ok("s2", &format!("systemctl is-active {unit}.service || true"));
    assert_eq!(on_s2.trim(), "inactive");
    assert!(fleet.try_http_get("s2", 8000, "/").is_err());

    // Stopped by systemd, the port closes.
    fleet.ssh_ok("s1", &format!("systemctl stop {unit}.service"));
    assert!(fleet.try_http_get("s1", 8000, "/").is_err());

    // nginx's default site, on the real port 80 of every host.
    for h in ["s1", "s2"] {
        assert_eq!(fleet.sh_ok(h, "systemctl is-active nginx").trim(), "active");
        let (status, body) = fleet.http_get(h, 80, "/");
        assert_eq!(status, 200, "{h}: {body}");
        assert!(body.contains("Welcome to nginx"), "{h}: {body}");
        let (status, _) = fleet.http_get(h, 80, &format!("/{}", unique("missing")));
        assert_eq!(status, 404);
    }
    // `nginx -t && systemctl reload nginx`, as a deploy does it.
    fleet.ssh_ok("s2", "nginx -t 2>/dev/null && systemctl reload nginx");
    assert_eq!(fleet.http_get("s2", 80, "/").0, 200);
}

#[test]
fn writes_on_one_host_stay_on_that_host() {
    let fleet = SystemdFleet::start(2);
    let marker = format!("/opt/app/{}", unique("marker"));
    let env_file = format!("/etc/{}.env", unique("testapp"));
    fleet.ssh_ok(
        "s1",
        &format!("mkdir -p /opt/app && echo s1-was-here >{marker} && echo PORT=3000 >{env_file}"),
    );
    assert_eq!(fleet.sh_ok("s1", &format!("cat {marker}")), "s1-was-here\n");
    assert_eq!(
        fleet.ssh_ok("s1", &format!("cat {env_file}")),
        "PORT=3000\n"
    );
    let rootfs = crate::support::systemd::rootfs();
    for path in [&marker, &env_file] {
        let on_s2 = fleet.ssh("s2", &format!("test -e {path}"));
        assert_eq!(on_s2.status.code(), Some(1), "{path} leaked to s2");
        assert!(!Path::new(path).exists(), "{path} leaked to the machine");
        assert!(
            !rootfs.join(path.trim_start_matches('/')).exists(),
            "{path} leaked into the shared rootfs"
        );
    }
    // Own identity per host, too.
    let id1 = fleet.sh_ok("s1", "cat /etc/machine-id");
    let id2 = fleet.sh_ok("s2", "cat /etc/machine-id");
    assert_eq!(id1.trim().len(), 32);
    assert_ne!(id1, id2);
    assert_eq!(fleet.sh_ok("s2", "hostname").trim(), "s2");
    // A root that sshd's StrictModes accepts: the upper dir did not loosen /root.
    assert_eq!(
        fleet.sh_ok("s1", "stat -c %a /root /root/.ssh"),
        "700\n700\n"
    );
}

#[test]
fn dropping_the_fleet_powers_off_and_removes_everything() {
    let fleet = SystemdFleet::start(2);
    let dir = fleet.dir().to_path_buf();
    let hosts = fleet.hosts().to_vec();
    let pids: Vec<u32> = hosts.iter().map(|h| fleet.nspawn_pid(&h.name)).collect();
    // Each host's systemd: the child of its nspawn.
    let inits: Vec<u32> = pids.iter().map(|p| systemd_child(*p)).collect();
    // Once dropped, a host's slot (subnet, netns and veth names) may at once be reused by a
    // fleet of a test running in parallel: compare identities, not names.
    let netns: Vec<(String, u64)> = hosts
        .iter()
        .map(|h| {
            let ns = fleet.netns(&h.name);
            let ino = std::fs::metadata(Path::new("/run/netns").join(&ns))
                .unwrap_or_else(|e| panic!("netns {ns} of a running host: {e}"))
                .ino();
            (ns, ino)
        })
        .collect();
    let veths: Vec<Option<String>> = hosts.iter().map(|h| machine_side(&h.address)).collect();
    for ((p, i), v) in pids.iter().zip(&inits).zip(&veths) {
        assert!(is_alive(*p) && is_alive(*i));
        assert!(v.is_some(), "no veth on this machine for a running host");
    }

    let started = Instant::now();
    drop(fleet);
    eprintln!("2 systemd hosts stopped in {:.1?}", started.elapsed());

    for (((h, pid), init), ((ns, ino), veth)) in hosts
        .iter()
        .zip(&pids)
        .zip(&inits)
        .zip(netns.iter().zip(&veths))
    {
        assert!(!is_alive(*pid), "{}: nspawn {pid} survived", h.name);
        assert!(!is_alive(*init), "{}: systemd {init} survived", h.name);
        if let Ok(m) = std::fs::metadata(Path::new("/run/netns").join(ns)) {
            assert_ne!(m.ino(), *ino, "{}: netns {ns} survived", h.name);
        }
        match machine_side(&h.address) {
            // The usual case: nothing on this machine routes the host's subnet any more. Do
            // not probe the address then: it would go out through the default route.
            None => {}
            // The slot was reused at once by a fleet of a test running in parallel: a new
            // veth, and another host's key (if its sshd is up yet).
            Some(now) => {
                assert_ne!(Some(&now), veth.as_ref(), "{}: veth survived", h.name);
                let addr: SocketAddr = format!("{}:22", h.address).parse().unwrap();
                if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok() {
                    let scan = Command::new("ssh-keyscan")
                        .args(["-T", "5", "-t", "ed25519", &h.address])
                        .env_clear()
                        .env("PATH", CLEAN_PATH)
                        .output()
                        .unwrap();
                    let scan = String::from_utf8_lossy(&scan.stdout);
                    assert!(!scan.contains(&h.host_keys[0]), "{}: still served", h.name);
                }
            }
        }
    }
    assert!(!dir.exists(), "{} survived", dir.display());
}

/// The systemd among the children of `nspawn_pid`.
fn systemd_child(nspawn_pid: u32) -> u32 {
    let children =
        std::fs::read_to_string(format!("/proc/{nspawn_pid}/task/{nspawn_pid}/children")).unwrap();
    children
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .find(|c: &u32| {
            std::fs::read_to_string(format!("/proc/{c}/comm"))
                .is_ok_and(|comm| comm.trim() == "systemd")
        })
        .unwrap_or_else(|| panic!("no systemd among nspawn {nspawn_pid}'s children {children:?}"))
}

/// "IFINDEX: NAME" of this machine's interface on the subnet of host `address` (x.y.z.2),
/// which has x.y.z.1.
fn machine_side(address: &str) -> Option<String> {
    let gateway = format!("{}.1", address.rsplit_once('.').unwrap().0);
    let out = machine_ok("ip", &["-4", "-o", "addr", "show", "to", &gateway]);
    let mut fields = out.split_whitespace();
    let (index, name) = (fields.next()?, fields.next()?);
    Some(format!("{index} {name}"))
}

#[test]
fn the_guarded_rm_refuses_system_paths_and_removes_the_rest() {
    let fleet = SystemdFleet::start(1);
    crate::fleet::guarded_rm_case(
        |script| fleet.sh("s1", script),
        || fleet.take_refused_rm("s1"),
    );
}
