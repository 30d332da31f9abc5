//! The deployer's packing CPU on a redeploy (not a test): `shipit::artifact::pack_cached`
//! of a directory of PACK_MB (default 300) MB in PACK_FILES (default 3,000) files, against
//! `tar -cf - dir | sha256sum` of the same directory, as a ratio of CPU time (user + system,
//! all threads and processes) measured in one run. Rows: a fresh deploy's packing (empty
//! digest cache, every file hashed, then the tar a whole upload compresses), an unchanged
//! redeploy (the listing only: the hosts hold the release), and a redeploy with one file
//! changed (the listing, then the delta a host takes, zstd). Run with
//! `cargo bench --bench pack`; the directory and cache live under $TMPDIR.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use shipit::artifact::{Codec, delta};

fn cpu(who: libc::c_int) -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Incompressible bytes (xorshift), different per seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Median CPU time of `runs` calls of `f` in this process.
fn own_cpu(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let before = cpu(libc::RUSAGE_SELF);
            f();
            cpu(libc::RUSAGE_SELF) - before
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn tar_sha256sum(dir: &Path) -> Duration {
    let mut times: Vec<Duration> = (0..3)
        .map(|_| {
            let before = cpu(libc::RUSAGE_CHILDREN);
            let status = Command::new("sh")
                .arg("-c")
                .arg("tar -cf - . | sha256sum >/dev/null")
                .current_dir(dir)
                .status()
                .unwrap();
            assert!(status.success());
            cpu(libc::RUSAGE_CHILDREN) - before
        })
        .collect();
    times.sort();
    times[1]
}

fn main() {
    let mb = env("PACK_MB", 300);
    let files = env("PACK_FILES", 3000);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("app");
    let size = (mb * 1024 * 1024 / files) as usize;
    for i in 0..files {
        let path = dir.join(format!("pkg{:03}/f{i:05}.bin", i % 100));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, noise(i, size)).unwrap();
    }
    // Past the digest cache's racy window, so the first pack records every file.
    std::thread::sleep(Duration::from_millis(2_100));
    let cache = work.path().join("cache");
    let pack = || shipit::artifact::pack_cached(&dir, work.path(), Some(&cache)).unwrap();
    let floor = tar_sha256sum(&dir);
    // A fresh deploy: the listing, every file hashed, then the tar a whole upload
    // compresses (the compression itself is the upload's, not counted here).
    let first = own_cpu(1, || {
        pack().tar().unwrap();
    });
    // Every host holds the release: nothing but the listing.
    let unchanged = own_cpu(3, || {
        pack();
    });
    // One file changed: the listing and what a host taking a delta needs, the delta
    // built from the last release's manifest (zstd).
    let mut last = pack().manifest.clone().unwrap();
    let mut seed = 1_000_000;
    let changed = own_cpu(3, || {
        seed += 1;
        fs::write(dir.join("pkg007/f00007.bin"), noise(seed, size)).unwrap();
        let packed = pack();
        let new = packed.manifest.clone().unwrap();
        let plan = delta::changes(&last, &new, &[]);
        assert_eq!(plan.content_bytes, size as u64);
        delta::build(&packed, &new, &plan, Codec::Zstd, work.path()).unwrap();
        last = new;
    });
    let secs = |d: Duration| d.as_secs_f64();
    println!("{mb} MB in {files} files: CPU seconds, and the ratio to `tar -cf - | sha256sum`");
    println!("  tar -cf - | sha256sum      {:>6.3}", secs(floor));
    for (row, t) in [
        ("fresh (no cache, tar)", first),
        ("unchanged redeploy", unchanged),
        ("one file changed, delta", changed),
    ] {
        println!("  {row:<26} {:>6.3}  {:.2}", secs(t), secs(t) / secs(floor));
    }
}
