//! The `--json` deploy report against its documented schema (docs/deploy-report.schema.json),
//! for a successful deploy, a locked one (by another run, and on purpose) and a rolled-back
//! one. The validator covers the
//! JSON Schema keywords the document uses: type, enum, required, properties,
//! additionalProperties, items, oneOf.

use serde_json::Value;

use crate::common::*;
use crate::support::Fleet;

fn type_ok(kind: &str, v: &Value) -> bool {
    match kind {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_u64() || v.is_i64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        other => panic!("schema uses unknown type {other}"),
    }
}

fn validate(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    if let Some(kind) = schema.get("type") {
        let ok = match kind {
            Value::String(k) => type_ok(k, v),
            Value::Array(ks) => ks.iter().any(|k| type_ok(k.as_str().unwrap(), v)),
            _ => panic!("bad type keyword at {path}"),
        };
        if !ok {
            errors.push(format!("{path}: {v} is not of type {kind}"));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        errors.push(format!("{path}: {v} is not one of {options:?}"));
    }
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = options
            .iter()
            .filter(|o| {
                let mut e = Vec::new();
                validate(o, v, path, &mut e);
                e.is_empty()
            })
            .count();
        if matching != 1 {
            errors.push(format!("{path}: {v} matches {matching} of oneOf"));
        }
    }
    if let Some(obj) = v.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for key in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !obj.contains_key(key.as_str().unwrap()) {
                errors.push(format!("{path}: missing required `{key}`"));
            }
        }
        for (key, value) in obj {
            match props.and_then(|p| p.get(key)) {
                Some(sub) => validate(sub, value, &format!("{path}.{key}"), errors),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errors.push(format!("{path}: `{key}` is not in the schema"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), v.as_array()) {
        for (i, item) in array.iter().enumerate() {
            validate(items, item, &format!("{path}[{i}]"), errors);
        }
    }
}

fn assert_valid(report: &Value) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/deploy-report.schema.json"
    ))
    .unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    let mut errors = Vec::new();
    validate(&schema, report, "$", &mut errors);
    assert!(errors.is_empty(), "{errors:#?}\n{report:#}");
}

#[test]
fn deploy_reports_match_the_documented_schema() {
    let fleet = Fleet::start(2);
    let app = fleet.dir().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("VERSION"), "1").unwrap();
    let extra = format!(
        "[artifact]\npath = \"{}\"\n[env]\npath = \"/etc/demo.env\"\nvars = {{ A = \"1\" }}\n[health]\ncommand = \"test \\\"$(cat VERSION)\\\" = 1\"\ntimeout = \"1s\"\n",
        app.display()
    );
    let inv = write(
        fleet.dir(),
        "inv.toml",
        &inventory_text(&fleet, &["h1", "h2"], &extra),
    );
    let deploy = || {
        let (code, stdout, stderr) = run(fleet
            .shipit()
            .args(["deploy", "test", "--json", "-i"])
            .arg(&inv));
        (
            code,
            serde_json::from_str::<Value>(&stdout)
                .unwrap_or_else(|e| panic!("{e}: {stdout} {stderr}")),
        )
    };
    let (code, ok) = deploy();
    assert_eq!(code, 0);
    assert_valid(&ok);

    // Locked by someone else.
    fleet.sh_ok("h1", "mkdir -p /opt/demo/.shipit/lock");
    let (code, locked) = deploy();
    assert_eq!(code, 5);
    assert_valid(&locked);
    fleet.sh_ok("h1", "rm -rf /opt/demo/.shipit/lock");

    // Locked on purpose (`shipit lock -m`): the holder comes with its message.
    let (code, _, stderr) = run(fleet
        .shipit()
        .args(["lock", "test", "-m", "frozen for the launch", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{stderr}");
    let (code, held) = deploy();
    assert_eq!(code, 5);
    assert_eq!(
        held["hosts"][0]["locked_by"]["message"],
        "frozen for the launch"
    );
    assert_valid(&held);
    let (code, _, stderr) = run(fleet
        .shipit()
        .args(["unlock", "test", "--yes", "-i"])
        .arg(&inv));
    assert_eq!(code, 0, "{stderr}");

    // Rolled back.
    std::fs::write(app.join("VERSION"), "2").unwrap();
    let (code, rolled) = deploy();
    assert_eq!(code, 3);
    assert_valid(&rolled);

    // The validator does reject what the schema does not allow.
    let mut bad = ok.clone();
    bad["hosts"][0]["surprise"] = Value::Bool(true);
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/deploy-report.schema.json"
    ))
    .unwrap();
    let mut errors = Vec::new();
    validate(
        &serde_json::from_str(&text).unwrap(),
        &bad,
        "$",
        &mut errors,
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
}
