//! Traffic during a deploy (issue #19): what clients of a web app see while shipit
//! redeploys it, under an open-loop load through the host's Nginx. Not a test: nothing is
//! asserted about failures or speed, but after every deploy Nginx must serve the new
//! `VERSION`, and the load must have seen it last, or the benchmark panics (a run that did
//! nothing cannot win).
//!
//!   bash bench/bluegreen.sh                                  # 100 req/s, 5 redeploys, 2 s boot
//!   RATE=200 REDEPLOYS=10 BOOT_SECONDS=5 bash bench/bluegreen.sh
//!   SHIPIT_BENCH_ROWS=plain,blue-green cargo bench --bench bluegreen
//!
//! Every row deploys a first release (not measured), starts the load, then deploys
//! `SHIPIT_BENCH_REDEPLOYS` (default 5) new releases one after the other, each with its own
//! `VERSION`, checks after each that `GET /version` through Nginx answers it, and stops the
//! load. The load (`tests/e2e/support/load.py`, run on the host itself) sends
//! `SHIPIT_BENCH_RATE` (default 100) `GET /version` per second to the host's Nginx on port 80,
//! each on its own connection and thread whatever the answers take; a request fails when it
//! gets anything but a 2xx answer, or none within 5 s. The app takes
//! `SHIPIT_BENCH_BOOT_SECONDS` (default 2, the example's) to listen after it starts. Each row
//! gets a fresh host from the test fixtures: one systemd-nspawn host booting real systemd and
//! Nginx (`tests/e2e/support/systemd.rs`), which serves and takes the load.
//!
//! - `plain restart`: the example's app (`examples/blue-green/app`) as one plain unit,
//!   `shop.service` (the example's template unit with the port fixed to 3001), restarted by
//!   the deploy in place (no `ports`), Nginx (the example's site) proxying to 127.0.0.1:3001;
//!   the health check on 3001. Between the old process's exit and the new one listening,
//!   Nginx answers 502.
//! - `blue-green`: `examples/blue-green/shop.toml` as shipped (template unit, ports 3001 and
//!   3002, drain 5 s, health check on the idle port), only pointed at the host. Its deploy
//!   time includes the drain: the deploy returns once the old instance has stopped.
//! - `compose up -d`: a Docker Compose stack (`[compose]`, `pull = false`) redeployed by
//!   shipit, whose switch runs `docker-compose up -d`, which recreates the container: the old
//!   one stops, then the new one starts. The container is the test fixture's busybox image
//!   plus the release's `version` file, running `sleep BOOT_SECONDS; exec httpd` (busybox
//!   has no python3: the same boot time, not the same app); each release is a new image tag,
//!   `APP_TAG` in the env file. The nspawn hosts have no Docker, so the stack runs on the
//!   Docker fixture (`tests/e2e/support/docker.rs`: a private dockerd on this machine,
//!   driven over ssh from an sshd host of `tests/e2e/support/mod.rs` with `docker-compose`
//!   v1), and publishes its port on this machine's side of the nspawn host's veth: the nspawn
//!   host's Nginx proxies to it (the example's site settings), and the load runs there as in
//!   the other rows. The health check is `GET /version` on the published port. Skipped, with
//!   a note, when `dockerd`, `docker-compose` or `busybox` is missing.
//!
//! Columns: deploys, requests sent (the whole load, from before the first redeploy to after
//! the last check), failed requests (count, % of sent, and `lost s`: failed / rate / deploys,
//! the outage per deploy that many failures amount to at this rate), latency percentiles of
//! every request, failed ones included (ms, as load.py measures them on the host), and the
//! mean wall time of one `shipit deploy`. Then the ratios blue-green / plain restart (and
//! compose / plain restart) of failed requests and p99.

#[path = "../tests/e2e/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::docker::docker;
use support::load::{Load, LoadReport};
use support::systemd::SystemdFleet;
use support::{Fleet, free_port};

/// The example, as the repository ships it.
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/blue-green");
/// The nspawn host that serves and takes the load.
const HOST: &str = "s1";
/// What the load asks for: the host's Nginx, port 80.
const URL: &str = "http://127.0.0.1/version";
/// The plain unit's fixed port (the example's first).
const PLAIN_PORT: u16 = 3001;

