//! What CI logs show: no ANSI codes under `CI=true`; GitHub Actions groups, error
//! annotations and the step summary under `GITHUB_ACTIONS=true`.

use crate::common::*;
use crate::support::Fleet;

fn setup(fleet: &Fleet, version: &str) -> std::path::PathBuf {
    let app = fleet.dir().join(format!("app-{version}"));
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("VERSION"), version).unwrap();
    let extra = format!(
        "[artifact]\npath = \"{}\"\n[[hooks]]\nat = \"after_switch\"\ncommand = \"echo hook says $(cat VERSION); test $(cat VERSION) != bad\"\n",
        app.display()
    );
    write(
        fleet.dir(),
        "inv.toml",
        &inventory_text(fleet, &["h1", "h2"], &extra),
    )
}

#[test]
fn ci_output_is_plain_lines_without_ansi_codes() {
    let fleet = Fleet::start(2);
    let inv = setup(&fleet, "v1");
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .env("CI", "true")
        .env("TERM", "xterm-256color")
        .args(["deploy", "test", "-v", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stdout.contains('\u{1b}') && !stderr.contains('\u{1b}'),
        "ANSI codes in CI output"
    );
    // Timestamped lines, one per step, and the summary table.
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("20") && l.contains("h1") && l.contains("uploading")),
        "{stderr}"
    );
    assert!(stderr.contains("deployed "), "{stderr}");
    assert!(stdout.contains("h1 | hook says v1"), "{stdout}");
}

#[test]
fn github_actions_gets_groups_annotations_and_a_step_summary() {
    let fleet = Fleet::start(2);
    let inv = setup(&fleet, "v1");
    let (code, _, stderr) = run(fleet.shipit().args(["deploy", "test", "-i"]).arg(&inv));
    assert_eq!(code, 0, "{stderr}");
    let inv = setup(&fleet, "bad");
    let summary = fleet.dir().join("step-summary.md");
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .env("CI", "true")
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_STEP_SUMMARY", &summary)
        .args(["deploy", "test", "-i"])
        .arg(&inv));
    assert_eq!(code, 3, "{stdout}\n{stderr}");
    assert!(stdout.contains("::group::h1: failed"), "{stdout}");
    assert!(stdout.contains("::endgroup::"), "{stdout}");
    let group = stdout
        .split("::group::h1: failed")
        .nth(1)
        .unwrap()
        .split("::endgroup::")
        .next()
        .unwrap();
    assert!(
        group.contains("hook says bad"),
        "the failed host's output is in its group: {group}"
    );
    assert!(
        stdout.contains("::error title=shipit%3A h1 failed::"),
        "{stdout}"
    );
    let md = std::fs::read_to_string(&summary).expect("step summary written");
    assert!(
        md.contains("### shipit deploy `test`")
            && md.contains("| h1 |")
            && md.contains("rolled back"),
        "{md}"
    );
    assert!(!stdout.contains('\u{1b}') && !stderr.contains('\u{1b}'));
}
