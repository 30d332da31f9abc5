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
//! Pure: content in, content out. Values are [`Secret`]s until they are written: this
//! module and the transports are the only code that reads a secret's value
//! (`Secret::expose`); everything else asks this module a question about it (is the file
//! on the host the same, which keys differ, the `PG*` variables of a connection URL, the
//! redactor that hides every value).

use std::collections::BTreeMap;

use crate::output::redact::Redactor;
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
    Secret::new(format!("{HEADER}\n{}", assignments(all)))
}

/// One `KEY=VALUE` line per entry, in the map's order.
fn assignments<'a>(all: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut text = String::new();
    for (key, value) in all {
        text.push_str(key);
        text.push('=');
        text.push_str(&quote(value));
        text.push('\n');
    }
    text
}

/// Whether the env file on the host (`current`) is exactly `content`.
pub fn same_content(current: &str, content: &Secret) -> bool {
    current == content.expose()
}

/// Which keys `content` adds, removes and changes compared with `current`, the file on the
/// host (names only: no value leaves this module).
pub fn key_diff(current: &str, content: &Secret) -> KeyDiff {
    diff(&parse(current), &parse(content.expose()))
}

/// The redactor of a run: hides every value of `secrets` (and the password inside a
/// connection URL among them) wherever output would show it.
pub fn redactor<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Redactor {
    Redactor::new(secrets.into_iter().map(|s| s.expose().to_owned()))
}

/// `PG*` variables for libpq from a `postgres://user:pass@host:port/db?sslmode=…` URL, in
/// env-file syntax without the header (the password stays a [`Secret`]). `None` when it is
/// not such a URL.
pub fn pg_env(url: &Secret) -> Option<Secret> {
    let url = url.expose();
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let mut vars = BTreeMap::new();
    if let Some(userinfo) = userinfo {
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        vars.insert("PGUSER", percent_decode(user)?);
        if !password.is_empty() {
            vars.insert("PGPASSWORD", percent_decode(password)?);
        }
    }
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let (h, after) = inner.split_once(']')?;
        (h, after.strip_prefix(':').unwrap_or(""))
    } else {
        hostport.rsplit_once(':').unwrap_or((hostport, ""))
    };
    if !host.is_empty() {
        vars.insert("PGHOST", percent_decode(host)?);
    }
    if !port.is_empty() {
        vars.insert("PGPORT", port.to_owned());
    }
    if !database.is_empty() {
        vars.insert("PGDATABASE", percent_decode(database)?);
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let name = match k {
            "sslmode" => "PGSSLMODE",
            "sslrootcert" => "PGSSLROOTCERT",
            "sslcert" => "PGSSLCERT",
            "sslkey" => "PGSSLKEY",
            "connect_timeout" => "PGCONNECT_TIMEOUT",
            "application_name" => "PGAPPNAME",
            "options" => "PGOPTIONS",
            "host" => "PGHOST",
            "port" => "PGPORT",
            "user" => "PGUSER",
            "password" => "PGPASSWORD",
            "dbname" => "PGDATABASE",
            _ => continue,
        };
        vars.insert(name, percent_decode(v)?);
    }
    let text = assignments(vars.iter().map(|(k, v)| (*k, v.as_str())));
    Some(Secret::new(text.trim_end_matches('\n')))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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

pub use crate::output::report::plan::KeyDiff;

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

    #[test]
    fn postgres_urls_become_pg_variables() {
        let pg_env = |url: &str| pg_env(&Secret::new(url));
        let env =
            pg_env("postgresql://app:p%40ss%20w0rd@db.internal:6432/shop?sslmode=require&foo=bar")
                .unwrap();
        insta::assert_snapshot!(env.expose(), @r#"
        PGDATABASE=shop
        PGHOST=db.internal
        PGPASSWORD="p@ss w0rd"
        PGPORT=6432
        PGSSLMODE=require
        PGUSER=app
        "#);
        assert!(pg_env("mysql://x").is_none());
        let local = pg_env("postgres:///app?host=/run/postgresql").unwrap();
        assert!(local.expose().contains("PGHOST=/run/postgresql"));
        assert!(local.expose().contains("PGDATABASE=app"));
    }
}
