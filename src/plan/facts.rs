//! Read-only probes of host state: each is a [`Cmd`] and a parser for what it prints.
//!
//! Probes print `key value` lines so that parsing never depends on a tool's prose, and a
//! probe never changes the host (the write test removes the file it makes).
//!
//! Pure: builds commands and parses text; running them is the caller's business.

use serde::Serialize;

use crate::shell::Cmd;

/// The remote tools shipit's steps rely on. `mv -T` is probed by use, not by name.
pub const TOOLS: &[&str] = &["sh", "tar", "gzip", "sha256sum", "mkdir", "ln", "mv"];

/// What `shipit check` learns about a host in one round trip.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostProbe {
    pub user: String,
    pub os: String,
    /// In [`TOOLS`] order, then `mv -T`.
    pub tools: Vec<Tool>,
    /// The directory the write test ran in: `deploy_to`, or its nearest existing parent.
    pub write_path: String,
    pub writable: bool,
    /// Free space where the release tree goes, in bytes.
    pub free_bytes: Option<u64>,
    /// The Compose a `[compose]` stack runs with: `docker compose` (the v2 plugin, preferred)
    /// or `docker-compose` (v1); `None` when the host has neither.
    pub compose: Option<String>,
    /// owner.json of a deploy lock under `deploy_to`, if one is held (`""`: no owner file).
    #[serde(skip)]
    pub lock_owner_json: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tool {
    pub name: String,
    pub present: bool,
}

impl HostProbe {
    pub fn missing_tools(&self) -> Vec<&str> {
        self.tools
            .iter()
            .filter(|t| !t.present)
            .map(|t| t.name.as_str())
            .collect()
    }
}

const PROBE: &str = r#"
echo "user $(id -un 2>/dev/null)"
echo "os $(uname -sr 2>/dev/null)"
for t in sh tar gzip sha256sum mkdir ln mv; do
  if command -v "$t" >/dev/null 2>&1; then echo "tool $t yes"; else echo "tool $t no"; fi
done
p="$deploy_to"
while [ ! -e "$p" ]; do p=$(dirname -- "$p"); done
echo "write_path $p"
probe="$p/.shipit-check.$$"
if mkdir -- "$probe" 2>/dev/null; then
  echo "writable yes"
  : >"$probe/a"
  if mv -T -- "$probe/a" "$probe/b" 2>/dev/null; then echo "tool mv-T yes"; else echo "tool mv-T no"; fi
  rm -rf -- "$probe"
else
  echo "writable no"
  t="${TMPDIR:-/tmp}/.shipit-check.$$"
  if mkdir -- "$t" 2>/dev/null && : >"$t/a" && mv -T -- "$t/a" "$t/b" 2>/dev/null; then echo "tool mv-T yes"; else echo "tool mv-T no"; fi
  rm -rf -- "$t"
fi
if [ -n "$compose" ]; then echo "compose $compose"; fi
df -Pk -- "$p" 2>/dev/null | awk 'NR==2 { print "free_kb " $4 }'
if [ -d "$deploy_to/.shipit/lock" ]; then
  printf 'lock '; tr -d '\n' < "$deploy_to/.shipit/lock/owner.json" 2>/dev/null; echo
fi
exit 0
"#;

/// One round trip that learns everything `check` reports about a host.
pub fn probe(deploy_to: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("deploy_to", deploy_to),
        Cmd::new(crate::commands::compose::PICK),
        Cmd::new(PROBE),
    ])
}

/// Parses the output of [`probe`]. Unknown lines are ignored (a login banner, say).
pub fn parse_probe(stdout: &str) -> HostProbe {
    let mut facts = HostProbe::default();
    for line in stdout.lines() {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "user" => facts.user = value.to_owned(),
            "os" => facts.os = value.to_owned(),
            "tool" => {
                if let Some((name, present)) = value.split_once(' ') {
                    let name = if name == "mv-T" { "mv -T" } else { name };
                    facts.tools.push(Tool {
                        name: name.to_owned(),
                        present: present == "yes",
                    });
                }
            }
            "write_path" => facts.write_path = value.to_owned(),
            "writable" => facts.writable = value == "yes",
            "free_kb" => facts.free_bytes = value.trim().parse::<u64>().ok().map(|kb| kb * 1024),
            "lock" => facts.lock_owner_json = Some(value.to_owned()),
            "compose" => facts.compose = Some(value.to_owned()),
            _ => {}
        }
    }
    // `mv -T` comes last in the report, after the tools found by name.
    facts.tools.sort_by_key(|t| t.name == "mv -T");
    facts
}

