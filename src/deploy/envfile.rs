//! The app's env file: one format that both systemd's `EnvironmentFile=` and a POSIX `sh`
//! sourcing it (`set -a; . file; set +a`) read to the same values.
//!
//! Every line is `KEY=VALUE`. A value made only of characters neither reader treats
//! specially stays bare; any other value is double-quoted with `"`, `\`, `` ` `` and `$`
//! escaped by a backslash. Those four are exactly the escapes both readers honour inside
//! double quotes; everything else there (`'`, `#`, spaces, newlines, unicode) is literal to
//! both. Single quotes would not do: systemd does not join `'it'\''s'` the way `sh` does
//! (tested against real systemd in `tests/e2e/services.rs`).
//!
//! Pure: content in, content out. Values are [`Secret`]s until they are written.

use std::collections::BTreeMap;

use crate::shell::Secret;

/// The first line of every env file shipit writes (every version has written exactly this):
/// how a host tells a file shipit may replace from one it must never touch.
pub const HEADER: &str = "# written by shipit: changes here are replaced on the next deploy";

/// The env file's content for `vars` and `secrets`, keys sorted (a stable sha256).
pub fn render(vars: &BTreeMap<String, String>, secrets: &[(String, Secret)]) -> Secret {
    let mut all: BTreeMap<&str, &str> =
        vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for (k, v) in secrets {
        all.insert(k, v.expose());
    }
    let mut text = format!("{HEADER}\n");
    for (key, value) in all {
        text.push_str(key);
        text.push('=');
        text.push_str(&quote(value));
        text.push('\n');
    }
    Secret::new(text)
}

fn quote(value: &str) -> String {
    let bare = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:,+@%".contains(&b));
    if bare {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for ch in value.chars() {
        if matches!(ch, '"' | '\\' | '`' | '$') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// Reads a file in this format back into key → value (for diffing; best effort on files
/// written by hand). Values stay in memory: only key names ever leave this module's callers.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        // Skip blank lines and comments.
        while matches!(chars.peek(), Some('\n') | Some(' ') | Some('\t')) {
            chars.next();
        }
        match chars.peek() {
            None => break,
            Some('#') | Some(';') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                continue;
            }
            _ => {}
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == '\n' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') {
            continue;
        }
        let key = key.trim().trim_start_matches("export ").trim().to_owned();
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\n' => break,
                '\'' => {
                    for c in chars.by_ref() {
                        if c == '\'' {
                            break;
                        }
                        value.push(c);
                    }
                }
                '"' => {
                    while let Some(c) = chars.next() {
                        match c {
                            '"' => break,
                            '\\' => {
                                if let Some(n) = chars.next() {
                                    value.push(n);
                                }
                            }
                            c => value.push(c),
                        }
                    }
                }
                '\\' => {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                }
                c => value.push(c),
            }
        }
        out.insert(key, value);
    }
    out
}

/// Which keys a new env file adds, removes and changes compared with the one on the host.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl KeyDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

pub fn diff(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> KeyDiff {
    let mut d = KeyDiff::default();
    for (k, v) in new {
        match old.get(k) {
            None => d.added.push(k.clone()),
            Some(o) if o != v => d.changed.push(k.clone()),
            Some(_) => {}
        }
    }
    d.removed = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const NASTY: &[(&str, &str)] = &[
        ("SPACES", "two words  and more"),
        ("SINGLE", "it's"),
        ("DOUBLE", "say \"hi\""),
        ("DOLLAR", "$HOME and ${PATH} and $(id)"),
        ("HASH", "#not-a-comment # really"),
        ("BACKSLASH", "a\\b\\\\c\\n"),
        ("EQUALS", "a=b==c"),
        ("UNICODE", "ünïcødé ✓ 日本"),
        ("BACKTICK", "`id`"),
        ("EMPTY", ""),
        ("NEWLINE", "line1\nline2"),
        ("PLAIN", "postgres://u@db:5432/app"),
    ];

    fn nasty() -> BTreeMap<String, String> {
        NASTY
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sh_sourcing_reads_every_value_back_exactly() {
        let file = render(&nasty(), &[]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.env");
        std::fs::write(&path, file.expose()).unwrap();
        for (key, value) in NASTY {
            let script = format!(
                "set -a; . '{}'; set +a; printf '%s' \"${key}\"",
                path.display()
            );
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&script)
                .output()
                .unwrap();
            assert!(out.status.success(), "{key}: {out:?}");
            assert_eq!(String::from_utf8(out.stdout).unwrap(), *value, "{key}");
        }
    }

    #[test]
    fn parse_reads_what_render_wrote() {
        let secrets = vec![("TOKEN".to_owned(), Secret::new("s3cr'et $x"))];
        let file = render(&nasty(), &secrets);
        let mut expect = nasty();
        expect.insert("TOKEN".into(), "s3cr'et $x".into());
        assert_eq!(parse(file.expose()), expect);
        assert!(format!("{file:?}").contains("REDACTED"));
    }

    #[test]
    fn diff_names_keys_only() {
        let old: BTreeMap<String, String> = [("A", "1"), ("B", "2"), ("C", "3")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let new: BTreeMap<String, String> = [("A", "1"), ("B", "x"), ("D", "4")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let d = diff(&old, &new);
        assert_eq!(
            d,
            KeyDiff {
                added: vec!["D".into()],
                removed: vec!["C".into()],
                changed: vec!["B".into()]
            }
        );
    }

    #[test]
    fn rendering_is_stable_and_sorted() {
        let file = render(&nasty(), &[]);
        insta::assert_snapshot!(file.expose(), @r##"
        # written by shipit: changes here are replaced on the next deploy
        BACKSLASH="a\\b\\\\c\\n"
        BACKTICK="\`id\`"
        DOLLAR="\$HOME and \${PATH} and \$(id)"
        DOUBLE="say \"hi\""
        EMPTY=""
        EQUALS="a=b==c"
        HASH="#not-a-comment # really"
        NEWLINE="line1
        line2"
        PLAIN=postgres://u@db:5432/app
        SINGLE="it's"
        SPACES="two words  and more"
        UNICODE="ünïcødé ✓ 日本"
        "##);
    }
}