fn main() {
    let knobs = Knobs::from_env();
    println!(
        "shipit traffic-during-deploy benchmark: {} requests/s through Nginx during each of {} \
         redeploys; the app boots in {} s",
        knobs.rate, knobs.redeploys, knobs.boot_seconds
    );
    let mut rows = Vec::new();
    if knobs.wants("plain") {
        rows.push(plain_restart(&knobs));
    }
    if knobs.wants("blue-green") {
        rows.push(blue_green(&knobs));
    }
    if knobs.wants("compose") {
        match compose_missing() {
            None => rows.push(compose_up(&knobs)),
            Some(what) => println!("compose up -d: skipped, {what} is not installed"),
        }
    }
    println!();
    Row::header();
    for row in &rows {
        row.print();
    }
    let find = |name: &str| rows.iter().find(|r| r.name == name);
    if let Some(plain) = find("plain restart") {
        for other in ["blue-green", "compose up -d"] {
            if let Some(row) = find(other) {
                row.ratios(plain);
            }
        }
    }
}

/// The environment's knobs (see the module doc).
struct Knobs {
    rate: u32,
    redeploys: usize,
    /// As the app and `sleep` take it.
    boot_seconds: String,
    /// Row names to run: `plain`, `blue-green`, `compose`.
    rows: Vec<String>,
}

impl Knobs {
    fn from_env() -> Knobs {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let rate = var("SHIPIT_BENCH_RATE").map_or(100, |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("SHIPIT_BENCH_RATE={v:?} is not a whole number"))
        });
        let redeploys = var("SHIPIT_BENCH_REDEPLOYS").map_or(5, |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("SHIPIT_BENCH_REDEPLOYS={v:?} is not a whole number"))
        });
        let boot_seconds = var("SHIPIT_BENCH_BOOT_SECONDS").unwrap_or_else(|| "2".to_owned());
        assert!(
            boot_seconds
                .trim()
                .parse::<f64>()
                .is_ok_and(|s| s.is_finite() && s >= 0.0),
            "SHIPIT_BENCH_BOOT_SECONDS={boot_seconds:?} is not a number of seconds"
        );
        let rows = var("SHIPIT_BENCH_ROWS")
            .unwrap_or_else(|| "plain,blue-green,compose".to_owned())
            .split(',')
            .map(|r| r.trim().to_owned())
            .collect();
        assert!(rate > 0 && redeploys > 0, "rate and redeploys must be > 0");
        Knobs {
            rate,
            redeploys,
            boot_seconds: boot_seconds.trim().to_owned(),
            rows,
        }
    }

    fn wants(&self, row: &str) -> bool {
        self.rows.iter().any(|r| r == row)
    }
}

/// One row of the table.
struct Row {
    name: &'static str,
    deploys: usize,
    rate: u32,
    report: LoadReport,
    deploy_time: Duration,
}

impl Row {
    fn header() {
        println!(
            "{:<15} {:>7} {:>7} {:>7} {:>8} {:>7} {:>8} {:>8} {:>8} {:>9}",
            "scenario",
            "deploys",
            "sent",
            "failed",
            "failed %",
            "lost s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "deploy s"
        );
    }

    fn print(&self) {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        println!(
            "{:<15} {:>7} {:>7} {:>7} {:>7.2}% {:>7.2} {:>8} {:>8} {:>8} {:>9.2}",
            self.name,
            self.deploys,
            self.report.sent,
            self.report.failed,
            self.failed_percent(),
            self.report.failed as f64 / self.rate as f64 / self.deploys as f64,
            ms(self.report.latency_ms.p50),
            ms(self.report.latency_ms.p99),
            ms(self.report.latency_ms.max),
            self.deploy_time.as_secs_f64() / self.deploys as f64,
        );
    }

    fn failed_percent(&self) -> f64 {
        100.0 * self.report.failed as f64 / self.report.sent.max(1) as f64
    }

