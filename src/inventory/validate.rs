//! The validator every section is read by, and the checks of single values they share
//! (names, ports, durations, required text, local paths).

use std::path::PathBuf;
use std::time::Duration;

use super::LoadContext;
use super::error::Problems;
use super::raw::S;

pub(super) struct Validator<'a> {
    pub(super) ctx: &'a LoadContext<'a>,
}

impl Validator<'_> {
    pub(super) fn required_text(
        &self,
        value: Option<S<String>>,
        key: &str,
        section: &str,
        p: &mut Problems<'_>,
    ) -> Option<String> {
        match value {
            None => {
                p.missing(p.section(section), key);
                None
            }
            Some(v) if v.get_ref().trim().is_empty() => {
                p.invalid(v.span(), key, "must not be empty");
                None
            }
            Some(v) => Some(v.into_inner()),
        }
    }

    pub(super) fn local_path(&self, value: &S<String>, key: &str, p: &mut Problems<'_>) -> PathBuf {
        let v = value.get_ref();
        if v.is_empty() {
            p.invalid(value.span(), key, "must not be empty");
            return PathBuf::new();
        }
        if let Some(rest) = v.strip_prefix("~/") {
            return match self.ctx.home {
                Some(home) => home.join(rest),
                None => {
                    p.invalid(value.span(), key, "`~` used but HOME is not set");
                    PathBuf::from(v)
                }
            };
        }
        self.ctx.base_dir.join(v)
    }
}

pub(super) fn unix_name(value: &S<String>, key: &str, p: &mut Problems<'_>) {
    let v = value.get_ref();
    let ok = !v.is_empty()
        && !v.starts_with('-')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        p.invalid(value.span(), key, format!("{v:?} is not a valid user name"));
    }
}

pub(super) fn port(value: &S<i64>, key: &str, p: &mut Problems<'_>) -> u16 {
    match u16::try_from(*value.get_ref()) {
        Ok(port) if port > 0 => port,
        _ => {
            p.invalid(value.span(), key, "must be a port number (1–65535)");
            22
        }
    }
}

pub(super) fn duration(
    value: Option<S<String>>,
    key: &str,
    default_secs: u64,
    p: &mut Problems<'_>,
) -> Duration {
    let Some(value) = value else {
        return Duration::from_secs(default_secs);
    };
    match humantime::parse_duration(value.get_ref()) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            p.invalid(value.span(), key, "must be longer than zero");
            Duration::from_secs(default_secs)
        }
        Err(e) => {
            p.invalid(
                value.span(),
                key,
                format!(
                    "{:?} is not a duration ({e}); write e.g. \"30s\", \"2m\", \"1h\"",
                    value.get_ref()
                ),
            );
            Duration::from_secs(default_secs)
        }
    }
}
