//! Tests of the fixture itself: if these fail, every other e2e failure is suspect.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::wan::{self, Links};
use crate::support::{Fleet, FleetOptions, assert_success, clean_command, is_alive};

/// A name no earlier or concurrent run can have used, so a stale file cannot fake a result.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Nobody answers on `port` with one of `host_keys`. Another fleet running in parallel may
/// already have been given the freed port, so a connection alone is not a failure: then the
/// answering sshd must be someone else.
fn assert_not_served(port: u16, host_keys: &[String]) {
    match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "port {port}: {e}"),
        Ok(_) => {
            let out = Command::new("ssh-keyscan")
                .args(["-T", "5", "-p", &port.to_string(), "127.0.0.1"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            for key in host_keys {
                assert!(
                    !text.contains(key.as_str()),
                    "port {port} still serves {key}"
                );
            }
        }
    }
}

#[test]
fn openssh_logs_in_to_each_host_with_strict_host_keys() {
    let fleet = Fleet::start(3);
    let names: Vec<&str> = fleet.hosts().iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["h1", "h2", "h3"]);
    let mut ports: Vec<u16> = fleet.hosts().iter().map(|h| h.port).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 3, "hosts share a port: {ports:?}");

    for h in fleet.hosts() {
        // Spelled out rather than via Fleet::ssh_command: this is the contract other tests
        // (and the program under test) rely on.
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
            .args(["-p", &h.port.to_string(), "root@127.0.0.1", "hostname"])
            .output()
            .unwrap();
        assert_success(&out, &format!("ssh to {}", h.name));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), h.name);
    }

    // The same through the generated ssh_config.
    let out = clean_command("ssh", &fleet.home())
        .arg("-F")
        .arg(fleet.ssh_config())
        .args(["h2", "hostname"])
        .output()
        .unwrap();
    assert_success(&out, "ssh -F ssh_config h2");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "h2");
}

#[test]
fn strict_host_key_checking_rejects_a_host_under_another_hosts_name() {
    let fleet = Fleet::start(2);
    let (h1, h2) = (fleet.host("h1"), fleet.host("h2"));
    assert_ne!(h1.host_keys, h2.host_keys);
    // known_hosts that claims h1's port has h2's key: a real client must refuse.
    let wrong = fleet.dir().join("wrong_known_hosts");
    std::fs::write(
        &wrong,
        format!("[127.0.0.1]:{} {}\n", h1.port, h2.host_keys[0]),
    )
    .unwrap();
    // Not Fleet::ssh_command: ssh keeps the first value of an option, so it cannot be
    // overridden by appending.
    let out = clean_command("ssh", &fleet.home())
        .args(["-F", "/dev/null", "-i"])
        .arg(fleet.client_key())
        .args(["-o", "IdentitiesOnly=yes", "-o"])
        .arg(format!("UserKnownHostsFile={}", wrong.display()))
        .args(["-o", "GlobalKnownHostsFile=/dev/null"])
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
        .args(["-p", &h1.port.to_string(), "root@127.0.0.1", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "ssh accepted a wrong host key");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HOST IDENTIFICATION HAS CHANGED")
            || stderr.contains("Host key verification failed"),
        "{stderr}"
    );
}

#[test]
fn writes_on_one_host_stay_on_that_host() {
    let fleet = Fleet::start(2);
    let marker = format!("/opt/app/{}", unique("marker"));
    let env_file = format!("/etc/{}.env", unique("testapp"));
    fleet.ssh_ok(
        "h1",
        &format!("mkdir -p /opt/app && echo h1-was-here >{marker} && echo PORT=3000 >{env_file}"),
    );

    assert_eq!(fleet.sh_ok("h1", &format!("cat {marker}")), "h1-was-here\n");
    assert_eq!(fleet.sh_ok("h1", &format!("cat {env_file}")), "PORT=3000\n");
    for path in [&marker, &env_file] {
        let on_h2 = fleet.sh("h2", &format!("test -e {path}"));
        assert!(!on_h2.status.success(), "{path} leaked to h2");
        assert!(!Path::new(path).exists(), "{path} leaked to the machine");
    }
    // The write landed in h1's own overlay upper dir.
    let upper = fleet.host("h1").dir.join("upper");
    assert!(upper.join(marker.trim_start_matches('/')).is_file());
    assert!(upper.join(env_file.trim_start_matches('/')).is_file());
}

