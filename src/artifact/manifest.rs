//! The content manifest of a release: every path of the artifact with its type, mode, size
//! and sha256 (a symlink's target), as it stands on a host once extracted. Kept in
//! `releases/<id>/.shipit/manifest`, it is what a later deploy compares its artifact with to
//! send only new content (see `delta`), and what the host's own listing of a release tree
//! must reproduce byte for byte before that release is used.
//!
//! The text format is what GNU `find -printf` and a hash tool on the host can write too:
//! one line per path, sorted by its bytes, five tab-separated fields:
//!
//! ```text
//! app.js<TAB>f<TAB>644<TAB>15<TAB><sha256>
//! lib<TAB>d<TAB>755<TAB>-<TAB>-
//! lib/current<TAB>l<TAB>777<TAB>-<TAB>v2
//! ```
//!
//! Modes are what `tar` makes under umask 022 without keeping permissions (the host extracts
//! that way): the archive's mode with group and other write, set-id and sticky bits cleared.
//! An artifact whose names the format cannot carry (control characters, backslashes), or
//! whose entries replace each other, has no manifest: it is deployed whole every time.
//!
//! Pure: no I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// Where a release keeps its manifest, relative to the release directory.
pub const PATH: &str = ".shipit/manifest";

/// The top-level name reserved in a release for shipit's own files; never in an artifact.
pub const RESERVED: &str = ".shipit";

/// What a manifest says about one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File { size: u64, sha256: String },
    Dir,
    Symlink { target: String },
}

/// What the manifest records for one path: a file, directory or symlink, and its mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub kind: Kind,
    /// Permission bits, as on the host.
    pub mode: u32,
}

impl Item {
    pub fn sha256(&self) -> Option<&str> {
        match &self.kind {
            Kind::File { sha256, .. } => Some(sha256),
            _ => None,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    fn type_char(&self) -> char {
        match self.kind {
            Kind::File { .. } => 'f',
            Kind::Dir => 'd',
            Kind::Symlink { .. } => 'l',
        }
    }
}

/// Every path of a release (relative, `/`-separated, no `.` or trailing `/`), sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: BTreeMap<String, Item>,
}

/// Why a manifest text is not one.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line} of the release manifest is malformed: {why}")]
pub struct ParseError {
    pub line: usize,
    pub why: &'static str,
}

/// The mode `tar -x --no-same-permissions` gives under umask 022.
pub fn host_mode(mode: u32) -> u32 {
    mode & 0o755
}

impl Manifest {
    /// The manifest text (see the module doc).
    pub fn render(&self) -> Vec<u8> {
        let mut out = String::with_capacity(self.entries.len() * 100);
        for (path, entry) in &self.entries {
            let (size, data) = match &entry.kind {
                Kind::File { size, sha256 } => (size.to_string(), sha256.as_str()),
                Kind::Dir => ("-".to_owned(), "-"),
                Kind::Symlink { target } => ("-".to_owned(), target.as_str()),
            };
            let _ = writeln!(
                out,
                "{path}\t{}\t{:o}\t{size}\t{data}",
                entry.type_char(),
                entry.mode
            );
        }
        out.into_bytes()
    }

    /// The sha256 (hex) of [`render`](Self::render)'s text.
    pub fn sha256(&self) -> String {
        sha256_hex(&self.render())
    }

