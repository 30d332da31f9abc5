//! Helpers shared by the end-to-end tests: inventories for a fleet, running the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::Fleet;

/// An inventory for `hosts` of `fleet`, strict host keys from the fleet's known_hosts,
/// the fleet's client key; `extra` is appended (more sections, or `[[hosts]]`).
pub fn inventory_text(fleet: &Fleet, hosts: &[&str], extra: &str) -> String {
    let mut text = format!(
        "[app]\nname = \"demo\"\ndeploy_to = \"/opt/demo\"\n\n[ssh]\nuser = \"root\"\nidentity = \"{}\"\nknown_hosts = \"{}\"\nconnect_timeout = \"5s\"\n\n",
        fleet.client_key().display(),
        fleet.known_hosts().display(),
    );
    for name in hosts {
        let h = fleet.host(name);
        text.push_str(&format!(
            "[[hosts]]\nname = \"{}\"\naddress = \"127.0.0.1\"\nport = {}\n\n",
            h.name, h.port
        ));
    }
    text.push_str(extra);
    text
}

/// [`inventory_text`] trusting the known_hosts file `known` instead of the fleet's.
pub fn inventory_trusting(fleet: &Fleet, hosts: &[&str], known: &Path) -> String {
    inventory_text(fleet, hosts, "").replace(
        &fleet.known_hosts().display().to_string(),
        &known.display().to_string(),
    )
}

/// A target only the bastion can reach: on `h1` (the bastion) the name `only-via-bastion`
/// resolves to 127.0.0.1, which nothing here resolves, so reaching `h2` by that name proves
/// the tunnel. Returns a known_hosts file with `h1` and `h2` (under that name).
pub fn bastion_only_target(fleet: &Fleet) -> PathBuf {
    let (bastion, target) = (fleet.host("h1"), fleet.host("h2"));
    fleet.sh_ok("h1", "echo '127.0.0.1 only-via-bastion' >> /etc/hosts");
    write(
        fleet.dir(),
        "jump_known_hosts",
        &format!(
            "[127.0.0.1]:{} {}\n[only-via-bastion]:{} {}\n",
            bastion.port, bastion.host_keys[0], target.port, target.host_keys[0]
        ),
    )
}

/// Writes `text` as `<fleet dir>/<file>` and returns the path.
pub fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write test file");
    path
}

/// Runs and returns (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out: Output = cmd.output().expect("run shipit");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `shipit check <stage> -i <inventory> --json`, parsed.
pub fn check_json(fleet: &Fleet, inventory: &Path) -> (i32, serde_json::Value, String) {
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["check", "test", "--json", "-i"])
        .arg(inventory));
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{stdout}\nstderr:\n{stderr}"));
    (code, json, stderr)
}

/// The JSON report's entry for `host`.
pub fn host_entry<'a>(report: &'a serde_json::Value, host: &str) -> &'a serde_json::Value {
    report["hosts"]
        .as_array()
        .expect("hosts array")
        .iter()
        .find(|h| h["host"] == host)
        .unwrap_or_else(|| panic!("no entry for {host} in {report:#}"))
}

/// `ssh-keygen -lf` of a public key line: OpenSSH's own fingerprint of it.
pub fn openssh_fingerprint(dir: &Path, key_line: &str) -> String {
    let file = write(dir, "fp.pub", &format!("{key_line}\n"));
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_owned()
}

/// Every file a tier-1 test host has written (its overlay's upper layer): path → (size,
/// mtime). Two equal snapshots mean the host was not changed in between.
pub fn written(host_dir: &Path) -> std::collections::BTreeMap<String, (u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![host_dir.join("upper")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let meta = e.path().symlink_metadata().unwrap();
            out.insert(e.path().display().to_string(), (meta.len(), meta.mtime()));
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// A plain HTTP/1.0 GET to 127.0.0.1:`port`: (status, body); status 0 when unparsable.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        text.split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned(),
    )
}

/// Runs `cmd` (a shipit command ending in `--json`) with `secrets` exported; asserts no
/// secret value shows in its output; returns (exit code, the JSON report, stderr).
pub fn run_with_secrets(
    cmd: &mut Command,
    secrets: &[(&str, &str)],
) -> (i32, serde_json::Value, String) {
    for (k, v) in secrets {
        cmd.env(k, v);
    }
    let (code, stdout, stderr) = run(cmd);
    for (name, value) in secrets {
        assert!(
            !stdout.contains(value) && !stderr.contains(value),
            "{name}'s value in shipit's output:\n{stdout}\n{stderr}"
        );
    }
    let report =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (code, report, stderr)
}

