//! A jump host: the target connection runs inside a direct-tcpip channel of the bastion.

use crate::common::*;
use crate::support::Fleet;

#[test]
fn jump_host_reaches_a_target_only_the_bastion_can_resolve() {
    let fleet = Fleet::start(2);
    let (bastion, target) = (fleet.host("h1"), fleet.host("h2"));
    let known = bastion_only_target(&fleet);
    let base = inventory_trusting(&fleet, &[], &known);
    let hosts = format!(
        "[[hosts]]\nname = \"inner\"\naddress = \"only-via-bastion\"\nport = {}\n",
        target.port
    );
    let with_jump = base.replace(
        "connect_timeout",
        &format!(
            "jump = \"root@127.0.0.1:{}\"\nconnect_timeout",
            bastion.port
        ),
    );
    let inv = write(fleet.dir(), "jump.toml", &format!("{with_jump}{hosts}"));
    let (code, stdout, stderr) = run(fleet
        .shipit()
        .args(["exec", "test", "-i"])
        .arg(&inv)
        .args(["--", "hostname"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("inner | h2"), "{stdout}");

    // Without the jump the same host is unreachable.
    let inv = write(fleet.dir(), "direct.toml", &format!("{base}{hosts}"));
    let (code, _, stderr) = run(fleet.shipit().args(["check", "test", "-i"]).arg(&inv));
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot reach `inner`"), "{stderr}");
}

#[test]
fn an_unknown_bastion_key_is_refused_too() {
    let fleet = Fleet::start(2);
    let (bastion, target) = (fleet.host("h1"), fleet.host("h2"));
    let known = write(
        fleet.dir(),
        "only_target_known",
        &format!("[127.0.0.1]:{} {}\n", target.port, target.host_keys[0]),
    );
    let text = inventory_trusting(&fleet, &["h2"], &known).replace(
        "connect_timeout",
        &format!(
            "jump = \"root@127.0.0.1:{}\"\nconnect_timeout",
            bastion.port
        ),
    );
    let inv = write(fleet.dir(), "inv.toml", &text);
    let (code, _, stderr) = run(fleet.shipit().args(["check", "test", "-i"]).arg(&inv));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("through jump host") && stderr.contains("is not known"),
        "{stderr}"
    );
}
