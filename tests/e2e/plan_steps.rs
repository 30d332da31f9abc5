//! Plan as data: `shipit plan --json` lists the steps `shipit deploy --json` then runs and
//! reports, host by host, for the same state: a first deploy, a one-file change (a delta),
//! an unchanged artifact (a verified copy) and a mostly-changed one (a whole upload). A
//! failed host's error is an object naming its step.

use std::path::{Path, PathBuf};

use crate::common::*;
use crate::support::Fleet;

/// Eight 50 KB files of seed `generation`, and one small file that changes alone.
fn app(dir: &Path, generation: u64, small: &str) {
    for i in 0..8 {
        put(
            dir,
            &format!("lib/part{i}.bin"),
            &noise(generation * 100 + i, 50_000),
        );
    }
    put(dir, "VERSION", small.as_bytes());
}

fn inventory(fleet: &Fleet, app: &Path, hook: &str) -> PathBuf {
    let extra = format!(
        "[artifact]\npath = \"{}\"\n[env]\npath = \"/etc/demo.env\"\nfrom_env = [\"TOKEN\"]\nvars = {{ A = \"1\" }}\n[[hooks]]\nat = \"after_switch\"\ncommand = \"{hook}\"\n[[hooks]]\nat = \"after_upload\"\nonce = true\ncommand = \"true\"\n[migrate]\ncommand = \"true\"\n",
        app.display()
    );
    write(
        fleet.dir(),
        "inv-steps.toml",
        &inventory_text(fleet, &["h1", "h2"], &extra),
    )
}

fn shipit_json(fleet: &Fleet, inv: &Path, args: &[&str]) -> (i32, serde_json::Value, String) {
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .env("TOKEN", "tok-secret-value")
        .args(args)
        .args(["--json", "-i"])
        .arg(inv));
    let doc = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\nstderr: {stderr}"));
    (code, doc, stderr)
}

fn step_names(host: &serde_json::Value) -> Vec<String> {
    host["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps: {host:#}"))
        .iter()
        .map(|s| s["step"].as_str().unwrap().to_owned())
        .collect()
}

