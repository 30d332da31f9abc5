//! The deployer's digest cache: for each file of a packed directory, its stat record
//! (device, inode, size, mtime and ctime in nanoseconds) and the sha256 packing computed, so
//! that a redeploy takes an unchanged file's manifest digest from here instead of hashing
//! the file again; what the hosts do with their own stat record, on the deployer.
//!
//! The cache only ever saves work: a file whose stat record differs in any field is hashed
//! again, and a cache file that is not exactly what this version writes (wrong header,
//! another artifact's path, a malformed line), that another user owns or that others can
//! write is ignored whole and rewritten. A file changed within [`RACY_NS`] of the save is
//! not recorded: its timestamps could match a later change made in the same clock tick (the
//! "racily clean" case git guards against too).
//!
//! The file (`<cache dir>/digests/<sha256 of the artifact's path>`) is written 0600 to a
//! temporary name and renamed over the old one, so a crash leaves the old cache or the new,
//! never half of one. Blocking file I/O; depends on nothing else in the crate but
//! [`super::manifest`].

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::manifest::sha256_hex;

/// First line of a cache file: a cache from another format version is not read.
const HEADER: &str = "shipit-digests 1";

/// A file whose mtime or ctime is this close to the save (or later) is not recorded.
const RACY_NS: i128 = 2_000_000_000;

/// A cache file larger than this is not read (a stray or hostile file).
const MAX_BYTES: u64 = 256 * 1024 * 1024;