#[test]
fn each_host_has_its_own_namespaces_and_fresh_root() {
    let machine_had_var_www = Path::new("/var/www").exists();
    let fleet = Fleet::start(1);

    assert_eq!(fleet.sh_ok("h1", "hostname").trim(), "h1");
    assert_eq!(fleet.ssh_ok("h1", "cat /etc/hostname").trim(), "h1");
    // sshd is PID 1: killing it kills everything started in the host.
    assert_eq!(fleet.sh_ok("h1", "cat /proc/1/comm").trim(), "sshd");
    // A fresh /root from /etc/skel, not the machine's (whose .bashrc runs pyenv).
    assert_eq!(
        fleet.ssh_ok("h1", "stat -c %a /root; ls -A /root | sort | tr '\\n' ' '"),
        "700\n.bash_logout .bashrc .profile "
    );
    assert!(!fleet.sh_ok("h1", "cat /root/.bashrc").contains("pyenv"));
    // A private, empty /tmp, sticky and world-writable.
    assert_eq!(fleet.sh_ok("h1", "stat -c %a /tmp; ls -A /tmp"), "1777\n");
    assert!(
        fleet
            .sh("h1", "test -d /run/sshd && test -d /run/lock")
            .status
            .success()
    );
    // /var/www exists in the host without having been created on the machine.
    assert!(fleet.sh("h1", "test -d /var/www").status.success());
    assert_eq!(Path::new("/var/www").exists(), machine_had_var_www);
    // The fleet dir is visible to sshd, but read-only.
    let out = fleet.sh("h1", "touch /run/shipit-e2e/x");
    assert!(!out.status.success(), "fleet dir is writable from the host");
}

#[test]
fn processes_started_in_a_host_die_when_it_stops() {
    let fleet = Fleet::start(1);
    let sshd = fleet.sshd_pid("h1");
    // Orphaned in the host, so the kernel reparents it to the host's PID 1, the sshd.
    fleet.sh_ok("h1", "sleep 1000 </dev/null >/dev/null 2>&1 &");
    let children = std::fs::read_to_string(format!("/proc/{sshd}/task/{sshd}/children")).unwrap();
    let sleep_pid: u32 = children
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .find(|p: &u32| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
        .unwrap_or_else(|| panic!("no sleep among the sshd's children {children:?}"));

    fleet.stop_host("h1");
    assert!(!is_alive(sshd), "sshd {sshd} survived stop_host");
    assert!(!is_alive(sleep_pid), "sleep {sleep_pid} survived stop_host");
}

#[test]
fn stop_host_closes_only_that_host() {
    let fleet = Fleet::start(2);
    let h1 = fleet.host("h1").clone();
    let pid = fleet.sshd_pid("h1");

    fleet.stop_host("h1");
    assert!(!is_alive(pid));
    assert_not_served(h1.port, &h1.host_keys);
    let out = fleet.ssh("h1", "true");
    assert!(!out.status.success(), "ssh to a stopped host succeeded");
    // The other host is untouched.
    assert_eq!(fleet.ssh_ok("h2", "hostname").trim(), "h2");
    // Stopping twice, and dropping a fleet with a stopped host, is fine.
    fleet.stop_host("h1");
}

#[test]
fn drop_stops_every_host_and_closes_its_port() {
    let fleet = Fleet::start(3);
    let hosts = fleet.hosts().to_vec();
    let pids: Vec<u32> = hosts.iter().map(|h| fleet.sshd_pid(&h.name)).collect();
    let dir = fleet.dir().to_path_buf();
    for &pid in &pids {
        assert!(is_alive(pid));
    }

    drop(fleet);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "sshd {pid} survived"
        );
    }
    for h in &hosts {
        assert_not_served(h.port, &h.host_keys);
    }
    assert!(!dir.exists(), "fleet dir {} survived", dir.display());
}

#[test]
fn drop_during_a_panic_still_stops_the_hosts() {
    let pids = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let fleet = Fleet::start(1);
        pids.lock().unwrap().push(fleet.sshd_pid("h1"));
        panic!("test failure inside a fleet");
    });
    assert!(result.is_err());
    let pids = pids.into_inner().unwrap();
    assert_eq!(pids.len(), 1);
    assert!(!Path::new(&format!("/proc/{}", pids[0])).exists());
}