/// The one running container of Compose `service` in `project`, on the tests' engine.
pub fn compose_container(project: &str, service: &str) -> String {
    let ids = crate::support::docker::docker().cli_ok(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        &format!("label=com.docker.compose.service={service}"),
    ]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), 1, "containers of {service}: {ids:?}");
    ids[0].to_owned()
}

/// Whether `script` exits 0 on `host` of `fleet`.
pub fn succeeds(fleet: &Fleet, host: &str, script: &str) -> bool {
    fleet.sh(host, script).status.success()
}

/// A TOML table of `entries`.
pub fn table(entries: &[(&str, toml::Value)]) -> toml::Value {
    toml::Value::Table(
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
}

pub fn path(p: &Path) -> toml::Value {
    p.display().to_string().into()
}

/// Sets `inv[keys...]`, creating tables on the way.
pub fn set(inv: &mut toml::Table, keys: &[&str], value: toml::Value) {
    let (last, parents) = keys.split_last().unwrap();
    let mut t = inv;
    for k in parents {
        t = t
            .entry(*k)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap();
    }
    t.insert((*last).to_owned(), value);
}

/// A seed example's inventory (`<example>/<file>`) aimed at `fleet`'s h1 (role `migrate`):
/// its `[ssh]` and `[[hosts]]` replaced by the fleet's, the artifact and Compose file given
/// as absolute paths, Compose `project` and `pull = false`.
pub fn example_inventory(fleet: &Fleet, example: &str, file: &str, project: &str) -> toml::Table {
    let text = std::fs::read_to_string(format!("{example}/{file}")).unwrap();
    let mut inv: toml::Table = text.parse().unwrap();
    inv.insert(
        "ssh".into(),
        table(&[
            ("user", "root".into()),
            ("identity", path(&fleet.client_key())),
            ("known_hosts", path(&fleet.known_hosts())),
            ("connect_timeout", "5s".into()),
        ]),
    );
    inv.insert(
        "hosts".into(),
        toml::Value::Array(vec![table(&[
            ("name", "h1".into()),
            ("address", "127.0.0.1".into()),
            ("port", i64::from(fleet.host("h1").port).into()),
            ("roles", toml::Value::Array(vec!["migrate".into()])),
        ])]),
    );
    set(&mut inv, &["artifact", "path"], example.into());
    set(
        &mut inv,
        &["compose", "file"],
        format!("{example}/docker-compose.yml.j2").into(),
    );
    set(&mut inv, &["compose", "project"], project.into());
    set(&mut inv, &["compose", "pull"], false.into());
    inv
}

/// Sets `vars` in `[env.vars]` and the health check (`url`, `timeout`, a 300ms interval)
/// of `inv`, and writes it as `<fleet dir>/<file>`.
pub fn write_example_inventory(
    fleet: &Fleet,
    mut inv: toml::Table,
    vars: &[(&str, String)],
    url: String,
    timeout: &str,
    file: &str,
) -> PathBuf {
    for (key, value) in vars {
        set(&mut inv, &["env", "vars", key], value.as_str().into());
    }
    set(&mut inv, &["health", "url"], url.into());
    set(&mut inv, &["health", "timeout"], timeout.into());
    set(&mut inv, &["health", "interval"], "300ms".into());
    write(fleet.dir(), file, &toml::to_string(&inv).unwrap())
}

/// `psql -tAc sql` (stopping on errors) in Compose `service` of `project`, as user `db` on
/// database `db`; its output.
pub fn compose_psql(project: &str, service: &str, db: &str, sql: &str) -> String {
    crate::support::docker::docker().cli_ok(&[
        "exec",
        &compose_container(project, service),
        "psql",
        "-X",
        "-U",
        db,
        "-d",
        db,
        "-v",
        "ON_ERROR_STOP=1",
        "-tAc",
        sql,
    ])
}

/// `shipit deploy test --json -i inv`, asserting exit 0: the report.
pub fn deploy_report(fleet: &Fleet, inv: &Path) -> serde_json::Value {
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["deploy", "test", "--json", "-i"])
        .arg(inv));
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\nstderr: {stderr}"));
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    report
}

/// Incompressible bytes, different for every seed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes `content` at `path` under `root`, making the directories on the way.
pub fn put(root: &Path, path: &str, content: &[u8]) {
    let full = root.join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, content).unwrap();
}
