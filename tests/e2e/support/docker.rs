//! A real Docker engine for tests: one `dockerd` per test process, shared by all its tests,
//! which the tier-1 hosts of [`super::Fleet`] reach over ssh like a server's own engine.
//!
//! [`docker()`] starts the engine on first use (~0.2–0.3 s) and returns the same one
//! afterwards. It has its own `--data-root`, `--exec-root`, config and unix socket, all in one
//! temporary directory ([`Docker::dir`]), so it never meets the machine's own Docker (if any),
//! nor the engine of another test process. [`Docker::cli`] is the `docker` CLI aimed at it;
//! [`Docker::expose_to`] makes `docker` and `docker-compose` on a fleet host reach it through
//! the usual `/var/run/docker.sock`, as on a real server. Over ssh, `docker` is whatever the
//! host's PATH finds first: Debian's CLI in `/usr/bin`, unless the machine has another one in
//! `/usr/local/bin` (this project's dev machines have a Docker 28 CLI there); both talk to the
//! engine (Debian's 20.10). Neither has the `docker compose` (v2) plugin: only `docker-compose`.
//!
//! Images: [`Docker::base_image`] is `FROM scratch` plus Debian's static busybox (every applet
//! installed as a symlink in `/bin`), built once per engine; [`Docker::build_image`] builds
//! small app images on top of it (e.g. a web server: `busybox httpd -f -p 8080 -h /www`).
//! No registry is reachable: `image:` in a compose file must name a locally built image.
//!
//! Sharing: every test of the process, and every host of every fleet exposed to it, talks to
//! the same engine, so images are shared, and so are container, network and Compose project
//! names. Compose project names must therefore be unique per test: use
//! [`Docker::unique_project`] (or the [`Project`] guard of [`Docker::project`], which also
//! removes what a failed test left behind) for `docker-compose -p`, and a unique tag per test
//! for images whose content differs between tests. Two hosts exposed to one engine are one
//! Docker host: deploying the same project to both makes the second `up` take over the first
//! one's containers. A test that needs that (one stack on two servers) gives each host an
//! engine of its own, [`Docker::start`] (dropped at the end of the test).
//!
//! Networking: the engine runs in this machine's network namespace, so a port published on
//! `127.0.0.1:PORT` is reachable from the test and from every host (they share the loopback);
//! pick it with [`super::free_port`]. It does not touch the machine's networking otherwise: no
//! default bridge (`docker0`; containers run by plain `docker run` get only a loopback), no
//! iptables rules, no `ip_forward` or masquerading. Compose's per-project networks are real
//! bridges (`br-<id>`) with a /24 from 10.216.0.0/16 that dockerd picks so as not to overlap
//! an existing route (another test process's engine included); they exist until the project
//! is brought down.
//!
//! Containers run with `docker-init` as their PID 1 (`dockerd --init`): busybox's daemons do
//! not handle SIGTERM, and as PID 1 they would ignore it, so every `docker-compose down` would
//! wait the full 10 s stop timeout before killing them.
//!
//! Process layout and lifetime. The test process starts a watchdog (`sh -c` [`WATCHDOG`]) in
//! its own process group (a Ctrl-C at the terminal must not stop the engine mid-test); the
//! watchdog starts `unshare --mount --pid --fork --kill-child --mount-proc sh -c` [`INIT`],
//! which becomes PID 1 of a new PID namespace and runs dockerd. Everything the engine starts
//! (containerd, its shims, every container's processes, `docker-proxy`) lives in that PID
//! namespace and dies with its PID 1, and every mount it makes (image layers, container
//! roots) lives in that mount namespace and vanishes with it. The watchdog's stdin is a pipe
//! whose write end only the test process holds: when it closes, because the test process
//! exited, or died without unwinding (a panic outside a test, Ctrl-C, SIGKILL, a CI timeout),
//! the watchdog stops dockerd (SIGTERM to PID 1, which passes it on; SIGKILL after a grace
//! period), then removes what outlives the namespaces: the project bridges, the engine's
//! cgroups, and the directory. A `static` is never dropped, so that is also the normal way the
//! shared engine stops; dropping an engine of [`Docker::start`] closes the pipe and waits for
//! the same (~1.5 s).
//!
//! Layout of the engine dir:
//!
//! ```text
//! docker.sock        the engine's API socket (DOCKER_HOST=unix://<this>)
//! dockerd.log        dockerd's (and containerd's) output
//! daemon.json        "{}": keeps the machine's /etc/docker/daemon.json out
//! data/ exec/        --data-root, --exec-root
//! etc-upper/ ...     what dockerd wrote to /etc (its key.json), kept off the machine
//! home/              HOME of `Docker::cli` (~/.docker)
//! ```
//!
//! Needs: root, Debian's `docker.io` (dockerd, containerd, runc, docker-init), `docker-compose`
//! (v1: the Compose v2 plugin is not packaged by Debian) and `busybox-static`; util-linux,
//! iproute2, overlayfs (else the `vfs` storage driver is used: slower, same behaviour).
#![allow(dead_code)]

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::{CLEAN_PATH, FLEET_DIR_IN_HOST, Fleet, assert_success, children_of, clean_command};