/// What identifies a file's content without reading it: if any field changed, the content
/// may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl Stat {
    pub(super) fn of(meta: &fs::Metadata) -> Stat {
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        Stat {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The cache of one artifact directory: read at the start of packing, updated with every
/// file packed, saved at the end.
#[derive(Debug)]
pub(super) struct Digests {
    file: PathBuf,
    /// The artifact directory, as given: recorded in the file so another artifact's cache
    /// (a hash collision, a copied file) is not used.
    root: Vec<u8>,
    old: HashMap<String, (Stat, String)>,
    new: Vec<(String, Stat, String)>,
    /// Files whose digest came from the cache (for tests and the benchmark).
    pub hits: u64,
}

impl Digests {
    /// The cache of the artifact directory `root`, kept under `cache_dir`. A missing,
    /// unreadable or untrusted cache file gives an empty cache.
    pub(super) fn open(cache_dir: &Path, root: &Path) -> Digests {
        let root = root.as_os_str().as_bytes().to_vec();
        let file = cache_dir.join("digests").join(sha256_hex(&root));
        let old = read(&file, &root).unwrap_or_default();
        Digests {
            file,
            root,
            old,
            new: Vec::new(),
            hits: 0,
        }
    }

    /// The digest recorded for `rel` if its stat record is still `stat`.
    pub(super) fn get(&mut self, rel: &str, stat: &Stat) -> Option<String> {
        let (recorded, sha256) = self.old.get(rel)?;
        (recorded == stat).then(|| {
            self.hits += 1;
            sha256.clone()
        })
    }

    /// Records `rel`'s digest for the next pack.
    pub(super) fn put(&mut self, rel: &str, stat: Stat, sha256: String) {
        self.new.push((rel.to_owned(), stat, sha256));
    }

    /// Writes what this pack recorded, replacing the old cache; `now_ns` is the wall clock.
    /// A cache that cannot be written only costs the next pack its speed, so the error is
    /// for the caller to ignore or show.
    pub(super) fn save(&self, now_ns: i128) -> io::Result<()> {
        let dir = self
            .file
            .parent()
            .expect("the cache file is in a directory");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut text = Vec::with_capacity(self.new.len() * 128);
        writeln!(text, "{HEADER}")?;
        text.extend_from_slice(&self.root);
        text.push(b'\n');
        for (rel, s, sha256) in &self.new {
            if s.mtime_ns > now_ns - RACY_NS || s.ctime_ns > now_ns - RACY_NS {
                continue;
            }
            writeln!(
                text,
                "{}\t{}\t{}\t{}\t{}\t{sha256}\t{rel}",
                s.dev, s.ino, s.size, s.mtime_ns, s.ctime_ns
            )?;
        }
        let mut temp = tempfile::Builder::new()
            .prefix(".digests-")
            .tempfile_in(dir)?;
        temp.write_all(&text)?;
        temp.persist(&self.file).map_err(|e| e.error)?;
        Ok(())
    }
}

/// Drops the cache of the artifact directory `root`: the next pack hashes every file.
pub(super) fn forget(cache_dir: &Path, root: &Path) {
    let file = cache_dir
        .join("digests")
        .join(sha256_hex(root.as_os_str().as_bytes()));
    let _ = fs::remove_file(file);
}

/// The cache file's entries, or `None` if it is missing or not to be trusted.
fn read(file: &Path, root: &[u8]) -> Option<HashMap<String, (Stat, String)>> {
    let mut opened = File::open(file).ok()?;
    let meta = opened.metadata().ok()?;
    // SAFETY: getuid cannot fail and has no preconditions.
    let uid = unsafe { libc::getuid() };
    if !meta.is_file() || meta.uid() != uid || meta.permissions().mode() & 0o022 != 0 {
        return None;
    }
    if meta.len() > MAX_BYTES {
        return None;
    }
    let mut bytes = Vec::new();
    opened.read_to_end(&mut bytes).ok()?;
    parse(&bytes, root)
}

/// Parses a cache file's text: all or nothing.
fn parse(bytes: &[u8], root: &[u8]) -> Option<HashMap<String, (Stat, String)>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.split_terminator('\n');
    if lines.next()? != HEADER || lines.next()?.as_bytes() != root {
        return None;
    }
    let mut entries = HashMap::new();
    for line in lines {
        let mut fields = line.splitn(7, '\t');
        let mut next = || fields.next();
        let stat = Stat {
            dev: next()?.parse().ok()?,
            ino: next()?.parse().ok()?,
            size: next()?.parse().ok()?,
            mtime_ns: next()?.parse().ok()?,
            ctime_ns: next()?.parse().ok()?,
        };
        let sha256 = next()?;
        let rel = next()?;
        if sha256.len() != 64
            || !sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        if rel.is_empty()
            || entries
                .insert(rel.to_owned(), (stat, sha256.to_owned()))
                .is_some()
        {
            return None;
        }
    }
    Some(entries)
}

/// Where shipit keeps its cache on this machine: `$XDG_CACHE_HOME/shipit`, else
/// `$HOME/.cache/shipit`; `None` when neither is set (to an absolute path), and then
/// nothing is cached.
pub fn cache_dir(
    xdg_cache_home: Option<&std::ffi::OsStr>,
    home: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    let absolute = |v: Option<&std::ffi::OsStr>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    absolute(xdg_cache_home)
        .or_else(|| absolute(home).map(|h| h.join(".cache")))
        .map(|base| base.join("shipit"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(n: u64) -> Stat {
        Stat {
            dev: 1,
            ino: n,
            size: 10,
            mtime_ns: 1_000,
            ctime_ns: 2_000,
        }
    }

    const FAR_FUTURE: i128 = i128::MAX / 2;

    #[test]
    fn a_saved_digest_is_found_while_the_stat_record_is_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new("/srv/app/dist");
        let mut d = Digests::open(dir.path(), root);
        assert_eq!(d.get("a", &stat(1)), None);
        d.put("a", stat(1), "a".repeat(64));
        d.put("dir/b c", stat(2), "b".repeat(64));
        d.save(FAR_FUTURE).unwrap();

        let mut d = Digests::open(dir.path(), root);
        assert_eq!(d.get("a", &stat(1)), Some("a".repeat(64)));
        assert_eq!(d.get("dir/b c", &stat(2)), Some("b".repeat(64)));
        assert_eq!(d.hits, 2);
        // Any field changed: a miss.
        for changed in [
            Stat { dev: 2, ..stat(1) },
            Stat { ino: 9, ..stat(1) },
            Stat {
                size: 11,
                ..stat(1)
            },
            Stat {
                mtime_ns: 1_001,
                ..stat(1)
            },
            Stat {
                ctime_ns: 2_001,
                ..stat(1)
            },
        ] {
            assert_eq!(d.get("a", &changed), None, "{changed:?}");
        }
        // Another artifact's path: nothing shared.
        let mut other = Digests::open(dir.path(), Path::new("/srv/other"));
        assert_eq!(other.get("a", &stat(1)), None);
    }

    #[test]
    fn a_file_changed_just_before_the_save_is_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Digests::open(dir.path(), Path::new("/a"));
        d.put("old", stat(1), "a".repeat(64));
        d.put(
            "racy",
            Stat {
                mtime_ns: 5_000_000_000,
                ..stat(2)
            },
            "b".repeat(64),
        );
        d.save(5_500_000_000).unwrap();
        let mut d = Digests::open(dir.path(), Path::new("/a"));
        assert!(d.get("old", &stat(1)).is_some());
        assert_eq!(
            d.get(
                "racy",
                &Stat {
                    mtime_ns: 5_000_000_000,
                    ..stat(2)
                }
            ),
            None
        );
    }

    #[test]
    fn a_corrupt_foreign_or_writable_cache_is_ignored_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new("/a");
        let mut d = Digests::open(dir.path(), root);
        d.put("a", stat(1), "a".repeat(64));
        d.save(FAR_FUTURE).unwrap();
        let file = d.file.clone();
        let good = fs::read_to_string(&file).unwrap();
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let bad_sha = good.replace(&"a".repeat(64), &"A".repeat(64));
        let other_version = good.replace(HEADER, "shipit-digests 0");
        let truncated = good[..good.len() - 10].to_owned();
        let short_line = format!("{good}1\t2\t3\n");
        let twice = format!("{good}{}", good.lines().last().unwrap());
        for corrupt in [
            bad_sha,
            other_version,
            truncated,
            short_line,
            twice,
            String::new(),
        ] {
            fs::write(&file, &corrupt).unwrap();
            let mut d = Digests::open(dir.path(), root);
            assert_eq!(d.get("a", &stat(1)), None, "{corrupt:?}");
            d.put("a", stat(1), "a".repeat(64));
            d.save(FAR_FUTURE).unwrap();
            assert_eq!(fs::read_to_string(&file).unwrap(), good);
        }
        // Writable by others: not trusted.
        fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(Digests::open(dir.path(), root).get("a", &stat(1)), None);
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Digests::open(dir.path(), root).get("a", &stat(1)).is_some());
        // Owned by another user (only root can make one): not trusted.
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } == 0 {
            std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
            assert_eq!(Digests::open(dir.path(), root).get("a", &stat(1)), None);
        }
    }

    #[test]
    fn the_cache_dir_follows_xdg_then_home() {
        let os = |s: &'static str| Some(std::ffi::OsStr::new(s));
        assert_eq!(
            cache_dir(os("/x"), os("/h")),
            Some(PathBuf::from("/x/shipit"))
        );
        assert_eq!(
            cache_dir(os("relative"), os("/h")),
            Some(PathBuf::from("/h/.cache/shipit"))
        );
        assert_eq!(
            cache_dir(None, os("/h")),
            Some(PathBuf::from("/h/.cache/shipit"))
        );
        assert_eq!(cache_dir(None, None), None);
    }
}
