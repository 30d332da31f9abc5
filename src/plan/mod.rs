//! Facts + inventory + artifact → what each host will do. Pure: the caller passes the time.
//!
//! The plan decides, per host, where the new release's files come from (already there, a
//! copy of a release with the same artifact, or an upload), which releases the
//! cleanup removes, and for a rollback which release the fleet goes back to.

pub mod build;
pub mod facts;
pub mod shard;
pub mod step;

pub use build::{HostSteps, Plan};
pub use step::{Phase, Step, Undo};

use std::collections::BTreeSet;
use std::fmt;

use crate::plan::facts::ReleaseTree;

/// `YYYYMMDDTHHMMSSZ-<sha12>`: sorts by time; the same id on every host of a deploy.
pub fn release_id(unix_secs: u64, sha256: &str) -> String {
    let (y, mo, d, h, mi, s) = civil_time(unix_secs);
    let short: String = sha256.chars().take(12).collect();
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z-{short}")
}

/// The id of a new release: now, or one second after the newest release any host already
/// has if that is later (a clock behind, or two deploys within one second), so ids always
/// sort in deploy order, on every host.
pub fn next_release_id<'a>(
    now_unix: u64,
    sha256: &str,
    existing: impl IntoIterator<Item = &'a str>,
) -> String {
    let newest = existing.into_iter().filter_map(id_time).max();
    let when = match newest {
        Some(t) if t >= now_unix => t + 1,
        _ => now_unix,
    };
    release_id(when, sha256)
}

