//! Issue #17, review of the hardening on real hosts: cases the first tests did not try.
//! A link another user owns below a sticky `/var/tmp` on the way to `deploy_to` (5), a
//! symlink the artifact puts at a delta's scratch name (1, 6), an env file where a program
//! running as root reads every file (13).
//!
//! Victims are fresh directories (`/var/victim-review-a-*`) of the host's own (its `/var` is
//! a private overlay), outside every directory a deploy may delete in.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::*;
use crate::support::Fleet;

fn put(root: &Path, path: &str, content: &[u8], mode: u32) {
    let full = root.join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(&full, content).unwrap();
    std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn inventory(fleet: &Fleet, file: &str, artifact: &Path, deploy_to: &str, extra: &str) -> PathBuf {
    let text = inventory_text(
        fleet,
        &["h1"],
        &format!("[artifact]\npath = \"{}\"\n{extra}", artifact.display()),
    )
    .replace(
        "deploy_to = \"/opt/demo\"",
        &format!("deploy_to = \"{deploy_to}\"\nuser = \"nobody\""),
    );
    write(fleet.dir(), file, &text)
}

fn deploy(fleet: &Fleet, inv: &Path) -> (i32, String, String) {
    run(fleet
        .shipit()
        .args(["deploy", "test", "--json", "-i"])
        .arg(inv))
}

/// A fresh directory of the host's own (its `/var` is a private overlay), outside every
/// directory a deploy may delete in.
struct Victim(PathBuf);

#[test]
fn a_link_another_user_owns_below_a_sticky_directory_is_not_followed() {
    let fleet = Fleet::start(1);
    let app = fleet.dir().join("review-a-sticky");
    put(&app, "app.txt", b"v1\n", 0o644);
    // `/var/tmp/demo` is nobody's link (any user may make one there) to a root-owned
    // directory: it passes every ownership check where it points, and nobody can
    // re-point it at will.
    let victim = Victim(PathBuf::from(format!(
        "/var/victim-review-a-sticky-{}",
        std::process::id()
    )));
    let real = victim.0.join("real");
    fleet.sh_ok(
        "h1",
        &format!(
            "mkdir -p {0} && chmod 755 {0} && chmod 1777 /var/tmp && ln -s {0} /var/tmp/demo \
             && chown -h nobody /var/tmp/demo",
            real.display()
        ),
    );
    let inv = inventory(&fleet, "sticky.toml", &app, "/var/tmp/demo", "");
    let (code, stdout, stderr) = deploy(&fleet, &inv);
    let said = format!("{stdout}{stderr}");
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("/var/tmp/demo"), "{said}");
    assert!(said.contains("symlink owned by nobody"), "{said}");
    assert_eq!(
        fleet.sh_ok("h1", &format!("ls -A {}", real.display())),
        "",
        "written through nobody's link: {said}"
    );
}

