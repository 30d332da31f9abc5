//! One release deployed by several jobs at once (a CI matrix): the shard of the selected
//! hosts a job deploys (`--shard K/N`), a release id given by the caller (`--release-id`),
//! and which of the once steps a job runs (`--once-only`, `--skip-once`). Pure: the caller
//! parses the flags and passes the hosts' release trees.

use std::fmt;

use super::facts::ReleaseTree;
use super::{id_time, is_release_id};

/// `K/N`: the K-th (1-based) of N shards of the selected hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub k: usize,
    pub n: usize,
}

/// Why a `--shard` or `--release-id` value is refused (exit 2, before any connection).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("`--shard {given}` is not `K/N` with 1 <= K <= N (e.g. `--shard 2/4`)")]
    BadShard { given: String },
    #[error(
        "shard {k}/{n} selects no host: {selected} hosts are selected; use at most {selected} shards"
    )]
    EmptyShard { k: usize, n: usize, selected: usize },
    #[error(
        "`--release-id {given}` is not a release id: expected `YYYYMMDDTHHMMSSZ-` and 12 lowercase hex digits, as `shipit plan --json` prints it (`release`)"
    )]
    BadReleaseId { given: String },
    #[error(
        "`--release-id {given}` was planned for another artifact: its sha256 starts with `{sha12}`; build the same artifact in every job (e.g. build once and pass it on as a CI artifact)"
    )]
    OtherArtifact { given: String, sha12: String },
}

impl Shard {
    pub fn parse(given: &str) -> Result<Shard, ShardError> {
        let bad = || ShardError::BadShard {
            given: given.to_owned(),
        };
        let (k, n) = given.split_once('/').ok_or_else(bad)?;
        let num = |s: &str| -> Option<usize> {
            s.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| s.parse().ok())
                .flatten()
        };
        let (k, n) = (num(k).ok_or_else(bad)?, num(n).ok_or_else(bad)?);
        if k == 0 || k > n {
            return Err(bad());
        }
        Ok(Shard { k, n })
    }

    /// The indices (into the selected hosts, in the inventory's order) of this shard's
    /// hosts: every `i` with `i % N == K - 1`. Stable: the same inventory and selection give
    /// every job the same split, and each host is in exactly one shard.
    pub fn pick(self, selected: usize) -> Result<Vec<usize>, ShardError> {
        let picked: Vec<usize> = (0..selected).filter(|i| i % self.n == self.k - 1).collect();
        if picked.is_empty() {
            return Err(ShardError::EmptyShard {
                k: self.k,
                n: self.n,
                selected,
            });
        }
        Ok(picked)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

/// Which once steps (backup, migrations, `once` hooks at `after_upload`) a deploy runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnceSteps {
    /// All of them, on the migrate host, between staging and the switch (a plain deploy).
    #[default]
    Run,
    /// Only them: stage the migrate host, run them, switch nothing (`--once-only`).
    Only,
    /// None of them: a job before this one ran them with `--once-only` (`--skip-once`).
    /// `once` hooks at `before_switch`, `after_switch` and `after_restart` belong to the
    /// migrate host's switch and still run there.
    Skip,
}

/// Checks a `--release-id` before any connection: shipit's id form with the full 12 hex
/// digits, naming the artifact this run deploys (the id ends with its sha256's first 12).
pub fn check_release_id(given: &str, sha256: &str) -> Result<(), ShardError> {
    check_release_id_form(given)?;
    let short = &given[17..];
    if !sha256.starts_with(short) {
        return Err(ShardError::OtherArtifact {
            given: given.to_owned(),
            sha12: sha256.chars().take(12).collect(),
        });
    }
    Ok(())
}

/// The form of a `--release-id` alone: checked before the artifact is built.
pub fn check_release_id_form(given: &str) -> Result<(), ShardError> {
    let short = given.get(17..).unwrap_or_default();
    if !is_release_id(given) || short.len() != 12 {
        return Err(ShardError::BadReleaseId {
            given: given.to_owned(),
        });
    }
    Ok(())
}

