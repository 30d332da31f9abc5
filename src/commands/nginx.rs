//! The Nginx site: the candidate is tested with `nginx -t` on a private copy of the whole
//! configuration with the candidate in place, so staging never touches the live files (a
//! run killed while testing leaves the live site as it was); at the switch it is tested so
//! again, then installed (previous copy kept under `<deploy_to>/.shipit/previous/nginx/`),
//! tested in place and nginx reloaded.

use crate::shell::Cmd;

/// The live configuration directory; `nginx.conf` in it is the main file.
pub const CONF_DIR: &str = "/etc/nginx";
pub const AVAILABLE: &str = "/etc/nginx/sites-available";
pub const ENABLED: &str = "/etc/nginx/sites-enabled";

/// Reloads nginx, then waits (up to 5 s) until the workers that served before have stopped
/// accepting connections: a reload only signals the master, and for a moment the old workers
/// would still take new requests to the old configuration (the old instance of a blue-green
/// unit, say). An old worker renames itself `is shutting down` once it has closed its
/// sockets; it then finishes the requests in flight.
const RELOAD: &str = r#"
serving_workers() {
  for d in /proc/[0-9]*; do
    title=$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null) || continue
    case $title in
      *"shutting down"*) ;;
      "nginx: worker process"*) echo "${d#/proc/}" ;;
    esac
  done
}
old_workers=$(serving_workers)
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
  systemctl reload nginx || exit 1
else
  nginx -s reload || exit 1
fi
i=0
while [ "$i" -lt 100 ]; do
  still=""
  for pid in $old_workers; do
    case $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) in
      *"shutting down"*) ;;
      "nginx: worker process"*) still=1 ;;
    esac
  done
  [ -z "$still" ] && break
  sleep 0.05 2>/dev/null || sleep 1
  i=$((i + 1))
done"#;

fn vars(site: &str) -> Vec<Cmd> {
    vec![
        Cmd::assign("conf", CONF_DIR),
        Cmd::assign("site", site),
        Cmd::assign("avail", format!("{AVAILABLE}/{site}")),
        Cmd::assign("enabled", format!("{ENABLED}/{site}")),
    ]
}

/// Defines `test_copy`: `nginx -t` on a private copy of `$conf` (in a fresh `mktemp -d`
/// under `/tmp`, root-only, removed on exit) with `$cand` as the enabled site `$site`. Every
/// `$conf/` in the copy's files is rewritten to the copy, so absolute includes
/// (`include /etc/nginx/sites-enabled/*;`) read the copy, and relative ones resolve against
/// it because `-c` sets Nginx's configuration prefix. The live tree is only read. On failure
/// the report, with the copy's paths named as the live ones, is in `$report`.
///
/// First, what is at `sites-enabled/<site>` must be absent or shipit's link to
/// `sites-available/<site>`: a link elsewhere (or a file) would keep serving what it points
/// at while the candidate is tested and reported live, so it is refused with
/// [`FOREIGN_FILE`](super::exit::FOREIGN_FILE).
const TEST_COPY: &str = r#"
test_copy() {
  if [ -L "$enabled" ] || [ -e "$enabled" ]; then
    case $(readlink -- "$enabled" 2>/dev/null) in
      "$avail"|"../sites-available/$site") ;;
      *) printf '`%s` exists and is not a link to `%s`: shipit does not replace it; remove it, or make it that link\n' "$enabled" "$avail" >&2
         exit 96 ;;
    esac
  fi
  command -v nginx >/dev/null 2>&1 || { echo "nginx is not installed" >&2; exit 1; }
  [ -f "$conf/nginx.conf" ] || { echo "\`$conf/nginx.conf\` does not exist" >&2; exit 1; }
  tmp=$(mktemp -d /tmp/shipit-nginx.XXXXXXXXXX) || exit 1
  trap 'rm -rf -- "$tmp"' EXIT
  trap 'exit 1' HUP INT TERM
  copy="$tmp/nginx"
  # A dangling link in the live tree is not ours to judge: nginx -t fails on it if it is used.
  cp -RL -- "$conf" "$copy" 2>/dev/null
  [ -f "$copy/nginx.conf" ] || { echo "cannot copy \`$conf\` to test the site" >&2; exit 1; }
  mkdir -p -- "$copy/sites-available" "$copy/sites-enabled" || exit 1
  rm -rf -- "$copy/sites-available/$site" "$copy/sites-enabled/$site" || exit 1
  cp -- "$cand" "$copy/sites-available/$site" || exit 1
  ln -s -- "$copy/sites-available/$site" "$copy/sites-enabled/$site" || exit 1
  # `$tmp` is `/tmp/shipit-nginx.` and letters: safe in a sed replacement.
  find "$copy" -type f -exec sed -i "s#$conf/#$copy/#g" {} + || exit 1
  report=$(nginx -t -c "$copy/nginx.conf" 2>&1) && return 0
  report=$(printf '%s\n' "$report" | sed "s#$copy/#$conf/#g; s#$copy#$conf#g")
  return 1
}"#;