    /// This row against `base`: failed requests (as shares of what was sent, since the rows
    /// run for different times) and p99.
    fn ratios(&self, base: &Row) {
        let ratio = |ours: f64, theirs: f64| {
            if theirs > 0.0 {
                format!("{:.3}x", ours / theirs)
            } else {
                "-".to_owned()
            }
        };
        let p99 = |r: &Row| r.report.latency_ms.p99.unwrap_or(0.0);
        println!(
            "{} / {}: failed requests {} ({:.2}% vs {:.2}%), p99 {} ({:.1} vs {:.1} ms)",
            self.name,
            base.name,
            ratio(self.failed_percent(), base.failed_percent()),
            self.failed_percent(),
            base.failed_percent(),
            ratio(p99(self), p99(base)),
            p99(self),
            p99(base),
        );
    }
}

/// Deploys `first` (unmeasured), then, under the load, every version of `versions`, each
/// followed by a check that the host's Nginx serves it. `deploy` runs one `shipit deploy`
/// and panics unless it succeeded.
fn measure(
    name: &'static str,
    knobs: &Knobs,
    fleet: &SystemdFleet,
    prefix: &str,
    mut deploy: impl FnMut(&str),
) -> Row {
    deploy(&format!("{prefix}-0"));
    assert_served(fleet, &format!("{prefix}-0"));
    let versions: Vec<String> = (1..=knobs.redeploys)
        .map(|i| format!("{prefix}-{i}"))
        .collect();
    let load = Load::start(fleet, HOST, URL, knobs.rate);
    let mut deploy_time = Duration::ZERO;
    for version in &versions {
        let start = Instant::now();
        deploy(version);
        deploy_time += start.elapsed();
        assert_served(fleet, version);
    }
    let report = load.stop();
    let last = versions.last().map(String::as_str);
    assert_eq!(
        report.last_body(),
        last,
        "{name}: the load's last answer is not the last release: {report}"
    );
    println!(
        "{name}: failures {:?}; versions seen {:?}; the sender was late by up to {:.0} ms",
        report.failures,
        report.bodies_seen(),
        report.max_lag_ms
    );
    Row {
        name,
        deploys: knobs.redeploys,
        rate: knobs.rate,
        report,
        deploy_time,
    }
}

/// Panics unless `GET /version` through the host's Nginx answers `version`.
fn assert_served(fleet: &SystemdFleet, version: &str) {
    let served = fleet.sh_ok(HOST, &format!("curl -sS --max-time 10 {URL}"));
    assert_eq!(
        served.trim(),
        version,
        "after deploying {version}, Nginx serves something else"
    );
}

fn plain_restart(knobs: &Knobs) -> Row {
    let shop = Shop::provision(knobs);
    let unit = std::fs::read_to_string(Path::new(EXAMPLE).join("deploy/shop@.service"))
        .unwrap()
        .replace("%i", &PLAIN_PORT.to_string());
    let unit = write(shop.fleet.dir(), "shop.service", &unit);
    let site = std::fs::read_to_string(Path::new(EXAMPLE).join("deploy/site.conf"))
        .unwrap()
        .replace("{{ port }}", &PLAIN_PORT.to_string());
    let site = write(shop.fleet.dir(), "plain-site.conf", &site);
    let health = format!("http://127.0.0.1:{PLAIN_PORT}/healthz");
    measure("plain restart", knobs, &shop.fleet, "plain", |version| {
        shop.deploy(&shop.inventory(version, |inv| {
            let mut plain = toml::Table::new();
            plain.insert("unit".into(), "shop.service".into());
            plain.insert("template".into(), path_value(&unit));
            inv.insert("systemd".into(), toml::Value::Array(vec![plain.into()]));
            table(inv, "nginx").insert("template".into(), path_value(&site));
            first(inv, "health").insert("url".into(), health.as_str().into());
        }));
    })
}

fn blue_green(knobs: &Knobs) -> Row {
    let shop = Shop::provision(knobs);
    measure("blue-green", knobs, &shop.fleet, "blue-green", |version| {
        shop.deploy(&shop.inventory(version, |_| {}));
    })
}

/// A fresh nspawn host provisioned as the example's README asks (the `shop` user, no default
/// Nginx site), both units booting in `BOOT_SECONDS` (a drop-in each).
struct Shop {
    fleet: SystemdFleet,
}