/// Whether a deploy of `inventory` has once steps that must finish before any host
/// switches: a backup, migrations, or a `once` hook at `after_upload`. A shard cannot wait
/// for another shard's, so `--shard` needs them run first (`--once-only`) and skipped.
pub fn has_once_steps(inventory: &crate::inventory::Inventory) -> bool {
    inventory.backup.is_some()
        || inventory.migrate.is_some()
        || inventory
            .hooks
            .iter()
            .any(|h| h.once && h.at == crate::inventory::HookPoint::AfterUpload)
}

/// The releases on a host that a deploy of `id` would not sort after: shipit's ids other
/// than `id` from the same second or later. A release id given to a deploy must be newer
/// than everything there (a minted one always is), or `rollback` and cleanup, which go by
/// id order, would take the older id for the newer release.
pub fn newer_releases<'t>(id: &str, tree: &'t ReleaseTree) -> Vec<&'t str> {
    let Some(at) = id_time(id) else {
        return Vec::new();
    };
    tree.releases
        .iter()
        .map(|r| r.id.as_str())
        .filter(|r| *r != id && is_release_id(r) && id_time(r).is_some_and(|t| t >= at))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::facts::parse_releases;

    #[test]
    fn shards_split_the_selection_stably_and_completely() {
        let s = Shard::parse("2/3").unwrap();
        assert_eq!(s, Shard { k: 2, n: 3 });
        assert_eq!(s.to_string(), "2/3");
        assert_eq!(s.pick(7).unwrap(), vec![1, 4]);
        let mut all: Vec<usize> = (1..=3)
            .flat_map(|k| Shard { k, n: 3 }.pick(7).unwrap())
            .collect();
        all.sort();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
        assert_eq!(Shard::parse("1/1").unwrap().pick(2).unwrap(), vec![0, 1]);
    }

    #[test]
    fn bad_shards_are_refused() {
        for bad in [
            "", "1", "0/2", "3/2", "1/0", "a/b", "+1/2", "1/2/3", " 1/2", "-1/2",
        ] {
            assert!(Shard::parse(bad).is_err(), "{bad:?}");
        }
        let e = Shard { k: 4, n: 4 }.pick(3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "shard 4/4 selects no host: 3 hosts are selected; use at most 3 shards"
        );
    }

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_release_id_must_be_whole_and_name_the_artifact() {
        assert_eq!(
            check_release_id("20261122T210000Z-0123456789ab", SHA),
            Ok(())
        );
        for bad in [
            "20261122T210000Z-0123456789a",
            "20261122T210000Z-0123456789abc",
            "20261122T210000Z-0123456789AB",
            "20261322T210000Z-0123456789ab",
            "../20261122T210000Z-0123456789ab",
            "20261122T210000Z-0123456789ab\n",
            "latest",
        ] {
            assert!(
                matches!(
                    check_release_id(bad, SHA),
                    Err(ShardError::BadReleaseId { .. })
                ),
                "{bad:?}"
            );
        }
        let e = check_release_id("20261122T210000Z-ffffffffffff", SHA).unwrap_err();
        assert!(e.to_string().contains("starts with `0123456789ab`"), "{e}");
    }

    #[test]
    fn newer_releases_are_those_of_the_same_second_or_later() {
        let tree = parse_releases(
            "release 20261122T205959Z-aaaaaaaaaaaa\nrelease 20261122T210000Z-0123456789ab\nrelease 20261122T210000Z-bbbbbbbbbbbb\nrelease 20261122T210001Z-cccccccccccc\nrelease notes\n",
        );
        assert_eq!(
            newer_releases("20261122T210000Z-0123456789ab", &tree),
            vec![
                "20261122T210000Z-bbbbbbbbbbbb",
                "20261122T210001Z-cccccccccccc"
            ]
        );
        assert!(newer_releases("20261122T210002Z-0123456789ab", &tree).is_empty());
    }
}
