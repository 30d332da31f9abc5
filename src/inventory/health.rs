//! `[health]`: the checks a release must pass on a host before the next wave.

use std::ops::Range;
use std::time::Duration;

use super::error::Problems;
use super::raw::RawHealth;
use super::validate::{Validator, duration};

#[derive(Clone, Debug)]
pub enum HealthCheck {
    /// An HTTP GET made from the host's side (through the SSH connection).
    Url {
        url: String,
        host: String,
        port: u16,
        path: String,
        expect_status: u16,
        /// A substring the body must contain.
        expect_body: Option<String>,
        /// The URL's port is `{{ port }}`: the port of the blue-green instance being
        /// checked (`port` is then meaningless until [`HealthCheck::at_port`]).
        live_port: bool,
    },
    Command(String),
}

#[derive(Clone, Debug)]
pub struct Health {
    pub check: HealthCheck,
    pub timeout: Duration,
    pub interval: Duration,
}

impl Validator<'_> {
    pub(super) fn health(
        &self,
        raw: RawHealth,
        span: Range<usize>,
        p: &mut Problems<'_>,
    ) -> Option<Health> {
        let check = match (raw.url, raw.command) {
            (Some(url), None) => {
                let (text, live_port) = without_live_port(url.get_ref());
                let (host, port, path) = match parse_http_url(&text) {
                    Ok(parts) => parts,
                    Err(reason) => {
                        p.invalid(url.span(), "health.url", reason);
                        (String::new(), 80, String::new())
                    }
                };
                let expect_status = match raw.expect_status {
                    None => 200,
                    Some(s) if (100..=599).contains(s.get_ref()) => *s.get_ref() as u16,
                    Some(s) => {
                        p.invalid(
                            s.span(),
                            "health.expect_status",
                            "must be an HTTP status (100–599)",
                        );
                        200
                    }
                };
                HealthCheck::Url {
                    url: url.into_inner(),
                    host,
                    port,
                    path,
                    expect_status,
                    expect_body: raw.expect_body.map(|b| b.into_inner()),
                    live_port,
                }
            }
            (None, Some(command)) => HealthCheck::Command(command.into_inner()),
            (Some(url), Some(_)) => {
                p.invalid(url.span(), "health", "set `url` or `command`, not both");
                return None;
            }
            (None, None) => {
                p.invalid(span, "health", "set `url` or `command`");
                return None;
            }
        };
        let timeout = duration(raw.timeout, "health.timeout", 60, p);
        let interval = duration(raw.interval, "health.interval", 1, p);
        Some(Health {
            check,
            timeout,
            interval,
        })
    }
}

/// How a URL names the blue-green instance's port.
const LIVE_PORT: [&str; 2] = ["{{ port }}", "{{port}}"];

/// The URL with a `{{ port }}` placeholder replaced by a stand-in port, and whether it had one.
fn without_live_port(url: &str) -> (String, bool) {
    for mark in LIVE_PORT {
        if url.contains(mark) {
            return (url.replace(mark, "1"), true);
        }
    }
    (url.to_owned(), false)
}

impl HealthCheck {
    /// Whether the check is made on the blue-green instance's own port.
    pub fn on_live_port(&self) -> bool {
        matches!(
            self,
            HealthCheck::Url {
                live_port: true,
                ..
            }
        )
    }

    /// The check as made on `port` when its URL says `{{ port }}` (else unchanged).
    pub fn at_port(&self, port: Option<u16>) -> HealthCheck {
        let mut check = self.clone();
        if let (
            HealthCheck::Url {
                url,
                port: p,
                live_port: true,
                ..
            },
            Some(port),
        ) = (&mut check, port)
        {
            *p = port;
            for mark in LIVE_PORT {
                *url = url.replace(mark, &port.to_string());
            }
        }
        check
    }
}

/// `http://host[:port][/path]` → (host, port, path). The request is made through the SSH
/// connection from the host's side, in plain HTTP: check the app's own port, not a TLS
/// front (use `command` with `curl -k` for that).
pub(super) fn parse_http_url(url: &str) -> Result<(String, u16, String), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(if url.starts_with("https://") {
            "https is not supported for the health check (it runs through the SSH connection in plain HTTP): point it at the app's own http port, or use `command = \"curl -fsk https://…\"`".to_owned()
        } else {
            "must be an http:// URL, e.g. \"http://127.0.0.1:3000/readyz\"".to_owned()
        });
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (h, after) = inner.split_once(']').ok_or("unclosed `[` in the URL")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
            None => 80,
        };
        (h.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                p.parse().map_err(|_| format!("bad port {p:?}"))?,
            ),
            None => (authority.to_owned(), 80),
        }
    };
    if host.is_empty() || port == 0 || path.contains(char::is_whitespace) {
        return Err("must look like \"http://127.0.0.1:3000/readyz\"".to_owned());
    }
    Ok((host, port, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_urls() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:3000/readyz").unwrap(),
            ("127.0.0.1".into(), 3000, "/readyz".into())
        );
        assert_eq!(
            parse_http_url("http://localhost").unwrap(),
            ("localhost".into(), 80, "/".into())
        );
        assert_eq!(
            parse_http_url("http://[::1]:8080/x?y=1").unwrap(),
            ("::1".into(), 8080, "/x?y=1".into())
        );
        assert!(
            parse_http_url("https://x/")
                .unwrap_err()
                .contains("https is not supported")
        );
        assert!(parse_http_url("ftp://x").is_err());
    }
}
