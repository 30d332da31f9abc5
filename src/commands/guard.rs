//! The dead-deployer guard: before a host is switched, a timer is armed on the host that
//! switches it back unless the deployer confirms in time. A CI job cancelled or a laptop
//! losing Wi-Fi mid-switch then cannot leave a host on an unconfirmed release.
//!
//! The timer is a transient `systemd-run --on-active=` unit where systemd runs, else a
//! detached `setsid` sleeper. Confirming and firing race for one `mkdir`: exactly one of
//! them wins, so a late confirmation knows the guard already reverted the host.

use crate::shell::Cmd;

fn dir(deploy_to: &str) -> String {
    format!("{deploy_to}/.shipit/guard")
}

/// Writes the revert script (stdin) and arms the timer to run it after `delay_secs`.
/// Prints `armed systemd` or `armed setsid`.
pub fn arm(deploy_to: &str, token: &str, delay_secs: u64) -> Cmd {
    Cmd::seq([
        Cmd::assign("g", dir(deploy_to)),
        Cmd::assign("token", token),
        Cmd::assign("delay", delay_secs.to_string()),
        Cmd::new(
            r#"
umask 077
mkdir -p -- "$g" || exit 1
# What this run's switch-back restores is saved from here on; older copies must not be.
rm -rf -- "$g/../previous"
find "$g" -maxdepth 1 -name '*.decided' -mmin +1440 -exec rm -rf {} + 2>/dev/null
rm -rf -- "$g/$token.decided"
cat > "$g/$token.sh" || exit 1
if command -v systemd-run >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl stop "shipit-guard-$token.timer" "shipit-guard-$token.service" >/dev/null 2>&1
  systemctl reset-failed "shipit-guard-$token.service" >/dev/null 2>&1
  if systemd-run --quiet --collect --unit="shipit-guard-$token" --on-active="${delay}s" \
       --timer-property=AccuracySec=100ms /bin/sh "$g/$token.sh"; then
    echo "armed systemd"; exit 0
  fi
fi
setsid sh -c 'sleep "$1"; exec /bin/sh "$2"' shipit-guard "$delay" "$g/$token.sh" \
  </dev/null >/dev/null 2>&1 &
echo $! > "$g/$token.pid"
echo "armed setsid""#,
        ),
    ])
}

/// The revert script's frame: run `body` only if the guard wins the decision.
pub fn script(
    deploy_to: &str,
    token: &str,
    host: &str,
    body: &[Cmd],
    history_line: &str,
) -> String {
    let header = Cmd::seq([
        Cmd::assign("g", dir(deploy_to)),
        Cmd::assign("token", token),
        Cmd::assign("history", format!("{deploy_to}/.shipit/history.jsonl")),
        Cmd::assign("line", history_line),
    ]);
    let mut text = format!(
        "#!/bin/sh\n# shipit dead-deployer guard of run {token} on {host}: the deployer did not confirm in time\n{}\n",
        header.render()
    );
    text.push_str("mkdir -- \"$g/$token.decided\" 2>/dev/null || exit 0\n");
    for cmd in body {
        text.push_str(&cmd.render());
        text.push('\n');
    }
    text.push_str(
        "printf '%s\\n' \"$line\" >> \"$history\"\nrm -f -- \"$g/$token.sh\" \"$g/$token.pid\"\n",
    );
    text
}

/// Confirms: disarms the timer. Exit [`GUARD_FIRED`](super::exit::GUARD_FIRED) when the guard
/// already fired (the host was switched back).
pub fn confirm(deploy_to: &str, token: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("g", dir(deploy_to)),
        Cmd::assign("token", token),
        Cmd::new(
            r#"
if ! mkdir -- "$g/$token.decided" 2>/dev/null; then exit 90; fi
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl stop "shipit-guard-$token.timer" >/dev/null 2>&1
fi
if [ -f "$g/$token.pid" ]; then kill "$(cat "$g/$token.pid")" 2>/dev/null; fi
# The decision stays recorded: a timer that fires anyway finds it and does nothing.
rm -f -- "$g/$token.sh" "$g/$token.pid"
exit 0"#,
        ),
    ])
}
