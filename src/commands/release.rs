//! Release directories under `<deploy_to>`: receive an upload into `releases/<id>.partial`,
//! reuse an identical release, finish (REVISION, shared links, rename into place), switch
//! `current`, prune.
//!
//! A release directory is complete or absent: everything happens in `<id>.partial`, and the
//! rename to `<id>` is the commit. `current` is switched by renaming a new symlink over it,
//! so there is never a moment without `current`.

use crate::shell::Cmd;

/// Receives the compressed artifact on stdin, extracts it into `releases/<id>.partial` with
/// `decompress` (`gzip -dc`, `zstd -dc`) and checks the sha256 of the bytes received (the
/// compressed stream: fewer bytes to hash than the tar, and the decompressor's own checks
/// cover the rest), in one pass. The hash is `openssl dgst` where the host has it (several
/// times faster than coreutils' `sha256sum` on CPUs with SHA instructions), else
/// `sha256sum`. Exit [`SHA_MISMATCH`](super::exit::SHA_MISMATCH) when the bytes are not the
/// artifact; the partial directory is removed on any failure. Falls through on success, so
/// [`finish`] can follow in the same script.
pub fn receive(deploy_to: &str, id: &str, upload_sha256: &str, decompress: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::assign("id", id),
        Cmd::assign("sha", upload_sha256),
        Cmd::assign("decompress", decompress),
        Cmd::new(
            r#"
mkdir -p -- "$base" && cd -- "$base" || exit 1
mkdir -p releases shared .shipit || exit 1
part="releases/$id.partial"
rm -rf -- "$part" && mkdir -- "$part" || exit 1
fifo=".shipit/upload-$id.fifo"
sum=".shipit/upload-$id.sum"
rm -f -- "$fifo" "$sum" && mkfifo -- "$fifo" || exit 1
if command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 -r < "$fifo" > "$sum" &
else sha256sum < "$fifo" > "$sum" & fi
hasher=$!
tee -- "$fifo" | $decompress | tar -xf - -C "$part" --no-same-owner
status=$?
wait "$hasher"
read -r got rest < "$sum"
rm -f -- "$fifo" "$sum"
if [ "$got" != "$sha" ]; then rm -rf -- "$part"; exit 81; fi
if [ "$status" != 0 ]; then rm -rf -- "$part"; exit "$status"; fi
:"#,
        ),
    ])
}

/// Makes `releases/<id>.partial` a hard-link copy of `releases/<from>`, which holds the
/// same artifact: no bytes uploaded, little disk used.
pub fn reuse(deploy_to: &str, from: &str, id: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::assign("from", from),
        Cmd::assign("id", id),
        Cmd::new(
            r#"
cd -- "$base" || exit 1
part="releases/$id.partial"
rm -rf -- "$part" && cp -al -- "releases/$from" "$part" || { rm -rf -- "$part"; exit 1; }"#,
        ),
    ])
}

/// What goes into `releases/<id>/REVISION`: the artifact sha256 first, then `git=<sha>`.
pub fn revision_text(sha256: &str, git: Option<&str>) -> String {
    match git {
        Some(git) => format!("{sha256}\ngit={git}"),
        None => sha256.to_owned(),
    }
}

/// Writes REVISION, links the shared paths and renames the partial directory into place.
/// `owner` (the app user) owns what is newly created in `shared/`.
pub fn finish(
    deploy_to: &str,
    id: &str,
    revision: &str,
    shared_dirs: &[String],
    shared_files: &[String],
    owner: Option<&str>,
) -> Cmd {
    let mut steps = vec![
        Cmd::assign("base", deploy_to),
        Cmd::assign("id", id),
        Cmd::assign("revision", revision),
        Cmd::assign("owner", owner.unwrap_or("")),
        Cmd::new(
            r#"
cd -- "$base" || exit 1
part="releases/$id.partial"
[ -d "$part" ] || exit 1
# REVISION may be a hard link shared with the release this one was copied from.
rm -f -- "$part/REVISION"
printf '%s\n' "$revision" > "$part/REVISION" || exit 1"#,
        ),
    ];
    for dir in shared_dirs {
        steps.push(Cmd::assign("p", dir));
        steps.push(Cmd::new(LINK_SHARED_DIR));
    }
    for file in shared_files {
        steps.push(Cmd::assign("p", file));
        steps.push(Cmd::new(LINK_SHARED_FILE));
    }
    steps.push(Cmd::new(
        r#"mv -T -- "$part" "releases/$id" || exit 1
exit 0"#,
    ));
    Cmd::seq(steps)
}

/// A shared directory: seeded from the artifact on first use, then a symlink replaces the
/// artifact's copy in every release.
const LINK_SHARED_DIR: &str = r#"
if [ ! -e "shared/$p" ]; then
  mkdir -p -- "$(dirname -- "shared/$p")" || exit 1
  if [ -d "$part/$p" ] && [ ! -L "$part/$p" ]; then cp -a -- "$part/$p" "shared/$p" || exit 1
  else mkdir -p -- "shared/$p" || exit 1; fi
  if [ -n "$owner" ]; then chown -R -- "$owner" "shared/$p" || exit 1; fi
