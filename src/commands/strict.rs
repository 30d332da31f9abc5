//! Trees shipit writes in must belong to the people who run it, as sshd's `StrictModes`
//! requires of `~/.ssh`: root (who runs the units, the guard and most deploys) later reads,
//! runs or deletes what is written there, so a directory another user can write would let
//! that user swap a file, a guard script or a whole tree between shipit's write and root's
//! use of it.
//!
//! The rule, checked on the host by [`SNIPPET`]'s `shipit_strict <dir>` before anything is
//! written: every existing component of `<dir>`, as written and as it resolves (a symlinked
//! ancestor is checked where it points too), is owned by root or the SSH user (the uid the
//! script runs as; run as root through `sudo`, also the uid that ran sudo) and is not writable by group or others. A group- or world-writable
//! ancestor is accepted only when it is sticky (`/tmp`): others can then not rename or
//! remove the entry below it, which must itself pass. A symlink on the way must be owned by
//! root or the SSH user too, whatever it points at: its owner can re-point it at any time
//! (below a sticky `/tmp`, any user can make one; it may even dangle until the write). `<dir>` itself, where files are
//! created, is never writable by others, sticky or not. Components that do not exist yet
//! are created later by shipit (root or the SSH user, umask 077).
//!
//! A refusal prints the path, owner and mode on stderr and exits
//! [`UNSAFE_PATH`](super::exit::UNSAFE_PATH); nothing has been written. [`preflight`] is the
//! one check per host before a run takes its lock; [`files::write`](super::files::write)
//! runs the same function on its directory just before creating a file.
//!
//! Uses only POSIX `sh`, `stat -c`, `id -u` and `cd -P`/`pwd -P`.

use crate::shell::Cmd;

