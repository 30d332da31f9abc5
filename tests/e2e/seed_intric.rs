//! The Intric seed (`shared/seeds/001`) deployed from `examples/intric` with the real binary
//! over ssh onto a host that reaches a real Docker engine, checked the way the guide's
//! "Verification" and "Updating" sections check it: the five services running and the
//! healthchecked ones healthy, `db-init` once on the first deploy only, each migration once,
//! data kept across deploys, the 0600 `.env` whose secrets never show in shipit's output, a
//! `pg_dump | gzip` backup before migrating, and a release failing its health check switched
//! back to the previous release's images.
//!
//! The inventory is the example's own, with only what must differ here replaced: the host,
//! ssh keys, absolute paths, the project name, free ports, `pull = false` (no registry is
//! reachable) and short healthcheck intervals. The images are stand-ins built here with the
//! interfaces Intric's images have (`alembic upgrade head`, `python init_db.py`, `/version`,
//! a frontend on port 3000): the database is a real PostgreSQL
//! ([`Docker::postgres_image`]), tagged as the example's `pgvector/pgvector:pg15`; `redis`
//! is a busybox stand-in answering `PING`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{
    compose_container, compose_psql, example_inventory, run_with_secrets, write_example_inventory,
};
use crate::support::docker::{BASE_IMAGE, Docker, POSTGRES_UID, Project, docker};
use crate::support::{Fleet, free_port};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/intric");

/// `from_env` of the example, as CI would export them.
const SECRETS: [(&str, &str); 3] = [
    ("POSTGRES_PASSWORD", "pg-Secret-4711"),
    ("JWT_SECRET", "jwt-Secret-0815"),
    ("OPENAI_API_KEY", "sk-test-Secret-42"),
];

/// Sourced by the backend stand-in's commands: Intric's connection settings as libpq's.
const BACKEND_LIB: &str = r#"export PGHOST="$POSTGRES_HOST" PGPORT="$POSTGRES_PORT" PGUSER="$POSTGRES_USER"
export PGPASSWORD="$POSTGRES_PASSWORD" PGDATABASE="$POSTGRES_DB"
wait_for_db() {
  i=0
  until pg_isready -q; do
    i=$((i + 1))
    [ "$i" -lt 300 ] || { echo "the database did not come up" >&2; exit 1; }
    sleep 0.1
  done
}
"#;

