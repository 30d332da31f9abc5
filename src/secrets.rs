//! Reading the secrets of `[env.secrets.NAME]` on the deployer: a command's stdout (`op
//! read …`, `sops -d …`, `vault kv get -field=…`) or a file's content. Done once, before
//! any connection, and only by the commands that need secrets: a `status` never runs `op
//! read`. For the others, files are still read when they can be, so that their values are
//! hidden from whatever prints them (a command is not run for that).
//!
//! The value is the output without its final newline (`\n` or `\r\n`); an empty value is an
//! error, as an empty variable of `from_env` is, since it is what a failed lookup prints.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::deploy::envfile::redactor;
use crate::inventory::{EnvFile, SecretFrom, SecretSource};
use crate::shell::Secret;

/// How many last lines of a failing command's stderr an error shows.
const STDERR_LINES: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("`env.secrets.{name}` ({origin}): cannot run `{command}`")]
    Start {
        name: String,
        origin: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`env.secrets.{name}` ({origin}): `{command}` failed with {status}{}", tail(.stderr))]
    Failed {
        name: String,
        origin: String,
        command: String,
        status: ExitStatus,
        /// Its last lines, every secret value known replaced.
        stderr: String,
    },
    #[error("`env.secrets.{name}` ({origin}): cannot read `{}`", .path.display())]
    Read {
        name: String,
        origin: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`env.secrets.{name}` ({origin}): `{path}` can be read or written by other users (mode {mode:03o}); make it the deployer's alone: `chmod 600 {path}`"
    )]
    Exposed {
        name: String,
        origin: String,
        path: String,
        mode: u32,
    },
    #[error("`env.secrets.{name}` ({origin}): {what} {problem}")]
    BadValue {
        name: String,
        origin: String,
        /// "`op read …` printed" or "`secrets/db` holds".
        what: String,
        problem: &'static str,
    },
}

fn tail(stderr: &str) -> String {
    if stderr.is_empty() {
        " and printed nothing on stderr".to_owned()
    } else {
        format!(":\n{stderr}")
    }
}

/// Reads the secrets of `env.sources` into `env.secrets`. `needed`: the command writes the
/// env file or hands a secret over, so every source must give a value; otherwise only the
/// files that can be read are (for redaction), and no command runs. Commands run with
/// `sh -c` in `dir` (the directory shipit runs in), stdin closed.
pub fn resolve(env: &mut EnvFile, needed: bool, dir: &Path) -> Result<(), SecretError> {
    for source in env.sources.clone() {
        let value = match &source.from {
            SecretFrom::Command(_) if !needed => continue,
            SecretFrom::Command(command) => {
                let known: Vec<&Secret> = env.secrets.iter().map(|(_, v)| v).collect();
                run(&source, command, dir, &known)?
            }
            SecretFrom::File(path) => match read(&source, path, needed) {
                Ok(value) => value,
                Err(_) if !needed => continue,
                Err(e) => return Err(e),
            },
        };
        env.secrets.push((source.name.clone(), value));
    }
    Ok(())
}

fn run(
    source: &SecretSource,
    command: &str,
    dir: &Path,
    known: &[&Secret],
) -> Result<Secret, SecretError> {
    let output = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| SecretError::Start {
            name: source.name.clone(),
            origin: source.origin.clone(),
            command: command.to_owned(),
            source: e,
        })?;
    if !output.status.success() {
        // What it printed on stdout before failing may be part of the value.
        let partial = Secret::new(String::from_utf8_lossy(&output.stdout).into_owned());
        let redactor = redactor(known.iter().copied().chain([&partial]));
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let last = lines[lines.len().saturating_sub(STDERR_LINES)..].join("\n");
        return Err(SecretError::Failed {
            name: source.name.clone(),
            origin: source.origin.clone(),
            command: command.to_owned(),
            status: output.status,
            stderr: redactor.apply(&last).into_owned(),
        });
    }
    value(source, output.stdout, format!("`{command}` printed"))
}