    pub fn parse(text: &[u8]) -> Result<Manifest, ParseError> {
        let text = std::str::from_utf8(text).map_err(|e| ParseError {
            line: text[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1,
            why: "it is not UTF-8",
        })?;
        let mut entries = BTreeMap::new();
        let mut last: Option<&str> = None;
        for (i, line) in text.lines().enumerate() {
            let bad = |why| ParseError { line: i + 1, why };
            let fields: Vec<&str> = line.split('\t').collect();
            let [path, kind, mode, size, data] = fields[..] else {
                return Err(bad("it does not have five tab-separated fields"));
            };
            if path.is_empty() || !plain(path) {
                return Err(bad("its path is empty or has control characters"));
            }
            if path.starts_with('/')
                || path
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..")
            {
                return Err(bad("its path is not a plain relative path"));
            }
            if last.is_some_and(|l| l >= path) {
                return Err(bad("its path is out of order"));
            }
            last = Some(path);
            let mode = u32::from_str_radix(mode, 8).map_err(|_| bad("its mode is not octal"))?;
            let kind = match (kind, size, data) {
                ("f", size, sha) => {
                    let size = size.parse().map_err(|_| bad("its size is not a number"))?;
                    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(bad("its sha256 is not 64 hex digits"));
                    }
                    Kind::File {
                        size,
                        sha256: sha.to_owned(),
                    }
                }
                ("d", "-", "-") => Kind::Dir,
                ("l", "-", target) if !target.is_empty() => Kind::Symlink {
                    target: target.to_owned(),
                },
                _ => return Err(bad("its type is not `f`, `d` or `l` with matching fields")),
            };
            entries.insert(path.to_owned(), Item { kind, mode });
        }
        Ok(Manifest { entries })
    }

