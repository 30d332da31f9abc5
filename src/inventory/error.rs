//! Problems found in an inventory, each with its line and column, and how they are collected
//! and reported together.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// Every problem found in one inventory file.
#[derive(Debug, thiserror::Error)]
pub struct InventoryError {
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
                self.file.display(),
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
// Collecting problems with positions.

pub(super) struct Problems<'t> {
    pub(super) text: &'t str,
    pub(super) list: Vec<Problem>,
}

impl Problems<'_> {
    pub(super) fn push(&mut self, span: Range<usize>, kind: ProblemKind) {
        let (line, column) = line_col(self.text, span.start);
        self.list.push(Problem { line, column, kind });
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
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The span of a whole `[section]`: its header line if present, else the top of the file.
pub(super) fn section_span(text: &str, name: &str) -> Range<usize> {
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
