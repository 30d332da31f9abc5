//! The last guard before anything is printed: every secret value the run knows (the env
//! file's secrets, the SSH key and passphrase from the environment, and the password inside a
//! connection URL among them) is replaced by `[REDACTED]` in every line, message and report,
//! whatever produced it — a remote command's stderr included.

use std::borrow::Cow;

use super::Report;

/// Values shorter than this are not searched for: replacing every `1` or `ab` in the output
/// would make it unreadable without protecting anything.
const MIN_LEN: usize = 4;

/// What a secret value is replaced by.
const MARK: &str = "[REDACTED]";

#[derive(Clone, Debug, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new(values: impl IntoIterator<Item = String>) -> Redactor {
        let mut secrets: Vec<String> = Vec::new();
        for value in values {
            for v in std::iter::once(value.clone()).chain(url_password(&value)) {
                // Each line of a multi-line secret (a key) is a secret of its own.
                for part in std::iter::once(v.clone()).chain(v.lines().map(str::to_owned)) {
                    let part = part.trim().to_owned();
                    if part.len() >= MIN_LEN && !secrets.contains(&part) && !is_frame(&part) {
                        secrets.push(part);
                    }
                }
            }
        }
        // Longest first, so a value containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Redactor { secrets }
    }

    pub fn apply<'a>(&self, text: &'a str) -> Cow<'a, str> {
        self.apply_as(text, MARK)
    }

    /// [`Redactor::apply`] with another mark in place of each value.
    pub fn apply_as<'a>(&self, text: &'a str, mark: &str) -> Cow<'a, str> {
        if !self.secrets.iter().any(|s| text.contains(s.as_str())) {
            return Cow::Borrowed(text);
        }
        let mut out = text.to_owned();
        for s in &self.secrets {
            out = out.replace(s.as_str(), mark);
        }
        Cow::Owned(out)
    }

    pub fn apply_json(&self, value: &mut serde_json::Value) {
        self.apply_json_as(value, MARK)
    }

    /// [`Redactor::apply_json`] with another mark in place of each value.
    pub fn apply_json_as(&self, value: &mut serde_json::Value, mark: &str) {
        match value {
            serde_json::Value::String(s) => {
                if let Cow::Owned(r) = self.apply_as(s, mark) {
                    *s = r;
                }
            }
            serde_json::Value::Array(items) => {
                items.iter_mut().for_each(|v| self.apply_json_as(v, mark))
            }
            serde_json::Value::Object(map) => {
                map.values_mut().for_each(|v| self.apply_json_as(v, mark))
            }
            _ => {}
        }
    }
}

/// PEM frame lines of a key (`-----BEGIN …-----`) are not secret and too common to hide.
fn is_frame(line: &str) -> bool {
    line.starts_with("-----")
}

/// The password of `scheme://user:password@host…`, percent-decoded and raw.
fn url_password(value: &str) -> Vec<String> {
    let Some((_, rest)) = value.split_once("://") else {
        return Vec::new();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return Vec::new();
    };
    let Some((_, password)) = userinfo.split_once(':') else {
        return Vec::new();
    };
    let mut out = vec![password.to_owned()];
    let mut decoded = Vec::new();
    let bytes = password.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = password
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            decoded.push(b);
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    if let Ok(d) = String::from_utf8(decoded) {
        out.push(d);
    }
    out
}

/// A report seen through the redactor.
pub struct Redacted<'a> {
    pub inner: &'a dyn Report,
    pub redactor: &'a Redactor,
}

impl Report for Redacted<'_> {
    fn human(&self) -> String {
        self.redactor.apply(&self.inner.human()).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        let mut v = self.inner.json();
        self.redactor.apply_json(&mut v);
        v
    }

    fn markdown(&self) -> String {
        self.redactor.apply(&self.inner.markdown()).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_url_passwords_are_replaced_everywhere() {
        let r = Redactor::new([
            "postgres://app:p%40ss-w0rd@db/x".to_owned(),
            "tok-123456".to_owned(),
            "ab".to_owned(),
        ]);
        assert_eq!(
            r.apply("url postgres://app:p%40ss-w0rd@db/x"),
            "url [REDACTED]"
        );
        assert_eq!(
            r.apply("auth failed for p@ss-w0rd"),
            "auth failed for [REDACTED]"
        );
        assert_eq!(r.apply("token=tok-123456;"), "token=[REDACTED];");
        assert_eq!(
            r.apply("ab is too short to hide"),
            "ab is too short to hide"
        );
        let mut v = serde_json::json!({ "a": ["x tok-123456 y"], "b": 1 });
        r.apply_json(&mut v);
        assert_eq!(v, serde_json::json!({ "a": ["x [REDACTED] y"], "b": 1 }));
    }
}
