//! Hostile and broken input through the real binary: each case gets a clear error naming the
//! file, host or key (and what to do), and changes nothing on any host — checked by comparing
//! everything the hosts have written (their overlays' upper layers) before and after.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::support::{Fleet, free_port};

struct Case {
    name: &'static str,
    /// The inventory text (from the base) and extra environment.
    inventory: String,
    env: Vec<(&'static str, &'static str)>,
    code: i32,
    expect: Vec<String>,
}

fn tarball(dir: &Path, name: &str, script: &str) -> PathBuf {
    let d = dir.join(format!("tar-{name}"));
    std::fs::create_dir_all(&d).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{name}: {out:?}");
    d.join("artifact.tar.gz")
}

#[test]
fn hostile_input_gets_a_clear_error_and_changes_nothing() {
    let fleet = Fleet::start(1);
    let h1 = fleet.host("h1");
    let app = fleet.dir().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("VERSION"), "1").unwrap();
    let base = inventory_text(
        &fleet,
        &["h1"],
        &format!("[artifact]\npath = \"{}\"\n", app.display()),
    );
    let with = |from: &str, to: &str| {
        assert!(base.contains(from), "base lacks {from:?}");
        base.replacen(from, to, 1)
    };
    let artifact = |path: &Path| {
        with(
            &format!("path = \"{}\"", app.display()),
            &format!("path = \"{}\"", path.display()),
        )
    };
    let unit = write(
        fleet.dir(),
        "bad.service.j2",
        "[Service]\nExecStart={{ app.current }}/run {{ host.vars.nope }}\n",
    );
    let port_line = format!("port = {}", h1.port);

    // Hosts that misbehave at the network level.
    let closer = TcpListener::bind("127.0.0.1:0").unwrap();
    let closer_port = closer.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in closer.incoming() {
            drop(stream); // accepts, then closes during the handshake
        }
    });
    let mute = TcpListener::bind("127.0.0.1:0").unwrap(); // accepts, never speaks
    let mute_port = mute.local_addr().unwrap().port();
    let empty_known = write(fleet.dir(), "empty_known_hosts", "");
    let other_key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDf43tJdjmzvsBoGT/CKTMys6Tqm/1IgDA8lpxAz2Vvl";
    let forged = write(
        fleet.dir(),
        "forged",
        &format!("[127.0.0.1]:{} {other_key}\n", h1.port),
    );
    let kh = fleet.known_hosts().display().to_string();

    let cases = vec![
        Case {
            name: "malformed TOML",
            inventory: with("[app]", "[app"),
            env: vec![],
            code: 2,
            expect: vec!["hostile.toml:1:".into()],
        },
        Case {
            name: "wrong type",
            inventory: with(
                "name = \"demo\"",
                "name = \"demo\"\nkeep_releases = \"five\"",
            ),
            env: vec![],
            code: 2,
            expect: vec!["hostile.toml:3:17:".into(), "invalid type".into()],
        },
        Case {
            name: "wrong port type",
            inventory: with(&port_line, "port = \"22\""),
            env: vec![],
            code: 2,
            expect: vec!["invalid type".into()],
        },
        Case {
            name: "unknown key",
            inventory: with("deploy_to", "deploy_too"),
            env: vec![],
            code: 2,
            expect: vec!["unknown key `deploy_too` in [app] (did you mean `deploy_to`?)".into()],
        },
        Case {
            name: "unknown section",
            inventory: format!("{base}[rollot]\n"),
            env: vec![],
            code: 2,
            expect: vec!["did you mean `rollout`".into()],
        },
        Case {
            name: "duplicate host",
            inventory: format!("{base}[[hosts]]\nname = \"h1\"\n"),
            env: vec![],
            code: 2,
            expect: vec!["duplicate host name `h1`".into()],
        },
        Case {
            name: "deploy_to /",
            inventory: with("\"/opt/demo\"", "\"/\""),
            env: vec![],
            code: 2,
            expect: vec!["`app.deploy_to`: `/` is a system directory".into()],
        },
        Case {
            name: "deploy_to /etc",
            inventory: with("\"/opt/demo\"", "\"/etc\""),
            env: vec![],
            code: 2,
            expect: vec!["`/etc` is a system directory".into()],
        },
        Case {
            name: "deploy_to /usr",
            inventory: with("\"/opt/demo\"", "\"/usr\""),
            env: vec![],
            code: 2,
            expect: vec!["`/usr` is a system directory".into()],
        },
        Case {
            name: "relative deploy_to",
            inventory: with("\"/opt/demo\"", "\"opt/demo\""),
            env: vec![],
            code: 2,
            expect: vec!["must be an absolute path".into()],
        },
        Case {
            name: "deploy_to with ..",
            inventory: with("\"/opt/demo\"", "\"/opt/../etc\""),
            env: vec![],
            code: 2,
            expect: vec!["normalized".into()],
        },
        Case {
            name: "keep_releases = 0",
            inventory: with("name = \"demo\"", "name = \"demo\"\nkeep_releases = 0"),
            env: vec![],
            code: 2,
            expect: vec!["`app.keep_releases`: must be at least 2".into()],
        },
        Case {
            name: "app name with shell",
            inventory: with("name = \"demo\"", "name = \"demo; touch /tmp/pwned\""),
            env: vec![],
            code: 2,
            expect: vec!["`app.name`".into()],
        },
        Case {
            name: "ssh user with shell",
            inventory: with("user = \"root\"", "user = \"root$(id)\""),
            env: vec![],
            code: 2,
            expect: vec!["`ssh.user`".into(), "not a valid user name".into()],
        },
        Case {
            name: "app user with shell",
            inventory: with("name = \"demo\"", "name = \"demo\"\nuser = \"`id`\""),
            env: vec![],
            code: 2,
            expect: vec!["`app.user`".into()],
        },
        Case {
            name: "env path with control character",
            inventory: format!("{base}[env]\npath = \"/etc/a\\nb\"\n"),
            env: vec![],
            code: 2,
            expect: vec!["`env.path`: must not contain control characters".into()],
        },
        Case {
            name: "env key with shell",
            inventory: format!(
                "{base}[env]\npath = \"/etc/demo.env\"\nvars = {{ \"A;B\" = \"1\" }}\n"
            ),
            env: vec![],
            code: 2,
            expect: vec!["not a valid environment variable name".into()],
        },
        Case {
            name: "unit name with shell",
            inventory: format!(
                "{base}[[systemd]]\nunit = \"x;reboot.service\"\ntemplate = \"{}\"\n",
                unit.display()
            ),
            env: vec![],
            code: 2,
            expect: vec!["`systemd[0].unit`".into()],
        },
        Case {
            name: "nginx site with a slash",
            inventory: format!(
                "{base}[nginx]\nsite = \"../../etc/passwd\"\ntemplate = \"{}\"\n",
                unit.display()
            ),
            env: vec![],
            code: 2,
            expect: vec!["`nginx.site`: must be a file name".into()],
        },
        Case {
            name: "shared dir leaving the release",
            inventory: with(
                "[artifact]\n",
                "[artifact]\nshared_dirs = [\"../../etc\"]\n",
            ),
            env: vec![],
            code: 2,
            expect: vec!["`artifact.shared_dirs`".into()],
        },
        Case {
            name: "missing secret",
            inventory: format!(
                "{base}[env]\npath = \"/etc/demo.env\"\nfrom_env = [\"NOT_SET\", \"ALSO_NOT\"]\n"
            ),
            env: vec![],
            code: 2,
            expect: vec!["NOT_SET, ALSO_NOT".into()],
        },
        Case {
            name: "wave of zero",
            inventory: format!("{base}[rollout]\nwaves = [\"0\"]\n"),
            env: vec![],
            code: 2,
            expect: vec!["`rollout.waves`: a wave must have at least one host".into()],
        },
        Case {
            name: "max_fail over 100%",
            inventory: format!("{base}[rollout]\nmax_fail = \"150%\"\n"),
            env: vec![],
            code: 2,
            expect: vec!["`rollout.max_fail`".into()],
        },
        Case {
            name: "unknown hook point",
            inventory: format!("{base}[[hooks]]\nat = \"after_swich\"\ncommand = \"true\"\n"),
            env: vec![],
            code: 2,
            expect: vec!["did you mean `after_switch`".into()],
        },
        Case {
            name: "https health url",
            inventory: format!("{base}[health]\nurl = \"https://x/\"\n"),
            env: vec![],
            code: 2,
            expect: vec!["https is not supported".into()],
        },
        Case {
            name: "malformed host_key pin",
            inventory: with(
                &port_line,
                &format!("{port_line}\nhost_key = \"ssh-ed25519 !!!\""),
            ),
            env: vec![],
            code: 2,
            expect: vec!["`hosts[0].host_key`".into()],
        },
        Case {
            name: "undefined template variable",
            inventory: format!(
                "{base}[[systemd]]\nunit = \"demo.service\"\ntemplate = \"{}\"\n",
                unit.display()
            ),
            env: vec![],
            code: 2,
            expect: vec!["bad.service.j2` line 2".into(), "undefined".into()],
        },
        Case {
            name: "tarball with ..",
            inventory: artifact(&tarball(
                fleet.dir(),
                "dotdot",
                "mkdir -p a && echo x > evil && tar -czPf artifact.tar.gz a/../evil",
            )),
            env: vec![],
            code: 2,
            expect: vec!["`..`".into()],
        },
        Case {
            name: "tarball with an absolute path",
            inventory: artifact(&tarball(
                fleet.dir(),
                "abs",
                "echo x > /tmp/shipit-abs-$$ && tar -czPf artifact.tar.gz /tmp/shipit-abs-$$; rm -f /tmp/shipit-abs-$$",
            )),
            env: vec![],
            code: 2,
            expect: vec!["absolute".into()],
        },
        Case {
            name: "tarball with an escaping symlink",
            inventory: artifact(&tarball(
                fleet.dir(),
                "link",
                "mkdir s && ln -s ../../../etc s/up && tar -czf artifact.tar.gz -C s .",
            )),
            env: vec![],
            code: 2,
            expect: vec!["outside the artifact".into()],
        },
        Case {
            name: "tarball with a hard link out of the tree",
            inventory: artifact(&tarball(
                fleet.dir(),
                "hard",
                "python3 -c \"import tarfile,io; t=tarfile.open('artifact.tar.gz','w:gz'); i=tarfile.TarInfo('shadow'); i.type=tarfile.LNKTYPE; i.linkname='/etc/shadow'; t.addfile(i); t.close()\"",
            )),
            env: vec![],
            code: 2,
            expect: vec!["hard link".into(), "shadow".into()],
        },
        Case {
            name: "tarball with a device file",
            inventory: artifact(&tarball(
                fleet.dir(),
                "dev",
                "python3 -c \"import tarfile; t=tarfile.open('artifact.tar.gz','w:gz'); i=tarfile.TarInfo('null'); i.type=tarfile.CHRTYPE; i.devmajor=1; i.devminor=3; t.addfile(i); t.close()\"",
            )),
            env: vec![],
            code: 2,
            expect: vec!["`null`".into(), "device".into()],
        },
        Case {
            name: "artifact that is not a tarball",
            inventory: artifact(&write(fleet.dir(), "not.tar.gz", "this is not gzip")),
            env: vec![],
            code: 2,
            expect: vec!["not a valid tar.gz".into()],
        },
        Case {
            name: "artifact of another kind",
            inventory: artifact(&write(fleet.dir(), "app.zip", "PK")),
            env: vec![],
            code: 2,
            expect: vec!["`.tar.gz`, `.tgz` or `.tar`".into()],
        },
        Case {
            name: "unknown host key",
            inventory: base.replace(&kh, &empty_known.display().to_string()),
            env: vec![],
            code: 1,
            expect: vec!["is not known".into(), "SHA256:".into()],
        },
        Case {
            name: "changed host key",
            inventory: base.replace(&kh, &forged.display().to_string()),
            env: vec![],
            code: 1,
            expect: vec!["HOST KEY CHANGED".into()],
        },
        Case {
            name: "host closing the connection in the handshake",
            inventory: with(&port_line, &format!("port = {closer_port}")),
            env: vec![],
            code: 1,
            expect: vec![
                "cannot reach `h1`".into(),
                "closed the connection during the SSH handshake".into(),
            ],
        },
        Case {
            name: "host that never answers",
            inventory: with(&port_line, &format!("port = {mute_port}")).replace("\"5s\"", "\"1s\""),
            env: vec![],
            code: 1,
            expect: vec!["did not complete the SSH handshake within 1s".into()],
        },
        Case {
            name: "closed port",
            inventory: with(&port_line, &format!("port = {}", free_port())),
            env: vec![],
            code: 1,
            expect: vec!["cannot reach `h1`".into()],
        },
    ];
    assert!(cases.len() >= 30);
    let before = written(&h1.dir);
    for case in cases {
        let inv = write(fleet.dir(), "hostile.toml", &case.inventory);
        let mut cmd = fleet.shipit();
        cmd.args(["deploy", "test", "-i"]).arg(&inv);
        for (k, v) in &case.env {
            cmd.env(k, v);
        }
        let (code, stdout, stderr) = run(&mut cmd);
        assert_eq!(code, case.code, "{}: {stdout}{stderr}", case.name);
        for want in &case.expect {
            assert!(
                stderr.contains(want.as_str()),
                "{}: expected {want:?} in:\n{stderr}",
                case.name
            );
        }
        assert_eq!(written(&h1.dir), before, "{} changed the host", case.name);
    }
    assert!(!Path::new("/tmp/pwned").exists());
    drop(mute);
}

