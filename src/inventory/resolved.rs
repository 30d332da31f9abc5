//! The resolved inventory written back in the inventory's own keys (`shipit config`): one
//! document with the bases merged (`extends` gone), the defaults filled in, local paths
//! absolute. Loaded back by shipit, it is the same inventory.
//!
//! What is left out says as much as what is written: the `[ssh]` keys the file did not set
//! (`user`, `port`, `connect_timeout`, `keepalive_interval`) stay out, since `~/.ssh/config`
//! fills them before the defaults and writing a default would override it; the one implicit
//! host of the local transport stays out too. Secrets appear by source only (`from_env`
//! names, `[env.secrets.NAME]` commands and files), never by value.
//!
//! The document is JSON-shaped (ordered, as the sections appear in the README), the same
//! tree for `--json` and for TOML; so a date or time among `hosts.vars` (which JSON lacks)
//! is written as its text.

use serde_json::{Map, Value, json};

use super::{
    Amount, BackupKind, Health, HealthCheck, Inventory, OnFailure, SecretFrom, TransportKind,
};

/// The inventory as a document in its own keys.
pub fn resolved(inv: &Inventory) -> Value {
    let mut doc = Map::new();
    let transport = match inv.transport {
        TransportKind::Ssh => "ssh",
        TransportKind::Local => "local",
    };
    doc.insert("transport".into(), json!(transport));

    let mut app = Map::new();
    app.insert("name".into(), json!(inv.app.name));
    app.insert("deploy_to".into(), json!(inv.app.deploy_to));
    app.insert("keep_releases".into(), json!(inv.app.keep_releases));
    if let Some(user) = &inv.app.user {
        app.insert("user".into(), json!(user));
    }
    doc.insert("app".into(), Value::Object(app));

    let ssh = ssh(inv);
    if !ssh.is_empty() {
        doc.insert("ssh".into(), Value::Object(ssh));
    }
    let hosts = hosts(inv);
    if !hosts.is_empty() {
        doc.insert("hosts".into(), Value::Array(hosts));
    }

    if let Some(a) = &inv.artifact {
        let mut t = Map::new();
        t.insert("path".into(), json!(a.path.to_string_lossy()));
        if let Some(build) = &a.build {
            t.insert("build".into(), json!(build));
        }
        t.insert("shared_dirs".into(), json!(a.shared_dirs));
        t.insert("shared_files".into(), json!(a.shared_files));
        t.insert("delta".into(), json!(a.delta));
        doc.insert("artifact".into(), Value::Object(t));
    }

    if let Some(e) = &inv.env {
        let mut t = Map::new();
        t.insert("path".into(), json!(e.path));
        t.insert("from_env".into(), json!(e.from_env));
        t.insert("vars".into(), json!(e.vars));
        if !e.sources.is_empty() {
            let mut secrets = Map::new();
            for s in &e.sources {
                let source = match &s.from {
                    SecretFrom::Command(c) => json!({ "command": c }),
                    SecretFrom::File(f) => json!({ "file": f.to_string_lossy() }),
                };
                secrets.insert(s.name.clone(), source);
            }
            t.insert("secrets".into(), Value::Object(secrets));
        }
        doc.insert("env".into(), Value::Object(t));
    }

    if !inv.systemd.is_empty() {
        let units = inv.systemd.iter().map(|u| {
            let mut t = Map::new();
            t.insert("unit".into(), json!(u.unit));
            t.insert("template".into(), json!(u.template.to_string_lossy()));
            if let Some(bg) = &u.blue_green {
                t.insert("ports".into(), json!(bg.ports));
                t.insert("drain".into(), json!(duration(bg.drain)));
                t.insert("keep_idle".into(), json!(bg.keep_idle));
            }
            Value::Object(t)
        });
        doc.insert("systemd".into(), Value::Array(units.collect()));
    }
    if let Some(n) = &inv.nginx {
        doc.insert(
            "nginx".into(),
            json!({ "site": n.site, "template": n.template.to_string_lossy() }),
        );
    }
    if let Some(c) = &inv.compose {
        doc.insert(
            "compose".into(),
            json!({ "file": c.template.to_string_lossy(), "project": c.project, "pull": c.pull }),
        );
    }
    if let Some(b) = &inv.backup {
        let mut t = Map::new();
        let kind = match b.kind {
            BackupKind::Postgres => "postgres",
            BackupKind::Command => "command",
        };
        t.insert("kind".into(), json!(kind));
        t.insert("command".into(), json!(b.command));
        t.insert("dir".into(), json!(b.dir));
        t.insert("keep".into(), json!(b.keep));
        t.insert("extension".into(), json!(b.extension));
        for (key, value) in [
            ("verify", &b.verify),
            ("restore", &b.restore),
            ("drill", &b.drill),
        ] {
            if let Some(v) = value {
                t.insert(key.into(), json!(v));
            }
        }
        doc.insert("backup".into(), Value::Object(t));
    }
    if let Some(m) = &inv.migrate {
        doc.insert(
            "migrate".into(),
            json!({ "command": m.command, "maintenance": m.maintenance }),
        );
    }
    if !inv.hooks.is_empty() {
        let hooks = inv.hooks.iter().map(|h| {
            json!({ "at": h.at.name(), "command": h.command, "once": h.once, "roles": h.roles })
        });
        doc.insert("hooks".into(), Value::Array(hooks.collect()));
    }
    if !inv.tasks.is_empty() {
        let tasks: Map<String, Value> = inv
            .tasks
            .iter()
            .map(|(name, t)| {
                let task = json!({ "command": t.command, "once": t.once, "roles": t.roles });
                (name.clone(), task)
            })
            .collect();
        doc.insert("tasks".into(), Value::Object(tasks));
    }
    if !inv.health.is_empty() {
        let checks = inv.health.iter().map(health);
        doc.insert("health".into(), Value::Array(checks.collect()));
    }

    let r = &inv.rollout;
    let on_failure = match r.on_failure {
        OnFailure::Rollback => "rollback",
        OnFailure::Halt => "halt",
    };
    doc.insert(
        "rollout".into(),
        json!({
            "parallel": r.parallel,
            "waves": r.waves.iter().map(|w| amount(*w)).collect::<Vec<_>>(),
            "max_fail": amount(r.max_fail),
            "on_failure": on_failure,
            "confirm_timeout": duration(r.confirm_timeout),
            "lock_timeout": duration(r.lock_timeout),
        }),
    );

    if !inv.notify.is_empty() {
        let notify = inv.notify.iter().map(|n| {
            let on: Vec<&str> = [("success", n.on_success), ("failure", n.on_failure)]
                .into_iter()
                .filter_map(|(name, on)| on.then_some(name))
                .collect();
            json!({ "command": n.command, "on": on, "timeout": duration(n.timeout) })
        });
        doc.insert("notify".into(), Value::Array(notify.collect()));
    }
    Value::Object(doc)
}