/// One thing the inventory needs of a host (`shipit check`): present or writable, as the
/// user the steps that use it run as (root through `sudo` with `ssh.sudo`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Need {
    /// `nginx`, `nginx_dir`, `systemd`, `unit_dir`, `docker`, `env_dir`, `backup_dir`.
    pub name: String,
    /// The directory a `*_dir` need is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub ok: bool,
}

/// `writable DIR`: whether the user can make an entry in DIR, or in its nearest existing
/// ancestor when DIR does not exist yet (shipit makes it); nothing is left behind.
const NEEDS: &str = r#"
echo "user $(id -un 2>/dev/null)"
# A login that is not root often lacks the sbin directories, where nginx lives.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
writable() {
  p=$1
  while [ ! -e "$p" ]; do p=$(dirname -- "$p"); done
  t="$p/.shipit-check.$$"
  mkdir -- "$t" 2>/dev/null && rmdir -- "$t"
}
need() { if "$@" >/dev/null 2>&1; then echo "need $name yes $path"; else echo "need $name no $path"; fi; }"#;

/// Probes what `inventory` needs of a host: Nginx (`nginx -v`) and its sites directory for
/// `[nginx]`, systemd (`systemctl --version`) and its unit directory for `[[systemd]]`, a
/// Docker daemon that answers for `[compose]`, and write access where `env.path` and
/// `backup.dir` go. Prints `user <name>` then `need <name> yes|no [<path>]` lines.
pub fn needs(inventory: &crate::inventory::Inventory) -> Cmd {
    let mut steps = vec![Cmd::new(NEEDS)];
    let mut need = |name: &'static str, path: &str, check: Cmd| {
        steps.push(Cmd::assign("name", name));
        steps.push(Cmd::assign("path", path));
        steps.push(Cmd::new("need").cmd(check));
    };
    if inventory.nginx.is_some() {
        need("nginx", "", Cmd::new("nginx").arg("-v"));
        let dir = crate::commands::nginx::AVAILABLE;
        need("nginx_dir", dir, Cmd::new("writable").arg(dir));
    }
    if !inventory.systemd.is_empty() {
        need("systemd", "", Cmd::new("systemctl").arg("--version"));
        let dir = crate::commands::systemd::UNIT_DIR;
        need("unit_dir", dir, Cmd::new("writable").arg(dir));
    }
    if inventory.compose.is_some() {
        need("docker", "", Cmd::new("docker").arg("info"));
    }
    if let Some(env) = &inventory.env {
        let dir = std::path::Path::new(&env.path)
            .parent()
            .and_then(|p| p.to_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/");
        need("env_dir", dir, Cmd::new("writable").arg(dir));
    }
    if let Some(backup) = &inventory.backup {
        need(
            "backup_dir",
            &backup.dir,
            Cmd::new("writable").arg(&backup.dir),
        );
    }
    steps.push(Cmd::new("exit 0"));
    Cmd::seq(steps)
}

/// Parses the output of [`needs`]: (the user it ran as, the needs in order).
pub fn parse_needs(stdout: &str) -> (String, Vec<Need>) {
    let mut user = String::new();
    let mut needs = Vec::new();
    for line in stdout.lines() {
        if let Some(u) = line.strip_prefix("user ") {
            user = u.to_owned();
        } else if let Some(rest) = line.strip_prefix("need ") {
            let mut parts = rest.splitn(3, ' ');
            let (Some(name), Some(ok)) = (parts.next(), parts.next()) else {
                continue;
            };
            needs.push(Need {
                name: name.to_owned(),
                path: parts.next().filter(|p| !p.is_empty()).map(str::to_owned),
                ok: ok == "yes",
            });
        }
    }
    (user, needs)
}

/// What a deploy needs to know about a host's release tree, read under the lock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReleaseTree {
    /// The release `current` points at, if any.
    pub current: Option<String>,
    /// Complete releases, oldest first (ids sort by time), with their artifact sha256.
    pub releases: Vec<Release>,
    /// Leftover `*.partial` directories of interrupted runs.
    pub partials: Vec<String>,
    /// The host has `zstd`: the artifact goes as zstd, else as gzip.
    pub zstd: bool,
    /// The host has what a delta upload needs (GNU `find -printf`, awk).
    pub delta: bool,
    /// sha256 of the current release's manifest, when it has one.
    pub manifest: Option<String>,
    /// The port the Nginx site points at, for a blue-green unit (`.shipit/live-port`).
    pub live_port: Option<u16>,
    /// The git commit of each release that records one in its REVISION (`<sha>`, or
    /// `<sha>-dirty`), by release id.
    pub git: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Release {
    pub id: String,
    /// First line of REVISION; `None` when it is missing (not made by shipit).
    pub sha256: Option<String>,
}

