//! The orchestration of a deploy driven against fake hosts ([`crate::deploy::fake`]): the
//! order of each host's commands, what a switch-back undoes after a failure at each step,
//! waves and `max_fail`, the once steps, and the report agreeing with the plan.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::deploy::fake::{self, Script};
use crate::inventory::LoadContext;
use crate::output::{Mode, redact::Redactor};
use crate::plan::facts::Release;

const NOW: u64 = 1_795_381_200;
const DEPLOY_TO: &str = "/opt/shop";
const TOKEN: &str = "tok-1";
const OLD: &str = "20200101T000000Z-aaaaaaaaaaaa";

/// `[app]`, `n` hosts `h1`..`hn`, then `rest`.
fn inventory(n: usize, rest: &str) -> Inventory {
    let mut text = format!("[app]\nname = \"shop\"\ndeploy_to = \"{DEPLOY_TO}\"\n\n");
    for i in 1..=n {
        text.push_str(&format!(
            "[[hosts]]\nname = \"h{i}\"\naddress = \"10.0.0.{i}\"\n"
        ));
    }
    text.push_str(rest);
    let env = |_: &str| None;
    let ctx = LoadContext {
        base_dir: Path::new("/project"),
        home: None,
        env: &env,
        need_secrets: false,
    };
    crate::inventory::parse(&text, Path::new("inventory/test.toml"), &ctx).unwrap()
}

/// Units, a site and the env file; no compose, no health.
const SERVED: &str = r#"
[env]
path = "/etc/shop.env"
vars = { A = "1" }

[[systemd]]
unit = "shop.service"
template = "deploy/shop.service"

[nginx]
site = "shop"
template = "deploy/shop.conf"
"#;

const COMPOSE: &str = r#"
[compose]
file = "deploy/compose.yml"
project = "shop"
"#;

fn templates(inv: &Inventory) -> Templates {
    Templates {
        units: inv
            .systemd
            .iter()
            .map(|u| {
                (
                    u.unit.clone(),
                    "deploy/shop.service".to_owned(),
                    "[Service]\nExecStart={{ app.current }}/bin/shop\n".to_owned(),
                )
            })
            .collect(),
        nginx: inv.nginx.as_ref().map(|n| {
            (
                n.site.clone(),
                "deploy/shop.conf".to_owned(),
                "server { listen 80; }\n".to_owned(),
            )
        }),
        compose: inv.compose.as_ref().map(|_| {
            (
                "deploy/compose.yml".to_owned(),
                "services:\n  web:\n    image: nginx:1.27\n".to_owned(),
            )
        }),
    }
}

/// A small artifact, packed for real.
fn artifact(dir: &Path) -> Packed {
    let root = dir.join("dist");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), "hello\n").unwrap();
    crate::artifact::pack(&root, dir).unwrap()
}

/// A host that runs `OLD` (another artifact), with zstd.
fn tree() -> ReleaseTree {
    ReleaseTree {
        current: Some(OLD.to_owned()),
        releases: vec![Release {
            id: OLD.to_owned(),
            sha256: Some("aa".repeat(32)),
        }],
        zstd: true,
        ..ReleaseTree::default()
    }
}

/// One deploy against fake hosts.
struct Setup {
    inv: Inventory,
    migrate_host: Option<String>,
}

struct Ran {
    plan: Plan,
    report: DeployReport,
}

fn setup(n: usize, rest: &str) -> Setup {
    Setup {
        inv: inventory(n, rest),
        migrate_host: None,
    }
}

impl Setup {
    fn migrate_on(mut self, host: &str) -> Setup {
        self.migrate_host = Some(host.to_owned());
        self
    }

    fn plan(&self, packed: &Packed) -> Plan {
        let trees: Vec<ReleaseTree> = self.inv.hosts.iter().map(|_| tree()).collect();
        let facts: Vec<HostFacts<'_>> = self
            .inv
            .hosts
            .iter()
            .zip(&trees)
            .map(|(host, tree)| HostFacts {
                host,
                tree,
                current_manifest: None,
            })
            .collect();
        let rendered = rendered(&templates(&self.inv));
        let inputs = DeployInputs {
            inventory: &self.inv,
            rendered: &rendered,
            artifact: ArtifactFacts {
                sha256: &packed.sha256,
                tar_size: packed.tar_size,
                manifest: packed.manifest.as_deref(),
            },
            env: self.inv.env.is_some(),
            now_unix: NOW,
            waves: None,
            migrate_host: self.migrate_host.as_deref(),
        };
        plan::build::deploy(&inputs, &facts)
    }

