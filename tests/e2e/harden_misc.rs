//! Hardening (#17, findings 9, 12 and 14 a–c) through the real binary: shared paths that
//! overlap or name shipit's own files are refused at load; backup retention and listing see
//! only this app's own backups in a shared directory; `$SHIPIT_COMPOSE` keeps a `deploy_to`
//! with spaces whole; `nginx -t` never swaps the live site; the local transport takes one
//! host.

use std::path::{Path, PathBuf};

use crate::common::*;
use crate::support::Fleet;
use crate::support::docker::docker;
use crate::support::free_port;
use crate::support::systemd::SystemdFleet;

fn app_dir(dir: &Path, name: &str, version: &str) -> PathBuf {
    let app = dir.join(name);
    std::fs::create_dir_all(app.join("public/uploads")).unwrap();
    std::fs::write(app.join("VERSION"), version).unwrap();
    app
}

/// Finding 9: each case exits 2 naming `inv.toml:<line>:<col>` and the key, and the host is
/// not contacted (its overlay is unchanged; a build that accepted the case would deploy).
#[test]
fn overlapping_or_owned_shared_paths_are_refused_at_load() {
    let fleet = Fleet::start(1);
    let app = app_dir(fleet.dir(), "app", "1");
    let base = inventory_text(
        &fleet,
        &["h1"],
        &format!("[artifact]\npath = \"{}\"\n", app.display()),
    );
    // The `[artifact]` table is the last one: its `path` line, then the case's lines.
    let line = base.lines().count() + 1;
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "shared_dirs = [\"public\", \"public/uploads\"]",
            "artifact.shared_dirs",
            &[
                "\"public/uploads\" lies inside \"public\"",
                "share only \"public\"",
            ],
        ),
        (
            "shared_dirs = [\"public/uploads\", \"public\"]",
            "artifact.shared_dirs",
            &["\"public/uploads\" lies inside \"public\""],
        ),
        (
            "shared_dirs = [\"public\"]\nshared_files = [\"public/robots.txt\"]",
            "artifact.shared_files",
            &["\"public/robots.txt\" lies inside \"public\""],
        ),
        (
            "shared_dirs = [\"storage\", \"storage\"]",
            "artifact.shared_dirs",
            &["\"storage\" is listed twice"],
        ),
        (
            "shared_files = [\"REVISION\"]",
            "artifact.shared_files",
            &["`REVISION` belongs to shipit in every release; share another path"],
        ),
        (
            "shared_dirs = [\".shipit\"]",
            "artifact.shared_dirs",
            &["`.shipit` belongs to shipit"],
        ),
        (
            "shared_dirs = [\".shipit/cache\"]",
            "artifact.shared_dirs",
            &["`.shipit` belongs to shipit"],
        ),
        (
            "shared_files = [\"config\\nx\"]",
            "artifact.shared_files",
            &["must not contain control characters"],
        ),
    ];
    let before = written(&fleet.host("h1").dir);
    for (lines, key, expect) in cases {
        let text = format!("{base}{lines}\n");
        let inv = write(fleet.dir(), "inv.toml", &text);
        let (code, stdout, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&inv));
        assert_eq!(code, 2, "{lines}: {stdout}\n{stderr}");
        // The offending entry's own line: the last one of the case.
        let at = format!("inv.toml:{}:", line + lines.lines().count() - 1);
        assert!(stderr.contains(&at), "{lines}: want {at} in {stderr}");
        assert!(stderr.contains(&format!("`{key}`")), "{lines}: {stderr}");
        for e in *expect {
            assert!(stderr.contains(e), "{lines}: want {e:?} in {stderr}");
        }
    }
    assert_eq!(
        written(&fleet.host("h1").dir),
        before,
        "a refused case changed the host"
    );
    // The same inventory without the overlap deploys: the cases above were refused for it.
    let inv = write(
        fleet.dir(),
        "inv.toml",
        &format!("{base}shared_dirs = [\"public/uploads\"]\n"),
    );
    let (code, _, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&inv));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        fleet
            .sh_ok("h1", "readlink /opt/demo/current/public/uploads")
            .trim(),
        "/opt/demo/shared/public/uploads"
    );
}