#[test]
fn shell_metacharacters_in_values_arrive_literally() {
    let fleet = Fleet::start(1);
    let app = fleet.dir().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("VERSION"), "1").unwrap();
    let extra = format!(
        "[artifact]\npath = \"{}\"\nshared_dirs = [\"data dir; touch /tmp/pwned-shared\"]\n[env]\npath = \"/etc/de mo; touch /tmp/pwned-env.env\"\nvars = {{ EVIL = \"$(touch /tmp/pwned-var)`touch /tmp/pwned-tick`\" }}\n",
        app.display()
    );
    let text = inventory_text(&fleet, &["h1"], &extra)
        .replace("\"/opt/demo\"", "\"/opt/de mo;$(touch /tmp/pwned-path)\"");
    let inv = write(fleet.dir(), "inv.toml", &text);
    let (code, _, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&inv));
    assert_eq!(code, 0, "{stderr}");
    assert!(fleet.sh("h1", "test -L '/opt/de mo;$(touch /tmp/pwned-path)/current/data dir; touch /tmp/pwned-shared'").status.success());
    let env = fleet.sh_ok(
        "h1",
        "set -a; . '/etc/de mo; touch /tmp/pwned-env.env'; printf %s \"$EVIL\"",
    );
    assert_eq!(env, "$(touch /tmp/pwned-var)`touch /tmp/pwned-tick`");
    assert!(!fleet.sh_ok("h1", "ls /tmp").contains("pwned"));
}
