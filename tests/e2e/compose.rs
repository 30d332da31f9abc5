//! Docker Compose stacks deployed with shipit onto a real sshd host that reaches a real
//! Docker engine: the compose file rendered per release, pinned images, the env file as
//! `--env-file`, `up -d` at the switch, the health gate, switching back to the previous
//! release's stack, `$SHIPIT_COMPOSE` in migrations, and failures that switch nothing.

use std::path::PathBuf;

use crate::common::*;
use crate::support::docker::docker;
use crate::support::{Fleet, free_port};

const COMPOSE: &str = r#"services:
  web:
    image: "{{ host.vars.image }}:${APP_TAG}"
    ports:
      - "127.0.0.1:{{ host.vars.port }}:8080"
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
"#;

struct Stack {
    fleet: Fleet,
    project: crate::support::docker::Project,
    port: u16,
    image: String,
}

impl Stack {
    fn new() -> Stack {
        let d = docker();
        let fleet = Fleet::start(1);
        d.expose_to(&fleet, "h1");
        let project = d.project("shipitcompose");
        let image = format!("shipit-test/web-{}", project.name());
        for version in ["1", "2", "3"] {
            let dockerfile = format!("FROM {}\nCOPY index.html /www/index.html\n", d.base_image());
            let page = format!("version {version}\n");
            d.build_image(
                &format!("{image}:{version}"),
                &dockerfile,
                &[("index.html", page.as_bytes())],
            );
        }
        Stack {
            fleet,
            project,
            port: free_port(),
            image,
        }
    }

    fn inventory(&self, tag: &str, extra: &str) -> PathBuf {
        let template = write(self.fleet.dir(), "compose.yml.j2", COMPOSE);
        let app = self.fleet.dir().join("app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("README"), "the stack is all in the compose file\n").unwrap();
        let text = inventory_text(
            &self.fleet,
            &[],
            &format!(
                "[artifact]\npath = \"{}\"\n[env]\npath = \"/etc/web.env\"\nvars = {{ APP_TAG = \"{tag}\" }}\n[compose]\nfile = \"{}\"\nproject = \"{}\"\npull = false\n[health]\nurl = \"http://127.0.0.1:{}/index.html\"\nexpect_body = \"version\"\ntimeout = \"10s\"\ninterval = \"200ms\"\n{extra}\n[[hosts]]\nname = \"h1\"\naddress = \"127.0.0.1\"\nport = {}\nvars = {{ image = \"{}\", port = {} }}\n",
                app.display(),
                template.display(),
                self.project.name(),
                self.port,
                self.fleet.host("h1").port,
                self.image,
                self.port,
            ),
        );
        write(self.fleet.dir(), &format!("inv-{tag}.toml"), &text)
    }

    fn deploy(&self, inv: &std::path::Path) -> (i32, serde_json::Value, String) {
        let (code, stdout, stderr) = run(self
            .fleet
            .shipit()
            .args(["deploy", "test", "--json", "-i"])
            .arg(inv));
        let json =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
        (code, json, stderr)
    }

    fn serving(&self) -> String {
        let (status, body) = http_get(self.port, "/index.html");
        assert_eq!(status, 200, "{body}");
        body
    }
}

#[test]
fn a_compose_stack_deploys_switches_and_switches_back() {
    let stack = Stack::new();
    // $SHIPIT_COMPOSE runs against the new release's file, with the new env, before the switch.
    let migrate = "[migrate]\ncommand = \"$SHIPIT_COMPOSE run --rm -T web cat /www/index.html > /tmp/migrated-with; test $SHIPIT_FIRST_DEPLOY = 1 && touch /tmp/first || true\"\n";
    let (code, report, stderr) = stack.deploy(&stack.inventory("1", migrate));
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    assert_eq!(stack.serving(), "version 1\n");
    assert_eq!(
        stack.fleet.sh_ok("h1", "cat /tmp/migrated-with"),
        "version 1\n"
    );
    stack.fleet.sh_ok("h1", "rm /tmp/first");
    assert_eq!(
        stack.fleet.sh_ok("h1", "stat -c %a /etc/web.env").trim(),
        "600"
    );
    let release1 = report["release"].as_str().unwrap().to_owned();
    assert!(
        stack
            .fleet
            .sh(
                "h1",
                &format!(
                    "test -f /opt/demo/releases/{release1}/.shipit/compose/docker-compose.yml"
                )
            )
            .status
            .success()
    );

    let (code, _, stderr) = stack.deploy(&stack.inventory("2", migrate));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stack.serving(), "version 2\n");
    assert!(
        !stack.fleet.sh("h1", "test -e /tmp/first").status.success(),
        "not a first deploy"
    );

