//! The dead-deployer guard: before a host is switched, a timer is armed on the host that
//! switches it back unless the deployer confirms in time. A CI job cancelled or a laptop
//! losing Wi-Fi mid-switch then cannot leave a host on an unconfirmed release.
//!
//! The timer is a transient `systemd-run --on-active=` unit where systemd runs, else a
//! detached `setsid` sleeper. Each guard is decided exactly once, by whoever creates its
//! decision first: `<guard dir>/<token>.decision`, a symlink naming the winner (`fired`,
//! `confirmed`, `disarmed`, `undone`). `symlink(2)` is atomic and fails when the name
//! exists, so a late confirmation knows the guard already reverted the host, and a guard
//! that lost does nothing.
//!
//! A guard acts only under the deploy lock (its dead run's, or one it takes), and only while
//! `current` is still the release it guarded or the one that release replaced: a newer run
//! holds the lock, and every new lock and `shipit unlock` disarm every earlier run's guard
//! ([`SETTLE`]), so a guard never reverts a later deploy.
//!
//! What the guard itself writes is created with umask 077: the scripts carry a history line.

use crate::shell::Cmd;

/// The guard directory of `deploy_to`.
pub fn dir(deploy_to: &str) -> String {
    format!("{deploy_to}/.shipit/guard")
}

/// Shell functions over the guard directory `$g`, shared by every script that decides,
/// stops or waits for a guard.
const FUNCTIONS: &str = r#"
decide() { ln -s -- "$2" "$g/$1.decision" 2>/dev/null; }
decided_by() { readlink -- "$g/$1.decision" 2>/dev/null; }
# Whether pid file $1 names a live process running guard $2 (a pid file can outlive its
# process, and a pid can be reused: only a process whose command line names the guard).
guard_alive() {
  [ -f "$1" ] || return 1
  pid=
  read -r pid 2>/dev/null < "$1"
  case $pid in ''|*[!0-9]*) return 1;; esac
  if [ -d /proc/self ]; then
    tr '\000' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2.sh"
  else
    kill -0 "$pid" 2>/dev/null
  fi
}
# Stops guard $1's timer: the systemd units, or the sleeper's whole process group (its
# `sleep` included, so none is left behind), then removes its script.
stop_timer() {
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl stop "shipit-guard-$1.timer" >/dev/null 2>&1
  fi
  if guard_alive "$g/$1.pid" "$1"; then
    kill -TERM "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  fi
  rm -f -- "$g/$1.sh" "$g/$1.pid"
}
# Whether guard $1, which fired, still runs: its script's own pid, the sleeper it was
# exec'd from, or its systemd unit (an older shipit's guard wrote neither `.running` nor,
# under systemd, a pid).
still_running() {
  guard_alive "$g/$1.running" "$1" || guard_alive "$g/$1.pid" "$1" || {
    command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ] &&
      systemctl is-active --quiet "shipit-guard-$1.service" 2>/dev/null
  }
}"#;

/// Disarms every guard in `$g` that is still armed (its decision becomes `disarmed`) and
/// waits up to `$wait` seconds for a guard that fired and is switching its host back.
/// Returns [`GUARD_BUSY`](super::exit::GUARD_BUSY) when one still is (its run on stdout).
/// Run by whoever takes the deploy lock and by `shipit unlock`.
const SETTLE: &str = r#"
settle() {
  [ -d "$g" ] || return 0
  if [ -L "$g" ]; then echo "\`$g\` is a symlink" >&2; return 1; fi
  chmod 700 "$g" 2>/dev/null
  # Decisions of guards that are gone are kept a day, for a timer that fires anyway.
  find "$g" -maxdepth 1 \( -name '*.decision' -o -name '*.decided' \) -mmin +1440 \
    -exec rm -rf {} + 2>/dev/null
  busy=
  for f in "$g"/*.sh "$g"/*.running; do
    [ -f "$f" ] || continue
    t=${f##*/}; t=${t%.sh}; t=${t%.running}
    case $t in ''|*[!0-9a-z-]*) continue;; esac
    chmod 600 "$f" 2>/dev/null
    # A guard armed by an older shipit decides with this directory: if it is there already
    # (and its script still is), that guard fired and is switching the host back, without
    # any lock: it is waited for like one of ours, never cut short.
    if [ ! -L "$g/$t.decision" ] && ! mkdir -- "$g/$t.decided" 2>/dev/null &&
      grep -qF -- '.decided' "$g/$t.sh" 2>/dev/null; then
      decide "$t" fired
    fi
    if decide "$t" disarmed || [ "$(decided_by "$t")" != fired ]; then
      stop_timer "$t"
    elif still_running "$t"; then
      busy="$busy $t"
    else
      # Fired, and died before it finished (a reboot): nothing runs it any more.
      rm -f -- "$g/$t.sh" "$g/$t.pid" "$g/$t.running"
    fi
  done
  [ -z "$busy" ] && return 0
  n=0
  while [ "$n" -lt "$wait" ]; do
    still=
    for t in $busy; do
      if still_running "$t"; then still="$still $t"; fi
    done
    [ -z "$still" ] && return 0
    busy=$still
    sleep 1
    n=$((n + 1))
  done
  echo "$busy"
  return 111
}"#;