/// Stand-in for `alembic upgrade head`: applies `/app/migrations/*.sql` in order, each once.
const ALEMBIC: &str = r#"#!/bin/sh
set -eu
. /usr/local/lib/intric.sh
[ "$*" = "upgrade head" ] || { echo "this stand-in knows only \`alembic upgrade head\`" >&2; exit 2; }
wait_for_db
psql -X -q -v ON_ERROR_STOP=1 -c "CREATE TABLE IF NOT EXISTS alembic_applied (version text PRIMARY KEY)"
for f in /app/migrations/*.sql; do
  v=$(basename "$f" .sql)
  if [ -z "$(psql -X -tA -c "SELECT 1 FROM alembic_applied WHERE version = '$v'")" ]; then
    echo "Running upgrade -> $v"
    { echo "BEGIN;"; cat "$f"; echo "INSERT INTO alembic_applied VALUES ('$v'); COMMIT;"; } \
      | psql -X -q -v ON_ERROR_STOP=1
  fi
done
"#;

/// Stand-in for `python init_db.py` (what `db-init` runs): records each run.
const PYTHON: &str = r#"#!/bin/sh
set -eu
. /usr/local/lib/intric.sh
[ "$*" = "init_db.py" ] || { echo "this stand-in knows only \`python init_db.py\`" >&2; exit 2; }
wait_for_db
psql -X -q -v ON_ERROR_STOP=1 \
  -c "CREATE TABLE IF NOT EXISTS db_init_runs (at timestamptz DEFAULT now())" \
  -c "INSERT INTO db_init_runs DEFAULT VALUES"
echo "database initialized"
"#;

const BACKEND: &str = "#!/bin/sh\nexec httpd -f -p 8123 -h /app/www\n";

/// Talks to Redis (the stand-in) now and then, like a queue worker polling.
const WORKER: &str = r#"#!/bin/sh
while :; do
  printf 'PING\r\n' | nc -w 2 "$REDIS_HOST" "$REDIS_PORT" >/dev/null 2>&1
  sleep 5
done
"#;

const FRONTEND: &str = "#!/bin/sh\nexec httpd -f -p 3000 -h /www\n";

/// Redis stand-in: one command per connection, `PING` answered.
const REDIS_SERVER: &str = "#!/bin/sh\nexec nc -ll -p 6379 -e /usr/local/bin/redis-reply\n";
const REDIS_REPLY: &str = r#"#!/bin/sh
read -r line
case "$line" in
  PING*) printf '+PONG\r\n' ;;
  *) printf -- '-ERR this stand-in only answers PING\r\n' ;;
esac
"#;
const REDIS_CLI: &str = r#"#!/bin/sh
printf 'PING\r\n' | nc -w 2 127.0.0.1 6379 | grep -q PONG && echo PONG
"#;

const MIGRATION_1: &str = "CREATE TABLE migration_runs (version text);\n\
                           CREATE TABLE notes (id serial PRIMARY KEY, body text);\n\
                           INSERT INTO migration_runs VALUES ('001');\n";
const MIGRATION_2: &str = "ALTER TABLE notes ADD COLUMN author text;\n\
                           INSERT INTO migration_runs VALUES ('002');\n";

struct Intric {
    fleet: Fleet,
    project: Project,
    registry: String,
    frontend: u16,
    backend: u16,
}

impl Intric {
    fn start() -> Intric {
        let d = docker();
        let fleet = Fleet::start(1);
        d.expose_to(&fleet, "h1");
        let project = d.project("intric");
        let registry = format!("shipit-test/{project}");
        build_images(d, &registry);
        Intric {
            fleet,
            project,
            registry,
            frontend: free_port(),
            backend: free_port(),
        }
    }

    /// The example's inventory for release `tag`, aimed at this test's host and engine.
    fn inventory(&self, tag: &str, health_timeout: &str) -> PathBuf {
        let inv = example_inventory(&self.fleet, EXAMPLE, "intric.toml", self.project.name());
        write_example_inventory(
            &self.fleet,
            inv,
            &[
                ("IMAGE_TAG", tag.to_owned()),
                ("NEXUS_REGISTRY", self.registry.clone()),
                ("FRONTEND_PORT", self.frontend.to_string()),
                ("BACKEND_PORT", self.backend.to_string()),
                ("HEALTHCHECK_INTERVAL", "1s".to_owned()),
            ],
            format!("http://127.0.0.1:{}/", self.frontend),
            health_timeout,
            &format!("intric-{tag}.toml"),
        )
    }

    /// `shipit deploy test -v --json`: exit code, report; asserts no secret in the output.
    fn deploy(&self, inv: &Path) -> (i32, serde_json::Value, String) {
        let mut cmd = self.fleet.shipit();
        cmd.args(["deploy", "test", "-v", "--json", "-i"]).arg(inv);
        run_with_secrets(&mut cmd, &SECRETS)
    }

    /// The running container of `service`.
    fn container(&self, service: &str) -> String {
        compose_container(self.project.name(), service)
    }

    fn psql(&self, sql: &str) -> String {
        compose_psql(self.project.name(), "db", "intric", sql)
    }

    /// `docker compose ps` on the host, with the live release's file and env.
    fn running_services(&self) -> Vec<String> {
        let out = self.fleet.ssh_ok(
            "h1",
            &format!(
                "cd /opt/intric/current && docker-compose -p {} -f .shipit/compose/docker-compose.yml \
                 --env-file /opt/intric/.env ps --services --filter status=running",
                self.project
            ),
        );
        let mut services: Vec<String> = out.lines().map(str::to_owned).collect();
        services.sort();
        services
    }

    /// Waits until `docker inspect --format '{{json .State.Health}}'` of `service` on the
    /// host says healthy.
    fn wait_healthy(&self, service: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let json = self.fleet.ssh_ok(
                "h1",
                &format!(
                    "docker inspect --format '{{{{json .State.Health}}}}' {}",
                    self.container(service)
                ),
            );
            let health: serde_json::Value = serde_json::from_str(&json).unwrap();
            if health["Status"] == "healthy" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{service} is not healthy: {health:#}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn image_of(&self, service: &str) -> String {
        let image = docker().cli_ok(&[
            "inspect",
            "--format",
            "{{.Config.Image}}",
            &self.container(service),
        ]);
        image.trim().to_owned()
    }

    /// The body of `GET /` on the frontend.
    fn frontend_page(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.frontend)).unwrap();
        write!(s, "GET / HTTP/1.0\r\nHost: intric\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.split_once("\r\n\r\n")
            .map_or("", |(_, body)| body)
            .to_owned()
    }

    /// The decompressed backup at `path` on the host; asserts it is a complete pg_dump.
    fn backup(&self, report: &serde_json::Value) -> String {
        let path = report["backup"]["path"]
            .as_str()
            .expect("a backup was made");
        assert!(
            path.starts_with("/var/backups/intric/intric-") && path.ends_with(".sql.gz"),
            "{path}"
        );
        let dump = self
            .fleet
            .sh_ok("h1", &format!("gzip -t {path} && gzip -dc {path}"));
        assert!(
            dump.contains("-- PostgreSQL database dump complete"),
            "not a complete pg_dump:\n{dump}"
        );
        dump
    }
}

/// The stand-in images: backend, worker and frontend of releases 1–3 under `registry`
/// (release 3's frontend serves no page: its health check fails), and the example's
/// database and Redis images.
fn build_images(d: &Docker, registry: &str) {
    d.cli_ok(&["tag", d.postgres_image(), "pgvector/pgvector:pg15"]);
    d.build_image(
        "redis:7-alpine",
        &format!(
            "FROM {BASE_IMAGE}\nCOPY bin/ /usr/local/bin/\nRUN mkdir /data\n\
             ENV PATH=/usr/local/bin:/bin\nCMD [\"redis-server\"]\n"
        ),
        &[
            ("bin/redis-server", REDIS_SERVER.as_bytes()),
            ("bin/redis-reply", REDIS_REPLY.as_bytes()),
            ("bin/redis-cli", REDIS_CLI.as_bytes()),
        ],
    );
    let backend = format!(
        "FROM {}\nUSER root\nCOPY app/ /app/\nCOPY bin/ /usr/local/bin/\nCOPY lib/ /usr/local/lib/\n\
         RUN mkdir -p /app/data && chown {POSTGRES_UID} /app/data\nUSER postgres\n\
         ENV PATH=/usr/local/bin:$PATH\nENTRYPOINT []\nCMD [\"intric-backend\"]\n",
        d.postgres_image()
    );
    for version in ["1", "2", "3"] {
        let page = format!("backend {version}\n");
        let mut files: Vec<(&str, &[u8])> = vec![
            ("bin/alembic", ALEMBIC.as_bytes()),
            ("bin/python", PYTHON.as_bytes()),
            ("bin/intric-backend", BACKEND.as_bytes()),
            ("lib/intric.sh", BACKEND_LIB.as_bytes()),
            ("app/www/version", page.as_bytes()),
            ("app/migrations/001_notes.sql", MIGRATION_1.as_bytes()),
        ];
        if version != "1" {
            files.push(("app/migrations/002_note_author.sql", MIGRATION_2.as_bytes()));
        }
        d.build_image(
            &format!("{registry}/intric/backend:{version}"),
            &backend,
            &files,
        );

        let page = format!("frontend {version}\n");
        let mut files: Vec<(&str, &[u8])> = vec![("bin/intric-frontend", FRONTEND.as_bytes())];
        if version != "3" {
            files.push(("www/index.html", page.as_bytes()));
        }
        d.build_image(
            &format!("{registry}/intric/frontend:{version}"),
            &format!(
                "FROM {BASE_IMAGE}\nCOPY . /\nRUN mkdir -p /www\n\
                 CMD [\"/bin/intric-frontend\"]\n"
            ),
            &files,
        );
    }
    let worker = format!("{registry}/intric/worker:1");
    d.build_image(
        &worker,
        &format!("FROM {BASE_IMAGE}\nCOPY intric-worker /bin/\nCMD [\"/bin/intric-worker\"]\n"),
        &[("intric-worker", WORKER.as_bytes())],
    );
    for version in ["2", "3"] {
        d.cli_ok(&[
            "tag",
            &worker,
            &format!("{registry}/intric/worker:{version}"),
        ]);
    }
}

#[test]
fn intric_deploys_updates_and_switches_back_as_its_guide_says() {
    let started = Instant::now();
    let intric = Intric::start();
    eprintln!("images and host ready after {:?}", started.elapsed());

    // Release 1, the first deploy: db-init, the first migration, the stack up and healthy.
    let (code, report, stderr) = intric.deploy(&intric.inventory("1", "60s"));
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    eprintln!("release 1 deployed after {:?}", started.elapsed());
    assert_eq!(
        intric.running_services(),
        ["backend", "db", "frontend", "redis", "worker"]
    );
    for service in ["db", "redis", "backend", "frontend"] {
        intric.wait_healthy(service);
    }
    assert_eq!(intric.frontend_page(), "frontend 1\n");
    assert_eq!(intric.psql("SELECT count(*) FROM db_init_runs"), "1\n");
    assert_eq!(
        intric.psql("SELECT version, count(*) FROM migration_runs GROUP BY 1 ORDER BY 1"),
        "001|1\n"
    );
    // Published on the loopback only.
    let ports = docker().cli_ok(&["port", &intric.container("frontend")]);
    assert_eq!(
        ports.trim(),
        format!("3000/tcp -> 127.0.0.1:{}", intric.frontend)
    );
    // The env file: 0600, the secrets in it, and the backup a real (empty-schema) dump.
    assert_eq!(
        intric
            .fleet
            .sh_ok("h1", "stat -c %a /opt/intric/.env")
            .trim(),
        "600"
    );
    let env = intric.fleet.sh_ok("h1", "cat /opt/intric/.env");
    assert!(env.contains("POSTGRES_PASSWORD=pg-Secret-4711\n"));
    assert!(env.contains("IMAGE_TAG=1\n"), "{env}");
    intric.backup(&report);
    intric.psql("INSERT INTO notes (body) VALUES ('written before release 2')");

    // Release 2: no db-init, only the new migration, the data kept, backed up before migrating.
    let (code, report, stderr) = intric.deploy(&intric.inventory("2", "60s"));
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    eprintln!("release 2 deployed after {:?}", started.elapsed());
    assert_eq!(intric.psql("SELECT count(*) FROM db_init_runs"), "1\n");
    assert_eq!(
        intric.psql("SELECT version, count(*) FROM migration_runs GROUP BY 1 ORDER BY 1"),
        "001|1\n002|1\n"
    );
    assert_eq!(
        intric.psql("SELECT body, author IS NULL FROM notes"),
        "written before release 2|t\n"
    );
    let dump = intric.backup(&report);
    assert!(dump.contains("written before release 2"), "{dump}");
    // Taken before the migration: no `author` column yet.
    assert!(!dump.contains("author"), "{dump}");
    for service in ["backend", "worker", "frontend"] {
        assert!(intric.image_of(service).ends_with(":2"), "{service}");
    }
    assert_eq!(intric.frontend_page(), "frontend 2\n");
    intric.wait_healthy("backend");

    // Release 3's frontend fails the health check: back to release 2's file and images.
    let (code, report, stderr) = intric.deploy(&intric.inventory("3", "5s"));
    assert_eq!(code, 3, "{stderr}\n{report:#}");
    eprintln!("release 3 switched back after {:?}", started.elapsed());
    for service in ["backend", "worker", "frontend"] {
        assert!(
            intric.image_of(service).ends_with(":2"),
            "{service} runs {}",
            intric.image_of(service)
        );
    }
    assert_eq!(intric.frontend_page(), "frontend 2\n");
    assert_eq!(
        intric.running_services(),
        ["backend", "db", "frontend", "redis", "worker"]
    );
    let env = intric.fleet.sh_ok("h1", "cat /opt/intric/.env");
    assert!(env.contains("IMAGE_TAG=2\n"), "{env}");
    assert_eq!(
        intric.psql("SELECT body FROM notes"),
        "written before release 2\n"
    );
    assert_eq!(intric.psql("SELECT count(*) FROM db_init_runs"), "1\n");
    eprintln!("done after {:?}", started.elapsed());
}
