//! `migrate.maintenance` on a real systemd + Nginx host: while the migrations run, the site
//! answers 503 with `Retry-After` (seen by the migration itself, through Nginx), and the
//! window is lifted after a migration that succeeds, one that fails, and one whose deployer
//! is killed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{run, write};
use crate::support::systemd::SystemdFleet;

/// The site: a static answer, with the maintenance lines where the inventory wants them.
const SITE: &str = "server {\n    listen 80 default_server;\n    {{ maintenance }}\n    location / {\n        default_type text/plain;\n        return 200 \"serving {{ release.id }}\\n\";\n    }\n}\n";

/// Records what Nginx answers while the migration runs: status line and Retry-After.
const PROBE: &str = "curl -s -o /dev/null -D - http://127.0.0.1/ | tr -d '\\r' | grep -E '^(HTTP|Retry-After)' > /root/during.txt";

struct Setup<'a> {
    fleet: &'a SystemdFleet,
    dir: PathBuf,
}

impl Setup<'_> {
    fn new(fleet: &SystemdFleet) -> Setup<'_> {
        fleet.sh_ok(
            "s1",
            "rm -f /etc/nginx/sites-enabled/default && systemctl reload nginx",
        );
        Setup {
            fleet,
            dir: fleet.dir().to_path_buf(),
        }
    }

    /// An inventory whose migration runs `migrate` (a release of its own each time).
    fn inventory(&self, name: &str, migrate: &str) -> PathBuf {
        let app = self.dir.join(format!("app-{name}"));
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("VERSION"), name).unwrap();
        let site = write(&self.dir, "site.conf", SITE);
        let h = &self.fleet.hosts()[0];
        write(
            &self.dir,
            &format!("{name}.toml"),
            &format!(
                r#"[app]
name = "shop"
deploy_to = "/opt/shop"

[ssh]
identity = "{key}"
known_hosts = "{known}"

[[hosts]]
name = "s1"
address = "{address}"

[artifact]
path = "{app}"

[nginx]
site = "shop"
template = "{site}"

[migrate]
command = {migrate:?}
maintenance = true
"#,
                key = self.fleet.client_key().display(),
                known = self.fleet.known_hosts().display(),
                address = h.address,
                app = app.display(),
                site = site.display(),
            ),
        )
    }

    fn deploy(&self, inv: &Path) -> (i32, String, String) {
        run(self.fleet.shipit().args(["deploy", "test", "-i"]).arg(inv))
    }

    fn flag(&self) -> bool {
        self.fleet
            .sh("s1", "test -e /opt/shop/.shipit/maintenance")
            .status
            .success()
    }

    fn get(&self) -> (u16, String) {
        self.fleet.http_get("s1", 80, "/")
    }

    /// The site's answer, which must come from the current release: a deploy returns only
    /// once the Nginx workers of the old configuration stopped taking requests.
    fn serving_current(&self) -> (u16, String) {
        let current = self
            .fleet
            .sh_ok("s1", "basename $(readlink /opt/shop/current)");
        let (status, body) = self.get();
        assert!(
            body.contains(current.trim()),
            "{body} is not from {current}"
        );
        (status, body)
    }
}

#[test]
fn the_site_answers_503_while_migrations_run_and_never_after() {
    let fleet = SystemdFleet::start(1);
    let s = Setup::new(&fleet);

    // The first deploy installs the site that knows the window (nothing served it before).
    let (code, out, err) = s.deploy(&s.inventory("one", "true"));
    assert_eq!(code, 0, "{out}\n{err}");
    let (status, body) = s.get();
    assert_eq!(status, 200, "{body}");

    // The plan says so.
    let inv = s.inventory("two", PROBE);
    let (code, plan, err) = run(fleet.shipit().args(["plan", "test", "-i"]).arg(&inv));
    assert_eq!(code, 0, "{err}");
    let plan = format!("{plan}{err}");
    assert!(plan.contains("every site answers 503 meanwhile"), "{plan}");

    // During the migration, Nginx answers 503 with Retry-After; after it, the new release.
    let (code, out, err) = s.deploy(&inv);
    assert_eq!(code, 0, "{out}\n{err}");
    let during = fleet.sh_ok("s1", "cat /root/during.txt");
    assert!(
        during.starts_with("HTTP/1.1 503"),
        "{during:?}\n{out}\n{err}"
    );
    assert!(during.contains("Retry-After: 30"), "{during}");
    assert!(!s.flag());
    let (status, body) = s.serving_current();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("serving "), "{body}");

    // A failed migration lifts the window too; nothing was switched.
    let before = body;
    let (code, out, err) = s.deploy(&s.inventory("three", &format!("{PROBE}; exit 7")));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        fleet
            .sh_ok("s1", "cat /root/during.txt")
            .starts_with("HTTP/1.1 503")
    );
    assert!(!s.flag());
    assert_eq!(s.get(), (200, before.clone()), "{out}\n{err}");

    // A deployer killed during the migration: its connection closes, the window with it.
    let inv = s.inventory("four", "touch /root/migrating; sleep 120");
    let mut child = fleet
        .shipit()
        .args(["deploy", "test", "-i"])
        .arg(&inv)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fleet.sh("s1", "test -e /root/migrating").status.success() {
        assert!(Instant::now() < deadline, "the migration never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(s.flag(), "the window is open while the migration runs");
    assert_eq!(s.get().0, 503);
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.flag() {
        assert!(
            Instant::now() < deadline,
            "the window outlived the deployer by 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.get(), (200, before));
}

#[test]
fn a_site_without_the_maintenance_lines_is_refused_before_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let site = write(dir.path(), "site.conf", "server {\n    listen 80;\n}\n");
    let inv = write(
        dir.path(),
        "inv.toml",
        &format!(
            "[app]\nname = \"shop\"\ndeploy_to = \"/opt/shop\"\n\n[[hosts]]\nname = \"h\"\naddress = \"127.0.0.1\"\nport = 9\n\n[artifact]\npath = \"{}\"\n\n[nginx]\nsite = \"shop\"\ntemplate = \"{}\"\n\n[migrate]\ncommand = \"true\"\nmaintenance = true\n",
            dir.path().display(),
            site.display()
        ),
    );
    let (code, out, err) = run(crate::support::shipit_command(dir.path())
        .args(["deploy", "test", "-i"])
        .arg(&inv));
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("does not place `{{ maintenance }}`"), "{err}");
}
