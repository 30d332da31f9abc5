//! What the deploy benchmarks share (`benches/deploy.rs` on loopback, `benches/wan.rs` behind
//! shaped links): the artifact generators and their byte-for-byte check on every host, the
//! plain-OpenSSH baseline, shipit's inventory and a timed shipit run. Each bench declares
//! the test fixture as `support` next to this module.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::{FLEET_DIR_IN_HOST, Fleet, Host};

/// Where the OpenSSH baseline and shipit deploy on a host.
pub const BASELINE_DIR: &str = "/opt/bench";
pub const SHIPIT_DIR: &str = "/opt/bench-shipit";

/// The soft limit on open files shipit runs with in these benchmarks, whatever the benchmark's
/// own: the usual default (systemd's and most shells'), so a run shows what a user's shipit
/// gets by with.
pub const SHIPIT_NOFILE: libc::rlim_t = 1024;

/// The artifact directory, and `md5sum`'s list of its files (`./path`), written next to it in
/// the fleet dir, which every host sees read-only at [`FLEET_DIR_IN_HOST`].
pub struct App {
    pub dir: PathBuf,
    md5_list: PathBuf,
}

impl App {
    /// Files of base64 text from /dev/urandom: compresses about like real bundles (~75%).
    /// Parts of 4 MB (3 MiB of random bytes, 4.05 MiB of text), the last one cut to what is
    /// left when `megabytes` is not a multiple of 4.
    pub fn make(dir: &Path, name: &str, megabytes: usize) -> App {
        let app = dir.join(name);
        std::fs::create_dir_all(&app).unwrap();
        let full = megabytes / 4;
        let rest = megabytes % 4;
        let mut script = format!(
            "for i in $(seq 1 {full}); do head -c 3145728 /dev/urandom | base64 > {}/part-$i.txt; done",
            app.display()
        );
        if rest > 0 || full == 0 {
            script.push_str(&format!(
                "\nhead -c 3145728 /dev/urandom | base64 | head -c {} > {}/part-{}.txt",
                rest.max(1) << 20,
                app.display(),
                full + 1
            ));
        }
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .status()
                .unwrap()
                .success()
        );
        App::hashed(dir, name)
    }

    /// A dependency tree of about `megabytes` MB: files of 1 KiB to 1 MiB, skewed to small
    /// ones (1 KiB × 1024^(u²), u uniform: median about 6 KiB, mean about 80 KiB, so about
    /// 3800 files for 300 MB, most bytes in the big ones), eight to a package under
    /// `node_modules/`;
    /// three in four are base64 text from a PRNG (compresses like [`App::make`]'s files), one
    /// in four source-like text (compresses well). Plus [`CHANGED`], see [`App::change`].
    pub fn make_tree(dir: &Path, name: &str, megabytes: usize) -> App {
        App::make_tree_of(dir, name, megabytes, Mix::Text)
    }

    /// [`App::make_tree`] with `mix` deciding what the files hold.
    pub fn make_tree_of(dir: &Path, name: &str, megabytes: usize, mix: Mix) -> App {
        let root = dir.join(name);
        let target = (megabytes as u64) << 20;
        let mut rng = Rng(0x5eed_cafe_f00d_d00d);
        let mut buf = Vec::new();
        let (mut total, mut n) = (0u64, 0usize);
        while total < target {
            let u = rng.unit();
            let size = (1024.0 * 1024f64.powf(u * u)) as u64;
            let size = size.clamp(1, target - total);
            let binary = mix == Mix::TextAndBinary && n % 4 == 1;
            let (sub, ext) = match binary {
                true => ("assets", "bin"),
                false => (["lib", "dist", "src"][n % 3], "js"),
            };
            let path = root.join(format!("node_modules/pkg-{:04}/{sub}/m{n}.{ext}", n / 8));
            if binary {
                random_bytes(&mut rng, size as usize, &mut buf);
            } else if n % 4 == 3 {
                source_text(&mut rng, size as usize, &mut buf);
            } else {
                base64_text(&mut rng, size as usize, &mut buf);
            }
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &buf).unwrap();
            total += size;
            n += 1;
        }
        std::fs::create_dir_all(root.join(CHANGED).parent().unwrap()).unwrap();
        let app = App {
            dir: root,
            md5_list: dir.join(format!("{name}.md5")),
        };
        app.change(0);
        app
    }

    /// Writes [`CHANGED_BYTES`] of new base64 text (one per `version`) to [`CHANGED`], and
    /// hashes the artifact again.
    pub fn change(&self, version: u64) {
        let mut buf = Vec::new();
        base64_text(&mut Rng(0x0123_4567 + version), CHANGED_BYTES, &mut buf);
        std::fs::write(self.dir.join(CHANGED), &buf).unwrap();
        self.hash();
    }

    pub fn hashed(dir: &Path, name: &str) -> App {
        let app = App {
            dir: dir.join(name),
            md5_list: dir.join(format!("{name}.md5")),
        };
        app.hash();
        app
    }

    /// (Re)writes the md5 list of every file of the artifact.
    pub fn hash(&self) {
        let list = std::fs::File::create(&self.md5_list).unwrap();
        let status = Command::new("sh")
            .arg("-c")
            .arg("find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r md5sum --")
            .current_dir(&self.dir)
            .stdout(list)
            .status()
            .unwrap();
        assert!(status.success(), "md5sum of the artifact");
    }

    /// The number of files and their total size.
    pub fn size(&self) -> (usize, u64) {
        let list = std::fs::read_to_string(&self.md5_list).unwrap();
        let paths: Vec<&str> = list.lines().map(|l| &l[34..]).collect();
        let bytes = paths
            .iter()
            .map(|p| std::fs::metadata(self.dir.join(p)).unwrap().len())
            .sum();
        (paths.len(), bytes)
    }

    /// Panics unless every host's `<base>/current` resolves to a `<base>/releases/<id>`
    /// directory holding the artifact's files with the same content.
    pub fn verify(&self, fleet: &Fleet, base: &str, who: &str) {
        let list = self
            .md5_list
            .strip_prefix(fleet.dir())
            .expect("the md5 list is in the fleet dir");
        let script = format!(
            "d=$(readlink -f {base}/current) || exit 1\n\
             case $d in {base}/releases/?*) ;; *) echo \"current is $d\" >&2; exit 1;; esac\n\
             cd \"$d\" || exit 1\n\
             out=$(md5sum --quiet --strict -c {FLEET_DIR_IN_HOST}/{} 2>&1); s=$?\n\
             printf '%s' \"$out\" | head -n 20\n\
             exit $s",
            list.display()
        );
        for_each_host(fleet, |h| {
            let out = fleet.sh(&h.name, &script);
            assert!(
                out.status.success() && out.stdout.is_empty(),
                "{who} did not deploy the artifact to {}'s {base}/current: {}{}",
                h.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        });
    }
}

