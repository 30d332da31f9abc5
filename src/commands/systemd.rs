//! systemd units: candidates rendered into the release, checked with `systemd-analyze
//! verify`, installed into `/etc/systemd/system/` only when changed (the previous copy kept
//! under `<deploy_to>/.shipit/previous/systemd/` for rollback), daemon-reload only when
//! something changed, enabled on first install, restarted, confirmed active.

use crate::shell::Cmd;

/// Where a unit is installed.
pub const UNIT_DIR: &str = "/etc/systemd/system";

/// Checks the candidates in `dir` (one file per unit, named as the unit). Exit 0 when they
/// verify or the host has no `systemd-analyze`; [`VERIFY_FAILED`](super::exit::VERIFY_FAILED)
/// with the report on stderr when it prints anything (it exits 0 on many real problems).
///
/// First, no unit may be masked on the host (see [`install`]): exit
/// [`FOREIGN_FILE`](super::exit::FOREIGN_FILE) while nothing is switched yet.
pub fn verify(dir: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("dir", dir),
        Cmd::assign("live", UNIT_DIR),
        Cmd::new(
            r#"
for unit in "$dir"/*; do
  unit=${unit##*/}
  if [ -L "$live/$unit" ] && [ "$(readlink -- "$live/$unit")" = /dev/null ]; then
    printf '`%s` is masked (a link to /dev/null): shipit does not unmask it; run `systemctl unmask %s` if it should run\n' "$live/$unit" "$unit" >&2
    exit 96
  fi
done
command -v systemd-analyze >/dev/null 2>&1 || { echo "no systemd-analyze: not verified"; exit 0; }
report=$(cd -- "$dir" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no -- * 2>&1)
status=$?
if [ "$status" != 0 ] || [ -n "$report" ]; then printf '%s\n' "$report" >&2; exit 85; fi
exit 0"#,
        ),
    ])
}

/// Installs every changed unit from the release's candidates, keeping the previous copies,
/// then daemon-reload if anything changed. Prints `changed <unit>` per installed unit. A
/// unit the administrator masked (its path a link to `/dev/null`) is never replaced (that
/// would unmask it, and a rollback would then remove it, mask and all): exit
/// [`FOREIGN_FILE`](super::exit::FOREIGN_FILE) before anything is installed.
pub fn install(deploy_to: &str, candidates: &str, units: &[String]) -> Cmd {
    let mut steps = vec![
        Cmd::assign("base", deploy_to),
        Cmd::assign("cand", candidates),
        Cmd::assign("live", UNIT_DIR),
        Cmd::new(super::files::COPY),
        Cmd::new(super::files::HANDBACK),
        Cmd::new(
            r#"
prev="$base/.shipit/previous/systemd"
rm -rf -- "$prev" && mkdir -p -- "$prev" || exit 1
shipit_handback "$base/.shipit/previous" "$prev"
changed=0"#,
        ),
    ];
    for unit in units {
        steps.push(Cmd::assign("unit", unit));
        steps.push(Cmd::new(
            r#"
if [ -L "$live/$unit" ] && [ "$(readlink -- "$live/$unit")" = /dev/null ]; then
  printf '`%s` is masked (a link to /dev/null): shipit does not unmask it; run `systemctl unmask %s` if it should run\n' "$live/$unit" "$unit" >&2
  exit 96
fi"#,
        ));
    }
    for unit in units {
        steps.push(Cmd::assign("unit", unit));
        steps.push(Cmd::new(
            r#"
if ! cmp -s -- "$cand/$unit" "$live/$unit"; then
  if [ -f "$live/$unit" ]; then cp -p -- "$live/$unit" "$prev/$unit" || exit 1
  else : > "$prev/$unit.absent" || exit 1; fi
  shipit_copy "$cand/$unit" "$live/$unit" 644 || exit 1
  echo "changed $unit"
  changed=1
fi"#,
        ));
    }
    steps.push(Cmd::new(
        r#"
if [ "$changed" = 1 ]; then systemctl daemon-reload || exit 1; fi
exit 0"#,
    ));
    Cmd::seq(steps)
}

/// Enables a unit on first install, restarts it (or reloads it when it has `ExecReload=`
/// and did not change), then waits briefly for it to be active.
pub fn start(unit: &str, changed: bool) -> Cmd {
    Cmd::seq([
        Cmd::assign("unit", unit),
        Cmd::assign("changed", if changed { "1" } else { "0" }),
        Cmd::new(
            r#"
systemctl is-enabled --quiet -- "$unit" 2>/dev/null || systemctl enable --quiet -- "$unit" || exit 1
if [ "$changed" = 0 ] && [ -n "$(systemctl show -p ExecReload --value -- "$unit" 2>/dev/null)" ]; then
  systemctl reload-or-restart -- "$unit" || exit 1
else
  systemctl restart -- "$unit" || exit 1
fi
for i in 1 2 3 4 5 6 7 8 9 10; do
  systemctl is-active --quiet -- "$unit" && exit 0
  sleep 0.5 2>/dev/null || sleep 1
done
systemctl status --no-pager --lines=20 -- "$unit" >&2
exit 86"#,
        ),
    ])
}

