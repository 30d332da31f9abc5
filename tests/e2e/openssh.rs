//! OpenSSH compatibility against real sshd hosts: `~/.ssh/config` (aliases, `Include`,
//! `Host *` defaults, the inventory winning, `ProxyJump`, a refused `ProxyCommand`) and
//! known_hosts as OpenSSH reads it (`@revoked`, `@cert-authority` host certificates made
//! with `ssh-keygen -s`, wildcards and negation, a stale entry beside the good one).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::support::{Fleet, FleetOptions, HostCa};

/// Writes `~/.ssh/<file>` under the fleet's HOME (what shipit runs with).
fn home_ssh(fleet: &Fleet, file: &str, text: &str) -> PathBuf {
    let dir = fleet.home().join(".ssh");
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

/// An inventory that says only what it must: the app, the known_hosts file if any, and the
/// host names; how to reach each host is left to `~/.ssh/config`.
fn names_only(fleet: &Fleet, known: Option<&Path>, hosts: &[&str]) -> PathBuf {
    let mut text = "[app]\nname = \"demo\"\ndeploy_to = \"/opt/demo\"\n\n".to_owned();
    if let Some(known) = known {
        text.push_str(&format!("[ssh]\nknown_hosts = \"{}\"\n\n", known.display()));
    }
    for name in hosts {
        text.push_str(&format!("[[hosts]]\nname = \"{name}\"\n\n"));
    }
    write(fleet.dir(), &format!("{}.toml", hosts.join("-")), &text)
}

fn check_verbose(fleet: &Fleet, inv: &Path, extra: &[&str]) -> (i32, String) {
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["check", "test", "-v", "--progress", "never", "-i"])
        .arg(inv)
        .args(extra));
    (code, format!("{stdout}{stderr}"))
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn alias_resolves_through_ssh_config_with_include_and_host_star_default() {
    let fleet = Fleet::start(2);
    let (h1, h2) = (fleet.host("h1"), fleet.host("h2"));
    let main = home_ssh(
        &fleet,
        "config",
        &format!(
            "# shipit e2e\nInclude config.d/*.conf\n\nHost *\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  ConnectTimeout 7\n",
            fleet.client_key().display()
        ),
    );
    let included = home_ssh(
        &fleet,
        "config.d/fleet.conf",
        &format!(
            "Host web-1\n  HostName 127.0.0.1\n  Port {}\nHost web-?\n  HostName 127.0.0.1\n  Port {}\n",
            h1.port, h2.port
        ),
    );
    let inv = names_only(&fleet, Some(&fleet.known_hosts()), &["web-1", "web-2"]);
    let (code, out) = check_verbose(&fleet, &inv, &[]);
    assert_eq!(code, 0, "{out}");
    // First match wins: web-1 takes the first block's port, web-2 the pattern's.
    let inc = included.display().to_string();
    for line in [
        format!("web-1: address 127.0.0.1 (for `web-1`) (`{inc}` line 2)"),
        format!("web-1: port {} (`{inc}` line 3)", h1.port),
        format!("web-2: port {} (`{inc}` line 6)", h2.port),
        format!("web-2: user root (`{}` line 5)", main.display()),
        format!(
            "web-1: identity {} (`{}` line 6)",
            fleet.client_key().display(),
            main.display()
        ),
        format!("web-1: connect_timeout 7s (`{}` line 8)", main.display()),
        "web-1: keepalive_interval 15s (default)".to_owned(),
    ] {
        assert!(out.contains(&line), "expected {line:?} in:\n{out}");
    }
    // Each host really was the one the alias names, and other commands go the same way.
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["exec", "test", "--json", "-i"])
        .arg(&inv)
        .args(["--", "hostname"]));
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for (alias, host) in [("web-1", "h1"), ("web-2", "h2")] {
        let out = host_entry(&report, alias)["stdout"]
            .as_str()
            .unwrap()
            .trim()
            .to_owned();
        assert_eq!(out, host, "{report}");
    }

    // --no-ssh-config: `web-1` is just a name nothing resolves.
    let (code, out) = check_verbose(&fleet, &inv, &["--no-ssh-config"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot reach `web-1` at web-1:22"), "{out}");
}

#[test]
fn the_fleets_own_openssh_config_is_enough() {
    // The config `ssh -F` uses for this fleet (HostName, Port, User, IdentityFile,
    // UserKnownHostsFile, GlobalKnownHostsFile /dev/null), as the user's ~/.ssh/config; the
    // inventory names only the hosts.
    let fleet = Fleet::start(2);
    std::fs::create_dir_all(fleet.home().join(".ssh")).unwrap();
    let config = fleet.home().join(".ssh/config");
    std::fs::copy(fleet.ssh_config(), &config).unwrap();
    let inv = names_only(&fleet, None, &["h1", "h2"]);
    let (code, out) = check_verbose(&fleet, &inv, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "h2: known_hosts {} (`{}` line ",
            fleet.known_hosts().display(),
            config.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "h1: host key ssh-ed25519 {}, trusted by `{}` line 1",
            openssh_fingerprint(fleet.dir(), &fleet.host("h1").host_keys[0]),
            fleet.known_hosts().display()
        )),
        "{out}"
    );
    // The same run with the inventory alone cannot even find the hosts.
    let (code, _) = check_verbose(&fleet, &inv, &["--no-ssh-config"]);
    assert_eq!(code, 1);
}