/// The file's value; `strict`: refused when other users can read or write it (a command
/// that only redacts reads it all the same).
fn read(source: &SecretSource, path: &Path, strict: bool) -> Result<Secret, SecretError> {
    let read_error = |e| SecretError::Read {
        name: source.name.clone(),
        origin: source.origin.clone(),
        path: path.to_owned(),
        source: e,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let mode = file.metadata().map_err(read_error)?.permissions().mode() & 0o777;
    // As `ssh` refuses a private key others can read: the secret is not one any more.
    if strict && mode & 0o077 != 0 {
        return Err(SecretError::Exposed {
            name: source.name.clone(),
            origin: source.origin.clone(),
            path: path.display().to_string(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(read_error)?;
    value(source, bytes, format!("`{}` holds", path.display()))
}

/// The value in `bytes`: without its final newline, not empty, text without NUL.
fn value(source: &SecretSource, mut bytes: Vec<u8>, what: String) -> Result<Secret, SecretError> {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    let bad = |problem| SecretError::BadValue {
        name: source.name.clone(),
        origin: source.origin.clone(),
        what: what.clone(),
        problem,
    };
    if bytes.is_empty() {
        return Err(bad("nothing: an empty secret is refused"));
    }
    if bytes.contains(&0) {
        return Err(bad("a NUL byte, which no env file can hold"));
    }
    String::from_utf8(bytes)
        .map(Secret::new)
        .map_err(|_| bad("bytes that are not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(sources: Vec<SecretSource>) -> EnvFile {
        EnvFile {
            path: "/etc/a.env".into(),
            vars: Default::default(),
            from_env: vec!["KNOWN".into()],
            secrets: vec![("KNOWN".into(), Secret::new("known-value-123"))],
            sources,
        }
    }

    fn source(name: &str, from: SecretFrom) -> SecretSource {
        SecretSource {
            name: name.into(),
            from,
            origin: "inventory/prod.toml:9:14".into(),
        }
    }

    fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn values(env: &EnvFile) -> Vec<(String, String)> {
        env.secrets
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned()))
            .collect()
    }

    #[test]
    fn commands_and_files_give_their_output_without_the_final_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = secret_file(dir.path(), "db", "file-value\r\n", 0o600);
        std::fs::write(dir.path().join("marker"), "from-the-dir").unwrap();
        let mut e = env(vec![
            source(
                "A",
                SecretFrom::Command("printf 'line one\\nline two\\n\\n'".into()),
            ),
            source("B", SecretFrom::File(file)),
            source(
                "C",
                SecretFrom::Command("cat marker; echo noise >&2".into()),
            ),
        ]);
        resolve(&mut e, true, dir.path()).unwrap();
        assert_eq!(
            values(&e),
            [
                ("KNOWN".into(), "known-value-123".into()),
                ("A".into(), "line one\nline two\n".into()),
                ("B".into(), "file-value".into()),
                ("C".into(), "from-the-dir".into()),
            ]
        );
    }

    #[test]
    fn without_need_no_command_runs_and_unreadable_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let file = secret_file(dir.path(), "ok", "file-value", 0o400);
        let ran = dir.path().join("ran");
        let mut e = env(vec![
            source(
                "A",
                SecretFrom::Command(format!("touch {}; echo x", ran.display())),
            ),
            source("B", SecretFrom::File(dir.path().join("missing"))),
            source("C", SecretFrom::File(file)),
        ]);
        resolve(&mut e, false, dir.path()).unwrap();
        assert!(!ran.exists(), "the command ran");
        let names: Vec<String> = values(&e).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["KNOWN", "C"]);
    }

    #[test]
    fn a_failing_command_names_the_key_and_shows_its_stderr_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let command = "printf partial-value-456; echo 'token known-value-123 and partial-value-456 refused' >&2; exit 3";
        let mut e = env(vec![source("API_KEY", SecretFrom::Command(command.into()))]);
        let err = resolve(&mut e, true, dir.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "`env.secrets.API_KEY` (inventory/prod.toml:9:14): `{command}` failed with exit status: 3:\ntoken [REDACTED] and [REDACTED] refused"
            )
        );
        let mut e = env(vec![source(
            "API_KEY",
            SecretFrom::Command("exit 1".into()),
        )]);
        let err = resolve(&mut e, true, dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with("failed with exit status: 1 and printed nothing on stderr"),
            "{err}"
        );
        let mut e = env(vec![source("API_KEY", SecretFrom::Command("echo".into()))]);
        let err = resolve(&mut e, true, dir.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            "`env.secrets.API_KEY` (inventory/prod.toml:9:14): `echo` printed nothing: an empty secret is refused"
        );
    }

    #[test]
    fn a_file_others_can_read_or_one_missing_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let open = secret_file(dir.path(), "open", "v-123456", 0o644);
        let mut e = env(vec![source("DB", SecretFrom::File(open.clone()))]);
        let err = resolve(&mut e, true, dir.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "`env.secrets.DB` (inventory/prod.toml:9:14): `{0}` can be read or written by other users (mode 644); make it the deployer's alone: `chmod 600 {0}`",
                open.display()
            )
        );
        assert!(!err.contains("v-123456"));
        let missing = dir.path().join("missing");
        let mut e = env(vec![source("DB", SecretFrom::File(missing.clone()))]);
        let err = resolve(&mut e, true, dir.path()).unwrap_err();
        assert_eq!(
            crate::error::chain(&err),
            format!(
                "`env.secrets.DB` (inventory/prod.toml:9:14): cannot read `{}`: No such file or directory (os error 2)",
                missing.display()
            )
        );
    }
}