/// `nginx -t` with `candidate` as the site, on a private copy of the configuration: the live
/// files are never modified. Exit [`NGINX_INVALID`](super::exit::NGINX_INVALID) with the
/// `nginx -t` output on stderr when the configuration does not pass.
pub fn test(site: &str, candidate: &str) -> Cmd {
    let mut steps = vars(site);
    steps.push(Cmd::assign("cand", candidate));
    steps.push(Cmd::new(TEST_COPY));
    steps.push(Cmd::new(
        r#"
if ! test_copy; then printf '%s\n' "$report" >&2; exit 84; fi
exit 0"#,
    ));
    Cmd::seq(steps)
}

/// Tests the candidate on a private copy first (a failure leaves the live files untouched),
/// then installs it (keeping the previous file; written as `files::COPY` writes, never
/// through a link at `sites-available/<site>`), links it, tests in place, reloads. On a
/// failed test the previous file is put back and nginx is not reloaded.
pub fn install(deploy_to: &str, site: &str, candidate: &str) -> Cmd {
    Cmd::seq(install_steps(deploy_to, site, candidate))
}

/// [`install`]'s script up to the point where the candidate is live (installed and
/// reloaded, or the same as the live site already), `$prev` the directory of what it
/// replaced; a caller appends what follows.
fn install_steps(deploy_to: &str, site: &str, candidate: &str) -> Vec<Cmd> {
    let mut steps = vars(site);
    steps.push(Cmd::assign("cand", candidate));
    steps.push(Cmd::assign("base", deploy_to));
    steps.push(Cmd::new(super::files::COPY));
    steps.push(Cmd::new(TEST_COPY));
    steps.push(Cmd::new(super::files::HANDBACK));
    steps.push(Cmd::new(
        r#"
prev="$base/.shipit/previous/nginx"
rm -rf -- "$prev" && mkdir -p -- "$prev" || exit 1
shipit_handback "$base/.shipit/previous" "$prev"
if ! { cmp -s -- "$cand" "$avail" && [ -L "$enabled" ]; }; then
if ! test_copy; then printf '%s\n' "$report" >&2; exit 84; fi
if [ -f "$avail" ]; then cp -p -- "$avail" "$prev/$site" || exit 1; else : > "$prev/$site.absent"; fi
[ -L "$enabled" ] || : > "$prev/$site.unlinked"
shipit_copy "$cand" "$avail" 644 || exit 1
[ -L "$enabled" ] || ln -s -- "$avail" "$enabled" || exit 1
if ! report=$(nginx -t 2>&1); then
  printf '%s\n' "$report" >&2
  if [ -f "$prev/$site" ]; then shipit_copy "$prev/$site" "$avail" 644; else rm -f -- "$avail"; fi
  [ -f "$prev/$site.unlinked" ] && rm -f -- "$enabled"
  exit 84
fi"#,
    ));
    steps.push(Cmd::new(RELOAD));
    steps.push(Cmd::new("fi"));
    steps
}

/// The flag that puts the site in maintenance while the migrations run.
pub fn maintenance_flag(deploy_to: &str) -> String {
    format!("{deploy_to}/.shipit/maintenance")
}

/// What `Retry-After` says during a maintenance window, in seconds.
pub const RETRY_AFTER_SECS: u32 = 30;

