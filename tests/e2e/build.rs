//! `artifact.build` through the real binary: its output reaches the run's output as lines of
//! the host `build` (stdout and stderr kept apart, secrets redacted), and a failing build
//! stops the deploy before anything is written. Local transport, in a temp dir only.

use crate::common::*;

const SECRET: &str = "s3cr3t-build-token";

fn inventory(dir: &std::path::Path, build: &str) -> std::path::PathBuf {
    let text = format!(
        "transport = \"local\"\n[app]\nname = \"demo\"\ndeploy_to = \"{}\"\n\
         [artifact]\npath = \"out\"\nbuild = {build:?}\n\
         [env]\npath = \"{}\"\nfrom_env = [\"TOKEN\"]\n\n[[hosts]]\nname = \"a\"\n",
        dir.join("deploy").display(),
        dir.join("demo.env").display(),
    );
    write(dir, "inv.toml", &text)
}

#[test]
fn build_output_goes_through_the_run_output_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let inv = inventory(
        dir.path(),
        "mkdir -p out && echo 1 > out/VERSION && echo building && echo \"token $TOKEN\" && echo careful >&2",
    );
    let (code, stdout, stderr) = run(crate::support::shipit_command(dir.path())
        .current_dir(dir.path())
        .env("TOKEN", SECRET)
        .args(["deploy", "test", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("build | building"), "{stdout}");
    assert!(stdout.contains("build | token [REDACTED]"), "{stdout}");
    assert!(stderr.contains("build ! careful"), "{stderr}");
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "{stdout}\n{stderr}"
    );
    assert!(dir.path().join("deploy/current/VERSION").exists());
}

#[test]
fn a_failing_build_stops_the_deploy_with_its_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let inv = inventory(dir.path(), "echo failing; exit 3");
    let (code, stdout, stderr) = run(crate::support::shipit_command(dir.path())
        .current_dir(dir.path())
        .env("TOKEN", SECRET)
        .args(["deploy", "test", "-i"])
        .arg(&inv));
    assert_ne!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("build | failing"), "{stdout}");
    assert!(
        stderr.contains("`artifact.build` `echo failing; exit 3` failed with exit status 3"),
        "{stderr}"
    );
    assert!(!dir.path().join("deploy").exists(), "nothing is written");
}