#[test]
fn an_artifact_link_at_the_delta_scratch_name_leaves_the_live_release_alone() {
    let fleet = Fleet::start(1);
    let app = fleet.dir().join("review-a-delta");
    put(&app, "app.txt", b"app\n", 0o644);
    put(&app, "other.txt", b"precious\n", 0o644);
    for i in 0..4 {
        put(&app, &format!("lib/m{i}.txt"), &vec![b'x'; 50_000], 0o644);
    }
    let inv = inventory(&fleet, "delta.toml", &app, "/opt/demo", "");
    let (code, stdout, stderr) = deploy(&fleet, &inv);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let first = report["release"].as_str().unwrap().to_owned();

    // v2: the same files, `app.txt` now executable (a mode edit of the delta), and a link
    // inside the artifact at the name the edit once used for its scratch copy.
    std::fs::set_permissions(app.join("app.txt"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("other.txt", app.join("app.txt.shipit-delta")).unwrap();
    let (code, stdout, stderr) = deploy(&fleet, &inv);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let live = format!("/opt/demo/releases/{first}/other.txt");
    assert_eq!(
        fleet.sh_ok("h1", &format!("cat {live}; stat -c %a {live}")),
        "precious\n644\n",
        "the release kept for rollback was changed through the artifact's link"
    );
    assert_eq!(host_entry(&report, "h1")["source"], "delta", "{report:#}");
    assert_eq!(
        fleet.sh_ok(
            "h1",
            "readlink /opt/demo/current/app.txt.shipit-delta; stat -c %a /opt/demo/current/app.txt"
        ),
        "other.txt\n755\n"
    );
}

#[test]
fn an_env_file_where_root_reads_every_file_is_refused_at_load() {
    let fleet = Fleet::start(1);
    let app = fleet.dir().join("review-a-env");
    put(&app, "app.txt", b"v1\n", 0o644);
    for (path, dir) in [
        ("/etc/bash_completion.d/demo.env", "bash_completion.d"),
        ("/etc/nginx/sites-enabled/demo.env", "sites-enabled"),
        ("/etc/skel/demo.env", "skel"),
        ("/opt/demo/shared/config", "`*.env`"),
    ] {
        let inv = inventory(
            &fleet,
            "env.toml",
            &app,
            "/opt/demo",
            &format!("[env]\npath = \"{path}\"\nvars = {{ A = \"1\" }}\n"),
        );
        let (code, _, stderr) = deploy(&fleet, &inv);
        assert_eq!(code, 2, "{path}: {stderr}");
        assert!(stderr.contains("`env.path`"), "{stderr}");
        assert!(stderr.contains(dir), "{stderr}");
        assert!(
            !succeeds(
                &fleet,
                "h1",
                &format!("test -e {path} || test -e /opt/demo")
            ),
            "{path}: written"
        );
    }
}

/// Finding 14 (Nginx) and units: what is at the site's `sites-enabled` entry or at a unit's
/// path and is not shipit's is left alone, and the deploy stops before it switches. A
/// `sites-enabled/demo` linking to another site kept serving that one while shipit tested
/// its candidate and reported it live; a masked unit was unmasked and started.
#[test]
fn a_foreign_site_link_or_a_masked_unit_stops_the_deploy_and_stays() {
    let fleet = crate::support::systemd::SystemdFleet::start(1);
    let app = fleet.dir().join("review-a-services");
    put(&app, "VERSION", b"1\n", 0o644);
    let site = write(
        fleet.dir(),
        "site.j2",
        "server {\n    listen 8080;\n    location / {\n        return 200 \"shipit\";\n    }\n}\n",
    );
    let unit = write(
        fleet.dir(),
        "demo.service",
        "[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n",
    );
    let inventory = |extra: &str| {
        let h = fleet.host("s1");
        let text = format!(
            "[app]\nname = \"demo\"\ndeploy_to = \"/opt/demo\"\n\n[ssh]\nidentity = \"{}\"\nknown_hosts = \"{}\"\n\n[artifact]\npath = \"{}\"\n\n{extra}\n[[hosts]]\nname = \"{}\"\naddress = \"{}\"\n",
            fleet.client_key().display(),
            fleet.known_hosts().display(),
            app.display(),
            h.name,
            h.address,
        );
        write(fleet.dir(), "inv.toml", &text)
    };

    fleet.sh_ok(
        "s1",
        "rm -f /etc/nginx/sites-enabled/default \
         && printf 'server { listen 8081; return 200 other; }\\n' > /etc/nginx/sites-available/other \
         && ln -s /etc/nginx/sites-available/other /etc/nginx/sites-enabled/demo",
    );
    let nginx = inventory(&format!(
        "[nginx]\nsite = \"demo\"\ntemplate = \"{}\"\n",
        site.display()
    ));
    let (code, stdout, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&nginx));
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stderr.contains("/etc/nginx/sites-enabled/demo"), "{stderr}");
    assert_eq!(
        fleet.sh_ok(
            "s1",
            "readlink /etc/nginx/sites-enabled/demo; test -e /opt/demo/current || echo unswitched"
        ),
        "/etc/nginx/sites-available/other\nunswitched\n"
    );
    fleet.sh_ok("s1", "rm /etc/nginx/sites-enabled/demo");

    fleet.sh_ok("s1", "systemctl mask demo.service");
    let units = inventory(&format!(
        "[[systemd]]\nunit = \"demo.service\"\ntemplate = \"{}\"\n",
        unit.display()
    ));
    let (code, stdout, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&units));
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stderr.contains("masked"), "{stderr}");
    assert_eq!(
        fleet.sh_ok(
            "s1",
            "readlink /etc/systemd/system/demo.service; systemctl is-active demo.service || true; test -e /opt/demo/current || echo unswitched"
        ),
        "/dev/null\ninactive\nunswitched\n"
    );
}

/// A shared file is seeded into a directory of `shared/` the app's user owns (it was a
/// shared dir under an earlier inventory, so it was chowned to them): they could put a
/// symlink at the file's path between root's check that it is absent and root's copy and
/// chown. The seeding is refused, with the directory's owner, before anything is copied.
#[test]
fn a_shared_file_is_not_seeded_into_a_directory_the_app_user_owns() {
    let fleet = Fleet::start(1);
    let app = fleet.dir().join("review-a-seed");
    put(&app, "storage/seed.txt", b"seed\n", 0o644);
    put(&app, "app.txt", b"v1\n", 0o644);
    let dirs = inventory(
        &fleet,
        "dirs.toml",
        &app,
        "/opt/demo",
        "shared_dirs = [\"storage\"]\n",
    );
    let (code, _, stderr) = deploy(&fleet, &dirs);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        fleet.sh_ok("h1", "stat -c %U /opt/demo/shared/storage"),
        "nobody\n"
    );
    fleet.sh_ok("h1", "rm /opt/demo/shared/storage/seed.txt");

    let files = inventory(
        &fleet,
        "files.toml",
        &app,
        "/opt/demo",
        "shared_files = [\"storage/seed.txt\"]\n",
    );
    let (code, stdout, stderr) = deploy(&fleet, &files);
    let said = format!("{stdout}{stderr}");
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("/opt/demo/shared/storage"), "{said}");
    assert!(said.contains("nobody"), "{said}");
    assert!(
        !succeeds(&fleet, "h1", "test -e /opt/demo/shared/storage/seed.txt"),
        "seeded"
    );
}