/// Whether `name` is a release id of shipit's own form ([`release_id`]): a valid
/// `YYYYMMDDTHHMMSSZ` time, `-`, then 1 to 12 lowercase hex digits of the artifact's sha256.
/// Only such directories are shipit's to reuse or prune.
pub fn is_release_id(name: &str) -> bool {
    let Some(short) = name.get(16..).and_then(|rest| rest.strip_prefix('-')) else {
        return false;
    };
    id_time(name).is_some()
        && name.as_bytes()[..15]
            .iter()
            .all(|b| b.is_ascii_digit() || *b == b'T')
        && (1..=12).contains(&short.len())
        && short
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The Unix time in a release id's `YYYYMMDDTHHMMSSZ` prefix.
pub fn id_time(id: &str) -> Option<u64> {
    let b = id.as_bytes();
    if b.len() < 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> { id.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, s) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 || y < 1970
    {
        return None;
    }
    // days-from-civil, the inverse of `civil_time`.
    let (y, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y / 400;
    let yoe = y % 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

/// RFC 3339 UTC with milliseconds, for history lines that must sort within a second.
pub fn rfc3339_millis(unix_millis: u64) -> String {
    let (y, mo, d, h, mi, s) = civil_time(unix_millis / 1000);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
        unix_millis % 1000
    )
}

/// UTC calendar fields of a Unix time (days-to-civil, proleptic Gregorian).
pub fn civil_time(unix_secs: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// RFC 3339 UTC, to the second.
pub fn rfc3339(unix_secs: u64) -> String {
    let (y, mo, d, h, mi, s) = civil_time(unix_secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Where a host's new release comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `releases/<id>` is already complete (a re-run of the same deploy).
    Present,
    /// A copy of a release holding the same artifact (linked or copied as a delta is, and
    /// verified against the manifest on the host, else uploaded): nothing to upload.
    Reuse { from: String },
    /// Stream the artifact.
    Upload,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub host: String,
    pub release: String,
    pub source: Source,
    /// What `current` pointed at before: kept by cleanup, the rollback target on failure.
    pub previous: Option<String>,
    /// Releases and stale partial directories removed after the switch.
    pub prune: Vec<String>,
}

pub fn choose(host: &str, tree: &ReleaseTree, release: &str, sha256: &str, keep: usize) -> Choice {
    let source = if tree.has(release) {
        Source::Present
    } else {
        match same_artifact(tree, sha256) {
            Some(from) => Source::Reuse {
                from: from.to_owned(),
            },
            None => Source::Upload,
        }
    };
    Choice {
        host: host.to_owned(),
        release: release.to_owned(),
        source,
        previous: tree.current.clone().filter(|c| c != release),
        prune: prune_list(tree, release, keep),
    }
}

/// The newest of shipit's releases on the host that holds the artifact `sha256` (the
/// likeliest still in page cache): a copy of it needs no upload, so no delta either.
pub fn same_artifact<'t>(tree: &'t ReleaseTree, sha256: &str) -> Option<&'t str> {
    tree.releases
        .iter()
        .rev()
        .filter(|r| is_release_id(&r.id))
        .find(|r| r.sha256.as_deref() == Some(sha256))
        .map(|r| r.id.as_str())
}

/// Releases beyond the newest `keep`, never the new one nor the one it replaces; plus every
/// leftover partial directory (the lock is held, so none is in use). Only directories of
/// shipit's own making count, by name: release ids of its form and `<id>.partial`; other
/// names in `releases/` are neither removed nor counted among the `keep`.
fn prune_list(tree: &ReleaseTree, release: &str, keep: usize) -> Vec<String> {
    let mut ids: BTreeSet<&str> = tree
        .releases
        .iter()
        .map(|r| r.id.as_str())
        .filter(|id| is_release_id(id))
        .collect();
    ids.insert(release);
    let keep_set: BTreeSet<&str> = ids
        .iter()
        .rev()
        .take(keep)
        .copied()
        .chain([release])
        .chain(tree.current.as_deref())
        .collect();
    let mut prune: Vec<String> = ids
        .into_iter()
        .filter(|id| !keep_set.contains(id))
        .map(str::to_owned)
        .collect();
    prune.extend(
        tree.partials
            .iter()
            .filter(|p| p.strip_suffix(".partial").is_some_and(is_release_id))
            .cloned(),
    );
    prune
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Source::Present => "already present".to_owned(),
            Source::Reuse { from } => format!("copy of {from}"),
            Source::Upload => "upload".to_owned(),
        };
        write!(
            f,
            "{}: release {} ({source}), current {} -> {}",
            self.host,
            self.release,
            self.previous.as_deref().unwrap_or("(none)"),
            self.release
        )?;
        if !self.prune.is_empty() {
            write!(f, ", remove {}", self.prune.join(" "))?;
        }
        Ok(())
    }
}

/// Splits `n` hosts into waves: the sizes in order, the last size repeating until every
/// host has a wave (like Ansible's `serial` list). Sizes are at least one host.
pub fn waves(n: usize, sizes: &[crate::inventory::Amount]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while start < n {
        let size = sizes
            .get(i.min(sizes.len().saturating_sub(1)))
            .map_or(n, |a| a.of(n))
            .max(1);
        let end = (start + size).min(n);
        out.push(start..end);
        start = end;
        i += 1;
    }
    out
}

/// How many failed hosts `max_fail` tolerates in a fleet of `n`: a count as written, a
/// percentage rounded down (`"10%"` of 15 hosts tolerates 1). The deploy stops when the
/// number of failed hosts so far is greater than this.
pub fn tolerated_failures(max_fail: crate::inventory::Amount, n: usize) -> usize {
    match max_fail {
        crate::inventory::Amount::Count(c) => c as usize,
        crate::inventory::Amount::Percent(p) => n * p as usize / 100,
    }
}

/// Why the fleet cannot roll back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    #[error("release `{release}` is missing on {}; pick one every host has (`shipit releases`)", .hosts.join(", "))]
    Missing { release: String, hosts: Vec<String> },
    #[error("no earlier release that went live and passed its health gate on {}; `shipit releases` says why each is not a candidate, `--to ID` picks one anyway", .hosts.join(", "))]
    NothingEarlier { hosts: Vec<String> },
    #[error("the hosts would roll back to different releases ({}); choose one with `--to ID`", .choices.join("; "))]
    Disagree { choices: Vec<String> },
}

