//! The modification time the files of a packed directory get on the hosts.
//!
//! Web servers answer `Last-Modified` and an `ETag` from a file's modification time (and
//! size); a browser that sends them back gets `304 Not Modified` while they match. The
//! packed tar carries one fixed time (its sha256 is the content's identity, the same on any
//! machine), so every deploy gave every file the same time, and changed static files could
//! be answered `304`. The hosts get a time that means something instead: the commit time
//! of the deployed revision when the project is a git checkout without uncommitted changes
//! (the same commit always gives the same time: a redeploy of it changes nothing), else the
//! time of packing (a dirty tree's content is not the commit's: its commit time could be the
//! time of different content already deployed).
//!
//! Runs `git` in the project directory; a missing `git`, a directory outside a checkout or a
//! repository without commits all mean: the time of packing.

use std::path::Path;
use std::process::{Command, Stdio};

/// The time the files get, and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilesTime {
    /// The commit time (Unix seconds) of `HEAD` of a clean checkout.
    Commit(u64),
    /// The time of packing: not a git checkout, or one with uncommitted changes.
    Packed(u64),
}

impl FilesTime {
    pub fn unix(self) -> u64 {
        match self {
            FilesTime::Commit(t) | FilesTime::Packed(t) => t,
        }
    }
}

/// The files' time for a deploy from `project` (the directory shipit runs in), packed at
/// `now_unix`. Blocking.
pub fn files_time(project: &Path, now_unix: u64) -> FilesTime {
    commit_time(project).map_or(FilesTime::Packed(now_unix), FilesTime::Commit)
}

/// `HEAD`'s commit time when `dir` is in a git checkout with nothing uncommitted (files
/// ignored by git do not count: a build's output usually is).
fn commit_time(dir: &Path) -> Option<u64> {
    let status = git(dir, &["status", "--porcelain", "--untracked-files=normal"])?;
    if !status.trim().is_empty() {
        return None;
    }
    let time: i64 = git(dir, &["log", "-1", "--format=%ct", "HEAD"])?
        .trim()
        .parse()
        .ok()?;
    u64::try_from(time).ok()
}

/// `git ARGS` in `dir`: its stdout when it succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        // `status` refreshes the index when it may: never take git's lock for that.
        .env("GIT_OPTIONAL_LOCKS", "0")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git_ok(dir: &Path, args: &[&str], env: &[(&str, &str)]) {
        let status = Command::new("git")
            .args(args)
            .current_dir(dir)
            .envs(env.iter().copied())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    #[test]
    fn the_commit_time_of_a_clean_checkout_else_the_time_of_packing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Not a checkout.
        assert_eq!(files_time(d, 7), FilesTime::Packed(7));
        git_ok(d, &["init", "-q"], &[]);
        // A checkout without a commit.
        assert_eq!(files_time(d, 7), FilesTime::Packed(7));
        std::fs::write(d.join(".gitignore"), "dist/\n").unwrap();
        std::fs::write(d.join("app.js"), "v1").unwrap();
        git_ok(d, &["add", "."], &[]);
        let when = [
            ("GIT_AUTHOR_DATE", "@1700000000 +0000"),
            ("GIT_COMMITTER_DATE", "@1700000123 +0000"),
            ("GIT_AUTHOR_NAME", "t"),
            ("GIT_AUTHOR_EMAIL", "t@example.com"),
            ("GIT_COMMITTER_NAME", "t"),
            ("GIT_COMMITTER_EMAIL", "t@example.com"),
        ];
        git_ok(d, &["commit", "-q", "-m", "one"], &when);
        // The committer's time, whatever the clock; ignored build output does not count.
        std::fs::create_dir(d.join("dist")).unwrap();
        std::fs::write(d.join("dist/app.js"), "built").unwrap();
        assert_eq!(files_time(d, 7), FilesTime::Commit(1_700_000_123));
        assert_eq!(files_time(d, 7).unix(), 1_700_000_123);
        // Uncommitted changes: their content is not the commit's.
        std::fs::write(d.join("app.js"), "v2").unwrap();
        assert_eq!(files_time(d, 9), FilesTime::Packed(9));
        std::fs::write(d.join("app.js"), "v1").unwrap();
        std::fs::write(d.join("new.js"), "new").unwrap();
        assert_eq!(files_time(d, 9), FilesTime::Packed(9));
    }
}