/// Plans, deploys, and checks that both list the same steps per host (and the same once
/// steps); returns the plan and the deploy report.
fn plan_then_deploy(fleet: &Fleet, inv: &Path) -> (serde_json::Value, serde_json::Value) {
    let (code, plan, stderr) = shipit_json(fleet, inv, &["plan", "test"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, report, stderr) = shipit_json(fleet, inv, &["deploy", "test"]);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    for h in ["h1", "h2"] {
        let planned = step_names(host_entry(&plan, h));
        let ran = step_names(host_entry(&report, h));
        assert_eq!(planned, ran, "{h}: plan and deploy disagree");
        for s in host_entry(&report, h)["steps"].as_array().unwrap() {
            assert!(
                matches!(s["status"].as_str(), Some("ok" | "skipped")),
                "{h}: {s}"
            );
            assert!(s["duration_ms"].is_u64(), "{h}: {s}");
        }
    }
    let once = |doc: &serde_json::Value| -> Vec<String> {
        doc["once"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(once(&plan), once(&report));
    assert_eq!(once(&report), vec!["migrate"]);
    let text = format!("{plan}{report}");
    assert!(!text.contains("tok-secret-value"), "a secret in the JSON");
    (plan, report)
}

/// The host's source step in a plan: its name and its JSON.
fn source(plan: &serde_json::Value, host: &str) -> serde_json::Value {
    host_entry(plan, host)["steps"][0].clone()
}

#[test]
fn plan_and_deploy_list_the_same_steps_whatever_the_artifact_did() {
    let fleet = Fleet::start(2);
    let dir = fleet.dir().join("steps-app");
    app(&dir, 1, "1");
    let inv = inventory(&fleet, &dir, "true");

    // A first deploy: the whole artifact; the once hook on the migrate host only.
    let (plan, report) = plan_then_deploy(&fleet, &inv);
    assert_eq!(source(&plan, "h1")["step"], "upload", "{plan:#}");
    let h1 = step_names(host_entry(&plan, "h1"));
    let h2 = step_names(host_entry(&plan, "h2"));
    assert_eq!(
        h1,
        [
            "upload",
            "stage_env",
            "hook",
            "arm_guard",
            "install_env",
            "switch",
            "hook",
            "confirm"
        ]
    );
    assert_eq!(h2.iter().filter(|s| *s == "hook").count(), 1, "{h2:?}");
    assert_eq!(host_entry(&report, "h1")["source"], "uploaded");

    // One file changed: a delta, planned and run.
    app(&dir, 1, "2");
    let (plan, report) = plan_then_deploy(&fleet, &inv);
    for h in ["h1", "h2"] {
        assert_eq!(source(&plan, h)["step"], "delta", "{plan:#}");
        assert_eq!(host_entry(&report, h)["source"], "delta", "{report:#}");
        assert!(
            host_entry(&report, h)["bytes_sent"].as_u64().unwrap() < 100_000,
            "{report:#}"
        );
    }
    // The env file did not change: its steps are there, skipped.
    let statuses: Vec<(String, String)> = host_entry(&report, "h1")["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        statuses.contains(&("stage_env".into(), "skipped".into())),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&("install_env".into(), "skipped".into())),
        "{statuses:?}"
    );

    // The same artifact again: a verified copy of the release that has it.
    let (plan, report) = plan_then_deploy(&fleet, &inv);
    assert_eq!(source(&plan, "h1")["step"], "reuse", "{plan:#}");
    assert_eq!(host_entry(&report, "h1")["source"], "reused");
    assert_eq!(host_entry(&report, "h1")["bytes_sent"], 0);
    // Older releases are pruned once there are more than `keep_releases`: planned as well.

    // Most of the content new: the plan says a whole upload, and why; the deploy does that.
    app(&dir, 2, "3");
    let (plan, report) = plan_then_deploy(&fleet, &inv);
    let upload = source(&plan, "h1");
    assert_eq!(upload["step"], "upload", "{plan:#}");
    assert!(
        upload["why"]
            .as_str()
            .unwrap()
            .contains("most of the content"),
        "{upload:#}"
    );
    assert_eq!(host_entry(&report, "h1")["source"], "uploaded");
    assert!(host_entry(&report, "h1")["delta_fallback"].is_null());
}

#[test]
fn a_failed_host_reports_the_step_that_failed_as_an_object() {
    let fleet = Fleet::start(2);
    let dir = fleet.dir().join("steps-app");
    app(&dir, 1, "1");
    let inv = inventory(&fleet, &dir, "true");
    let (code, _, stderr) = shipit_json(&fleet, &inv, &["deploy", "test"]);
    assert_eq!(code, 0, "{stderr}");

    // The after_switch hook fails on h2 only.
    app(&dir, 1, "2");
    let inv = inventory(&fleet, &dir, "test $SHIPIT_HOST != h2 || exit 7");
    let (code, plan, _) = shipit_json(&fleet, &inv, &["plan", "test"]);
    assert_eq!(code, 0);
    let (code, report, stderr) = shipit_json(&fleet, &inv, &["deploy", "test"]);
    assert_eq!(code, 3, "{stderr}\n{report:#}");
    let h2 = host_entry(&report, "h2");
    assert_eq!(h2["error"]["step"], "hook", "{h2:#}");
    assert_eq!(h2["error"]["exit"], 7, "{h2:#}");
    assert!(
        h2["error"]["message"]
            .as_str()
            .unwrap()
            .contains("after_switch"),
        "{h2:#}"
    );
    assert_eq!(h2["outcome"], "switched_back");
    // The failed step and what came after: as the plan listed them.
    assert_eq!(step_names(h2), step_names(host_entry(&plan, "h2")));
    let statuses: Vec<&str> = h2["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    let failed = statuses.iter().position(|s| *s == "failed").unwrap();
    assert_eq!(step_names(h2)[failed], "hook");
    assert!(
        statuses[..failed]
            .iter()
            .all(|s| *s == "ok" || *s == "skipped")
    );
    assert!(
        statuses[failed + 1..].iter().all(|s| *s == "not_run"),
        "{statuses:?}"
    );
    assert!(host_entry(&report, "h1")["error"].is_null());
}