/// What the files of [`App::make_tree_of`] hold.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mix {
    /// Text only: three in four base64 text, one in four source-like text.
    Text,
    /// One in four raw PRNG bytes (incompressible, like images, fonts or wasm, under
    /// `assets/`), one in four source-like text, half base64 text.
    TextAndBinary,
}

/// xorshift64*: the tree's content, the same in every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// In [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `size` bytes of what `base64` prints for random bytes (76 columns).
pub fn base64_text(rng: &mut Rng, size: usize, out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    out.clear();
    let (mut bits, mut left) = (0u64, 0);
    while out.len() < size {
        if out.len() % 77 == 76 {
            out.push(b'\n');
            continue;
        }
        if left == 0 {
            (bits, left) = (rng.next(), 10);
        }
        out.push(ALPHABET[(bits & 63) as usize]);
        bits >>= 6;
        left -= 1;
    }
}

/// `size` bytes straight from the PRNG: incompressible.
pub fn random_bytes(rng: &mut Rng, size: usize, out: &mut Vec<u8>) {
    out.clear();
    while out.len() < size {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(size);
}

/// `size` bytes of source-like text: keywords and numbered names, ten words a line.
pub fn source_text(rng: &mut Rng, size: usize, out: &mut Vec<u8>) {
    const WORDS: &[&str] = &[
        "const",
        "let",
        "function",
        "return",
        "this",
        "=>",
        "require(",
        "module.exports",
        "if",
        "else",
        "{",
        "}",
        "(",
        ")",
        ";",
        "=",
        "===",
        "options",
        "callback",
        "undefined",
        "null",
        "new",
        "Error(",
        "prototype",
        "length",
        "typeof",
        "await",
        "async",
        "export",
        "import",
        "from",
        "'use strict'",
    ];
    out.clear();
    let mut word = 0usize;
    while out.len() < size {
        let r = rng.next();
        if r.is_multiple_of(4) {
            out.extend_from_slice(format!("v{}", (r >> 8) % 4096).as_bytes());
        } else {
            out.extend_from_slice(WORDS[(r >> 8) as usize % WORDS.len()].as_bytes());
        }
        word += 1;
        out.push(if word.is_multiple_of(10) { b'\n' } else { b' ' });
    }
    out.truncate(size);
}

/// A fresh deploy: no earlier release to reuse.
pub fn clean(fleet: &Fleet, dir: &str) {
    for_each_host(fleet, |h| {
        fleet.sh_ok(&h.name, &format!("rm -rf {dir}"));
    });
}

/// Runs `f` for every host, on a few threads: untimed work through nsenter (checking,
/// cleaning), which takes seconds one host after the other on 200 hosts.
pub fn for_each_host(fleet: &Fleet, f: impl Fn(&Host) + Sync) {
    let hosts = fleet.hosts();
    let chunk = hosts.len().div_ceil(4).max(1);
    std::thread::scope(|s| {
        for part in hosts.chunks(chunk) {
            let f = &f;
            s.spawn(move || part.iter().for_each(f));
        }
    });
}

/// A new release id: nanoseconds since the epoch.
pub fn release_id() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string()
}

