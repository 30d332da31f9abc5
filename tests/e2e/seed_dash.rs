//! The Dash seed (`../shared/seeds/000_…`): a CI runner deploys onto the machine it runs
//! on. `examples/dash/` is deployed with the real binary and the `local` transport against
//! the tests' Docker engine: the image is built from the release on this machine, the stack
//! (`dash-db` on a real PostgreSQL, `dash-api`) comes up with Compose, `/docs` answers, the
//! manual seed job is `shipit task dash seed`, and a rollback starts the previous image.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::support::docker::docker;
use crate::support::{clean_command, free_port, shipit_bin};

const API_KEY: &str = "or-key-5d1c0ffee9b7";
const DB_PASS: &str = "dash-db-pass-82a1f3";

struct Dash {
    dir: tempfile::TempDir,
    inventory: PathBuf,
    port: u16,
    _project: crate::support::docker::Project,
}

impl Dash {
    /// The example's inventory, pointed at a scratch deploy dir, a free port, a copy of the
    /// app (so a test can change it) and a project name of its own.
    fn new() -> Dash {
        let d = docker();
        // The names the example pins, served by the images the fixture builds here.
        d.cli_ok(&["tag", d.base_image(), "busybox:1.36"]);
        d.cli_ok(&["tag", d.postgres_image(), "pgvector/pgvector:pg16"]);
        let project = d.project("dash");
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        copy_dir(&example().join("app"), &app);
        let port = free_port();
        let text = std::fs::read_to_string(example().join("dash.toml")).unwrap();
        let text = replace_all(
            &text,
            &[
                (
                    "\"/opt/dash",
                    &format!("\"{}/opt-dash", dir.path().display()),
                ),
                (
                    "project = \"dash\"",
                    &format!("project = \"{}\"", project.name()),
                ),
                ("DASH_PORT = \"8080\"", &format!("DASH_PORT = \"{port}\"")),
                ("127.0.0.1:8080", &format!("127.0.0.1:{port}")),
                (
                    "path = \"examples/dash/app\"",
                    &format!("path = \"{}\"", app.display()),
                ),
            ],
        );
        let inventory = write(dir.path(), "dash.toml", &text);
        Dash {
            dir,
            inventory,
            port,
            _project: project,
        }
    }

    fn shipit(&self, args: &[&str]) -> (i32, String, String) {
        let d = docker();
        let mut cmd: Command = clean_command(shipit_bin(), &d.dir().join("home"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("DOCKER_HOST", format!("unix://{}", d.socket().display()))
            .env("OPENROUTER_API_KEY", API_KEY)
            .env("DB_PASS", DB_PASS)
            .args(args)
            .arg("-i")
            .arg(&self.inventory);
        let (code, stdout, stderr) = run(&mut cmd);
        for secret in [API_KEY, DB_PASS] {
            assert!(
                !stdout.contains(secret) && !stderr.contains(secret),
                "a secret was printed by `shipit {args:?}`:\n{stdout}\n{stderr}"
            );
        }
        (code, stdout, stderr)
    }

    fn deploy(&self) -> serde_json::Value {
        let (code, stdout, stderr) = self.shipit(&["deploy", "dash", "--json"]);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        serde_json::from_str(&stdout).unwrap()
    }

    fn docs(&self) -> String {
        let (status, body) = http_get(self.port, "/docs/");
        assert_eq!(status, 200, "{body}");
        body
    }

    fn sql(&self, query: &str) -> String {
        docker()
            .cli_ok(&[
                "exec", "dash-db", "psql", "-U", "ai", "-d", "ai", "-tAc", query,
            ])
            .trim()
            .to_owned()
    }

    fn deploy_to(&self) -> PathBuf {
        self.dir.path().join("opt-dash")
    }
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dash")
}

fn replace_all(text: &str, pairs: &[(&str, &str)]) -> String {
    pairs.iter().fold(text.to_owned(), |t, (from, to)| {
        assert!(t.contains(from), "the example no longer has {from:?}");
        t.replace(from, to)
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn dash_deploys_on_the_runner_machine_and_seeds_on_demand() {
    use std::os::unix::fs::PermissionsExt;
    let dash = Dash::new();
    let d = docker();

    let first = dash.deploy();
    let release1 = first["release"].as_str().unwrap().to_owned();
    assert!(dash.docs().contains("Swagger UI stand-in: version 1"));
    // The guide's checks on the VM: both containers up, the API image is this release's.
    let ps = d.cli_ok(&["ps", "--format", "{{.Names}} {{.Image}} {{.Status}}"]);
    assert!(
        ps.contains(&format!("dash-api dash-api:{release1} Up")),
        "{ps}"
    );
    assert!(ps.contains("dash-db pgvector/pgvector:pg16 Up"), "{ps}");
    let env_file = dash.deploy_to().join("dash.env");
    let mode = std::fs::metadata(&env_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        env.contains(API_KEY),
        "the container's environment has the key"
    );
    // The API container got it, from the env file, never from a command line.
    let api_env = d.cli_ok(&["exec", "dash-api", "env"]);
    assert!(api_env.contains(&format!("OPENROUTER_API_KEY={API_KEY}")));
    let inspect = d.cli_ok(&["inspect", "--format", "{{json .Args}}", "dash-api"]);
    assert!(!inspect.contains(API_KEY));

    // No seed data until the operator asks for it.
    assert!(
        !d.cli()
            .args(["exec", "dash-db", "psql", "-U", "ai", "-d", "ai", "-tAc"])
            .arg("select count(*) from f1_race_wins")
            .output()
            .unwrap()
            .status
            .success()
    );
    let (code, stdout, stderr) = dash.shipit(&["task", "dash", "seed", "--json"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["task"], "seed");
    assert_eq!(report["hosts"][0]["ok"], true, "{report:#}");
    assert_eq!(dash.sql("select count(*) from f1_race_wins"), "4");
    assert_eq!(dash.sql("select count(*) from dash_knowledge"), "1");
    // Running it again changes nothing.
    let (code, _, stderr) = dash.shipit(&["task", "dash", "seed"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(dash.sql("select count(*) from f1_race_wins"), "4");
    let (code, stdout, _) = dash.shipit(&["history", "dash", "--json"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("task `seed`"), "{stdout}");

    // A new release: a new image, the data stays.
    let page = dash.dir.path().join("app/www/docs/index.html");
    let text = std::fs::read_to_string(&page).unwrap();
    std::fs::write(&page, text.replace("version 1", "version 2")).unwrap();
    let second = dash.deploy();
    let release2 = second["release"].as_str().unwrap().to_owned();
    assert_ne!(release1, release2);
    assert!(dash.docs().contains("version 2"));
    assert_eq!(dash.sql("select count(*) from f1_race_wins"), "4");

    // Rollback: the previous release's compose file, so the previous image.
    let (code, stdout, stderr) = dash.shipit(&["rollback", "dash"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(dash.docs().contains("version 1"));
    let ps = d.cli_ok(&["ps", "--format", "{{.Names}} {{.Image}}"]);
    assert!(
        ps.contains(&format!("dash-api dash-api:{release1}")),
        "{ps}"
    );

    // A task the inventory does not have: a usage error that names the ones it has.
    let (code, _, stderr) = dash.shipit(&["task", "dash", "sed"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("no task `sed`") && stderr.contains("`seed`"),
        "{stderr}"
    );
}