fi
rm -rf -- "$part/$p" && mkdir -p -- "$(dirname -- "$part/$p")" && ln -s -- "$base/shared/$p" "$part/$p" || exit 1"#;

/// A shared file: seeded from the artifact on first use; if neither has it, the deploy
/// stops rather than link a release to a file that is not there.
const LINK_SHARED_FILE: &str = r#"
if [ ! -e "shared/$p" ]; then
  if [ -f "$part/$p" ] && [ ! -L "$part/$p" ]; then
    mkdir -p -- "$(dirname -- "shared/$p")" && cp -p -- "$part/$p" "shared/$p" || exit 1
    if [ -n "$owner" ]; then chown -- "$owner" "shared/$p" || exit 1; fi
  else
    echo "shared file \`$base/shared/$p\` does not exist and the artifact has none: create it on the host" >&2
    rm -rf -- "$part"
    exit 82
  fi
fi
rm -rf -- "$part/$p" && mkdir -p -- "$(dirname -- "$part/$p")" && ln -s -- "$base/shared/$p" "$part/$p" || exit 1"#;

/// Points `current` at `releases/<id>`: a new symlink renamed over the old one (atomic).
/// Exit [`RELEASE_MISSING`](super::exit::RELEASE_MISSING) if the release is not there.
pub fn switch(deploy_to: &str, id: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::assign("id", id),
        Cmd::new(
            r#"
cd -- "$base" || exit 1
[ -d "releases/$id" ] && [ ! -L "releases/$id" ] || exit 83
ln -sfn -- "releases/$id" .current.tmp && mv -T -- .current.tmp current"#,
        ),
    ])
}

/// Removes `current`: how a first deploy is undone (there was no release before it).
pub fn remove_current(deploy_to: &str) -> Cmd {
    Cmd::new("rm")
        .arg("-f")
        .arg("--")
        .arg(format!("{deploy_to}/current"))
}