/// The shell text that settles the guards of `$g` (see [`SETTLE`]): for the lock's
/// scripts, which embed it after taking or before removing the lock.
pub fn settle_script() -> [Cmd; 2] {
    [Cmd::new(FUNCTIONS), Cmd::new(SETTLE)]
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
[ -d "$g/.." ] || mkdir -p -- "$g/.." || exit 1
umask 077
[ -d "$g" ] || mkdir -p -- "$g" || exit 1
[ -L "$g" ] && exit 1
chmod 700 "$g" || exit 1
# What this run's switch-back restores is saved from here on; older copies must not be.
rm -rf -- "$g/../previous" "$g/$token.decision" "$g/$token.pid" "$g/$token.running"
cat > "$g/$token.sh" || exit 1
if command -v systemd-run >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl stop "shipit-guard-$token.timer" "shipit-guard-$token.service" >/dev/null 2>&1
  systemctl reset-failed "shipit-guard-$token.service" >/dev/null 2>&1
  # KillMode=process: what the revert starts (an app an `after_switch` hook runs again)
  # outlives the script, as it outlives a deploy's SSH session.
  if systemd-run --quiet --collect --unit="shipit-guard-$token" --on-active="${delay}s" \
       --timer-property=AccuracySec=100ms --property=KillMode=process /bin/sh "$g/$token.sh"; then
    echo "armed systemd"; exit 0
  fi
fi
# The sleeper writes its own pid: it leads its process group (setsid), which confirming
# kills whole, `sleep` included.
setsid sh -c 'echo $$ > "$3"; sleep "$1"; exec /bin/sh "$2"' shipit-guard "$delay" \
  "$g/$token.sh" "$g/$token.pid" </dev/null >/dev/null 2>&1 &
n=0
# Polled every 10 ms (5 s at most; 10 s where `sleep` takes whole seconds only): the
# sleeper writes its pid within milliseconds, and a deploy waits for this.
while [ ! -s "$g/$token.pid" ] && [ "$n" -lt 500 ]; do
  sleep 0.01 2>/dev/null || { sleep 1; n=$((n + 49)); }
  n=$((n + 1))
done
[ -s "$g/$token.pid" ] || exit 1
echo "armed setsid""#,
        ),
    ])
}

/// Where the guard's history line gets the time it fired.
const TIME_MARK: &str = "@SHIPIT_GUARD_TIME@";

