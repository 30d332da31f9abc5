//! The Melvin seed (`shared/seeds/004`) deployed from `examples/melvin` with the real binary
//! over ssh onto a host that reaches a real Docker engine: `/health` answers, the admin is
//! bootstrapped once, every backup holds a compressed dump of BOTH Postgres and MongoDB,
//! retention keeps 7 after more backups than that, and Postgres is published on the host's
//! loopback only.
//!
//! The inventory is the example's own with only what must differ here replaced (host, keys,
//! absolute paths, project, free ports, `pull = false`, short healthcheck intervals). Postgres
//! is real ([`Docker::postgres_image`], tagged as the example's `postgres:15`); the API is a
//! stand-in with the example's interface (`/health`, `melvin-migrate`, `melvin-admin`); MongoDB
//! is not packaged in Debian, so `mongo:7.0` is a stand-in too: documents as files under
//! `/data/db`, `mongodump --archive --gzip` a gzipped tar of them, `mongosh` only pings.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::common::{
    compose_container, compose_psql, example_inventory, http_get, run_with_secrets,
    write_example_inventory,
};
use crate::support::docker::{BASE_IMAGE, Docker, Project, docker};
use crate::support::{Fleet, free_port};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/melvin");

const SECRETS: [(&str, &str); 2] = [
    ("POSTGRES_PASSWORD", "pg-Melvin-Secret-91"),
    ("ADMIN_PASSWORD", "Admin-Secret-#1x"),
];

/// The API stand-in's HTTP handler (one request per connection, from `nc -ll -e`).
const HTTP: &str = r#"#!/bin/sh
read -r method target _
while read -r header; do
  case "$header" in "" | "$(printf '\r')") break ;; esac
done
respond() {
  printf 'HTTP/1.0 %s\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n%s' \
    "$1" "${#2}" "$2"
}
export PGHOST="$POSTGRES_HOST" PGUSER="$POSTGRES_USER" PGDATABASE="$POSTGRES_DB"
case "$target" in
  /health)
    if pg_isready -q && printf 'ping\n' | nc -w 2 mongodb 27017 | grep -q ok; then
      respond "200 OK" "{\"status\":\"ok\",\"version\":\"$IMAGE_TAG\"}"
    else
      respond "503 Service Unavailable" '{"status":"degraded"}'
    fi ;;
  *) respond "404 Not Found" '{"detail":"not found"}' ;;
esac
"#;

const API: &str = "#!/bin/sh\nexec nc -ll -p 8000 -e /usr/local/bin/melvin-http\n";

const LIB: &str = r#"export PGHOST="$POSTGRES_HOST" PGUSER="$POSTGRES_USER"
export PGPASSWORD="$POSTGRES_PASSWORD" PGDATABASE="$POSTGRES_DB"
i=0
until pg_isready -q; do
  i=$((i + 1)); [ "$i" -lt 300 ] || { echo "postgres did not come up" >&2; exit 1; }
  sleep 0.1
done
"#;

const MIGRATE: &str = r#"#!/bin/sh
set -eu
. /usr/local/lib/melvin.sh
psql -X -q -v ON_ERROR_STOP=1 \
  -c "CREATE TABLE IF NOT EXISTS users (email text PRIMARY KEY, password_sha256 text, role text)" \
  -c "CREATE TABLE IF NOT EXISTS admin_bootstrap_runs (at timestamptz DEFAULT now())"
"#;

/// `melvin-admin bootstrap EMAIL`, the password on stdin: creates the admin unless it exists.
const ADMIN: &str = r#"#!/bin/sh
set -eu
. /usr/local/lib/melvin.sh
[ "${1:-}" = bootstrap ] && [ -n "${2:-}" ] || { echo "usage: melvin-admin bootstrap EMAIL" >&2; exit 2; }
IFS= read -r password
[ -n "$password" ] || { echo "no password on stdin" >&2; exit 2; }
hash=$(printf '%s' "$password" | sha256sum | cut -d' ' -f1)
created=$(psql -X -tA -v ON_ERROR_STOP=1 -v email="$2" -v hash="$hash" <<'SQL'
INSERT INTO admin_bootstrap_runs DEFAULT VALUES;
INSERT INTO users VALUES (:'email', :'hash', 'admin') ON CONFLICT (email) DO NOTHING RETURNING email;
SQL
)
if [ -n "$created" ]; then echo "admin $2 created"; else echo "admin $2 exists"; fi
"#;