fn ssh(inv: &Inventory) -> Map<String, Value> {
    let s = &inv.ssh;
    let mut t = Map::new();
    if inv.transport == TransportKind::Local {
        return t;
    }
    if s.given.user {
        t.insert("user".into(), json!(s.user));
    }
    if s.given.port {
        t.insert("port".into(), json!(s.port));
    }
    if let Some(identity) = &s.identity {
        t.insert("identity".into(), json!(identity.to_string_lossy()));
    }
    if let Some(known) = &s.known_hosts {
        t.insert("known_hosts".into(), json!(known.to_string_lossy()));
    }
    if let Some(j) = &s.jump {
        let mut text = j
            .user
            .as_ref()
            .map_or_else(String::new, |u| format!("{u}@"));
        if j.address.contains(':') {
            text.push_str(&format!("[{}]", j.address));
        } else {
            text.push_str(&j.address);
        }
        if let Some(port) = j.port {
            text.push_str(&format!(":{port}"));
        }
        t.insert("jump".into(), json!(text));
    }
    if s.given.connect_timeout {
        t.insert("connect_timeout".into(), json!(duration(s.connect_timeout)));
    }
    if s.given.keepalive_interval {
        let d = duration(s.keepalive_interval);
        t.insert("keepalive_interval".into(), json!(d));
    }
    if s.sudo {
        t.insert("sudo".into(), json!(true));
    }
    t
}