    /// Plans, then executes the plan on fake hosts answering from `script`.
    async fn run(&self, script: &Script) -> Ran {
        let dir = tempfile::tempdir().unwrap();
        let packed = artifact(dir.path());
        let plan = self.plan(&packed);
        let report = self.execute(script, &packed, &plan).await;
        Ran { plan, report }
    }

    async fn execute(&self, script: &Script, packed: &Packed, plan: &Plan) -> DeployReport {
        let inv = &self.inv;
        let templates = templates(inv);
        let hosts: Vec<&Host> = inv.hosts.iter().collect();
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        let out = Output::new(Mode::Json, &names, 0, None);
        let info = RunInfo {
            token: TOKEN.to_owned(),
            user: "me".to_owned(),
            machine: "laptop".to_owned(),
            pid: 1,
            command: "shipit deploy test".to_owned(),
            ci_url: None,
            started_unix: NOW,
            started_millis: NOW * 1000,
            redactor: Redactor::default(),
        };
        let connector = Connector::Local;
        let mut r = Run::new("deploy", "test", &hosts, (&info, inv, &out, &connector));
        let conns: Vec<Conn<'_>> = hosts
            .iter()
            .map(|h| Conn {
                host: h,
                transport: script.transport(&h.name),
            })
            .collect();
        let uploads = Uploads::new(packed, BTreeMap::new(), Vec::new());
        let env = Secret::new("A=1\n");
        let ctx = Ctx {
            inventory: inv,
            templates: &templates,
            out: &out,
            token: TOKEN,
            release: &plan.release,
            deploy: true,
            artifact: Some(packed),
            uploads: Some(&uploads),
            facts: hosts.iter().map(|h| (h.name.clone(), tree())).collect(),
            revision: String::new(),
            env_content: inv.env.as_ref().map(|_| &env),
            guard: Some(Guard {
                history: crate::ops::history::Entry::default(),
                redactor: Redactor::default(),
            }),
            now_unix: NOW,
        };
        let (outcome, message) = execute_plan(&mut r, &ctx, &conns, plan, &Cancel::never()).await;
        r.end(outcome, message)
    }
}

/// What a host's command is, by exact comparison with the commands the steps build, or by
/// the user command it runs; `?` for the rest (staging writes and checks).
fn label(plan: &Plan, cmd: &str) -> String {
    use crate::commands::{compose, envfile, guard, nginx, passed, release, systemd};
    let rel = plan.release.as_str();
    let dir = format!("{DEPLOY_TO}/releases/{rel}");
    let compose_file =
        |id: &str| format!("{DEPLOY_TO}/releases/{id}/.shipit/compose/docker-compose.yml");
    let units = vec!["shop.service".to_owned()];
    let env = Some("/etc/shop.env");
    let delay = plan.hosts[0]
        .steps
        .iter()
        .find_map(|s| match s {
            Step::ArmGuard { delay_secs } => Some(*delay_secs),
            _ => None,
        })
        .unwrap_or(0);
    let known = [
        ("arm", guard::arm(DEPLOY_TO, TOKEN, delay)),
        (
            "install_env",
            envfile::activate(DEPLOY_TO, "/etc/shop.env", TOKEN),
        ),
        ("switch", release::switch(DEPLOY_TO, rel)),
        (
            "install_units",
            systemd::install(DEPLOY_TO, &format!("{dir}/.shipit/systemd"), &units),
        ),
        ("restart", systemd::start("shop.service", false)),
        ("restart", systemd::start("shop.service", true)),
        (
            "install_site",
            nginx::install(DEPLOY_TO, "shop", &format!("{dir}/.shipit/nginx/shop")),
        ),
        ("compose_up", compose::up("shop", &compose_file(rel), env)),
        ("compose_up", compose::up("shop", &compose_file(rel), None)),
        ("confirm", guard::confirm(DEPLOY_TO, TOKEN, rel)),
        ("forget", passed::forget(DEPLOY_TO, rel)),
        ("restore_env", envfile::restore(DEPLOY_TO, "/etc/shop.env")),
        ("switch_back", release::switch(DEPLOY_TO, OLD)),
        ("remove_current", release::remove_current(DEPLOY_TO)),
        ("restore_units", systemd::restore(DEPLOY_TO, &units)),
        (
            "restore_compose",
            compose::back("shop", Some(&compose_file(OLD)), &compose_file(rel), env),
        ),
        (
            "restore_compose",
            compose::back("shop", Some(&compose_file(OLD)), &compose_file(rel), None),
        ),
        ("restore_site", nginx::restore(DEPLOY_TO, "shop")),
        ("disarm", guard::disarm(DEPLOY_TO, TOKEN)),
    ];
    if let Some((name, _)) = known.iter().find(|(_, c)| fake::text(c) == cmd) {
        return (*name).to_owned();
    }
    let pruned = plan
        .hosts
        .iter()
        .flat_map(|h| &h.steps)
        .find_map(|s| match s {
            Step::Prune { releases } => Some(release::prune(DEPLOY_TO, releases)),
            _ => None,
        });
    if pruned.is_some_and(|p| fake::text(&p) == cmd) {
        return "prune".to_owned();
    }
    for (word, name) in [
        ("make-backup", "backup"),
        ("run-migrations", "migrate"),
        ("check-health", "health"),
        ("hook-upload", "hook:after_upload"),
        ("hook-before", "hook:before_switch"),
        ("hook-switch", "hook:after_switch"),
        ("hook-restart", "hook:after_restart"),
        ("decompress=", "upload"),
    ] {
        if cmd.contains(word) {
            return name.to_owned();
        }
    }
    "?".to_owned()
}

