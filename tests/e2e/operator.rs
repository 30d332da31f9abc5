//! What operators coming from Kamal, Capistrano or Deployer reach for, on real hosts:
//! `shipit lock -m` / `unlock`, the git commit with its `-dirty` mark in `REVISION`,
//! `releases`, `history` and `status`, `shipit shell` through a real pseudo-terminal, and
//! `shipit logs` (the journal on systemd hosts, Compose stacks on a Docker engine).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::Fleet;

/// A small app directory under `dir`.
fn app(dir: &Path, version: &str) -> PathBuf {
    put(dir, "index.html", format!("<p>{version}</p>\n").as_bytes());
    dir.to_path_buf()
}

/// An inventory for `hosts` of `fleet` deploying `artifact`, with `extra` appended.
fn inventory(fleet: &Fleet, hosts: &[&str], artifact: &Path, extra: &str) -> PathBuf {
    let text = inventory_text(
        fleet,
        hosts,
        &format!("[artifact]\npath = \"{}\"\n{extra}", artifact.display()),
    );
    write(fleet.dir(), "inv.toml", &text)
}

fn json(out: &(i32, String, String)) -> serde_json::Value {
    serde_json::from_str(&out.1)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", out.1, out.2))
}

fn lock_dir_exists(fleet: &Fleet, host: &str) -> bool {
    succeeds(fleet, host, "test -d /opt/demo/.shipit/lock")
}

