//! The secrets audit: distinctive secret values through every path that can carry them —
//! the env file, a backup, a migration, hooks, a failing hook that prints the secret on its
//! stderr, `-v`, `--json`, GitHub Actions mode — while every process's argv on the hosts is
//! sampled. Zero occurrences anywhere shipit prints, in history, or in any argv.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::*;
use crate::support::Fleet;

const TOKEN: &str = "zz-Secret-Token-4b1d9c";
const DB_PASSWORD: &str = "Pw-9f3e-unique";

#[test]
fn no_secret_value_appears_in_argv_output_json_annotations_or_history() {
    let fleet = Fleet::start(2);
    let app = fleet.dir().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("VERSION"), "1").unwrap();
    let database_url = format!("postgres://app:{DB_PASSWORD}@127.0.0.1:1/app");
    let extra = |hook_fails: bool| {
        format!(
            r#"[artifact]
path = "{}"
[env]
path = "/etc/demo.env"
from_env = ["API_TOKEN", "DATABASE_URL"]
[backup]
kind = "command"
command = "printf 'token=%s' \"$API_TOKEN\" | base64"
dir = "/var/backups/demo"
[migrate]
command = "test -n \"$API_TOKEN\" && echo migrating with a token of ${{#API_TOKEN}} characters"
[[hooks]]
at = "after_switch"
command = "echo hook sees {}; test -n \"$DATABASE_URL\""
[[hooks]]
at = "after_restart"
command = "{}"
"#,
            app.display(),
            "the env",
            if hook_fails {
                "echo leaking $API_TOKEN and $DATABASE_URL >&2; exit 1"
            } else {
                "true"
            },
        )
    };
    let good = write(
        fleet.dir(),
        "good.toml",
        &inventory_text(&fleet, &["h1", "h2"], &extra(false)),
    );
    let bad = write(
        fleet.dir(),
        "bad.toml",
        &inventory_text(&fleet, &["h1", "h2"], &extra(true)),
    );
    let summary = fleet.dir().join("summary.md");
    let shipit = |args: &[&str], inv: &std::path::Path, github: bool| {
        let mut cmd = fleet.shipit();
        cmd.env("API_TOKEN", TOKEN)
            .env("DATABASE_URL", &database_url)
            .args(args)
            .arg("-i")
            .arg(inv);
        if github {
            cmd.env("CI", "true")
                .env("GITHUB_ACTIONS", "true")
                .env("GITHUB_STEP_SUMMARY", &summary);
        }
        run(&mut cmd)
    };
    let done = AtomicBool::new(false);
    let (argv, outputs) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut seen = String::new();
            while !done.load(Ordering::Relaxed) {
                for h in ["h1", "h2"] {
                    let out = fleet.sh(h, "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f 2>/dev/null; echo; done");
                    seen.push_str(&String::from_utf8_lossy(&out.stdout));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            seen
        });
        let outputs = vec![
            (
                "deploy -v",
                shipit(
                    &["deploy", "test", "-v", "--progress", "never"],
                    &good,
                    false,
                ),
            ),
            (
                "deploy --json",
                shipit(&["deploy", "test", "--json"], &good, false),
            ),
            (
                "failing deploy (GitHub)",
                shipit(&["deploy", "test"], &bad, true),
            ),
            (
                "failing deploy --json",
                shipit(&["deploy", "test", "--json"], &bad, false),
            ),
            ("plan", shipit(&["plan", "test", "--json"], &good, false)),
            ("status", shipit(&["status", "test"], &good, false)),
            (
                "history",
                shipit(&["history", "test", "--json"], &good, false),
            ),
        ];
        done.store(true, Ordering::Relaxed);
        (sampler.join().unwrap(), outputs)
    });
    assert_eq!(outputs[0].1.0, 0, "{}", outputs[0].1.2);
    assert_eq!(
        outputs[2].1.0, 3,
        "the failing hook fails the deploy: {}",
        outputs[2].1.2
    );
    // The failing hook's stderr is shown, with the values blanked.
    let failing = &outputs[2].1;
    assert!(
        failing.1.contains("leaking [REDACTED] and [REDACTED]")
            || failing.2.contains("leaking [REDACTED] and [REDACTED]"),
        "{}{}",
        failing.1,
        failing.2
    );
    assert!(
        argv.contains("sshd"),
        "the sampler saw the hosts' processes"
    );
    let history = fleet.sh_ok("h1", "cat /opt/demo/.shipit/history.jsonl");
    let summary_text = std::fs::read_to_string(&summary).unwrap_or_default();
    let mut places: Vec<(String, String)> = vec![
        ("argv".into(), argv),
        ("history".into(), history),
        ("step summary".into(), summary_text),
    ];
    for (what, (_, stdout, stderr)) in outputs {
        places.push((format!("{what} stdout"), stdout));
        places.push((format!("{what} stderr"), stderr));
    }
    for secret in [TOKEN, DB_PASSWORD, database_url.as_str()] {
        for (what, text) in &places {
            assert!(
                !text.contains(secret),
                "a secret appears in {what}:\n{text}"
            );
        }
    }
    // The env file holds them (0600) and the backup was made from them.
    assert_eq!(fleet.sh_ok("h1", "stat -c %a /etc/demo.env").trim(), "600");
    assert!(fleet.sh_ok("h1", "cat /etc/demo.env").contains(TOKEN));
}