impl Shop {
    fn provision(knobs: &Knobs) -> Shop {
        let fleet = SystemdFleet::start(1);
        let boot = format!(
            "[Service]\nEnvironment=BOOT_SECONDS={}\n",
            knobs.boot_seconds
        );
        fleet.sh_ok(
            HOST,
            &format!(
                "useradd --system --user-group --no-create-home --shell /usr/sbin/nologin shop && \
                 rm /etc/nginx/sites-enabled/default && \
                 for d in shop.service.d shop@.service.d; do \
                   mkdir -p /etc/systemd/system/$d && printf '%s' '{boot}' > /etc/systemd/system/$d/boot.conf; \
                 done"
            ),
        );
        Shop { fleet }
    }

    /// The example's inventory, pointed at the host and deploying a copy of the example's
    /// app saying `version`, then changed by `edit`.
    fn inventory(&self, version: &str, edit: impl FnOnce(&mut toml::Table)) -> PathBuf {
        let app = release(self.fleet.dir(), version);
        let text = std::fs::read_to_string(Path::new(EXAMPLE).join("shop.toml")).unwrap();
        let mut inv: toml::Table = toml::from_str(&text).expect("shop.toml parses");
        let mut ssh = toml::Table::new();
        ssh.insert("user".into(), "root".into());
        ssh.insert("identity".into(), path_value(&self.fleet.client_key()));
        ssh.insert("known_hosts".into(), path_value(&self.fleet.known_hosts()));
        inv.insert("ssh".into(), ssh.into());
        let mut host = toml::Table::new();
        host.insert("name".into(), HOST.into());
        host.insert(
            "address".into(),
            self.fleet.host(HOST).address.as_str().into(),
        );
        inv.insert("hosts".into(), toml::Value::Array(vec![host.into()]));
        table(&mut inv, "artifact").insert("path".into(), path_value(&app));
        let unit = first(&mut inv, "systemd");
        let template = in_repo(unit["template"].as_str().unwrap());
        unit.insert("template".into(), template);
        let nginx = table(&mut inv, "nginx");
        let template = in_repo(nginx["template"].as_str().unwrap());
        nginx.insert("template".into(), template);
        edit(&mut inv);
        write(
            self.fleet.dir(),
            &format!("shop-{version}.toml"),
            &toml::to_string(&inv).expect("serialize the inventory"),
        )
    }

    fn deploy(&self, inventory: &Path) {
        shipit_deploy(self.fleet.shipit(), inventory);
    }
}

