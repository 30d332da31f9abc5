//! Faults injected at the steps of a deploy, on real sshd hosts: the shipit process killed
//! (SIGKILL, SIGINT) or a remote step made to fail. After each: `current` names a complete
//! release, the env file is whole with mode 0600, no `.partial` is used, the lock is released
//! (or held by the killed run, for `unlock`), history says what happened, the exit code says
//! it too, and the same deploy run again converges.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::Fleet;

const HOSTS: [&str; 2] = ["h1", "h2"];

struct Rig {
    fleet: Fleet,
}

impl Rig {
    fn new() -> Rig {
        let rig = Rig {
            fleet: Fleet::start(2),
        };
        let (code, _, stderr) = rig.deploy(&rig.inventory("v1", ""));
        assert_eq!(code, 0, "{stderr}");
        rig
    }

    fn app(&self, version: &str) -> PathBuf {
        let dir = self.fleet.dir().join(format!("app-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("VERSION"), version).unwrap();
        dir
    }

    fn inventory(&self, version: &str, extra: &str) -> PathBuf {
        let text = format!(
            "[artifact]\npath = \"{}\"\n[env]\npath = \"/etc/demo.env\"\nvars = {{ VERSION = \"{version}\" }}\n{extra}",
            self.app(version).display()
        );
        write(
            self.fleet.dir(),
            &format!("inv-{version}.toml"),
            &inventory_text(&self.fleet, &HOSTS, &text),
        )
    }

    fn deploy(&self, inv: &Path) -> (i32, String, String) {
        run(self.fleet.shipit().args(["deploy", "test", "-i"]).arg(inv))
    }

    fn spawn(&self, inv: &Path) -> Child {
        self.fleet
            .shipit()
            .args(["deploy", "test", "-i"])
            .arg(inv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Deploys `inv` and asserts it fails with exit code 1; returns its stderr.
    fn deploy_fails(&self, inv: &Path) -> String {
        let (code, _, stderr) = self.deploy(inv);
        assert_eq!(code, 1, "{stderr}");
        stderr
    }

    /// Whether `script` exits 0 on `host`.
    fn succeeds(&self, host: &str, script: &str) -> bool {
        succeeds(&self.fleet, host, script)
    }

    /// Starts deploying `inv` and returns once `script` succeeds on h1 (`what` has begun).
    fn spawn_until(&self, inv: &Path, what: &str, script: &str) -> Child {
        let child = self.spawn(inv);
        self.wait_until(what, "h1", script);
        child
    }

    /// Deploys v2 with `extra` and SIGKILLs shipit once `script` succeeds on h1 (`what` has
    /// begun); returns v2's inventory.
    fn killed_once(&self, extra: &str, what: &str, script: &str) -> PathBuf {
        let inv = self.inventory("v2", extra);
        kill(self.spawn_until(&inv, what, script));
        inv
    }

    fn wait_until(&self, what: &str, host: &str, script: &str) {
        let start = Instant::now();
        while !self.succeeds(host, script) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "never saw: {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The invariants that hold after any fault: `version` is what every host runs.
    fn assert_invariants(&self, version: &str, lock_expected: bool) {
        for h in HOSTS {
            let f = &self.fleet;
            let target = f.sh_ok(h, "readlink /opt/demo/current");
            assert!(
                target.starts_with("releases/") && !target.contains(".partial"),
                "{h}: {target}"
            );
            assert!(
                self.succeeds(h, "test -f /opt/demo/current/REVISION"),
                "{h}: incomplete release"
            );
            assert_eq!(f.sh_ok(h, "cat /opt/demo/current/VERSION"), version, "{h}");
            assert_eq!(f.sh_ok(h, "stat -c %a /etc/demo.env").trim(), "600", "{h}");
            assert!(
                f.sh_ok(h, "cat /etc/demo.env").contains("VERSION="),
                "{h}: env file not whole"
            );
            let locked = self.succeeds(h, "test -d /opt/demo/.shipit/lock");
            if !lock_expected {
                assert!(!locked, "{h}: lock left behind");
            }
        }
    }

    fn last_history(&self, host: &str) -> serde_json::Value {
        serde_json::from_str(
            &self
                .fleet
                .sh_ok(host, "tail -n 1 /opt/demo/.shipit/history.jsonl"),
        )
        .unwrap()
    }

    /// The same deploy again converges; with `unlock` first when the holder was killed.
    fn converges(&self, inv: &Path, version: &str, unlock: bool) {
        if unlock {
            let (code, _, stderr) = self.deploy(inv);
            assert_eq!(code, 5, "the killed run's lock is reported: {stderr}");
            assert!(stderr.contains("locked by"), "{stderr}");
            let (code, _, stderr) = run(self
                .fleet
                .shipit()
                .args(["unlock", "test", "--yes", "-i"])
                .arg(inv));
            assert_eq!(code, 0, "{stderr}");
        }
        let (code, _, stderr) = self.deploy(inv);
        assert_eq!(code, 0, "re-run: {stderr}");
        self.assert_invariants(version, false);
        for h in HOSTS {
            let partials = self
                .fleet
                .sh_ok(h, "ls /opt/demo/releases | grep -c partial || true");
            assert_eq!(partials.trim(), "0", "{h}: partial left after the re-run");
        }
    }
}

/// SIGKILLs the deploy `child` and reaps it.
fn kill(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn lock_acquisition_failing_on_one_host_releases_the_others() {
    let rig = Rig::new();
    // Writing the lock's owner.json (the step after its `mkdir`) fails on h2. (A file in
    // place of `.shipit`, as before, is now refused earlier, by the path check before any
    // lock.)
    rig.fleet.sh_ok("h2", "printf '#!/bin/sh\\ncase \"$*\" in *\"/opt/demo/.shipit/lock/owner.json\") echo mv: read-only >&2; exit 1;; esac\\nexec /usr/bin/mv \"$@\"\\n' > /usr/local/bin/mv && chmod +x /usr/local/bin/mv");
    let inv = rig.inventory("v2", "");
    let stderr = rig.deploy_fails(&inv);
    assert!(stderr.contains("cannot take the deploy lock"), "{stderr}");
    assert!(
        !rig.succeeds("h1", "test -e /opt/demo/.shipit/lock"),
        "h1's lock was not released"
    );
    // Nor is a lock without its owner left on h2, for the next run to find.
    assert!(
        !rig.succeeds("h2", "test -e /opt/demo/.shipit/lock"),
        "h2 kept a lock it could not write the owner of"
    );
    // The host's real rm: the guarded one keeps to the directories a deploy may delete in.
    rig.fleet
        .sh_ok("h2", "/usr/lib/shipit-e2e/rm -f /usr/local/bin/mv");
    rig.converges(&inv, "v2", false);
}

#[test]
fn a_wrong_checksum_after_upload_keeps_nothing() {
    let rig = Rig::new();
    // The host has no openssl (so `sha256sum` checks the upload), and its sha256sum lies:
    // the bytes look damaged.
    rig.fleet.sh_ok("h1", "mv /usr/bin/openssl /usr/bin/openssl.real; mv /usr/bin/sha256sum /usr/bin/sha256sum.real && printf '#!/bin/sh\\ncat >/dev/null; echo 0000 -\\n' > /usr/bin/sha256sum && chmod +x /usr/bin/sha256sum");
    let inv = rig.inventory("v2", "");
    let stderr = rig.deploy_fails(&inv);
    assert!(stderr.contains("arrived damaged"), "{stderr}");
    rig.assert_invariants("v1", false);
    assert_eq!(rig.last_history("h1")["outcome"], "failed");
    rig.fleet
        .sh_ok("h1", "mv -f /usr/bin/sha256sum.real /usr/bin/sha256sum");
    rig.converges(&inv, "v2", false);
}

#[test]
fn extraction_failing_midway_keeps_nothing() {
    let rig = Rig::new();
    rig.fleet.sh_ok("h2", "mv /usr/bin/tar /usr/bin/tar.real && printf '#!/bin/sh\\nhead -c 100 >/dev/null; echo tar: disk full >&2; exit 2\\n' > /usr/bin/tar && chmod +x /usr/bin/tar");
    let inv = rig.inventory("v2", "");
    rig.deploy_fails(&inv);
    rig.assert_invariants("v1", false);
    assert!(
        !rig.succeeds("h2", "ls -d /opt/demo/releases/*.partial"),
        "partial kept"
    );
    rig.fleet
        .sh_ok("h2", "mv -f /usr/bin/tar.real /usr/bin/tar");
    rig.converges(&inv, "v2", false);
}

#[test]
fn the_env_file_failing_to_stage_switches_nothing() {
    let rig = Rig::new();
    // Staging creates its temp file with `mktemp` (a fresh name each time): make that fail.
    rig.fleet.sh_ok(
        "h2",
        "mv /usr/bin/mktemp /usr/bin/mktemp.real && printf '#!/bin/sh\\ncase \"$1\" in -d) exec mktemp.real \"$@\";; esac\\necho mktemp: no space left >&2; exit 1\\n' > /usr/bin/mktemp && chmod +x /usr/bin/mktemp",
    );
    let inv = rig.inventory("v2", "");
    let stderr = rig.deploy_fails(&inv);
    assert!(stderr.contains("/etc/demo.env.shipit-next"), "{stderr}");
    rig.assert_invariants("v1", false);
    assert!(
        rig.fleet
            .sh_ok("h2", "cat /etc/demo.env")
            .contains("VERSION=v1")
    );
    rig.fleet
        .sh_ok("h2", "mv -f /usr/bin/mktemp.real /usr/bin/mktemp");
    rig.converges(&inv, "v2", false);
}

#[test]
fn killed_during_the_backup_the_lock_waits_for_unlock_and_a_rerun_converges() {
    let rig = Rig::new();
    let slow = "[backup]\nkind = \"command\"\ncommand = \"sleep 3; echo dump\"\ndir = \"/var/backups/demo\"\n";
    let inv = rig.killed_once(
        slow,
        "the backup to start",
        "pgrep -f '[s]leep 3' >/dev/null",
    );
    rig.assert_invariants("v1", true);
    rig.converges(&inv, "v2", true);
    // Whatever the killed run's backup got to, the re-run made a whole one and no temp file
    // is left.
    let files = rig
        .fleet
        .sh_ok("h1", "ls -A /var/backups/demo | grep -v '[.]meta$'");
    assert!(
        files
            .lines()
            .all(|f| f.starts_with("demo-") && f.ends_with(".bak")),
        "{files}"
    );
    assert!(!files.is_empty());
    assert_eq!(
        rig.fleet
            .sh_ok("h1", "cat \"$(ls -t /var/backups/demo/*.bak | head -n 1)\""),
        "dump\n"
    );
}

#[test]
fn killed_during_the_migration_the_lock_waits_for_unlock_and_a_rerun_converges() {
    let rig = Rig::new();
    let slow = "[migrate]\ncommand = \"sleep 3\"\n";
    let inv = rig.killed_once(
        slow,
        "the migration to start",
        "pgrep -f '[s]leep 3' >/dev/null",
    );
    rig.assert_invariants("v1", true);
    rig.converges(&inv, "v2", true);
}

#[test]
fn ctrl_c_during_the_migration_lets_it_finish_then_stops_before_the_switch() {
    let rig = Rig::new();
    let slow = "[migrate]\ncommand = \"sleep 2; touch /tmp/migrated\"\n";
    let inv = rig.inventory("v2", slow);
    let child = rig.spawn_until(
        &inv,
        "the migration to start",
        "pgrep -f '[s]leep 2' >/dev/null",
    );
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        rig.succeeds("h1", "test -e /tmp/migrated"),
        "the migration was cut"
    );
    rig.assert_invariants("v1", false);
    assert_eq!(rig.last_history("h1")["outcome"], "interrupted");
    rig.converges(&inv, "v2", false);
}

#[test]
fn killed_between_switch_and_confirmation_the_guard_reverts_and_a_rerun_converges() {
    let rig = Rig::new();
    let slow = "[health]\ncommand = \"sleep 3\"\ntimeout = \"1s\"\n[rollout]\nwaves = [\"1\"]\nconfirm_timeout = \"1s\"\n";
    rig.killed_once(
        slow,
        "h1 to be switched",
        "grep -q v2 /opt/demo/current/VERSION",
    );
    // The guard switches h1 back (env file included) once its timer runs out.
    rig.wait_until(
        "the guard to revert h1",
        "h1",
        "grep -q v1 /opt/demo/current/VERSION && grep -q VERSION=v1 /etc/demo.env",
    );
    rig.assert_invariants("v1", true);
    let quick = rig.inventory("v2", "");
    rig.converges(&quick, "v2", true);
}

#[test]
fn killed_during_an_automatic_switch_back_the_host_still_ends_on_the_old_release() {
    let rig = Rig::new();
    // v2 fails its (slow) health check; the switch-back re-checks health, slowly too.
    let health = "[health]\ncommand = \"sleep 1; test \\\"$(cat VERSION)\\\" != v2\"\ntimeout = \"1s\"\ninterval = \"100ms\"\n[rollout]\nconfirm_timeout = \"1s\"\n";
    let inv = rig.inventory("v2", health);
    let child = rig.spawn_until(
        &inv,
        "h1 to be switched",
        "grep -q v2 /opt/demo/current/VERSION",
    );
    rig.wait_until(
        "the switch-back to begin",
        "h1",
        "grep -q v1 /opt/demo/current/VERSION",
    );
    kill(child);
    // Whether shipit or its guard finished the job, the host is back on v1, whole.
    std::thread::sleep(Duration::from_secs(4));
    rig.assert_invariants("v1", true);
    let good = rig.inventory("v3", "");
    rig.converges(&good, "v3", true);
}
