//! Running `artifact.build`: the local command that makes the artifact.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use super::ArtifactError;
use crate::transport::Stream;

/// Runs `artifact.build` locally with `sh -c` in `dir`, stdin closed, and hands each line
/// it writes to `line` with the stream it came on: the caller shows them through its own
/// output, which redacts secrets and keeps stdout clean for `--json`.
///
/// Both pipes are read at once (a build filling one while shipit waits on the other would
/// stall), and `line` is called on this thread only, in the order lines arrive.
pub fn build(command: &str, dir: &Path, line: &dyn Fn(Stream, &str)) -> Result<(), ArtifactError> {
    let start = |source| ArtifactError::BuildStart {
        command: command.to_owned(),
        dir: dir.to_owned(),
        source,
    };
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(start)?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let tx_err = tx.clone();
        scope.spawn(move || lines(stdout, Stream::Stdout, &tx));
        scope.spawn(move || lines(stderr, Stream::Stderr, &tx_err));
        // Ends when both readers are done and have dropped their senders.
        for (stream, text) in rx {
            line(stream, &text);
        }
    });
    let status = child.wait().map_err(start)?;
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

/// Sends each line read from `pipe` (without its line ending; invalid UTF-8 replaced) until
/// the pipe closes or cannot be read.
fn lines(pipe: impl Read, stream: Stream, tx: &mpsc::Sender<(Stream, String)>) {
    for bytes in BufReader::new(pipe).split(b'\n') {
        let Ok(mut bytes) = bytes else { break };
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        if tx
            .send((stream, String::from_utf8_lossy(&bytes).into_owned()))
            .is_err()
        {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::fs;

    use super::*;

    fn ignore(_: Stream, _: &str) {}

    #[test]
    fn build_runs_in_the_directory_and_reports_the_exit_status() {
        let temp = tempfile::tempdir().unwrap();
        build("echo built > out.txt", temp.path(), &ignore).unwrap();
        assert_eq!(fs::read(temp.path().join("out.txt")).unwrap(), b"built\n");

        let err = build("echo failing; exit 3", temp.path(), &ignore).unwrap_err();
        assert!(matches!(err, ArtifactError::BuildFailed { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "`artifact.build` `echo failing; exit 3` failed with exit status 3 (in `{}`)",
                temp.path().display()
            )
        );
        let err = build("true", &temp.path().join("missing"), &ignore).unwrap_err();
        assert!(matches!(err, ArtifactError::BuildStart { .. }), "{err}");
    }

    #[test]
    fn build_output_comes_back_line_by_line_with_its_stream() {
        let temp = tempfile::tempdir().unwrap();
        let seen = RefCell::new(Vec::new());
        let collect =
            |stream: Stream, line: &str| seen.borrow_mut().push((stream, line.to_owned()));
        build(
            "echo one; echo warn >&2; printf 'two\\r\\nlast'",
            temp.path(),
            &collect,
        )
        .unwrap();
        let seen = seen.into_inner();
        let out: Vec<&str> = seen
            .iter()
            .filter(|(s, _)| *s == Stream::Stdout)
            .map(|(_, l)| l.as_str())
            .collect();
        assert_eq!(out, ["one", "two", "last"]);
        assert!(
            seen.contains(&(Stream::Stderr, "warn".to_owned())),
            "{seen:?}"
        );
    }
}
