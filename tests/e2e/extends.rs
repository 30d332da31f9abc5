//! `extends = "base.toml"` and `shipit config` through the real binary: a stage file on a
//! shared base deploys to real hosts; a problem in the base is reported with the base's own
//! path, line and column; `config` prints what the two files amount to, and that output is an
//! inventory shipit loads as the same one.

use std::path::Path;

use crate::common::*;
use crate::support::Fleet;

/// The base every stage shares: the app, how to connect, the artifact, the env file.
fn base_text(fleet: &Fleet, app: &Path) -> String {
    format!(
        r#"[app]
name = "demo"
deploy_to = "/opt/demo"
keep_releases = 3

[ssh]
user = "root"
identity = "{}"
known_hosts = "{}"
connect_timeout = "5s"

[[hosts]]
name = "never-deployed-to"
address = "127.0.0.1"
port = 9

[artifact]
path = "{}"

[env]
path = "/etc/demo.env"
vars = {{ NODE_ENV = "production", PORT = "3000" }}

[[hooks]]
at = "after_switch"
command = "echo base hook > /opt/demo/hook.txt"
"#,
        fleet.client_key().display(),
        fleet.known_hosts().display(),
        app.display(),
    )
}

/// A stage file on `base.toml` (in a sibling directory, as `inventory/` and `shared/`):
/// its own hosts, one more env var, its own hook, more releases kept.
fn stage_text(fleet: &Fleet) -> String {
    let mut text = "extends = \"../shared/base.toml\"\n\n[app]\nkeep_releases = 4\n\n[env.vars]\nPORT = \"8080\"\n\n[[hooks]]\nat = \"after_switch\"\ncommand = \"echo stage hook > /opt/demo/hook.txt\"\n\n".to_owned();
    for name in ["h1", "h2"] {
        text.push_str(&format!(
            "[[hosts]]\nname = \"{name}\"\naddress = \"127.0.0.1\"\nport = {}\n\n",
            fleet.host(name).port
        ));
    }
    text
}

#[test]
fn a_stage_file_on_a_base_deploys_and_a_bad_key_in_the_base_is_reported_there() {
    let fleet = Fleet::start(2);
    let app = fleet.dir().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("VERSION"), "1\n").unwrap();
    std::fs::create_dir_all(fleet.dir().join("shared")).unwrap();
    std::fs::create_dir_all(fleet.dir().join("inventory")).unwrap();
    let base = write(
        &fleet.dir().join("shared"),
        "base.toml",
        &base_text(&fleet, &app),
    );
    let stage = write(
        &fleet.dir().join("inventory"),
        "prod.toml",
        &stage_text(&fleet),
    );

    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["deploy", "prod", "--json", "-i"])
        .arg(&stage));
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let hosts: Vec<&str> = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["h1", "h2"], "the stage's hosts replace the base's");
    for h in ["h1", "h2"] {
        assert_eq!(fleet.sh_ok(h, "cat /opt/demo/current/VERSION"), "1\n");
        let env = fleet.sh_ok(h, "cat /etc/demo.env");
        assert!(
            env.contains("NODE_ENV=production\nPORT=8080\n"),
            "the base's var and the stage's: {env}"
        );
        assert_eq!(
            fleet.sh_ok(h, "cat /opt/demo/hook.txt"),
            "stage hook\n",
            "the stage's hooks replace the base's"
        );
    }

    // A key misspelt in the base: named with the base's path, line and column, before any
    // connection (exit 2, the hosts untouched).
    let before = written(&fleet.host("h1").dir);
    std::fs::write(
        &base,
        base_text(&fleet, &app).replace("keep_releases = 3", "keep_releases = 3\nkeep_relases = 2"),
    )
    .unwrap();
    let (code, _, stderr) = run(fleet.shipit().args(["deploy", "prod", "-i"]).arg(&stage));
    assert_eq!(code, 2, "{stderr}");
    // Named as the stage file names it, `inventory/..` folded.
    let base_shown = fleet.dir().join("shared/base.toml").display().to_string();
    assert_eq!(
        stderr.trim(),
        format!(
            "error: {base_shown}:5:1: unknown key `keep_relases` in [app] (did you mean `keep_releases`?)"
        )
    );
    assert_eq!(written(&fleet.host("h1").dir), before);

    // A bad value in the base, a bad one in the stage file: each where it is written.
    std::fs::write(
        &base,
        base_text(&fleet, &app).replace("connect_timeout = \"5s\"", "connect_timeout = \"soon\""),
    )
    .unwrap();
    std::fs::write(
        &stage,
        stage_text(&fleet).replace("keep_releases = 4", "keep_releases = 1"),
    )
    .unwrap();
    let (code, _, stderr) = run(fleet.shipit().args(["deploy", "prod", "-i"]).arg(&stage));
    assert_eq!(code, 2, "{stderr}");
    let stage_shown = stage.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{stage_shown}:4:17: `app.keep_releases`: must be at least 2"
        )) && stderr.contains(&format!(
            "{base_shown}:10:19: `ssh.connect_timeout`: \"soon\" is not a duration"
        )),
        "{stderr}"
    );
}

