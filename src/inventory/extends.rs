//! `extends = "base.toml"`: a stage file written on top of a base file the stages share.
//!
//! The files are read first: the one named, then the base it extends (a path relative to
//! the file that names it), then that base's base, at most [`MAX_FILES`] in all, a cycle
//! refused. Each is parsed and its keys checked on its own; then their tables are merged,
//! the nearer file winning:
//!
//! - a table merges key by key, at every depth (`[app]`, `[ssh]`, `env.vars`,
//!   `[tasks.<name>]`): the base's keys the stage file leaves out are kept;
//! - any other value replaces the base's whole: a string or number, an array (`roles`,
//!   `from_env`, `waves`), and every array of tables (`[[hosts]]`, `[[systemd]]`,
//!   `[[hooks]]`, `[[notify]]`): the stage file's hosts are the hosts, not added to the
//!   base's;
//! - the health checks (`[health]` or `[[health]]`) and each `[env.secrets.NAME]` (one
//!   secret's source) are replaced whole too: they are one thing each, not a set of keys.
//!
//! A stage file cannot remove a key of its base: keep such a key out of the base.
//!
//! Spans: each file's spans are moved into its own range of [`Sources`] before the merge,
//! so every value, wherever the merge puts it, still names the file, line and column it
//! came from.

use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::ProblemKind;

/// How many files one inventory may be made of (the named file and its bases).
pub(super) const MAX_FILES: usize = 8;

/// Reads another file of the inventory (a base): its text, or why it cannot be read.
pub type ReadFile<'a> = &'a dyn Fn(&Path) -> Result<String, String>;

/// A problem found while following `extends`: in file `file` (an index into the chain), at
/// `span` of that file's own text.
pub(super) struct ChainProblem {
    pub(super) file: usize,
    pub(super) span: Range<usize>,
    pub(super) kind: ProblemKind,
}

/// The files of an inventory, the named one first, each base after the file extending it;
/// and the problem that stopped the chain, if one did. A file that does not parse ends the
/// chain quietly: its syntax error is reported when it is parsed for real.
pub(super) fn read_chain(
    text: &str,
    file: &Path,
    read: ReadFile<'_>,
) -> (Vec<(PathBuf, String)>, Option<ChainProblem>) {
    let mut files = vec![(file.to_owned(), text.to_owned())];
    loop {
        let index = files.len() - 1;
        let (path, text) = &files[index];
        let Ok(doc) = DeTable::parse(text) else {
            return (files, None);
        };
        let Some(extends) = doc.get_ref().get("extends") else {
            return (files, None);
        };
        let span = extends.span();
        let problem = |kind| {
            Some(ChainProblem {
                file: index,
                span: span.clone(),
                kind,
            })
        };
        let invalid = |reason: String| {
            problem(ProblemKind::Invalid {
                key: "extends".to_owned(),
                reason,
            })
        };
        let name = match extends.get_ref().as_str() {
            Some(name) if !name.trim().is_empty() => name,
            _ => {
                let reason = "must be the path of a base file, e.g. \"base.toml\"".to_owned();
                return (files, invalid(reason));
            }
        };
        let dir = path.parent().unwrap_or(Path::new(""));
        let base = normalize(&dir.join(name));
        if let Some(first) = files.iter().position(|(p, _)| normalize(p) == base) {
            let mut cycle: Vec<String> = files[first..]
                .iter()
                .map(|(p, _)| format!("`{}`", p.display()))
                .collect();
            cycle.push(format!("`{}`", base.display()));
            let reason = format!(
                "a cycle: {}; a base must not extend a file that extends it",
                cycle.join(" extends ")
            );
            return (files, invalid(reason));
        }
        if files.len() == MAX_FILES {
            let reason = format!(
                "`{}` would be the {}th file of this inventory: at most {MAX_FILES} files extend one another",
                base.display(),
                MAX_FILES + 1
            );
            return (files, invalid(reason));
        }
        match read(&base) {
            Ok(text) => files.push((base, text)),
            Err(reason) => {
                let reason = format!("cannot read `{}`: {reason}", base.display());
                return (files, invalid(reason));
            }
        }
    }
}

/// `path` with `.` removed and `dir/..` folded, without asking the file system: the same
/// file named two ways (`inventory/../inventory/base.toml`) is found as a cycle.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                let up = matches!(
                    out.components().next_back(),
                    None | Some(Component::ParentDir)
                );
                if up {
                    out.push("..");
                } else {
                    out.pop();
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// A file's table with every span moved by `by`: from its own text into its range of
/// the inventory's sources.
pub(super) fn shift<'i>(table: DeTable<'i>, by: usize) -> DeTable<'i> {
    table
        .into_iter()
        .map(|(key, value)| (moved(key, by), shift_value(value, by)))
        .collect()
}

fn shift_value<'i>(value: Spanned<DeValue<'i>>, by: usize) -> Spanned<DeValue<'i>> {
    let span = value.span();
    let inner = match value.into_inner() {
        DeValue::Table(t) => DeValue::Table(shift(t, by)),
        DeValue::Array(mut items) => {
            for item in items.iter_mut() {
                let taken = std::mem::replace(item, Spanned::new(0..0, DeValue::Boolean(false)));
                *item = shift_value(taken, by);
            }
            DeValue::Array(items)
        }
        other => other,
    };
    Spanned::new(span.start + by..span.end + by, inner)
}

fn moved<T>(value: Spanned<T>, by: usize) -> Spanned<T> {
    let span = value.span();
    Spanned::new(span.start + by..span.end + by, value.into_inner())
}

/// `over` (the nearer file) merged onto `base` as the module doc says; `path` is where the
/// tables are (`""` at the top, `"env"` in `[env]`).
pub(super) fn merge<'i>(mut base: DeTable<'i>, over: DeTable<'i>, path: &str) -> DeTable<'i> {
    for (key, value) in over {
        let here = match path {
            "" => key.get_ref().to_string(),
            _ => format!("{path}.{}", key.get_ref()),
        };
        let name: &str = key.get_ref();
        let merged = match base.remove(name) {
            Some(old) if !replaced_whole(&here) && old.get_ref().is_table() => {
                let span = value.span();
                match (old.into_inner(), value.into_inner()) {
                    (DeValue::Table(old), DeValue::Table(new)) => {
                        Spanned::new(span, DeValue::Table(merge(old, new, &here)))
                    }
                    (_, new) => Spanned::new(span, new),
                }
            }
            _ => value,
        };
        base.insert(key, merged);
    }
    base
}

/// Whether the table at `path` is replaced whole rather than merged: the health checks are
/// one list (`[health]` is its one-check spelling), and a secret's source is one thing.
fn replaced_whole(path: &str) -> bool {
    path == "health" || path.starts_with("env.secrets.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_folded_without_the_file_system() {
        assert_eq!(
            normalize(Path::new("inventory/../inventory/./base.toml")),
            Path::new("inventory/base.toml")
        );
        assert_eq!(normalize(Path::new("../x/../../y")), Path::new("../../y"));
        assert_eq!(
            normalize(Path::new("/etc/../base.toml")),
            Path::new("/base.toml")
        );
    }
}
