//! Issue #17, the paths shipit writes on a host, against real sshd hosts: env staging belongs
//! to one run (finding 3), trees another user can write are refused before anything is
//! written (5), files are never created through a symlink (6), system paths are refused at
//! load and a file shipit did not write is never replaced (13), and the env file is always
//! 0600 (14).
//!
//! Victims are fresh directories (`/var/victim-harden-*`) of the host's own (its `/var` is a
//! private overlay), outside every directory a deploy may delete in; their survival is
//! asserted. `/etc/passwd` is only ever named against a fleet host, whose
//! `/etc` is a private overlay.

use std::path::{Path, PathBuf};

use crate::common::*;
use crate::support::Fleet;

const HOST: &[&str] = &["h1"];

fn app(fleet: &Fleet, version: &str) -> PathBuf {
    let dir = fleet.dir().join(format!("app-{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("VERSION"), version).unwrap();
    dir
}

/// An inventory for h1 deploying `version`, with `deploy_to` and `extra` sections.
fn inventory(fleet: &Fleet, file: &str, deploy_to: &str, version: &str, extra: &str) -> PathBuf {
    let text = inventory_text(
        fleet,
        HOST,
        &format!(
            "[artifact]\npath = \"{}\"\n{extra}",
            app(fleet, version).display()
        ),
    )
    .replace(
        "deploy_to = \"/opt/demo\"",
        &format!("deploy_to = \"{deploy_to}\""),
    );
    write(fleet.dir(), file, &text)
}

fn shipit(fleet: &Fleet, args: &[&str], inv: &Path) -> (i32, String, String) {
    run(fleet.shipit().args(args).arg("-i").arg(inv))
}

fn env(version: &str) -> String {
    format!(
        "[env]\npath = \"/etc/demo.env\"\nvars = {{ VERSION = \"{version}\" }}\n[tasks.show]\ncommand = \"printf %s \\\"$VERSION\\\" > /tmp/shown\"\n"
    )
}

/// Every `/etc/demo.env.shipit-*` on h1.
fn staged(fleet: &Fleet) -> String {
    fleet.sh_ok(
        "h1",
        "for f in /etc/demo.env.shipit-*; do test -e \"$f\" && echo \"$f\"; done; true",
    )
}

#[test]
fn staging_of_a_failed_run_is_removed_and_never_read_by_another() {
    let fleet = Fleet::start(1);
    let v1 = inventory(&fleet, "v1.toml", "/opt/demo", "v1", &env("v1"));
    let (code, _, stderr) = shipit(&fleet, &["deploy", "test"], &v1);
    assert_eq!(code, 0, "{stderr}");

    // A deploy with a new env value fails after staging it.
    let failing = format!(
        "{}[[hooks]]\nat = \"after_upload\"\ncommand = \"exit 3\"\n",
        env("v2")
    );
    let v2 = inventory(&fleet, "v2.toml", "/opt/demo", "v2", &failing);
    let (code, _, stderr) = shipit(&fleet, &["deploy", "test"], &v2);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(staged(&fleet), "", "the failed run's staging stays");

    // A task and a deploy whose env is unchanged see the live file only.
    let (code, _, stderr) = shipit(&fleet, &["task", "test", "show"], &v1);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(fleet.sh_ok("h1", "cat /tmp/shown"), "v1");
    let (code, _, stderr) = shipit(&fleet, &["deploy", "test"], &v1);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        fleet
            .sh_ok("h1", "cat /etc/demo.env")
            .contains("VERSION=v1")
    );

    // What a killed run left (this version's name, and the unnamed one of earlier versions)
    // is read by nobody and removed by `unlock`.
    let header = "# written by shipit: changes here are replaced on the next deploy";
    fleet.sh_ok(
        "h1",
        &format!(
            "for f in /etc/demo.env.shipit-next /etc/demo.env.shipit-next-0123456789abcdef; do printf '%s\\nVERSION=evil\\n' '{header}' > \"$f\"; chmod 600 \"$f\"; done"
        ),
    );
    let (code, _, stderr) = shipit(&fleet, &["task", "test", "show"], &v1);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(fleet.sh_ok("h1", "cat /tmp/shown"), "v1");
    let (code, _, stderr) = shipit(&fleet, &["deploy", "test"], &v1);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        fleet
            .sh_ok("h1", "cat /etc/demo.env")
            .contains("VERSION=v1")
    );
    let (code, _, stderr) = shipit(&fleet, &["unlock", "test", "--yes"], &v1);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(staged(&fleet), "");
}