    // Version 3's page lacks what the health gate wants: the stack goes back to version 2.
    let bad = stack.inventory("3", "").replace_health_body();
    let (code, report, stderr) = stack.deploy(&bad);
    assert_eq!(code, 3, "{stderr}\n{report:#}");
    assert_eq!(stack.serving(), "version 2\n");
    assert!(
        stack
            .fleet
            .sh_ok("h1", "cat /etc/web.env")
            .contains("APP_TAG=2")
    );
}

#[test]
fn a_first_deploy_that_fails_its_health_gate_takes_its_stack_down() {
    let stack = Stack::new();
    // No version serves what this gate wants: the first deploy is switched back, which
    // removes the env file it installed and then takes the stack down (Compose refuses an
    // `--env-file` that does not exist, so the stack goes down without it).
    let bad = stack.inventory("1", "").replace_health_body();
    let (code, report, stderr) = stack.deploy(&bad);
    assert_eq!(code, 3, "{stderr}\n{report:#}");
    let host = &report["hosts"][0];
    assert_eq!(host["rolled_back"], true, "{report:#}");
    assert!(
        !report.to_string().contains("env file"),
        "the switch-back must not trip over the env file: {report:#}"
    );
    let running = docker().cli_ok(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={}", stack.project.name()),
    ]);
    assert_eq!(running.trim(), "", "the stack's containers are gone");
    assert!(
        !stack
            .fleet
            .sh("h1", "test -e /etc/web.env")
            .status
            .success()
    );
    assert!(
        !stack
            .fleet
            .sh("h1", "test -e /opt/demo/current")
            .status
            .success()
    );
}

trait HealthBody {
    fn replace_health_body(self) -> PathBuf;
}

impl HealthBody for PathBuf {
    /// The same inventory, whose health gate wants a body no version serves.
    fn replace_health_body(self) -> PathBuf {
        let text = std::fs::read_to_string(&self)
            .unwrap()
            .replace("expect_body = \"version\"", "expect_body = \"version 2\"");
        let bad = self.with_file_name("inv-bad.toml");
        std::fs::write(&bad, text).unwrap();
        bad
    }
}

#[test]
fn unpinned_images_and_failed_pulls_switch_nothing() {
    let stack = Stack::new();
    let (code, _, stderr) = stack.deploy(&stack.inventory("1", ""));
    assert_eq!(code, 0, "{stderr}");
    let before = stack.fleet.sh_ok("h1", "readlink /opt/demo/current");

    // `latest` is refused before the switch.
    let inv = stack.inventory("1", "");
    write(
        stack.fleet.dir(),
        "compose.yml.j2",
        &COMPOSE.replace(":${APP_TAG}", ":latest"),
    );
    let (code, report, _) = stack.deploy(&inv);
    assert_eq!(code, 1, "{report:#}");
    assert!(
        report.to_string().contains("without a pinned tag"),
        "{report:#}"
    );

    // ... also when it comes from the env file's values, which Compose interpolates.
    let inv = stack.inventory("latest", "");
    write(stack.fleet.dir(), "compose.yml.j2", COMPOSE);
    let (code, report, _) = stack.deploy(&inv);
    assert_eq!(code, 1, "{report:#}");
    assert!(
        report.to_string().contains(":${APP_TAG}` = `"),
        "{report:#}"
    );

    // A pull that fails (no registry answers) stops staging.
    let inv = stack.inventory("1", "");
    write(stack.fleet.dir(), "compose.yml.j2", COMPOSE);
    let text = std::fs::read_to_string(&inv)
        .unwrap()
        .replace("pull = false", "pull = true")
        .replace(
            &format!("image = \"{}\"", stack.image),
            "image = \"127.0.0.1:1/nowhere/web\"",
        );
    let inv = write(stack.fleet.dir(), "inv-pull.toml", &text);
    let (code, report, _) = stack.deploy(&inv);
    assert_eq!(code, 1, "{report:#}");
    assert!(
        report.to_string().contains("pulling the images failed"),
        "{report:#}"
    );

    assert_eq!(
        stack.fleet.sh_ok("h1", "readlink /opt/demo/current"),
        before
    );
    assert_eq!(stack.serving(), "version 1\n");
}