#[test]
fn the_inventory_beats_ssh_config() {
    let fleet = Fleet::start(1);
    let h1 = fleet.host("h1");
    // The config points at a closed port and a user that does not exist.
    home_ssh(
        &fleet,
        "config",
        &format!(
            "Host h1\n  HostName 127.0.0.1\n  Port {}\n  User nosuchuser\n  ConnectTimeout 1\nHost *\n  IdentityFile {}\n",
            closed_port(),
            fleet.client_key().display()
        ),
    );
    let inv = write(
        fleet.dir(),
        "wins.toml",
        &format!(
            "[app]\nname = \"demo\"\ndeploy_to = \"/opt/demo\"\n\n[ssh]\nuser = \"root\"\nknown_hosts = \"{}\"\nconnect_timeout = \"5s\"\n\n[[hosts]]\nname = \"h1\"\nport = {}\n",
            fleet.known_hosts().display(),
            h1.port
        ),
    );
    let (code, out) = check_verbose(&fleet, &inv, &[]);
    assert_eq!(code, 0, "{out}");
    let file = inv.display().to_string();
    for line in [
        format!(
            "h1: port {} (inventory `{file}` (hosts.port or ssh.port))",
            h1.port
        ),
        format!("h1: user root (inventory `{file}` (ssh.user))"),
        format!("h1: connect_timeout 5s (inventory `{file}` (ssh.connect_timeout))"),
    ] {
        assert!(out.contains(&line), "expected {line:?} in:\n{out}");
    }

    // Where the inventory is silent, the config's value is used: here the user `nosuchuser`.
    let silent = write(
        fleet.dir(),
        "silent.toml",
        &std::fs::read_to_string(&inv)
            .unwrap()
            .replace("user = \"root\"\n", ""),
    );
    let (code, out) = check_verbose(&fleet, &silent, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("`nosuchuser@h1` refused every key"), "{out}");
}