/// The lines a site places in its `server { }` block (`{{ maintenance }}`): while the flag
/// exists, every request is answered 503 with `Retry-After`. Nginx tests the file per
/// request: no reload to enter or leave the window.
pub fn maintenance_lines(deploy_to: &str) -> String {
    format!(
        "# shipit: 503 while the migrations run (`migrate.maintenance`)\n\
         if (-f {flag}) {{\n    return 503;\n}}\n\
         error_page 503 @shipit_maintenance;\n\
         location @shipit_maintenance {{\n    \
         add_header Retry-After {RETRY_AFTER_SECS} always;\n    \
         default_type text/plain;\n    \
         return 503 \"down for maintenance, back in a moment\\n\";\n}}\n",
        flag = maintenance_flag(deploy_to)
    )
}

/// Holds the maintenance window of run `token` on a host: writes the flag, waits for its
/// stdin to end (the deployer closes it after the migrations, and a dead deployer's
/// connection closes it too) or `max_secs`, then removes the flag if it is still this run's.
pub fn maintenance_hold(deploy_to: &str, token: &str, max_secs: u64) -> Cmd {
    Cmd::seq([
        Cmd::assign("flag", maintenance_flag(deploy_to)),
        Cmd::assign("token", token),
        Cmd::assign("max", max_secs.to_string()),
        Cmd::new(
            r#"
lift() { [ "$(cat -- "$flag" 2>/dev/null)" = "$token" ] && rm -f -- "$flag"; }
trap 'lift; exit 0' HUP INT TERM PIPE
printf '%s
' "$token" > "$flag.next" && mv -f -- "$flag.next" "$flag" || exit 1
if command -v timeout >/dev/null 2>&1; then timeout "$max" cat >/dev/null; else cat >/dev/null; fi
lift
exit 0"#,
        ),
    ])
}

/// Prints the token of the maintenance window in place, if any.
pub fn maintenance_state(deploy_to: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("flag", maintenance_flag(deploy_to)),
        Cmd::new(r#"cat -- "$flag" 2>/dev/null; exit 0"#),
    ])
}

/// Where the port the site of a blue-green unit points at is recorded.
pub fn live_port_file(deploy_to: &str) -> String {
    format!("{deploy_to}/.shipit/live-port")
}

/// Blue-green `point_site`: installs the candidate (rendered to proxy to `port`) as
/// [`install`] does, then records `port` as the live one (the previous record kept with
/// the previous site) and enables instance `inst` so it comes back after a reboot.
pub fn point(deploy_to: &str, site: &str, candidate: &str, port: u16, inst: &str) -> Cmd {
    let mut steps = install_steps(deploy_to, site, candidate);
    steps.push(Cmd::assign("lp", live_port_file(deploy_to)));
    steps.push(Cmd::assign("port", port.to_string()));
    steps.push(Cmd::assign("inst", inst));
    steps.push(Cmd::new(
        r#"
if [ -f "$lp" ]; then cp -p -- "$lp" "$prev/live-port" || exit 1; else : > "$prev/live-port.absent"; fi
printf '%s\n' "$port" > "$lp.next" && mv -f -- "$lp.next" "$lp" || exit 1
systemctl enable --quiet -- "$inst" 2>/dev/null
exit 0"#,
    ));
    Cmd::seq(steps)
}