/// The revert script: under the deploy lock, and only if the guard wins the decision and
/// `current` is still `release` (or `previous`, when the run died before switching it),
/// run `body` and append `history_line` with the time it fired. `history_line` is a JSON
/// object whose `time` and `finished` are [`time_placeholder`].
pub fn script(
    deploy_to: &str,
    token: &str,
    release: &str,
    previous: Option<&str>,
    body: &[Cmd],
    history_line: &str,
) -> String {
    let mut parts = history_line.splitn(3, TIME_MARK);
    let (head, mid, tail) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let mut steps = vec![
        Cmd::assign("g", dir(deploy_to)),
        Cmd::assign("base", deploy_to),
        Cmd::assign("token", token),
        Cmd::assign("release", format!("releases/{release}")),
        Cmd::assign(
            "was",
            previous
                .map(|p| format!("releases/{p}"))
                .unwrap_or_default(),
        ),
        Cmd::assign("head", head),
        Cmd::assign("mid", mid),
        Cmd::assign("tail", tail),
        Cmd::new(FUNCTIONS),
        Cmd::new(
            r#"
mask=$(umask)
umask 077
lock="$base/.shipit/lock"
took=
# The dead run's own lock, or a free one taken now; another run's lock means that run owns
# the host now (it disarmed this guard when it took the lock).
if mkdir -- "$lock" 2>/dev/null; then
  took=1
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  printf '{"token":"%s-guard","user":"root","machine":"dead-deployer guard","pid":%s,"command":"dead-deployer guard of run %s","started":"%s","started_unix":%s}\n' \
    "$token" "$$" "$token" "$now" "$(date -u +%s)" > "$lock/owner.json"
elif ! grep -qF -- "\"token\":\"$token\"" "$lock/owner.json" 2>/dev/null; then
  exit 0
fi
leave() { if [ -n "$took" ]; then rm -rf -- "$lock"; fi; exit 0; }
# Running before deciding: whoever sees the decision `fired` also sees that it runs.
echo $$ > "$g/$token.running"
if ! decide "$token" fired; then rm -f -- "$g/$token.running"; leave; fi
cur=$(readlink -- "$base/current" 2>/dev/null)
if [ "$cur" != "$release" ] && [ "$cur" != "$was" ]; then
  rm -f -- "$g/$token.sh" "$g/$token.pid" "$g/$token.running"
  leave
fi
# The run died before it switched anything: `current` never moved and nothing was saved to
# put back (arming removed `.shipit/previous`; installing the env file or a unit makes it).
# Restarting what runs, reloading Nginx, a history line saying it was reverted: all wrong.
if [ "$cur" != "$release" ] && [ ! -e "$base/.shipit/previous" ] && [ ! -L "$base/.shipit/previous" ]; then
  rm -f -- "$g/$token.sh" "$g/$token.pid" "$g/$token.running"
  leave
fi
# The switch-back restores files as a deploy writes them.
umask "$mask""#,
        ),
    ];
    // Each undo in a subshell of its own: an undo that ends with `exit` (the units' restore
    // does) must not end the script before the later undos and the history line.
    steps.extend(body.iter().map(|undo| Cmd::subshell(undo.clone())));
    steps.push(Cmd::new(
        r#"
umask 077
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
history="$base/.shipit/history.jsonl"
if [ ! -L "$history" ]; then printf '%s%s%s%s%s\n' "$head" "$now" "$mid" "$now" "$tail" >> "$history"; fi
rm -f -- "$g/$token.sh" "$g/$token.pid" "$g/$token.running"
leave"#,
    ));
    let mut text = String::from(
        "#!/bin/sh\n# shipit dead-deployer guard: the deployer did not confirm in time\n",
    );
    for step in steps {
        text.push_str(&step.render());
        text.push('\n');
    }
    text
}

/// The value to put in a history line's `time` and `finished` for [`script`] to replace
/// with the time the guard fires.
pub fn time_placeholder() -> &'static str {
    TIME_MARK
}

/// Confirms: disarms the timer and records that `release` went live on this host and
/// passed its health gate (what makes it a rollback candidate). Exit
/// [`GUARD_FIRED`](super::exit::GUARD_FIRED) when the guard already fired (the host was
/// switched back), [`GUARD_DISARMED`](super::exit::GUARD_DISARMED) when another run
/// disarmed it (`shipit unlock` while this run held the lock).
pub fn confirm(deploy_to: &str, token: &str, release: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("g", dir(deploy_to)),
        Cmd::assign("token", token),
        Cmd::new(FUNCTIONS),
        Cmd::new(
            r#"
if ! decide "$token" confirmed; then
  case $(decided_by "$token") in fired) exit 90;; *) exit 110;; esac
fi
stop_timer "$token""#,
        ),
        super::passed::mark(deploy_to, release),
    ])
}

