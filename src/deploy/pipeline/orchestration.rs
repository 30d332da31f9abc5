//! The orchestration of a deploy driven against fake hosts ([`crate::deploy::fake`]): the
//! order of each host's commands, what a switch-back undoes after a failure at each step,
//! waves and `max_fail`, the once steps, and the report agreeing with the plan.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::artifact::Packed;
use crate::deploy::facts::rendered;
use crate::deploy::fake::{self, Script};
use crate::deploy::phases::execute_plan;
use crate::output::report::deploy::StepStatus;
use crate::output::{Mode, redact::Redactor};
use crate::plan::build::{ArtifactFacts, DeployInputs, HostFacts};
use crate::plan::facts::Release;
use crate::plan::{Phase, Plan, Step};

const NOW: u64 = 1_795_381_200;
const DEPLOY_TO: &str = "/opt/shop";
const TOKEN: &str = "tok-1";
const OLD: &str = "20200101T000000Z-aaaaaaaaaaaa";

/// `[app]` (with `app` added), `n` hosts `h1`..`hn`, then `rest`.
fn inventory(n: usize, app: &str, rest: &str) -> Inventory {
    let mut text = format!("[app]\nname = \"shop\"\ndeploy_to = \"{DEPLOY_TO}\"\n{app}\n");
    for i in 1..=n {
        text.push_str(&format!(
            "[[hosts]]\nname = \"h{i}\"\naddress = \"10.0.0.{i}\"\n"
        ));
    }
    text.push_str(rest);
    crate::inventory::for_tests(&text)
}

/// The run's identity, the same in every test.
fn run_info() -> RunInfo {
    RunInfo {
        token: TOKEN.to_owned(),
        user: "me".to_owned(),
        machine: "laptop".to_owned(),
        pid: 1,
        command: "shipit deploy test".to_owned(),
        ci_url: None,
        started_unix: NOW,
        started_millis: NOW * 1000,
        redactor: Redactor::default(),
    }
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
    /// Older releases every host also has (for prune).
    older: Vec<String>,
    /// Hosts that have a release of the same artifact (a copy instead of an upload).
    same_artifact_on: Vec<String>,
}

struct Ran {
    plan: Plan,
    report: DeployReport,
}

fn setup(n: usize, rest: &str) -> Setup {
    Setup {
        inv: inventory(n, "", rest),
        migrate_host: None,
        older: Vec::new(),
        same_artifact_on: Vec::new(),
    }
}

impl Setup {
    fn migrate_on(mut self, host: &str) -> Setup {
        self.migrate_host = Some(host.to_owned());
        self
    }

    /// Each host's release tree: `OLD` current, the older releases, and a release of the
    /// artifact where asked.
    fn trees(&self, packed: &Packed) -> Vec<ReleaseTree> {
        self.inv
            .hosts
            .iter()
            .map(|h| {
                let mut t = tree();
                for id in &self.older {
                    t.releases.insert(
                        0,
                        Release {
                            id: id.clone(),
                            sha256: Some("bb".repeat(32)),
                        },
                    );
                }
                if self.same_artifact_on.contains(&h.name) {
                    t.releases.insert(
                        0,
                        Release {
                            id: "20100101T000000Z-cccccccccccc".to_owned(),
                            sha256: Some(packed.sha256.clone()),
                        },
                    );
                }
                t
            })
            .collect()
    }

    fn plan(&self, packed: &Packed) -> Plan {
        let trees = self.trees(packed);
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
            release: None,
            once: crate::plan::shard::OnceSteps::Run,
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
        self.execute_as(script, packed, plan, true).await
    }

