//! `[rollout]`: waves, parallelism, how many failures to accept, what to do on failure.

use std::fmt;
use std::time::Duration;

use super::error::Problems;
use super::raw::{AmountValue, RawRollout};
use super::validate::{Validator, duration};

/// A number of hosts, absolute or relative to the fleet size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amount {
    Count(u32),
    Percent(u8),
}

impl Amount {
    /// How many of `total` hosts this is; percentages round up so "25%" of 3 is 1.
    pub fn of(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => n as usize,
            Amount::Percent(p) => (total * p as usize).div_ceil(100),
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    Rollback,
    Halt,
}

#[derive(Debug)]
pub struct Rollout {
    pub parallel: usize,
    pub waves: Vec<Amount>,
    pub max_fail: Amount,
    pub on_failure: OnFailure,
    pub confirm_timeout: Duration,
    pub lock_timeout: Duration,
}

impl Validator<'_> {
    pub(super) fn rollout(&self, raw: RawRollout, p: &mut Problems<'_>) -> Rollout {
        let parallel = match raw.parallel {
            None => 10,
            Some(n) if *n.get_ref() >= 1 && *n.get_ref() <= 10_000 => *n.get_ref() as usize,
            Some(n) => {
                p.invalid(n.span(), "rollout.parallel", "must be at least 1");
                10
            }
        };
        let waves = match raw.waves {
            // A canary of one host, then the rest: a bad release meets one host first.
            None => vec![Amount::Count(1), Amount::Percent(100)],
            Some(list) => {
                if list.get_ref().is_empty() {
                    p.invalid(
                        list.span(),
                        "rollout.waves",
                        "must name at least one wave size",
                    );
                }
                list.into_inner()
                    .into_iter()
                    .filter_map(|w| match amount(w.get_ref()) {
                        Ok(Amount::Count(0)) | Ok(Amount::Percent(0)) => {
                            p.invalid(
                                w.span(),
                                "rollout.waves",
                                "a wave must have at least one host",
                            );
                            None
                        }
                        Ok(a) => Some(a),
                        Err(reason) => {
                            p.invalid(w.span(), "rollout.waves", reason);
                            None
                        }
                    })
                    .collect()
            }
        };
        let max_fail = match raw.max_fail {
            None => Amount::Count(0),
            Some(m) => amount(m.get_ref()).unwrap_or_else(|reason| {
                p.invalid(m.span(), "rollout.max_fail", reason);
                Amount::Count(0)
            }),
        };
        let on_failure = match raw.on_failure {
            None => OnFailure::Rollback,
            Some(o) => match o.get_ref().as_str() {
                "rollback" => OnFailure::Rollback,
                "halt" => OnFailure::Halt,
                other => {
                    p.invalid(
                        o.span(),
                        "rollout.on_failure",
                        format!("must be \"rollback\" or \"halt\", not {other:?}"),
                    );
                    OnFailure::Rollback
                }
            },
        };
        Rollout {
            parallel,
            waves,
            max_fail,
            on_failure,
            confirm_timeout: duration(raw.confirm_timeout, "rollout.confirm_timeout", 60, p),
            lock_timeout: duration(raw.lock_timeout, "rollout.lock_timeout", 30 * 60, p),
        }
    }
}

/// A wave size or `max_fail` as typed on the command line: `"2"` or `"25%"`.
pub fn parse_amount(text: &str) -> Result<Amount, String> {
    amount(&AmountValue::Str(text.to_owned()))
}

fn amount(value: &AmountValue) -> Result<Amount, String> {
    match value {
        AmountValue::Int(n) => u32::try_from(*n)
            .map(Amount::Count)
            .map_err(|_| format!("{n} must be a non-negative count")),
        AmountValue::Str(s) => {
            let s = s.trim();
            if let Some(pct) = s.strip_suffix('%') {
                match pct.trim().parse::<u8>() {
                    Ok(p) if p <= 100 => Ok(Amount::Percent(p)),
                    _ => Err(format!("{s:?} must be a percentage from 0% to 100%")),
                }
            } else {
                s.parse::<u32>().map(Amount::Count).map_err(|_| {
                    format!("{s:?} must be a host count like \"2\" or a percentage like \"25%\"")
                })
            }
        }
    }
}
