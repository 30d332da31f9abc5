//! `[[notify]]`: commands run on the deployer after a deploy, rollback or restore, with the
//! run's JSON report on stdin (run by [`crate::notify`]).

use std::time::Duration;

use super::error::{Problems, did_you_mean, suggest};
use super::raw::{RawNotify, S};
use super::validate::{Validator, duration};

/// One notifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    pub command: String,
    /// Run after a run that succeeded (exit 0).
    pub on_success: bool,
    /// Run after a run that failed (any other exit code: failed, rolled back, locked).
    pub on_failure: bool,
    /// Killed (with everything it started) after this long.
    pub timeout: Duration,
}

/// The outcomes `on` names.
pub const NOTIFY_ON: [&str; 2] = ["success", "failure"];

impl Validator<'_> {
    pub(super) fn notify(
        &self,
        raw: S<RawNotify>,
        i: usize,
        p: &mut Problems<'_>,
    ) -> Option<Notify> {
        let key = |f: &str| format!("notify[{i}].{f}");
        let span = raw.span();
        let raw = raw.into_inner();
        let command = match raw.command {
            None => {
                p.missing(span, &key("command"));
                return None;
            }
            Some(c) => self.required_text(Some(c), &key("command"), "[notify]", p)?,
        };
        let (on_success, on_failure) = match raw.on {
            None => (true, true),
            Some(on) => {
                if on.get_ref().is_empty() {
                    p.invalid(
                        on.span(),
                        &key("on"),
                        "name at least one of \"success\", \"failure\" (or remove `on`: both)",
                    );
                }
                let mut wanted = (false, false);
                for outcome in on.into_inner() {
                    match outcome.get_ref().as_str() {
                        "success" => wanted.0 = true,
                        "failure" => wanted.1 = true,
                        other => p.invalid(
                            outcome.span(),
                            &key("on"),
                            format!(
                                "unknown outcome {other:?}{}; one of: {}",
                                did_you_mean(&suggest(other, NOTIFY_ON)),
                                NOTIFY_ON.join(", ")
                            ),
                        ),
                    }
                }
                wanted
            }
        };
        let timeout = duration(raw.timeout, &key("timeout"), 30, p);
        Some(Notify {
            command,
            on_success,
            on_failure,
            timeout,
        })
    }
}