    /// Executes `plan` as a deploy, or as a rollback (no artifact, no guard).
    async fn execute_as(
        &self,
        script: &Script,
        packed: &Packed,
        plan: &Plan,
        deploy: bool,
    ) -> DeployReport {
        let inv = &self.inv;
        let templates = templates(inv);
        let hosts: Vec<&Host> = inv.hosts.iter().collect();
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        let out = Output::new(Mode::Json, &names, 0, None);
        let info = run_info();
        let connector = Connector::Local;
        let mut r = Run::new(plan.action, "test", &hosts, (&info, inv, &out, &connector));
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
            deploy,
            artifact: Some(packed).filter(|_| deploy),
            uploads: Some(&uploads).filter(|_| deploy),
            facts: hosts
                .iter()
                .map(|h| h.name.clone())
                .zip(self.trees(packed))
                .collect(),
            revision: String::new(),
            env_content: inv.env.as_ref().filter(|_| deploy).map(|_| &env),
            guard: deploy.then(|| Guard {
                history: crate::ops::history::Record::default(),
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
    let delay = plan.hosts[0].guard_delay().unwrap_or(0);
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
        (
            "test_site",
            nginx::test("shop", &format!("{dir}/.shipit/nginx/shop")),
        ),
        ("mark_passed", passed::mark(DEPLOY_TO, rel)),
        ("forget_old", passed::forget(DEPLOY_TO, OLD)),
    ];
    if let Some((name, _)) = known.iter().find(|(_, c)| fake::text(c) == cmd) {
        return (*name).to_owned();
    }
    let mut prunes = plan
        .hosts
        .iter()
        .flat_map(|h| &h.steps)
        .filter_map(|s| match s {
            Step::Prune { releases } => Some(release::prune(DEPLOY_TO, releases)),
            _ => None,
        });
    if prunes.any(|p| fake::text(&p) == cmd) {
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
        ("decompress()", "upload"),
        ("from=20100101T000000Z-cccccccccccc", "reuse"),
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
            "test_site",
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

const HOOKS: &str = r#"
[[hooks]]
at = "after_switch"
command = "hook-switch"

[[hooks]]
at = "after_restart"
command = "hook-restart"
"#;

/// A host switched back runs its `after_switch` and `after_restart` hooks again, for the
/// release it goes back to (its directory, its id as `SHIPIT_RELEASE`), in a deploy's
/// order; its guard's script would do the same. A hook that fails then is a warning: the
/// rest of the switch-back runs, and the host counts as switched back.
#[tokio::test]
async fn a_switch_back_runs_the_hooks_again_for_the_previous_release() {
    let s = setup(1, &format!("{SERVED}{HOOKS}"));
    let dir = tempfile::tempdir().unwrap();
    let packed = artifact(dir.path());
    let plan = s.plan(&packed);
    let confirm = fake::text(&crate::commands::guard::confirm(
        DEPLOY_TO,
        TOKEN,
        &plan.release,
    ));
    let script = Script::default();
    script.fail("h1", &confirm, 1);
    let report = s.execute(&script, &packed, &plan).await;
    assert_eq!(report.outcome, Outcome::RolledBack, "{:?}", report.message);
    assert_eq!(
        labels_from(&script, &plan, "h1", "confirm"),
        strs(&[
            "confirm",
            "forget",
            "restore_env",
            "switch_back",
            "hook:after_switch",
            "restore_units",
            "restore_site",
            "hook:after_restart",
            "disarm"
        ])
    );
    let again = format!("SHIPIT_RELEASE={OLD}");
    let reruns: Vec<String> = script
        .commands("h1")
        .into_iter()
        .filter(|c| c.contains(&again))
        .collect();
    assert_eq!(reruns.len(), 2, "{reruns:#?}");
    for cmd in &reruns {
        assert!(
            cmd.contains(&format!("dir={DEPLOY_TO}/releases/{OLD}"))
                && cmd.contains(&format!("SHIPIT_PREVIOUS={}", plan.release))
                && cmd.contains("envfile=/etc/shop.env"),
            "{cmd}"
        );
    }
    // The guard's script runs them too, after `current` is back.
    let arm = script
        .calls()
        .into_iter()
        .find(|c| label(&plan, &c.cmd) == "arm")
        .unwrap();
    let guard = arm.stdin_text;
    let at = |needle: &str| {
        guard
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle} in {guard}"))
    };
    assert!(
        at(&fake::text(&crate::commands::release::switch(
            DEPLOY_TO, OLD
        ))) < at("hook-switch")
    );
    assert!(at("hook-switch") < at("hook-restart"));
    assert_eq!(guard.matches(&again).count(), 2, "{guard}");

    // The `after_switch` hook fails for the previous release: the rest still runs, and
    // the host is switched back, with a warning.
    let script = Script::default();
    script.fail("h1", &confirm, 1);
    script.fail("h1", &again, 3);
    let report = s.execute(&script, &packed, &plan).await;
    assert_eq!(report.outcome, Outcome::RolledBack, "{:?}", report.message);
    assert_eq!(
        labels_from(&script, &plan, "h1", "switch_back"),
        strs(&[
            "switch_back",
            "hook:after_switch",
            "restore_units",
            "restore_site",
            "hook:after_restart",
            "disarm"
        ])
    );
    let h1 = host(&report, "h1");
    assert_eq!((h1.outcome, h1.rolled_back), ("switched_back", Some(true)));
    assert_eq!(h1.error.as_ref().unwrap().step, "confirm");
    assert_eq!(h1.warnings.len(), 1, "{:?}", h1.warnings);
    assert!(
        h1.warnings[0].contains(&format!(
            "the after_switch hook `hook-switch` (run again for {OLD}) failed on `h1` with exit status 3"
        )),
        "{:?}",
        h1.warnings
    );
    let json = serde_json::to_value(h1).unwrap();
    assert_eq!(json["warnings"][0], h1.warnings[0].as_str());
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

const ONCE: &str = r#"
[backup]
kind = "command"
command = "make-backup"

[migrate]
command = "run-migrations"

[[hooks]]
at = "after_switch"
command = "hook-switch"
once = true
"#;

#[tokio::test]
async fn once_steps_run_on_the_migrate_host_after_every_host_staged() {
    let s = setup(3, &format!("{SERVED}{ONCE}")).migrate_on("h2");
    let script = Script::default();
    let Ran { plan, report } = s.run(&script).await;
    assert_eq!(report.outcome, Outcome::Deployed, "{:?}", report.message);
    let once: Vec<&str> = plan.once.iter().map(Step::name).collect();
    assert_eq!(once, ["backup", "migrate"]);
    let ran: Vec<(&str, StepStatus)> = report.once.iter().map(|s| (s.step, s.status)).collect();
    assert_eq!(
        ran,
        [("backup", StepStatus::Ok), ("migrate", StepStatus::Ok)]
    );
    assert_eq!(report.migrated_on.as_deref(), Some("h2"));
    assert_eq!(report.backup.as_ref().map(|b| b.host.as_str()), Some("h2"));
    for h in ["h1", "h3"] {
        let l = labels(&script, &plan, h);
        assert!(
            !l.iter()
                .any(|l| l == "backup" || l == "migrate" || l.starts_with("hook")),
            "{h}: {l:?}"
        );
        assert!(!plan_names(&plan, h).contains(&"hook"), "{h}");
    }
    assert_eq!(
        labels_from(&script, &plan, "h2", "test_site"),
        strs(&[
            "test_site",
            "backup",
            "migrate",
            "arm",
            "install_env",
            "switch",
            "hook:after_switch",
            "install_units",
            "restart",
            "install_site",
            "confirm"
        ])
    );
    // Every host staged before the backup; no host was armed before the migrations ended.
    let calls = script.calls();
    let at = |host: &str, what: &str| {
        calls
            .iter()
            .position(|c| c.host == host && label(&plan, &c.cmd) == what)
            .unwrap()
    };
    let backup = at("h2", "backup");
    for h in ["h1", "h2", "h3"] {
        assert!(at(h, "test_site") < backup, "{h}");
        assert!(at(h, "arm") > at("h2", "migrate"), "{h}");
    }
}

#[tokio::test]
async fn a_failed_migration_switches_nothing() {
    let s = setup(3, &format!("{SERVED}{ONCE}")).migrate_on("h2");
    let script = Script::default();
    script.fail("h2", "run-migrations", 1);
    let Ran { plan, report } = s.run(&script).await;
    assert_eq!(report.outcome, Outcome::Failed);
    assert!(
        report
            .message
            .as_deref()
            .unwrap()
            .ends_with("; nothing was switched"),
        "{:?}",
        report.message
    );
    let ran: Vec<(&str, StepStatus)> = report.once.iter().map(|s| (s.step, s.status)).collect();
    assert_eq!(
        ran,
        [("backup", StepStatus::Ok), ("migrate", StepStatus::Failed)]
    );
    assert_eq!(report.migrated_on, None);
    assert_eq!(host(&report, "h2").error.as_ref().unwrap().step, "migrate");
    for h in ["h1", "h2", "h3"] {
        let l = labels(&script, &plan, h);
        assert!(
            !l.iter()
                .any(|l| l == "arm" || l == "switch" || l == "switch_back"),
            "{h}: {l:?}"
        );
        let switch_steps: Vec<StepStatus> = plan
            .host(h)
            .unwrap()
            .steps
            .iter()
            .zip(statuses(&report, h))
            .filter(|(s, _)| s.phase() == Phase::Switch)
            .map(|(_, (_, st))| st)
            .collect();
        assert!(!switch_steps.is_empty());
        assert!(switch_steps.iter().all(|s| *s == StepStatus::NotRun), "{h}");
    }
    assert_eq!(host(&report, "h1").outcome, "not_switched");
    assert_eq!(host(&report, "h2").outcome, "failed");
}

#[tokio::test]
async fn a_failed_backup_runs_no_migration() {
    let s = setup(2, &format!("{SERVED}{ONCE}")).migrate_on("h1");
    let script = Script::default();
    script.fail("h1", "make-backup", 1);
    let Ran { plan, report } = s.run(&script).await;
    assert_eq!(report.outcome, Outcome::Failed);
    let ran: Vec<(&str, StepStatus)> = report.once.iter().map(|s| (s.step, s.status)).collect();
    assert_eq!(
        ran,
        [
            ("backup", StepStatus::Failed),
            ("migrate", StepStatus::NotRun)
        ]
    );
    for h in ["h1", "h2"] {
        let l = labels(&script, &plan, h);
        assert!(
            !l.iter().any(|l| l == "migrate" || l == "arm"),
            "{h}: {l:?}"
        );
    }
}

#[tokio::test]
async fn a_staging_failure_on_one_host_switches_nothing_anywhere() {
    let s = setup(3, SERVED);
    let script = Script::default();
    let dir = tempfile::tempdir().unwrap();
    let packed = artifact(dir.path());
    let plan = s.plan(&packed);
    let test = crate::commands::nginx::test(
        "shop",
        &format!("{DEPLOY_TO}/releases/{}/.shipit/nginx/shop", plan.release),
    );
    script.fail(
        "h3",
        &fake::text(&test),
        crate::commands::exit::NGINX_INVALID,
    );
    let report = s.execute(&script, &packed, &plan).await;
    assert_eq!(report.outcome, Outcome::Failed);
    assert_eq!(
        report.message.as_deref(),
        Some("1 hosts failed to stage; nothing was switched")
    );
    let e = host(&report, "h3").error.clone().unwrap();
    assert_eq!(
        (e.step.as_str(), e.exit),
        ("stage_site", Some(crate::commands::exit::NGINX_INVALID))
    );
    for h in ["h1", "h2", "h3"] {
        assert!(
            !labels(&script, &plan, h).contains(&"arm".to_owned()),
            "{h}"
        );
    }
}

#[tokio::test]
async fn an_unchanged_env_file_is_neither_installed_nor_restored() {
    let s = setup(1, SERVED);
    let script = Script::default();
    let read = crate::commands::envfile::read("/etc/shop.env", None);
    script.answer("h1", &fake::text(&read), "A=1\n");
    let dir = tempfile::tempdir().unwrap();
    let packed = artifact(dir.path());
    let plan = s.plan(&packed);
    script.fail(
        "h1",
        &fake::text(&crate::commands::release::switch(DEPLOY_TO, &plan.release)),
        1,
    );
    let report = s.execute(&script, &packed, &plan).await;
    let st = statuses(&report, "h1");
    assert!(st.contains(&("stage_env", StepStatus::Skipped)), "{st:?}");
    assert!(st.contains(&("install_env", StepStatus::Skipped)), "{st:?}");
    assert_eq!(
        labels_from(&script, &plan, "h1", "arm"),
        strs(&["arm", "switch", "forget", "switch_back", "disarm"])
    );
}

/// The commands a host's steps send, one label per step that sends one we know.
fn expected_labels(plan: &Plan, host: &str) -> Vec<String> {
    let mut out = Vec::new();
    let hs = plan.host(host).unwrap();
    let mut once_done = false;
    for step in &hs.steps {
        if !once_done && step.phase() > Phase::Stage && plan.migrate_host.as_deref() == Some(host) {
            out.extend(plan.once.iter().map(|s| s.name().to_owned()));
            once_done = true;
        }
        let l = match step {
            Step::Upload { .. } => "upload".to_owned(),
            Step::Reuse { .. } => "reuse".to_owned(),
            Step::StageSite { .. } => "test_site".to_owned(),
            Step::Hook { at, .. } => format!("hook:{}", crate::plan::step::hook_point_str(*at)),
            Step::ArmGuard { .. } => "arm".to_owned(),
            Step::Forget { .. } => "forget_old".to_owned(),
            Step::StageEnv { .. } | Step::StageUnits { .. } | Step::StageCompose { .. } => continue,
            other => other.name().to_owned(),
        };
        out.push(l);
    }
    out
}

const EVERYTHING: &str = r#"
[[hooks]]
at = "after_upload"
command = "hook-upload"

[[hooks]]
at = "before_switch"
command = "hook-before"

[[hooks]]
at = "after_switch"
command = "hook-switch"

[[hooks]]
at = "after_restart"
command = "hook-restart"

[health]
command = "check-health"
timeout = "5s"

[backup]
kind = "command"
command = "make-backup"

[migrate]
command = "run-migrations"
"#;

#[tokio::test]
async fn the_report_and_the_commands_follow_the_plan_for_every_step_kind() {
    let mut s = setup(2, &format!("{SERVED}{COMPOSE}{EVERYTHING}")).migrate_on("h1");
    s.inv = inventory(
        2,
        "keep_releases = 2",
        &format!("{SERVED}{COMPOSE}{EVERYTHING}"),
    );
    s.older = strs(&[
        "20180101T000000Z-bbbbbbbbbbbb",
        "20190101T000000Z-bbbbbbbbbbbb",
    ]);
    s.same_artifact_on = strs(&["h2"]);
    let script = Script::default();
    let Ran { plan, report } = s.run(&script).await;
    assert_eq!(report.outcome, Outcome::Deployed, "{:?}", report.message);
    let kinds: std::collections::BTreeSet<&str> = plan
        .hosts
        .iter()
        .flat_map(|h| &h.steps)
        .chain(&plan.once)
        .map(Step::name)
        .collect();
    for kind in [
        "upload",
        "reuse",
        "stage_env",
        "stage_units",
        "stage_site",
        "stage_compose",
        "hook",
        "backup",
        "migrate",
        "arm_guard",
        "install_env",
        "switch",
        "install_units",
        "restart",
        "install_site",
        "compose_up",
        "health",
        "confirm",
        "prune",
    ] {
        assert!(kinds.contains(kind), "the plan has no `{kind}` step");
    }
    for h in ["h1", "h2"] {
        assert_eq!(report_names(&report, h), plan_names(&plan, h), "{h}");
        assert!(
            statuses(&report, h)
                .iter()
                .all(|(_, s)| *s == StepStatus::Ok),
            "{h}: {:?}",
            statuses(&report, h)
        );
        assert_eq!(labels(&script, &plan, h), expected_labels(&plan, h), "{h}");
    }
    let once: Vec<&str> = report.once.iter().map(|s| s.step).collect();
    let planned: Vec<&str> = plan.once.iter().map(Step::name).collect();
    assert_eq!(once, planned);
    assert_eq!(host(&report, "h2").source.as_deref(), Some("reused"));
    assert_eq!(host(&report, "h1").pruned, s.older);
}

#[tokio::test]
async fn a_rollback_follows_its_plan() {
    let s = setup(
        2,
        &format!("{SERVED}\n[health]\ncommand = \"check-health\"\n"),
    );
    let script = Script::default();
    let dir = tempfile::tempdir().unwrap();
    let packed = artifact(dir.path());
    let hosts: Vec<(&Host, ReleaseTree)> = s
        .inv
        .hosts
        .iter()
        .map(|h| {
            let mut t = tree();
            t.releases.push(Release {
                id: "20300101T000000Z-dddddddddddd".to_owned(),
                sha256: None,
            });
            t.current = Some("20300101T000000Z-dddddddddddd".to_owned());
            (h, t)
        })
        .collect();
    let refs: Vec<(&Host, &ReleaseTree)> = hosts.iter().map(|(h, t)| (*h, t)).collect();
    let plan = plan::build::rollback(
        &s.inv,
        &rendered(&templates(&s.inv)),
        &refs,
        OLD,
        None,
        None,
    );
    let report = s.execute_as(&script, &packed, &plan, false).await;
    assert_eq!(report.outcome, Outcome::Deployed, "{:?}", report.message);
    for h in ["h1", "h2"] {
        assert_eq!(report_names(&report, h), plan_names(&plan, h), "{h}");
        assert_eq!(
            plan_names(&plan, h),
            [
                "switch",
                "install_units",
                "restart",
                "install_site",
                "health",
                "mark_passed",
                "forget"
            ]
        );
        assert!(
            statuses(&report, h)
                .iter()
                .all(|(_, s)| *s == StepStatus::Ok),
            "{h}"
        );
        let l = labels(&script, &plan, h);
        // No guard in a rollback; the release it turns away from is recorded last.
        assert_eq!(
            l,
            strs(&[
                "switch",
                "install_units",
                "restart",
                "install_site",
                "health",
                "mark_passed"
            ]),
            "{h}"
        );
        let forget = crate::commands::passed::forget(DEPLOY_TO, "20300101T000000Z-dddddddddddd");
        assert_eq!(script.commands(h).last(), Some(&fake::text(&forget)), "{h}");
    }
}

/// Switching back a host whose wave succeeded undoes what its switch changed, not every
/// switch step the plan lists: an env file this run did not install (unchanged,
/// `install_env` skipped) is not "restored" from `.shipit/previous/env`, which holds what an
/// earlier run replaced (a stale env file would go live with the old release). The guard's
/// script leaves it out for the same reason.
#[tokio::test]
async fn a_wave_rollback_restores_only_what_the_host_changed() {
    let s = fleet("0", "rollback");
    let script = Script::default();
    let read = crate::commands::envfile::read("/etc/shop.env", None);
    for h in ["h1", "h2", "h3", "h4", "h5"] {
        script.answer(h, &fake::text(&read), "A=1\n");
    }
    let dir = tempfile::tempdir().unwrap();
    let packed = artifact(dir.path());
    let plan = s.plan(&packed);
    let switch = fake::text(&crate::commands::release::switch(DEPLOY_TO, &plan.release));
    script.fail("h2", &switch, 1);
    let report = s.execute(&script, &packed, &plan).await;
    assert!(statuses(&report, "h1").contains(&("install_env", StepStatus::Skipped)));
    assert_eq!(host(&report, "h1").outcome, "switched_back");
    assert!(
        !labels(&script, &plan, "h1").contains(&"restore_env".to_owned()),
        "{:?}",
        labels(&script, &plan, "h1")
    );
}

/// A whole `pipeline::deploy` (connect, lock, facts, plan, execute, close) against fake
/// hosts, the first deploy on each (empty release trees).
async fn deploy_through_pipeline(inv: &Inventory, script: &Script) -> DeployReport {
    let dir = tempfile::tempdir().unwrap();
    let packed = artifact(dir.path());
    let templates = templates(inv);
    let hosts: Vec<&Host> = inv.hosts.iter().collect();
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    let out = Output::new(Mode::Json, &names, 0, None);
    let info = run_info();
    let connector = Connector::Fake(script.clone());
    deploy(Deploy {
        stage: "test",
        inventory: inv,
        hosts: &hosts,
        connector: &connector,
        out: &out,
        artifact: &packed,
        templates: &templates,
        migrate_host: None,
        release_id: None,
        once: crate::plan::shard::OnceSteps::Run,
        waves: None,
        env_content: inv.env.as_ref().map(|_| Secret::new("A=1\n")),
        now_unix: NOW,
        git: None,
        run: &info,
        cancel: Cancel::never(),
    })
    .await
}

#[tokio::test]
async fn the_guards_history_line_names_the_release_it_turns_away_from() {
    let s = setup(1, SERVED);
    let script = Script::default();
    let report = deploy_through_pipeline(&s.inv, &script).await;
    assert_eq!(report.outcome, Outcome::Deployed, "{:?}", report.message);
    let release = report.release.clone().unwrap();
    let arm = script
        .calls()
        .into_iter()
        .find(|c| c.cmd.contains("/.shipit/guard") && c.stdin_text.contains("\"reverted\""))
        .expect("the guard was armed with its script");
    // Old rollout.rs built the guard's line after the release id was chosen: `shipit history`
    // shows which release the guard reverted.
    assert!(
        arm.stdin_text
            .contains(&format!("\"release\":\"{release}\"")),
        "the guard's history line does not name {release}: {}",
        arm.stdin_text
            .lines()
            .find(|l| l.contains("\"reverted\""))
            .unwrap_or("")
    );
}

#[tokio::test]
async fn a_deploy_that_cannot_read_a_host_still_reports_the_artifacts_size() {
    let s = setup(2, "");
    let script = Script::default();
    let facts = fake::text(&crate::plan::facts::releases(DEPLOY_TO));
    // The lock's command reads the tree too: taken, the read failed (exit 1), so it is
    // read again on its own, and fails again.
    script.answer("h2", "shipit-locked", "shipit-locked 1\n");
    script.fail("h2", &facts, 1);
    let report = deploy_through_pipeline(&s.inv, &script).await;
    assert_eq!(report.outcome, Outcome::Failed, "{:?}", report.message);
    let reads = script
        .commands("h2")
        .iter()
        .filter(|c| c.contains(&facts))
        .count();
    assert_eq!(reads, 2, "the lock's command, then the tree alone");
    assert_eq!(
        report.message.as_deref(),
        Some("could not read every host; nothing was switched")
    );
    // Old rollout.rs set `artifact_bytes` on every deploy report, whatever path it left by.
    assert!(report.artifact_bytes.is_some(), "artifact_bytes is null");
}

/// The manifest of a host's current release is read only where a delta may go: a host that
/// already holds the artifact gets a copy, and costs no round trip for it.
#[tokio::test]
async fn no_manifest_is_read_for_a_host_that_will_copy_the_artifact() {
    let inv = inventory(2, "", "");
    let script = Script::default();
    let conns: Vec<Conn<'_>> = inv
        .hosts
        .iter()
        .map(|h| Conn {
            host: h,
            transport: script.transport(&h.name),
        })
        .collect();
    let artifact = "cc".repeat(32);
    let mut holds = tree();
    holds.delta = true;
    holds.manifest = Some("1".repeat(64));
    holds.releases.push(Release {
        id: "20210101T000000Z-cccccccccccc".to_owned(),
        sha256: Some(artifact.clone()),
    });
    let mut lacks = holds.clone();
    lacks.releases.pop();
    let refs: Vec<&Conn<'_>> = conns.iter().collect();
    let read =
        crate::deploy::upload::read_manifests(&refs, &[&holds, &lacks], DEPLOY_TO, Some(&artifact))
            .await;
    assert!(read[0].is_none(), "h1 copies: nothing to read");
    assert!(
        read[1].is_some(),
        "h2 may take a delta: its manifest is read"
    );
    assert!(
        script.commands("h1").is_empty(),
        "{:?}",
        script.commands("h1")
    );
    assert_eq!(script.commands("h2").len(), 1);
    // Deltas off: nothing is read anywhere.
    let read =
        crate::deploy::upload::read_manifests(&refs, &[&holds, &lacks], DEPLOY_TO, None).await;
    assert!(read.iter().all(Option::is_none));
    assert_eq!(script.commands("h2").len(), 1);
}
