//! What CI logs show: no ANSI codes under `CI=true`; GitHub Actions groups, error
//! annotations and the step summary under `GITHUB_ACTIONS=true`; a collapsible section per
//! host under `GITLAB_CI=true`.

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
    assert!(!stdout.contains("section_start"), "{stdout}");
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

/// The section of `name` in `log`: its start line's options and header, and its lines,
/// which its own end marker must close.
fn gitlab_section<'a>(log: &'a str, name: &str) -> (&'a str, &'a str) {
    let opened = log
        .split("\u{1b}[0Ksection_start:")
        .find_map(|s| {
            let (stamp, rest) = s.split_once(':')?;
            let rest = rest.strip_prefix(name)?;
            (stamp.parse::<u64>().is_ok() && rest.starts_with(['[', '\r'])).then_some(rest)
        })
        .unwrap_or_else(|| panic!("no section `{name}` in:\n{log}"));
    let (head, body) = opened.split_once('\n').expect("a section start line");
    let (lines, end) = body
        .split_once("\u{1b}[0Ksection_end:")
        .unwrap_or_else(|| panic!("section `{name}` never ends:\n{log}"));
    let closes = end.split_once(':').is_some_and(|(stamp, rest)| {
        stamp.parse::<u64>().is_ok() && rest.starts_with(&format!("{name}\r\u{1b}[0K\n"))
    });
    assert!(closes, "section `{name}` is closed by another:\n{log}");
    (head, lines)
}

#[test]
fn gitlab_ci_gets_a_collapsible_section_per_host() {
    let fleet = Fleet::start(2);
    let app = fleet.dir().join("app");
    std::fs::create_dir_all(&app).unwrap();
    let deploy = |version: &str, gitlab: bool, json: bool| {
        std::fs::write(app.join("VERSION"), version).unwrap();
        // Staging fails on h1 only, with version `bad`: nothing switches.
        let extra = format!(
            "[artifact]\npath = \"{}\"\n[[hooks]]\nat = \"after_upload\"\ncommand = \"echo hook says $(cat VERSION) on $SHIPIT_HOST; echo warning from $SHIPIT_HOST >&2; test $(cat VERSION)-$SHIPIT_HOST != bad-h1\"\n",
            app.display()
        );
        let inv = write(
            fleet.dir(),
            "inv.toml",
            &inventory_text(&fleet, &["h1", "h2"], &extra),
        );
        let mut cmd = fleet.shipit();
        cmd.env("CI", "true")
            .args(["deploy", "test", "-i"])
            .arg(&inv);
        if gitlab {
            cmd.env("GITLAB_CI", "true");
        }
        if json {
            cmd.arg("--json");
        }
        run(&mut cmd)
    };

    // Both hosts succeed: each one's lines in a collapsed section named after it.
    let (code, stdout, stderr) = deploy("v1", true, false);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    for host in ["h1", "h2"] {
        let (head, lines) = gitlab_section(&stdout, &format!("shipit_host_{host}"));
        assert!(
            head.starts_with("[collapsed=true]\r\u{1b}[0K")
                && head.ends_with(&format!("{host}: output (2 lines)")),
            "{head:?}"
        );
        assert_eq!(
            lines,
            format!("{host} | hook says v1 on {host}\n{host} ! warning from {host}\n"),
            "{stdout}"
        );
    }
    // Every hook line is in its host's section, none outside.
    assert_eq!(stdout.matches("hook says").count(), 2, "{stdout}");
    assert!(!stderr.contains("hook says"), "{stderr}");
    // The results still stream, plain and timestamped, on stderr.
    assert!(stderr.contains(" h1 ok: "), "{stderr}");

    // h1 fails: its section is open, with its output; h2's too (it never finished).
    let (code, stdout, stderr) = deploy("bad", true, false);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let (head, lines) = gitlab_section(&stdout, "shipit_host_h1");
    assert!(head.starts_with("\r\u{1b}[0Kh1: output"), "{head:?}");
    assert!(
        lines.contains("h1 | hook says bad on h1") && lines.contains("h1 ! warning from h1"),
        "{lines}"
    );
    assert!(!lines.contains("on h2"), "{lines}");
    let (head, lines) = gitlab_section(&stdout, "shipit_host_h2");
    assert!(head.starts_with("\r"), "{head:?}");
    assert!(lines.contains("h2 | hook says bad on h2"), "{lines}");
    assert!(stderr.contains(" h1 FAILED: "), "{stderr}");

    // Without GITLAB_CI: no sections, no ANSI codes, the lines as they come.
    let (code, stdout, stderr) = deploy("bad", false, false);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        !stdout.contains("section_") && !stderr.contains("section_"),
        "{stdout}\n{stderr}"
    );
    assert!(!stdout.contains('\u{1b}') && !stderr.contains('\u{1b}'));
    assert!(stdout.contains("h1 | hook says bad on h1"), "{stdout}");

    // With `--json`, stdout is the report alone.
    let (code, stdout, stderr) = deploy("v2", true, true);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect(&stdout);
    assert_eq!(report["outcome"], "deployed", "{report}");
    assert!(!stderr.contains("section_"), "{stderr}");
}

/// `shipit deploy prod --json > report.json` in CI: stdout is the report alone, and the log
/// (stderr) has what it has without `--json`: the migration's output, prefixed by host, the
/// host's failure and the summary.
#[test]
fn with_json_the_log_keeps_the_human_lines_on_stderr() {
    let fleet = Fleet::start(2);
    let app = fleet.dir().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("VERSION"), "v1").unwrap();
    let extra = format!(
        "[artifact]\npath = \"{}\"\n[migrate]\ncommand = \"echo migrating to $(cat VERSION); echo 'relation users already exists' >&2; exit 3\"\n",
        app.display()
    );
    let inv = write(
        fleet.dir(),
        "inv.toml",
        &inventory_text(&fleet, &["h1", "h2"], &extra),
    );
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .env("CI", "true")
        .args(["deploy", "test", "--json", "-i"])
        .arg(&inv));
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report["outcome"], "failed", "{report}");
    assert!(!stdout.contains("migrating"), "{stdout}");
    // The migration's lines, stdout and stderr, each prefixed by its host.
    assert!(stderr.contains("h1 | migrating to v1"), "{stderr}");
    assert!(
        stderr.contains("h1 ! relation users already exists"),
        "{stderr}"
    );
    // The failure: the host's line and the summary, as without `--json`.
    assert!(
        stderr.contains(" h1 FAILED: the migration failed"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was switched"), "{stderr}");
}