fn hosts(inv: &Inventory) -> Vec<Value> {
    let implicit_local = inv.transport == TransportKind::Local
        && matches!(&inv.hosts[..], [h] if h.name == "local"
            && h.address == "localhost"
            && h.roles.is_empty()
            && h.host_key.is_none()
            && h.vars.is_empty());
    if implicit_local {
        return Vec::new();
    }
    inv.hosts
        .iter()
        .map(|h| {
            let mut t = Map::new();
            t.insert("name".into(), json!(h.name));
            t.insert("address".into(), json!(h.address));
            // The port the host would get from `[ssh]` is not repeated.
            let inherited = inv.ssh.given.port && h.port == inv.ssh.port;
            if h.port_given && !inherited {
                t.insert("port".into(), json!(h.port));
            }
            t.insert("roles".into(), json!(h.roles));
            if let Some(key) = &h.host_key {
                t.insert("host_key".into(), json!(key));
            }
            if !h.vars.is_empty() {
                let vars = h.vars.iter().map(|(k, v)| (k.clone(), toml_value(v)));
                t.insert("vars".into(), Value::Object(vars.collect()));
            }
            Value::Object(t)
        })
        .collect()
}

fn health(h: &Health) -> Value {
    let mut t = Map::new();
    match &h.check {
        HealthCheck::Url {
            url,
            expect_status,
            expect_body,
            ..
        } => {
            t.insert("url".into(), json!(url));
            t.insert("expect_status".into(), json!(expect_status));
            if let Some(body) = expect_body {
                t.insert("expect_body".into(), json!(body));
            }
        }
        HealthCheck::Command(command) => {
            t.insert("command".into(), json!(command));
        }
    }
    t.insert("timeout".into(), json!(duration(h.timeout)));
    t.insert("interval".into(), json!(duration(h.interval)));
    Value::Object(t)
}

fn amount(a: Amount) -> Value {
    match a {
        Amount::Count(n) => json!(n),
        Amount::Percent(p) => json!(format!("{p}%")),
    }
}

fn duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A value of `hosts.vars` (any TOML value); a date or time as its TOML text.
fn toml_value(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => json!(s),
        toml::Value::Integer(i) => json!(i),
        toml::Value::Float(f) if f.is_finite() => json!(f),
        toml::Value::Float(f) => json!(f.to_string()),
        toml::Value::Boolean(b) => json!(b),
        toml::Value::Datetime(d) => json!(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(toml_value).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.iter().map(|(k, v)| (k.clone(), toml_value(v))).collect())
        }
    }
}