#[test]
fn proxy_jump_from_ssh_config_and_a_refused_proxy_command() {
    let fleet = Fleet::start(2);
    let (bastion, target) = (fleet.host("h1"), fleet.host("h2"));
    let known = bastion_only_target(&fleet);
    let config = home_ssh(
        &fleet,
        "config",
        &format!(
            "Host inner\n  HostName only-via-bastion\n  Port {}\n  ProxyJump gate\nHost gate\n  HostName 127.0.0.1\n  Port {}\nHost direct\n  HostName 127.0.0.1\n  ProxyCommand nc %h %p\nHost *\n  User root\n  IdentityFile {}\n",
            target.port,
            bastion.port,
            fleet.client_key().display()
        ),
    );
    let inv = names_only(&fleet, Some(&known), &["inner"]);
    let (code, out) = check_verbose(&fleet, &inv, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("inner: jump root@127.0.0.1:{}", bastion.port)),
        "{out}"
    );
    // Each of the bastion's settings with its own line, and the line that vouched for it.
    assert!(
        out.contains(&format!(
            "inner: jump port {} (`{}` line 7)",
            bastion.port,
            config.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("inner: jump host key ssh-ed25519")
            && out.contains(&format!("trusted by `{}` line", known.display())),
        "{out}"
    );
    assert!(
        bastion.log().contains("Accepted publickey"),
        "{}",
        bastion.log()
    );

    // A host behind a ProxyCommand is refused before anything connects, naming the line.
    let inv = names_only(&fleet, Some(&known), &["direct"]);
    let (code, out) = check_verbose(&fleet, &inv, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!(
            "host `direct`: `{}` line 10 sets `ProxyCommand`",
            config.display()
        )),
        "{out}"
    );
}

#[test]
fn a_bad_ssh_config_line_is_named_and_nothing_connects() {
    let fleet = Fleet::start(1);
    let h1 = fleet.host("h1");
    let config = home_ssh(&fleet, "config", "Host h1\n  Port twenty-two\n");
    let inv = write(
        fleet.dir(),
        "inv.toml",
        &inventory_text(&fleet, &["h1"], ""),
    );
    let (code, out) = check_verbose(&fleet, &inv, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!("`{}` line 2", config.display())) && out.contains("Port"),
        "{out}"
    );
    // (The fixture's readiness probe is the only connection the host saw.)
    assert!(!h1.log().contains("Accepted key"), "{}", h1.log());
}

#[test]
fn a_revoked_host_key_is_refused_even_beside_a_good_entry() {
    let fleet = Fleet::start(1);
    let h1 = fleet.host("h1");
    let known = write(
        fleet.dir(),
        "revoked_known_hosts",
        &format!(
            "[127.0.0.1]:{} {}\n# compromised\n@revoked * {}\n",
            h1.port, h1.host_keys[0], h1.host_keys[0]
        ),
    );
    let inv = with_known_hosts(&fleet, &known);
    let (code, report, stderr) = check_json(&fleet, &inv);
    assert_eq!(code, 1, "{stderr}");
    let entry = host_entry(&report, "h1");
    assert_eq!(entry["host_key_verified"], false);
    let problem = entry["problems"][0].as_str().unwrap();
    assert!(problem.contains("@revoked"), "{problem}");
    assert!(
        problem.contains(&format!("`{}` line 3", known.display())),
        "{problem}"
    );
    assert!(!h1.log().contains("Accepted publickey"), "{}", h1.log());
}

#[test]
fn wildcard_entries_match_and_negation_excludes() {
    let fleet = Fleet::start(1);
    let h1 = fleet.host("h1");
    let known = write(
        fleet.dir(),
        "wild_known_hosts",
        &format!("[127.0.0.?]:*\t{}\n", h1.host_keys[0]),
    );
    let inv = with_known_hosts(&fleet, &known);
    let (code, out) = check_verbose(&fleet, &inv, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("trusted by `{}` line 1", known.display())),
        "{out}"
    );

    let negated = write(
        fleet.dir(),
        "negated_known_hosts",
        // `[*]:*`, not `*`: a bare `*` would also match `127.0.0.1`, the name without the
        // port that OpenSSH (and shipit) fall back to when no entry names `[host]:port`.
        &format!(
            "[*]:*,![127.0.0.1]:{} {}\n",
            h1.port,
            h1.host_keys[0].replace(' ', "\t")
        ),
    );
    let inv = with_known_hosts(&fleet, &negated);
    let (code, out) = check_verbose(&fleet, &inv, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not known"), "{out}");
}