impl ReleaseTree {
    pub fn has(&self, id: &str) -> bool {
        self.releases.iter().any(|r| r.id == id)
    }
}

/// Names in `releases/` are printed only when they are plain (see `plain_name`): other
/// names are not shipit's, and one holding a newline would forge lines of its own.
const RELEASES: &str = r#"
if command -v zstd >/dev/null 2>&1; then echo "zstd"; fi
if gnu_find && command -v awk >/dev/null 2>&1; then echo "delta"; fi
cd -- "$deploy_to" 2>/dev/null || exit 0
if [ -L current ]; then
  target=$(readlink current)
  case $target in
    *"
"*) echo "current ?" ;;
    *) echo "current $target" ;;
  esac
  if [ -f current/.shipit/manifest ]; then echo "manifest $(sum_of current/.shipit/manifest)"; fi
fi
if [ -f .shipit/live-port ] && read -r port < .shipit/live-port; then
  case $port in ''|*[!0-9]*) ;; *) echo "live_port $port" ;; esac
fi
[ -d releases ] || exit 0
for d in releases/* releases/.[!.]*; do
  [ -e "$d" ] || continue
  name=${d#releases/}
  plain_name "$name" || continue
  case $name in
    *.partial) echo "partial $name" ;;
    *) if [ -d "$d" ] && [ ! -L "$d" ]; then
         sha=""
         git=""
         if [ -f "$d/REVISION" ]; then
           {
             read -r sha rest
             while read -r line; do
               case $line in git=*) git=${line#git=}; break ;; esac
             done
           } < "$d/REVISION"
         fi
         echo "release $name $sha"
         case $git in ''|*[!0-9a-z-]*) ;; *) echo "git $name $git" ;; esac
       fi ;;
  esac
done
exit 0
"#;

/// Lists `current`, the releases with their sha256, and leftover partial directories.
pub fn releases(deploy_to: &str) -> Cmd {
    Cmd::seq([
        Cmd::assign("deploy_to", deploy_to),
        Cmd::new(crate::commands::release::HOST_TOOLS),
        Cmd::new(crate::commands::release::PATHS),
        Cmd::new(RELEASES),
    ])
}

/// Whether `name` is plain enough to be a release directory's name in a host script's
/// path: letters, digits, `.`, `_`, `-`, not starting with a dot (the host scripts' own
/// `plain_name`). Any release id shipit makes is one.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Parses the output of [`releases`]. Release and partial names that are not plain are
/// left out, whatever printed them.
pub fn parse_releases(stdout: &str) -> ReleaseTree {
    let mut tree = ReleaseTree::default();
    for line in stdout.lines() {
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next()) {
            (Some("current"), Some(target)) => {
                // `releases/<id>`, or an absolute path written by another tool.
                let target = target.trim_end_matches('/');
                tree.current = target.rsplit('/').next().map(str::to_owned);
            }
            (Some("partial" | "release" | "git"), Some(name)) if !plain_name(name) => {}
            (Some("partial"), Some(name)) => tree.partials.push(name.to_owned()),
            (Some("zstd"), None) => tree.zstd = true,
            (Some("delta"), None) => tree.delta = true,
            (Some("manifest"), Some(sha)) => tree.manifest = Some(sha.to_owned()),
            (Some("live_port"), Some(port)) => tree.live_port = port.parse().ok(),
            (Some("git"), Some(id)) => {
                if let Some(git) = words.next().map(str::trim)
                    && crate::artifact::git::is_revision(git)
                {
                    tree.git.insert(id.to_owned(), git.to_owned());
                }
            }
            (Some("release"), Some(id)) => tree.releases.push(Release {
                id: id.to_owned(),
                sha256: words
                    .next()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            }),
            _ => {}
        }
    }
    tree.releases.sort_by(|a, b| a.id.cmp(&b.id));
    tree.partials.sort();
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_probe_reads_a_real_tree() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        for (id, rev) in [
            ("20260101T000000Z-aaa", Some("aaa\ngit=1")),
            ("20260102T000000Z-bbb", None),
            (
                "20260102T000001Z-ccc",
                Some("ccc\ngit=0123456789abcdef-dirty\n"),
            ),
            ("20260102T000002Z-ddd", Some("ddd\ngit=$(id)\n")),
        ] {
            std::fs::create_dir_all(base.join("releases").join(id)).unwrap();
            if let Some(rev) = rev {
                std::fs::write(base.join("releases").join(id).join("REVISION"), rev).unwrap();
            }
        }
        std::fs::create_dir_all(base.join("releases/20260103T000000Z-ccc.partial")).unwrap();
        std::os::unix::fs::symlink("releases/20260102T000000Z-bbb", base.join("current")).unwrap();
        std::fs::create_dir_all(base.join(".shipit")).unwrap();
        std::fs::write(base.join(".shipit/live-port"), "3002\n").unwrap();
        std::fs::create_dir_all(base.join("releases/20260102T000000Z-bbb/.shipit")).unwrap();
        std::fs::write(
            base.join("releases/20260102T000000Z-bbb/.shipit/manifest"),
            "m\n",
        )
        .unwrap();
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(releases(base.to_str().unwrap()).render())
            .output()
            .unwrap();
        let tree = parse_releases(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(tree.current.as_deref(), Some("20260102T000000Z-bbb"));
        assert_eq!(tree.live_port, Some(3002));
        assert_eq!(tree.releases.len(), 4);
        assert_eq!(tree.releases[0].sha256.as_deref(), Some("aaa"));
        assert_eq!(tree.releases[1].sha256, None);
        assert_eq!(tree.releases[2].sha256.as_deref(), Some("ccc"));
        // Only what reads as a commit is taken (`1` is too short, `$(id)` is no commit).
        assert_eq!(
            tree.git.into_iter().collect::<Vec<_>>(),
            [(
                "20260102T000001Z-ccc".to_owned(),
                "0123456789abcdef-dirty".to_owned()
            )]
        );
        assert_eq!(tree.partials, vec!["20260103T000000Z-ccc.partial"]);
        assert_eq!(
            tree.manifest.as_deref(),
            Some(crate::artifact::manifest::sha256_hex(b"m\n").as_str())
        );
        assert!(tree.delta);
        let has_zstd = std::process::Command::new("sh")
            .args(["-c", "command -v zstd"])
            .output()
            .unwrap()
            .status
            .success();
        assert_eq!(tree.zstd, has_zstd);
        // A host that never saw a deploy is an empty tree, not an error.
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(releases("/nonexistent/app").render())
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            parse_releases(&String::from_utf8_lossy(&out.stdout)),
            ReleaseTree {
                zstd: has_zstd,
                delta: true,
                ..ReleaseTree::default()
            }
        );
    }

    #[test]
    fn releases_probe_lists_no_name_that_is_not_plain() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let id = "20260101T000000Z-aaa";
        for name in [
            id,
            "x\nrelease forged abc",
            "y\npartial forged.partial",
            "with space",
        ] {
            std::fs::create_dir_all(base.join("releases").join(name)).unwrap();
        }
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(releases(base.to_str().unwrap()).render())
            .output()
            .unwrap();
        let tree = parse_releases(&String::from_utf8_lossy(&out.stdout));
        let ids: Vec<&str> = tree.releases.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, [id]);
        assert!(tree.partials.is_empty(), "{tree:?}");
        // Whatever prints them, names that are not plain are not read.
        let forged = parse_releases("release ../../etc x\npartial ../x.partial\nrelease a/b\n");
        assert!(forged.releases.is_empty() && forged.partials.is_empty());
    }

    #[test]
    fn probe_quotes_the_path() {
        let cmd = probe("/opt/my app");
        assert!(cmd.render().starts_with("deploy_to='/opt/my app'; \n"));
    }

    #[test]
    fn parse_reads_every_field() {
        let out = "user deploy\nos Linux 6.1.0\ntool sh yes\ntool tar yes\ntool mv-T yes\ntool gzip no\nwrite_path /opt\nwritable yes\ncompose docker compose\nfree_kb 2048\n";
        let p = parse_probe(out);
        assert_eq!(p.compose.as_deref(), Some("docker compose"));
        assert_eq!(parse_probe("user x\n").compose, None);
        assert_eq!(p.user, "deploy");
        assert_eq!(p.missing_tools(), vec!["gzip"]);
        assert_eq!(p.tools.last().unwrap().name, "mv -T");
        assert_eq!(p.free_bytes, Some(2 * 1024 * 1024));
        assert!(p.writable);
    }

    #[test]
    fn probe_runs_in_real_sh_and_reports_a_missing_dir_by_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("not/yet/there");
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(probe(target.to_str().unwrap()).render())
            .output()
            .unwrap();
        assert!(out.status.success());
        let p = parse_probe(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(p.write_path, dir.path().to_str().unwrap());
        assert!(p.writable);
        assert!(p.missing_tools().is_empty(), "{p:?}");
        assert!(p.free_bytes.unwrap() > 0);
        // The probe leaves nothing behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
