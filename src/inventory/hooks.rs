//! `[[hooks]]` (commands at fixed points of a deploy) and `[tasks.<name>]` (commands run on
//! demand).

use super::error::{Problems, did_you_mean, suggest};
use super::raw::{RawHook, RawTask, S};
use super::validate::Validator;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookPoint {
    AfterUpload,
    BeforeSwitch,
    AfterSwitch,
    AfterRestart,
}

const HOOK_POINTS: &[(&str, HookPoint)] = &[
    ("after_upload", HookPoint::AfterUpload),
    ("before_switch", HookPoint::BeforeSwitch),
    ("after_switch", HookPoint::AfterSwitch),
    ("after_restart", HookPoint::AfterRestart),
];

impl HookPoint {
    /// The point's name, as the inventory writes it (`after_switch`).
    pub fn name(self) -> &'static str {
        HOOK_POINTS
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("", |(name, _)| name)
    }
}

#[derive(Debug)]
pub struct Hook {
    pub at: HookPoint,
    pub command: String,
    pub once: bool,
    pub roles: Vec<String>,
}

/// `[tasks.<name>]`: a command run on demand in the current release, env file loaded.
#[derive(Clone, Debug)]
pub struct Task {
    pub command: String,
    /// On the migrate host only.
    pub once: bool,
    /// Only hosts with one of these roles; empty: every selected host.
    pub roles: Vec<String>,
}

impl Validator<'_> {
    pub(super) fn hook(&self, raw: RawHook, i: usize, p: &mut Problems<'_>) -> Option<Hook> {
        let key = |f: &str| format!("hooks[{i}].{f}");
        let at = match raw.at {
            None => {
                p.missing(p.section("[hooks]"), &key("at"));
                return None;
            }
            Some(at) => match HOOK_POINTS.iter().find(|(n, _)| n == at.get_ref()) {
                Some((_, point)) => *point,
                None => {
                    let names: Vec<&str> = HOOK_POINTS.iter().map(|(n, _)| *n).collect();
                    p.invalid(
                        at.span(),
                        &key("at"),
                        format!(
                            "unknown hook point {:?}{}; one of: {}",
                            at.get_ref(),
                            did_you_mean(&suggest(at.get_ref(), names.iter().copied())),
                            names.join(", ")
                        ),
                    );
                    return None;
                }
            },
        };
        let command = self.required_text(raw.command, &key("command"), "[hooks]", p)?;
        Some(Hook {
            at,
            command,
            once: raw.once,
            roles: raw.roles.into_iter().map(|r| r.into_inner()).collect(),
        })
    }

    pub(super) fn task(
        &self,
        name: String,
        raw: S<RawTask>,
        p: &mut Problems<'_>,
    ) -> Option<(String, Task)> {
        let span = raw.span();
        let raw = raw.into_inner();
        let key = format!("tasks.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            p.invalid(
                span.clone(),
                &key,
                "a task name is letters, digits, `-` and `_`",
            );
            return None;
        }
        let command = match raw.command {
            None => {
                p.missing(span, &format!("{key}.command"));
                return None;
            }
            Some(c) => self.required_text(Some(c), &format!("{key}.command"), &key, p)?,
        };
        Some((
            name,
            Task {
                command,
                once: raw.once,
                roles: raw.roles.into_iter().map(|r| r.into_inner()).collect(),
            },
        ))
    }
}