/// [`resolved`] as TOML text, for `shipit config`.
pub fn to_toml(doc: &Value) -> String {
    toml::to_string(doc).expect("a document of strings, numbers, booleans, arrays and tables")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::inventory::{LoadContext, parse};
    use crate::output::redact::Redactor;

    fn load(text: &str) -> Inventory {
        let env = |name: &str| Some(format!("value-of-{name}"));
        let ctx = LoadContext {
            base_dir: Path::new("/project"),
            home: Some(Path::new("/home/me")),
            env: &env,
            need_secrets: true,
        };
        parse(text, Path::new("inventory/prod.toml"), &ctx)
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// The inventory's content, without where it came from (its files, the position of
    /// each secret's key).
    fn content(mut inv: Inventory) -> String {
        inv.file = Default::default();
        inv.bases.clear();
        for source in inv.env.iter_mut().flat_map(|e| e.sources.iter_mut()) {
            source.origin.clear();
        }
        format!("{inv:#?}")
    }

    /// Loads `text`, writes it back as TOML, loads that: the same inventory (and so the same
    /// document again).
    fn round_trip(text: &str) -> String {
        let first = load(text);
        let doc = resolved(&first);
        let written = to_toml(&doc);
        let again = load(&written);
        assert_eq!(doc, resolved(&again));
        assert_eq!(content(first), content(again), "{written}");
        let json: Value = serde_json::from_str(&serde_json::to_string(&doc).unwrap()).unwrap();
        assert_eq!(json, doc);
        written
    }

    #[test]
    fn the_examples_load_back_as_the_same_inventory() {
        for text in [
            include_str!("../../examples/reference.toml"),
            include_str!("../../examples/obd2-dashboard/obd2.toml"),
            include_str!("../../examples/intric/intric.toml"),
            include_str!("../../examples/dash/dash.toml"),
            include_str!("../../examples/melvin/melvin.toml"),
            include_str!("../../examples/blue-green/shop.toml"),
        ] {
            round_trip(text);
        }
    }

    #[test]
    fn what_the_file_leaves_to_ssh_config_stays_out_and_defaults_are_written() {
        let written = round_trip(
            "[app]\nname = \"a\"\ndeploy_to = \"/opt/a\"\n[[hosts]]\nname = \"h\"\n[[hosts]]\nname = \"p\"\nport = 2200\n",
        );
        assert!(!written.contains("[ssh]"), "{written}");
        assert!(written.contains("keep_releases = 5"), "{written}");
        assert!(
            written.contains("name = \"h\"\naddress = \"h\"\nroles = []"),
            "{written}"
        );
        assert!(written.contains("port = 2200"), "{written}");
        assert!(written.contains("waves = [1, \"100%\"]"), "{written}");
    }

    #[test]
    fn the_local_transport_and_every_kind_of_key_load_back() {
        round_trip(
            r#"transport = "local"
[app]
name = "a"
deploy_to = "srv"
[env]
path = "/opt/a/.env"
vars = { PORT = 3000, DEBUG = true, RATIO = 0.5 }
[env.secrets.API_KEY]
command = "op read op://prod/api/key"
[env.secrets.DB_PASSWORD]
file = "secrets/db"
[compose]
file = "deploy/compose.yml"
[backup]
command = "mongodump --archive"
restore = "mongorestore --archive"
[[hooks]]
at = "before_switch"
command = "true"
roles = ["web"]
[health]
command = "test -f /opt/a/current/ready"
[rollout]
max_fail = 1
on_failure = "halt"
[[notify]]
command = "curl -fsS -d @- https://hooks.example.com/deploy"
on = ["failure"]
timeout = "5s"
"#,
        );
        round_trip(
            "[app]\nname = \"a\"\ndeploy_to = \"/opt/a\"\n[ssh]\njump = \"[::1]:2200\"\nport = 2222\n[[hosts]]\nname = \"h\"\nport = 2222\nvars = { list = [1, 2], nested = { a = \"b\" } }\n",
        );
    }

    #[test]
    fn a_secret_value_is_written_redacted_and_loads_back_once_put_back() {
        let text = "[app]\nname = \"a\"\ndeploy_to = \"/opt/a\"\n[[hosts]]\nname = \"h\"\n[env]\npath = \"/etc/a.env\"\nfrom_env = [\"TOKEN\"]\n[[hooks]]\nat = \"after_switch\"\ncommand = \"curl -H 'x: value-of-TOKEN' http://127.0.0.1/\"\n";
        let inv = load(text);
        let mut doc = resolved(&inv);
        Redactor::new(["value-of-TOKEN".to_owned()]).apply_json_as(&mut doc, "<redacted>");
        let written = to_toml(&doc);
        assert!(!written.contains("value-of-TOKEN"), "{written}");
        assert!(written.contains("'x: <redacted>'"), "{written}");
        let again = load(&written.replace("<redacted>", "value-of-TOKEN"));
        assert_eq!(content(inv), content(again));
    }
}