#[test]
fn a_stale_and_a_good_entry_for_one_host_connect_and_name_the_matching_line() {
    let fleet = Fleet::start(2);
    let (h1, h2) = (fleet.host("h1"), fleet.host("h2"));
    // The host was re-keyed; the old key (here: h2's) is still on record above the new one,
    // which is tab-separated. OpenSSH connects; so must shipit.
    let known = write(
        fleet.dir(),
        "stale_known_hosts",
        &format!(
            "# web\n[127.0.0.1]:{port} {stale}\n\n[127.0.0.1]:{port}\t{good}\n",
            port = h1.port,
            stale = h2.host_keys[0],
            good = h1.host_keys[0].replace(' ', "\t"),
        ),
    );
    let inv = with_known_hosts(&fleet, &known);
    let (code, out) = check_verbose(&fleet, &inv, &[]);
    assert_eq!(code, 0, "{out}");
    let fingerprint = openssh_fingerprint(fleet.dir(), &h1.host_keys[0]);
    assert!(
        out.contains(&format!(
            "h1: host key ssh-ed25519 {fingerprint}, trusted by `{}` line 4",
            known.display()
        )),
        "{out}"
    );
    let (_, report, _) = check_json(&fleet, &inv);
    let how = host_entry(&report, "h1")["host_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(how.ends_with("line 4"), "{how}");
    // Every command's verbose log says it too.
    let (code, _, stderr) = run(fleet
        .shipit()
        .args(["exec", "test", "-v", "--progress", "never", "-i"])
        .arg(&inv)
        .args(["--", "true"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "connected; host key ssh-ed25519 {fingerprint}, trusted by `{}` line 4",
            known.display()
        )),
        "{stderr}"
    );
}

/// A CA key made with ssh-keygen, and its public line.
fn make_ca(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let line: Vec<&str> = public.split_whitespace().take(2).collect();
    (key, line.join(" "))
}

fn ca_fleet(principals: &str, validity: &str) -> (tempfile::TempDir, String, Fleet) {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = make_ca(dir.path(), "host_ca");
    let fleet = Fleet::start_with(FleetOptions {
        hosts: 1,
        host_ca: Some(HostCa {
            key,
            principals: principals.to_owned(),
            validity: validity.to_owned(),
        }),
        ..FleetOptions::default()
    });
    (dir, public, fleet)
}

#[test]
fn a_host_certificate_signed_by_a_listed_authority_is_accepted() {
    let (_ca_dir, ca, fleet) = ca_fleet("127.0.0.1,web.example.com", "-5m:+1h");
    let h1 = fleet.host("h1");
    // No plain entry for the host: only the authority vouches for it.
    let known = write(
        fleet.dir(),
        "ca_known_hosts",
        &format!("# our CA\n@cert-authority [127.0.0.1]:* {ca}\n"),
    );
    let inv = with_known_hosts(&fleet, &known);
    let (code, out) = check_verbose(&fleet, &inv, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("certificate (key id \"h1\")")
            && out.contains(&format!(
                "the @cert-authority entry at `{}` line 2",
                known.display()
            )),
        "{out}"
    );
    assert!(h1.log().contains("Accepted publickey"), "{}", h1.log());

    // Another authority's key: the certificate proves nothing, and the plain key is not on
    // record either.
    let dir = tempfile::tempdir().unwrap();
    let (_, other_ca) = make_ca(dir.path(), "other_ca");
    let other = write(
        fleet.dir(),
        "other_ca_known_hosts",
        &format!("@cert-authority * {other_ca}\n"),
    );
    let (code, out) = check_verbose(&fleet, &with_known_hosts(&fleet, &other), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not known"), "{out}");

    // The authority revoked: refused.
    let revoked = write(
        fleet.dir(),
        "revoked_ca_known_hosts",
        &format!("@cert-authority * {ca}\n@revoked * {ca}\n"),
    );
    let (code, out) = check_verbose(&fleet, &with_known_hosts(&fleet, &revoked), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("@revoked"), "{out}");
}

#[test]
fn a_host_certificate_for_another_name_is_refused() {
    let (_ca_dir, ca, fleet) = ca_fleet("db.example.com", "-5m:+1h");
    let known = write(
        fleet.dir(),
        "ca_known_hosts",
        &format!("@cert-authority * {ca}\n"),
    );
    let (code, out) = check_verbose(&fleet, &with_known_hosts(&fleet, &known), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("it is for [\"db.example.com\"], not `127.0.0.1`"),
        "{out}"
    );
}

/// The standard test inventory for h1, trusting `known` instead of the fleet's file.
fn with_known_hosts(fleet: &Fleet, known: &Path) -> PathBuf {
    let file = format!("inv-{}.toml", known.file_name().unwrap().to_string_lossy());
    write(
        fleet.dir(),
        &file,
        &inventory_trusting(fleet, &["h1"], known),
    )
}

#[test]
fn host_key_alias_and_identity_files_from_the_config() {
    let fleet = Fleet::start(1);
    let h1 = fleet.host("h1");
    // The key is on record under an alias, as `HostKeyAlias` asks (no port: OpenSSH looks
    // an alias up as written).
    let known = write(
        fleet.dir(),
        "alias_known_hosts",
        &format!("lb-pool {}\n", h1.host_keys[0]),
    );
    let config = home_ssh(
        &fleet,
        "config",
        &format!(
            "Host h1\n  HostName 127.0.0.1\n  Port {}\n  HostKeyAlias lb-pool\n  User root\n  IdentitiesOnly yes\n  IdentityFile ~/.ssh/missing_key\n  IdentityFile {}\n  UserKnownHostsFile {}\n",
            h1.port,
            fleet.client_key().display(),
            known.display()
        ),
    );
    let inv = names_only(&fleet, None, &["h1"]);
    let (code, out) = check_verbose(&fleet, &inv, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("trusted by `{}` line 1", known.display())),
        "{out}"
    );
    // The missing key was skipped, the next one used.
    assert!(
        out.contains(&format!(
            "h1: identity {} (`{}` line 7)",
            fleet.home().join(".ssh/missing_key").display(),
            config.display()
        )),
        "{out}"
    );

    // Only unusable keys, and IdentitiesOnly: nothing to offer, and the message says why.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap().replace(
            &format!("  IdentityFile {}\n", fleet.client_key().display()),
            "",
        ),
    )
    .unwrap();
    let (code, out) = check_verbose(&fleet, &inv, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("no SSH key to offer for `h1`") && out.contains("missing_key"),
        "{out}"
    );
}

