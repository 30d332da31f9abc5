//! The git commit a deploy ships: read from the checkout shipit runs in, before the build,
//! and written into the release's `REVISION` as `git=<sha>` (`git=<sha>-dirty` when the
//! working tree had uncommitted changes).
//!
//! "Uncommitted changes" is what `git status --porcelain` lists: modified, staged or deleted
//! tracked files, and untracked files that `.gitignore` does not exclude (as Kamal marks a
//! dirty tree). Such a release cannot be rebuilt from its commit alone, and the mark says
//! so wherever the commit is shown.

use std::path::Path;
use std::process::{Command, Stdio};

/// The suffix of a revision built from a working tree with uncommitted changes.
pub const DIRTY: &str = "-dirty";

/// `<sha>` of `HEAD` in the checkout around `dir`, with [`DIRTY`] appended when its working
/// tree has uncommitted changes; `None` outside a checkout, without commits, or without git.
pub fn revision(dir: &Path) -> Option<String> {
    let sha = git(dir, &["rev-parse", "--verify", "--quiet", "HEAD"])?;
    let sha = sha.trim();
    if !is_revision(sha) {
        return None;
    }
    // A status that cannot be read is not proof of a clean tree.
    let dirty = git(dir, &["status", "--porcelain"]).is_none_or(|s| !s.trim().is_empty());
    Some(if dirty {
        format!("{sha}{DIRTY}")
    } else {
        sha.to_owned()
    })
}

/// Whether `text` reads as what [`revision`] returns: 7 to 64 lowercase hex digits,
/// optionally followed by [`DIRTY`]. What a host's `REVISION` says is checked with this
/// before it is shown.
pub fn is_revision(text: &str) -> bool {
    let sha = text.strip_suffix(DIRTY).unwrap_or(text);
    (7..=64).contains(&sha.len())
        && sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The commit as people read it in a table: 12 digits, and the mark.
pub fn short(revision: &str) -> String {
    let (sha, dirty) = match revision.strip_suffix(DIRTY) {
        Some(sha) => (sha, DIRTY),
        None => (revision, ""),
    };
    format!("{}{dirty}", &sha[..sha.len().min(12)])
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
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

    fn git_ok(dir: &Path, args: &[&str]) {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    }

    #[test]
    fn a_clean_checkout_gives_its_commit_and_any_change_marks_it_dirty() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        assert_eq!(revision(repo), None, "not a checkout");
        git_ok(repo, &["init", "-q"]);
        assert_eq!(revision(repo), None, "no commit yet");
        std::fs::create_dir(repo.join("app")).unwrap();
        std::fs::write(repo.join("app/index.html"), "v1\n").unwrap();
        std::fs::write(repo.join(".gitignore"), "dist/\n").unwrap();
        git_ok(repo, &["add", "."]);
        git_ok(repo, &["commit", "-q", "-m", "one"]);
        let clean = revision(repo).unwrap();
        assert_eq!(clean.len(), 40, "{clean}");
        assert!(is_revision(&clean));
        // From a directory inside the checkout too.
        assert_eq!(revision(&repo.join("app")).as_deref(), Some(clean.as_str()));
        // Ignored files are not changes.
        std::fs::create_dir(repo.join("dist")).unwrap();
        std::fs::write(repo.join("dist/out"), "built\n").unwrap();
        assert_eq!(revision(repo).as_deref(), Some(clean.as_str()));
        // A changed tracked file, or a new file that is not ignored, is.
        std::fs::write(repo.join("app/index.html"), "v2\n").unwrap();
        assert_eq!(revision(repo), Some(format!("{clean}-dirty")));
        git_ok(repo, &["checkout", "--", "app/index.html"]);
        assert_eq!(revision(repo).as_deref(), Some(clean.as_str()));
        std::fs::write(repo.join("app/new.html"), "new\n").unwrap();
        assert_eq!(revision(repo), Some(format!("{clean}-dirty")));
    }

    #[test]
    fn only_what_revision_returns_reads_as_one() {
        for good in [
            "abc1234",
            &"a".repeat(40),
            &format!("{}-dirty", "0".repeat(40)),
        ] {
            assert!(is_revision(good), "{good}");
        }
        for bad in [
            "",
            "abc12",
            "ABC1234567",
            "abc1234-dirty-dirty",
            "abc1234 x",
            "abc1234\nx",
            "-dirty",
            &"a".repeat(65),
        ] {
            assert!(!is_revision(bad), "{bad:?}");
        }
        assert_eq!(
            short(&format!("{}-dirty", "ab".repeat(20))),
            "abababababab-dirty"
        );
        assert_eq!(short("abc1234"), "abc1234");
    }
}