/// The labels of the commands `host` received, in order, without the unlabelled ones.
fn labels(script: &Script, plan: &Plan, host: &str) -> Vec<String> {
    script
        .commands(host)
        .iter()
        .map(|c| label(plan, c))
        .filter(|l| l != "?")
        .collect()
}

/// The labels `host` received from its first `from` on.
fn labels_from(script: &Script, plan: &Plan, host: &str, from: &str) -> Vec<String> {
    let all = labels(script, plan, host);
    let start = all.iter().position(|l| l == from).unwrap_or(all.len());
    all[start..].to_vec()
}

fn statuses(report: &DeployReport, host: &str) -> Vec<(&'static str, StepStatus)> {
    report
        .hosts
        .iter()
        .find(|h| h.host == host)
        .unwrap()
        .steps
        .iter()
        .map(|s| (s.step, s.status))
        .collect()
}

fn host<'r>(report: &'r DeployReport, name: &str) -> &'r HostDeploy {
    report.hosts.iter().find(|h| h.host == name).unwrap()
}

fn plan_names(plan: &Plan, host: &str) -> Vec<&'static str> {
    plan.host(host)
        .unwrap()
        .steps
        .iter()
        .map(Step::name)
        .collect()
}

fn report_names(report: &DeployReport, host: &str) -> Vec<&'static str> {
    statuses(report, host).into_iter().map(|(n, _)| n).collect()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_deploy_arms_before_the_switch_and_confirms_after_restart_and_site() {
    let s = setup(1, SERVED);
    let script = Script::default();
    let Ran { plan, report } = s.run(&script).await;
    assert_eq!(report.outcome, Outcome::Deployed, "{:?}", report.message);
    assert_eq!(
        labels(&script, &plan, "h1"),
        strs(&[
            "upload",
            "arm",
            "install_env",
            "switch",
            "install_units",
            "restart",
            "install_site",
            "confirm"
        ])
    );
    assert!(
        statuses(&report, "h1")
            .iter()
            .all(|(_, s)| *s == StepStatus::Ok)
    );
    let h1 = host(&report, "h1");
    assert_eq!((h1.outcome, h1.ok), ("switched", true));
    assert_eq!(h1.current.as_deref(), Some(plan.release.as_str()));
    assert_eq!(h1.previous.as_deref(), Some(OLD));
    // The upload's stream was read to its end, and that is what the report says was sent.
    let upload = script
        .calls()
        .into_iter()
        .find(|c| label(&plan, &c.cmd) == "upload")
        .unwrap();
    assert!(upload.stdin > 0);
    assert_eq!(h1.bytes_sent, upload.stdin as u64);
    assert_eq!(h1.source.as_deref(), Some("uploaded"));
}

/// After a failure at `step` (its command exits 1), what the host received from that
/// command on, and how the report reads.
async fn fail_at(rest: &str, step: &str, code: u32) -> (Plan, DeployReport, Vec<String>) {
    let s = setup(1, rest);
    let script = Script::default();
    // The command to fail, found by a first clean run's labels.
    let dir = tempfile::tempdir().unwrap();
    let packed = artifact(dir.path());
    let plan = s.plan(&packed);
    let probe = Script::default();
    s.execute(&probe, &packed, &plan).await;
    let cmd = probe
        .commands("h1")
        .into_iter()
        .find(|c| label(&plan, c) == step)
        .unwrap_or_else(|| panic!("no `{step}` command"));
    script.fail("h1", &cmd, code);
    let report = s.execute(&script, &packed, &plan).await;
    let after = labels_from(&script, &plan, "h1", step);
    (plan, report, after)
}