/// Tag of the base image: `FROM scratch` + static busybox.
pub const BASE_IMAGE: &str = "shipit-test/busybox:1";
/// Debian `busybox-static`'s binary, the base image's only file.
const BUSYBOX: &str = "/bin/busybox";
/// Storage drivers, in order of preference: `overlay2` fails where the engine dir is itself on
/// an overlayfs (e.g. inside a container); `vfs` (full copies) works everywhere.
const STORAGE_DRIVERS: &[&str] = &["overlay2", "vfs"];
/// Where Compose networks get their subnets; 10.215.x is [`super::systemd`]'s.
const ADDRESS_POOL: &str = "base=10.216.0.0/16,size=24";
/// How long dockerd may take to answer on its socket (0.2–0.3 s when the machine is idle).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the watchdog lets dockerd stop its containers before killing everything.
const STOP_GRACE_SECS: u32 = 15;

/// PID 1 of the engine's mount and PID namespaces: `sh -c INIT init DIR DOCKERD-ARGS...`.
const INIT: &str = r#"set -eu
dir=$1
shift
# Nothing mounted below may propagate to the real machine; all of it (image layers, container
# roots) goes away with this mount namespace.
mount --make-rprivate /
# Whatever its flags, dockerd writes /etc/docker/key.json and /run/docker/plugins, and
# containerd 1.6 puts its shims' sockets in /run/containerd/s: a copy-on-write /etc and a
# private /run keep them off the machine and apart from any other engine.
mkdir -p "$dir/etc-upper" "$dir/etc-work"
mount -t overlay shipit-e2e-docker-etc \
  -o "lowerdir=/etc,upperdir=$dir/etc-upper,workdir=$dir/etc-work" /etc
mount -t tmpfs -o mode=755 shipit-e2e-docker-run /run
dockerd "$@" </dev/null &
dockerd=$!
# The watchdog stops the engine with SIGTERM to this PID 1; dockerd then stops its containers.
trap 'kill -TERM "$dockerd" 2>/dev/null || :' TERM
# `wait` returns early when the trap runs: wait until dockerd is really gone. When this script
# exits, the kernel kills whatever is left in the namespace (containerd, shims, containers).
status=0
while kill -0 "$dockerd" 2>/dev/null; do
  wait "$dockerd" || status=$?
done
exit "$status"
"#;

/// The watchdog: `sh -c WATCHDOG watchdog DIR CGROUP INIT DOCKERD-ARGS...`, stdin = the
/// lifeline. Runs on this machine (not in the namespaces) so it can clean up after them.
const WATCHDOG: &str = r#"set -u
dir=$1 cgroup=$2 init=$3
shift 3
unshare --mount --pid --fork --kill-child --mount-proc sh -c "$init" shipit-e2e-docker-init \
  "$dir" "$@" </dev/null >>"$dir/dockerd.log" 2>&1 &
engine=$!
# Stdin is a pipe only the test process writes to (never does): EOF means the test process
# dropped this engine or is gone, with or without unwinding.
while read -r _; do :; done
engine_init() { cat "/proc/$engine/task/$engine/children" 2>/dev/null; }
pid1=$(engine_init)
[ -z "$pid1" ] || kill -TERM $pid1 2>/dev/null
i=0
while [ -n "$(engine_init)" ] && [ "$i" -lt $((@STOP_GRACE_SECS@ * 10)) ]; do
  sleep 0.1
  i=$((i + 1))