/// The baseline with `source` (a shell command) writing the tar.gz stream for each host.
pub fn baseline_from(fleet: &Fleet, source: &str) -> (Duration, u64) {
    let start = Instant::now();
    let children: Vec<_> = fleet
        .hosts()
        .iter()
        .map(|h| {
            let sock = fleet.dir().join(format!("cm-{}", h.name));
            let ssh = |extra: &str, remote: &str| {
                let mut cmd = fleet.ssh_command(&h.name);
                cmd.args(["-o", &format!("ControlPath={}", sock.display())]);
                for word in extra.split_whitespace() {
                    cmd.arg(word);
                }
                if !remote.is_empty() {
                    cmd.arg(remote);
                }
                shell_words(&cmd)
            };
            let extract = format!("r={BASELINE_DIR}/releases/$(date +%s%N) && mkdir -p $r && tar -xzf - -C $r && echo $r > {BASELINE_DIR}/.last");
            let switch = format!("ln -sfn $(cat {BASELINE_DIR}/.last) {BASELINE_DIR}/current.tmp && mv -T {BASELINE_DIR}/current.tmp {BASELINE_DIR}/current");
            let script = format!(
                "{} && {source} | {} && {} ; {}",
                ssh("-o ControlMaster=yes -o ControlPersist=60 -fN", ""),
                ssh("", &extract),
                ssh("", &switch),
                ssh("-O exit", "")
            );
            let log = std::fs::File::create(baseline_log(fleet, h)).unwrap();
            Command::new("sh").arg("-c").arg(script).stdout(Stdio::null()).stderr(log).spawn().unwrap()
        })
        .collect();
    let failed: Vec<String> = children
        .into_iter()
        .zip(fleet.hosts())
        .filter_map(|(mut c, h)| {
            let status = c.wait().unwrap();
            let log = std::fs::read_to_string(baseline_log(fleet, h)).unwrap_or_default();
            (!status.success()).then(|| format!("{} ({status}): {}", h.name, log.trim_end()))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "the openssh baseline failed on {} of {} hosts:\n{}",
        failed.len(),
        fleet.hosts().len(),
        failed.join("\n")
    );
    (start.elapsed(), 0)
}

/// Where the baseline's commands for `host` write their stderr.
pub fn baseline_log(fleet: &Fleet, host: &Host) -> PathBuf {
    fleet.dir().join(format!("baseline-{}.log", host.name))
}

pub fn shell_words(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    let env: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    let quoted: Vec<String> = env
        .into_iter()
        .chain(words)
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect();
    format!("env -i {}", quoted.join(" "))
}

/// Inventory settings beyond the common ones.
#[derive(Default)]
pub struct Settings {
    /// `app.user`, the service user.
    pub user: Option<&'static str>,
    /// `artifact.delta` (unset: shipit's default, on).
    pub delta: Option<bool>,
}

/// shipit's inventory for the fleet with `settings`, written to `<fleet dir>/<file>.toml`.
pub fn shipit_inventory_as(fleet: &Fleet, app: &Path, file: &str, settings: &Settings) -> PathBuf {
    let user = settings
        .user
        .map(|u| format!("user = \"{u}\"\n"))
        .unwrap_or_default();
    let delta = settings
        .delta
        .map(|d| format!("delta = {d}\n"))
        .unwrap_or_default();
    let mut inv = format!(
        "[app]\nname = \"bench\"\ndeploy_to = \"{SHIPIT_DIR}\"\nkeep_releases = 3\n{user}[ssh]\nidentity = \"{}\"\nknown_hosts = \"{}\"\n[artifact]\npath = \"{}\"\n{delta}[rollout]\nwaves = [\"100%\"]\n",
        fleet.client_key().display(),
        fleet.known_hosts().display(),
        app.display()
    );
    for h in fleet.hosts() {
        inv.push_str(&format!(
            "[[hosts]]\nname = \"{}\"\naddress = \"{}\"\nport = {}\n",
            h.name, h.address, h.port
        ));
    }
    let path = fleet.dir().join(format!("{file}.toml"));
    std::fs::write(&path, inv).unwrap();
    path
}

/// One timed shipit run.
pub struct ShipitRun {
    pub time: Duration,
    /// Peak RSS in KiB.
    pub rss_kb: u64,
    /// The `--json` report, when asked for (`Null` otherwise).
    pub report: serde_json::Value,
}

/// `shipit <command> bench -i <inventory>` (with `--json` if `json`, its report read from
/// a file in the fleet dir): time, peak RSS, report.
// The child is reaped by wait4 (for its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
pub fn run_shipit_with(fleet: &Fleet, inventory: &Path, command: &str, json: bool) -> ShipitRun {
    let report_path = fleet.dir().join("report.json");
    let log_path = fleet.dir().join("shipit.log");
    let mut cmd = fleet.shipit();
    cmd.args([command, "bench", "-i"]).arg(inventory);
    if json {
        cmd.arg("--json")
            .stdout(std::fs::File::create(&report_path).unwrap());
    } else {
        cmd.stdout(Stdio::null());
    }
    cmd.stderr(std::fs::File::create(&log_path).unwrap());
    // SAFETY: getrlimit and setrlimit are async-signal-safe and change only the child.
    unsafe {
        cmd.pre_exec(|| {
            let mut limit: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit.rlim_cur = limit.rlim_cur.min(SHIPIT_NOFILE);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let child = cmd.spawn().unwrap();
    let (status, rss_kb) = wait_with_rss(child.id());
    let time = start.elapsed();
    let text = if json {
        std::fs::read_to_string(&report_path).unwrap()
    } else {
        String::new()
    };
    if status != 0 {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        panic!("shipit {command} failed with {status}\n{text}\n--- stderr (end) ---\n{tail}");
    }
    let report = match json {
        true => serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("shipit {command} --json printed no report ({e}):\n{text}")),
        false => serde_json::Value::Null,
    };
    ShipitRun {
        time,
        rss_kb,
        report,
    }
}

/// The one file each redeploy of the delta scenario changes, and its size.
pub const CHANGED: &str = "src/changed.js";

pub const CHANGED_BYTES: usize = 10 * 1024;

/// `app.user` in the delta scenario: exists on the fleet's hosts (they share this machine's
/// `/etc/passwd`), is neither the SSH user (root) nor root, so the host hard-links.
pub const SERVICE_USER: &str = "nobody";

/// Writes back what earlier runs left dirty (untimed): the fleet lives on the machine's disk,
/// and a run must not pay for the gigabytes the run before it wrote.
pub fn settle() {
    let status = Command::new("sync").status().expect("run sync");
    assert!(status.success(), "sync failed");
}

/// `bytes` in B, KB, MB or GB (powers of 1024), three significant digits or so.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KB", "MB", "GB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < units.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{v:.1} {}", units[unit]),
    }
}

/// Waits for `pid`; returns its exit status and peak RSS in KiB.
pub fn wait_with_rss(pid: u32) -> (i32, u64) {
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid as i32, "wait4");
    (libc::WEXITSTATUS(status), usage.ru_maxrss as u64)
}

/// Packs the artifact directory into one tar.gz on the controller (gzip -6, tar's default).
pub fn pack(app: &Path, tarball: &Path) {
    let status = Command::new("tar")
        .arg("-czf")
        .arg(tarball)
        .arg("-C")
        .arg(app)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar -czf {}", tarball.display());
}
