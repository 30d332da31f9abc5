//! The inventory as read: serde structs shaped like the file, every value with its span.
//! Private to `inventory`; the sections turn them into the resolved types.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

pub(super) type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    pub(super) transport: Option<S<String>>,
    pub(super) app: Option<RawApp>,
    pub(super) ssh: Option<RawSsh>,
    #[serde(default)]
    pub(super) hosts: Vec<S<RawHost>>,
    pub(super) artifact: Option<RawArtifact>,
    pub(super) env: Option<RawEnv>,
    #[serde(default)]
    pub(super) systemd: Vec<RawUnit>,
    pub(super) nginx: Option<RawNginx>,
    pub(super) compose: Option<RawCompose>,
    pub(super) backup: Option<S<RawBackup>>,
    pub(super) migrate: Option<RawMigrate>,
    #[serde(default)]
    pub(super) hooks: Vec<RawHook>,
    #[serde(default)]
    pub(super) tasks: BTreeMap<String, S<RawTask>>,
    pub(super) health: Option<S<OneOrMany<RawHealth>>>,
    pub(super) rollout: Option<RawRollout>,
    #[serde(default)]
    pub(super) notify: Vec<S<RawNotify>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    pub(super) name: Option<S<String>>,
    pub(super) deploy_to: Option<S<String>>,
    pub(super) keep_releases: Option<S<i64>>,
    pub(super) user: Option<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSsh {
    pub(super) user: Option<S<String>>,
    pub(super) port: Option<S<i64>>,
    pub(super) identity: Option<S<String>>,
    pub(super) known_hosts: Option<S<String>>,
    pub(super) jump: Option<S<String>>,
    pub(super) connect_timeout: Option<S<String>>,
    pub(super) keepalive_interval: Option<S<String>>,
    pub(super) sudo: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
    pub(super) name: Option<S<String>>,
    pub(super) address: Option<S<String>>,
    pub(super) port: Option<S<i64>>,
    #[serde(default)]
    pub(super) roles: Vec<S<String>>,
    pub(super) host_key: Option<S<String>>,
    #[serde(default)]
    pub(super) vars: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawArtifact {
    pub(super) path: Option<S<String>>,
    pub(super) build: Option<S<String>>,
    #[serde(default)]
    pub(super) shared_dirs: Vec<S<String>>,
    #[serde(default)]
    pub(super) shared_files: Vec<S<String>>,
    pub(super) delta: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnv {
    pub(super) path: Option<S<String>>,
    pub(super) from_env: Option<S<Vec<S<String>>>>,
    #[serde(default)]
    pub(super) vars: BTreeMap<S<String>, S<toml::Value>>,
    #[serde(default)]
    pub(super) secrets: BTreeMap<S<String>, S<RawSecret>>,
}

/// `[env.secrets.NAME]`: where one secret's value comes from.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecret {
    pub(super) command: Option<S<String>>,
    pub(super) file: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUnit {
    pub(super) unit: Option<S<String>>,
    pub(super) template: Option<S<String>>,
    pub(super) ports: Option<S<Vec<S<i64>>>>,
    pub(super) drain: Option<S<String>>,
    pub(super) keep_idle: Option<S<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCompose {
    pub(super) file: Option<S<String>>,
    pub(super) project: Option<S<String>>,
    pub(super) pull: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNginx {
    pub(super) site: Option<S<String>>,
    pub(super) template: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackup {
    pub(super) kind: Option<S<String>>,
    pub(super) command: Option<S<String>>,
    pub(super) dir: Option<S<String>>,
    pub(super) keep: Option<S<i64>>,
    pub(super) extension: Option<S<String>>,
    pub(super) verify: Option<S<String>>,
    pub(super) restore: Option<S<String>>,
    pub(super) drill: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMigrate {
    pub(super) command: Option<S<String>>,
    pub(super) maintenance: Option<S<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTask {
    pub(super) command: Option<S<String>>,
    #[serde(default)]
    pub(super) once: bool,
    #[serde(default)]
    pub(super) roles: Vec<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHook {
    pub(super) at: Option<S<String>>,
    pub(super) command: Option<S<String>>,
    #[serde(default)]
    pub(super) once: bool,
    #[serde(default)]
    pub(super) roles: Vec<S<String>>,
}

/// `[name]` (one table) or `[[name]]` (an array of tables), both read as a list.
pub(super) struct OneOrMany<T>(pub(super) Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = OneOrMany<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table or an array of tables")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let one = T::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(OneOrMany(vec![one]))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                let many =
                    Vec::<T>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
                Ok(OneOrMany(many))
            }
        }
        d.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) url: Option<S<String>>,
    pub(super) expect_status: Option<S<i64>>,
    pub(super) expect_body: Option<S<String>>,
    pub(super) command: Option<S<String>>,
    pub(super) timeout: Option<S<String>>,
    pub(super) interval: Option<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    pub(super) parallel: Option<S<i64>>,
    pub(super) waves: Option<S<Vec<S<AmountValue>>>>,
    pub(super) max_fail: Option<S<AmountValue>>,
    pub(super) on_failure: Option<S<String>>,
    pub(super) confirm_timeout: Option<S<String>>,
    pub(super) lock_timeout: Option<S<String>>,
}

/// `waves = [1, "25%"]`: a bare integer or a string.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum AmountValue {
    Int(i64),
    Str(String),
}

/// `[[notify]]`: a command run on the deployer with the report of a deploy or rollback.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) command: Option<S<String>>,
    pub(super) on: Option<S<Vec<S<String>>>>,
    pub(super) timeout: Option<S<String>>,
}
