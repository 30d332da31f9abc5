//! Shell completion: the registration script `shipit completions <SHELL>` prints, and the
//! candidates offered for a stage. The script calls `shipit` back at each Tab
//! (clap_complete's dynamic completion, `SHIPIT_COMPLETE=<shell> shipit -- <words>`), so a stage
//! added after installing the script completes too. Depends on `cli` only.
//!
//! [`stages`] reads the current directory: it runs only when a shell asks for completions.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::engine::CompletionCandidate;
use clap_complete::env::{Bash, EnvCompleter, Fish, Zsh};

use crate::cli::{Cli, Shell};

/// The environment variable that turns a run of `shipit` into a completion request. Not
/// clap's default `COMPLETE`: an environment that happens to set that (`COMPLETE=1`) must not
/// turn a deploy into a completion request, or an error.
pub const VAR: &str = "SHIPIT_COMPLETE";

/// The script that registers `shipit`'s completions in `shell`: the same bytes as
/// `SHIPIT_COMPLETE=<shell> shipit` prints. `completer` is the program the script calls back (see
/// [`completer`]).
pub fn registration(shell: Shell, completer: &str) -> Vec<u8> {
    let adapter: &dyn EnvCompleter = match shell {
        Shell::Bash => &Bash,
        Shell::Zsh => &Zsh,
        Shell::Fish => &Fish,
    };
    let mut cmd = Cli::command();
    cmd.build();
    let name = cmd.get_name();
    let bin = cmd.get_bin_name().unwrap_or(name);
    let mut script = Vec::new();
    adapter
        .write_registration(VAR, name, bin, completer, &mut script)
        .expect("writing to a Vec cannot fail");
    script
}

/// The program a registration script calls back, as clap_complete's `CompleteEnv` picks it:
/// `argv[0]` as typed (`shipit`, found on `PATH`), made absolute if it is a relative path
/// with a directory (`./target/debug/shipit`), since the shell may complete elsewhere.
pub fn completer(argv0: &OsStr, current_dir: Option<&Path>) -> String {
    let mut program = PathBuf::from(argv0);
    if let Some(dir) = current_dir
        && program.components().count() > 1
    {
        program = dir.join(program);
    }
    program.to_string_lossy().into_owned()
}

/// The stages of the current directory: the stems of `inventory/*.toml`, sorted.
pub fn stages() -> Vec<CompletionCandidate> {
    let Ok(entries) = std::fs::read_dir("inventory") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if path.extension() != Some(OsStr::new("toml")) || !path.is_file() {
                return None;
            }
            Some(path.file_stem()?.to_str()?.to_owned())
        })
        .filter(|stem| !stem.is_empty())
        .collect();
    names.sort();
    names.into_iter().map(CompletionCandidate::new).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completer_is_argv0_made_absolute_only_when_it_has_a_directory() {
        let cwd = Path::new("/work/app");
        assert_eq!(completer(OsStr::new("shipit"), Some(cwd)), "shipit");
        assert_eq!(
            completer(OsStr::new("target/debug/shipit"), Some(cwd)),
            "/work/app/target/debug/shipit"
        );
        assert_eq!(
            completer(OsStr::new("/usr/bin/shipit"), Some(cwd)),
            "/usr/bin/shipit"
        );
    }

    #[test]
    fn registration_calls_shipit_back_through_the_complete_variable() {
        let script = String::from_utf8(registration(Shell::Bash, "shipit")).unwrap();
        assert!(script.contains("SHIPIT_COMPLETE=\"bash\""), "{script}");
        assert!(
            script.contains("-F _clap_complete_shipit shipit"),
            "{script}"
        );
    }
}