/// Why a release on a host is not a default rollback target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotCandidate {
    /// It is what the host runs.
    Current,
    /// It is newer than what the host runs.
    Newer,
    /// Nothing records that it went live on the host and passed its health gate there (a
    /// deploy killed before or during its switch, switched back, or reverted by the guard),
    /// or the fleet turned away from it since (switched back after it passed, rolled back
    /// from).
    NeverPassed,
}

impl fmt::Display for NotCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotCandidate::Current => "current",
            NotCandidate::Newer => "newer than current",
            NotCandidate::NeverPassed => {
                "never went live and passed its health gate here, or was switched back or rolled back from since"
            }
        })
    }
}

/// Whether release `id` of `tree` is a default rollback target on its host: older than
/// `current`, and recorded in `passed` (the releases that went live on the host and passed
/// its health gate). A release without that positive record never is, whatever history
/// says or does not say about it.
pub fn candidacy(
    tree: &ReleaseTree,
    passed: &BTreeSet<String>,
    id: &str,
) -> Result<(), NotCandidate> {
    // Never having passed is said before being newer: it is what still holds after a
    // deploy makes the release older than `current`.
    match tree.current.as_deref() {
        Some(c) if c == id => Err(NotCandidate::Current),
        _ if !passed.contains(id) => Err(NotCandidate::NeverPassed),
        Some(c) if id > c => Err(NotCandidate::Newer),
        _ => Ok(()),
    }
}

