//! What people read first: `--help`, kept as snapshots so a change to it is a reviewed change.

use crate::common::run;
use crate::support::shipit_command;

fn help(args: &[&str]) -> String {
    let home = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(shipit_command(home.path()).args(args));
    assert_eq!(code, 0, "{stderr}");
    stdout
}

#[test]
fn top_level_help_lists_only_working_commands_with_examples() {
    insta::assert_snapshot!(help(&["--help"]));
}

#[test]
fn every_command_help_shows_an_example() {
    for command in [
        "check", "exec", "task", "deploy", "rollback", "releases", "history", "unlock", "lock",
        "logs", "shell", "config",
    ] {
        let text = help(&[command, "--help"]);
        assert!(
            text.contains(&format!("shipit {command} ")),
            "{command}: {text}"
        );
        insta::assert_snapshot!(format!("help_{command}"), text);
    }
}

#[test]
fn usage_errors_exit_2() {
    let home = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(shipit_command(home.path()).args(["exec", "staging"]));
    assert_eq!(code, 2, "{stderr}");
    let (code, _, _) = run(shipit_command(home.path()).args(["frobnicate"]));
    assert_eq!(code, 2);
}