    pub fn get(&self, path: &str) -> Option<&Item> {
        self.entries.get(path)
    }
}

/// Whether the text format can carry `name`: no control characters, no backslash (which
/// hash tools escape in their output).
fn plain(name: &str) -> bool {
    !name.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\')
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Builds a manifest from an artifact's entries in archive order, as `tar -x` would leave
/// them: parent directories that the archive does not list are made with mode 755, a hard
/// link takes its target's content and mode. Gives up (no manifest) on what it cannot
/// describe exactly: names the format cannot carry, a path given twice, a hard link to
/// something that is not an earlier file, an entry below a non-directory.
#[derive(Debug, Default)]
pub struct Builder {
    entries: BTreeMap<String, Item>,
    /// Paths the archive itself listed (implicit parents are not in here).
    listed: std::collections::HashSet<String>,
    failed: bool,
}

impl Builder {
    pub fn new() -> Builder {
        Builder::default()
    }

    /// `path` as components joined by `/` (the caller has refused `..` and absolute paths).
    pub fn dir(&mut self, path: &str, mode: u32) {
        if path.is_empty() {
            // The archive's root (`./`): not part of the release's listing.
            return;
        }
        self.insert(
            path,
            Item {
                kind: Kind::Dir,
                mode: host_mode(mode),
            },
        );
    }

    pub fn file(&mut self, path: &str, mode: u32, size: u64, sha256: String) {
        self.insert(
            path,
            Item {
                kind: Kind::File { size, sha256 },
                mode: host_mode(mode),
            },
        );
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        if !plain(target) {
            self.failed = true;
            return;
        }
        self.insert(
            path,
            Item {
                kind: Kind::Symlink {
                    target: target.to_owned(),
                },
                mode: 0o777,
            },
        );
    }

    pub fn hard_link(&mut self, path: &str, target: &str) {
        match self.entries.get(target) {
            Some(
                entry @ Item {
                    kind: Kind::File { .. },
                    ..
                },
            ) => {
                let entry = entry.clone();
                self.insert(path, entry);
            }
            _ => self.failed = true,
        }
    }

    fn insert(&mut self, path: &str, entry: Item) {
        if self.failed {
            return;
        }
        if path.is_empty() || !plain(path) || !self.listed.insert(path.to_owned()) {
            self.failed = true;
            return;
        }
        // Parents: implicit ones as tar makes them; an existing non-directory is a conflict.
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let parent = &path[..end + i];
            match self.entries.get(parent) {
                Some(e) if e.is_dir() => {}
                Some(_) => {
                    self.failed = true;
                    return;
                }
                None => {
                    self.entries.insert(
                        parent.to_owned(),
                        Item {
                            kind: Kind::Dir,
                            mode: 0o755,
                        },
                    );
                }
            }
            end += i + 1;
        }
        if let Some(old) = self.entries.get(path)
            && !(old.is_dir() && entry.is_dir())
        {
            // Only an implicit parent can be here (listed paths were refused above).
            self.failed = true;
            return;
        }
        self.entries.insert(path.to_owned(), entry);
    }

    /// The manifest, or `None` when the artifact cannot be described exactly.
    pub fn finish(self) -> Option<Manifest> {
        (!self.failed && !self.entries.is_empty()).then_some(Manifest {
            entries: self.entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(c: char) -> String {
        c.to_string().repeat(64)
    }

    #[test]
    fn renders_sorted_lines_and_parses_them_back() {
        let mut b = Builder::new();
        b.file("lib/sub/z.txt", 0o640, 2, sha('a'));
        b.file("app.js", 0o666, 15, sha('b'));
        b.symlink("lib/current", "sub");
        b.dir("bin", 0o700);
        b.file("bin/run", 0o4755, 10, sha('c'));
        b.hard_link("bin/again", "bin/run");
        let m = b.finish().unwrap();
        let text = String::from_utf8(m.render()).unwrap();
        let aa = sha('a');
        let bb = sha('b');
        let cc = sha('c');
        assert_eq!(
            text,
            format!(
                "app.js\tf\t644\t15\t{bb}\n\
                 bin\td\t700\t-\t-\n\
                 bin/again\tf\t755\t10\t{cc}\n\
                 bin/run\tf\t755\t10\t{cc}\n\
                 lib\td\t755\t-\t-\n\
                 lib/current\tl\t777\t-\tsub\n\
                 lib/sub\td\t755\t-\t-\n\
                 lib/sub/z.txt\tf\t640\t2\t{aa}\n"
            )
        );
        assert_eq!(Manifest::parse(text.as_bytes()).unwrap(), m);
        assert_eq!(m.sha256(), sha256_hex(text.as_bytes()));
    }

    #[test]
    fn gives_up_on_what_it_cannot_describe() {
        type Case = Box<dyn Fn(&mut Builder)>;
        let cases: Vec<Case> = vec![
            Box::new(|b| b.file("a\nb", 0o644, 0, sha('a'))),
            Box::new(|b| b.file("a\\b", 0o644, 0, sha('a'))),
            Box::new(|b| b.symlink("l", "x\ty")),
            Box::new(|b| {
                b.file("a", 0o644, 0, sha('a'));
                b.file("a", 0o644, 0, sha('b'));
            }),
            Box::new(|b| {
                b.file("a", 0o644, 0, sha('a'));
                b.file("a/b", 0o644, 0, sha('b'));
            }),
            Box::new(|b| b.hard_link("a", "missing")),
            Box::new(|b| {
                b.file("a/b", 0o644, 0, sha('a'));
                b.file("a", 0o644, 0, sha('b'));
            }),
        ];
        for (i, case) in cases.iter().enumerate() {
            let mut b = Builder::new();
            case(&mut b);
            assert_eq!(b.finish(), None, "case {i}");
        }
        // A directory listed after its contents only sets its mode.
        let mut b = Builder::new();
        b.file("a/b", 0o644, 0, sha('a'));
        b.dir("a", 0o750);
        assert_eq!(b.finish().unwrap().get("a").unwrap().mode, 0o750);
    }

    #[test]
    fn parse_names_the_bad_line() {
        let good = format!("a\tf\t644\t1\t{}\n", sha('a'));
        for (text, line) in [
            (format!("{good}b\tf\t644\t1\tnope\n"), 2),
            (format!("{good}a\td\t755\t-\t-\n"), 2),
            ("a\tq\t644\t-\t-\n".to_owned(), 1),
            ("a\td\t9\t-\t-\n".to_owned(), 1),
            ("a b\n".to_owned(), 1),
            ("../x\td\t755\t-\t-\n".to_owned(), 1),
            ("a//b\td\t755\t-\t-\n".to_owned(), 1),
            ("/etc\td\t755\t-\t-\n".to_owned(), 1),
        ] {
            assert_eq!(
                Manifest::parse(text.as_bytes()).unwrap_err().line,
                line,
                "{text}"
            );
        }
    }
}