#[test]
fn switching_back_the_env_file_never_writes_through_a_symlink() {
    let fleet = Fleet::start(1);
    let v1 = inventory(&fleet, "v1.toml", "/opt/demo", "v1", &env("v1"));
    let (code, _, stderr) = shipit(&fleet, &["deploy", "test"], &v1);
    assert_eq!(code, 0, "{stderr}");
    // Names next to the env file that earlier versions wrote through, planted as symlinks
    // to a file of root's.
    fleet.sh_ok(
        "h1",
        "mkdir -p /var/victim-harden-f6 && echo untouched > /var/victim-harden-f6/file \
         && for t in tmp next next.shipit-tmp; do ln -sfn /var/victim-harden-f6/file /etc/demo.env.shipit-$t; done",
    );
    let sick = format!(
        "{}[health]\ncommand = \"test \\\"$(cat VERSION)\\\" = v1\"\ntimeout = \"1s\"\ninterval = \"200ms\"\n",
        env("v2")
    );
    let v2 = inventory(&fleet, "v2.toml", "/opt/demo", "v2", &sick);
    let (code, _, stderr) = shipit(&fleet, &["deploy", "test"], &v2);
    assert_eq!(code, 3, "switched back: {stderr}");
    let victim = fleet.sh_ok("h1", "cat /var/victim-harden-f6/file");
    let env_file = fleet.sh(
        "h1",
        "test ! -L /etc/demo.env && stat -c '%a %U' /etc/demo.env",
    );
    let env_file = String::from_utf8_lossy(&env_file.stdout).into_owned();
    let content = fleet.sh_ok("h1", "cat /etc/demo.env");
    fleet.sh_ok("h1", "rm -rf /etc/demo.env.shipit-*");
    assert_eq!(victim, "untouched\n");
    assert_eq!(env_file.trim(), "600 root");
    assert!(content.contains("VERSION=v1"), "{content}");
}

#[test]
fn trees_another_user_can_write_are_refused_before_anything_is_written() {
    let fleet = Fleet::start(1);
    fleet.sh_ok(
        "h1",
        "mkdir -p /srv/f5-owned /srv/f5-open /srv/f5-env /srv/f5-clean /srv/f5-guard/app/.shipit/guard \
           /srv/f5-link/app /tmp/f5-nobody /tmp/f5-root /var/victim-harden-f5 \
         && chown nobody /srv/f5-owned /srv/f5-env /tmp/f5-nobody /srv/f5-guard/app/.shipit/guard \
         && chmod 777 /srv/f5-open && chmod 755 /tmp/f5-root \
         && echo keep > /var/victim-harden-f5/file && ln -s /var/victim-harden-f5 /srv/f5-link/app/releases",
    );
    let unsafe_cases = [
        (
            "/srv/f5-owned/app",
            "",
            "`/srv/f5-owned` is owned by nobody",
        ),
        (
            "/srv/f5-open/app",
            "",
            "`/srv/f5-open` is owned by root (uid 0) with mode 777",
        ),
        (
            "/tmp/f5-nobody/app",
            "",
            "`/tmp/f5-nobody` is owned by nobody",
        ),
        (
            "/srv/f5-clean/app",
            "[env]\npath = \"/srv/f5-env/demo.env\"\nvars = { A = \"1\" }\n",
            "`/srv/f5-env` is owned by nobody",
        ),
        (
            "/srv/f5-guard/app",
            "",
            "`/srv/f5-guard/app/.shipit/guard` is owned by nobody",
        ),
        (
            "/srv/f5-link/app",
            "",
            "`/srv/f5-link/app/releases` is a symlink",
        ),
    ];
    let before = fleet.sh_ok(
        "h1",
        "find /srv /tmp/f5-nobody /var/victim-harden-f5 | sort",
    );
    for (i, (deploy_to, extra, expect)) in unsafe_cases.iter().enumerate() {
        let extra = format!(
            "{extra}[tasks.t]\ncommand = \"touch /tmp/task-ran\"\n[backup]\nkind = \"command\"\ncommand = \"echo dump\"\ndir = \"/var/backups/f5\"\n"
        );
        let inv = inventory(&fleet, &format!("unsafe-{i}.toml"), deploy_to, "v1", &extra);
        for args in [
            &["deploy", "test"][..],
            &["task", "test", "t"],
            &["backup", "test"],
            &["rollback", "test"],
            &["unlock", "test", "--yes"],
        ] {
            let (code, _, stderr) = shipit(&fleet, args, &inv);
            assert_eq!(code, 1, "{deploy_to} {args:?}: {stderr}");
            assert!(stderr.contains(expect), "{deploy_to} {args:?}: {stderr}");
        }
    }
    let after = fleet.sh_ok(
        "h1",
        "find /srv /tmp/f5-nobody /var/victim-harden-f5 | sort",
    );
    let ran = succeeds(
        &fleet,
        "h1",
        "test -e /tmp/task-ran || test -e /var/backups/f5",
    );
    assert_eq!(before, after, "something was written");
    assert!(!ran, "a task or backup ran");

    // Under the sticky /tmp, a directory of root's is fine.
    let inv = inventory(&fleet, "tmp-ok.toml", "/tmp/f5-root/app", "v1", "");
    let (code, _, stderr) = shipit(&fleet, &["deploy", "test"], &inv);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        fleet.sh_ok("h1", "cat /tmp/f5-root/app/current/VERSION"),
        "v1"
    );
}