/// Shell functions: `shipit_strict DIR` (the rule above) and `shipit_nolink PATH` (refuses
/// a symlink at PATH: `releases/`, `shared/` and `.shipit/` are never followed). Both exit
/// the script with [`UNSAFE_PATH`](super::exit::UNSAFE_PATH) on refusal.
pub const SNIPPET: &str = r#"
shipit_uid=$(id -u)
# Run as root through `sudo` (`ssh.sudo`): the SSH user who ran it counts as the SSH user.
shipit_login=${SUDO_UID:-$shipit_uid}
# Entries already checked, one per line, as leaves and as ancestors: every walk starts at
# `/` and most share their first components, and each check costs a `stat` process.
shipit_ok_leaf='
' shipit_ok_anc='
'
shipit_unsafe() {
  shipit_who=$(stat -L -c %U -- "$1" 2>/dev/null)
  printf '`%s` is owned by %s (uid %s) with mode %s: %s\n' "$1" "${shipit_who:-?}" "$2" "$3" "$4" >&2
  exit 95
}
shipit_unsafe_link() {
  shipit_who=$(stat -c %U -- "$1" 2>/dev/null)
  printf '`%s` is a symlink owned by %s (uid %s), who can re-point it: shipit writes only through links of root or the SSH user\n' "$1" "${shipit_who:-?}" "$2" >&2
  exit 95
}
# `shipit_prefetch DIR...`: one `stat` for every existing component of the DIRs as
# written (what the walks look at first), kept in `$shipit_pre` as a line with the path and
# a line with its owner and mode; anything it cannot stat is left to the walks.
shipit_pre=
shipit_prefetch() {
  shipit_list=
  for shipit_dir do
    shipit_rest=${shipit_dir#/} shipit_cur=
    while [ -n "$shipit_rest" ]; do
      shipit_c=${shipit_rest%%/*}
      case $shipit_rest in */*) shipit_rest=${shipit_rest#*/} ;; *) shipit_rest= ;; esac
      [ -n "$shipit_c" ] || continue
      shipit_cur=$shipit_cur/$shipit_c
      [ -e "$shipit_cur" ] || break
      case "
$shipit_list" in *"
$shipit_cur
"*) ;; *) shipit_list="$shipit_list$shipit_cur
" ;; esac
    done
  done
  shipit_ifs=$IFS; IFS='
'; set -f
  set -- / $shipit_list
  set +f; IFS=$shipit_ifs
  shipit_out=$(stat -L -c '%u %a' -- "$@" 2>/dev/null) || return 0
  shipit_pre='
'
  while IFS= read -r shipit_line; do
    [ "$#" -gt 0 ] || { shipit_pre=; return 0; }
    shipit_pre="$shipit_pre$1
$shipit_line
"
    shift
  done <<shipit_eof
$shipit_out
shipit_eof
  [ "$#" = 0 ] || shipit_pre=
}
shipit_entry() {
  case $shipit_ok_leaf in *"
$1
"*) return 0 ;; esac
  if [ "$2" != leaf ]; then case $shipit_ok_anc in *"
$1
"*) return 0 ;; esac; fi
  case $shipit_pre in
    *"
$1
"*) shipit_s=${shipit_pre#*"
$1
"}; shipit_s=${shipit_s%%"
"*} ;;
    *) shipit_s=$(stat -L -c '%u %a' -- "$1") || { echo "cannot stat \`$1\`" >&2; exit 95; } ;;
  esac
  shipit_u=${shipit_s% *}; shipit_m=${shipit_s#* }
  if [ "$shipit_u" != 0 ] && [ "$shipit_u" != "$shipit_uid" ] && [ "$shipit_u" != "$shipit_login" ]; then
    shipit_unsafe "$1" "$shipit_u" "$shipit_m" "shipit writes only in trees owned by root or the SSH user"
  fi
  if [ $((0$shipit_m & 022)) != 0 ]; then
    if [ "$2" = leaf ]; then
      shipit_unsafe "$1" "$shipit_u" "$shipit_m" "a directory shipit writes in must not be writable by group or others"
    elif [ $((0$shipit_m & 01000)) = 0 ]; then
      shipit_unsafe "$1" "$shipit_u" "$shipit_m" "its ancestors must not be writable by group or others (unless sticky)"
    fi
  fi
  if [ "$2" = leaf ]; then shipit_ok_leaf="$shipit_ok_leaf$1
"; else shipit_ok_anc="$shipit_ok_anc$1
"; fi
}
shipit_walk() {
  if [ "$1" = / ]; then shipit_entry / "$2"; else shipit_entry / ""; fi
  shipit_rest=${1#/} shipit_cur=
  while [ -n "$shipit_rest" ]; do
    shipit_c=${shipit_rest%%/*}
    case $shipit_rest in */*) shipit_rest=${shipit_rest#*/} ;; *) shipit_rest= ;; esac
    [ -n "$shipit_c" ] || continue
    shipit_cur=$shipit_cur/$shipit_c
    # A symlink is its owner's to re-point (its target is checked below, as it resolves now).
    if [ -L "$shipit_cur" ]; then
      shipit_s=$(stat -c '%u %a' -- "$shipit_cur") || { echo "cannot stat \`$shipit_cur\`" >&2; exit 95; }
      if [ "${shipit_s% *}" != 0 ] && [ "${shipit_s% *}" != "$shipit_uid" ] && [ "${shipit_s% *}" != "$shipit_login" ]; then
        shipit_unsafe_link "$shipit_cur" "${shipit_s% *}"
      fi
    fi
    [ -e "$shipit_cur" ] || return 0
    if [ -z "$shipit_rest" ]; then shipit_entry "$shipit_cur" "$2"; else shipit_entry "$shipit_cur" ""; fi
  done
}
shipit_strict() {
  shipit_walk "$1" leaf
  shipit_d=$1
  # The nearest existing ancestor (`dirname`, without a process per step).
  while [ ! -e "$shipit_d" ]; do
    case $shipit_d in
      */*) shipit_d=${shipit_d%/*}; [ -n "$shipit_d" ] || shipit_d=/ ;;
      *) shipit_d=. ;;
    esac
  done
  if [ ! -d "$shipit_d" ]; then
    printf '`%s` is not a directory: shipit writes below it\n' "$shipit_d" >&2; exit 95
  fi
  shipit_r=$(cd -P -- "$shipit_d" 2>/dev/null && pwd -P) || { echo "cannot resolve \`$shipit_d\`" >&2; exit 95; }
  # Without a symlink on the way, the walk above saw exactly these entries.
  [ "$shipit_r" != "$shipit_d" ] || return 0
  if [ "$shipit_d" = "$1" ]; then shipit_walk "$shipit_r" leaf; else shipit_walk "$shipit_r" ""; fi
}
shipit_nolink() {
  if [ -L "$1" ]; then
    printf '`%s` is a symlink: shipit never follows one there\n' "$1" >&2
    exit 95
  fi
}"#;

/// The check before a run writes anything on a host: `shipit_strict` on each of `dirs`,
/// after `shipit_nolink` on each of `no_links` (which are checked as dirs too).
pub fn preflight(dirs: &[String], no_links: &[String]) -> Cmd {
    Cmd::seq(checks(dirs, no_links).chain([Cmd::new("exit 0")]))
}

fn checks<'a>(dirs: &'a [String], no_links: &'a [String]) -> impl Iterator<Item = Cmd> + 'a {
    std::iter::once(Cmd::new(SNIPPET))
        .chain([Cmd::new("shipit_prefetch").args(no_links.iter().chain(dirs))])
        .chain(no_links.iter().map(|p| Cmd::new("shipit_nolink").arg(p)))
        .chain(
            no_links
                .iter()
                .chain(dirs)
                .map(|p| Cmd::new("shipit_strict").arg(p)),
        )
}

/// [`preflight`] of the directories root writes in, run as root through `sudo` (`ssh.sudo`);
/// then, when `deploy_to` does not exist yet, makes it, owned by `login` (the SSH user, who
/// writes the release tree) with mode 0755 (the app's user reads the releases).
pub fn preflight_root(dirs: &[String], deploy_to: &str, login: &str) -> Cmd {
    Cmd::seq(checks(dirs, &[]).chain([
        Cmd::assign("base", deploy_to),
        Cmd::assign("login", login),
        Cmd::new(
            r#"
[ -e "$base" ] || [ -L "$base" ] && exit 0
mkdir -p -- "$base" && chown -- "$login:" "$base" && chmod 755 "$base" || exit 1
exit 0"#,
        ),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::release::tests::run_sh;
    use std::os::unix::fs::PermissionsExt;

    /// (exit code, stderr).
    fn run(cmd: &Cmd) -> (i32, String) {
        let (code, _, err) = run_sh(cmd, b"", None);
        (code, err)
    }

    fn chmod(path: &std::path::Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn s(p: &std::path::Path) -> String {
        p.to_str().unwrap().to_owned()
    }

    #[test]
    fn owned_trees_pass_and_missing_leaves_are_fine() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::fs::create_dir(&app).unwrap();
        chmod(&app, 0o755);
        let missing = app.join("not/yet");
        let (code, err) = run(&preflight(&[s(&missing)], &[s(&app.join("releases"))]));
        assert_eq!(code, 0, "{err}");
    }

    /// Every component of the directories as written is looked at with one `stat`
    /// process, however many directories share them.
    #[test]
    fn one_stat_checks_every_directory_as_written() {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let log = dir.path().join("stat.log");
        let wrapper = bin.join("stat");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho x >> '{}'\nexec /usr/bin/stat \"$@\"\n",
                s(&log)
            ),
        )
        .unwrap();
        chmod(&wrapper, 0o755);
        let app = dir.path().join("app");
        for sub in ["releases", "shared", "a/b/c"] {
            std::fs::create_dir_all(app.join(sub)).unwrap();
        }
        for d in [&app, &app.join("a"), &app.join("a/b"), &app.join("a/b/c")] {
            chmod(d, 0o755);
        }
        let dirs = [s(&app), s(&app.join("a/b/c")), s(&app.join("missing/x"))];
        let no_links = [s(&app.join("releases")), s(&app.join("shared"))];
        let path = format!("{}:/usr/bin:/bin", s(&bin));
        let (code, _, err) = run_sh(
            &preflight(&dirs, &no_links),
            b"",
            Some(std::path::Path::new(&path)),
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "x\n");
        // The same answer for a tree that is not safe: the prefetched owner and mode.
        chmod(&app.join("a/b"), 0o777);
        let (code, _, err) = run_sh(
            &preflight(&dirs, &no_links),
            b"",
            Some(std::path::Path::new(&path)),
        );
        assert_eq!(code, 95, "{err}");
        assert!(err.contains("a/b` is owned by"), "{err}");
        assert!(err.contains("with mode 777"), "{err}");
    }

    /// Run as root through sudo, the tree of the user who ran sudo (`$SUDO_UID`) counts as
    /// the SSH user's; another user's never does.
    #[test]
    fn under_sudo_the_invoking_users_tree_passes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        chmod(&theirs, 0o755);
        let status = std::process::Command::new("chown")
            .arg("nobody")
            .arg(&theirs)
            .status()
            .unwrap();
        assert!(status.success());
        let uid = std::fs::metadata(&theirs).unwrap().uid();
        assert_ne!(uid, 0, "the tests run as root, as the hosts' scripts do");
        let check = preflight(&[s(&theirs.join("env"))], &[]);
        assert_eq!(run(&check).0, 95);
        let as_sudo = |sudo_uid: u32| {
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(check.render())
                .env("SUDO_UID", sudo_uid.to_string())
                .output()
                .unwrap();
            out.status.code().unwrap()
        };
        assert_eq!(as_sudo(uid), 0);
        assert_eq!(as_sudo(uid + 1), 95);
    }

    #[test]
    fn writable_by_others_is_refused_with_path_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        let below = open.join("app");
        std::fs::create_dir_all(&below).unwrap();
        chmod(&below, 0o755);
        chmod(&open, 0o777);
        let (code, err) = run(&preflight(&[s(&below)], &[]));
        assert_eq!(code, 95);
        assert!(err.contains(&format!("`{}`", open.display())), "{err}");
        assert!(err.contains("777"), "{err}");
        // Sticky: an ancestor is fine, the directory written in is not.
        chmod(&open, 0o1777);
        assert_eq!(run(&preflight(&[s(&below)], &[])).0, 0);
        assert_eq!(run(&preflight(&[s(&open)], &[])).0, 95);
        // Group-writable leaf.
        chmod(&below, 0o775);
        assert_eq!(run(&preflight(&[s(&below)], &[])).0, 95);
    }

    #[test]
    fn symlinks_are_refused_where_required_and_resolved_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        let open = dir.path().join("open");
        std::fs::create_dir_all(open.join("target")).unwrap();
        std::fs::create_dir(&real).unwrap();
        chmod(&real, 0o755);
        chmod(&open.join("target"), 0o755);
        chmod(&open, 0o777);
        let releases = real.join("releases");
        std::os::unix::fs::symlink(open.join("target"), &releases).unwrap();
        let (code, err) = run(&preflight(&[], &[s(&releases)]));
        assert_eq!(code, 95);
        assert!(err.contains("symlink"), "{err}");
        // A symlinked ancestor is checked where it points: there `open` is 0777.
        let link = real.join("link");
        std::os::unix::fs::symlink(open.join("target"), &link).unwrap();
        let (code, err) = run(&preflight(&[s(&link.join("app"))], &[]));
        assert_eq!(code, 95, "{err}");
    }

    /// Below a sticky directory (`/tmp`, `/var/tmp`) the entry must be owned by root or the
    /// SSH user: a symlink another user made there is theirs to re-point at any time, even
    /// when it points at a root-owned directory now (or at nothing yet).
    #[test]
    fn a_symlink_another_user_owns_below_a_sticky_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sticky = dir.path().join("tmp");
        let real = dir.path().join("real");
        std::fs::create_dir(&sticky).unwrap();
        std::fs::create_dir(&real).unwrap();
        chmod(&real, 0o755);
        chmod(&sticky, 0o1777);
        let theirs = |name: &str, target: &std::path::Path| {
            let link = sticky.join(name);
            std::os::unix::fs::symlink(target, &link).unwrap();
            let out = std::process::Command::new("chown")
                .args(["-h", "nobody"])
                .arg(&link)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            link
        };
        let to_real = theirs("app", &real);
        let (code, err) = run(&preflight(&[s(&to_real)], &[]));
        assert_eq!(code, 95, "{err}");
        assert!(err.contains("nobody"), "{err}");
        let (code, err) = run(&preflight(&[s(&to_real.join("env"))], &[]));
        assert_eq!(code, 95, "{err}");
        let dangling = theirs("later", &dir.path().join("not-yet"));
        let (code, err) = run(&preflight(&[s(&dangling.join("app"))], &[]));
        assert_eq!(code, 95, "{err}");
        // Root's own link there is root's choice.
        let ours = sticky.join("ours");
        std::os::unix::fs::symlink(&real, &ours).unwrap();
        let (code, err) = run(&preflight(&[s(&ours)], &[]));
        assert_eq!(code, 0, "{err}");
    }
}