/// Puts back the units a deploy replaced (or removes the ones it added), daemon-reload,
/// and restarts `units` that still exist (a template unit, `name@.service`, has no process
/// of its own: its instances are the blue-green steps' business).
pub fn restore(deploy_to: &str, units: &[String]) -> Cmd {
    let mut steps = vec![
        Cmd::assign("base", deploy_to),
        Cmd::assign("live", UNIT_DIR),
        Cmd::new(super::files::COPY),
        Cmd::new(r#"prev="$base/.shipit/previous/systemd"; status=0"#),
    ];
    for unit in units {
        steps.push(Cmd::assign("unit", unit));
        steps.push(Cmd::new(
            r#"
if [ -f "$prev/$unit.absent" ]; then
  systemctl disable --now --quiet -- "$unit" 2>/dev/null
  rm -f -- "$live/$unit"
elif [ -f "$prev/$unit" ]; then
  shipit_copy "$prev/$unit" "$live/$unit" 644 || status=1
fi"#,
        ));
    }
    steps.push(Cmd::new("systemctl daemon-reload || status=1"));
    for unit in units.iter().filter(|u| !u.contains("@.")) {
        steps.push(Cmd::assign("unit", unit));
        steps.push(Cmd::new(
            r#"if [ -f "$live/$unit" ]; then systemctl restart -- "$unit" || status=1; fi"#,
        ));
    }
    steps.push(Cmd::new("exit $status"));
    Cmd::seq(steps)
}

/// Where the release and main PID of each blue-green instance are recorded, by port.
pub fn instance_record(deploy_to: &str, port: u16) -> String {
    format!("{deploy_to}/.shipit/instances/{port}")
}

/// Blue-green `start_idle`: (re)starts instance `inst` (on `port`) so it runs `release`
/// (through `current`), waits for it to be active and records `<release> <main pid>`. An
/// instance already active whose record says it runs `release` under the same main PID is
/// kept (`kept` on stdout): nothing restarted. A port another process listens on is refused
/// with [`PORT_TAKEN`](super::exit::PORT_TAKEN) before anything starts.
pub fn start_instance(deploy_to: &str, inst: &str, port: u16, release: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("inst", inst),
        Cmd::assign("port", port.to_string()),
        Cmd::assign("release", release),
        Cmd::assign("rec", instance_record(deploy_to, port)),
        Cmd::new(
            r#"
mkdir -p -- "${rec%/*}" || exit 1
if systemctl is-active --quiet -- "$inst"; then
  pid=$(systemctl show -p MainPID --value -- "$inst" 2>/dev/null)
  if [ -n "$pid" ] && [ "$pid" != 0 ] && [ -f "$rec" ] && [ "$(cat -- "$rec")" = "$release $pid" ]; then
    echo "kept $pid"
    exit 0
  fi
elif command -v ss >/dev/null 2>&1 && [ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]; then
  printf 'port %s is taken by a process that is not `%s`:\n%s\n' "$port" "$inst" "$(ss -Hltnp "sport = :$port" 2>/dev/null)" >&2
  exit 113
fi
rm -f -- "$rec"
systemctl restart -- "$inst" || exit 1
for i in 1 2 3 4 5 6 7 8 9 10; do
  if systemctl is-active --quiet -- "$inst"; then
    pid=$(systemctl show -p MainPID --value -- "$inst" 2>/dev/null)
    printf '%s %s\n' "$release" "$pid" > "$rec.next" && mv -f -- "$rec.next" "$rec" || exit 1
    echo "started $pid"
    exit 0
  fi
  sleep 0.5 2>/dev/null || sleep 1
done
systemctl status --no-pager --lines=20 -- "$inst" >&2
exit 86"#,
        ),
    ])
}

/// Stops and disables blue-green instance `inst` (on `port`) and forgets its record, unless
/// the Nginx site points at `port` (`.shipit/live-port`): the live instance is never
/// stopped (`live` on stdout).
pub fn stop_instance(deploy_to: &str, inst: &str, port: u16) -> Cmd {
    Cmd::seq([
        Cmd::assign("inst", inst),
        Cmd::assign("port", port.to_string()),
        Cmd::assign("lp", format!("{deploy_to}/.shipit/live-port")),
        Cmd::assign("rec", instance_record(deploy_to, port)),
        Cmd::new(
            r#"
if [ -f "$lp" ] && read -r live < "$lp" && [ "$live" = "$port" ]; then echo live; exit 0; fi
systemctl stop -- "$inst" || exit 1
systemctl disable --quiet -- "$inst" 2>/dev/null
systemctl reset-failed -- "$inst" 2>/dev/null
rm -f -- "$rec"
exit 0"#,
        ),
    ])
}
