//! The static binary `scripts/dist.sh` builds: it has no program interpreter, and it runs
//! `shipit check` and `shipit deploy` from an empty root (no libc, no ld.so, no NSS modules),
//! reaching a real sshd host by a name only that root's /etc/hosts knows.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use crate::support::{Fleet, assert_success, clean_command, shipit_bin};

/// A name for h1 that only the empty root's /etc/hosts resolves.
const HOST_NAME: &str = "shipit-dist-target";

/// Where the in-root files are, as the binary sees them.
const KEY: &str = "/keys/id_ed25519";
const KNOWN_HOSTS: &str = "/keys/known_hosts";
const APP: &str = "/app";
const INVENTORY: &str = "/shipit.toml";

/// Variables `cargo test` sets for the test binary (besides `CARGO_PKG_*`, `CARGO_BIN_EXE_*`).
const CARGO_TEST_VARS: &[&str] = &[
    "CARGO",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "LD_LIBRARY_PATH",
];

/// Runs `scripts/dist.sh` once per test run (a release build: minutes on a small machine)
/// and returns the binary it made. A failed build is reported to every test, not retried.
fn dist_binary() -> &'static Path {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(build_dist) {
        Ok(binary) => binary,
        Err(e) => panic!("{e}"),
    }
}

fn build_dist() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut script = Command::new("bash");
    script.arg(root.join("scripts/dist.sh")).current_dir(root);
    // What `cargo test` set for this test binary would make the nested build differ from
    // one run by hand (ring's build script tracks CARGO_MANIFEST_DIR), and the two would
    // rebuild each other's output every time.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_")
            || CARGO_TEST_VARS.contains(&name.as_ref())
        {
            script.env_remove(name.as_ref());
        }
    }
    succeeded(&mut script, "scripts/dist.sh")?;
    let name = format!("shipit-{}", host_target());
    let dist = root.join("dist");
    succeeded(
        Command::new("sha256sum")
            .args(["-c", &format!("{name}.sha256")])
            .current_dir(&dist),
        "sha256sum -c of the dist checksum",
    )?;
    Ok(dist.join(name))
}

/// Runs `cmd`; an error with its output unless it exited 0.
fn succeeded(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// The host's target triple, as `rustc -vV` reports it (the script's default).
fn host_target() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    assert_success(&out, "rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("a host line in rustc -vV")
        .to_owned()
}

/// The ELF program header types of the file at `path` (64-bit little-endian only).
fn program_header_types(path: &Path) -> Vec<u32> {
    let elf = std::fs::read(path).expect("read the binary");
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF");
    assert_eq!(elf[5], 1, "not a little-endian ELF");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum)
        .map(|i| {
            let o = phoff + i * phentsize;
            u32::from_le_bytes(elf[o..o + 4].try_into().unwrap())
        })
        .collect()
}

/// The program header naming the interpreter (ld.so) of a dynamically linked program.
const PT_INTERP: u32 = 3;

#[test]
fn dist_binary_has_no_interpreter() {
    let types = program_header_types(dist_binary());
    assert!(!types.is_empty(), "no program headers");
    assert!(
        !types.contains(&PT_INTERP),
        "the dist binary names a program interpreter: {types:?}"
    );
    // The test's own debug binary is dynamically linked: the check above can fail.
    assert!(program_header_types(Path::new(shipit_bin())).contains(&PT_INTERP));
}