#[tokio::test]
async fn a_failure_at_each_switch_step_undoes_exactly_what_started() {
    let all = format!("{SERVED}{COMPOSE}");
    // (failing step, what the host receives from the failing command on)
    let cases: &[(&str, &[&str])] = &[
        (
            "install_env",
            &["install_env", "forget", "restore_env", "disarm"],
        ),
        (
            "switch",
            &["switch", "forget", "restore_env", "switch_back", "disarm"],
        ),
        (
            "install_units",
            &[
                "install_units",
                "forget",
                "restore_env",
                "switch_back",
                "restore_units",
                "disarm",
            ],
        ),
        (
            "restart",
            &[
                "restart",
                "forget",
                "restore_env",
                "switch_back",
                "restore_units",
                "disarm",
            ],
        ),
        (
            "install_site",
            &[
                "install_site",
                "forget",
                "restore_env",
                "switch_back",
                "restore_units",
                "restore_site",
                "disarm",
            ],
        ),
        (
            "compose_up",
            &[
                "compose_up",
                "forget",
                "restore_env",
                "switch_back",
                "restore_units",
                "restore_compose",
                "restore_site",
                "disarm",
            ],
        ),
        (
            "confirm",
            &[
                "confirm",
                "forget",
                "restore_env",
                "switch_back",
                "restore_units",
                "restore_compose",
                "restore_site",
                "disarm",
            ],
        ),
    ];
    for (step, expected) in cases {
        let (plan, report, after) = fail_at(&all, step, 1).await;
        assert_eq!(after, strs(expected), "failure at {step}");
        assert_eq!(report.outcome, Outcome::RolledBack, "failure at {step}");
        let h1 = host(&report, "h1");
        assert_eq!(h1.error.as_ref().unwrap().step, *step);
        assert_eq!(h1.error.as_ref().unwrap().exit, Some(1));
        assert_eq!((h1.outcome, h1.rolled_back), ("switched_back", Some(true)));
        assert_eq!(h1.current.as_deref(), Some(OLD));
        // The failed step is `failed`, what came before `ok`, what comes after `not_run`.
        let st = statuses(&report, "h1");
        let at = st.iter().position(|(n, _)| n == step).unwrap();
        assert_eq!(st[at].1, StepStatus::Failed, "{step}");
        assert!(
            st[..at].iter().all(|(_, s)| *s == StepStatus::Ok),
            "{step}: {st:?}"
        );
        assert!(
            st[at + 1..].iter().all(|(_, s)| *s == StepStatus::NotRun),
            "{step}: {st:?}"
        );
        assert_eq!(report_names(&report, "h1"), plan_names(&plan, "h1"));
    }
}

#[tokio::test]
async fn a_failed_arm_disarms_and_switches_nothing_back() {
    let (_, report, after) = fail_at(SERVED, "arm", 1).await;
    // The arm's own cleanup disarms; nothing it did not start is undone.
    assert_eq!(after, strs(&["arm", "disarm", "forget"]));
    let h1 = host(&report, "h1");
    assert_eq!(h1.error.as_ref().unwrap().step, "arm_guard");
    assert_eq!(
        statuses(&report, "h1")[4],
        ("arm_guard", StepStatus::Failed)
    );
}

#[tokio::test]
async fn a_guard_that_fired_before_confirm_is_not_undone_again() {
    let (_, report, after) = fail_at(SERVED, "confirm", crate::commands::exit::GUARD_FIRED).await;
    // The guard put the host back: the run records the release as rejected, nothing more.
    assert_eq!(after, strs(&["confirm", "forget"]));
    let e = host(&report, "h1").error.clone().unwrap();
    assert_eq!(e.step, "confirm");
    assert!(
        e.message.contains("guard switched the host back"),
        "{}",
        e.message
    );
}

/// 5 hosts in waves of 1, 2, 2 (`waves = ["1", "2"]`).
fn fleet(max_fail: &str, on_failure: &str) -> Setup {
    setup(
        5,
        &format!(
            "{SERVED}\n[rollout]\nwaves = [\"1\", \"2\"]\nmax_fail = {max_fail}\non_failure = \"{on_failure}\"\n"
        ),
    )
}

async fn fleet_failing_h2_switch(s: &Setup) -> (Script, Plan, DeployReport) {
    let script = Script::default();
    let dir = tempfile::tempdir().unwrap();
    let packed = artifact(dir.path());
    let plan = s.plan(&packed);
    let switch = fake::text(&crate::commands::release::switch(DEPLOY_TO, &plan.release));
    script.fail("h2", &switch, 1);
    let report = s.execute(&script, &packed, &plan).await;
    (script, plan, report)
}