#[test]
fn authorize_key_admits_a_new_client_key() {
    let fleet = Fleet::start(1);
    let key = fleet.dir().join("second_key");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert_success(&out, "ssh-keygen");
    let ssh_with_second_key = || {
        clean_command("ssh", &fleet.home())
            .args(["-F", "/dev/null", "-i"])
            .arg(&key)
            .args(["-o", "IdentitiesOnly=yes", "-o"])
            .arg(format!(
                "UserKnownHostsFile={}",
                fleet.known_hosts().display()
            ))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .args(["-p", &fleet.host("h1").port.to_string()])
            .args(["root@127.0.0.1", "echo in"])
            .output()
            .unwrap()
    };

    let before = ssh_with_second_key();
    assert!(!before.status.success(), "an unknown key got in");
    assert!(String::from_utf8_lossy(&before.stderr).contains("Permission denied"));

    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    fleet.authorize_key(&public);
    let after = ssh_with_second_key();
    assert_success(&after, "ssh with the newly authorized key");
    assert_eq!(String::from_utf8_lossy(&after.stdout), "in\n");
}

#[test]
fn extra_host_key_types_are_served_and_in_known_hosts() {
    let fleet = Fleet::start_with(FleetOptions {
        hosts: 1,
        host_key_types: vec!["ed25519", "rsa", "ecdsa"],
        ..FleetOptions::default()
    });
    let h1 = fleet.host("h1");
    let algorithms: Vec<&str> = h1
        .host_keys
        .iter()
        .map(|k| k.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        algorithms,
        ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256"]
    );
    let known = std::fs::read_to_string(fleet.known_hosts()).unwrap();
    assert_eq!(known.lines().count(), 3, "{known}");

    // A client that only accepts one algorithm must still verify the host against known_hosts.
    for algorithm in ["ssh-ed25519", "rsa-sha2-512", "ecdsa-sha2-nistp256"] {
        let out = fleet
            .ssh_command("h1")
            .arg("-o")
            .arg(format!("HostKeyAlgorithms={algorithm}"))
            .arg("hostname")
            .output()
            .unwrap();
        assert_success(&out, &format!("ssh with HostKeyAlgorithms={algorithm}"));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "h1");
    }
}

#[test]
fn ten_hosts_start_in_parallel() {
    let started = Instant::now();
    let fleet = Fleet::start(10);
    let took = started.elapsed();
    // Measured ~2.5 s on 2 cores; generous because other tests run alongside.
    assert!(took < Duration::from_secs(30), "10 hosts took {took:?}");

    let known = std::fs::read_to_string(fleet.known_hosts()).unwrap();
    assert_eq!(known.lines().count(), 10);
    let mut ports: Vec<u16> = fleet.hosts().iter().map(|h| h.port).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 10);
    for h in fleet.hosts() {
        assert_eq!(fleet.ssh_ok(&h.name, "hostname").trim(), h.name);
    }
}

#[test]
fn the_guarded_rm_refuses_system_paths_and_removes_the_rest() {
    let fleet = Fleet::start(1);
    crate::fleet::guarded_rm_case(
        |script| fleet.sh("h1", script),
        || fleet.take_refused_rm("h1"),
    );
}