/// `shipit deploy test -i inventory --json`; panics unless it exits 0.
fn shipit_deploy(mut shipit: Command, inventory: &Path) {
    let out = shipit
        .args(["deploy", "test", "--json", "-i"])
        .arg(inventory)
        .output()
        .expect("run shipit");
    assert!(
        out.status.success(),
        "shipit deploy -i {} exited {}:\n{}\n{}",
        inventory.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the compose row needs that this machine lacks, if anything.
fn compose_missing() -> Option<&'static str> {
    let installed = |path: &str| Path::new(path).exists();
    if !installed("/usr/sbin/dockerd") && !installed("/usr/bin/dockerd") {
        return Some("`dockerd`");
    }
    if !installed("/usr/bin/docker-compose") {
        return Some("`docker-compose`");
    }
    if !installed("/bin/busybox") {
        return Some("`busybox` (busybox-static)");
    }
    None
}

fn compose_up(knobs: &Knobs) -> Row {
    // The nspawn host: Nginx and the load.
    let web = SystemdFleet::start(1);
    // This machine's side of the host's veth (the host is 10.215.K.2, this machine .1): the
    // stack publishes its port there, where the host's Nginx reaches it.
    let address = &web.host(HOST).address;
    let (subnet, _) = address.rsplit_once('.').expect("an IPv4 address");
    let upstream = format!("{subnet}.1:{}", free_port());
    let site = std::fs::read_to_string(Path::new(EXAMPLE).join("deploy/site.conf"))
        .unwrap()
        .replace("127.0.0.1:{{ port }}", &upstream);
    assert!(site.contains(&upstream), "the example's site changed shape");
    web.sh_ok(
        HOST,
        &format!(
            "set -e\nrm /etc/nginx/sites-enabled/default\n\
             cat > /etc/nginx/sites-enabled/shop <<'SHIPIT_BENCH_SITE'\n{site}SHIPIT_BENCH_SITE\n\
             nginx -t && systemctl reload nginx"
        ),
    );

    // The Docker host: an sshd host driving this process's dockerd.
    let engine = docker();
    let fleet = Fleet::start(1);
    engine.expose_to(&fleet, "h1");
    let project = engine.project("shipitbench");
    let image = format!("shipit-bench/shop-{}", project.name());
    let compose = write(
        fleet.dir(),
        "compose.yml.j2",
        &format!(
            "services:\n  shop:\n    image: \"{image}:${{APP_TAG}}\"\n    ports:\n      - \
             \"{upstream}:8080\"\n    command: [\"sh\", \"-c\", \"sleep {}; exec httpd -f -p \
             8080 -h /www\"]\n",
            knobs.boot_seconds
        ),
    );
    let h1 = fleet.host("h1");
    let inventory = |version: &str| {
        let app = release(fleet.dir(), version);
        let text = format!(
            "[app]\nname = \"shop\"\ndeploy_to = \"/opt/shop\"\n\n\
             [ssh]\nuser = \"root\"\nidentity = {:?}\nknown_hosts = {:?}\n\n\
             [[hosts]]\nname = \"h1\"\naddress = \"127.0.0.1\"\nport = {}\n\n\
             [artifact]\npath = {:?}\n\n\
             [env]\npath = \"/etc/shop.env\"\nvars = {{ APP_TAG = {version:?} }}\n\n\
             [compose]\nfile = {:?}\nproject = {:?}\npull = false\n\n\
             [[health]]\nurl = \"http://{upstream}/version\"\nexpect_status = 200\n\
             timeout = \"20s\"\n",
            fleet.client_key().display().to_string(),
            fleet.known_hosts().display().to_string(),
            h1.port,
            app.display().to_string(),
            compose.display().to_string(),
            project.name(),
        );
        write(fleet.dir(), &format!("compose-{version}.toml"), &text)
    };
    let dockerfile = format!("FROM {}\nCOPY version /www/version\n", engine.base_image());
    for i in 0..=knobs.redeploys {
        let version = format!("compose-{i}");
        engine.build_image(
            &format!("{image}:{version}"),
            &dockerfile,
            &[("version", format!("{version}\n").as_bytes())],
        );
    }
    measure("compose up -d", knobs, &web, "compose", |version| {
        shipit_deploy(fleet.shipit(), &inventory(version));
    })
}

/// A copy of the example's app under `dir` whose `VERSION` is `version`.
fn release(dir: &Path, version: &str) -> PathBuf {
    let app = dir.join(format!("app-{version}"));
    std::fs::create_dir_all(&app).unwrap();
    for entry in std::fs::read_dir(Path::new(EXAMPLE).join("app")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), app.join(entry.file_name())).unwrap();
    }
    std::fs::write(app.join("VERSION"), format!("{version}\n")).unwrap();
    app
}

fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write a bench file");
    path
}

fn path_value(path: &Path) -> toml::Value {
    path.display().to_string().into()
}

/// A path of the example's inventory (relative to the repository root), made absolute.
fn in_repo(relative: &str) -> toml::Value {
    path_value(&Path::new(env!("CARGO_MANIFEST_DIR")).join(relative))
}

fn table<'t>(inv: &'t mut toml::Table, key: &str) -> &'t mut toml::Table {
    inv.get_mut(key)
        .and_then(toml::Value::as_table_mut)
        .unwrap_or_else(|| panic!("no [{key}] in the inventory"))
}

/// The first `[[key]]` table.
fn first<'t>(inv: &'t mut toml::Table, key: &str) -> &'t mut toml::Table {
    inv.get_mut(key)
        .and_then(toml::Value::as_array_mut)
        .and_then(|a| a.first_mut())
        .and_then(toml::Value::as_table_mut)
        .unwrap_or_else(|| panic!("no [[{key}]] in the inventory"))
}