#[tokio::test]
async fn a_failure_beyond_max_fail_stops_the_waves_and_switches_back_the_earlier_ones() {
    let s = fleet("0", "rollback");
    let (script, plan, report) = fleet_failing_h2_switch(&s).await;
    assert_eq!(
        plan.waves,
        vec![strs(&["h1"]), strs(&["h2", "h3"]), strs(&["h4", "h5"])]
    );
    assert_eq!(plan.max_fail, 0);
    assert_eq!(report.outcome, Outcome::RolledBack);
    let message = report.message.clone().unwrap();
    assert!(
        message.starts_with("1 hosts failed in wave 2 of 3, more than `max_fail` tolerates (0); 2 hosts were not touched; the 2 hosts switched before were switched back"),
        "{message}"
    );
    // Wave 3 never started its switch steps.
    for h in ["h4", "h5"] {
        assert!(
            !labels(&script, &plan, h).contains(&"arm".to_owned()),
            "{h}"
        );
        assert_eq!(host(&report, h).outcome, "not_switched");
        assert!(
            statuses(&report, h)
                .iter()
                .filter(|(n, _)| plan
                    .host(h)
                    .unwrap()
                    .steps
                    .iter()
                    .any(|s| s.name() == *n && s.phase() == Phase::Switch))
                .all(|(_, s)| *s == StepStatus::NotRun),
            "{h}"
        );
    }
    // h1 (wave 1) and h3 (wave 2) had confirmed: put back whole, with no guard to disarm.
    for h in ["h1", "h3"] {
        assert_eq!(
            labels_from(&script, &plan, h, "confirm"),
            strs(&[
                "confirm",
                "forget",
                "restore_env",
                "switch_back",
                "restore_units",
                "restore_site"
            ]),
            "{h}"
        );
        assert_eq!(host(&report, h).outcome, "switched_back");
        assert_eq!(host(&report, h).current.as_deref(), Some(OLD));
    }
    // h2 failed at its switch and went back at once.
    assert_eq!(
        labels_from(&script, &plan, "h2", "switch"),
        strs(&["switch", "forget", "restore_env", "switch_back", "disarm"])
    );
    assert_eq!(host(&report, "h2").error.as_ref().unwrap().step, "switch");
    // h1 is switched back only after the failure in wave 2.
    let calls = script.calls();
    let failed_at = calls
        .iter()
        .position(|c| c.host == "h2" && label(&plan, &c.cmd) == "switch")
        .unwrap();
    let h1_back = calls
        .iter()
        .position(|c| c.host == "h1" && label(&plan, &c.cmd) == "switch_back")
        .unwrap();
    assert!(h1_back > failed_at);
}

#[tokio::test]
async fn a_failure_within_max_fail_lets_the_next_waves_run() {
    for max_fail in ["1", "\"20%\""] {
        let s = fleet(max_fail, "rollback");
        let (script, plan, report) = fleet_failing_h2_switch(&s).await;
        assert_eq!(plan.max_fail, 1, "{max_fail}");
        assert_eq!(report.outcome, Outcome::RolledBack);
        assert_eq!(
            report.message.as_deref(),
            Some(
                "1 hosts failed within `max_fail` (1) and were switched back; the others run the new release"
            )
        );
        for h in ["h1", "h3", "h4", "h5"] {
            assert_eq!(host(&report, h).outcome, "switched", "{h}");
            assert!(
                !labels(&script, &plan, h).contains(&"switch_back".to_owned()),
                "{h}"
            );
            assert_eq!(
                labels(&script, &plan, h).last().map(String::as_str),
                Some("confirm")
            );
        }
        assert_eq!(host(&report, "h2").outcome, "switched_back");
    }
}

#[tokio::test]
async fn halt_keeps_the_hosts_switched_before() {
    let s = fleet("0", "halt");
    let (script, plan, report) = fleet_failing_h2_switch(&s).await;
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert!(
        report
            .message
            .as_deref()
            .unwrap()
            .ends_with("on_failure = \"halt\": the 2 hosts switched before keep the new release"),
        "{:?}",
        report.message
    );
    for h in ["h1", "h3"] {
        assert_eq!(host(&report, h).outcome, "switched", "{h}");
        assert!(
            !labels(&script, &plan, h).contains(&"switch_back".to_owned()),
            "{h}"
        );
    }
    for h in ["h4", "h5"] {
        assert!(
            !labels(&script, &plan, h).contains(&"arm".to_owned()),
            "{h}"
        );
    }
}
