//! `shipit completions` in real shells (bash runs the script; zsh and fish parse it) and
//! `shipit man`, rendered by the real `man`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{run, write};
use crate::support::{CLEAN_PATH, clean_command, shipit_bin, shipit_command};

const INVENTORY: &str = "[app]\nname = \"demo\"\ndeploy_to = \"/opt/demo\"\n\n[[hosts]]\nname = \"web-1\"\naddress = \"127.0.0.1\"\n";

/// `PATH` with the built `shipit` first, as after installing it.
fn path_with_shipit() -> String {
    let dir = Path::new(shipit_bin()).parent().unwrap();
    format!("{}:{CLEAN_PATH}", dir.display())
}

/// A project with `inventory/staging.toml` and `inventory/prod.toml`.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("inventory")).unwrap();
    write(dir.path(), "inventory/staging.toml", INVENTORY);
    write(dir.path(), "inventory/prod.toml", INVENTORY);
    write(dir.path(), "inventory/known_hosts", "");
    dir
}

/// `shipit completions <shell>`, run as `shipit` found on `PATH`, written to a file.
fn script(dir: &Path, shell: &str) -> PathBuf {
    let (code, stdout, stderr) = run(clean_command("shipit", dir)
        .env("PATH", path_with_shipit())
        .current_dir(dir)
        .args(["completions", shell]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("shipit"), "{stdout}");
    write(dir, &format!("completions.{shell}"), &stdout)
}

/// What bash offers for `words` (the last one being completed), through the function the
/// script registers for `shipit`, run in `dir`.
fn bash_complete(dir: &Path, script: &Path, words: &[&str]) -> Vec<String> {
    // As bash sets them for a Tab (COMP_TYPE 9) at the end of the line.
    const DRIVER: &str = r#"
source "$SCRIPT"
spec=$(complete -p shipit) || exit 90
fn=$(sed -E 's/.* -F ([^ ]+) .*/\1/' <<<"$spec")
COMP_WORDS=("$@")
COMP_CWORD=$(( $# - 1 ))
COMP_LINE="$*"
COMP_POINT=${#COMP_LINE}
COMP_TYPE=9
COMPREPLY=()
"$fn" shipit "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"#;
    let (code, stdout, stderr) = run(clean_command("bash", dir)
        .env("PATH", path_with_shipit())
        .env("SCRIPT", script)
        .current_dir(dir)
        .args(["--norc", "--noprofile", "-c", DRIVER, "bash"])
        .args(words));
    assert_eq!(code, 0, "{stderr}");
    stdout.lines().map(str::to_owned).collect()
}

/// Fails, saying what to install, where the CI machine would have `program`.
fn require(program: &str, package: &str) {
    let found = Command::new(program).arg("--version").output().is_ok();
    assert!(
        found,
        "`{program}` is not installed: `apt-get install {package}` (.ci/run does)"
    );
}

#[test]
fn bash_completes_commands_and_stages_from_the_inventory_directory() {
    require("bash", "bash");
    let dir = project();
    let script = script(dir.path(), "bash");

    let offered = bash_complete(dir.path(), &script, &["shipit", "de"]);
    assert_eq!(offered, ["deploy"]);

    for command in ["deploy", "rollback", "exec"] {
        let offered = bash_complete(dir.path(), &script, &["shipit", command, ""]);
        assert!(
            offered.iter().any(|w| w == "staging") && offered.iter().any(|w| w == "prod"),
            "{command}: {offered:?}"
        );
        assert!(!offered.iter().any(|w| w == "known_hosts"), "{offered:?}");
    }
    let offered = bash_complete(dir.path(), &script, &["shipit", "check", "st"]);
    assert_eq!(offered, ["staging"]);

    // Completion asks `shipit` each time: a stage added after installing the script completes.
    write(dir.path(), "inventory/qa.toml", INVENTORY);
    let offered = bash_complete(dir.path(), &script, &["shipit", "plan", ""]);
    assert!(offered.iter().any(|w| w == "qa"), "{offered:?}");
}

#[test]
fn completions_is_what_complete_env_prints() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let (_, generated, _) = run(shipit_command(dir.path()).args(["completions", shell]));
        let (code, registered, stderr) =
            run(shipit_command(dir.path()).env("SHIPIT_COMPLETE", shell));
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(generated, registered, "{shell}");
    }
    // clap's usual variable is left alone: an environment with `COMPLETE=1` runs commands.
    let (code, stdout, stderr) = run(shipit_command(dir.path())
        .env("COMPLETE", "1")
        .args(["completions", "bash"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("SHIPIT_COMPLETE"), "{stdout}");
}

#[test]
fn zsh_and_fish_scripts_parse() {
    let dir = project();
    for (shell, check) in [("zsh", "-n"), ("fish", "--no-execute")] {
        require(shell, shell);
        let script = script(dir.path(), shell);
        let text = std::fs::read_to_string(&script).unwrap();
        assert!(!text.trim().is_empty() && text.contains("shipit"), "{text}");
        let (code, _, stderr) = run(clean_command(shell, dir.path()).arg(check).arg(&script));
        assert_eq!(code, 0, "{shell}: {stderr}");
    }
}

#[test]
fn completions_for_an_unknown_shell_is_a_usage_error_naming_the_shells() {
    let home = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) =
        run(shipit_command(home.path()).args(["completions", "nosuchshell"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    for shell in ["bash", "zsh", "fish"] {
        assert!(stderr.contains(shell), "{stderr}");
    }
}

#[test]
fn man_prints_the_page_and_names_the_commands() {
    let home = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(shipit_command(home.path()).arg("man"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(".TH shipit 1"), "{stdout}");
    for command in ["deploy", "rollback", "check", "completions"] {
        assert!(stdout.contains(command), "{command}: {stdout}");
    }
}

#[test]
fn man_dir_writes_one_page_per_command_that_man_renders() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("share/man/man1");
    let (code, stdout, stderr) = run(shipit_command(home.path())
        .arg("man")
        .arg("--dir")
        .arg(&dir));
    assert_eq!(code, 0, "{stderr}");
    for page in [
        "shipit.1",
        "shipit-deploy.1",
        "shipit-rollback.1",
        "shipit-man.1",
    ] {
        let path = dir.join(page);
        assert!(path.is_file(), "{page} missing");
        assert!(
            stderr.contains(&path.display().to_string()),
            "{page} not listed: {stderr}"
        );
    }
    assert!(stdout.is_empty(), "{stdout}");

    assert!(
        Command::new("man").arg("--version").output().is_ok(),
        "`man` is not installed: apt-get install man-db groff-base (.ci/run does)"
    );
    for page in ["shipit.1", "shipit-deploy.1"] {
        let (code, rendered, stderr) = run(clean_command("man", home.path())
            .env("MANPAGER", "cat")
            .args(["-P", "cat", "-l"])
            .arg(dir.join(page)));
        assert_eq!(code, 0, "{page}: {stderr}");
        assert!(rendered.contains("deploy"), "{page}: {rendered}");
    }
}

#[test]
fn man_dir_that_cannot_be_written_names_the_path() {
    let home = tempfile::tempdir().unwrap();
    let file = write(home.path(), "not-a-dir", "");
    let dir = file.join("man1");
    let (code, stdout, stderr) = run(shipit_command(home.path())
        .arg("man")
        .arg("--dir")
        .arg(&dir));
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(&format!("error: cannot write `{}`: ", dir.display())),
        "{stderr}"
    );
}
