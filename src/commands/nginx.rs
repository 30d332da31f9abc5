//! The Nginx site: the candidate is tested with `nginx -t` on the whole configuration with
//! the candidate in place, and put back at once if the test fails; at the switch it is
//! installed (previous copy kept under `<deploy_to>/.shipit/previous/nginx/`), tested again
//! and nginx reloaded.

use crate::shell::Cmd;

pub const AVAILABLE: &str = "/etc/nginx/sites-available";
pub const ENABLED: &str = "/etc/nginx/sites-enabled";

const RELOAD: &str = r#"
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
  systemctl reload nginx || exit 1
else
  nginx -s reload || exit 1
fi"#;

fn vars(site: &str) -> Vec<Cmd> {
    vec![
        Cmd::assign("site", site),
        Cmd::assign("avail", format!("{AVAILABLE}/{site}")),
        Cmd::assign("enabled", format!("{ENABLED}/{site}")),
    ]
}

/// `nginx -t` with `candidate` in place of the site; the live files are back as they were
/// afterwards either way. Exit [`NGINX_INVALID`](super::exit::NGINX_INVALID) with the
/// `nginx -t` output on stderr when the configuration does not pass.
pub fn test(site: &str, candidate: &str) -> Cmd {
    let mut steps = vars(site);
    steps.push(Cmd::assign("cand", candidate));
    steps.push(Cmd::new(
        r#"
command -v nginx >/dev/null 2>&1 || { echo "nginx is not installed" >&2; exit 1; }
mkdir -p -- "$(dirname -- "$avail")" "$(dirname -- "$enabled")" || exit 1
had=0; [ -f "$avail" ] && had=1 && { cp -p -- "$avail" "$avail.shipit-save" || exit 1; }
linked=0; [ -L "$enabled" ] && linked=1
cp -- "$cand" "$avail.shipit-tmp" && mv -f -- "$avail.shipit-tmp" "$avail" || exit 1
[ "$linked" = 1 ] || ln -s -- "$avail" "$enabled"
report=$(nginx -t 2>&1); status=$?
if [ "$had" = 1 ]; then mv -f -- "$avail.shipit-save" "$avail"; else rm -f -- "$avail"; fi
[ "$linked" = 1 ] || rm -f -- "$enabled"
if [ "$status" != 0 ]; then printf '%s\n' "$report" >&2; exit 84; fi
exit 0"#,
    ));
    Cmd::seq(steps)
}

/// Installs the candidate (keeping the previous file), links it, tests, reloads. On a failed
/// test the previous file is put back and nginx is not reloaded.
pub fn install(deploy_to: &str, site: &str, candidate: &str) -> Cmd {
    let mut steps = vars(site);
    steps.push(Cmd::assign("cand", candidate));
    steps.push(Cmd::assign("base", deploy_to));
    steps.push(Cmd::new(
        r#"
prev="$base/.shipit/previous/nginx"
rm -rf -- "$prev" && mkdir -p -- "$prev" || exit 1
if cmp -s -- "$cand" "$avail" && [ -L "$enabled" ]; then exit 0; fi
if [ -f "$avail" ]; then cp -p -- "$avail" "$prev/$site" || exit 1; else : > "$prev/$site.absent"; fi
[ -L "$enabled" ] || : > "$prev/$site.unlinked"
cp -- "$cand" "$avail.shipit-tmp" && mv -f -- "$avail.shipit-tmp" "$avail" || exit 1
[ -L "$enabled" ] || ln -s -- "$avail" "$enabled" || exit 1
if ! report=$(nginx -t 2>&1); then
  printf '%s\n' "$report" >&2
  if [ -f "$prev/$site" ]; then cp -p -- "$prev/$site" "$avail"; else rm -f -- "$avail"; fi
  [ -f "$prev/$site.unlinked" ] && rm -f -- "$enabled"
  exit 84
fi"#,
    ));
    steps.push(Cmd::new(RELOAD));
    Cmd::seq(steps)
}

/// Puts the previous site back (or removes one this deploy added) and reloads.
pub fn restore(deploy_to: &str, site: &str) -> Cmd {
    let mut steps = vars(site);
    steps.push(Cmd::assign("base", deploy_to));
    steps.push(Cmd::new(
        r#"
prev="$base/.shipit/previous/nginx"
if [ -f "$prev/$site" ]; then cp -p -- "$prev/$site" "$avail" || exit 1
elif [ -f "$prev/$site.absent" ]; then rm -f -- "$avail"; fi
[ -f "$prev/$site.unlinked" ] && rm -f -- "$enabled"
nginx -t >/dev/null 2>&1 || exit 1"#,
    ));
    steps.push(Cmd::new(RELOAD));
    Cmd::seq(steps)
}
