//! `shipit init`, the GitHub Actions example, and `shipit status`.

use clap::Parser;
use shipit::cli::Cli;

use crate::common::*;
use crate::support::{Fleet, shipit_command};

#[test]
fn init_scaffolds_a_stage_that_parses_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(shipit_command(dir.path())
        .current_dir(dir.path())
        .args(["init", "staging"]));
    assert_eq!(code, 0, "{stderr}");
    for f in [
        "inventory/staging.toml",
        "inventory/known_hosts",
        "deploy/myapp.service.j2",
        "deploy/nginx.conf.j2",
        ".github/workflows/deploy.yml",
    ] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    // The workflow is the GitHub Actions example, for this stage, through the shipit action.
    let workflow =
        std::fs::read_to_string(dir.path().join(".github/workflows/deploy.yml")).unwrap();
    assert!(workflow.contains("uses: your-org/shipit@v1"), "{workflow}");
    assert!(workflow.contains("stage: staging"), "{workflow}");
    assert!(workflow.contains("group: deploy-staging"), "{workflow}");
    assert!(!workflow.contains("production"), "{workflow}");
    // Its SSH user is not root, so the steps under /etc go through sudo.
    let inventory = std::fs::read_to_string(dir.path().join("inventory/staging.toml")).unwrap();
    assert!(
        inventory.contains("\nuser = \"deploy\"\n") && inventory.contains("\nsudo = true\n"),
        "{inventory}"
    );
    // The inventory parses (the only complaint is the host we ask for).
    let (code, _, stderr) = run(shipit_command(dir.path())
        .current_dir(dir.path())
        .args(["check", "staging", "--hosts", "nope"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("no host named `nope`"), "{stderr}");
    // A second init keeps what is there.
    std::fs::write(dir.path().join("inventory/staging.toml"), "# mine\n").unwrap();
    let (code, _, stderr) = run(shipit_command(dir.path())
        .current_dir(dir.path())
        .args(["init", "staging"]));
    assert_eq!(code, 0);
    assert!(
        stderr.contains("kept    inventory/staging.toml"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("inventory/staging.toml")).unwrap(),
        "# mine\n"
    );
}

/// A step of the workflow that runs shipit: through the action (`uses: <owner>/shipit@…`)
/// or a `run:` line that invokes it.
struct ShipitStep {
    argv: Vec<String>,
    /// The names the step's `env:` passes, with their value.
    env: Vec<(String, String)>,
}

/// Every step of the workflow that runs shipit, with the command line the action builds
/// from its inputs (scripts/action.sh: `command stage [--inventory PATH] --json args...`).
fn shipit_steps(workflow: &str) -> Vec<ShipitStep> {
    let docs = yaml_rust2::YamlLoader::load_from_str(workflow).expect("the workflow is valid YAML");
    let doc = &docs[0];
    assert!(doc["on"]["push"].as_hash().is_some() || doc["on"].as_hash().is_some());
    assert_eq!(
        doc["concurrency"]["cancel-in-progress"].as_bool(),
        Some(false)
    );
    let mut out = Vec::new();
    for (_, job) in doc["jobs"].as_hash().expect("jobs") {
        assert!(
            job["environment"].as_str().is_some(),
            "the deploy job names an environment"
        );
        for step in job["steps"].as_vec().expect("steps") {
            let env: Vec<(String, String)> = step["env"]
                .as_hash()
                .map(|h| {
                    h.iter()
                        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(uses) = step["uses"].as_str() {
                if !uses.split('@').next().unwrap_or("").ends_with("/shipit") {
                    continue;
                }
                let with = &step["with"];
                let stage = with["stage"]
                    .as_str()
                    .expect("the action's `stage` is required");
                let command = with["command"].as_str().unwrap_or("deploy");
                let mut argv = vec!["shipit".to_owned(), command.to_owned(), stage.to_owned()];
                if let Some(inventory) = with["inventory"].as_str() {
                    argv.extend(["--inventory".to_owned(), inventory.to_owned()]);
                }
                argv.push("--json".to_owned());
                let args = with["args"].as_str().unwrap_or("");
                argv.extend(args.split_whitespace().map(str::to_owned));
                out.push(ShipitStep { argv, env });
                continue;
            }
            let Some(script) = step["run"].as_str() else {
                continue;
            };
            for line in script.lines() {
                let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
                let invokes = words
                    .first()
                    .is_some_and(|w| w == "./shipit" || w == "shipit");
                if invokes {
                    let end = words.iter().position(|w| w == ">").unwrap_or(words.len());
                    let mut argv = vec!["shipit".to_owned()];
                    argv.extend(words[1..end].iter().cloned());
                    out.push(ShipitStep {
                        argv,
                        env: env.clone(),
                    });
                }
            }
        }
    }
    out
}

#[test]
fn the_github_actions_example_is_valid_and_its_shipit_commands_parse() {
    let workflow = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/github-actions/deploy.yml"
    ))
    .unwrap();
    let steps = shipit_steps(&workflow);
    let command = |s: &ShipitStep| s.argv[1].clone();
    assert!(
        steps.iter().any(|s| command(s) == "deploy"),
        "{:?}",
        steps.iter().map(|s| &s.argv).collect::<Vec<_>>()
    );
    for step in &steps {
        if let Err(e) = Cli::try_parse_from(&step.argv) {
            panic!("`{}` does not parse: {e}", step.argv.join(" "));
        }
    }
    // The SSH key comes from a secret into SHIPIT_SSH_KEY, never into a file, argv or `with:`.
    assert!(workflow.contains("SHIPIT_SSH_KEY: ${{ secrets."));
    // `check`, `plan`, `deploy` and `backup` require the `env.from_env` secrets (README,
    // Inventory): each such step passes the SSH key and the same secrets as the deploy.
    let names = |s: &ShipitStep| {
        let mut n: Vec<String> = s.env.iter().map(|(k, _)| k.clone()).collect();
        n.sort();
        n
    };
    let deploy = steps.iter().find(|s| command(s) == "deploy").unwrap();
    for step in steps
        .iter()
        .filter(|s| ["check", "plan", "deploy", "backup"].contains(&command(s).as_str()))
    {
        assert_eq!(names(step), names(deploy), "`{}`", step.argv.join(" "));
        for (name, value) in &step.env {
            assert!(
                value.starts_with("${{ secrets."),
                "`{name}` of `{}` is not a secret: {value}",
                step.argv.join(" ")
            );
        }
        assert!(names(step).contains(&"SHIPIT_SSH_KEY".to_owned()));
    }
}

#[test]
fn status_shows_current_health_and_lock() {
    let fleet = Fleet::start(2);
    let app = fleet.dir().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("VERSION"), "1").unwrap();
    let extra = format!(
        "[artifact]\npath = \"{}\"\n[health]\ncommand = \"test -f VERSION\"\ntimeout = \"2s\"\n",
        app.display()
    );
    let inv = write(
        fleet.dir(),
        "inv.toml",
        &inventory_text(&fleet, &["h1", "h2"], &extra),
    );
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["deploy", "test", "--json", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{stderr}");
    let release = serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["release"]
        .as_str()
        .unwrap()
        .to_owned();
    fleet.sh_ok("h2", "mkdir -p /opt/demo/.shipit/lock");
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["status", "test", "--json", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for h in status["hosts"].as_array().unwrap() {
        assert_eq!(h["current"], release.as_str());
        assert_eq!(h["healthy"], true);
    }
    assert!(status["hosts"][0]["locked_by"].is_null());
    assert!(status["hosts"][1]["locked_by"].is_string());
    fleet.sh_ok("h1", "rm /opt/demo/current/VERSION");
    let (code, _, stderr) = run(fleet.shipit().args(["status", "test", "-i"]).arg(&inv));
    assert_eq!(code, 1);
    assert!(stderr.contains("h1: health check failed"), "{stderr}");
}
