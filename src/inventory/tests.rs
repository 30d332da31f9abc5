use std::time::Duration;

use super::*;

fn load_with(text: &str, env: &[(&str, &str)]) -> Result<Inventory, InventoryError> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let ctx = LoadContext {
        base_dir: Path::new("/project"),
        home: Some(Path::new("/home/me")),
        env: &lookup,
        need_secrets: true,
    };
    parse(text, Path::new("inventory/staging.toml"), &ctx)
}

fn load(text: &str) -> Result<Inventory, InventoryError> {
    load_with(text, &[])
}

fn err(text: &str) -> String {
    load(text).expect_err("should fail").to_string()
}

const MINIMAL: &str = r#"
[app]
name = "shop"
deploy_to = "/opt/shop"

[[hosts]]
name = "web-1"
address = "10.0.0.5"
"#;

#[test]
fn minimal_inventory_gets_defaults() {
    let inv = load(MINIMAL).unwrap();
    assert_eq!(inv.transport, TransportKind::Ssh);
    assert_eq!(inv.app.keep_releases, 5);
    assert_eq!(inv.ssh.user, "root");
    assert_eq!(inv.ssh.port, 22);
    assert_eq!(inv.ssh.connect_timeout, Duration::from_secs(10));
    assert_eq!(inv.hosts[0].port, 22);
    assert_eq!(inv.migrate_host, 0);
    assert_eq!(
        inv.rollout.waves,
        vec![Amount::Count(1), Amount::Percent(100)]
    );
    assert_eq!(inv.rollout.on_failure, OnFailure::Rollback);
}

