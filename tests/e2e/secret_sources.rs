//! `[env.secrets.NAME]` through the real binary: a secret from a command and one from a file
//! reach the env file on real hosts and nowhere shipit prints; a command that needs no
//! secret never runs the secret command; a failing command or a file others can read stops
//! the run before any connection, naming the key.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::*;
use crate::support::Fleet;

const FROM_COMMAND: &str = "Tok-from-op-8c1e77";
const FROM_FILE: &str = "Db-file-pass-5a2b91";

/// An inventory for h1 and h2 whose `API_KEY` comes from `command` and `DB_PASSWORD` from
/// `db.secret` in the fleet's directory (an absolute path: a relative one is relative to where
/// shipit runs); a hook prints both (which must show redacted).
fn inventory(fleet: &Fleet, app: &Path, command: &str) -> PathBuf {
    let extra = format!(
        r#"[artifact]
path = "{}"

[env]
path = "/etc/demo.env"
vars = {{ MODE = "prod" }}

[env.secrets.API_KEY]
command = {}

[env.secrets.DB_PASSWORD]
file = {}

[[hooks]]
at = "after_switch"
command = "echo hook sees $API_KEY and $DB_PASSWORD"
"#,
        app.display(),
        toml::Value::String(command.to_owned()),
        toml::Value::String(fleet.dir().join("db.secret").display().to_string()),
    );
    write(
        fleet.dir(),
        "secrets.toml",
        &inventory_text(fleet, &["h1", "h2"], &extra),
    )
}

fn secret_file(fleet: &Fleet, mode: u32) {
    let path = write(fleet.dir(), "db.secret", &format!("{FROM_FILE}\n"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn secrets_from_a_command_and_a_file_reach_the_env_file_and_nothing_printed() {
    let fleet = Fleet::start(2);
    let app = fleet.dir().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("VERSION"), "1\n").unwrap();
    secret_file(&fleet, 0o600);
    // As `op read` would: the value on stdout, a newline after it, chatter on stderr.
    let inv = inventory(
        &fleet,
        &app,
        "echo 'op: reading' >&2; printf '%s\\n' \"$UPSTREAM_TOKEN\"",
    );
    let shipit = |args: &[&str]| {
        run(fleet
            .shipit()
            .env("UPSTREAM_TOKEN", FROM_COMMAND)
            .args(args)
            .arg("-i")
            .arg(&inv))
    };
    let (code, stdout, stderr) = shipit(&["deploy", "test", "-v", "--progress", "never"]);
    assert_eq!(code, 0, "{stderr}");
    let (json_code, json_out, json_err) = shipit(&["deploy", "test", "--json"]);
    assert_eq!(json_code, 0, "{json_err}");
    for h in ["h1", "h2"] {
        let env = fleet.sh_ok(h, "cat /etc/demo.env");
        assert!(
            env.contains(&format!(
                "API_KEY={FROM_COMMAND}\nDB_PASSWORD={FROM_FILE}\nMODE=prod\n"
            )),
            "{env}"
        );
    }
    assert!(
        stdout.contains("hook sees [REDACTED] and [REDACTED]"),
        "{stdout}"
    );
    let history = fleet.sh_ok("h1", "cat /opt/demo/.shipit/history.jsonl");
    for (what, text) in [
        ("stdout", &stdout),
        ("stderr", &stderr),
        ("--json stdout", &json_out),
        ("--json stderr", &json_err),
        ("history", &history),
    ] {
        for secret in [FROM_COMMAND, FROM_FILE] {
            assert!(!text.contains(secret), "{secret} in {what}:\n{text}");
        }
    }
}

#[test]
fn only_commands_that_need_secrets_run_the_secret_command() {
    let fleet = Fleet::start(2);
    let app = fleet.dir().join("app");
    std::fs::create_dir_all(&app).unwrap();
    secret_file(&fleet, 0o600);
    let marker = fleet.dir().join("op-ran");
    let inv = inventory(
        &fleet,
        &app,
        &format!("echo run >> {}; echo value-1234", marker.display()),
    );
    for args in [
        &["status", "test"][..],
        &["releases", "test"],
        &["history", "test"],
        &["exec", "test", "--", "true"],
        &["config", "test"],
    ] {
        let (code, _, stderr) = run(fleet.shipit().arg("-i").arg(&inv).args(args));
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert!(!marker.exists(), "`{}` ran the secret command", args[0]);
    }
    let (code, _, stderr) = run(fleet.shipit().args(["check", "test", "-i"]).arg(&inv));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "run\n",
        "`check` resolves the secrets a deploy needs, once"
    );
}

#[test]
fn a_failing_command_or_an_exposed_file_stops_before_any_connection() {
    let fleet = Fleet::start(2);
    let app = fleet.dir().join("app");
    std::fs::create_dir_all(&app).unwrap();
    secret_file(&fleet, 0o600);
    let before = written(&fleet.host("h1").dir);
    let inv = inventory(
        &fleet,
        &app,
        "printf partial-Tok-77; echo \"op: not signed in (partial-Tok-77)\" >&2; exit 1",
    );
    let (code, _, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&inv));
    assert_eq!(code, 2, "{stderr}");
    let inv_shown = inv.display();
    assert!(
        stderr.starts_with(&format!(
            "error: `env.secrets.API_KEY` ({inv_shown}:28:14): `printf partial-Tok-77;"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("failed with exit status: 1:\nop: not signed in ([REDACTED])"),
        "{stderr}"
    );

    let inv = inventory(&fleet, &app, "echo fine-value");
    secret_file(&fleet, 0o644);
    let (code, _, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&inv));
    assert_eq!(code, 2, "{stderr}");
    let file = fleet.dir().join("db.secret");
    assert_eq!(
        stderr.trim(),
        format!(
            "error: `env.secrets.DB_PASSWORD` ({inv_shown}:31:14): `{0}` can be read or written by other users (mode 644); make it the deployer's alone: `chmod 600 {0}`",
            file.display()
        )
    );
    assert!(!stderr.contains(FROM_FILE));
    std::fs::remove_file(&file).unwrap();
    let (code, _, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&inv));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot read `{}`: No such file or directory",
            file.display()
        )),
        "{stderr}"
    );
    assert_eq!(written(&fleet.host("h1").dir), before, "a host was changed");
    assert!(
        !fleet.host("h1").log().contains("Accepted"),
        "a host was contacted"
    );
}
