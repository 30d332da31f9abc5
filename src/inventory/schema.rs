//! The schema of known keys, walked before serde so that every unknown key is reported with
//! its own position and a suggestion, not only the first one serde trips over.

use super::error::{ProblemKind, Problems, suggest};

pub(super) enum Shape {
    Leaf,
    Table(&'static [(&'static str, Shape)]),
    Tables(&'static [(&'static str, Shape)]),
    /// `[name.<key>]` tables under keys chosen by the user (`[tasks.seed]`).
    Named(&'static [(&'static str, Shape)]),
    /// `[name]` for one, `[[name]]` for several.
    TableOrTables(&'static [(&'static str, Shape)]),
    /// Free-form keys chosen by the user (`vars`).
    Map,
}

use Shape::{Leaf, Map, Named, Table, TableOrTables, Tables};

pub(super) const SCHEMA: &[(&str, Shape)] = &[
    ("extends", Leaf),
    ("transport", Leaf),
    (
        "app",
        Table(&[
            ("name", Leaf),
            ("deploy_to", Leaf),
            ("keep_releases", Leaf),
            ("user", Leaf),
        ]),
    ),
    (
        "ssh",
        Table(&[
            ("user", Leaf),
            ("port", Leaf),
            ("identity", Leaf),
            ("known_hosts", Leaf),
            ("jump", Leaf),
            ("connect_timeout", Leaf),
            ("keepalive_interval", Leaf),
            ("sudo", Leaf),
        ]),
    ),
    (
        "hosts",
        Tables(&[
            ("name", Leaf),
            ("address", Leaf),
            ("port", Leaf),
            ("roles", Leaf),
            ("host_key", Leaf),
            ("vars", Map),
        ]),
    ),
    (
        "artifact",
        Table(&[
            ("path", Leaf),
            ("build", Leaf),
            ("shared_dirs", Leaf),
            ("shared_files", Leaf),
            ("delta", Leaf),
        ]),
    ),
    (
        "env",
        Table(&[
            ("path", Leaf),
            ("from_env", Leaf),
            ("vars", Map),
            ("secrets", Named(&[("command", Leaf), ("file", Leaf)])),
        ]),
    ),
    (
        "systemd",
        Tables(&[
            ("unit", Leaf),
            ("template", Leaf),
            ("ports", Leaf),
            ("drain", Leaf),
            ("keep_idle", Leaf),
        ]),
    ),
    ("nginx", Table(&[("site", Leaf), ("template", Leaf)])),
    (
        "compose",
        Table(&[("file", Leaf), ("project", Leaf), ("pull", Leaf)]),
    ),
    (
        "backup",
        Table(&[
            ("kind", Leaf),
            ("command", Leaf),
            ("dir", Leaf),
            ("keep", Leaf),
            ("extension", Leaf),
            ("verify", Leaf),
            ("restore", Leaf),
            ("drill", Leaf),
        ]),
    ),
    (
        "migrate",
        Table(&[("command", Leaf), ("maintenance", Leaf)]),
    ),
    (
        "hooks",
        Tables(&[
            ("at", Leaf),
            ("command", Leaf),
            ("once", Leaf),
            ("roles", Leaf),
        ]),
    ),
    (
        "tasks",
        Named(&[("command", Leaf), ("once", Leaf), ("roles", Leaf)]),
    ),
    (
        "health",
        TableOrTables(&[
            ("url", Leaf),
            ("expect_status", Leaf),
            ("expect_body", Leaf),
            ("command", Leaf),
            ("timeout", Leaf),
            ("interval", Leaf),
        ]),
    ),
    (
        "notify",
        Tables(&[("command", Leaf), ("on", Leaf), ("timeout", Leaf)]),
    ),
    (
        "rollout",
        Table(&[
            ("parallel", Leaf),
            ("waves", Leaf),
            ("max_fail", Leaf),
            ("on_failure", Leaf),
            ("confirm_timeout", Leaf),
            ("lock_timeout", Leaf),
        ]),
    ),
];

pub(super) fn check_keys(
    table: &toml::de::DeTable<'_>,
    schema: &[(&'static str, Shape)],
    section: &str,
    out: &mut Problems<'_>,
) {
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        let Some((_, shape)) = schema.iter().find(|(k, _)| *k == name) else {
            let kind = ProblemKind::UnknownKey {
                key: name.to_owned(),
                section: section.to_owned(),
                suggestion: suggest(name, schema.iter().map(|(k, _)| *k)),
            };
            out.push(key.span(), kind);
            continue;
        };
        match (shape, value.get_ref()) {
            (Table(fields) | TableOrTables(fields), toml::de::DeValue::Table(t)) => {
                check_keys(t, fields, &format!("[{name}]"), out)
            }
            (Named(fields), toml::de::DeValue::Table(t)) => {
                for (key, value) in t.iter() {
                    if let toml::de::DeValue::Table(t) = value.get_ref() {
                        check_keys(t, fields, &format!("[{name}.{}]", key.get_ref()), out);
                    }
                }
            }
            (Tables(fields) | TableOrTables(fields), toml::de::DeValue::Array(items)) => {
                let path = format!("[[{name}]]");
                for item in items.iter() {
                    if let toml::de::DeValue::Table(t) = item.get_ref() {
                        check_keys(t, fields, &path, out);
                    }
                }
            }
            _ => {}
        }
    }
}