/// A root holding only `binary` as `/shipit`, the files under `/dev` it may open, an
/// /etc/hosts naming h1, the client key, known_hosts for h1 under that name, an artifact
/// directory and an inventory: nothing else (no /lib, no /usr, no ld.so, no nsswitch.conf).
fn empty_root(fleet: &Fleet, binary: &Path) -> PathBuf {
    let root = fleet.dir().join("empty-root");
    for d in ["dev", "etc", "keys", "tmp", "home", "app"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    for dev in ["null", "random", "urandom"] {
        // Mount points for bind mounts of this machine's devices (see `in_root`).
        std::fs::write(root.join("dev").join(dev), "").unwrap();
    }
    std::fs::copy(binary, root.join("shipit")).unwrap();
    write(
        &root.join("etc"),
        "hosts",
        &format!("127.0.0.1 localhost\n127.0.0.1 {HOST_NAME}\n"),
    );
    std::fs::copy(fleet.client_key(), root.join(&KEY[1..])).unwrap();
    std::fs::set_permissions(root.join(&KEY[1..]), std::fs::Permissions::from_mode(0o600)).unwrap();
    let h1 = fleet.host("h1");
    write(
        &root.join("keys"),
        "known_hosts",
        &format!("[{HOST_NAME}]:{} {}\n", h1.port, h1.host_keys[0]),
    );
    write(&root.join("app"), "VERSION", "dist\n");
    let inventory = inventory_text(fleet, &["h1"], &format!("[artifact]\npath = \"{APP}\"\n"))
        .replace(&fleet.client_key().display().to_string(), KEY)
        .replace(&fleet.known_hosts().display().to_string(), KNOWN_HOSTS)
        .replace(
            "address = \"127.0.0.1\"",
            &format!("address = \"{HOST_NAME}\""),
        );
    assert!(inventory.contains(HOST_NAME), "{inventory}");
    write(&root, &INVENTORY[1..], &inventory);
    root
}

/// `program args` chrooted into `root`, in a mount namespace of its own where /dev/null,
/// /dev/random and /dev/urandom are bind-mounted from this machine. Returns (exit code,
/// stdout, stderr).
fn in_root(root: &Path, program: &str, args: &[&str]) -> (i32, String, String) {
    const SCRIPT: &str = r#"root=$1; shift
for d in null random urandom; do mount --bind "/dev/$d" "$root/dev/$d" || exit 125; done
exec chroot "$root" "$@""#;
    let mut cmd = clean_command("unshare", Path::new("/home"));
    cmd.args(["--mount", "--propagation", "private", "--fork", "--"])
        .args(["sh", "-c", SCRIPT, "sh"])
        .arg(root)
        .arg(program)
        .args(args);
    run(&mut cmd)
}

#[test]
fn dist_binary_checks_and_deploys_from_an_empty_root_by_host_name() {
    let binary = dist_binary();
    let fleet = Fleet::start(1);
    let root = empty_root(&fleet, binary);

    // The root really is empty: the dynamically linked test binary cannot even start there.
    std::fs::copy(shipit_bin(), root.join("shipit-dynamic")).unwrap();
    let (code, _, stderr) = in_root(&root, "/shipit-dynamic", &["--version"]);
    assert_ne!(code, 0, "a dynamic binary ran in the empty root: {stderr}");
    std::fs::remove_file(root.join("shipit-dynamic")).unwrap();

    let (code, stdout, stderr) = in_root(
        &root,
        "/shipit",
        &["check", "test", "--json", "-i", INVENTORY],
    );
    assert_eq!(code, 0, "check from the empty root:\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("check's stdout is not JSON ({e}):\n{stdout}\n{stderr}"));
    let h1 = host_entry(&report, "h1");
    assert_eq!(h1["ok"], true, "{h1:#}");
    assert_eq!(h1["host_key_verified"], true, "{h1:#}");

    let (code, stdout, stderr) = in_root(
        &root,
        "/shipit",
        &["deploy", "test", "--json", "-i", INVENTORY],
    );
    assert_eq!(code, 0, "deploy from the empty root:\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("deploy's stdout is not JSON ({e}):\n{stdout}\n{stderr}"));
    let release = report["release"].as_str().expect("a release id");
    assert_eq!(
        fleet.sh_ok("h1", "readlink /opt/demo/current").trim(),
        format!("releases/{release}")
    );
    assert_eq!(fleet.sh_ok("h1", "cat /opt/demo/current/VERSION"), "dist\n");
}