/// MongoDB stand-in: answers `ping` on 27017, one line per connection.
const MONGOD: &str = "#!/bin/sh\nexec nc -ll -p 27017 -e /usr/local/bin/mongo-reply\n";
const MONGO_REPLY: &str = "#!/bin/sh\nread -r line\necho ok\n";
const MONGOSH: &str = r#"#!/bin/sh
printf 'ping\n' | nc -w 2 127.0.0.1 27017 | grep -q ok && echo '{ ok: 1 }'
"#;
/// `mongoimport --db DB --collection C`: one document per stdin line, each a file.
const MONGOIMPORT: &str = r#"#!/bin/sh
set -eu
[ "$1" = --db ] && [ "$3" = --collection ] || { echo "usage: mongoimport --db DB --collection C" >&2; exit 2; }
dir=/data/db/$2/$4
mkdir -p "$dir"
n=$(ls "$dir" | wc -l)
while IFS= read -r doc; do n=$((n + 1)); printf '%s\n' "$doc" > "$dir/$n.json"; done
"#;
const MONGODUMP: &str = r#"#!/bin/sh
set -eu
[ "$*" = "--archive --gzip" ] || { echo "this stand-in knows only: mongodump --archive --gzip" >&2; exit 2; }
cd /data/db && tar -cf - . | gzip
"#;

