//! `[env]`: the env file written on each host, its plain vars and its secrets: read from
//! the deployer's environment (`from_env`), or from a command or a file on the deployer
//! (`[env.secrets.NAME]`, resolved by [`crate::secrets`] for the commands that need them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::error::{ProblemKind, Problems};
use super::paths::{env_path_problem, remote_path};
use super::raw::{RawEnv, RawSecret, S};
use super::validate::Validator;
use crate::shell::Secret;

#[derive(Debug)]
pub struct EnvFile {
    pub path: String,
    pub vars: BTreeMap<String, String>,
    /// The names of `from_env`, in their order.
    pub from_env: Vec<String>,
    /// The values known: from the deployer's environment in `from_env` order, then those of
    /// `sources` once [`crate::secrets::resolve`] has read them.
    pub secrets: Vec<(String, Secret)>,
    /// `[env.secrets.NAME]`, by name.
    pub sources: Vec<SecretSource>,
}

/// `[env.secrets.NAME]`: one secret read on the deployer, before any connection, by the
/// commands that need secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSource {
    pub name: String,
    pub from: SecretFrom,
    /// `file:line:column` of the key, for the errors of reading it.
    pub origin: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretFrom {
    /// Run with `sh -c` on the deployer; stdout without its final newline is the value.
    Command(String),
    /// The file's content without its final newline; absolute (a relative path is
    /// resolved against the directory shipit runs in, like every other local path).
    File(PathBuf),
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
                p.missing(p.section("env"), "env.path");
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
        let mut from_env = Vec::new();
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
            from_env.push(name.get_ref().clone());
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
        let sources = raw
            .secrets
            .into_iter()
            .filter_map(|(name, source)| {
                let clash = if vars.contains_key(name.get_ref()) {
                    Some("`env.vars`")
                } else if names.contains(name.get_ref()) {
                    Some("`env.from_env`")
                } else {
                    None
                };
                if let Some(other) = clash {
                    p.invalid(
                        name.span(),
                        &format!("env.secrets.{}", name.get_ref()),
                        format!(
                            "`{}` is also set in {other}; a key comes from one place only",
                            name.get_ref()
                        ),
                    );
                }
                self.secret_source(name, source, p)
            })
            .collect();
        EnvFile {
            path,
            vars,
            from_env,
            secrets,
            sources,
        }
    }

    fn secret_source(
        &self,
        name: S<String>,
        raw: S<RawSecret>,
        p: &mut Problems<'_>,
    ) -> Option<SecretSource> {
        env_name(&name, "env.secrets", p);
        let key = format!("env.secrets.{}", name.get_ref());
        let (file, line, column) = p.sources.locate(name.span().start);
        let origin = format!("{}:{line}:{column}", file.display());
        let span = raw.span();
        let raw = raw.into_inner();
        let from = match (raw.command, raw.file) {
            (Some(c), None) => {
                if c.get_ref().trim().is_empty() {
                    p.invalid(c.span(), &format!("{key}.command"), "must not be empty");
                    return None;
                }
                SecretFrom::Command(c.into_inner())
            }
            (None, Some(f)) => {
                let path = match f.get_ref().strip_prefix("~/") {
                    Some(_) => self.local_path(&f, &format!("{key}.file"), p),
                    None if f.get_ref().is_empty() => {
                        p.invalid(f.span(), &format!("{key}.file"), "must not be empty");
                        return None;
                    }
                    None => self.ctx.base_dir.join(f.get_ref()),
                };
                SecretFrom::File(path)
            }
            (Some(c), Some(_)) => {
                p.invalid(c.span(), &key, "set `command` or `file`, not both");
                return None;
            }
            (None, None) => {
                p.invalid(
                    span,
                    &key,
                    "set `command` (its stdout is the value) or `file` (its content is the value)",
                );
                return None;
            }
        };
        Some(SecretSource {
            name: name.into_inner(),
            from,
            origin,
        })
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