/// The release the fleet rolls back to: `to` if given (it must exist everywhere), else the
/// newest release before each host's `current` that passed there ([`candidacy`]), which
/// must be the same on every host. Each host comes with the releases that passed on it.
pub fn rollback_target(
    trees: &[(&str, &ReleaseTree, &BTreeSet<String>)],
    to: Option<&str>,
) -> Result<String, RollbackError> {
    if let Some(to) = to {
        let missing: Vec<String> = trees
            .iter()
            .filter(|(_, t, _)| !t.has(to))
            .map(|(h, _, _)| (*h).to_owned())
            .collect();
        if !missing.is_empty() {
            return Err(RollbackError::Missing {
                release: to.to_owned(),
                hosts: missing,
            });
        }
        return Ok(to.to_owned());
    }
    let mut choices: Vec<(String, String)> = Vec::new();
    let mut none = Vec::new();
    for (host, tree, passed) in trees {
        let candidate = tree
            .releases
            .iter()
            .rev()
            .find(|r| candidacy(tree, passed, &r.id).is_ok());
        match candidate {
            Some(r) => choices.push((host.to_string(), r.id.clone())),
            None => none.push(host.to_string()),
        }
    }
    if !none.is_empty() {
        return Err(RollbackError::NothingEarlier { hosts: none });
    }
    let distinct: BTreeSet<&str> = choices.iter().map(|(_, id)| id.as_str()).collect();
    match distinct.len() {
        1 => Ok(choices[0].1.clone()),
        _ => Err(RollbackError::Disagree {
            choices: choices.iter().map(|(h, id)| format!("{h}: {id}")).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::facts::Release;

    fn tree(current: Option<&str>, releases: &[(&str, &str)], partials: &[&str]) -> ReleaseTree {
        ReleaseTree {
            current: current.map(str::to_owned),
            releases: releases
                .iter()
                .map(|(id, sha)| Release {
                    id: id.to_string(),
                    sha256: Some(sha.to_string()),
                })
                .collect(),
            partials: partials.iter().map(|p| p.to_string()).collect(),
            zstd: true,
            ..ReleaseTree::default()
        }
    }

    #[test]
    fn release_ids_sort_by_time() {
        assert_eq!(
            release_id(0, "abcdef0123456789"),
            "19700101T000000Z-abcdef012345"
        );
        assert_eq!(release_id(1_795_381_200, "ff"), "20261122T210000Z-ff");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert!(release_id(1_000, "a") < release_id(2_000, "a"));
    }

    #[test]
    fn new_ids_always_sort_after_existing_ones() {
        let now = 1_795_381_200;
        assert_eq!(id_time(&release_id(now, "ab")), Some(now));
        assert_eq!(id_time("20000229T235959Z-x"), Some(951_868_799));
        assert_eq!(id_time("not-an-id"), None);
        assert_eq!(next_release_id(now, "ab", []), release_id(now, "ab"));
        let same_second = release_id(now, "zz");
        assert_eq!(
            next_release_id(now, "ab", [same_second.as_str()]),
            release_id(now + 1, "ab")
        );
        let older = release_id(now - 60, "zz");
        assert_eq!(
            next_release_id(now, "ab", [older.as_str(), "junk"]),
            release_id(now, "ab")
        );
        assert_eq!(rfc3339_millis(951_868_799_042), "2000-02-29T23:59:59.042Z");
    }

    #[test]
    fn waves_repeat_the_last_size() {
        use crate::inventory::Amount::{Count, Percent};
        assert_eq!(
            waves(10, &[Count(1), Percent(25)]),
            vec![0..1, 1..4, 4..7, 7..10]
        );
        assert_eq!(waves(3, &[Count(1)]), vec![0..1, 1..2, 2..3]);
        assert_eq!(waves(5, &[Percent(100)]), vec![0..5]);
        assert_eq!(waves(2, &[Count(5), Count(1)]), vec![0..2]);
        assert_eq!(waves(0, &[Count(1)]), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(tolerated_failures(Percent(10), 15), 1);
        assert_eq!(tolerated_failures(Percent(0), 15), 0);
        assert_eq!(tolerated_failures(Count(2), 15), 2);
    }

    #[test]
    fn first_deploy_uploads_and_prunes_nothing() {
        let p = choose("h1", &ReleaseTree::default(), "r9", "sha9", 5);
        assert_eq!(p.source, Source::Upload);
        assert_eq!(p.previous, None);
        assert!(p.prune.is_empty());
        insta::assert_snapshot!(p.to_string(), @"h1: release r9 (upload), current (none) -> r9");
    }

    /// Release ids of shipit's form: `r(n, sha)` is `n` minutes after a fixed time.
    fn r(n: u64, sha: &str) -> String {
        release_id(1_795_381_200 + n * 60, sha)
    }

    #[test]
    fn same_artifact_is_reused_and_cleanup_keeps_current_and_previous() {
        let (r0, r1, r2, r3, r4, r5) = (
            r(0, "a0"),
            r(1, "a1"),
            r(2, "b2"),
            r(3, "c3"),
            r(4, "b2"),
            r(5, "b2"),
        );
        let partial = format!("{r0}.partial");
        let t = tree(
            Some(&r1),
            &[(&r1, "a1"), (&r2, "b2"), (&r3, "c3"), (&r4, "b2")],
            &[&partial],
        );
        let p = choose("h1", &t, &r5, "b2", 2);
        assert_eq!(p.source, Source::Reuse { from: r4.clone() });
        // Newest two are r5 and r4; r1 is kept as the release r5 replaces.
        assert_eq!(p.prune, vec![r2, r3, partial]);
        insta::assert_snapshot!(p.to_string(), @"h1: release 20261122T210500Z-b2 (copy of 20261122T210400Z-b2), current 20261122T210100Z-a1 -> 20261122T210500Z-b2, remove 20261122T210200Z-b2 20261122T210300Z-c3 20261122T210000Z-a0.partial");
    }

    #[test]
    fn only_shipits_own_releases_are_pruned_or_counted() {
        assert!(is_release_id(&r(0, "0123456789abcdef")));
        assert!(is_release_id("20261122T210000Z-ff"));
        for odd in [
            "data",
            "r1",
            "20261122T210000Z",
            "20261122T210000Z-",
            "20261122T210000Z-FF",
            "20261122T210000Z-0123456789abc",
            "20261122T210000Z-ff.partial",
            "20261122T210000Z-ff/..",
            "+0261122T210000Z-ff",
            "20261322T210000Z-ff",
        ] {
            assert!(!is_release_id(odd), "{odd}");
        }
        let (r1, r2, r3) = (r(1, "aa"), r(2, "bb"), r(3, "cc"));
        // Names someone else put in `releases/`, newer and older than shipit's own.
        let odd = [
            ("00-backup", "aa"),
            ("zz-manual", "aa"),
            ("99991231T235959Z-keepme", "aa"),
        ];
        let mut releases: Vec<(&str, &str)> = vec![(&r1, "aa"), (&r2, "bb")];
        releases.extend(odd);
        let t = tree(Some(&r2), &releases, &["manual.partial", "x.partial"]);
        let p = choose("h1", &t, &r3, "aa", 2);
        // With keep 2, r3 and r2 are kept, r1 goes: the odd names neither go nor take a
        // slot, and a same-artifact odd directory is not reused.
        assert_eq!(p.prune, vec![r1.clone()]);
        assert_eq!(p.source, Source::Reuse { from: r1 });
    }

    #[test]
    fn rerun_of_the_same_release_is_present() {
        let t = tree(Some("r1"), &[("r1", "a"), ("r2", "b")], &[]);
        let p = choose("h1", &t, "r2", "b", 5);
        assert_eq!(p.source, Source::Present);
        assert_eq!(p.previous.as_deref(), Some("r1"));
    }

    #[test]
    fn rollback_default_takes_only_releases_that_passed_and_must_agree() {
        let set = |ids: &[&str]| {
            ids.iter()
                .map(|s| s.to_string())
                .collect::<BTreeSet<String>>()
        };
        let a = tree(Some("r3"), &[("r1", "a"), ("r2", "b"), ("r3", "c")], &[]);
        // r2 never passed (killed during its migration, reverted by the guard): skipped.
        let passed = set(&["r1", "r3"]);
        assert_eq!(
            rollback_target(&[("h1", &a, &passed), ("h2", &a, &passed)], None).unwrap(),
            "r1"
        );
        let all = set(&["r1", "r2", "r3"]);
        assert_eq!(rollback_target(&[("h1", &a, &all)], None).unwrap(), "r2");
        // No record at all: nothing to go back to, however the history reads.
        let e = rollback_target(&[("h1", &a, &BTreeSet::new())], None).unwrap_err();
        assert_eq!(
            e,
            RollbackError::NothingEarlier {
                hosts: vec!["h1".into()]
            }
        );
        assert_eq!(candidacy(&a, &all, "r3"), Err(NotCandidate::Current));
        let older = tree(Some("r1"), &[("r1", "a"), ("r2", "b")], &[]);
        assert_eq!(candidacy(&older, &all, "r2"), Err(NotCandidate::Newer));
        assert_eq!(candidacy(&a, &passed, "r2"), Err(NotCandidate::NeverPassed));
        let b = tree(Some("r3"), &[("r1", "a"), ("r3", "c")], &[]);
        let e = rollback_target(&[("h1", &a, &all), ("h2", &b, &all)], None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the hosts would roll back to different releases (h1: r2; h2: r1); choose one with `--to ID`"
        );
        let e = rollback_target(&[("h1", &a, &all), ("h2", &b, &all)], Some("r2")).unwrap_err();
        assert_eq!(
            e,
            RollbackError::Missing {
                release: "r2".into(),
                hosts: vec!["h2".into()]
            }
        );
        let only = tree(Some("r1"), &[("r1", "a")], &[]);
        assert!(matches!(
            rollback_target(&[("h1", &only, &all)], None),
            Err(RollbackError::NothingEarlier { .. })
        ));
    }
}