/// The reverse of [`point`] (the undo of a blue-green switch, also run by the dead-deployer
/// guard): the old instance `old` (on `old_port`) is started if it does not run and waited
/// for until its port listens (up to a minute; if it cannot be started, nothing else is
/// changed: the site stays on the new instance, which passed its check); the previous site and live-port record are
/// put back and nginx reloaded; after `drain_secs` the new instance `new` (on `new_port`)
/// is stopped. With no old instance (a first blue-green deploy), the site is removed.
pub fn point_back(
    deploy_to: &str,
    site: &str,
    old: Option<(&str, u16)>,
    new: (&str, u16),
    drain_secs: u64,
) -> Cmd {
    let mut steps = vars(site);
    steps.push(Cmd::assign("base", deploy_to));
    steps.push(Cmd::assign("lp", live_port_file(deploy_to)));
    steps.push(Cmd::assign("old", old.map_or("", |(u, _)| u)));
    steps.push(Cmd::assign(
        "old_port",
        old.map_or(String::new(), |(_, p)| p.to_string()),
    ));
    steps.push(Cmd::assign("drain", drain_secs.to_string()));
    steps.push(Cmd::new(super::files::COPY));
    steps.push(Cmd::new(
        r#"
if [ -n "$old" ]; then
  if ! systemctl is-active --quiet -- "$old" && ! systemctl start -- "$old"; then
    printf 'cannot start `%s`: the site stays on the new instance\n' "$old" >&2
    exit 1
  fi
  if command -v ss >/dev/null 2>&1; then
    i=0
    until [ -n "$(ss -Hltn "sport = :$old_port" 2>/dev/null)" ]; do
      i=$((i + 1))
      if [ "$i" -gt 120 ]; then
        printf '`%s` does not listen on port %s after a minute: the site stays on the new instance\n' "$old" "$old_port" >&2
        exit 1
      fi
      sleep 0.5 2>/dev/null || sleep 1
    done
  fi
  systemctl enable --quiet -- "$old" 2>/dev/null
fi"#,
    ));
    steps.push(Cmd::new(PUT_BACK));
    steps.push(Cmd::new(RELOAD));
    steps.push(Cmd::new(
        r#"
if [ -f "$prev/live-port" ]; then cp -p -- "$prev/live-port" "$lp.next" && mv -f -- "$lp.next" "$lp" || exit 1
elif [ -f "$prev/live-port.absent" ]; then rm -f -- "$lp"; fi
sleep "$drain""#,
    ));
    steps.push(super::systemd::stop_instance(deploy_to, new.0, new.1));
    Cmd::seq(steps)
}

/// Puts back the site saved in `$prev` (or removes one the run added, or unlinks one it
/// linked), then `nginx -t`.
const PUT_BACK: &str = r#"
prev="$base/.shipit/previous/nginx"
if [ -f "$prev/$site" ]; then shipit_copy "$prev/$site" "$avail" 644 || exit 1
elif [ -f "$prev/$site.absent" ]; then rm -f -- "$avail"; fi
[ -f "$prev/$site.unlinked" ] && rm -f -- "$enabled"
nginx -t >/dev/null 2>&1 || exit 1"#;

/// Puts the previous site back (or removes one this deploy added) and reloads.
pub fn restore(deploy_to: &str, site: &str) -> Cmd {
    let mut steps = vars(site);
    steps.push(Cmd::assign("base", deploy_to));
    steps.push(Cmd::new(super::files::COPY));
    steps.push(Cmd::new(PUT_BACK));
    steps.push(Cmd::new(RELOAD));
    Cmd::seq(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sh -n`: the script parses. Each of these also runs inside the dead-deployer guard's
    /// script, where a syntax error would stop the whole switch-back.
    fn parses(cmd: &Cmd) {
        let text = cmd.render();
        let out = std::process::Command::new("/bin/sh")
            .args(["-n", "-c", &text])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn every_site_script_parses_alone_and_in_a_guard() {
        let base = "/opt/my app";
        let scripts = [
            install(base, "shop", "/opt/my app/releases/r/.shipit/nginx/shop"),
            restore(base, "shop"),
            point(base, "shop", "/c", 3002, "shop@3002.service"),
            point_back(
                base,
                "shop",
                Some(("shop@3001.service", 3001)),
                ("shop@3002.service", 3002),
                5,
            ),
            point_back(base, "shop", None, ("shop@3001.service", 3001), 5),
            maintenance_hold(base, "t", 60),
            maintenance_state(base),
            crate::commands::systemd::start_instance(base, "shop@3001.service", 3001, "r"),
            crate::commands::systemd::stop_instance(base, "shop@3001.service", 3001),
        ];
        for script in &scripts {
            parses(script);
        }
        let guard = crate::commands::guard::script(base, "t", "r2", Some("r1"), &scripts, "{}");
        let out = std::process::Command::new("/bin/sh")
            .args(["-n", "-c", &guard])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