#[test]
fn system_paths_are_refused_at_load_with_their_position() {
    let fleet = Fleet::start(1);
    let passwd = fleet.sh_ok("h1", "sha256sum /etc/passwd");
    let cases = [
        (
            "/opt/demo",
            "[env]\npath = \"/etc/passwd\"\nvars = { A = \"1\" }\n",
            "`env.path`: `/etc/passwd` would replace a file of the system",
        ),
        (
            "/root/.ssh",
            "",
            "`app.deploy_to`: `/root/.ssh` is in `.ssh`, a user's configuration",
        ),
        (
            "/boot/efi",
            "",
            "`app.deploy_to`: `/boot/efi` is in `/boot`",
        ),
        (
            "/usr/local/lib",
            "",
            "`app.deploy_to`: `/usr/local/lib` is in `/usr`",
        ),
        (
            "/opt/demo",
            "[backup]\nkind = \"command\"\ncommand = \"echo x\"\ndir = \"/\"\n",
            "`backup.dir`: `/` is a system directory",
        ),
    ];
    for (i, (deploy_to, extra, expect)) in cases.iter().enumerate() {
        let inv = inventory(&fleet, &format!("system-{i}.toml"), deploy_to, "v1", extra);
        let (code, _, stderr) = shipit(&fleet, &["deploy", "test"], &inv);
        assert_eq!(code, 2, "{deploy_to}: {stderr}");
        // file:line:col, then the key and the reason.
        let at = format!("{}:", inv.display());
        let line = stderr.lines().find(|l| l.contains(expect));
        let line = line.unwrap_or_else(|| panic!("{expect}: {stderr}"));
        let pos: Vec<&str> = line[line.find(&at).expect("file named") + at.len()..]
            .splitn(3, ':')
            .collect();
        assert!(
            pos[0].parse::<u32>().is_ok() && pos[1].parse::<u32>().is_ok(),
            "{line}"
        );
    }
    assert_eq!(fleet.sh_ok("h1", "sha256sum /etc/passwd"), passwd);
    assert!(!succeeds(&fleet, "h1", "test -e /opt/demo"));
}

#[test]
fn an_existing_file_shipit_did_not_write_is_never_replaced() {
    let fleet = Fleet::start(1);
    fleet.sh_ok(
        "h1",
        "printf 'KEEP=1\\n' > /etc/foreign.env && chmod 644 /etc/foreign.env",
    );
    let extra = "[env]\npath = \"/etc/foreign.env\"\nvars = { A = \"1\" }\n";
    let inv = inventory(&fleet, "foreign.toml", "/opt/demo", "v1", extra);
    let (code, _, stderr) = shipit(&fleet, &["deploy", "test"], &inv);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("`/etc/foreign.env` exists and was not written by shipit"),
        "{stderr}"
    );
    assert_eq!(fleet.sh_ok("h1", "cat /etc/foreign.env"), "KEEP=1\n");
    assert!(!succeeds(&fleet, "h1", "test -e /opt/demo/current"));
    assert!(!succeeds(
        &fleet,
        "h1",
        "ls /etc/foreign.env.* 2>/dev/null | grep -q ."
    ));

    // One an earlier shipit wrote (its header) is replaced as before.
    fleet.sh_ok(
        "h1",
        "printf '# written by shipit: changes here are replaced on the next deploy\\nA=0\\n' > /etc/foreign.env",
    );
    let (code, _, stderr) = shipit(&fleet, &["deploy", "test"], &inv);
    assert_eq!(code, 0, "{stderr}");
    assert!(fleet.sh_ok("h1", "cat /etc/foreign.env").contains("A=1"));
}

#[test]
fn an_unchanged_env_file_with_loose_mode_becomes_0600_again() {
    let fleet = Fleet::start(1);
    let v1 = inventory(&fleet, "v1.toml", "/opt/demo", "v1", &env("v1"));
    let (code, _, stderr) = shipit(&fleet, &["deploy", "test"], &v1);
    assert_eq!(code, 0, "{stderr}");
    fleet.sh_ok(
        "h1",
        "chmod 644 /etc/demo.env && chown nobody /etc/demo.env",
    );
    let (code, _, stderr) = shipit(&fleet, &["deploy", "test"], &v1);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        fleet.sh_ok("h1", "stat -c '%a %U' /etc/demo.env").trim(),
        "600 root"
    );
    assert!(
        fleet
            .sh_ok("h1", "cat /etc/demo.env")
            .contains("VERSION=v1")
    );
}