#[test]
fn a_lock_taken_on_purpose_refuses_deploys_with_its_message_until_unlocked() {
    let fleet = Fleet::start(2);
    let artifact = app(&fleet.dir().join("app"), "1");
    // Locks older than a second would be stale: a lock taken on purpose never is.
    let inv = inventory(
        &fleet,
        &["h1", "h2"],
        &artifact,
        "[rollout]\nlock_timeout = \"1s\"\n",
    );
    let shipit = |args: &[&str]| run(fleet.shipit().args(args).arg("-i").arg(&inv));
    assert_eq!(shipit(&["deploy", "test"]).0, 0);

    // A bad message is a usage error, and nothing is locked.
    let (code, _, stderr) = shipit(&["lock", "test", "-m", "two\nlines"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("control character"), "{stderr}");
    let (code, _, stderr) = shipit(&["lock", "test"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(!lock_dir_exists(&fleet, "h1") && !lock_dir_exists(&fleet, "h2"));

    // All or nothing: h2 already locked, so h1 is not locked either.
    let (code, _, stderr) = shipit(&["lock", "test", "--hosts", "h2", "-m", "h2 only"]);
    assert_eq!(code, 0, "{stderr}");
    let out = shipit(&["lock", "test", "-m", "whole stage", "--json"]);
    assert_eq!(out.0, 5, "{}", out.2);
    let report = json(&out);
    assert_eq!(report["locked"], false);
    assert_eq!(host_entry(&report, "h2")["held"], true);
    assert_eq!(host_entry(&report, "h2")["held_by"]["message"], "h2 only");
    assert!(!lock_dir_exists(&fleet, "h1"));
    assert_eq!(shipit(&["unlock", "test", "--yes"]).0, 0);

    let why = "db maintenance until 14:00, ask Ålice";
    let (code, _, stderr) = shipit(&["lock", "test", "-m", why]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("locked: \"db maintenance"), "{stderr}");
    for h in ["h1", "h2"] {
        let owner = fleet.sh_ok(h, "cat /opt/demo/.shipit/lock/owner.json");
        let owner: serde_json::Value = serde_json::from_str(&owner).unwrap();
        assert_eq!(owner["message"], why);
    }
    std::thread::sleep(Duration::from_millis(2100));

    // status shows it, human and JSON.
    let out = shipit(&["status", "test", "--json"]);
    let status = json(&out);
    for h in ["h1", "h2"] {
        let entry = host_entry(&status, h);
        assert_eq!(entry["lock_message"], why);
        let by = entry["locked_by"].as_str().unwrap();
        assert!(by.contains("on purpose") && by.contains(why), "{by}");
        assert!(!by.contains("STALE"), "{by}");
    }
    let (_, _, stderr) = shipit(&["status", "test"]);
    assert!(
        stderr.contains("LOCKED") && stderr.contains(why),
        "{stderr}"
    );

    // A deploy is refused with exit 5, saying who, since when and why; nothing changes.
    let before = fleet.sh_ok("h1", "readlink /opt/demo/current");
    put(&artifact, "index.html", b"<p>2</p>\n");
    let out = shipit(&["deploy", "test", "--json"]);
    assert_eq!(out.0, 5, "{}", out.2);
    let report = json(&out);
    let held = &host_entry(&report, "h1")["locked_by"];
    assert_eq!(held["message"], why);
    let error = host_entry(&report, "h1")["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains(why) && error.contains("on purpose since") && !error.contains("STALE"),
        "{error}"
    );
    let (code, _, stderr) = shipit(&["deploy", "test"]);
    assert_eq!(code, 5);
    assert!(stderr.contains(why), "{stderr}");
    assert_eq!(fleet.sh_ok("h1", "readlink /opt/demo/current"), before);
    // So is a second lock.
    assert_eq!(shipit(&["lock", "test", "-m", "again"]).0, 5);

    // unlock removes it (without `--yes` and no terminal: kept, and said why).
    let (code, _, stderr) = run(fleet
        .shipit()
        .args(["unlock", "test", "-i"])
        .arg(&inv)
        .stdin(Stdio::null()));
    assert_eq!(code, 1, "{stderr}");
    assert!(lock_dir_exists(&fleet, "h1"));
    let (code, _, stderr) = shipit(&["unlock", "test", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!lock_dir_exists(&fleet, "h1") && !lock_dir_exists(&fleet, "h2"));

    // History records both.
    let history = json(&shipit(&["history", "test", "--json"]));
    let entries = history["entries"].as_array().unwrap();
    let lock = entries
        .iter()
        .find(|e| e["action"] == "lock" && e["message"] == why)
        .unwrap_or_else(|| panic!("no lock entry: {history:#}"));
    assert_eq!(lock["hosts"].as_array().unwrap().len(), 2);
    let unlock = entries
        .iter()
        .find(|e| e["action"] == "unlock" && e["message"].as_str().unwrap().contains(why))
        .unwrap_or_else(|| panic!("no unlock entry: {history:#}"));
    assert!(
        unlock["message"]
            .as_str()
            .unwrap()
            .contains("took on purpose"),
        "{unlock:#}"
    );
    let (_, _, stderr) = shipit(&["history", "test"]);
    assert!(stderr.contains(&format!("lock {why:?}")), "{stderr}");

    // And deploys go again.
    assert_eq!(shipit(&["deploy", "test"]).0, 0);
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_git_commit_and_a_dirty_mark_show_in_revision_releases_history_and_status() {
    let fleet = Fleet::start(1);
    // The project: a git checkout holding the app; the inventory lives outside it.
    let project = fleet.dir().join("project");
    let artifact = app(&project.join("app"), "1");
    write(&project, ".gitignore", "dist/\n");
    git(&project, &["init", "-q"]);
    git(&project, &["add", "."]);
    git(&project, &["commit", "-q", "-m", "one"]);
    let sha = git(&project, &["rev-parse", "HEAD"]);
    let inv = inventory(&fleet, &["h1"], &artifact, "");
    let shipit = |args: &[&str]| {
        run(fleet
            .shipit()
            .current_dir(&project)
            .args(args)
            .arg("-i")
            .arg(&inv))
    };
    let revision = || fleet.sh_ok("h1", "cat /opt/demo/current/REVISION | sed -n 's/^git=//p'");

    // Clean: the commit alone. An ignored file is no change.
    put(&project, "dist/out", b"built\n");
    let out = shipit(&["deploy", "test", "--json"]);
    assert_eq!(out.0, 0, "{}", out.2);
    let clean_release = json(&out)["release"].as_str().unwrap().to_owned();
    assert_eq!(revision(), format!("{sha}\n"));

    // Uncommitted changes: the same commit, marked.
    put(&artifact, "index.html", b"<p>2, not committed</p>\n");
    let out = shipit(&["deploy", "test", "--json"]);
    assert_eq!(out.0, 0, "{}", out.2);
    let dirty_release = json(&out)["release"].as_str().unwrap().to_owned();
    let dirty = format!("{sha}-dirty");
    assert_eq!(revision(), format!("{dirty}\n"));

    let releases = json(&shipit(&["releases", "test", "--json"]));
    let git_of = |id: &str| {
        releases["releases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["release"] == id)
            .unwrap_or_else(|| panic!("{id} not in {releases:#}"))["git"]
            .clone()
    };
    assert_eq!(git_of(&clean_release), sha.as_str());
    assert_eq!(git_of(&dirty_release), dirty.as_str());
    let (_, _, stderr) = shipit(&["releases", "test"]);
    assert!(
        stderr.contains(&format!("{}-dirty", &sha[..12])),
        "{stderr}"
    );

    let status = json(&shipit(&["status", "test", "--json"]));
    assert_eq!(host_entry(&status, "h1")["git"], dirty.as_str());
    let (_, _, stderr) = shipit(&["status", "test"]);
    assert!(
        stderr.contains(&format!("{}-dirty", &sha[..12])),
        "{stderr}"
    );

    // A rollback records the commit of the release it goes back to.
    let (code, _, stderr) = shipit(&["rollback", "test"]);
    assert_eq!(code, 0, "{stderr}");
    let status = json(&shipit(&["status", "test", "--json"]));
    assert_eq!(host_entry(&status, "h1")["git"], sha.as_str());

    let history = json(&shipit(&["history", "test", "--json"]));
    let entries = history["entries"].as_array().unwrap();
    let gits: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["git"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        gits,
        [
            ("rollback", sha.as_str()),
            ("deploy", dirty.as_str()),
            ("deploy", sha.as_str())
        ]
    );
    let (_, _, stderr) = shipit(&["history", "test"]);
    assert!(
        stderr.contains(&format!("{}-dirty", &sha[..12])),
        "{stderr}"
    );

    // Outside a checkout, there is no commit to record.
    let out = run(fleet
        .shipit()
        .current_dir(fleet.dir())
        .args(["deploy", "test", "--json", "-i"])
        .arg(&inv));
    assert_eq!(out.0, 0, "{}", out.2);
    assert_eq!(revision(), "");
}

/// `text` as one `sh` word.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Runs `shipit <args>` under a real pseudo-terminal (util-linux `script`), typing `keys`;
/// returns (exit code, everything the terminal showed). The keys' pipe stays open until
/// shipit ends, as a person's keyboard would.
fn in_terminal(fleet: &Fleet, args: &[String], keys: &str) -> (i32, String) {
    let shipit = fleet.shipit();
    let program = shipit.get_program().to_string_lossy().into_owned();
    // A window of 123x45; around shipit: whether it left the terminal's settings as it
    // found them.
    let mut line = format!(
        "stty cols 123 rows 45; before=$(stty -g); {}",
        quote(&program)
    );
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    line.push_str("; s=$?; [ \"$(stty -g)\" = \"$before\" ] && echo terminal-restored; exit $s");
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &line, "/dev/null"])
        .env_clear()
        .env("PATH", crate::support::CLEAN_PATH)
        .env("HOME", fleet.home())
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run script");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(keys.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the shell did not end");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn shell_opens_a_login_shell_in_the_current_release_through_a_real_terminal() {
    let fleet = Fleet::start(2);
    let artifact = app(&fleet.dir().join("app"), "1");
    let inv = inventory(&fleet, &["h1", "h2"], &artifact, "");
    let out = run(fleet
        .shipit()
        .args(["deploy", "test", "--json", "-i"])
        .arg(&inv));
    assert_eq!(out.0, 0, "{}", out.2);
    let release = json(&out)["release"].as_str().unwrap().to_owned();
    let args = |hosts: &str| -> Vec<String> {
        [
            "shell",
            "test",
            "-i",
            &inv.display().to_string(),
            "--hosts",
            hosts,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    // The pseudo-terminal: where it starts, the local window's size, a tty on the remote
    // side, and the shell's exit status as shipit's.
    let (code, shown) = in_terminal(
        &fleet,
        &args("h1"),
        "pwd; stty size; test -t 0 && echo remote-tty; hostname; exit 3\n",
    );
    assert_eq!(code, 3, "{shown}");
    assert!(shown.contains("terminal-restored"), "{shown}");
    assert!(
        shown.contains(&format!("/opt/demo/releases/{release}\r\n")),
        "{shown}"
    );
    assert!(shown.contains("45 123\r\n"), "{shown}");
    assert!(shown.contains("remote-tty\r\n"), "{shown}");
    assert!(shown.contains("h1\r\n"), "{shown}");
    let (code, shown) = in_terminal(&fleet, &args("h2"), "exit\n");
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("terminal-restored"), "{shown}");

    // Not one host, or no terminal: a usage error before anything connects.
    let (code, _, stderr) = run(fleet
        .shipit()
        .args(["shell", "test", "-i"])
        .arg(&inv)
        .stdin(Stdio::null()));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("2 are selected (h1, h2)"), "{stderr}");
    let (code, _, stderr) = run(fleet
        .shipit()
        .args(["shell", "test", "--hosts", "h1", "-i"])
        .arg(&inv)
        .stdin(Stdio::null()));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("stdin is not a terminal"), "{stderr}");
    let accepted = fleet.host("h1").log().matches("Accepted publickey").count();
    let (code, shown) = in_terminal(&fleet, &args("h1,h2"), "");
    assert_eq!(code, 2, "{shown}");
    // Connections so far: the deploy and the one shell of h1.
    assert_eq!(
        fleet.host("h1").log().matches("Accepted publickey").count(),
        accepted
    );
}

/// A unit whose program says which release it runs, then ticks on stdout and complains
/// once on stderr: both reach the journal.
const TICKER: &str = "#!/bin/sh\necho \"started $(cat VERSION)\"\necho 'a complaint' >&2\ni=0\nwhile :; do i=$((i+1)); echo \"tick $i\"; sleep 0.2; done\n";

const TICKER_UNIT: &str = "[Unit]\nDescription=ticker\n\n[Service]\nWorkingDirectory={{ app.current }}\nExecStart=/bin/sh {{ app.current }}/ticker.sh\n\n[Install]\nWantedBy=multi-user.target\n";

/// Lines of `text` that `host` printed on stdout (`host | line`, the name padded to the
/// longest), without the prefix.
fn lines_of<'a>(text: &'a str, host: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| {
            l.strip_prefix(host)?
                .trim_start_matches(' ')
                .strip_prefix("| ")
        })
        .collect()
}

#[test]
fn logs_show_each_units_journal_prefixed_by_host_and_follow_until_ctrl_c() {
    use crate::support::systemd::SystemdFleet;
    let fleet = SystemdFleet::start(1);
    let dir = fleet.dir().to_path_buf();
    let artifact = dir.join("app");
    put(&artifact, "ticker.sh", TICKER.as_bytes());
    put(&artifact, "VERSION", b"v1\n");
    let unit = write(&dir, "ticker.service.j2", TICKER_UNIT);
    let s1 = fleet.host("s1");
    let gone = crate::support::free_port();
    let head = format!(
        "[app]\nname = \"demo\"\ndeploy_to = \"/opt/demo\"\n\n[ssh]\nidentity = \"{}\"\nknown_hosts = \"{}\"\nconnect_timeout = \"5s\"\n\n[artifact]\npath = \"{}\"\n\n[[systemd]]\nunit = \"demo-ticker.service\"\ntemplate = \"{}\"\n\n[[hosts]]\nname = \"s1\"\naddress = \"{}\"\n",
        fleet.client_key().display(),
        fleet.known_hosts().display(),
        artifact.display(),
        unit.display(),
        s1.address,
    );
    let inv = write(&dir, "inv.toml", &head);
    let (code, _, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&inv));
    assert_eq!(code, 0, "{stderr}");

    // The last N lines of the journal, each prefixed by its host, the unit's stderr too.
    let deadline = Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let (code, stdout, stderr) = run(fleet
            .shipit()
            .args(["logs", "test", "-n", "1000", "-i"])
            .arg(&inv));
        assert_eq!(code, 0, "{stderr}");
        if lines_of(&stdout, "s1").iter().any(|l| l.contains("tick 3")) {
            break stdout;
        }
        assert!(
            Instant::now() < deadline,
            "no ticks in the journal: {stdout}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let lines = lines_of(&shown, "s1");
    assert!(lines.iter().any(|l| l.contains("started v1")), "{shown}");
    assert!(lines.iter().any(|l| l.contains("a complaint")), "{shown}");
    // `-o short-iso`: each entry starts with its time.
    assert!(lines.iter().all(|l| l.starts_with("20")), "{shown}");
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["logs", "test", "-n", "3", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{stderr}");
    let ticks = lines_of(&stdout, "s1");
    assert_eq!(ticks.len(), 3, "{stdout}");
    assert!(ticks.iter().all(|l| l.contains("tick")), "{stdout}");

    // A host that cannot be reached is reported, and the exit code says so; the others'
    // logs still show.
    let two = write(
        &dir,
        "inv-two.toml",
        &format!("{head}\n[[hosts]]\nname = \"gone\"\naddress = \"127.0.0.1\"\nport = {gone}\n"),
    );
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["logs", "test", "-n", "5", "-i"])
        .arg(&two));
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(lines_of(&stdout, "s1").len(), 5, "{stdout}");
    assert!(
        stderr.contains("gone") && stderr.contains("1 of 2 hosts"),
        "{stderr}"
    );

    // Following: new lines stream until Ctrl-C, then exit 0, and nothing is left running
    // on the host.
    let mut child = fleet
        .shipit()
        .args(["logs", "test", "-f", "-n", "1", "--progress", "never", "-i"])
        .arg(&inv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => seen.push(line),
            Err(e) => panic!("following stopped ({e}): {seen:?}"),
        }
    }
    assert!(seen.iter().all(|l| l.starts_with("s1 | ")), "{seen:?}");
    let followers = || {
        fleet
            .sh_ok("s1", "pgrep -c -x journalctl || true")
            .trim()
            .to_owned()
    };
    assert_eq!(followers(), "1");
    // Quiet from now on: a follower that only stops when a write fails would stay.
    fleet.sh_ok("s1", "systemctl stop demo-ticker.service");
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    // The readers end when their stdin does: at once, not after shipit's 5 s of grace for
    // a host that does not answer.
    let interrupted = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            interrupted.elapsed() < Duration::from_secs(15),
            "still following after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = interrupted.elapsed();
    assert!(took < Duration::from_secs(4), "Ctrl-C took {took:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let left = || {
        fleet
            .sh_ok("s1", "pgrep -c -x journalctl; pgrep -c -x cat; true")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    while left() != "0 0" {
        assert!(
            Instant::now() < deadline,
            "the follower still runs on the host: {}",
            fleet.sh_ok("s1", "ps -ef")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn logs_read_both_instances_of_a_blue_green_unit() {
    use crate::support::systemd::SystemdFleet;
    let fleet = SystemdFleet::start(1);
    // Two instances started by hand: `logs` reads what the inventory names, deployed or not.
    fleet.sh_ok(
        "s1",
        "printf '[Service]\\nExecStart=/bin/sh -c \"echo instance-%%i; exec sleep infinity\"\\n' > /etc/systemd/system/demo-bg@.service \
         && systemctl daemon-reload && systemctl start demo-bg@3001.service demo-bg@3002.service",
    );
    let dir = fleet.dir();
    let inv = write(
        dir,
        "inv.toml",
        &format!(
            "[app]\nname = \"demo\"\ndeploy_to = \"/opt/demo\"\n\n[ssh]\nidentity = \"{}\"\nknown_hosts = \"{}\"\n\n[[systemd]]\nunit = \"demo-bg@.service\"\ntemplate = \"unused.j2\"\nports = [3001, 3002]\n\n[nginx]\nsite = \"demo\"\ntemplate = \"unused.j2\"\n\n[[health]]\nurl = \"http://127.0.0.1:{{{{ port }}}}/\"\n\n[[hosts]]\nname = \"s1\"\naddress = \"{}\"\n",
            fleet.client_key().display(),
            fleet.known_hosts().display(),
            fleet.host("s1").address,
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, stdout, stderr) = run(fleet.shipit().args(["logs", "test", "-i"]).arg(&inv));
        assert_eq!(code, 0, "{stderr}");
        let lines = lines_of(&stdout, "s1");
        if ["instance-3001", "instance-3002"]
            .iter()
            .all(|i| lines.iter().any(|l| l.contains(i)))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{stdout}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn logs_without_units_or_compose_is_a_usage_error() {
    let fleet = Fleet::start(1);
    let artifact = app(&fleet.dir().join("app"), "1");
    let inv = inventory(&fleet, &["h1"], &artifact, "");
    let (code, _, stderr) = run(fleet.shipit().args(["logs", "test", "-i"]).arg(&inv));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no `[[systemd]]` unit"), "{stderr}");
    assert!(!fleet.host("h1").log().contains("Accepted publickey"));
}

#[test]
fn logs_of_a_compose_stack_come_from_its_services() {
    use crate::support::docker::docker;
    let d = docker();
    let fleet = Fleet::start(1);
    d.expose_to(&fleet, "h1");
    let project = d.project("shipitlogs");
    let image = format!("shipit-test/logs-{}", project.name());
    d.build_image(
        &format!("{image}:1"),
        &format!("FROM {}\n", d.base_image()),
        &[],
    );
    // Each service says hello with the tag it runs, then stays.
    let compose = write(
        fleet.dir(),
        "compose.yml.j2",
        "services:\n  web:\n    image: \"{{ host.vars.image }}:${APP_TAG}\"\n    command: [\"sh\", \"-c\", \"echo web-says-hello-$$APP_TAG; exec sleep 3600\"]\n    environment:\n      APP_TAG: \"${APP_TAG}\"\n  worker:\n    image: \"{{ host.vars.image }}:${APP_TAG}\"\n    command: [\"sh\", \"-c\", \"echo worker-complains >&2; exec sleep 3600\"]\n",
    );
    let artifact = app(&fleet.dir().join("app"), "1");
    let inv = write(
        fleet.dir(),
        "inv.toml",
        &inventory_text(
            &fleet,
            &[],
            &format!(
                "[artifact]\npath = \"{}\"\n[env]\npath = \"/etc/web.env\"\nvars = {{ APP_TAG = \"1\" }}\n[compose]\nfile = \"{}\"\nproject = \"{}\"\npull = false\n\n[[hosts]]\nname = \"h1\"\naddress = \"127.0.0.1\"\nport = {}\nvars = {{ image = \"{image}\" }}\n",
                artifact.display(),
                compose.display(),
                project.name(),
                fleet.host("h1").port,
            ),
        ),
    );
    // Before any deploy there is no compose file to read the stack from.
    let (code, _, stderr) = run(fleet.shipit().args(["logs", "test", "-i"]).arg(&inv));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("nothing is deployed yet"), "{stderr}");

    let (code, _, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&inv));
    assert_eq!(code, 0, "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, stdout, stderr) = run(fleet
            .shipit()
            .args(["logs", "test", "-n", "10", "-i"])
            .arg(&inv));
        assert_eq!(code, 0, "{stderr}");
        let lines = lines_of(&stdout, "h1");
        let web = lines.iter().any(|l| l.contains("web-says-hello-1"));
        let worker = lines.iter().any(|l| l.contains("worker-complains"));
        if web && worker {
            break;
        }
        assert!(Instant::now() < deadline, "{stdout}\n{stderr}");
        std::thread::sleep(Duration::from_millis(300));
    }
}
