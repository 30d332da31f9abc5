//! Inventory errors through the real binary: exit 2, file:line:column, nothing contacted.

use crate::common::*;
use crate::support::shipit_command;

fn shipit_check(text: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let inv = write(dir.path(), "bad.toml", text);
    let mut cmd = shipit_command(dir.path());
    cmd.args(["check", "test", "-i"]).arg(&inv);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (code, stdout, stderr) = run(&mut cmd);
    (
        code,
        stdout,
        stderr.replace(&inv.display().to_string(), "bad.toml"),
    )
}

const BASE: &str = "[app]\nname = \"demo\"\ndeploy_to = \"/opt/demo\"\n\n[[hosts]]\nname = \"web-1\"\naddress = \"127.0.0.1\"\nport = 1\n";

#[test]
fn unknown_key_is_reported_with_a_suggestion_and_position() {
    let text = BASE.replace("deploy_to", "deploy_too");
    let (code, _, stderr) = shipit_check(&text, &[]);
    assert_eq!(code, 2);
    assert_eq!(
        stderr.trim(),
        "error: bad.toml:3:1: unknown key `deploy_too` in [app] (did you mean `deploy_to`?)"
    );
}

#[test]
fn missing_secrets_are_all_listed_by_name() {
    let text = format!(
        "{BASE}\n[env]\npath = \"/etc/demo.env\"\nfrom_env = [\"DATABASE_URL\", \"API_TOKEN\", \"SET_ONE\", \"EMPTY_ONE\"]\n"
    );
    let (code, _, stderr) = shipit_check(
        &text,
        &[("SET_ONE", "value-must-not-print"), ("EMPTY_ONE", "")],
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("bad.toml:12:12: secrets named in `env.from_env` are not set in the environment: DATABASE_URL, API_TOKEN, EMPTY_ONE;"),
        "{stderr}"
    );
    assert!(!stderr.contains("value-must-not-print"));
}

#[test]
fn duplicate_host_is_reported_where_it_repeats() {
    let text = format!("{BASE}\n[[hosts]]\nname = \"web-1\"\naddress = \"127.0.0.2\"\n");
    let (code, _, stderr) = shipit_check(&text, &[]);
    assert_eq!(code, 2);
    assert_eq!(
        stderr.trim(),
        "error: bad.toml:11:8: duplicate host name `web-1` (first defined on line 6)"
    );
}

#[test]
fn json_mode_reports_the_error_on_stdout_too() {
    let dir = tempfile::tempdir().unwrap();
    let inv = write(
        dir.path(),
        "bad.toml",
        &BASE
            .replace("keep", "x")
            .replace("name = \"demo\"", "name = \"demo\"\nkeep_releases = 1"),
    );
    let (code, stdout, _) = run(shipit_command(dir.path())
        .args(["check", "test", "--json", "-i"])
        .arg(&inv));
    assert_eq!(code, 2);
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        doc["error"].as_str().unwrap().contains("keep_releases"),
        "{doc}"
    );
}

#[test]
fn a_missing_stage_file_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(shipit_command(dir.path())
        .current_dir(dir.path())
        .args(["check", "nope"]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("inventory/nope.toml") && stderr.contains("-i PATH"),
        "{stderr}"
    );
}

#[test]
fn the_reference_inventory_in_examples_parses() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(shipit_command(dir.path())
        .current_dir(root)
        .env("DATABASE_URL", "postgres://x")
        .env("REDIS_URL", "redis://x")
        .env("SESSION_SECRET", "s")
        .args([
            "status",
            "reference",
            "--hosts",
            "nowhere",
            "-i",
            "examples/reference.toml",
        ]));
    // It parses; the only complaint is the made-up host name (`status` runs no secret
    // command: `op read` is not there).
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("no host named `nowhere`"), "{stderr}");
    // `config` shows every section it has.
    let (code, stdout, stderr) = run(shipit_command(dir.path()).current_dir(root).args([
        "config",
        "reference",
        "-i",
        "examples/reference.toml",
    ]));
    assert_eq!(code, 0, "{stderr}");
    for section in [
        "[env.secrets.STRIPE_KEY]",
        "[[notify]]",
        "[[health]]",
        "[rollout]",
    ] {
        assert!(stdout.contains(section), "{section} in\n{stdout}");
    }
}