/// A Docker CLI plugin that makes `docker compose` (v2) exist on a host: it logs its
/// arguments and hands them to Compose v1 (Debian packages no v2), so a test sees which
/// Compose shipit ran.
const V2_PLUGIN: &str = r#"#!/bin/sh
if [ "$1" = docker-cli-plugin-metadata ]; then
  echo '{"SchemaVersion":"0.1.0","Vendor":"shipit tests","Version":"v2.99.0","ShortDescription":"Compose v2 stand-in"}'
  exit 0
fi
shift
echo "$*" >> /tmp/compose-v2.log
if [ "$1" = version ]; then echo "Docker Compose version v2.99.0"; exit 0; fi
exec docker-compose "$@"
"#;

#[test]
fn the_v2_plugin_is_preferred_and_a_host_without_compose_is_refused_clearly() {
    let stack = Stack::new();
    stack.fleet.sh_ok(
        "h1",
        &format!(
            "mkdir -p /root/.docker/cli-plugins && cat > /root/.docker/cli-plugins/docker-compose <<'EOF'\n{V2_PLUGIN}EOF\nchmod 755 /root/.docker/cli-plugins/docker-compose"
        ),
    );
    let migrate =
        "[migrate]\ncommand = \"$SHIPIT_COMPOSE config --services > /tmp/shipit-compose\"\n";
    let inv = stack.inventory("1", migrate);
    let (code, report, _) = check_json(&stack.fleet, &inv);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        host_entry(&report, "h1")["facts"]["compose"],
        "docker compose"
    );

    let (code, report, stderr) = stack.deploy(&inv);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    assert_eq!(stack.serving(), "version 1\n");
    // `$SHIPIT_COMPOSE` names a script that runs the v2 plugin with the release's `-p`.
    assert_eq!(stack.fleet.sh_ok("h1", "cat /tmp/shipit-compose"), "web\n");
    let log = stack.fleet.sh_ok("h1", "cat /tmp/compose-v2.log");
    assert!(
        log.lines()
            .any(|l| l.starts_with("-p ") && l.ends_with(" config --services")),
        "{log}"
    );
    assert!(log.contains("config -q"), "{log}");
    assert!(log.contains("up -d --remove-orphans"), "{log}");

    // Neither Compose (the host's /usr is its own): `check` says so, a deploy stops before
    // anything switches, naming what is missing.
    stack.fleet.sh_ok("h1", "rm -rf /root/.docker/cli-plugins");
    stack.fleet.remove_program("h1", "docker-compose");
    let inv = stack.inventory("2", "");
    let (code, report, _) = check_json(&stack.fleet, &inv);
    assert_eq!(code, 1, "{report:#}");
    assert!(
        report
            .to_string()
            .contains("neither `docker compose` (v2) nor `docker-compose` (v1)"),
        "{report:#}"
    );
    let (code, report, _) = stack.deploy(&inv);
    assert_eq!(code, 1, "{report:#}");
    assert!(
        report
            .to_string()
            .contains("neither `docker compose` nor `docker-compose` is installed"),
        "{report:#}"
    );
    assert_eq!(stack.serving(), "version 1\n");
}

#[test]
fn images_are_pulled_from_a_registry_while_staging() {
    let stack = Stack::new();
    let registry = crate::support::registry::Registry::start();
    let d = docker();
    let remote = format!(
        "{}/shipit-test/web-{}",
        registry.address(),
        stack.project.name()
    );
    d.cli_ok(&["tag", &format!("{}:1", stack.image), &format!("{remote}:1")]);
    d.cli_ok(&["push", &format!("{remote}:1")]);
    d.cli_ok(&["rmi", &format!("{remote}:1")]);

    // The migration runs before the switch: the image must be on the host by then.
    let migrate = format!("[migrate]\ncommand = \"docker image inspect {remote}:1 > /dev/null\"\n");
    let text = std::fs::read_to_string(stack.inventory("1", &migrate))
        .unwrap()
        .replace("pull = false", "pull = true")
        .replace(
            &format!("image = \"{}\"", stack.image),
            &format!("image = \"{remote}\""),
        );
    let inv = write(stack.fleet.dir(), "inv-registry.toml", &text);
    let (code, report, stderr) = stack.deploy(&inv);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    assert_eq!(stack.serving(), "version 1\n");
}
