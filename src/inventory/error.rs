//! Problems found in an inventory, each with its file, line and column, and how they are
//! collected and reported together.
//!
//! An inventory may be several files (a stage file and the bases it `extends`): every span
//! is an offset into [`Sources`], where each file has a range of its own, so a value keeps
//! the file it came from through the merge and a problem names that file.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Every problem found in one inventory (the file named, and the bases it extends).
#[derive(Debug, thiserror::Error)]
pub struct InventoryError {
    /// The file named on the command line.
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: {}",
                p.file.display(),
                p.line,
                p.column,
                p.kind
            )?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Problem {
    /// The file the problem is in: the one named, or a base it extends.
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub kind: ProblemKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ProblemKind {
    #[error("{message}")]
    Syntax { message: String },
    #[error("unknown key `{key}` in {section}{}", did_you_mean(.suggestion))]
    UnknownKey {
        key: String,
        section: String,
        suggestion: Option<String>,
    },
    #[error("missing required key `{key}`")]
    Missing { key: String },
    #[error("`{key}`: {reason}")]
    Invalid { key: String, reason: String },
    #[error("duplicate host name `{name}` (first defined on line {first_line})")]
    DuplicateHost { name: String, first_line: usize },
    #[error("more than one host has role `migrate`: {}; exactly one host runs backups and migrations", .hosts.join(", "))]
    ManyMigrateHosts { hosts: Vec<String> },
    #[error(
        "secrets named in `env.from_env` are not set in the environment: {}; export them (in CI: from the secret store) and run again",
        .names.join(", ")
    )]
    MissingSecrets { names: Vec<String> },
}

pub(super) fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_owned())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------
// The files of an inventory, and where an offset lies in them.

/// One file of an inventory: its path as shown in problems, its text, and where its range
/// of offsets starts.
pub(super) struct Source {
    pub(super) path: PathBuf,
    pub(super) text: String,
    pub(super) start: usize,
}

/// The files of one inventory: the one named first, then the base it extends, and so on.
/// File `i` owns the offsets `start..=start + text.len()` (the end included, for a problem
/// at the end of a file), and the next file starts one after that.
pub(super) struct Sources {
    pub(super) files: Vec<Source>,
}

impl Sources {
    pub(super) fn new(files: Vec<(PathBuf, String)>) -> Sources {
        let mut start = 0;
        let files = files
            .into_iter()
            .map(|(path, text)| {
                let source = Source { path, text, start };
                start += source.text.len() + 1;
                source
            })
            .collect();
        Sources { files }
    }

    /// The file holding `offset`, and the offset within its text.
    fn file_of(&self, offset: usize) -> (&Source, usize) {
        let source = self
            .files
            .iter()
            .rev()
            .find(|f| f.start <= offset)
            .unwrap_or(&self.files[0]);
        (source, offset - source.start.min(offset))
    }

    /// File, 1-based line and column of an offset.
    pub(super) fn locate(&self, offset: usize) -> (&Path, usize, usize) {
        let (source, local) = self.file_of(offset);
        let (line, column) = line_col(&source.text, local);
        (&source.path, line, column)
    }

    /// Where `offset` is, for a problem at `here` that refers to it: "line 7" in the same
    /// file, "`inventory/base.toml` line 7" in another.
    pub(super) fn line_ref(&self, offset: usize, here: usize) -> String {
        let (file, line, _) = self.locate(offset);
        if file == self.locate(here).0 {
            format!("line {line}")
        } else {
            format!("`{}` line {line}", file.display())
        }
    }

    /// The span of a whole `[section]`: its header line in the first file that has one (the
    /// named file first, whose values win), else the top of the named file.
    pub(super) fn section_span(&self, name: &str) -> Range<usize> {
        for source in &self.files {
            let span = section_span(&source.text, name);
            if span != (0..0) {
                return source.start + span.start..source.start + span.end;
            }
        }
        0..0
    }
}

// ---------------------------------------------------------------------------------------
// Collecting problems with positions.

pub(super) struct Problems<'t> {
    pub(super) sources: &'t Sources,
    pub(super) list: Vec<Problem>,
}

impl Problems<'_> {
    pub(super) fn push(&mut self, span: Range<usize>, kind: ProblemKind) {
        let (file, line, column) = self.sources.locate(span.start);
        self.list.push(Problem {
            file: file.to_owned(),
            line,
            column,
            kind,
        });
    }

    /// The span of a whole `[section]` (see [`Sources::section_span`]).
    pub(super) fn section(&self, name: &str) -> Range<usize> {
        self.sources.section_span(name)
    }

    /// "line 7", or "`base.toml` line 7" when `offset` is in another file than `here`.
    pub(super) fn line_ref(&self, offset: usize, here: usize) -> String {
        self.sources.line_ref(offset, here)
    }

    pub(super) fn invalid(&mut self, span: Range<usize>, key: &str, reason: impl Into<String>) {
        self.push(
            span,
            ProblemKind::Invalid {
                key: key.to_owned(),
                reason: reason.into(),
            },
        );
    }

    pub(super) fn missing(&mut self, span: Range<usize>, key: &str) {
        self.push(
            span,
            ProblemKind::Missing {
                key: key.to_owned(),
            },
        );
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The span of a whole `[section]` in one file's text: its header line if present, else
/// `0..0`.
fn section_span(text: &str, name: &str) -> Range<usize> {
    let header = format!("[{name}]");
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with(&header) {
            let start = offset + (line.len() - line.trim_start().len());
            return start..start + header.len();
        }
        offset += line.len();
    }
    0..0
}
