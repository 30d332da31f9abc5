//! Concurrency: deploys racing on overlapping hosts never split a fleet half/half; many
//! shipit processes on one host all get through.

use std::process::Stdio;

use crate::common::*;
use crate::support::Fleet;

#[test]
fn deploys_racing_on_overlapping_hosts_never_split_the_fleet() {
    let fleet = Fleet::start(4);
    let app = |v: &str| {
        let dir = fleet.dir().join(format!("app-{v}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("VERSION"), v).unwrap();
        dir
    };
    let all = ["h1", "h2", "h3", "h4"];
    let inv = |v: &str| {
        let extra = format!("[artifact]\npath = \"{}\"\n", app(v).display());
        write(
            fleet.dir(),
            &format!("inv-{v}.toml"),
            &inventory_text(&fleet, &all, &extra),
        )
    };
    let (code, _, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(inv("v0")));
    assert_eq!(code, 0, "{stderr}");
    for round in 0..3 {
        let before: Vec<String> = all
            .iter()
            .map(|h| fleet.sh_ok(h, "cat /opt/demo/current/VERSION"))
            .collect();
        let (a, b) = (inv(&format!("a{round}")), inv(&format!("b{round}")));
        let spawn = |inv: &std::path::Path, hosts: &str| {
            fleet
                .shipit()
                .args(["deploy", "test", "--hosts", hosts, "-i"])
                .arg(inv)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        // Overlapping selections whose first hosts differ: the lock order alone cannot
        // decide, the all-or-nothing rule must.
        let (pa, pb) = (spawn(&a, "h1,h2,h3"), spawn(&b, "h2,h3,h4"));
        let (oa, ob) = (
            pa.wait_with_output().unwrap(),
            pb.wait_with_output().unwrap(),
        );
        let codes = (oa.status.code().unwrap(), ob.status.code().unwrap());
        assert!(
            matches!(codes, (0, 5) | (5, 0) | (5, 5)),
            "round {round}: {codes:?}\n{}\n{}",
            String::from_utf8_lossy(&oa.stderr),
            String::from_utf8_lossy(&ob.stderr)
        );
        let versions: Vec<String> = all
            .iter()
            .map(|h| fleet.sh_ok(h, "cat /opt/demo/current/VERSION"))
            .collect();
        // Hosts this round changed, by winner.
        let changed = |prefix: &str| -> Vec<&str> {
            all.iter()
                .zip(versions.iter().zip(&before))
                .filter(|(_, (now, was))| {
                    now != was && now.starts_with(&format!("{prefix}{round}"))
                })
                .map(|(h, _)| *h)
                .collect()
        };
        let (a_hosts, b_hosts) = (changed("a"), changed("b"));
        assert_eq!(
            versions
                .iter()
                .zip(&before)
                .filter(|(now, was)| now != was)
                .count(),
            a_hosts.len() + b_hosts.len(),
            "only this round's releases appear"
        );
        let why = format!(
            "round {round}: {codes:?} {versions:?}\nA: {}\nB: {}",
            String::from_utf8_lossy(&oa.stderr),
            String::from_utf8_lossy(&ob.stderr)
        );
        match codes {
            (0, 5) => assert_eq!(
                (a_hosts.as_slice(), b_hosts.len()),
                (&["h1", "h2", "h3"][..], 0),
                "{why}"
            ),
            (5, 0) => assert_eq!(
                (a_hosts.len(), b_hosts.as_slice()),
                (0, &["h2", "h3", "h4"][..]),
                "{why}"
            ),
            _ => assert!(a_hosts.is_empty() && b_hosts.is_empty(), "{why}"),
        }
        for h in all {
            assert!(
                !fleet
                    .sh(h, "test -e /opt/demo/.shipit/lock")
                    .status
                    .success(),
                "lock left on {h}"
            );
        }
    }
}

#[test]
fn twenty_parallel_exec_runs_against_one_host_all_succeed() {
    let fleet = Fleet::start(1);
    let inv = write(
        fleet.dir(),
        "inv.toml",
        &inventory_text(&fleet, &["h1"], ""),
    );
    let children: Vec<_> = (0..20)
        .map(|i| {
            fleet
                .shipit()
                .args(["exec", "test", "-i"])
                .arg(&inv)
                .args(["--", &format!("echo run-{i}")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "run {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("h1 | run-{i}")));
    }
}