/// Finding 9, the same rule on the host for links the inventory cannot see: the artifact's
/// own link `a -> storage` makes `shared_files = ["a/x"]` lie inside `shared_dirs =
/// ["storage"]`; the release is refused (exit 1, nothing switched) and the shared data
/// survives (today's main deleted `shared/storage/x`).
#[test]
fn a_shared_path_through_a_link_in_the_artifact_is_refused_on_the_host() {
    let fleet = Fleet::start(1);
    let app = app_dir(fleet.dir(), "app", "1");
    std::fs::create_dir_all(app.join("storage")).unwrap();
    std::fs::write(app.join("storage/x"), "from the artifact\n").unwrap();
    std::os::unix::fs::symlink("storage", app.join("a")).unwrap();
    let text = inventory_text(
        &fleet,
        &["h1"],
        &format!(
            "[artifact]\npath = \"{}\"\nshared_dirs = [\"storage\"]\nshared_files = [\"a/x\"]\n",
            app.display()
        ),
    );
    let inv = write(fleet.dir(), "inv.toml", &text);
    fleet.sh_ok(
        "h1",
        "mkdir -p /opt/demo/shared/storage && echo 'user data' > /opt/demo/shared/storage/x",
    );
    let (code, stdout, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&inv));
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stderr.contains("goes through the link `a`"), "{stderr}");
    assert_eq!(
        fleet.sh_ok("h1", "cat /opt/demo/shared/storage/x"),
        "user data\n"
    );
    assert!(!succeeds(&fleet, "h1", "test -e /opt/demo/current"));
}

/// An inventory for app `name` deploying to `/opt/<name>` with backups (a `command` backup:
/// no database needed) in the directory both apps share.
fn backup_inventory(fleet: &Fleet, name: &str, app: &Path, keep: u32) -> PathBuf {
    let text = inventory_text(
        fleet,
        &["h1"],
        &format!(
            "[artifact]\npath = \"{}\"\n\n[backup]\nkind = \"command\"\ncommand = \"echo {name}\"\ndir = \"/var/backups/shared\"\nkeep = {keep}\n",
            app.display()
        ),
    )
    .replace("name = \"demo\"", &format!("name = \"{name}\""))
    .replace("/opt/demo", &format!("/opt/{name}"));
    write(fleet.dir(), &format!("{name}.toml"), &text)
}

