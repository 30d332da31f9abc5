//! `[env]`: the env file written on each host, its plain vars and the secrets read from the
//! deployer's environment.

use std::collections::{BTreeMap, BTreeSet};

use super::error::{ProblemKind, Problems, section_span};
use super::paths::{env_path_problem, remote_path};
use super::raw::{RawEnv, S};
use super::validate::Validator;
use crate::shell::Secret;

#[derive(Debug)]
pub struct EnvFile {
    pub path: String,
    pub vars: BTreeMap<String, String>,
    /// Resolved from the deployer's environment, in `from_env` order.
    pub secrets: Vec<(String, Secret)>,
}

impl Validator<'_> {
    pub(super) fn env(&self, raw: RawEnv, p: &mut Problems<'_>) -> EnvFile {
        let path = match raw.path {
            Some(path) => {
                let ok = remote_path(&path, "env.path", p);
                if let Some(why) = env_path_problem(path.get_ref()).filter(|_| ok) {
                    p.invalid(path.span(), "env.path", why);
                }
                path.into_inner()
            }
            None => {
                p.missing(section_span(p.text, "env"), "env.path");
                String::new()
            }
        };
        let mut vars = BTreeMap::new();
        for (k, v) in raw.vars {
            env_name(&k, "env.vars", p);
            let value = match v.get_ref() {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    p.invalid(
                        v.span(),
                        &format!("env.vars.{}", k.get_ref()),
                        "must be a string, number or boolean",
                    );
                    continue;
                }
            };
            vars.insert(k.into_inner(), value);
        }
        let from_env_span = raw.from_env.as_ref().map_or(0..0, |f| f.span());
        let mut missing = Vec::new();
        let mut secrets = Vec::new();
        let mut names = BTreeSet::new();
        for name in raw.from_env.map(|f| f.into_inner()).unwrap_or_default() {
            env_name(&name, "env.from_env", p);
            if vars.contains_key(name.get_ref()) {
                p.invalid(
                    name.span(),
                    "env.from_env",
                    format!(
                        "`{}` is also set in `env.vars`; a key comes from one place only",
                        name.get_ref()
                    ),
                );
            }
            if !names.insert(name.get_ref().clone()) {
                continue;
            }
            match (self.ctx.env)(name.get_ref()) {
                Some(value) => secrets.push((name.into_inner(), Secret::new(value))),
                None => missing.push(name.into_inner()),
            }
        }
        if !missing.is_empty() && self.ctx.need_secrets {
            p.push(
                from_env_span,
                ProblemKind::MissingSecrets { names: missing },
            );
        }
        EnvFile {
            path,
            vars,
            secrets,
        }
    }
}

pub(super) fn env_name(value: &S<String>, key: &str, p: &mut Problems<'_>) {
    let v = value.get_ref();
    let ok = v
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        p.invalid(
            value.span(),
            key,
            format!("{v:?} is not a valid environment variable name (letters, digits, `_`; not starting with a digit)"),
        );
    }
}