const MONGORESTORE: &str = r#"#!/bin/sh
set -eu
[ "$*" = "--archive --gzip --drop" ] || { echo "this stand-in knows only: mongorestore --archive --gzip --drop" >&2; exit 2; }
rm -rf /data/db/* && gzip -dc | tar -C /data/db -xf -
"#;

struct Melvin {
    fleet: Fleet,
    project: Project,
    api: u16,
    postgres: u16,
}

impl Melvin {
    fn start() -> Melvin {
        let d = docker();
        let fleet = Fleet::start(1);
        d.expose_to(&fleet, "h1");
        build_images(d);
        Melvin {
            fleet,
            project: d.project("melvin"),
            api: free_port(),
            postgres: free_port(),
        }
    }

    fn inventory(&self, tag: &str) -> PathBuf {
        let inv = example_inventory(&self.fleet, EXAMPLE, "melvin.toml", self.project.name());
        write_example_inventory(
            &self.fleet,
            inv,
            &[
                ("IMAGE_TAG", tag.to_owned()),
                ("API_PORT", self.api.to_string()),
                ("POSTGRES_HOST_PORT", self.postgres.to_string()),
                ("HEALTHCHECK_INTERVAL", "1s".to_owned()),
            ],
            format!("http://127.0.0.1:{}/health", self.api),
            "60s",
            &format!("melvin-{tag}.toml"),
        )
    }

    /// Runs shipit `args` with the secrets exported; asserts none shows in its output.
    fn shipit(&self, args: &[&str], inv: &Path) -> (i32, serde_json::Value, String) {
        let mut cmd = self.fleet.shipit();
        cmd.args(args).args(["--json", "-i"]).arg(inv);
        run_with_secrets(&mut cmd, &SECRETS)
    }

    fn container(&self, service: &str) -> String {
        compose_container(self.project.name(), service)
    }

    fn psql(&self, sql: &str) -> String {
        compose_psql(self.project.name(), "postgres", "melvin", sql)
    }

    fn get(&self, target: &str) -> (u16, String) {
        http_get(self.api, target)
    }
}

/// The example's images: `postgres:15` (real), `mongo:7.0` (stand-in), `melvin-api:1` and
/// `:2` (stand-ins, built on the real Postgres image for its `psql`).
fn build_images(d: &Docker) {
    d.cli_ok(&["tag", d.postgres_image(), "postgres:15"]);
    d.build_image(
        "mongo:7.0",
        &format!(
            "FROM {BASE_IMAGE}\nCOPY bin/ /usr/local/bin/\nRUN mkdir -p /data/db\n\
             ENV PATH=/usr/local/bin:/bin\nCMD [\"mongod\"]\n"
        ),
        &[
            ("bin/mongod", MONGOD.as_bytes()),
            ("bin/mongo-reply", MONGO_REPLY.as_bytes()),
            ("bin/mongosh", MONGOSH.as_bytes()),
            ("bin/mongoimport", MONGOIMPORT.as_bytes()),
            ("bin/mongodump", MONGODUMP.as_bytes()),
            ("bin/mongorestore", MONGORESTORE.as_bytes()),
        ],
    );
    let api = format!(
        "FROM {}\nUSER root\nCOPY bin/ /usr/local/bin/\nCOPY lib/ /usr/local/lib/\nUSER postgres\n\
         ENV PATH=/usr/local/bin:$PATH\nENTRYPOINT []\nCMD [\"melvin-api\"]\n",
        d.postgres_image()
    );
    d.build_image(
        "melvin-api:1",
        &api,
        &[
            ("bin/melvin-api", API.as_bytes()),
            ("bin/melvin-http", HTTP.as_bytes()),
            ("bin/melvin-migrate", MIGRATE.as_bytes()),
            ("bin/melvin-admin", ADMIN.as_bytes()),
            ("lib/melvin.sh", LIB.as_bytes()),
        ],
    );
    d.cli_ok(&["tag", "melvin-api:1", "melvin-api:2"]);
}

fn report_path(report: &serde_json::Value) -> String {
    report["backup"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("no backup in {report:#}"))
        .to_owned()
}

#[test]
fn melvin_serves_health_bootstraps_its_admin_once_and_backs_up_both_databases() {
    let started = Instant::now();
    let melvin = Melvin::start();
    eprintln!("images and host ready after {:?}", started.elapsed());

    let (code, first_backup, stderr) =
        melvin.shipit(&["deploy", "test", "-v"], &melvin.inventory("1"));
    assert_eq!(code, 0, "{stderr}\n{first_backup:#}");
    eprintln!("release 1 deployed after {:?}", started.elapsed());
    let (status, body) = melvin.get("/health");
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"status":"ok","version":"1"}"#)
    );
    assert_eq!(
        melvin.psql("SELECT email, role FROM users"),
        "admin@example.com|admin\n"
    );
    assert_eq!(
        melvin
            .fleet
            .sh_ok("h1", "stat -c %a /opt/melvin/.env")
            .trim(),
        "600"
    );

    // Data in both databases, then release 2: the admin is not bootstrapped again.
    melvin.psql("CREATE TABLE conversations (id int, title text); INSERT INTO conversations VALUES (1, 'loop analysis');");
    let mut import = docker().cli();
    import.args([
        "exec",
        "-i",
        &melvin.container("mongodb"),
        "mongoimport",
        "--db",
        "melvin",
        "--collection",
        "transcripts",
    ]);
    let out = import
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"{\"conversation\": 1, \"text\": \"draw a card\"}\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (code, report, stderr) = melvin.shipit(&["deploy", "test", "-v"], &melvin.inventory("2"));
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    eprintln!("release 2 deployed after {:?}", started.elapsed());
    assert_eq!(melvin.get("/health").1, r#"{"status":"ok","version":"2"}"#);
    assert_eq!(
        melvin.psql("SELECT count(*) FROM admin_bootstrap_runs"),
        "1\n"
    );
    assert_eq!(melvin.psql("SELECT count(*) FROM users"), "1\n");

    // More backups than are kept (2 by the deploys, then 6 on demand): the oldest goes.
    let first = report_path(&first_backup);
    let inv = melvin.inventory("2");
    let mut made = vec![first.clone(), report_path(&report)];
    for _ in 0..6 {
        let (code, report, stderr) = melvin.shipit(&["backup", "test"], &inv);
        assert_eq!(code, 0, "{stderr}\n{report:#}");
        made.push(report_path(&report));
    }
    eprintln!("6 more backups made after {:?}", started.elapsed());
    let mut distinct = made.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 8, "{made:?}");
    let files = melvin
        .fleet
        .sh_ok("h1", "ls /var/backups/melvin | grep -v '[.]meta$'");
    let files: Vec<&str> = files.lines().collect();
    assert_eq!(files.len(), 7, "{files:?}");
    for kept in &made[1..] {
        let name = kept.rsplit('/').next().unwrap();
        assert!(files.contains(&name), "{kept} not kept: {files:?}");
    }
    let newest = made.last().unwrap();
    let listing = melvin
        .fleet
        .sh_ok("h1", &format!("tar -tf {newest} | sort"));
    assert_eq!(listing, "mongodb.archive.gz\npostgres.sql.gz\n");
    let sql = melvin.fleet.sh_ok(
        "h1",
        &format!("tar -xOf {newest} postgres.sql.gz | gzip -dc"),
    );
    assert!(
        sql.contains("-- PostgreSQL database dump complete"),
        "{sql}"
    );
    assert!(
        sql.contains("loop analysis") && sql.contains("admin@example.com"),
        "{sql}"
    );
    let mongo = melvin.fleet.sh_ok(
        "h1",
        &format!("tar -xOf {newest} mongodb.archive.gz | gzip -dc | tar -xOf - ./melvin/transcripts/1.json"),
    );
    assert_eq!(mongo, "{\"conversation\": 1, \"text\": \"draw a card\"}\n");

    // Written after the newest backup: a row deleted, a table added, a document added; the
    // README's restore command puts both databases back as that backup has them.
    melvin.psql("DELETE FROM conversations; CREATE TABLE written_later (x int);");
    docker().cli_ok(&[
        "exec",
        &melvin.container("mongodb"),
        "sh",
        "-c",
        "echo '{}' > /data/db/melvin/transcripts/2.json",
    ]);
    let name = newest.rsplit('/').next().unwrap();
    let (code, restored, stderr) = melvin.shipit(&["restore", "test", name, "--yes"], &inv);
    assert_eq!(code, 0, "{stderr}\n{restored:#}");
    assert_eq!(restored["action"], "restore");
    assert_eq!(restored["restored"]["backup"], name);
    assert_eq!(
        melvin.psql("SELECT title FROM conversations"),
        "loop analysis\n"
    );
    assert_eq!(
        melvin.psql("SELECT to_regclass('public.written_later') IS NULL"),
        "t\n"
    );
    assert_eq!(
        docker().cli_ok(&[
            "exec",
            &melvin.container("mongodb"),
            "ls",
            "/data/db/melvin/transcripts"
        ]),
        "1.json\n"
    );
    assert_eq!(melvin.get("/health").1, r#"{"status":"ok","version":"2"}"#);

    // Postgres: published on the host's loopback only, and answering there with the password.
    let ports = docker().cli_ok(&["port", &melvin.container("postgres")]);
    assert_eq!(
        ports.trim(),
        format!("5432/tcp -> 127.0.0.1:{}", melvin.postgres)
    );
    let psql = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("bin/psql"))
        .find(|p| p.exists())
        .unwrap();
    let answer = melvin.fleet.ssh_ok(
        "h1",
        &format!(
            "PGPASSWORD=pg-Melvin-Secret-91 {} -X -h 127.0.0.1 -p {} -U melvin -d melvin -tAc 'SELECT title FROM conversations'",
            psql.display(),
            melvin.postgres
        ),
    );
    assert_eq!(answer, "loop analysis\n");
    eprintln!("done after {:?}", started.elapsed());
}