/// On one host (`sh` runs a script there as root): `rm` deletes inside an allowed directory,
/// and refuses, logs and leaves alone a victim outside them (in the host's own `/var`), a path reached through `..` and a
/// newline, and a symlink's target outside; `take` returns (and clears) the log.
pub fn guarded_rm_case(sh: impl Fn(&str) -> std::process::Output, take: impl Fn() -> String) {
    let out = sh(
        "mkdir -p /var/victim-rm/keep /opt/rmcase/x /opt/rmcase/b && \\
         ln -s /var/victim-rm /opt/rmcase/link && \\
         cd /opt/rmcase && rm -rf x && test ! -e x && rm -f link && test ! -L link && \\
         ln -s /var/victim-rm link",
    );
    assert!(out.status.success(), "{out:?}");
    for (operand, shown) in [
        ("/var/victim-rm", "/var/victim-rm"),
        ("b/../../../var/victim-rm", "/var/victim-rm"),
        ("link/", "/var/victim-rm"),
        ("/", "/"),
    ] {
        let out = sh(&format!("cd /opt/rmcase && rm -rf -- '{operand}'"));
        assert!(!out.status.success(), "rm -rf {operand} was not refused");
        let log = take();
        assert!(
            log.contains(&format!("resolves to `{shown}`")),
            "{operand}: {log}"
        );
    }
    let out = sh("cd /opt/rmcase && printf 'b\\n/var/victim-rm\\0' | xargs -0 rm -rf --");
    assert!(
        out.status.success(),
        "a newline name inside is removed (it does not exist): {out:?}"
    );
    let out = sh("test -d /var/victim-rm/keep && test -d /opt/rmcase/b");
    assert!(
        out.status.success(),
        "the victim or the sibling is gone: {out:?}"
    );
    assert_eq!(take(), "");
}

/// Sends `mib` MiB to every host at once over ssh; returns the wall time.
fn upload_to_all(fleet: &Fleet, mib: usize) -> Duration {
    let data = fleet.dir().join("payload");
    std::fs::write(&data, vec![0x5a; mib << 20]).unwrap();
    let start = Instant::now();
    let children: Vec<_> = fleet
        .hosts()
        .iter()
        .map(|h| {
            fleet
                .ssh_command(&h.name)
                .arg("cat >/dev/null")
                .stdin(std::fs::File::open(&data).unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "ssh upload failed");
    }
    start.elapsed()
}

#[test]
fn wan_hosts_sit_behind_shaped_links_that_vanish_with_the_fleet() {
    let links = Links::default();
    assert_eq!((links.host_mbit, links.uplink_mbit), (50, 100));
    let fleet = Fleet::start_with(FleetOptions {
        hosts: 4,
        wan: Some(links),
        ..FleetOptions::default()
    });
    let net = fleet.network().expect("a shaped network");
    let namespaces: Vec<_> = (0..4).map(|i| net.host_netns(i)).collect();
    for (i, h) in fleet.hosts().iter().enumerate() {
        assert_eq!(h.address, net.host_address(i));
        assert_eq!(h.port, wan::SSH_PORT);
        assert!(namespaces[i].exists());
        // The host's sshd is in that namespace, not in this machine's.
        let ns = std::fs::read_link(format!("/proc/{}/ns/net", fleet.sshd_pid(&h.name))).unwrap();
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert_ne!(
            ns, own,
            "{} listens in this machine's network namespace",
            h.name
        );
        assert_eq!(fleet.ssh_ok(&h.name, "hostname").trim(), h.name);
    }

    // 8 MiB to one host: its own 50 Mbit/s link takes at least 1.34 s (unshaped: ~0.4 s with
    // the handshake).
    let before = net.delivered_bytes();
    let one = {
        let data = fleet.dir().join("one");
        std::fs::write(&data, vec![0x5a; 8 << 20]).unwrap();
        let start = Instant::now();
        let out = fleet
            .ssh_command("h1")
            .arg("cat >/dev/null")
            .stdin(std::fs::File::open(&data).unwrap())
            .output()
            .unwrap();
        assert_success(&out, "ssh upload to h1");
        start.elapsed()
    };
    assert!(
        one >= Duration::from_millis(600),
        "4 MiB to one host took {one:?}"
    );
    let after = net.delivered_bytes();
    assert!(
        after[0] - before[0] >= 4 << 20,
        "h1's link carried {}",
        after[0] - before[0]
    );
    assert!(
        after[1] - before[1] < 1 << 20,
        "h2's link carried h1's upload"
    );

    // 8 MiB to each of 4 hosts at once: 32 MiB through the shared 100 Mbit/s uplink take at
    // least 2.68 s, where the hosts' own links alone would allow 1.34 s (~1.9 s with the
    // handshakes).
    let all = upload_to_all(&fleet, 8);
    assert!(all >= Duration::from_millis(2500), "4 × 8 MiB took {all:?}");

    drop(fleet);
    for ns in namespaces {
        assert!(!ns.exists(), "{} is left behind", ns.display());
    }
}