done
pid1=$(engine_init)
[ -z "$pid1" ] || kill -KILL $pid1 2>/dev/null
wait "$engine"
# What outlives the namespaces. Bridges of networks not brought down (a failed test): each is
# named "br-" + the first 12 hex digits of its network id, which libnetwork's store lists;
# the name is unique to this engine, so nothing else can be deleted.
db="$dir/data/network/files/local-kv.db"
if [ -f "$db" ]; then
  for id in $(grep -aoE 'bridge/[0-9a-f]{64}' "$db" | cut -d/ -f2 | sort -u); do
    bridge=br-$(printf '%.12s' "$id")
    ! ip link show "$bridge" >/dev/null 2>&1 || ip link delete "$bridge" || :
  done
fi
# Container cgroups (--cgroup-parent): runc removes them only on a clean container stop.
for c in /sys/fs/cgroup/*/"$cgroup" /sys/fs/cgroup/"$cgroup"; do
  [ ! -d "$c" ] || find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || :
done
rm -rf "$dir"
"#;

/// The engine of this test process; started by the first call, stopped when the process exits.
/// Panics (in every test that calls it) if dockerd cannot be started.
pub fn docker() -> &'static Docker {
    static ENGINE: OnceLock<Docker> = OnceLock::new();
    ENGINE.get_or_init(Docker::start)
}

/// A running dockerd; see the module doc. Dropping one stops it (waiting until the watchdog
/// has cleaned up); the shared one of [`docker()`] is never dropped and stops with the process.
pub struct Docker {
    dir: PathBuf,
    socket: PathBuf,
    storage_driver: &'static str,
    /// The watchdog. The shared engine's is never waited for: it outlives the test process on
    /// purpose, to clean up after it.
    watchdog: Child,
    /// Keeps the watchdog's pipe open; never written. Closing it stops the engine.
    lifeline: Option<ChildStdin>,
    base_image: OnceLock<()>,
    postgres_image: OnceLock<String>,
    startup: Duration,
}

impl Docker {
    /// A new engine of the test's own, for a test the shared one does not suit: e.g. one that
    /// deploys the same Compose project to two hosts (one engine per host, as in production),
    /// or asserts on everything an engine holds. Costs ~0.3 s, plus ~1 s if it builds the base
    /// image. Prefer [`docker()`].
    pub fn start() -> Docker {
        let started = Instant::now();
        let mut failures = Vec::new();
        for driver in STORAGE_DRIVERS {
            match Docker::try_start(driver) {
                Ok(mut docker) => {
                    docker.startup = started.elapsed();
                    return docker;
                }
                Err(why) => failures.push(format!("--storage-driver {driver}: {why}")),
            }
        }
        panic!(
            "dockerd did not start (needs root and Debian's docker.io):\n{}",
            failures.join("\n")
        );
    }

    fn try_start(driver: &'static str) -> Result<Docker, String> {
        let started = Instant::now();
        // Not a TempDir: the watchdog deletes it, after the engine is gone (a `static` is
        // never dropped, and the test process may be gone by then).
        let dir = tempfile::Builder::new()
            .prefix("shipit-e2e-docker-")
            .tempdir()
            .expect("create the docker temp dir")
            .keep();
        for d in ["home", "data", "exec"] {
            fs::create_dir(dir.join(d)).expect("create a docker dir");
        }
        fs::write(dir.join("daemon.json"), "{}\n").expect("write daemon.json");
        let socket = dir.join("docker.sock");
        // Unique to this engine, so the watchdog removes only its own cgroups.
        let cgroup = dir
            .file_name()
            .expect("temp dir name")
            .to_string_lossy()
            .into_owned();
        let mut dockerd_args: Vec<String> = vec![
            "--config-file".into(),
            path_arg(&dir.join("daemon.json")),
            "--data-root".into(),
            path_arg(&dir.join("data")),
            "--exec-root".into(),
            path_arg(&dir.join("exec")),
            "--pidfile".into(),
            path_arg(&dir.join("dockerd.pid")),
            "--host".into(),
            format!("unix://{}", path_arg(&socket)),
            "--storage-driver".into(),
            driver.into(),
            "--cgroup-parent".into(),
            cgroup.clone(),
            "--default-address-pool".into(),
            ADDRESS_POOL.into(),
            // Leave the machine's networking alone (see the module doc).
            "--bridge=none".into(),
            "--iptables=false".into(),
            "--ip6tables=false".into(),
            "--ip-forward=false".into(),
            "--ip-masq=false".into(),
            "--init".into(),
            // Containers ignoring SIGTERM must not hold up the end of the test process.
            "--shutdown-timeout".into(),
            "2".into(),
        ];
        // dockerd's own messages are the point of dockerd.log; grpc's chatter is not.
        dockerd_args.extend(["--log-level".into(), "warn".into()]);
        let watchdog_script = WATCHDOG.replace("@STOP_GRACE_SECS@", &STOP_GRACE_SECS.to_string());
        let log = dir.join("dockerd.log");
        let mut watchdog = Command::new("sh")
            .args(["-c", &watchdog_script, "shipit-e2e-docker-watchdog"])
            .arg(&dir)
            .arg(&cgroup)
            .arg(INIT)
            .args(&dockerd_args)
            .env_clear()
            .env("PATH", CLEAN_PATH)
            .env("LANG", "C.UTF-8")
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run sh: {e}"))?;
        let lifeline = watchdog.stdin.take().expect("piped stdin");
        let mut docker = Docker {
            dir,
            socket,
            storage_driver: driver,
            watchdog,
            lifeline: Some(lifeline),
            base_image: OnceLock::new(),
            postgres_image: OnceLock::new(),
            startup: Duration::ZERO,
        };
        let deadline = started + READY_TIMEOUT;
        let mut engine_seen = false;
        loop {
            if ping(&docker.socket) {
                return Ok(docker);
            }
            // The watchdog's only child is `unshare`; once it is a zombie (the watchdog reaps
            // it only at the end), dockerd has exited. Before the watchdog forks, it has none.
            let engine = children_of(docker.watchdog.id());
            engine_seen |= !engine.is_empty();
            let engine_gone = (engine_seen && !engine.into_iter().any(super::is_alive))
                || !matches!(docker.watchdog.try_wait(), Ok(None));
            if engine_gone || Instant::now() > deadline {
                let why = if engine_gone {
                    "it exited".to_string()
                } else {
                    format!(
                        "{} did not answer within {READY_TIMEOUT:?}",
                        docker.socket.display()
                    )
                };
                let log = fs::read_to_string(&log).unwrap_or_default();
                // Dropping `docker` stops what is left of this attempt and deletes its dir,
                // before the next attempt.
                drop(docker);
                return Err(format!("{why}\n--- dockerd.log ---\n{log}--- end ---"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The engine's API socket: `DOCKER_HOST=unix://<this>`.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The engine's temporary dir (see the module doc for its layout).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// dockerd's log, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// "overlay2", or "vfs" where overlay2 does not work.
    pub fn storage_driver(&self) -> &'static str {
        self.storage_driver
    }

    /// How long dockerd took to answer on its socket (all attempts).
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The Debian `docker` CLI (not whatever else is on the developer's PATH) with a clean
    /// environment, `DOCKER_HOST` set to this engine and `DOCKER_BUILDKIT=0`: the classic
    /// builder, built into dockerd, since Debian's CLI has no buildx plugin. Add the arguments.
    pub fn cli(&self) -> Command {
        cli(&self.socket, &self.dir.join("home"))
    }

    /// `docker ARGS`, asserting success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli().args(args).output().expect("run docker");
        assert_success(&out, &format!("docker {}", args.join(" ")));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The base image's tag ([`BASE_IMAGE`]), built on first use (once per engine; ~1 s).
    pub fn base_image(&self) -> &'static str {
        self.base_image.get_or_init(|| {
            let busybox = fs::read(BUSYBOX)
                .unwrap_or_else(|e| panic!("read {BUSYBOX}: {e} (apt-get install busybox-static)"));
            // FROM scratch has no shell, hence the exec form: busybox installs its own applets.
            let dockerfile = "FROM scratch\n\
                              COPY busybox /bin/busybox\n\
                              RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";
            self.build(BASE_IMAGE, dockerfile, &[("busybox", &busybox)]);
        });
        BASE_IMAGE
    }

    /// A real PostgreSQL image, built on first use (once per engine; a few seconds) from this
    /// machine's Debian `postgresql` (no registry is reachable): the base image plus the
    /// server and client binaries of the newest `/usr/lib/postgresql/<version>`, the shared
    /// libraries `ldd` finds for them, the server's modules (not the JIT) and
    /// `/usr/share/postgresql/<version>`. It behaves like the official image for what tests
    /// use: a `postgres` user (uid/gid [`POSTGRES_UID`]), `PGDATA=/var/lib/postgresql/data`
    /// (a volume), and an entrypoint that, when the data dir is empty, runs `initdb` (locale
    /// C, UTF8) with superuser `POSTGRES_USER` (default `postgres`) and password
    /// `POSTGRES_PASSWORD` (required), creates database `POSTGRES_DB` (default: the user), and
    /// then runs `postgres` listening on every address of the container: local connections
    /// trust, TCP ones need the password (scram-sha-256). `psql`, `pg_dump`, `pg_isready`,
    /// ... are on its PATH (`docker exec`). Returns the tag, `shipit-test/postgres:<version>`.
    pub fn postgres_image(&self) -> &str {
        self.postgres_image.get_or_init(|| {
            let (version, files) = postgres_files();
            let tag = format!("shipit-test/postgres:{version}");
            let dockerfile = format!(
                "FROM {BASE_IMAGE}\n\
                 COPY rootfs/ /\n\
                 RUN mkdir -p /var/lib/postgresql/data /var/run/postgresql /tmp \\\n\
                 && chown -R {POSTGRES_UID}:{POSTGRES_UID} /var/lib/postgresql /var/run/postgresql \\\n\
                 && chmod 700 /var/lib/postgresql/data && chmod 1777 /tmp\n\
                 ENV PATH=/usr/lib/postgresql/{version}/bin:/bin TZ=UTC LANG=C \\\n\
                 PGDATA=/var/lib/postgresql/data\n\
                 USER postgres\n\
                 VOLUME /var/lib/postgresql/data\n\
                 EXPOSE 5432\n\
                 ENTRYPOINT [\"/usr/local/bin/docker-entrypoint.sh\"]\n\
                 CMD [\"postgres\"]\n"
            );
            let borrowed: Vec<(&str, &[u8])> = files
                .iter()
                .map(|(name, content)| (name.as_str(), content.as_slice()))
                .collect();
            self.build_image(&tag, &dockerfile, &borrowed);
            tag
        })
    }

    /// Builds `dockerfile` with `files` (path relative to the build context, content) as the
    /// context and tags the image `tag`. Scripts (`#!`) and ELF binaries are executable
    /// (mode 755), other files 644. The base image is built first, so `FROM shipit-test/busybox:1` works.
    /// Builds run with no network: none is reachable anyway. Panics with the build output.
    pub fn build_image(&self, tag: &str, dockerfile: &str, files: &[(&str, &[u8])]) {
        self.base_image();
        self.build(tag, dockerfile, files);
    }

    fn build(&self, tag: &str, dockerfile: &str, files: &[(&str, &[u8])]) {
        let context = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&self.dir)
            .expect("create a build context dir");
        for (name, content) in files {
            assert!(
                Path::new(name).is_relative() && !name.split('/').any(|c| c == ".."),
                "build context file {name:?} must be a relative path inside the context"
            );
            let path = context.path().join(name);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).expect("create a build context subdir");
            }
            fs::write(&path, content).expect("write a build context file");
            let executable = content.starts_with(b"#!") || content.starts_with(b"\x7fELF");
            let mode = if executable { 0o755 } else { 0o644 };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .expect("chmod a build context file");
        }
        fs::write(context.path().join("Dockerfile"), dockerfile).expect("write Dockerfile");
        let out = self
            .cli()
            .args(["build", "--network", "none", "--force-rm", "-t", tag])
            .arg(context.path())
            .output()
            .expect("run docker build");
        assert_success(&out, &format!("docker build -t {tag}"));
    }

    /// Makes this engine the one `docker` and `docker-compose` use on `host` of `fleet`, over
    /// ssh or [`Fleet::sh`], through the default `/var/run/docker.sock` (no `DOCKER_HOST`
    /// needed, which non-interactive ssh commands would not read from a profile anyway).
    ///
    /// How: the host cannot see the engine dir (it is under the machine's /tmp, which hosts
    /// replace with their own), but it sees the fleet dir at [`FLEET_DIR_IN_HOST`], read-only.
    /// So the socket is hard-linked into the fleet dir (a link to a socket is as connectable
    /// as the socket, also on a read-only mount; both dirs are temp dirs, on one filesystem;
    /// named after the engine, as hosts of one fleet may use different engines) and the host's
    /// own `/run` (a tmpfs, gone with the host) gets `docker.sock` -> that link. Hosts not
    /// exposed have no engine. A bind mount from outside cannot work: `mount --bind` needs
    /// both paths in one mount namespace, and no path of the host leads to the engine dir.
    pub fn expose_to(&self, fleet: &Fleet, host: &str) {
        let name = format!(
            "{}.sock",
            self.dir
                .file_name()
                .expect("engine dir name")
                .to_string_lossy()
        );
        let link = fleet.dir().join(&name);
        match fs::hard_link(&self.socket, &link) {
            Ok(()) => {}
            // Another host of this fleet was exposed to this engine already.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let (a, b) = (
                    fs::metadata(&self.socket).expect("stat the docker socket"),
                    fs::metadata(&link).expect("stat the fleet's docker socket"),
                );
                assert!(
                    a.dev() == b.dev() && a.ino() == b.ino(),
                    "{} exists and is not this engine's socket",
                    link.display()
                );
            }
            Err(e) => panic!(
                "link {} to {}: {e} (the engine dir and the fleet dir must be on one \
                 filesystem: both are made in TMPDIR)",
                self.socket.display(),
                link.display()
            ),
        }
        fleet.sh_ok(
            host,
            &format!("ln -sfn {FLEET_DIR_IN_HOST}/{name} /run/docker.sock"),
        );
    }

    /// A Compose project name (`docker-compose -p NAME`) no other test of this process gets:
    /// `base` (lowercased, only `[a-z0-9_-]` kept, as Compose v1 would) plus a counter.
    /// Compose names containers and networks after the project, on an engine every test shares.
    pub fn unique_project(&self, base: &str) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let mut name: String = base
            .to_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        // Compose v2 wants a letter or digit first.
        if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            name.insert(0, 'p');
        }
        format!("{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// A [`Docker::unique_project`] name that, when dropped (also during a panic's unwind),
    /// removes whatever of the project is left on the engine: a test that fails before its
    /// `docker-compose down` must not leave containers, ports or bridges behind.
    pub fn project(&self, base: &str) -> Project {
        Project {
            socket: self.socket.clone(),
            home: self.dir.join("home"),
            name: self.unique_project(base),
        }
    }

    /// Removes the containers (with their anonymous volumes), networks and volumes Compose
    /// labelled with project `name`, like `docker-compose -p NAME down -v`, but needs neither
    /// the compose file nor a host. Never panics.
    pub fn remove_project(&self, name: &str) {
        remove_project(&self.socket, &self.dir.join("home"), name);
    }
}

/// uid and gid of the `postgres` user of [`Docker::postgres_image`].
pub const POSTGRES_UID: u32 = 999;

/// The postgres image's entrypoint (see [`Docker::postgres_image`]).
const POSTGRES_ENTRYPOINT: &str = r#"#!/bin/sh
set -eu
if [ "${1:-}" != postgres ]; then exec "$@"; fi
shift
: "${PGDATA:=/var/lib/postgresql/data}"
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "POSTGRES_PASSWORD is not set: refusing to create a database without a password" >&2
    exit 1
  fi
  # The password goes through a file only this user reads, never a command line.
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" -E UTF8 --locale=C \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    printf 'CREATE DATABASE "%s"\n' "$db" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
  echo "database initialized in $PGDATA"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
"#;

/// The newest PostgreSQL version under `/usr/lib/postgresql`, and the files of its image
/// (paths under `rootfs/`; see [`Docker::postgres_image`]).
fn postgres_files() -> (String, Vec<(String, Vec<u8>)>) {
    let root = Path::new("/usr/lib/postgresql");
    let version = fs::read_dir(root)
        .unwrap_or_else(|e| panic!("read {}: {e} (apt-get install postgresql)", root.display()))
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|v| root.join(v.to_string()).join("bin/postgres").exists())
        .max()
        .expect("no /usr/lib/postgresql/<version>/bin/postgres (apt-get install postgresql)")
        .to_string();
    let home = root.join(&version);
    let mut wanted: Vec<PathBuf> = [
        "postgres",
        "initdb",
        "pg_ctl",
        "psql",
        "pg_dump",
        "pg_restore",
        "pg_isready",
        "createdb",
    ]
    .iter()
    .map(|b| home.join("bin").join(b))
    .collect();
    // The server's loadable modules (plpgsql, snowball, ...): initdb loads some of them. Not
    // the LLVM JIT (large; without it the server just does not JIT).
    for entry in fs::read_dir(home.join("lib"))
        .expect("read the postgres lib dir")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".so") && !name.starts_with("llvmjit") {
            wanted.push(entry.path());
        }
    }
    let mut libraries = std::collections::BTreeSet::new();
    for file in &wanted {
        let out = Command::new("ldd").arg(file).output().expect("run ldd");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = line
                .split_once("=>")
                .map_or(line, |(_, p)| p)
                .split_whitespace()
                .next()
                .unwrap_or("");
            if path.starts_with('/') {
                libraries.insert(PathBuf::from(path));
            }
        }
    }
    wanted.extend(libraries);
    let share = PathBuf::from(format!("/usr/share/postgresql/{version}"));
    let mut stack = vec![share];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)
            .expect("read the postgres share dir")
            .flatten()
        {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == "man") {
                continue;
            }
            match fs::metadata(&path) {
                Ok(m) if m.is_dir() => stack.push(path),
                Ok(m) if m.is_file() => wanted.push(path),
                _ => {}
            }
        }
    }
    wanted.push(PathBuf::from("/usr/share/zoneinfo/UTC"));
    let mut files: Vec<(String, Vec<u8>)> = wanted
        .iter()
        .map(|path| {
            // Symlinks are followed: the image gets the file under the name that was asked for.
            let content = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            (format!("rootfs{}", path.display()), content)
        })
        .collect();
    files.push((
        "rootfs/etc/passwd".into(),
        format!(
            "root:x:0:0:root:/root:/bin/sh\n\
             postgres:x:{POSTGRES_UID}:{POSTGRES_UID}:PostgreSQL:/var/lib/postgresql:/bin/sh\n"
        )
        .into_bytes(),
    ));
    files.push((
        "rootfs/etc/group".into(),
        format!("root:x:0:\npostgres:x:{POSTGRES_UID}:\n").into_bytes(),
    ));
    files.push((
        "rootfs/usr/local/bin/docker-entrypoint.sh".into(),
        POSTGRES_ENTRYPOINT.as_bytes().to_vec(),
    ));
    (version, files)
}

/// See [`Docker::cli`].
fn cli(socket: &Path, home: &Path) -> Command {
    let mut cmd = clean_command("docker", home);
    cmd.env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null());
    cmd
}

/// See [`Docker::remove_project`].
fn remove_project(socket: &Path, home: &Path, name: &str) {
    let label = format!("label=com.docker.compose.project={name}");
    let ids = |args: &[&str]| -> Vec<String> {
        cli(socket, home)
            .args(args)
            .args(["--filter", &label])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    for (list, remove) in [
        (&["ps", "-aq"][..], &["rm", "-f", "-v"][..]),
        (&["network", "ls", "-q"], &["network", "rm"]),
        (&["volume", "ls", "-q"], &["volume", "rm", "-f"]),
    ] {
        let found = ids(list);
        if !found.is_empty() {
            let _ = cli(socket, home)
                .args(remove)
                .args(&found)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A unique Compose project name; dropping it removes the project from the engine.
pub struct Project {
    // Not a reference to the engine: a guard without a lifetime fits in any test's struct.
    socket: PathBuf,
    home: PathBuf,
    name: String,
}

impl Project {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for Project {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        remove_project(&self.socket, &self.home, &self.name);
    }
}

impl Drop for Docker {
    /// Closes the lifeline and waits until the watchdog has stopped dockerd and removed what it
    /// left (a few seconds at most). Never panics.
    fn drop(&mut self) {
        drop(self.lifeline.take());
        let _ = self.watchdog.wait();
    }
}

/// Does the engine answer `GET /_ping` on `socket`?
fn ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reply = String::new();
    s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_ok()
        && s.read_to_string(&mut reply).is_ok()
        && reply.starts_with("HTTP/1.")
        && reply.contains(" 200 ")
        && reply.ends_with("OK")
}

fn path_arg(p: &Path) -> String {
    p.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
        .to_string()
}