#[test]
fn an_expired_host_certificate_is_refused() {
    let (_ca_dir, ca, fleet) = ca_fleet("127.0.0.1", "-2h:-1h");
    let known = write(
        fleet.dir(),
        "ca_known_hosts",
        &format!("@cert-authority * {ca}\n"),
    );
    let (code, out) = check_verbose(&fleet, &with_known_hosts(&fleet, &known), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("it has expired"), "{out}");
    assert!(!fleet.host("h1").log().contains("Accepted publickey"));
}

#[test]
fn the_global_known_hosts_file_is_read_after_the_users() {
    let fleet = Fleet::start(2);
    let (h1, h2) = (fleet.host("h1"), fleet.host("h2"));
    // The user's file only has a stale key for h1; the global file (here named by
    // `GlobalKnownHostsFile`, by default /etc/ssh/ssh_known_hosts) has the right one.
    let user = write(
        fleet.dir(),
        "user_known_hosts",
        &format!("[127.0.0.1]:{} {}\n", h1.port, h2.host_keys[0]),
    );
    let global = write(
        fleet.dir(),
        "global_known_hosts",
        &format!(
            "# fleet keys\n[127.0.0.1]:{} {}\n",
            h1.port, h1.host_keys[0]
        ),
    );
    home_ssh(
        &fleet,
        "config",
        &format!("Host *\n  GlobalKnownHostsFile {}\n", global.display()),
    );
    let (code, out) = check_verbose(&fleet, &with_known_hosts(&fleet, &user), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("trusted by `{}` line 2", global.display())),
        "{out}"
    );
    // Without the global file the stale entry is all there is: a changed key.
    let (code, out) = check_verbose(
        &fleet,
        &with_known_hosts(&fleet, &user),
        &["--no-ssh-config"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("HOST KEY CHANGED"), "{out}");
}
