//! The Docker fixture itself (`support::docker`): one engine per test process, images built
//! from busybox, reached over real ssh from the tier-1 hosts, Compose v1 stacks whose published
//! ports answer on this machine's loopback, and nothing left behind when the test process dies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::docker::{BASE_IMAGE, Docker, docker};
use crate::support::{CLEAN_PATH, Fleet, free_port};

/// Set for the child process of [`engine_dies_with_its_test_process`].
const CHILD_ENV: &str = "SHIPIT_E2E_DOCKER_CHILD";
/// What that child prints once its engine runs a container.
const CHILD_READY: &str = "shipit-docker-child-ready";

/// A one-service stack: busybox httpd serving `/www` of `image` on 127.0.0.1:`port`.
fn compose_file(image: &str, port: u16, command: &str) -> String {
    format!(
        "version: \"2.4\"\n\
         services:\n  \
           web:\n    \
             image: {image}\n    \
             command: {command}\n    \
             ports:\n      \
               - \"127.0.0.1:{port}:8080\"\n"
    )
}

/// Writes `content` to `path` on `host`, over ssh.
fn write_on(fleet: &Fleet, host: &str, path: &str, content: &str) {
    assert!(!content.contains("\nEOF\n"));
    let dir = Path::new(path).parent().unwrap().display().to_string();
    fleet.ssh_ok(
        host,
        &format!("mkdir -p {dir} && cat > {path} <<'EOF'\n{content}EOF\n"),
    );
}

/// One HTTP/1.0 GET of `/` on 127.0.0.1:`port`; the whole response.
fn get(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    Ok(response)
}

