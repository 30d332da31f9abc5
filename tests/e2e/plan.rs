//! `shipit plan`: what a deploy would do, read from the hosts, changing nothing on them.

use crate::common::*;
use crate::support::Fleet;

#[test]
fn plan_shows_uploads_env_keys_and_config_diffs_and_changes_nothing() {
    let fleet = Fleet::start(2);
    let app = fleet.dir().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("VERSION"), "1").unwrap();
    let base = format!(
        "[artifact]\npath = \"{}\"\n[env]\npath = \"/etc/demo.env\"\nfrom_env = [\"TOKEN\"]\n",
        app.display()
    );
    let inv = write(
        fleet.dir(),
        "v1.toml",
        &inventory_text(
            &fleet,
            &["h1", "h2"],
            &format!("{base}vars = {{ A = \"1\", GONE = \"x\" }}\n"),
        ),
    );
    let (code, _, stderr) = run(fleet
        .shipit()
        .env("TOKEN", "tok-value-1")
        .args(["deploy", "test", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{stderr}");

    let unit = write(
        fleet.dir(),
        "api.service.j2",
        "[Service]\nExecStart={{ app.current }}/run --host {{ host.name }}\n",
    );
    let site = write(fleet.dir(), "site.j2", "server { listen 8080; }\n");
    let extra = format!(
        "{base}vars = {{ A = \"2\", B = \"new\" }}\n[[systemd]]\nunit = \"demo.service\"\ntemplate = \"{}\"\n[nginx]\nsite = \"demo\"\ntemplate = \"{}\"\n[migrate]\ncommand = \"./migrate\"\n[[hooks]]\nat = \"after_switch\"\nonce = true\ncommand = \"echo once\"\n[rollout]\nwaves = [\"1\", \"100%\"]\n",
        unit.display(),
        site.display()
    );
    let inv = write(
        fleet.dir(),
        "v2.toml",
        &inventory_text(&fleet, &["h1", "h2"], &extra),
    );
    let before: Vec<_> = ["h1", "h2"]
        .iter()
        .map(|h| written(&fleet.host(h).dir))
        .collect();
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .env("TOKEN", "tok-value-2")
        .args(["plan", "test", "--json", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{stderr}");
    let after: Vec<_> = ["h1", "h2"]
        .iter()
        .map(|h| written(&fleet.host(h).dir))
        .collect();
    assert_eq!(before, after, "plan wrote on a host");

    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let h1 = &report["hosts"][0];
    assert!(
        h1["source"].as_str().unwrap().starts_with("reuse"),
        "same artifact: {h1:#}"
    );
    assert_eq!(h1["env_keys"]["added"], serde_json::json!(["B"]));
    assert_eq!(h1["env_keys"]["removed"], serde_json::json!(["GONE"]));
    assert_eq!(h1["env_keys"]["changed"], serde_json::json!(["A", "TOKEN"]));
    assert_eq!(h1["units"][0]["change"], "new");
    assert!(
        h1["units"][0]["diff"]
            .as_str()
            .unwrap()
            .contains("+ExecStart=/opt/demo/current/run --host h1"),
        "{h1:#}"
    );
    assert_eq!(h1["nginx"]["change"], "new");
    assert_eq!(
        h1["hooks"],
        serde_json::json!(["after_switch: `echo once`"])
    );
    assert_eq!(
        report["hosts"][1]["hooks"],
        serde_json::json!([]),
        "once hooks on the migrate host only"
    );
    assert_eq!(report["migrate_host"], "h1");
    assert_eq!(report["waves"], serde_json::json!([["h1"], ["h2"]]));
    for secret in ["tok-value-1", "tok-value-2"] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret));
    }

    // The text form, and `deploy --dry-run` is the same plan.
    let (code, _, text) = run(fleet
        .shipit()
        .env("TOKEN", "tok-value-2")
        .args(["deploy", "test", "--dry-run", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("env file: added [B] removed [GONE] changed [A TOKEN]"),
        "{text}"
    );
    assert!(text.contains("nothing was changed"), "{text}");
    let again: Vec<_> = ["h1", "h2"]
        .iter()
        .map(|h| written(&fleet.host(h).dir))
        .collect();
    assert_eq!(before, again, "--dry-run wrote on a host");
}
