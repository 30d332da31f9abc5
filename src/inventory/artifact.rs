//! `[artifact]`: what is deployed (a directory or tarball, or what a build command makes)
//! and which of its paths every release shares.

use std::path::PathBuf;

use super::error::Problems;
use super::raw::{RawArtifact, S};
use super::validate::Validator;

#[derive(Debug)]
pub struct Artifact {
    pub path: PathBuf,
    pub build: Option<String>,
    /// Paths in every release linked to `shared/<path>`: relative, normalized, without
    /// control characters, none inside another (across both lists), none of shipit's own
    /// (`REVISION`, `.shipit/...`, `*.shipit-delta`).
    pub shared_dirs: Vec<String>,
    pub shared_files: Vec<String>,
    /// Send only new content to hosts whose current release has a manifest (default true).
    pub delta: bool,
}

impl Validator<'_> {
    pub(super) fn artifact(&self, raw: RawArtifact, p: &mut Problems<'_>) -> Artifact {
        let path = match raw.path {
            Some(path) => self.local_path(&path, "artifact.path", p),
            None => {
                p.missing(p.section("artifact"), "artifact.path");
                PathBuf::new()
            }
        };
        let shared_dirs = shared_paths(&raw.shared_dirs, "artifact.shared_dirs", p);
        let shared_files = shared_paths(&raw.shared_files, "artifact.shared_files", p);
        shared_overlaps(
            raw.shared_dirs
                .iter()
                .map(|s| ("artifact.shared_dirs", s))
                .chain(
                    raw.shared_files
                        .iter()
                        .map(|s| ("artifact.shared_files", s)),
                ),
            p,
        );
        Artifact {
            path,
            build: raw.build.map(|b| b.into_inner()),
            shared_dirs,
            shared_files,
            delta: raw.delta.unwrap_or(true),
        }
    }
}

/// Names inside a release that shipit itself writes: a shared path must not be one of them
/// (or lie below one), or every release would share shipit's own record of what it is (a
/// shared `REVISION` or `.shipit` made every release claim one artifact, and a redeploy
/// "reused" another artifact's release).
const OWNED_IN_RELEASE: [&str; 2] = ["REVISION", ".shipit"];

/// The suffix of the temporary copies the delta step makes next to a release's files.
const DELTA_SUFFIX: &str = ".shipit-delta";

/// One `shared_dirs`/`shared_files` list: each entry relative, normalized, without control
/// characters, and not a name shipit owns in a release.
fn shared_paths(list: &[S<String>], key: &str, p: &mut Problems<'_>) -> Vec<String> {
    for s in list {
        let v = s.get_ref();
        let first = v.split('/').next().unwrap_or("");
        let reason = if v.is_empty()
            || v.starts_with('/')
            || v.split('/').any(|c| c == ".." || c == "." || c.is_empty())
        {
            Some(format!(
                "{v:?} must be a relative, normalized path inside the release (no leading or \
                 trailing `/`, no `//`, `.` or `..`)"
            ))
        } else if v.chars().any(char::is_control) {
            Some(format!("{v:?} must not contain control characters"))
        } else if OWNED_IN_RELEASE.contains(&first) {
            Some(format!(
                "{v:?}: `{first}` belongs to shipit in every release; share another path"
            ))
        } else if v.split('/').any(|c| c.ends_with(DELTA_SUFFIX)) {
            Some(format!(
                "{v:?}: names ending in `{DELTA_SUFFIX}` belong to shipit; share another path"
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            p.invalid(s.span(), key, reason);
        }
    }
    list.iter().map(|s| s.get_ref().clone()).collect()
}

/// Shared paths across `shared_dirs` and `shared_files` must be disjoint: a duplicate, or one
/// below another, is linked twice, and linking the inner one goes through the outer one's
/// link into `shared/` (seen: `["public", "public/uploads"]` deleted the uploads and left a
/// link to itself).
fn shared_overlaps<'a>(all: impl Iterator<Item = (&'a str, &'a S<String>)>, p: &mut Problems<'_>) {
    let all: Vec<_> = all.collect();
    let below = |inner: &str, outer: &str| {
        inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    for (i, (key, s)) in all.iter().enumerate() {
        let v = s.get_ref();
        let earlier = all[..i].iter().find(|(_, o)| {
            let o = o.get_ref();
            below(v, o) || below(o, v)
        });
        if let Some((other_key, other)) = earlier {
            let line = p.line_ref(other.span().start, s.span().start);
            let o = other.get_ref();
            let reason = if v == o {
                format!("{v:?} is listed twice (also `{other_key}`, {line})")
            } else {
                let (inner, outer) = if below(v, o) { (v, o) } else { (o, v) };
                format!(
                    "{inner:?} lies inside {outer:?} (with `{other_key}`, {line}): shared \
                     paths must not contain one another; share only {outer:?}"
                )
            };
            p.invalid(s.span(), key, reason);
        }
    }
}