/// Disarms this run's guard after the run switched the host back itself.
pub fn disarm(deploy_to: &str, token: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("g", dir(deploy_to)),
        Cmd::assign("token", token),
        Cmd::new(FUNCTIONS),
        Cmd::new(
            r#"decide "$token" undone; [ "$(decided_by "$token")" = fired ] || stop_timer "$token"; exit 0"#,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::release::tests::run_sh;
    use std::os::unix::process::CommandExt;

    fn base() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app dir");
        std::fs::create_dir_all(base.join("releases/r1")).unwrap();
        std::fs::create_dir_all(base.join("releases/r2")).unwrap();
        std::os::unix::fs::symlink("releases/r2", base.join("current")).unwrap();
        let base = base.to_str().unwrap().to_owned();
        (dir, base)
    }

    fn line() -> String {
        format!("{{\"time\":\"{TIME_MARK}\",\"finished\":\"{TIME_MARK}\",\"action\":\"guard\"}}")
    }

    fn write_script(base: &str, token: &str) -> String {
        let body = [crate::commands::release::switch(base, "r1")];
        let text = script(base, token, "r2", Some("r1"), &body, &line());
        let g = dir(base);
        std::fs::create_dir_all(&g).unwrap();
        let path = format!("{g}/{token}.sh");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn fire(path: &str) -> i32 {
        std::process::Command::new("/bin/sh")
            .arg(path)
            .status()
            .unwrap()
            .code()
            .unwrap()
    }

    fn current(base: &str) -> String {
        std::fs::read_link(format!("{base}/current"))
            .unwrap()
            .display()
            .to_string()
    }

    #[test]
    fn a_guard_reverts_under_its_runs_lock_and_records_when_it_fired() {
        let (_d, base) = base();
        let path = write_script(&base, "t1");
        std::fs::create_dir_all(format!("{base}/.shipit/lock")).unwrap();
        std::fs::write(
            format!("{base}/.shipit/lock/owner.json"),
            "{\"token\":\"t1\",\"user\":\"u\"}",
        )
        .unwrap();
        assert_eq!(fire(&path), 0);
        assert_eq!(current(&base), "releases/r1");
        let history = std::fs::read_to_string(format!("{base}/.shipit/history.jsonl")).unwrap();
        let entry: serde_json::Value = serde_json::from_str(history.trim()).unwrap();
        let time = entry["time"].as_str().unwrap();
        assert_eq!(entry["finished"], time);
        assert!(time.len() == 20 && time.ends_with('Z'), "{time}");
        // The dead run's lock stays for `shipit unlock`.
        assert!(std::path::Path::new(&format!("{base}/.shipit/lock")).exists());
        // Confirming afterwards: too late.
        assert_eq!(run_sh(&confirm(&base, "t1", "r2"), b"", None).0, 90);
    }

    #[test]
    fn an_undo_that_exits_does_not_end_the_guard_before_the_others_and_history() {
        let (_d, base) = base();
        // The units' restore ends with `exit $status`: the undos after it must still run.
        let body = [
            Cmd::new("exit 1"),
            crate::commands::release::switch(&base, "r1"),
        ];
        let text = script(&base, "t9", "r2", Some("r1"), &body, &line());
        let g = dir(&base);
        std::fs::create_dir_all(&g).unwrap();
        let path = format!("{g}/t9.sh");
        std::fs::write(&path, text).unwrap();
        std::fs::create_dir_all(format!("{base}/.shipit/lock")).unwrap();
        std::fs::write(
            format!("{base}/.shipit/lock/owner.json"),
            "{\"token\":\"t9\",\"user\":\"u\"}",
        )
        .unwrap();
        assert_eq!(fire(&path), 0);
        assert_eq!(current(&base), "releases/r1");
        let history = std::fs::read_to_string(format!("{base}/.shipit/history.jsonl")).unwrap();
        assert!(history.contains("\"action\":\"guard\""), "{history}");
    }

    #[test]
    fn a_guard_does_nothing_under_another_runs_lock_or_once_current_moved() {
        let (_d, base) = base();
        let path = write_script(&base, "t1");
        std::fs::create_dir_all(format!("{base}/.shipit/lock")).unwrap();
        std::fs::write(
            format!("{base}/.shipit/lock/owner.json"),
            "{\"token\":\"t2\"}",
        )
        .unwrap();
        assert_eq!(fire(&path), 0);
        assert_eq!(current(&base), "releases/r2");
        // Free lock, but `current` is a release this run never touched.
        std::fs::remove_dir_all(format!("{base}/.shipit/lock")).unwrap();
        std::fs::create_dir_all(format!("{base}/releases/r3")).unwrap();
        std::fs::remove_file(format!("{base}/current")).unwrap();
        std::os::unix::fs::symlink("releases/r3", format!("{base}/current")).unwrap();
        assert_eq!(fire(&path), 0);
        assert_eq!(current(&base), "releases/r3");
        assert!(!std::path::Path::new(&format!("{base}/.shipit/history.jsonl")).exists());
        // The lock it took is released again.
        assert!(!std::path::Path::new(&format!("{base}/.shipit/lock")).exists());
    }

    #[test]
    fn a_confirmed_or_disarmed_guard_does_nothing_and_confirm_tells_which() {
        let (_d, base) = base();
        let path = write_script(&base, "t1");
        assert_eq!(run_sh(&confirm(&base, "t1", "r2"), b"", None).0, 0);
        assert!(std::path::Path::new(&format!("{base}/.shipit/passed/r2")).exists());
        assert!(!std::path::Path::new(&path).exists());
        // A timer firing anyway (the same script again) finds the decision taken.
        let path = write_script(&base, "t1");
        assert_eq!(fire(&path), 0);
        assert_eq!(current(&base), "releases/r2");

        let path = write_script(&base, "t2");
        let settle = Cmd::seq([
            Cmd::assign("g", dir(&base)),
            Cmd::assign("wait", "1"),
            Cmd::new(FUNCTIONS),
            Cmd::new(SETTLE),
            Cmd::new("settle"),
        ]);
        assert_eq!(run_sh(&settle, b"", None).0, 0);
        assert!(!std::path::Path::new(&path).exists());
        let path = write_script(&base, "t2");
        assert_eq!(fire(&path), 0);
        assert_eq!(current(&base), "releases/r2");
        assert_eq!(run_sh(&confirm(&base, "t2", "r2"), b"", None).0, 110);
    }

    /// A run killed after arming its guard and before it changed anything (`current` still
    /// the release it replaced, nothing saved to put back): the guard that fires touches
    /// nothing (no restart of what runs) and records no revert; once something was saved
    /// (the env file installed), it puts that back.
    #[test]
    fn a_guard_of_a_run_that_changed_nothing_touches_nothing() {
        let (_d, base) = base();
        let line = line();
        let body = [Cmd::new(r#": > "$base/reverted""#)];
        let text = script(&base, "t1", "r3", Some("r2"), &body, &line);
        let g = dir(&base);
        std::fs::create_dir_all(&g).unwrap();
        let path = format!("{g}/t1.sh");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(fire(&path), 0);
        assert!(!std::path::Path::new(&format!("{base}/reverted")).exists());
        assert!(!std::path::Path::new(&format!("{base}/.shipit/history.jsonl")).exists());
        assert!(!std::path::Path::new(&format!("{base}/.shipit/lock")).exists());

        std::fs::create_dir_all(format!("{base}/.shipit/previous/env")).unwrap();
        std::fs::write(&path, &text).unwrap();
        std::fs::remove_file(format!("{g}/t1.decision")).unwrap();
        assert_eq!(fire(&path), 0);
        assert!(std::path::Path::new(&format!("{base}/reverted")).exists());
        assert!(std::path::Path::new(&format!("{base}/.shipit/history.jsonl")).exists());
    }

    /// A guard armed by an older shipit (it decides with `<token>.decided`, takes no lock)
    /// that fired and is switching the host back is waited for, never killed half-way nor
    /// taken for disarmed: the lock is not given while it runs.
    #[test]
    fn an_older_shipits_guard_that_fired_is_waited_for_not_cut_short() {
        let (_d, base) = base();
        let g = dir(&base);
        std::fs::create_dir_all(format!("{g}/t1.decided")).unwrap();
        let script = format!("{g}/t1.sh");
        // What matters of an older script: it decides with `$g/$token.decided`.
        std::fs::write(&script, "[ -d \"$g/$token.decided\" ]; sleep 4\n").unwrap();
        let mut child = std::process::Command::new("/bin/sh")
            .arg(&script)
            .process_group(0)
            .spawn()
            .unwrap();
        std::fs::write(format!("{g}/t1.pid"), format!("{}\n", child.id())).unwrap();
        let settle = Cmd::seq([
            Cmd::assign("g", &g),
            Cmd::assign("wait", "1"),
            Cmd::new(FUNCTIONS),
            Cmd::new(SETTLE),
            Cmd::new("settle"),
        ]);
        let (code, out, _) = run_sh(&settle, b"", None);
        assert_eq!((code, out.trim()), (111, "t1"));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the old guard was killed"
        );
        assert_eq!(
            std::fs::read_link(format!("{g}/t1.decision")).unwrap(),
            std::path::Path::new("fired")
        );
        // Once it is done, the lock may be taken.
        child.wait().unwrap();
        std::fs::remove_file(&script).unwrap();
        assert_eq!(run_sh(&settle, b"", None).0, 0);
    }
}