#[test]
fn config_prints_the_resolved_inventory_which_loads_back_as_the_same() {
    let fleet = Fleet::start(2);
    let app = fleet.dir().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::create_dir_all(fleet.dir().join("shared")).unwrap();
    std::fs::create_dir_all(fleet.dir().join("inventory")).unwrap();
    let marker = fleet.dir().join("secret-command-ran");
    let base = base_text(&fleet, &app).replace(
        "[[hooks]]",
        &format!(
            "from_env = [\"DATABASE_URL\"]\n\n[env.secrets.API_KEY]\ncommand = \"touch {}; echo key\"\n\n[[hooks]]",
            marker.display()
        ),
    );
    write(&fleet.dir().join("shared"), "base.toml", &base);
    // The stage's hook names the database password, which must not print.
    let stage_text = stage_text(&fleet).replace(
        "echo stage hook",
        "psql postgres://app:Pw-config-7f3e@db/app -c select; echo stage hook",
    );
    let stage = write(&fleet.dir().join("inventory"), "prod.toml", &stage_text);
    let config = |inv: &Path, json: bool| {
        let mut cmd = fleet.shipit();
        cmd.env("DATABASE_URL", "postgres://app:Pw-config-7f3e@db/app")
            .args(["config", "prod", "-i"])
            .arg(inv);
        if json {
            cmd.arg("--json");
        }
        let (code, stdout, stderr) = run(&mut cmd);
        assert_eq!(code, 0, "{stderr}");
        stdout
    };
    let toml = config(&stage, false);
    assert!(!marker.exists(), "`config` ran a secret command");
    assert!(
        !fleet.host("h1").log().contains("Accepted"),
        "`config` connected to a host"
    );
    assert!(!toml.contains("Pw-config-7f3e"), "{toml}");
    assert!(
        toml.contains("psql <redacted> -c select; echo stage hook"),
        "{toml}"
    );
    for (want, what) in [
        ("keep_releases = 4", "the stage's value"),
        ("connect_timeout = \"5s\"", "the base's value"),
        (
            "NODE_ENV = \"production\"\nPORT = \"8080\"",
            "both files' vars",
        ),
        (
            "[env.secrets.API_KEY]\ncommand = \"touch ",
            "a secret by its source",
        ),
        ("from_env = [\"DATABASE_URL\"]", "a secret by its name"),
        ("lock_timeout = \"30m\"", "a default"),
    ] {
        assert!(toml.contains(want), "{what}: {want:?} in\n{toml}");
    }
    assert!(!toml.contains("never-deployed-to"), "{toml}");
    assert!(!toml.contains("extends"), "{toml}");

    // Written to a file with the secret put back, it is an inventory: the same one.
    let again = write(
        fleet.dir(),
        "resolved.toml",
        &toml.replace("<redacted>", "postgres://app:Pw-config-7f3e@db/app"),
    );
    let body = |text: &str| -> String {
        text.lines()
            .skip_while(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(body(&config(&again, false)), body(&toml));
    let json: serde_json::Value = serde_json::from_str(&config(&stage, true)).unwrap();
    assert_eq!(json["app"]["keep_releases"], 4);
    assert_eq!(json["hosts"][0]["name"], "h1");
    assert_eq!(
        json["env"]["secrets"]["API_KEY"]["command"]
            .as_str()
            .map(|c| c.ends_with("echo key")),
        Some(true)
    );
    let again_json: serde_json::Value = serde_json::from_str(&config(&again, true)).unwrap();
    assert_eq!(json, again_json);
    // The examples too, as shipped (their relative paths resolved here).
    for example in ["examples/reference.toml", "examples/intric/intric.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(example);
        let first = config(&path, false);
        let copy = write(fleet.dir(), "example.toml", &first);
        assert_eq!(body(&config(&copy, false)), body(&first), "{example}");
    }
}
