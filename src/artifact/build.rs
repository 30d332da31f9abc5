//! Running `artifact.build`: the local command that makes the artifact.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};

use super::ArtifactError;

/// Runs `artifact.build` locally with `sh -c` in `dir`, its stdout and stderr both going to
/// shipit's stderr, because shipit's stdout is reserved for `--json` data.
pub fn build(command: &str, dir: &Path) -> Result<(), ArtifactError> {
    let start = |source| ArtifactError::BuildStart {
        command: command.to_owned(),
        dir: dir.to_owned(),
        source,
    };
    let stderr = io::stderr().as_fd().try_clone_to_owned().map_err(start)?;
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .stderr(Stdio::inherit())
        .status()
        .map_err(start)?;
    if status.success() {
        Ok(())
    } else {
        Err(ArtifactError::BuildFailed {
            command: command.to_owned(),
            dir: dir.to_owned(),
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn build_runs_in_the_directory_and_reports_the_exit_status() {
        let temp = tempfile::tempdir().unwrap();
        build("echo built > out.txt", temp.path()).unwrap();
        assert_eq!(fs::read(temp.path().join("out.txt")).unwrap(), b"built\n");

        let err = build("echo failing; exit 3", temp.path()).unwrap_err();
        assert!(matches!(err, ArtifactError::BuildFailed { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "`artifact.build` `echo failing; exit 3` failed with exit status 3 (in `{}`)",
                temp.path().display()
            )
        );
        let err = build("true", &temp.path().join("missing")).unwrap_err();
        assert!(matches!(err, ArtifactError::BuildStart { .. }), "{err}");
    }
}
