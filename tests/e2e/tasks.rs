//! `shipit task`: named commands from `[tasks.<name>]`, run on demand in the current release
//! on real sshd hosts.

use crate::common::*;
use crate::support::Fleet;

const SECRET: &str = "task-secret-93c1d0a7";

fn inventory(fleet: &Fleet) -> std::path::PathBuf {
    let app = fleet.dir().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("VERSION"), "one\n").unwrap();
    let mut text = inventory_text(
        fleet,
        &[],
        &format!(
            "[artifact]\npath = \"{}\"\n[env]\npath = \"/etc/demo.env\"\nfrom_env = [\"TASK_SECRET\"]\n\n\
             [tasks.where]\ncommand = \"echo $SHIPIT_HOST $SHIPIT_RELEASE $(pwd) $(cat VERSION) ${{#TASK_SECRET}} ${{SHIPIT_FIRST_DEPLOY:-unset}} > /tmp/where\"\n\n\
             [tasks.seed]\ncommand = \"echo seeded >> /tmp/seeded\"\nonce = true\n\n\
             [tasks.web-only]\ncommand = \"touch /tmp/web-only\"\nroles = [\"web\"]\n\n\
             [tasks.fails]\ncommand = \"echo about to fail; exit 7\"\n",
            app.display()
        ),
    );
    for (name, roles) in [("h1", "[\"web\"]"), ("h2", "[\"worker\", \"migrate\"]")] {
        text.push_str(&format!(
            "[[hosts]]\nname = \"{name}\"\naddress = \"127.0.0.1\"\nport = {}\nroles = {roles}\n\n",
            fleet.host(name).port
        ));
    }
    write(fleet.dir(), "inv.toml", &text)
}

fn shipit(fleet: &Fleet, inv: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .env("TASK_SECRET", SECRET)
        .args(args)
        .arg("-i")
        .arg(inv));
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));
    (code, stdout, stderr)
}

#[test]
fn tasks_run_in_the_current_release_on_the_hosts_they_name() {
    let fleet = Fleet::start(2);
    let inv = inventory(&fleet);

    // Nothing deployed yet: said so, per host.
    let (code, _, stderr) = shipit(&fleet, &inv, &["task", "test", "where"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("nothing is deployed under `/opt/demo` yet"),
        "{stderr}"
    );

    let (code, stdout, stderr) = shipit(&fleet, &inv, &["deploy", "test", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let release = serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["release"]
        .as_str()
        .unwrap()
        .to_owned();

    // Every selected host, in the current release, env file loaded, release variables set.
    let (code, stdout, stderr) = shipit(&fleet, &inv, &["task", "test", "where", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["task"], "where");
    assert_eq!(report["hosts"].as_array().unwrap().len(), 2);
    for h in ["h1", "h2"] {
        assert_eq!(
            fleet.sh_ok(h, "cat /tmp/where"),
            format!(
                "{h} {release} /opt/demo/releases/{release} one {} unset\n",
                SECRET.len()
            )
        );
    }

    // `once`: the migrate host only. `roles`: the hosts with one of them. A task needs no
    // secret in the operator's environment: the host's env file has them.
    let (code, _, stderr) = run(fleet
        .shipit()
        .args(["task", "test", "seed", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(fleet.sh_ok("h2", "cat /tmp/seeded"), "seeded\n");
    assert!(!fleet.sh("h1", "test -e /tmp/seeded").status.success());
    let (code, _, stderr) = shipit(&fleet, &inv, &["task", "test", "web-only"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(fleet.sh("h1", "test -e /tmp/web-only").status.success());
    assert!(!fleet.sh("h2", "test -e /tmp/web-only").status.success());
    // ... and a selection that leaves none of them is a usage error.
    let (code, _, stderr) = shipit(&fleet, &inv, &["task", "test", "web-only", "--hosts", "h2"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("none of the selected hosts"), "{stderr}");

    // A failing task: its output streams with the host's prefix, the exit status is kept.
    let (code, stdout, stderr) = shipit(&fleet, &inv, &["task", "test", "fails"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.contains("h1 | about to fail"), "{stdout}");
    let (code, stdout, stderr) = shipit(&fleet, &inv, &["task", "test", "fails", "--json"]);
    assert_eq!(code, 1, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["hosts"][0]["exit_code"], 7);
    assert_eq!(report["hosts"][0]["stdout"], "about to fail\n");

    // Under another run's lock it refuses and runs nothing.
    fleet.sh_ok("h1", "rm -f /tmp/where && mkdir /opt/demo/.shipit/lock");
    let (code, _, stderr) = shipit(&fleet, &inv, &["task", "test", "where"]);
    assert_eq!(code, 5, "locked: exit 5, as for a deploy");
    assert!(stderr.contains("locked by"), "{stderr}");
    assert!(!fleet.sh("h1", "test -e /tmp/where").status.success());
    fleet.sh_ok("h1", "rmdir /opt/demo/.shipit/lock");

    // A host that cannot be reached: the task runs nowhere, and the report says why.
    let text = std::fs::read_to_string(&inv).unwrap()
        + "[[hosts]]\nname = \"down\"\naddress = \"127.0.0.1\"\nport = 1\n";
    let down = write(fleet.dir(), "inv-down.toml", &text);
    let (code, stdout, stderr) = shipit(&fleet, &down, &["task", "test", "where", "--json"]);
    assert_eq!(code, 1, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["hosts"].as_array().unwrap().len(), 3, "{report:#}");
    assert!(
        host_entry(&report, "down")["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach"),
        "{report:#}"
    );
    assert_eq!(
        host_entry(&report, "h1")["error"],
        "not run: another host could not be reached"
    );
    assert!(!fleet.sh("h1", "test -e /tmp/where").status.success());

    // Recorded in each host's history; no lock left behind.
    let (code, stdout, _) = shipit(&fleet, &inv, &["history", "test", "--json"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("task `seed`"), "{stdout}");
    for h in ["h1", "h2"] {
        assert!(
            !fleet
                .sh(h, "test -e /opt/demo/.shipit/lock")
                .status
                .success()
        );
    }
}