/// Removes old releases and stale partial directories (names from the plan, not globs).
pub fn prune(deploy_to: &str, names: &[String]) -> Cmd {
    let paths = names.iter().map(|n| format!("releases/{n}"));
    Cmd::new("cd")
        .arg("--")
        .arg(deploy_to)
        .and(Cmd::new("rm").arg("-rf").arg("--").args(paths))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::{Command, Stdio};

    fn sh(cmd: &Cmd, stdin: &[u8]) -> (i32, String) {
        sh_with_path(cmd, stdin, None)
    }

    fn sh_with_path(cmd: &Cmd, stdin: &[u8], path: Option<&Path>) -> (i32, String) {
        use std::io::Write;
        let mut command = Command::new("/bin/sh");
        if let Some(path) = path {
            command.env("PATH", path);
        }
        let mut child = command
            .arg("-c")
            .arg(cmd.render())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let _ = input.write_all(stdin);
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn sha256(bytes: &[u8]) -> String {
        let sum = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(bytes)?;
                c.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&sum.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }

    /// A gzip'd tar of a few files, the sha256 of the uncompressed tar (the artifact's
    /// identity) and of the gzip'd bytes (what `receive` checks), made with the system's
    /// tools (the test must not trust shipit's own packer).
    fn artifact(dir: &Path) -> (Vec<u8>, String, String) {
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("storage")).unwrap();
        std::fs::write(src.join("app.txt"), "v1\n").unwrap();
        std::fs::write(src.join("storage/seed.txt"), "seed\n").unwrap();
        std::fs::write(src.join("config.yml"), "from artifact\n").unwrap();
        let tar = Command::new("tar")
            .arg("-cf")
            .arg("-")
            .arg("-C")
            .arg(&src)
            .arg(".")
            .output()
            .unwrap()
            .stdout;
        let sha = sha256(&tar);
        let mut gz = Command::new("gzip")
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            gz.stdin.take().unwrap().write_all(&tar).unwrap();
        }
        let bytes = gz.wait_with_output().unwrap().stdout;
        let upload_sha = sha256(&bytes);
        (bytes, sha, upload_sha)
    }

    #[test]
    fn receive_finish_switch_and_prune_in_real_sh() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("my app");
        let b = base.to_str().unwrap();
        let (bytes, sha, up) = artifact(dir.path());

        assert_eq!(sh(&receive(b, "r1", &up, "gzip -dc"), &bytes).0, 0);
        assert!(base.join("releases/r1.partial/app.txt").exists());
        let shared = ["storage".to_owned()];
        let files = ["config.yml".to_owned()];
        let finish1 = finish(
            b,
            "r1",
            &revision_text(&sha, Some("abc")),
            &shared,
            &files,
            None,
        );
        assert_eq!(sh(&finish1, b"").0, 0);
        assert!(!base.join("releases/r1.partial").exists());
        assert_eq!(
            std::fs::read_to_string(base.join("releases/r1/REVISION")).unwrap(),
            format!("{sha}\ngit=abc\n")
        );
        // Shared paths were seeded from the artifact and replaced by links.
        assert_eq!(
            std::fs::read_to_string(base.join("shared/storage/seed.txt")).unwrap(),
            "seed\n"
        );
        assert!(
            base.join("releases/r1/storage")
                .symlink_metadata()
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read_to_string(base.join("releases/r1/config.yml")).unwrap(),
            "from artifact\n"
        );

        assert_eq!(sh(&switch(b, "r1"), b"").0, 0);
        assert_eq!(
            std::fs::read_link(base.join("current")).unwrap(),
            Path::new("releases/r1")
        );

        // Reuse: a hard-link copy gets its own REVISION without touching r1's.
        assert_eq!(sh(&reuse(b, "r1", "r2"), b"").0, 0);
        let finish2 = finish(b, "r2", &revision_text(&sha, None), &shared, &files, None);
        assert_eq!(sh(&finish2, b"").0, 0);
        assert_eq!(
            std::fs::read_to_string(base.join("releases/r1/REVISION")).unwrap(),
            format!("{sha}\ngit=abc\n")
        );
        assert_eq!(
            std::fs::read_to_string(base.join("releases/r2/REVISION")).unwrap(),
            format!("{sha}\n")
        );
        assert_eq!(sh(&switch(b, "r2"), b"").0, 0);
        assert_eq!(
            std::fs::read_link(base.join("current")).unwrap(),
            Path::new("releases/r2")
        );

        assert_eq!(sh(&switch(b, "nope"), b"").0, 83);
        assert_eq!(
            std::fs::read_link(base.join("current")).unwrap(),
            Path::new("releases/r2")
        );

        assert_eq!(sh(&prune(b, &["r1".to_owned()]), b"").0, 0);
        assert!(!base.join("releases/r1").exists());
        assert!(base.join("releases/r2/app.txt").exists());
    }

    #[test]
    fn receive_checks_with_sha256sum_where_the_host_has_no_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let b = base.to_str().unwrap();
        let (bytes, _, up) = artifact(dir.path());
        // A PATH with the tools `receive` needs, and no openssl.
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for tool in [
            "mkdir",
            "rm",
            "mkfifo",
            "sha256sum",
            "tee",
            "gzip",
            "tar",
            "cat",
        ] {
            let found = Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .unwrap();
            let target = String::from_utf8_lossy(&found.stdout).trim().to_owned();
            std::os::unix::fs::symlink(target, bin.join(tool)).unwrap();
        }
        let wrong = "0".repeat(64);
        let cmd = receive(b, "r1", &wrong, "gzip -dc");
        assert_eq!(sh_with_path(&cmd, &bytes, Some(&bin)).0, 81);
        let cmd = receive(b, "r1", &up, "gzip -dc");
        assert_eq!(sh_with_path(&cmd, &bytes, Some(&bin)), (0, String::new()));
        assert!(base.join("releases/r1.partial/app.txt").exists());
    }

    #[test]
    fn corrupt_or_foreign_bytes_leave_no_partial() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let b = base.to_str().unwrap();
        let (bytes, sha, up) = artifact(dir.path());
        let wrong = "0".repeat(64);
        assert_eq!(sh(&receive(b, "r1", &wrong, "gzip -dc"), &bytes).0, 81);
        assert!(!base.join("releases/r1.partial").exists());
        // What is checked is the bytes received, not the tar's identity.
        assert_eq!(sh(&receive(b, "r1", &sha, "gzip -dc"), &bytes).0, 81);
        let truncated = &bytes[..bytes.len() / 2];
        assert_ne!(sh(&receive(b, "r1", &up, "gzip -dc"), truncated).0, 0);
        assert!(!base.join("releases/r1.partial").exists());
        assert_ne!(
            sh(&receive(b, "r1", &up, "gzip -dc"), b"not gzip at all").0,
            0
        );
        assert!(!base.join("releases/r1.partial").exists());
    }

    #[test]
    fn a_missing_shared_file_stops_the_release() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app");
        let b = base.to_str().unwrap();
        let (bytes, sha, up) = artifact(dir.path());
        assert_eq!(sh(&receive(b, "r1", &up, "gzip -dc"), &bytes).0, 0);
        let (code, stderr) = sh(
            &finish(b, "r1", &sha, &[], &["secrets.yml".to_owned()], None),
            b"",
        );
        assert_eq!(code, 82);
        assert!(
            stderr.contains("shared/secrets.yml` does not exist"),
            "{stderr}"
        );
        assert!(!base.join("releases/r1").exists());
    }
}
