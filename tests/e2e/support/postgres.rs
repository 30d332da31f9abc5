//! A real PostgreSQL server for tests: its own cluster in a temp dir (initdb), listening on
//! 127.0.0.1 at a free port with password auth (scram), so the test hosts, which share this
//! machine's loopback, reach it with a `DATABASE_URL` that carries a real secret.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{assert_success, free_port};

pub const USER: &str = "app";
/// The password tests look for in argv and output: it must never appear there.
pub const PASSWORD: &str = "pg-S3cret-9d1f";

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (apt-get install postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

fn as_postgres(bin: &Path, tool: &str) -> Command {
    // The server refuses to run as root.
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(bin.join(tool));
    cmd
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("shipit-pg-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(chown.success());
        let out = as_postgres(&bin, "initdb")
            .args(["-U", USER, "--auth=scram-sha-256", "--pwfile"])
            .arg(&pwfile)
            .arg("-D")
            .arg(&data)
            .output()
            .unwrap();
        assert_success(&out, "initdb");
        let mut last = None;
        for _ in 0..5 {
            let port = free_port();
            let out = as_postgres(&bin, "pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-w", "-l"])
                .arg(dir.path().join("log"))
                .arg("-o")
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1",
                    dir.path().display()
                ))
                .arg("start")
                .output()
                .unwrap();
            if out.status.success() {
                return Postgres { dir, bin, port };
            }
            last = Some(out);
        }
        panic!(
            "postgres did not start: {:?}\n{}",
            last,
            std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
        );
    }

    /// `postgres://app:<password>@127.0.0.1:<port>/<db>`
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL with psql on this machine (password from the environment, not argv).
    pub fn psql(&self, db: &str, sql: &str) -> Output {
        Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                USER,
                "-d",
                db,
                "-p",
            ])
            .arg(self.port.to_string())
            .args(["-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap()
    }

    pub fn psql_ok(&self, db: &str, sql: &str) -> String {
        let out = self.psql(db, sql);
        assert_success(&out, sql);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn create_db(&self, name: &str) {
        self.psql_ok("postgres", &format!("CREATE DATABASE {name}"));
    }

    /// `pg_restore` of `dump` into a fresh database `into`.
    pub fn restore(&self, dump: &Path, into: &str) -> Output {
        self.create_db(into);
        Command::new(self.bin.join("pg_restore"))
            .args(["-h", "127.0.0.1", "-U", USER, "-d", into, "-p"])
            .arg(self.port.to_string())
            .arg(dump)
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap()
    }

    pub fn pg_restore_list(&self, dump: &Path) -> Output {
        Command::new(self.bin.join("pg_restore"))
            .arg("--list")
            .arg(dump)
            .output()
            .unwrap()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
