//! Hardening of the dead-deployer guard, rollback targets and what shipit stores on hosts
//! (issue #17, findings 4, 7, 8, 11 and 14), on real sshd hosts: a killed run's guard never
//! reverts a later deploy and records when it fired; a default rollback goes only to a
//! release that went live and passed its health gate, whatever the length of the history,
//! and an unreadable history stops it; secrets never reach a host's history or lock, whose
//! files only their owner reads; `task` exits 5 when locked; a confirmed deploy leaves no
//! `sleep` behind.

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
    /// Two hosts, `v1` deployed.
    fn new() -> Rig {
        let rig = Rig {
            fleet: Fleet::start(2),
        };
        rig.deploy_ok(&rig.inventory("v1", ""));
        rig
    }

    fn inventory(&self, version: &str, extra: &str) -> PathBuf {
        let dir = self.fleet.dir().join(format!("app-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("VERSION"), version).unwrap();
        let text = format!(
            "[artifact]\npath = \"{}\"\n[env]\npath = \"/etc/demo.env\"\nvars = {{ VERSION = \"{version}\" }}\n{extra}",
            dir.display()
        );
        let text = inventory_text(&self.fleet, &HOSTS, &text).replace(
            "deploy_to = \"/opt/demo\"",
            "deploy_to = \"/opt/demo\"\nkeep_releases = 10",
        );
        write(self.fleet.dir(), &format!("inv-{version}.toml"), &text)
    }

    fn shipit(&self, args: &[&str], inv: &Path) -> (i32, String, String) {
        run(self.fleet.shipit().args(args).arg("-i").arg(inv))
    }

    /// `shipit <args> --json -i inv`: (exit code, report).
    fn json(&self, args: &[&str], inv: &Path) -> (i32, serde_json::Value, String) {
        let mut all = args.to_vec();
        all.push("--json");
        let (code, stdout, stderr) = self.shipit(&all, inv);
        let report = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{e}: {stdout}\nstderr: {stderr}"));
        (code, report, stderr)
    }

    /// Deploys `inv`, asserting exit 0; returns the release id.
    fn deploy_ok(&self, inv: &Path) -> String {
        let (code, report, stderr) = self.json(&["deploy", "test"], inv);
        assert_eq!(code, 0, "{stderr}");
        report["release"].as_str().unwrap().to_owned()
    }

    fn unlock(&self, inv: &Path) {
        let (code, _, stderr) = self.shipit(&["unlock", "test", "--yes"], inv);
        assert_eq!(code, 0, "{stderr}");
    }

    /// Starts deploying `inv`, SIGKILLs shipit once `script` succeeds on every host in
    /// `hosts`; returns the release id the killed run was deploying.
    fn killed(&self, inv: &Path, hosts: &[&str], what: &str, script: &str) -> String {
        let before = self.release_ids("h1");
        let child = self
            .fleet
            .shipit()
            .args(["deploy", "test", "-i"])
            .arg(inv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for h in hosts {
            self.wait_until(what, h, script);
        }
        kill(child);
        let after = self.release_ids("h1");
        let new: Vec<&String> = after.iter().filter(|id| !before.contains(id)).collect();
        assert_eq!(new.len(), 1, "the killed run's release: {after:?}");
        new[0].clone()
    }

    fn wait_until(&self, what: &str, host: &str, script: &str) {
        let start = Instant::now();
        while !succeeds(&self.fleet, host, script) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "never saw: {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn release_ids(&self, host: &str) -> Vec<String> {
        self.fleet
            .sh_ok(host, "ls /opt/demo/releases 2>/dev/null || true")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn version(&self, host: &str) -> String {
        self.fleet
            .sh_ok(host, "cat /opt/demo/current/VERSION")
            .trim()
            .to_owned()
    }

    fn history(&self, inv: &Path) -> Vec<serde_json::Value> {
        let (code, report, stderr) = self.json(&["history", "test"], inv);
        assert_eq!(code, 0, "{stderr}");
        report["entries"].as_array().unwrap().clone()
    }
}

fn kill(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The `after_switch` hook that holds a deploy between its switch and its confirmation (not
/// v1's: the guard runs the hook again for v1 when it goes back).
const SLOW_HOOK: &str =
    "[[hooks]]\nat = \"after_switch\"\ncommand = \"grep -qx v1 VERSION || sleep 20\"\n";

#[test]
fn a_killed_runs_guard_never_reverts_a_later_successful_deploy() {
    let rig = Rig::new();
    let extra = format!("{SLOW_HOOK}[rollout]\nconfirm_timeout = \"6s\"\n");
    let v2 = rig.inventory("v2", &extra);
    rig.killed(
        &v2,
        &["h1"],
        "h1 in the after_switch hook",
        "grep -q v2 /opt/demo/current/VERSION && pgrep -f '[s]leep 20' >/dev/null",
    );
    let killed_at = Instant::now();
    let v3 = rig.inventory("v3", "");
    rig.unlock(&v3);
    let v3_id = rig.deploy_ok(&v3);
    // Well past the dead run's timer (armed before its switch, 6 s).
    std::thread::sleep(Duration::from_secs(9).saturating_sub(killed_at.elapsed()));
    for h in HOSTS {
        assert_eq!(
            rig.version(h),
            "v3",
            "{h}: the dead run's guard reverted v3"
        );
        assert!(
            rig.fleet
                .sh_ok(h, "cat /etc/demo.env")
                .contains("VERSION=v3"),
            "{h}: env file reverted"
        );
        assert!(
            !succeeds(&rig.fleet, h, "ls /opt/demo/.shipit/guard/*.sh"),
            "{h}: a guard is still armed"
        );
    }
    let history = rig.history(&v3);
    assert_eq!(history[0]["action"], "deploy", "{history:#?}");
    assert_eq!(history[0]["release"], v3_id.as_str());
    assert!(
        history.iter().all(|e| e["action"] != "guard"),
        "{history:#?}"
    );
}

#[test]
fn a_guard_that_fires_records_when_it_fired_and_keeps_its_files_private() {
    let rig = Rig::new();
    let extra = format!("{SLOW_HOOK}[rollout]\nconfirm_timeout = \"3s\"\n");
    let v2 = rig.inventory("v2", &extra);
    let child = rig
        .fleet
        .shipit()
        .args(["deploy", "test", "-i"])
        .arg(&v2)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    rig.wait_until(
        "h1 in the after_switch hook",
        "h1",
        "grep -q v2 /opt/demo/current/VERSION && pgrep -f '[s]leep 20' >/dev/null",
    );
    // The armed guard's script carries a history line: only root reads it.
    let modes = rig.fleet.sh_ok(
        "h1",
        "stat -c '%a %n' /opt/demo/.shipit/guard /opt/demo/.shipit/guard/*.sh /opt/demo/.shipit/lock /opt/demo/.shipit/lock/owner.json",
    );
    for line in modes.lines() {
        let mode = line.split(' ').next().unwrap();
        assert!(mode == "700" || mode == "600", "{modes}");
    }
    kill(child);
    let killed_at = rig.fleet.sh_ok("h1", "date -u +%Y-%m-%dT%H:%M:%S.000Z");
    rig.wait_until(
        "the guard to revert h1",
        "h1",
        "grep -q v1 /opt/demo/current/VERSION && grep -q VERSION=v1 /etc/demo.env",
    );
    let v3 = rig.inventory("v3", "");
    rig.unlock(&v3);
    rig.deploy_ok(&v3);
    let history = rig.history(&v3);
    let actions: Vec<&str> = history
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["deploy", "unlock", "guard", "deploy"],
        "{history:#?}"
    );
    // The guard's line carries the time it fired, not the dead run's start.
    let fired = history[2]["time"].as_str().unwrap().replace('Z', ".000Z");
    assert!(
        fired.as_str() >= killed_at.trim(),
        "guard line at {fired}, killed at {killed_at}"
    );
    assert_eq!(history[2]["finished"], history[2]["time"]);
}

#[test]
fn default_rollback_skips_releases_killed_in_their_migration_or_reverted_by_the_guard() {
    let rig = Rig::new();
    let v1_id = rig.release_ids("h1")[0].clone();
    // v2: killed during its migration; complete on disk, never live.
    let v2 = rig.inventory("v2", "[migrate]\ncommand = \"sleep 20\"\n");
    let v2_id = rig.killed(
        &v2,
        &["h1"],
        "the migration",
        "pgrep -f '[s]leep 20' >/dev/null",
    );
    let v3 = rig.inventory("v3", "");
    rig.unlock(&v3);
    let v3_id = rig.deploy_ok(&v3);
    // v4: killed between its switch and its confirmation; the guard switches h1 back.
    let slow = "[health]\ncommand = \"sleep 3\"\ntimeout = \"1s\"\n[rollout]\nwaves = [\"1\"]\nconfirm_timeout = \"1s\"\n";
    let v4 = rig.inventory("v4", slow);
    let v4_id = rig.killed(
        &v4,
        &["h1"],
        "h1 to be switched",
        "grep -q v4 /opt/demo/current/VERSION",
    );
    rig.wait_until(
        "the guard to revert h1",
        "h1",
        "grep -q v3 /opt/demo/current/VERSION",
    );
    let v5 = rig.inventory("v5", "");
    rig.unlock(&v5);
    let v5_id = rig.deploy_ok(&v5);

    let (code, report, stderr) = rig.json(&["rollback", "test"], &v5);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["release"], v3_id.as_str());
    for h in HOSTS {
        assert_eq!(rig.version(h), "v3", "{h}");
    }
    // `releases` says which ones a rollback may take, and why not the others.
    let (code, releases, stderr) = rig.json(&["releases", "test"], &v5);
    assert_eq!(code, 0, "{stderr}");
    let row = |id: &str| {
        releases["releases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["release"] == id)
            .unwrap_or_else(|| panic!("no row {id}: {releases:#}"))
            .clone()
    };
    for id in [&v2_id, &v4_id] {
        let r = row(id);
        assert_eq!(r["rollback_on"], serde_json::json!([]), "{r:#}");
        assert_eq!(r["not_candidate"]["h1"], "never_passed", "{r:#}");
        assert_eq!(r["not_candidate"]["h2"], "never_passed", "{r:#}");
    }
    assert_eq!(row(&v3_id)["not_candidate"]["h1"], "current");
    // v5 was rolled back from: no default target any more (it was `newer` before).
    assert_eq!(row(&v5_id)["not_candidate"]["h2"], "never_passed");
    assert_eq!(row(&v1_id)["rollback_on"], serde_json::json!(["h1", "h2"]));
    let (_, _, table) = rig.shipit(&["releases", "test"], &v5);
    assert!(table.contains("never went live"), "{table}");

    let (code, report, stderr) = rig.json(&["rollback", "test"], &v5);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["release"], v1_id.as_str());
    for h in HOSTS {
        assert_eq!(rig.version(h), "v1", "{h}");
    }
}

/// v1 deployed, v2 failed its health gate and was switched back (history says `failed`),
/// `tasks` lines later, v3 deployed. Returns v1's id and v3's inventory.
fn failed_release_then_tasks(rig: &Rig, tasks: usize) -> (String, PathBuf) {
    let bad = rig.inventory(
        "v2",
        "[health]\ncommand = \"test \\\"$(cat VERSION)\\\" != v2\"\ntimeout = \"1s\"\ninterval = \"100ms\"\n",
    );
    let (code, _, stderr) = rig.shipit(&["deploy", "test"], &bad);
    assert_eq!(code, 3, "{stderr}");
    for h in HOSTS {
        rig.fleet.sh_ok(
            h,
            &format!(
                r#"line='{{"time":"2026-01-01T00:00:00.000Z","action":"task","outcome":"success","user":"u","machine":"m","command":"shipit task test x","duration_s":0.1,"run":"t","hosts":["h1","h2"],"message":"task `x`"}}'
i=0; while [ $i -lt {tasks} ]; do printf '%s\n' "$line"; i=$((i + 1)); done >> /opt/demo/.shipit/history.jsonl"#
            ),
        );
    }
    let v3 = rig.inventory("v3", "");
    rig.deploy_ok(&v3);
    (rig.release_ids("h1")[0].clone(), v3)
}

#[test]
fn rollback_eligibility_does_not_depend_on_history_length() {
    let rig = Rig::new();
    // 2001 `task` runs after the failed v2, its line is far from the end of the history.
    let (v1_id, v3) = failed_release_then_tasks(&rig, 2001);
    let (code, report, stderr) = rig.json(&["rollback", "test"], &v3);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        report["release"],
        v1_id.as_str(),
        "the failed v2 was picked"
    );
    for h in HOSTS {
        assert_eq!(rig.version(h), "v1", "{h}");
    }
}

#[test]
fn an_unreadable_history_stops_a_rollback() {
    let rig = Rig::new();
    let (_, v3) = failed_release_then_tasks(&rig, 0);
    rig.fleet.sh_ok(
        "h2",
        "mv /opt/demo/.shipit/history.jsonl /opt/demo/.shipit/history.bak && mkdir /opt/demo/.shipit/history.jsonl",
    );
    let (code, report, stderr) = rig.json(&["rollback", "test"], &v3);
    assert_eq!(code, 1, "{stderr}");
    let h2 = host_entry(&report, "h2")["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(h2.contains("history"), "{h2}");
    for h in HOSTS {
        assert_eq!(rig.version(h), "v3", "{h}: switched");
    }
}

#[test]
fn a_failing_migrations_secret_never_reaches_the_hosts_history_and_its_files_are_private() {
    const SECRET: &str = "Hist-Secret-7d2e91";
    let rig = Rig::new();
    // An older shipit created the history world-readable.
    for h in HOSTS {
        rig.fleet
            .sh_ok(h, "chmod 644 /opt/demo/.shipit/history.jsonl");
    }
    let app = rig.fleet.dir().join("app-v2");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("VERSION"), "v2").unwrap();
    let text = format!(
        "[artifact]\npath = \"{}\"\n[env]\npath = \"/etc/demo.env\"\nfrom_env = [\"DB_PASSWORD\"]\n[migrate]\ncommand = \"echo password $DB_PASSWORD was refused >&2; exit 1\"\n",
        app.display()
    );
    let inv = write(
        rig.fleet.dir(),
        "secret.toml",
        &inventory_text(&rig.fleet, &HOSTS, &text),
    );
    let (code, _, stderr) = run(rig
        .fleet
        .shipit()
        .env("DB_PASSWORD", SECRET)
        .args(["deploy", "test", "-i"])
        .arg(&inv));
    assert_eq!(code, 1, "{stderr}");
    for h in HOSTS {
        let history = rig.fleet.sh_ok(h, "cat /opt/demo/.shipit/history.jsonl");
        assert!(!history.contains(SECRET), "{h}: secret stored:\n{history}");
        assert_eq!(
            rig.fleet
                .sh_ok(h, "stat -c %a /opt/demo/.shipit/history.jsonl")
                .trim(),
            "600",
            "{h}"
        );
    }
    assert!(
        rig.fleet
            .sh_ok("h1", "cat /opt/demo/.shipit/history.jsonl")
            .contains("[REDACTED]"),
        "the failure is recorded, redacted"
    );
    // `history` run without the secret cannot print it either.
    let (code, stdout, stderr) =
        rig.shipit(&["history", "test", "--json"], &rig.inventory("v1", ""));
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains(SECRET), "{stdout}");
}

#[test]
fn a_confirmed_deploy_leaves_no_sleep_behind() {
    let rig = Rig::new();
    rig.deploy_ok(&rig.inventory("v2", ""));
    for h in HOSTS {
        assert!(
            !succeeds(&rig.fleet, h, "pgrep -x sleep"),
            "{h}: {}",
            rig.fleet.sh_ok(h, "ps -eo pid,args")
        );
    }
}

#[test]
fn task_exits_5_when_locked() {
    let rig = Rig::new();
    let inv = rig.inventory("v1", "[tasks.hello]\ncommand = \"echo hello\"\n");
    rig.fleet.sh_ok(
        "h2",
        r#"mkdir /opt/demo/.shipit/lock && echo '{"token":"other","user":"bob","machine":"m","pid":1,"command":"shipit deploy test","started":"2026-01-01T00:00:00Z","started_unix":1767225600}' > /opt/demo/.shipit/lock/owner.json"#,
    );
    let (code, _, stderr) = rig.shipit(&["task", "test", "hello"], &inv);
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("locked by"), "{stderr}");
    // The other run's lock stays; h1's was given back.
    assert!(succeeds(
        &rig.fleet,
        "h2",
        "grep -q other /opt/demo/.shipit/lock/owner.json"
    ));
    assert!(!succeeds(
        &rig.fleet,
        "h1",
        "test -e /opt/demo/.shipit/lock"
    ));
}
