//! How the app runs on a host: `[[systemd]]` units, a `[compose]` stack, an `[nginx]` site,
//! each rendered from a template of the project.

use std::path::PathBuf;

use super::error::{Problems, section_span};
use super::raw::{RawCompose, RawNginx, RawUnit};
use super::validate::Validator;

#[derive(Debug)]
pub struct Unit {
    pub unit: String,
    pub template: PathBuf,
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
        let unit = self.required_text(raw.unit, &key("unit"), "systemd", p)?;
        const SUFFIXES: &[&str] = &[".service", ".socket", ".timer", ".path", ".target"];
        // systemd's own rule for unit names: letters, digits and `:-_.\@`.
        let ok = SUFFIXES.iter().any(|s| unit.ends_with(s))
            && unit.len() > 8
            && unit
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b));
        if !ok {
            p.invalid(
                section_span(p.text, "[systemd]"),
                &key("unit"),
                format!("{unit:?} must be a unit file name such as `app.service`"),
            );
        }
        let template = raw
            .template
            .map(|t| self.local_path(&t, &key("template"), p));
        let Some(template) = template else {
            p.missing(section_span(p.text, "[systemd]"), &key("template"));
            return None;
        };
        Some(Unit { unit, template })
    }

    pub(super) fn compose(
        &self,
        raw: RawCompose,
        app: Option<&str>,
        p: &mut Problems<'_>,
    ) -> Option<Compose> {
        let Some(file) = raw.file else {
            p.missing(section_span(p.text, "compose"), "compose.file");
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
        let site = self.required_text(raw.site, "nginx.site", "nginx", p)?;
        let ok = !site.starts_with('.')
            && site
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            p.invalid(
                section_span(p.text, "nginx"),
                "nginx.site",
                "must be a file name: letters, digits, `.`, `_` and `-`, not starting with `.`",
            );
        }
        let Some(template) = raw.template else {
            p.missing(section_span(p.text, "nginx"), "nginx.template");
            return None;
        };
        let template = self.local_path(&template, "nginx.template", p);
        Some(Nginx { site, template })
    }
}