fn backups_listed(fleet: &Fleet, inv: &Path) -> Vec<String> {
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["backups", "test", "--json", "-i"])
        .arg(inv));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let mut names: Vec<String> = report["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// Finding 12: apps `shop` and `shop-api` share `backup.dir`; `shop`'s retention (keep 1)
/// never deletes `shop-api`'s backups, nor a file that only looks like one of `shop`'s, and
/// `shipit backups` lists only the app's own.
#[test]
fn backup_retention_and_listing_see_only_this_apps_backups() {
    let fleet = Fleet::start(1);
    let app = app_dir(fleet.dir(), "app", "1");
    let api = backup_inventory(&fleet, "shop-api", &app, 5);
    let shop = backup_inventory(&fleet, "shop", &app, 1);
    for (inv, what) in [(&api, "deploy"), (&api, "backup"), (&shop, "deploy")] {
        let (code, stdout, stderr) = run(fleet.shipit().args([what, "test", "-i"]).arg(inv));
        assert_eq!(code, 0, "{what} {}: {stdout}\n{stderr}", inv.display());
    }
    let ls = |fleet: &Fleet| -> Vec<String> {
        let mut names: Vec<String> = fleet
            .sh_ok("h1", "ls -A /var/backups/shared | grep -v '[.]meta$'")
            .lines()
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    };
    let theirs: Vec<String> = ls(&fleet)
        .into_iter()
        .filter(|n| n.starts_with("shop-api-"))
        .collect();
    assert_eq!(theirs.len(), 2, "{:?}", ls(&fleet));
    fleet.sh_ok(
        "h1",
        "echo notes > /var/backups/shared/shop-notes.bak && echo x > '/var/backups/shared/shop-manual-99999999T999999Z-x.bak'",
    );
    for _ in 0..2 {
        let (code, stdout, stderr) = run(fleet.shipit().args(["backup", "test", "-i"]).arg(&shop));
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let left = ls(&fleet);
    let ours: Vec<&String> = left
        .iter()
        .filter(|n| n.starts_with("shop-manual-2") || n.starts_with("shop-2"))
        .collect();
    assert_eq!(ours.len(), 1, "keep = 1: {left:?}");
    for n in &theirs {
        assert!(left.contains(n), "shop's retention deleted {n}: {left:?}");
    }
    for n in ["shop-notes.bak", "shop-manual-99999999T999999Z-x.bak"] {
        assert!(left.contains(&n.to_owned()), "{n} deleted: {left:?}");
    }
    assert_eq!(backups_listed(&fleet, &shop), vec![ours[0].clone()]);
    assert_eq!(backups_listed(&fleet, &api), theirs);
}

/// Finding 14 (c): two `[[hosts]]` on the local transport are one machine; refused at load
/// (exit 2, where), instead of the second locking itself out. In a temp dir only.
#[test]
fn the_local_transport_refuses_a_second_host() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_dir(dir.path(), "app", "1");
    let deploy_to = dir.path().join("deploy");
    let one = format!(
        "transport = \"local\"\n[app]\nname = \"demo\"\ndeploy_to = \"{}\"\n[artifact]\npath = \"{}\"\n\n[[hosts]]\nname = \"a\"\n",
        deploy_to.display(),
        app.display()
    );
    let two = format!("{one}\n[[hosts]]\nname = \"b\"\n");
    let inv = write(dir.path(), "inv.toml", &two);
    let (code, stdout, stderr) = run(crate::support::shipit_command(dir.path())
        .current_dir(dir.path())
        .args(["deploy", "test", "-i"])
        .arg(&inv));
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("inv.toml:11:1: `hosts`: the local transport deploys to this machine only, which the `[[hosts]]` at line 8 already is"),
        "{stderr}"
    );
    assert!(!deploy_to.exists(), "nothing is written");
    // One host deploys (and locks once).
    let inv = write(dir.path(), "inv.toml", &one);
    let (code, stdout, stderr) = run(crate::support::shipit_command(dir.path())
        .current_dir(dir.path())
        .args(["deploy", "test", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(deploy_to.join("current/VERSION").exists());
}

const COMPOSE: &str = r#"services:
  web:
    image: "{{ host.vars.image }}:1"
    ports:
      - "127.0.0.1:{{ host.vars.port }}:8080"
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
"#;

/// Finding 14 (b): with a `deploy_to` holding spaces, `$SHIPIT_COMPOSE` (expanded unquoted,
/// as users write it) runs the release's stack against a real Docker engine; its script is
/// gone afterwards.
#[test]
fn shipit_compose_works_with_a_deploy_to_holding_spaces() {
    let d = docker();
    let fleet = Fleet::start(1);
    d.expose_to(&fleet, "h1");
    let project = d.project("shipitspaces");
    let image = format!("shipit-test/spaces-{}", project.name());
    let dockerfile = format!("FROM {}\nCOPY index.html /www/index.html\n", d.base_image());
    d.build_image(
        &format!("{image}:1"),
        &dockerfile,
        &[("index.html", b"version 1\n")],
    );
    let port = free_port();
    let template = write(fleet.dir(), "compose.yml.j2", COMPOSE);
    let app = app_dir(fleet.dir(), "app", "1");
    let migrate = "$SHIPIT_COMPOSE run --rm -T web cat /www/index.html > /tmp/migrated-with; echo \\\"$SHIPIT_COMPOSE\\\" > /tmp/compose-was";
    let text = inventory_text(
        &fleet,
        &[],
        &format!(
            "[artifact]\npath = \"{}\"\n[env]\npath = \"/etc/my app/web.env\"\nvars = {{ A = \"1\" }}\n[compose]\nfile = \"{}\"\nproject = \"{}\"\npull = false\n[migrate]\ncommand = \"{migrate}\"\n[[hosts]]\nname = \"h1\"\naddress = \"127.0.0.1\"\nport = {}\nvars = {{ image = \"{image}\", port = {port} }}\n",
            app.display(),
            template.display(),
            project.name(),
            fleet.host("h1").port,
        ),
    )
    .replace("deploy_to = \"/opt/demo\"", "deploy_to = \"/opt/my app\"");
    let inv = write(fleet.dir(), "inv.toml", &text);
    fleet.sh_ok("h1", "mkdir -p '/etc/my app'");
    let (code, stdout, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&inv));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(fleet.sh_ok("h1", "cat /tmp/migrated-with"), "version 1\n");
    assert_eq!(
        http_get(port, "/index.html"),
        (200, "version 1\n".to_owned())
    );
    let was = fleet.sh_ok("h1", "cat /tmp/compose-was");
    let script = was.trim().strip_prefix("/bin/sh ").unwrap();
    assert!(
        !succeeds(&fleet, "h1", &format!("test -e {script}")),
        "{script} left behind"
    );
}

const SITE: &str =
    "server {\n    listen 8080;\n    location / {\n        return 200 \"old\";\n    }\n}\n";

/// Finding 14 (a): `nginx -t` while staging runs on a private copy, so the live site files
/// are as they were while it runs (a run killed then leaves the live site alone). A wrapper
/// first on the host's PATH records the live site each time `nginx -t` runs, then runs the
/// real Nginx.
#[test]
fn nginx_is_tested_on_a_private_copy_never_on_the_live_files() {
    let fleet = SystemdFleet::start(1);
    let app = app_dir(fleet.dir(), "app", "1");
    let site = |text: &str| write(fleet.dir(), "site.j2", text);
    let inventory = |site: &Path| {
        let h = fleet.host("s1");
        let text = format!(
            "[app]\nname = \"demo\"\ndeploy_to = \"/opt/demo\"\n\n[ssh]\nidentity = \"{}\"\nknown_hosts = \"{}\"\n\n[artifact]\npath = \"{}\"\n\n[nginx]\nsite = \"demo\"\ntemplate = \"{}\"\n\n[[hosts]]\nname = \"{}\"\naddress = \"{}\"\n",
            fleet.client_key().display(),
            fleet.known_hosts().display(),
            app.display(),
            site.display(),
            h.name,
            h.address,
        );
        write(fleet.dir(), "inv.toml", &text)
    };
    fleet.sh_ok("s1", "rm -f /etc/nginx/sites-enabled/default");
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["deploy", "test", "-i"])
        .arg(inventory(&site(SITE))));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(fleet.http_get("s1", 8080, "/"), (200, "old".to_owned()));

    fleet.sh_ok(
        "s1",
        "cat > /usr/local/sbin/nginx <<'EOF'\n#!/bin/sh\ncase \" $* \" in *' -t '*)\n  { echo '--- nginx -t'; cat /etc/nginx/sites-available/demo; ls /etc/nginx/sites-enabled; } >> /root/nginx-t.log ;;\nesac\nexec /usr/sbin/nginx \"$@\"\nEOF\nchmod 755 /usr/local/sbin/nginx && command -v nginx",
    );
    let broken = SITE.replace(
        "return 200 \"old\";",
        "return 200 \"new\"; no_such_directive on;",
    );
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["deploy", "test", "-i"])
        .arg(inventory(&site(&broken))));
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stderr.contains("no_such_directive"), "{stderr}");
    // The report names the site as it will live, not the private copy.
    assert!(stderr.contains("/etc/nginx/sites-enabled/demo"), "{stderr}");
    assert!(!stderr.contains("/tmp/shipit-nginx"), "{stderr}");
    let log = fleet.sh_ok("s1", "cat /root/nginx-t.log");
    assert!(log.contains("--- nginx -t"), "the wrapper ran: {log}");
    assert!(
        !log.contains("new") && log.contains("return 200 \"old\";"),
        "the live site changed while nginx -t ran:\n{log}"
    );
    assert_eq!(
        fleet
            .sh_ok("s1", "ls /tmp | grep -c shipit-nginx || true")
            .trim(),
        "0",
        "the private copy is removed"
    );
    assert_eq!(fleet.http_get("s1", 8080, "/"), (200, "old".to_owned()));

    // A good site goes live at the switch.
    let good = SITE.replace("\"old\"", "\"new\"");
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["deploy", "test", "-i"])
        .arg(inventory(&site(&good))));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // `systemctl reload nginx` returns once the master has the signal; its new workers
    // answer a moment later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut got = fleet.http_get("s1", 8080, "/");
    while got.1 != "new" && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        got = fleet.http_get("s1", 8080, "/");
    }
    assert_eq!(got, (200, "new".to_owned()));
}