/// The body of a 200 response on 127.0.0.1:`port`, retried for a while: docker-proxy accepts
/// connections as soon as the container starts, and closes them until httpd listens.
fn http_body(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = get(port);
        if let Ok(response) = &last
            && response.starts_with("HTTP/1.")
            && response.contains(" 200 ")
        {
            let (_, body) = response.split_once("\r\n\r\n").expect("HTTP header end");
            return body.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no 200 on 127.0.0.1:{port}; last: {last:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn refuses(port: u16) -> bool {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err()
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", name])
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run ip")
        .success()
}

/// The Linux bridge of a Compose/`docker network` network of the shared engine.
fn bridge_of(network: &str) -> String {
    bridge_of_on(docker(), network)
}

fn bridge_of_on(engine: &Docker, network: &str) -> String {
    let id = engine.cli_ok(&["network", "inspect", "-f", "{{.Id}}", network]);
    format!("br-{}", &id.trim()[..12])
}

#[test]
fn engine_answers_on_its_own_socket_with_the_busybox_base_image() {
    let d = docker();
    eprintln!(
        "dockerd ({}) answered after {:?}",
        d.storage_driver(),
        d.startup_time()
    );
    let version = d.cli_ok(&["version", "--format", "{{.Server.Version}}"]);
    assert!(!version.trim().is_empty(), "no server version");
    assert!(d.socket().starts_with(d.dir()), "{}", d.socket().display());
    let driver = d.cli_ok(&["info", "--format", "{{.Driver}}"]);
    assert_eq!(driver.trim(), d.storage_driver());
    // No default bridge, so no docker0 on the machine.
    let networks = d.cli_ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!networks.lines().any(|n| n == "bridge"), "{networks}");

    let started = Instant::now();
    assert_eq!(d.base_image(), BASE_IMAGE);
    eprintln!("base image ready after {:?}", started.elapsed());
    let out = d.cli_ok(&[
        "run",
        "--rm",
        BASE_IMAGE,
        "sh",
        "-c",
        "readlink /bin/sh; ls /bin | wc -l; ls /",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "/bin/busybox", "{out}");
    assert!(
        lines[1].parse::<u32>().unwrap() > 100,
        "busybox applets: {out}"
    );
    // Nothing but busybox and what docker adds.
    assert!(!lines.contains(&"usr") && !lines.contains(&"lib"), "{out}");

    // An app image on top of the base, with an executable script.
    let tag = "shipit-test/fixture-app:1";
    d.build_image(
        tag,
        "FROM shipit-test/busybox:1\nCOPY app/ /app/\nCMD [\"/app/run.sh\"]\n",
        &[
            ("app/run.sh", b"#!/bin/sh\ncat /app/greeting\n"),
            ("app/greeting", b"hello from an app image\n"),
        ],
    );
    assert_eq!(d.cli_ok(&["run", "--rm", tag]), "hello from an app image\n");
}

#[test]
fn an_exposed_host_runs_containers_over_ssh_and_another_does_not_see_the_engine() {
    let d = docker();
    d.base_image();
    let fleet = Fleet::start(2);
    d.expose_to(&fleet, "h1");
    // Exposing twice (another test step, another host) is fine.
    d.expose_to(&fleet, "h1");

    assert_eq!(
        fleet.ssh_ok("h1", "docker run --rm shipit-test/busybox:1 echo hi"),
        "hi\n"
    );
    // The usual socket path, no DOCKER_HOST: what a deploy script on a real server relies on.
    fleet.ssh_ok(
        "h1",
        "test -S /var/run/docker.sock && test -z \"${DOCKER_HOST:-}\"",
    );
    let ps = fleet.ssh_ok(
        "h1",
        "docker ps --format '{{.Names}}' && docker-compose version",
    );
    assert!(ps.contains("docker-compose version 1."), "{ps}");
    // The engine is this process's: what h1 runs shows up through the fixture's CLI.
    let name = d.unique_project("ssh-run");
    fleet.ssh_ok(
        "h1",
        &format!("docker run -d --name {name} shipit-test/busybox:1 sleep 60"),
    );
    let running = d.cli_ok(&["ps", "--format", "{{.Names}}"]);
    d.cli_ok(&["rm", "-f", &name]);
    assert!(running.lines().any(|n| n == name), "{running}");

    let out = fleet.ssh("h2", "docker ps");
    assert!(!out.status.success(), "h2 reached an engine");
}

#[test]
fn compose_stack_deployed_over_ssh_serves_on_loopback_and_comes_down() {
    let d = docker();
    let image = "shipit-test/fixture-web:1";
    d.build_image(
        image,
        "FROM shipit-test/busybox:1\nCOPY index.html /www/index.html\n",
        &[("index.html", b"hello from compose\n")],
    );
    let fleet = Fleet::start(1);
    d.expose_to(&fleet, "h1");
    let project = d.project("web");
    let port = free_port();
    write_on(
        &fleet,
        "h1",
        "/srv/web/docker-compose.yml",
        &compose_file(
            image,
            port,
            "[\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]",
        ),
    );

    let started = Instant::now();
    fleet.ssh_ok(
        "h1",
        &format!("docker-compose -p {project} -f /srv/web/docker-compose.yml up -d 2>&1"),
    );
    assert_eq!(http_body(port), "hello from compose\n");
    eprintln!("compose up + first 200 after {:?}", started.elapsed());
    let ps = fleet.ssh_ok(
        "h1",
        &format!(
            "cd /srv/web && docker-compose -p {project} ps --services --filter status=running"
        ),
    );
    assert_eq!(ps.trim(), "web");
    let bridge = bridge_of(&format!("{project}_default"));
    assert!(link_exists(&bridge), "{bridge} missing");

    let started = Instant::now();
    fleet.ssh_ok(
        "h1",
        &format!("docker-compose -p {project} -f /srv/web/docker-compose.yml down 2>&1"),
    );
    let down = started.elapsed();
    eprintln!("compose down after {down:?}");
    // docker-init as PID 1 passes SIGTERM on: no 10 s stop timeout.
    assert!(down < Duration::from_secs(8), "down took {down:?}");
    assert!(refuses(port), "127.0.0.1:{port} still answers");
    assert!(!link_exists(&bridge), "{bridge} left on the machine");
    let label = format!("label=com.docker.compose.project={project}");
    assert_eq!(d.cli_ok(&["ps", "-aq", "--filter", &label]), "");
    assert_eq!(d.cli_ok(&["network", "ls", "-q", "--filter", &label]), "");
}

#[test]
fn parallel_stacks_with_the_same_service_names_do_not_collide() {
    let d = docker();
    d.base_image();
    let fleet = Fleet::start(2);
    // Same compose file layout, same service name, same base name: only the project differs.
    let bodies: Vec<(String, String)> = thread::scope(|s| {
        let fleet = &fleet;
        let workers: Vec<_> =
            ["h1", "h2"]
                .into_iter()
                .map(|host| {
                    s.spawn(move || {
                    d.expose_to(fleet, host);
                    let project = d.project("app");
                    let port = free_port();
                    let command = "[\"sh\", \"-c\", \"mkdir -p /www && hostname > /www/index.html \
                                   && echo $$SERVED_BY >> /www/index.html \
                                   && exec httpd -f -p 8080 -h /www\"]";
                    let file = compose_file(BASE_IMAGE, port, command)
                        + &format!("    environment:\n      SERVED_BY: {host}\n");
                    write_on(fleet, host, "/srv/app/docker-compose.yml", &file);
                    let compose = format!("cd /srv/app && docker-compose -p {project}");
                    fleet.ssh_ok(host, &format!("{compose} up -d 2>&1"));
                    let body = http_body(port);
                    // Both stacks run at once here: the other thread is also between up and down.
                    let names = d.cli_ok(&["ps", "--format", "{{.Names}}"]);
                    assert!(names.lines().any(|n| n == format!("{project}_web_1")), "{names}");
                    fleet.ssh_ok(host, &format!("{compose} down 2>&1"));
                    assert!(refuses(port));
                    (host.to_string(), body)
                })
                })
                .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for (host, body) in bodies {
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 2, "{body}");
        // A container's own hostname, and the environment of its own stack.
        assert_ne!(lines[0], host, "{body}");
        assert_eq!(lines[1], host, "{body}");
    }
}

#[test]
fn a_dropped_project_guard_removes_what_the_test_left_running() {
    let d = docker();
    d.base_image();
    let fleet = Fleet::start(1);
    d.expose_to(&fleet, "h1");
    let project = d.project("left-running");
    let port = free_port();
    let command = "[\"sh\", \"-c\", \"mkdir /www && echo up > /www/index.html \
                   && exec httpd -f -p 8080 -h /www\"]";
    write_on(
        &fleet,
        "h1",
        "/srv/left/docker-compose.yml",
        &compose_file(BASE_IMAGE, port, command),
    );
    fleet.ssh_ok(
        "h1",
        &format!("cd /srv/left && docker-compose -p {project} up -d 2>&1"),
    );
    assert_eq!(http_body(port), "up\n");
    let bridge = bridge_of(&format!("{project}_default"));
    let label = format!("label=com.docker.compose.project={project}");

    // As when a test panics between `up` and `down`.
    let name = project.name().to_string();
    drop(project);
    assert!(refuses(port), "127.0.0.1:{port} still answers");
    assert!(!link_exists(&bridge), "{bridge} left on the machine");
    assert_eq!(d.cli_ok(&["ps", "-aq", "--filter", &label]), "", "{name}");
    assert_eq!(d.cli_ok(&["network", "ls", "-q", "--filter", &label]), "");
}

#[test]
fn hosts_with_engines_of_their_own_run_the_same_project_and_dropping_them_cleans_up() {
    let fleet = Fleet::start(2);
    let engines: Vec<Docker> = thread::scope(|s| {
        let starts: Vec<_> = (0..2).map(|_| s.spawn(Docker::start)).collect();
        starts.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut stacks = Vec::new();
    for (engine, host) in engines.iter().zip(["h1", "h2"]) {
        engine.base_image();
        engine.expose_to(&fleet, host);
        let port = free_port();
        let command = "[\"sh\", \"-c\", \"mkdir /www && echo $$SERVED_BY > /www/index.html \
                       && exec httpd -f -p 8080 -h /www\"]";
        let file = compose_file(BASE_IMAGE, port, command)
            + &format!("    environment:\n      SERVED_BY: {host}\n");
        write_on(&fleet, host, "/srv/shop/docker-compose.yml", &file);
        // The same project name on both: what deploying one stack to two servers does.
        fleet.ssh_ok(host, "cd /srv/shop && docker-compose -p shop up -d 2>&1");
        stacks.push((
            engine.dir().to_path_buf(),
            bridge_of_on(engine, "shop_default"),
            port,
        ));
    }
    for ((_, _, port), host) in stacks.iter().zip(["h1", "h2"]) {
        assert_eq!(http_body(*port), format!("{host}\n"));
    }
    for engine in &engines {
        let names = engine.cli_ok(&["ps", "--format", "{{.Names}}"]);
        assert_eq!(names.trim(), "shop_web_1");
    }

    // No `down`: dropping an engine stops its containers and removes its bridge and dir.
    let started = Instant::now();
    drop(engines);
    eprintln!(
        "two engines with a running stack each stopped in {:?}",
        started.elapsed()
    );
    for (dir, bridge, port) in stacks {
        assert!(!dir.exists(), "{} left", dir.display());
        assert!(!link_exists(&bridge), "{bridge} left on the machine");
        assert!(refuses(port), "127.0.0.1:{port} still answers");
    }
}

/// Runs this test binary's [`engine_child`] in a child process, which starts its own engine
/// with a bridge network and a container publishing a port, then SIGKILLs that child (no
/// unwinding, no Drop: a CI timeout) and checks the watchdog removed everything.
#[test]
fn engine_dies_with_its_test_process() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "docker_fixture::engine_child",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Read in a thread: a child that hangs must fail this test, not hang it.
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            // libtest prints "test NAME ... " and then the test's own output on that line.
            if let Some((_, rest)) = line.split_once(CHILD_READY) {
                let _ = tx.send(rest.trim().to_string());
                return;
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(120));
    child.kill().unwrap();
    child.wait().unwrap();
    let ready = ready.expect("the child test did not get its engine running in time");
    let fields: Vec<&str> = ready.split(' ').collect();
    let (dir, bridge, port) = (fields[0], fields[1], fields[2].parse::<u16>().unwrap());
    let cgroup = Path::new(dir).file_name().unwrap().to_str().unwrap();

    let leftovers = || {
        let mut left = Vec::new();
        if Path::new(dir).exists() {
            left.push(format!("dir {dir}"));
        }
        if link_exists(bridge) {
            left.push(format!("bridge {bridge}"));
        }
        if !refuses(port) {
            left.push(format!("port {port}"));
        }
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(dir) {
                left.push(format!("process {:?}", entry.file_name()));
            }
        }
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            if hierarchy.path().join(cgroup).exists() {
                left.push(format!(
                    "cgroup {}",
                    hierarchy.path().join(cgroup).display()
                ));
            }
        }
        left
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let started = Instant::now();
    loop {
        let left = leftovers();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind after the test process died: {left:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "engine cleaned up {:?} after its process died",
        started.elapsed()
    );
}

/// Only does something as the child of [`engine_dies_with_its_test_process`] (which sets
/// `CHILD_ENV`); in a normal run it returns at once.
#[test]
fn engine_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let d = docker();
    d.base_image();
    let network = d.unique_project("child-net");
    d.cli_ok(&["network", "create", &network]);
    let port = free_port();
    d.cli_ok(&[
        "run",
        "-d",
        "--network",
        &network,
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        BASE_IMAGE,
        "sh",
        "-c",
        "mkdir /www && echo up > /www/index.html && exec httpd -f -p 8080 -h /www",
    ]);
    http_body(port);
    println!(
        "{CHILD_READY} {} {} {port}",
        d.dir().display(),
        bridge_of(&network)
    );
    std::io::stdout().flush().unwrap();
    thread::sleep(Duration::from_secs(600));
}

/// `docker exec NAME ARGS` until it succeeds (20 s at most); its stdout.
fn exec_until_ok(d: &Docker, name: &str, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = d.cli().arg("exec").arg(name).args(args).output().unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "docker exec {name} {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            d.cli().args(["logs", name]).output().map_or_else(
                |e| e.to_string(),
                |o| String::from_utf8_lossy(&o.stderr).into_owned()
            )
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_postgres_image_initializes_a_volume_serves_the_network_and_keeps_data() {
    let d = docker();
    let started = Instant::now();
    let image = d.postgres_image().to_string();
    eprintln!("postgres image ready after {:?}", started.elapsed());
    // Labelled as a Compose project, so the guard removes all of it even if an assert fails.
    let project = d.project("pgimage");
    let label = format!("com.docker.compose.project={project}");
    let (network, volume) = (format!("{project}-net"), format!("{project}-data"));
    d.cli_ok(&["network", "create", "--label", &label, &network]);
    d.cli_ok(&["volume", "create", "--label", &label, &volume]);
    let server = format!("{project}-db");
    let run_server = || {
        d.cli_ok(&[
            "run",
            "-d",
            "--name",
            &server,
            "--label",
            &label,
            "--network",
            &network,
            "--network-alias",
            "db",
            "-e",
            "POSTGRES_USER=app",
            "-e",
            "POSTGRES_PASSWORD=s3cret pass",
            "-e",
            "POSTGRES_DB=shop",
            "-v",
            &format!("{volume}:/var/lib/postgresql/data"),
            &image,
        ]);
        exec_until_ok(d, &server, &["pg_isready", "-q", "-U", "app", "-d", "shop"]);
    };
    run_server();
    let version = d.cli_ok(&[
        "exec",
        &server,
        "psql",
        "-U",
        "app",
        "-d",
        "shop",
        "-tAc",
        "show server_version",
    ]);
    assert!(
        image.ends_with(&format!(":{}", version.split('.').next().unwrap())),
        "{version}"
    );
    d.cli_ok(&[
        "exec",
        &server,
        "psql",
        "-U",
        "app",
        "-d",
        "shop",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "CREATE TABLE items (name text); INSERT INTO items VALUES ('kept');",
    ]);
    // Another container on the network, over TCP with the password; a wrong one is refused.
    let client = |password: &str| {
        d.cli()
            .args([
                "run",
                "--rm",
                "--label",
                &label,
                "--network",
                &network,
                "-e",
            ])
            .arg(format!("PGPASSWORD={password}"))
            .args([
                &image, "psql", "-h", "db", "-U", "app", "-d", "shop", "-tAc",
            ])
            .arg("SELECT name FROM items")
            .output()
            .unwrap()
    };
    let ok = client("s3cret pass");
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "kept\n");
    assert!(!client("wrong").status.success());

    // A new container on the same volume: no second initdb, the data is there.
    d.cli_ok(&["rm", "-f", &server]);
    run_server();
    let rows = d.cli_ok(&[
        "exec",
        &server,
        "psql",
        "-U",
        "app",
        "-d",
        "shop",
        "-tAc",
        "SELECT name FROM items",
    ]);
    assert_eq!(rows, "kept\n");
    let logs = d.cli().args(["logs", &server]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&logs.stdout).contains("database initialized"),
        "initialized twice: {logs:?}"
    );
    eprintln!("postgres image test done after {:?}", started.elapsed());
}