#[test]
fn unknown_keys_are_all_reported_with_suggestions() {
    let text = "[app]\nname = \"shop\"\ndeploy_too = \"/opt/shop\"\n\n[[hosts]]\nname = \"a\"\nadress = \"x\"\n[rollot]\n";
    insta::assert_snapshot!(err(text), @r"
    inventory/staging.toml:3:1: unknown key `deploy_too` in [app] (did you mean `deploy_to`?)
    inventory/staging.toml:7:1: unknown key `adress` in [[hosts]] (did you mean `address`?)
    inventory/staging.toml:8:2: unknown key `rollot` in the top level (did you mean `rollout`?)
    ");
}

#[test]
fn duplicate_host_names_point_at_the_second() {
    let text = format!("{MINIMAL}\n[[hosts]]\nname = \"web-1\"\n");
    insta::assert_snapshot!(err(&text), @"inventory/staging.toml:11:8: duplicate host name `web-1` (first defined on line 7)");
}

#[test]
fn missing_secrets_are_listed_together_by_name_only() {
    let text = format!(
        "{MINIMAL}\n[env]\npath = \"/etc/shop.env\"\nfrom_env = [\"DATABASE_URL\", \"SESSION_SECRET\", \"REDIS_URL\"]\n"
    );
    let e = load_with(&text, &[("REDIS_URL", "redis://secret-value")])
        .unwrap_err()
        .to_string();
    insta::assert_snapshot!(e, @"inventory/staging.toml:12:12: secrets named in `env.from_env` are not set in the environment: DATABASE_URL, SESSION_SECRET; export them (in CI: from the secret store) and run again");
    assert!(!e.contains("secret-value"));
}

#[test]
fn secrets_resolve_and_never_print() {
    let text = format!(
        "{MINIMAL}\n[env]\npath = \"/etc/shop.env\"\nfrom_env = [\"DATABASE_URL\"]\nvars = {{ PORT = 3000 }}\n"
    );
    let inv = load_with(&text, &[("DATABASE_URL", "postgres://u:pw@db/x")]).unwrap();
    let env = inv.env.as_ref().unwrap();
    assert_eq!(env.secrets[0].1.expose(), "postgres://u:pw@db/x");
    assert_eq!(env.vars["PORT"], "3000");
    assert!(!format!("{inv:?}").contains("pw@db"));
}

#[test]
fn bad_values_name_key_and_position() {
    let text = r#"
transport = "rsync"
[app]
name = "shop"
deploy_to = "/usr"
keep_releases = 1
[ssh]
connect_timeout = "ten seconds"
[[hosts]]
name = "a"
roles = ["migrate"]
[[hosts]]
name = "b"
roles = ["migrate"]
[rollout]
waves = ["1", "150%"]
max_fail = "x"
"#;
    insta::assert_snapshot!(err(text), @r#"
    inventory/staging.toml:2:13: `transport`: must be "ssh" or "local", not "rsync"
    inventory/staging.toml:5:13: `app.deploy_to`: `/usr` is a system directory; use a directory of the app's own, e.g. `/opt/<app>`
    inventory/staging.toml:6:17: `app.keep_releases`: must be at least 2 (the current release and the one to roll back to)
    inventory/staging.toml:8:19: `ssh.connect_timeout`: "ten seconds" is not a duration (expected number at 0); write e.g. "30s", "2m", "1h"
    inventory/staging.toml:9:1: more than one host has role `migrate`: a, b; exactly one host runs backups and migrations
    inventory/staging.toml:16:15: `rollout.waves`: "150%" must be a percentage from 0% to 100%
    inventory/staging.toml:17:12: `rollout.max_fail`: "x" must be a host count like "2" or a percentage like "25%"
    "#);
}

#[test]
fn deploy_to_root_and_relative_are_refused() {
    let slash = MINIMAL.replace("/opt/shop", "/");
    assert!(err(&slash).contains("`/` is a system directory"));
    let rel = MINIMAL.replace("/opt/shop", "opt/shop");
    assert!(err(&rel).contains("must be an absolute path"));
    let dots = MINIMAL.replace("/opt/shop", "/opt/../etc");
    assert!(err(&dots).contains("normalized"));
}

#[test]
fn system_paths_are_refused_with_their_position() {
    for (from, to, expect) in [
        (
            "deploy_to = \"/opt/shop\"",
            "deploy_to = \"/root/.ssh\"",
            "`.ssh`",
        ),
        (
            "deploy_to = \"/opt/shop\"",
            "deploy_to = \"/root\"",
            "home directory",
        ),
        (
            "deploy_to = \"/opt/shop\"",
            "deploy_to = \"/boot/efi\"",
            "`/boot`",
        ),
        (
            "deploy_to = \"/opt/shop\"",
            "deploy_to = \"/usr/local/lib\"",
            "`/usr`",
        ),
        (
            "deploy_to = \"/opt/shop\"",
            "deploy_to = \"/home/deploy\"",
            "home directory",
        ),
        (
            "deploy_to = \"/opt/shop\"",
            "deploy_to = \"/home/u/.ssh/x\"",
            "`.ssh`",
        ),
        (
            "deploy_to = \"/opt/shop\"",
            "deploy_to = \"/var/log/shop\"",
            "`/var/log`",
        ),
    ] {
        let e = err(&MINIMAL.replace(from, to));
        assert!(
            e.contains("inventory/staging.toml:4:13: `app.deploy_to`"),
            "{e}"
        );
        assert!(e.contains(expect), "{to}: {e}");
    }
    let env = |path: &str| format!("{MINIMAL}\n[env]\npath = \"{path}\"\n");
    let e = err(&env("/etc/passwd"));
    assert!(
        e.contains(":11:8: `env.path`: `/etc/passwd` would replace a file of the system"),
        "{e}"
    );
    assert!(err(&env("/etc/ssh/sshd_config")).contains("file of the system"));
    assert!(err(&env("/usr/lib/shop.env")).contains("`/usr`"));
    assert!(err(&env("/opt/.env")).contains("`/opt` is a system directory"));
    assert!(err(&env("/etc/.env")).contains("file of the system"));
    for ok in [
        "/etc/shop.env",
        "/etc/shop/app.env",
        "/opt/shop/.env",
        "/srv/x/shared/.env",
    ] {
        assert!(load(&env(ok)).is_ok(), "{ok}");
    }
    let backup = |dir: &str| format!("{MINIMAL}\n[backup]\ncommand = \"true\"\ndir = \"{dir}\"\n");
    assert!(err(&backup("/")).contains("`backup.dir`: `/` is a system directory"));
    assert!(err(&backup("/etc/backups")).contains("`/etc`"));
    assert!(load(&backup("/var/backups/shop")).is_ok());
}

/// The EFI system partition's other mount point, other distributions' package
/// databases, and store-based systems are trees of the system too.
#[test]
fn other_system_trees_are_refused() {
    for (to, tree) in [
        ("/efi/shop", "`/efi`"),
        ("/var/lib/rpm/shop", "`/var/lib/rpm`"),
        ("/var/lib/dnf/shop", "`/var/lib/dnf`"),
        ("/var/lib/pacman/shop", "`/var/lib/pacman`"),
        ("/var/lib/snapd/shop", "`/var/lib/snapd`"),
        ("/var/lib/polkit-1/shop", "`/var/lib/polkit-1`"),
        ("/var/lib/sudo/shop", "`/var/lib/sudo`"),
        ("/nix/store/shop", "`/nix`"),
        ("/gnu/store/shop", "`/gnu`"),
    ] {
        let e = err(&MINIMAL.replace(
            "deploy_to = \"/opt/shop\"",
            &format!("deploy_to = \"{to}\""),
        ));
        assert!(e.contains("`app.deploy_to`"), "{to}: {e}");
        assert!(e.contains(tree), "{to}: {e}");
    }
    assert!(load(&MINIMAL.replace("/opt/shop", "/var/lib/shop")).is_ok());
}

/// The env file belongs to the app's user, who can rewrite it: it must never sit where a
/// program running as root reads every file of a directory (bash-completion sources all
/// of `/etc/bash_completion.d`, cronie reads all of `/etc/cron.d`, Nginx includes
/// `sites-enabled/*`, useradd copies `/etc/skel` into each new home) nor carry a name
/// such a reader takes by its extension (polkit's `*.pkla` in a `/var/lib` tree).
#[test]
fn env_files_are_refused_in_directories_whose_every_file_a_program_reads() {
    let env = |path: &str| format!("{MINIMAL}\n[env]\npath = \"{path}\"\n");
    for (bad, expect) in [
        ("/etc/bash_completion.d/shop.env", "`bash_completion.d`"),
        ("/etc/cron.d/shop.env", "`cron.d`"),
        ("/etc/nginx/sites-enabled/shop.env", "`sites-enabled`"),
        ("/etc/skel/shop.env", "`skel`"),
        ("/etc/sudoers.d/shop.env", "`sudoers.d`"),
        ("/srv/shop/conf.d/app.env", "`conf.d`"),
        (
            "/var/lib/polkit-1/localauthority/50-local.d/x.env",
            "`50-local.d`",
        ),
        ("/var/lib/polkit-1/shop.pkla", "`*.env`"),
        ("/opt/shop/config", "`*.env`"),
    ] {
        let e = err(&env(bad));
        assert!(e.contains(":11:8: `env.path`"), "{bad}: {e}");
        assert!(e.contains(expect), "{bad}: {e}");
    }
    for ok in [
        "/etc/ssh/shop.env",
        "/etc/de mo; touch /tmp/pwned-env.env",
        "/srv/f5-env/demo.env",
        "/opt/shop/shared/.env",
    ] {
        assert!(load(&env(ok)).is_ok(), "{ok}");
    }
}

#[test]
fn type_errors_come_with_position() {
    let text = MINIMAL.replace("name = \"web-1\"", "name = 7");
    insta::assert_snapshot!(err(&text), @"inventory/staging.toml:7:8: invalid type: integer `7`, expected a string");
}

#[test]
fn syntax_errors_come_with_position() {
    let text = "[app\nname = 1\n";
    let e = err(text);
    assert!(e.starts_with("inventory/staging.toml:1:"), "{e}");
}

#[test]
fn migrate_host_is_the_tagged_one_else_the_first() {
    let text = format!("{MINIMAL}\n[[hosts]]\nname = \"web-2\"\nroles = [\"web\", \"migrate\"]\n");
    let inv = load(&text).unwrap();
    assert_eq!(inv.hosts[inv.migrate_host].name, "web-2");
}

#[test]
fn overlapping_shared_paths_and_shipits_own_names_are_refused_where_written() {
    let with = |dirs: &str, files: &str| {
        format!(
            "{MINIMAL}\n[artifact]\npath = \"dist\"\nshared_dirs = [{dirs}]\nshared_files = [{files}]\n"
        )
    };
    let e = err(&with("\"public\", \"public/uploads\"", ""));
    assert!(
        e.contains(":12:26: `artifact.shared_dirs`: \"public/uploads\" lies inside \"public\" (with `artifact.shared_dirs`, line 12)"),
        "{e}"
    );
    // Inner first, across the two lists, and duplicates.
    let e = err(&with("\"storage/logs\"", "\"storage\""));
    assert!(
        e.contains(":13:17: `artifact.shared_files`: \"storage/logs\" lies inside \"storage\""),
        "{e}"
    );
    let e = err(&with("\"a\", \"a\"", ""));
    assert!(e.contains("\"a\" is listed twice"), "{e}");
    let e = err(&with("", "\"config.yml\", \"config.yml\""));
    assert!(e.contains("\"config.yml\" is listed twice"), "{e}");
    // Siblings with a common prefix of characters are not nested.
    let ok = with("\"public\", \"public2\", \"pub/lic\"", "\"public.txt\"");
    assert_eq!(load(&ok).unwrap().artifact.unwrap().shared_dirs.len(), 3);
    for (dirs, files) in [
        ("\".shipit\"", ""),
        ("\".shipit/x\"", ""),
        ("", "\"REVISION\""),
        ("", "\"REVISION/x\""),
        ("", "\"a/b.shipit-delta\""),
    ] {
        let e = err(&with(dirs, files));
        assert!(e.contains("belong"), "{dirs} {files}: {e}");
        assert!(e.contains("share another path"), "{e}");
    }
    for bad in [
        "/abs", "a/../b", "./a", "a//b", "a/", "", "..", "a\\nb", "a\\tb",
    ] {
        let e = err(&with(&format!("\"{bad}\""), ""));
        assert!(e.contains("`artifact.shared_dirs`"), "{bad:?}: {e}");
    }
}

#[test]
fn the_local_transport_takes_one_host() {
    let one = "transport = \"local\"\n[app]\nname = \"demo\"\ndeploy_to = \"/tmp/demo/app\"\n\n[[hosts]]\nname = \"a\"\nroles = [\"web\", \"migrate\"]\n";
    assert_eq!(load(one).unwrap().hosts.len(), 1);
    let two = format!("{one}\n[[hosts]]\nname = \"b\"\n");
    let e = err(&two);
    assert!(
        e.contains(":10:1: `hosts`: the local transport deploys to this machine only, which the `[[hosts]]` at line 6 already is"),
        "{e}"
    );
}

#[test]
fn local_transport_needs_no_hosts() {
    let text = "transport = \"local\"\n[app]\nname = \"demo\"\ndeploy_to = \"/tmp/demo/app\"\n";
    let inv = load(text).unwrap();
    assert_eq!(inv.hosts.len(), 1);
    assert_eq!(inv.hosts[0].name, "local");
}

#[test]
fn local_transport_resolves_a_relative_deploy_to_against_the_project() {
    let text = "transport = \"local\"\n[app]\nname = \"demo\"\ndeploy_to = \"target/demo\"\n";
    assert_eq!(load(text).unwrap().app.deploy_to, "/project/target/demo");
    let ssh = text.replace("transport = \"local\"\n", "");
    assert!(err(&ssh).contains("must be an absolute path"));
}

#[test]
fn paths_resolve_against_base_and_home() {
    let text = format!(
        "{MINIMAL}\n[ssh]\nidentity = \"~/.ssh/id_ed25519\"\nknown_hosts = \"inventory/known_hosts\"\n"
    );
    let inv = load(&text).unwrap();
    assert_eq!(
        inv.ssh.identity.unwrap(),
        Path::new("/home/me/.ssh/id_ed25519")
    );
    assert_eq!(
        inv.ssh.known_hosts.unwrap(),
        Path::new("/project/inventory/known_hosts")
    );
}

#[test]
fn health_is_one_table_or_several() {
    let one = format!("{MINIMAL}[health]\nurl = \"http://127.0.0.1:3000/readyz\"\n");
    assert_eq!(load(&one).unwrap().health.len(), 1);
    assert!(load(MINIMAL).unwrap().health.is_empty());

    let two = format!(
        "{MINIMAL}[[health]]\nurl = \"http://127.0.0.1:3000/healthz\"\nexpect_body = \"ok\"\n[[health]]\ncommand = \"test -f ready\"\ntimeout = \"5s\"\n"
    );
    let inv = load(&two).unwrap();
    assert_eq!(inv.health.len(), 2);
    assert!(matches!(&inv.health[1].check, HealthCheck::Command(c) if c == "test -f ready"));
    assert_eq!(inv.health[1].timeout, Duration::from_secs(5));
    assert_eq!(inv.health[0].timeout, Duration::from_secs(60));

    let typo = format!("{MINIMAL}[[health]]\ncommand = \"true\"\n[[health]]\nurll = \"x\"\n");
    let e = err(&typo);
    assert!(e.contains("`urll`") && e.contains("`url`"), "{e}");
    let neither =
        format!("{MINIMAL}[[health]]\ncommand = \"true\"\n[[health]]\ntimeout = \"1s\"\n");
    assert!(err(&neither).contains("set `url` or `command`"));
}

#[test]
fn host_key_pin_is_checked() {
    let text = MINIMAL.replace(
        "address = \"10.0.0.5\"",
        "address = \"10.0.0.5\"\nhost_key = \"ssh-ed25519 notbase64!\"",
    );
    assert!(err(&text).contains("`hosts[0].host_key`: the key is not valid base64"));
}

#[test]
fn amounts_round_up() {
    assert_eq!(Amount::Percent(25).of(3), 1);
    assert_eq!(Amount::Percent(25).of(10), 3);
    assert_eq!(Amount::Percent(100).of(7), 7);
    assert_eq!(Amount::Count(2).of(7), 2);
}

#[test]
fn selection_by_name_and_role() {
    let text = format!("{MINIMAL}\n[[hosts]]\nname = \"worker-1\"\nroles = [\"worker\"]\n");
    let inv = load(&text).unwrap();
    let picked = inv.select(&[], &["worker".into()]).unwrap();
    assert_eq!(picked.len(), 1);
    let e = inv.select(&["web-9".into()], &[]).unwrap_err().to_string();
    assert!(e.contains("did you mean `web-1`"), "{e}");
}

mod blue_green {
    use super::*;

    const BASE: &str = "[app]\nname = \"shop\"\ndeploy_to = \"/opt/shop\"\n\n[[hosts]]\nname = \"h1\"\naddress = \"10.0.0.1\"\n\n";

    fn problems(rest: &str) -> String {
        let text = format!("{BASE}{rest}");
        let env = |_: &str| None;
        let ctx = LoadContext {
            base_dir: Path::new("/project"),
            home: None,
            env: &env,
            need_secrets: false,
        };
        match parse(&text, Path::new("prod.toml"), &ctx) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    const UNIT: &str =
        "[[systemd]]\nunit = \"shop@.service\"\ntemplate = \"u\"\nports = [3001, 3002]\n\n";
    const SITE: &str = "[nginx]\nsite = \"shop\"\ntemplate = \"s\"\n\n";
    const CHECK: &str = "[[health]]\nurl = \"http://127.0.0.1:{{ port }}/healthz\"\n\n";

    #[test]
    fn a_complete_blue_green_unit_loads() {
        assert_eq!(problems(&format!("{UNIT}{SITE}{CHECK}")), "");
        let inv = crate::inventory::for_tests(&format!("{BASE}{UNIT}{SITE}{CHECK}"));
        let (unit, bg) = inv.blue_green().unwrap();
        assert_eq!(unit.instance(3002), "shop@3002.service");
        assert_eq!(bg.ports, [3001, 3002]);
        assert_eq!(bg.drain, std::time::Duration::from_secs(10));
        assert!(!bg.keep_idle);
        assert!(inv.health[0].check.on_live_port());
        match inv.health[0].check.at_port(Some(3002)) {
            HealthCheck::Url { url, port, .. } => {
                assert_eq!(
                    (url.as_str(), port),
                    ("http://127.0.0.1:3002/healthz", 3002)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_blue_green_needs_is_named() {
        for (rest, want) in [
            (
                format!(
                    "{}{SITE}{CHECK}",
                    UNIT.replace("shop@.service", "shop.service")
                ),
                "must be a template unit such as `app@.service`",
            ),
            (
                format!(
                    "{}{SITE}{CHECK}",
                    UNIT.replace("[3001, 3002]", "[3001, 3001]")
                ),
                "must be two different ports",
            ),
            (
                format!(
                    "{}{SITE}{CHECK}",
                    UNIT.replace("[3001, 3002]", "[3001, 70000]")
                ),
                "must be two different ports",
            ),
            (
                format!("{}{SITE}{CHECK}", UNIT.replace("[3001, 3002]", "[3001]")),
                "must be two different ports",
            ),
            (format!("{UNIT}{CHECK}"), "needs an `[nginx]` site"),
            (
                format!("{UNIT}{SITE}[[health]]\nurl = \"http://127.0.0.1/\"\n"),
                "needs a health check of the new instance on its own port",
            ),
            (
                format!("{SITE}{CHECK}"),
                "no `[[systemd]]` unit has `ports`",
            ),
            (
                format!(
                    "{}{SITE}{CHECK}",
                    UNIT.replace("ports = [3001, 3002]\n", "drain = \"5s\"\n")
                ),
                "applies only to a blue-green unit",
            ),
            (
                format!(
                    "{}{SITE}{CHECK}",
                    UNIT.replace("ports", "drain = \"2h\"\nports")
                ),
                "must be at most 1h",
            ),
            (
                format!("{UNIT}{}{SITE}{CHECK}", UNIT.replace("shop@", "other@")),
                "only one unit can be blue-green",
            ),
        ] {
            let got = problems(&rest);
            assert!(got.contains(want), "want {want:?} in:\n{got}\nfor:\n{rest}");
        }
    }
}

mod extends {
    use super::*;

    /// Loads `inventory/prod.toml` with the other files of `files` readable by path.
    fn load_files(stage: &str, files: &[(&str, &str)]) -> Result<Inventory, InventoryError> {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect();
        let read = move |path: &Path| {
            files
                .iter()
                .find(|(p, _)| Path::new(p) == path)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| "No such file or directory (os error 2)".to_owned())
        };
        let env = |_: &str| None;
        let ctx = LoadContext {
            base_dir: Path::new("/project"),
            home: Some(Path::new("/home/me")),
            env: &env,
            need_secrets: false,
        };
        parse_with(stage, Path::new("inventory/prod.toml"), &ctx, &read)
    }

    const BASE: &str = r#"[app]
name = "shop"
deploy_to = "/opt/shop"
keep_releases = 3

[ssh]
user = "deploy"
port = 2222

[[hosts]]
name = "base-1"

[env]
path = "/etc/shop.env"
vars = { NODE_ENV = "production", PORT = "3000" }

[env.secrets.API_KEY]
command = "op read op://base/api"

[[hooks]]
at = "after_switch"
command = "echo base hook"

[health]
url = "http://127.0.0.1:3000/healthz"
timeout = "20s"

[tasks.seed]
command = "npm run seed"
once = true
"#;

    #[test]
    fn tables_merge_key_by_key_and_arrays_of_tables_are_replaced() {
        let stage = r#"extends = "base.toml"

[app]
keep_releases = 10

[[hosts]]
name = "prod-1"
[[hosts]]
name = "prod-2"

[env.vars]
PORT = "8080"

[env.secrets.API_KEY]
file = "api.key"

[[hooks]]
at = "after_restart"
command = "echo prod hook"

[tasks.seed]
command = "npm run seed:prod"
"#;
        let inv = load_files(stage, &[("inventory/base.toml", BASE)]).unwrap();
        assert_eq!(inv.bases, [Path::new("inventory/base.toml")]);
        assert_eq!((inv.app.name.as_str(), inv.app.keep_releases), ("shop", 10));
        assert_eq!((inv.ssh.user.as_str(), inv.ssh.port), ("deploy", 2222));
        let hosts: Vec<(&str, u16)> = inv
            .hosts
            .iter()
            .map(|h| (h.name.as_str(), h.port))
            .collect();
        assert_eq!(hosts, [("prod-1", 2222), ("prod-2", 2222)]);
        let env = inv.env.as_ref().unwrap();
        assert_eq!(env.path, "/etc/shop.env");
        let vars: Vec<(&str, &str)> = env
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(vars, [("NODE_ENV", "production"), ("PORT", "8080")]);
        // A secret's source is replaced whole: `file` alone, not `file` and `command`.
        assert_eq!(
            env.sources[0].from,
            SecretFrom::File("/project/api.key".into())
        );
        assert_eq!(env.sources[0].origin, "inventory/prod.toml:14:14");
        let hooks: Vec<&str> = inv.hooks.iter().map(|h| h.command.as_str()).collect();
        assert_eq!(hooks, ["echo prod hook"]);
        // The stage file says nothing of health: the base's check stands.
        assert_eq!(inv.health.len(), 1);
        assert_eq!(inv.health[0].timeout, Duration::from_secs(20));
        let seed = &inv.tasks["seed"];
        assert_eq!(
            (seed.command.as_str(), seed.once),
            ("npm run seed:prod", true)
        );
    }

    #[test]
    fn health_checks_are_one_list_replaced_whole() {
        let stage = "extends = \"base.toml\"\n[[health]]\ncommand = \"true\"\n[[health]]\ncommand = \"test -f /x\"\n";
        let inv = load_files(stage, &[("inventory/base.toml", BASE)]).unwrap();
        let checks: Vec<String> = inv
            .health
            .iter()
            .map(|h| format!("{:?}", h.check))
            .collect();
        assert_eq!(checks, ["Command(\"true\")", "Command(\"test -f /x\")"]);
        assert_eq!(inv.health[0].timeout, Duration::from_secs(60));
        // `[health]` over `[health]`: replaced, not merged into `url` and `command` at once.
        let stage = "extends = \"base.toml\"\n[health]\ncommand = \"true\"\n";
        let inv = load_files(stage, &[("inventory/base.toml", BASE)]).unwrap();
        assert!(matches!(&inv.health[0].check, HealthCheck::Command(c) if c == "true"));
    }

    #[test]
    fn problems_name_the_file_the_value_came_from() {
        let base = BASE
            .replace("keep_releases = 3", "keep_releases = 1\nnmae = \"x\"")
            .replace("port = 2222", "port = \"x\"");
        let stage = "extends = \"base.toml\"\n[app]\ndeploy_too = \"/opt/y\"\n";
        // Unknown keys: every file's, each with its own position.
        insta::assert_snapshot!(
            load_files(stage, &[("inventory/base.toml", &base)]).unwrap_err().to_string(),
            @r"
        inventory/prod.toml:3:1: unknown key `deploy_too` in [app] (did you mean `deploy_to`?)
        inventory/base.toml:5:1: unknown key `nmae` in [app] (did you mean `name`?)
        "
        );
        let base = base.replace("nmae = \"x\"\n", "");
        let stage = "extends = \"base.toml\"\n[rollout]\nparallel = 0\n";
        // A type error in the base.
        insta::assert_snapshot!(
            load_files(stage, &[("inventory/base.toml", &base)]).unwrap_err().to_string(),
            @"inventory/base.toml:8:8: invalid type: string \"x\", expected i64"
        );
        let base = base.replace("port = \"x\"", "port = 22");
        // Bad values in both files, each where it is written.
        insta::assert_snapshot!(
            load_files(stage, &[("inventory/base.toml", &base)]).unwrap_err().to_string(),
            @r"
        inventory/base.toml:4:17: `app.keep_releases`: must be at least 2 (the current release and the one to roll back to)
        inventory/prod.toml:3:12: `rollout.parallel`: must be at least 1
        "
        );
    }

    #[test]
    fn a_bad_value_merged_into_a_stage_section_is_still_the_bases() {
        let base = "[app]\nname = \"shop\"\ndeploy_to = \"/opt/shop\"\n[[hosts]]\nname = \"a\"\n\n[nginx]\nsite = \".hidden\"\n\n[[systemd]]\nunit = \"shop\"\ntemplate = \"u\"\n\n[migrate]\ncommand = \"x\"\nmaintenance = true\n";
        let stage = "extends = \"base.toml\"\n[nginx]\ntemplate = \"deploy/site.conf\"\n";
        insta::assert_snapshot!(
            load_files(stage, &[("inventory/base.toml", base)]).unwrap_err().to_string(),
            @r#"
        inventory/base.toml:11:8: `systemd[0].unit`: "shop" must be a unit file name such as `app.service`
        inventory/base.toml:8:8: `nginx.site`: must be a file name: letters, digits, `.`, `_` and `-`, not starting with `.`
        "#
        );
    }

    #[test]
    fn a_missing_key_points_at_the_section_that_lacks_it() {
        let base = "[app]\nname = \"shop\"\n\n[[hosts]]\nname = \"a\"\n";
        let err = |stage: &str| {
            load_files(stage, &[("inventory/base.toml", base)])
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("extends = \"base.toml\"\n"),
            "inventory/base.toml:1:1: missing required key `app.deploy_to`"
        );
        assert_eq!(
            err("extends = \"base.toml\"\n\n[app]\nkeep_releases = 4\n"),
            "inventory/prod.toml:3:1: missing required key `app.deploy_to`"
        );
        let ok = load_files(
            "extends = \"base.toml\"\n[app]\ndeploy_to = \"/opt/shop\"\n",
            &[("inventory/base.toml", base)],
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn a_chain_of_bases_is_followed_and_a_cycle_refused() {
        let common = "[app]\nname = \"shop\"\ndeploy_to = \"/opt/shop\"\n";
        let base = "extends = \"../common/app.toml\"\n[[hosts]]\nname = \"a\"\n";
        let inv = load_files(
            "extends = \"base.toml\"\n[app]\nkeep_releases = 4\n",
            &[("inventory/base.toml", base), ("common/app.toml", common)],
        )
        .unwrap();
        assert_eq!(inv.app.keep_releases, 4);
        assert_eq!(
            inv.bases,
            [
                Path::new("inventory/base.toml"),
                Path::new("common/app.toml")
            ]
        );

        let looping = "extends = \"./prod.toml\"\n[[hosts]]\nname = \"a\"\n";
        insta::assert_snapshot!(
            load_files("extends = \"base.toml\"\n", &[("inventory/base.toml", looping)])
                .unwrap_err()
                .to_string(),
            @"inventory/base.toml:1:11: `extends`: a cycle: `inventory/prod.toml` extends `inventory/base.toml` extends `inventory/prod.toml`; a base must not extend a file that extends it"
        );
        let own = load_files("extends = \"prod.toml\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            own.starts_with("inventory/prod.toml:1:11: `extends`: a cycle"),
            "{own}"
        );
    }

    #[test]
    fn a_base_that_cannot_be_read_or_parsed_is_named() {
        insta::assert_snapshot!(
            load_files("extends = \"missing.toml\"\n", &[]).unwrap_err().to_string(),
            @"inventory/prod.toml:1:11: `extends`: cannot read `inventory/missing.toml`: No such file or directory (os error 2)"
        );
        insta::assert_snapshot!(
            load_files("extends = \"base.toml\"\n", &[("inventory/base.toml", "[app]\nname = \n")])
                .unwrap_err()
                .to_string(),
            @"inventory/base.toml:2:8: string values must be quoted, expected literal string"
        );
        insta::assert_snapshot!(
            load_files("extends = [\"base.toml\"]\n", &[]).unwrap_err().to_string(),
            @r#"inventory/prod.toml:1:11: `extends`: must be the path of a base file, e.g. "base.toml""#
        );
        // Without a reader (`parse`), a file that extends another is refused, not half-read.
        let e = load("extends = \"base.toml\"\n").unwrap_err().to_string();
        assert!(
            e.contains("`extends`: cannot read `inventory/base.toml`"),
            "{e}"
        );
    }
}

#[test]
fn secret_sources_are_checked_where_written() {
    let text = format!(
        r#"{MINIMAL}
[env]
path = "/etc/shop.env"
from_env = ["TOKEN"]
[env.secrets.TOKEN]
command = "op read op://x"
[env.secrets.BOTH]
command = "a"
file = "b"
[env.secrets.NEITHER]
[env.secrets.bad-name]
file = "x"
[env.secrets.EMPTY]
command = " "
"#
    );
    insta::assert_snapshot!(err(&text), @r#"
    inventory/staging.toml:12:12: secrets named in `env.from_env` are not set in the environment: TOKEN; export them (in CI: from the secret store) and run again
    inventory/staging.toml:16:11: `env.secrets.BOTH`: set `command` or `file`, not both
    inventory/staging.toml:22:11: `env.secrets.EMPTY.command`: must not be empty
    inventory/staging.toml:18:1: `env.secrets.NEITHER`: set `command` (its stdout is the value) or `file` (its content is the value)
    inventory/staging.toml:13:14: `env.secrets.TOKEN`: `TOKEN` is also set in `env.from_env`; a key comes from one place only
    inventory/staging.toml:19:14: `env.secrets`: "bad-name" is not a valid environment variable name (letters, digits, `_`; not starting with a digit)
    "#);
    let ok = format!(
        "{MINIMAL}\n[env]\npath = \"/etc/shop.env\"\nsecrets.DB = {{ file = \"~/.secrets/db\" }}\nsecrets.KEY = {{ file = \"/run/secrets/key\" }}\n"
    );
    let inv = load(&ok).unwrap();
    let files: Vec<&SecretFrom> = inv
        .env
        .as_ref()
        .unwrap()
        .sources
        .iter()
        .map(|s| &s.from)
        .collect();
    assert_eq!(
        files,
        [
            &SecretFrom::File("/home/me/.secrets/db".into()),
            &SecretFrom::File("/run/secrets/key".into())
        ]
    );
}

#[test]
fn notifiers_are_checked_and_default_to_both_outcomes_in_30s() {
    let text = format!(
        "{MINIMAL}\n[[notify]]\ncommand = \"curl -d @- http://127.0.0.1:9/\"\n[[notify]]\ncommand = \"x\"\non = [\"failure\"]\ntimeout = \"5s\"\n"
    );
    let inv = load(&text).unwrap();
    assert_eq!(
        inv.notify,
        [
            Notify {
                command: "curl -d @- http://127.0.0.1:9/".into(),
                on_success: true,
                on_failure: true,
                timeout: Duration::from_secs(30),
            },
            Notify {
                command: "x".into(),
                on_success: false,
                on_failure: true,
                timeout: Duration::from_secs(5),
            },
        ]
    );
    let bad = format!(
        "{MINIMAL}\n[[notify]]\non = [\"failur\"]\n[[notify]]\ncommand = \"x\"\non = []\ntimeout = \"soon\"\n[[notify]]\ncommand = \"y\"\non = [\"failur\"]\n"
    );
    insta::assert_snapshot!(err(&bad), @r#"
    inventory/staging.toml:10:1: missing required key `notify[0].command`
    inventory/staging.toml:14:6: `notify[1].on`: name at least one of "success", "failure" (or remove `on`: both)
    inventory/staging.toml:15:11: `notify[1].timeout`: "soon" is not a duration (expected number at 0); write e.g. "30s", "2m", "1h"
    inventory/staging.toml:18:7: `notify[2].on`: unknown outcome "failur" (did you mean `failure`?); one of: success, failure
    "#);
}
