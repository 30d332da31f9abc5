//! How the app runs on a host: `[[systemd]]` units, a `[compose]` stack, an `[nginx]` site,
//! each rendered from a template of the project.

use std::path::PathBuf;
use std::time::Duration;

use super::error::Problems;
use super::raw::{RawCompose, RawNginx, RawUnit};
use super::validate::Validator;

#[derive(Debug)]
pub struct Unit {
    pub unit: String,
    pub template: PathBuf,
    /// Set when the unit is served blue-green behind the Nginx site (`ports`).
    pub blue_green: Option<BlueGreen>,
}

/// Blue-green: `unit` is a template (`shop@.service`) with one instance per port; a deploy
/// starts the idle instance from the new release, checks it on its own port, points the
/// Nginx site at it, and stops the old instance after `drain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlueGreen {
    pub ports: [u16; 2],
    /// How long the old instance keeps running after Nginx moved (requests in flight finish).
    pub drain: Duration,
    /// Never stop the old instance (the next deploy restarts it on its port): a rollback
    /// to it is instant.
    pub keep_idle: bool,
}

/// The longest `drain` accepted: a deploy waits for it.
pub const MAX_DRAIN: Duration = Duration::from_secs(3600);

impl Unit {
    /// The instance of a template unit for `port`: `shop@.service` → `shop@3001.service`.
    pub fn instance(&self, port: u16) -> String {
        self.unit.replacen("@.", &format!("@{port}."), 1)
    }
}

/// A Docker Compose stack: the compose file is a template rendered into each release.
#[derive(Debug)]
pub struct Compose {
    pub template: PathBuf,
    /// `docker compose -p <project>`: the app name unless set.
    pub project: String,
    /// Pull the images while staging (before anything is switched).
    pub pull: bool,
}

#[derive(Debug)]
pub struct Nginx {
    pub site: String,
    pub template: PathBuf,
}

impl Validator<'_> {
    pub(super) fn unit(&self, raw: RawUnit, i: usize, p: &mut Problems<'_>) -> Option<Unit> {
        let key = |f: &str| format!("systemd[{i}].{f}");
        let unit_span = raw.unit.as_ref().map(|u| u.span());
        let unit = self.required_text(raw.unit, &key("unit"), "systemd", p)?;
        let unit_span = unit_span.unwrap_or_default();
        const SUFFIXES: &[&str] = &[".service", ".socket", ".timer", ".path", ".target"];
        // systemd's own rule for unit names: letters, digits and `:-_.\@`.
        let ok = SUFFIXES.iter().any(|s| unit.ends_with(s))
            && unit.len() > 8
            && unit
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b));
        if !ok {
            p.invalid(
                unit_span.clone(),
                &key("unit"),
                format!("{unit:?} must be a unit file name such as `app.service`"),
            );
        }
        let template = raw
            .template
            .map(|t| self.local_path(&t, &key("template"), p));
        let Some(template) = template else {
            p.missing(p.section("[systemd]"), &key("template"));
            return None;
        };
        let blue_green = match raw.ports {
            Some(ports) => {
                let keep_idle = raw.keep_idle.map(|k| k.into_inner());
                let unit = (unit.as_str(), unit_span);
                Some(self.blue_green(ports, raw.drain, keep_idle, unit, i, p))
            }
            None => {
                for (span, name) in [
                    (raw.drain.map(|d| d.span()), "drain"),
                    (raw.keep_idle.map(|k| k.span()), "keep_idle"),
                ] {
                    if let Some(span) = span {
                        p.invalid(
                            span,
                            &key(name),
                            "applies only to a blue-green unit: set `ports` too",
                        );
                    }
                }
                None
            }
        };
        Some(Unit {
            unit,
            template,
            blue_green,
        })
    }

    fn blue_green(
        &self,
        ports: super::raw::S<Vec<super::raw::S<i64>>>,
        drain: Option<super::raw::S<String>>,
        keep_idle: Option<bool>,
        (unit, unit_span): (&str, std::ops::Range<usize>),
        i: usize,
        p: &mut Problems<'_>,
    ) -> BlueGreen {
        let key = |f: &str| format!("systemd[{i}].{f}");
        let span = ports.span();
        let values: Vec<i64> = ports
            .into_inner()
            .into_iter()
            .map(|v| v.into_inner())
            .collect();
        let valid: Vec<u16> = values
            .iter()
            .filter_map(|v| u16::try_from(*v).ok().filter(|v| *v > 0))
            .collect();
        let ports = match valid[..] {
            [a, b] if values.len() == 2 && a != b => [a, b],
            _ => {
                p.invalid(
                    span,
                    &key("ports"),
                    "must be two different ports (1–65535), e.g. [3001, 3002]: one instance serves while the other is idle",
                );
                [1, 2]
            }
        };
        if !unit.ends_with("@.service") {
            p.invalid(
                unit_span,
                &key("unit"),
                format!(
                    "{unit:?} has `ports`, so it must be a template unit such as `app@.service` (one instance per port; the port is `%i` in the unit)"
                ),
            );
        }
        let drain_span = drain.as_ref().map(|d| d.span());
        let drain = super::validate::duration(drain, &key("drain"), 10, p);
        if drain > MAX_DRAIN {
            p.invalid(
                drain_span.unwrap_or(0..0),
                &key("drain"),
                "must be at most 1h (a deploy waits for it)",
            );
        }
        BlueGreen {
            ports,
            drain,
            keep_idle: keep_idle.unwrap_or(false),
        }
    }

    pub(super) fn compose(
        &self,
        raw: RawCompose,
        app: Option<&str>,
        p: &mut Problems<'_>,
    ) -> Option<Compose> {
        let Some(file) = raw.file else {
            p.missing(p.section("compose"), "compose.file");
            return None;
        };
        let template = self.local_path(&file, "compose.file", p);
        let project = match raw.project {
            Some(pr) => {
                // Compose's own rule: lowercase letters, digits, `-` and `_`.
                let ok = !pr.get_ref().is_empty()
                    && pr.get_ref().bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b)
                    });
                if !ok {
                    p.invalid(
                        pr.span(),
                        "compose.project",
                        "use lowercase letters, digits, `-` and `_`",
                    );
                }
                pr.into_inner()
            }
            None => app.unwrap_or("app").to_ascii_lowercase().replace('.', "-"),
        };
        Some(Compose {
            template,
            project,
            pull: raw.pull.unwrap_or(true),
        })
    }

    pub(super) fn nginx(&self, raw: RawNginx, p: &mut Problems<'_>) -> Option<Nginx> {
        let site_span = raw.site.as_ref().map(|s| s.span()).unwrap_or_default();
        let site = self.required_text(raw.site, "nginx.site", "nginx", p)?;
        let ok = !site.starts_with('.')
            && site
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            p.invalid(
                site_span,
                "nginx.site",
                "must be a file name: letters, digits, `.`, `_` and `-`, not starting with `.`",
            );
        }
        let Some(template) = raw.template else {
            p.missing(p.section("nginx"), "nginx.template");
            return None;
        };
        let template = self.local_path(&template, "nginx.template", p);
        Some(Nginx { site, template })
    }
}
