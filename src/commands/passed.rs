//! `<deploy_to>/.shipit/passed/<release>`: one empty file per release that went live on the
//! host and passed its health gate there, written when a deploy confirms its guard (in the
//! same script, after it won the decision) or when a rollback to it passed. This positive
//! record, not the absence of a failure, is what makes a release a default rollback target:
//! a release killed during its migration or switched back by the guard never gets one.
//!
//! A release the fleet turned away from after it passed (switched back because another host
//! failed, reverted by the guard, or rolled back from) gets `<release>.rejected` instead:
//! it outweighs the record and the history of the deploy that once succeeded, until the
//! release passes again (a rollback `--to` it).

use crate::shell::Cmd;

/// Release ids as shipit makes them; anything else is never recorded nor read back.
const ID_OK: &str = r#"case $id in ''|.*|*.rejected|*[!A-Za-z0-9._-]*) exit 1;; esac"#;

/// Records that `release` passed on this host; records of releases that are gone go too.
pub fn mark(deploy_to: &str, release: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::assign("id", release),
        Cmd::new(ID_OK),
        Cmd::new(
            r#"
p="$base/.shipit/passed"
[ -d "$base/.shipit" ] || mkdir -p -- "$base/.shipit" || exit 1
umask 077
mkdir -p -- "$p" && [ ! -L "$p" ] && chmod 700 "$p" && : > "$p/$id" || exit 1
if [ -e "$p/$id.rejected" ] || [ -L "$p/$id.rejected" ]; then rm -f -- "$p/$id.rejected"; fi
for f in "$p"/*; do
  n=${f##*/}
  [ -d "$base/releases/${n%.rejected}" ] || rm -f -- "$f"
done
exit 0"#,
        ),
    ])
}

/// Records that the fleet turned away from `release` on this host (switched back after it
/// confirmed, reverted by the guard, rolled back from): it is no default rollback target,
/// whatever an older record or the history says. Never exits the script it is part of (the
/// guard's), only fails as its last command.
pub fn forget(deploy_to: &str, release: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::assign("id", release),
        Cmd::new(
            r#"
case $id in ''|.*|*.rejected|*[!A-Za-z0-9._-]*) false;; *)
  p="$base/.shipit/passed"
  rm -f -- "$p/$id"
  if [ -d "$base/releases/$id" ]; then
    ( umask 077; mkdir -p -- "$p" && [ ! -L "$p" ] && chmod 700 "$p" && : > "$p/$id.rejected" )
  fi;;
esac"#,
        ),
    ])
}

/// Prints `passed <id>` or `rejected <id>` per record, then `history <line>` per line of the history that
/// records a success (releases deployed before these records existed), read whole: which
/// release passed never depends on how long the history is. Fails when the history exists
/// but cannot be read.
pub fn read(deploy_to: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("base", deploy_to),
        Cmd::new(
            r#"
p="$base/.shipit/passed"
if [ -d "$p" ]; then
  for f in "$p"/*; do
    id=${f##*/}
    case $id in ''|.*|*[!A-Za-z0-9._-]*) continue;; esac
    [ -f "$f" ] || continue
    case $id in
      *.rejected) printf 'rejected %s\n' "${id%.rejected}";;
      *) printf 'passed %s\n' "$id";;
    esac
  done
fi
f="$base/.shipit/history.jsonl"
[ -e "$f" ] || [ -L "$f" ] || exit 0
[ -f "$f" ] || { echo "\`$f\` is not a file" >&2; exit 1; }"#,
        ),
        Cmd::new(super::history::PRIVATE),
        Cmd::new(r#"awk 'index($0, "\"outcome\":\"success\"") { print "history " $0 }' "$f""#),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::release::tests::run_sh;

    #[test]
    fn records_are_written_read_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("app dir");
        for r in ["r1", "r2"] {
            std::fs::create_dir_all(base.join("releases").join(r)).unwrap();
        }
        let base = base.to_str().unwrap();
        assert_eq!(
            run_sh(&read(base), b"", None),
            (0, String::new(), String::new())
        );
        assert_eq!(run_sh(&mark(base, "r1"), b"", None).0, 0);
        assert_eq!(run_sh(&mark(base, "../r2"), b"", None).0, 1);
        std::fs::write(format!("{base}/.shipit/passed/gone"), "").unwrap();
        assert_eq!(run_sh(&mark(base, "r2"), b"", None).0, 0);
        std::fs::write(
            format!("{base}/.shipit/history.jsonl"),
            "{\"outcome\":\"failed\"}\n{\"outcome\":\"success\",\"release\":\"r0\"}\n",
        )
        .unwrap();
        let (code, out, _) = run_sh(&read(base), b"", None);
        assert_eq!(code, 0);
        assert_eq!(
            out,
            "passed r1\npassed r2\nhistory {\"outcome\":\"success\",\"release\":\"r0\"}\n"
        );
        assert_eq!(run_sh(&forget(base, "r1"), b"", None).0, 0);
        assert!(
            run_sh(&read(base), b"", None)
                .1
                .starts_with("rejected r1\npassed r2\n")
        );
        // Forgetting a release whose deploy history calls a success outweighs that line, until
        // it passes again; a bad id is never written.
        let line = crate::output::report::history::Record {
            action: "deploy".into(),
            outcome: "success".into(),
            release: Some("r2".into()),
            hosts: vec!["h1".into()],
            ..Default::default()
        };
        let history = format!("{base}/.shipit/history.jsonl");
        let mut text = std::fs::read_to_string(&history).unwrap();
        text.push_str(&format!("{}\n", serde_json::to_string(&line).unwrap()));
        std::fs::write(&history, text).unwrap();
        assert_eq!(run_sh(&forget(base, "r2"), b"", None).0, 0);
        let (_, out, _) = run_sh(&read(base), b"", None);
        let set = crate::ops::releases::parse_passed("h1", &out);
        assert!(!set.contains("r1") && !set.contains("r2"), "{out}");
        assert_ne!(run_sh(&forget(base, "../r2"), b"", None).0, 0);
        assert_ne!(run_sh(&mark(base, "r2.rejected"), b"", None).0, 0);
        assert_eq!(run_sh(&mark(base, "r2"), b"", None).0, 0);
        let (_, out, _) = run_sh(&read(base), b"", None);
        assert!(
            crate::ops::releases::parse_passed("h1", &out).contains("r2"),
            "{out}"
        );
        // A history an older shipit left world-readable is made private by reading it.
        {
            use std::os::unix::fs::PermissionsExt;
            let history = format!("{base}/.shipit/history.jsonl");
            let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            std::fs::set_permissions(&history, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert_eq!(run_sh(&read(base), b"", None).0, 0);
            assert_eq!(mode(&history), 0o600);
        }
        // A history that cannot be read is an error, not an empty one.
        std::fs::remove_file(format!("{base}/.shipit/history.jsonl")).unwrap();
        std::fs::create_dir(format!("{base}/.shipit/history.jsonl")).unwrap();
        assert_eq!(run_sh(&read(base), b"", None).0, 1);
    }
}
