//! Unit files and the Nginx site, rendered with minijinja from the inventory's templates.
//!
//! What a template sees: `app` (name, deploy_to, user, current = `<deploy_to>/current`),
//! `host` (name, address, roles, vars), `release` (id, path), `env` (path, and `keys`: the
//! names of the env file's variables, never their values), and in the Nginx site of a
//! blue-green unit `port` (the port of the instance going live), and `maintenance` (the
//! Nginx lines of `migrate.maintenance`, empty without it). Undefined names are errors, so a
//! typo fails the deploy before anything is switched instead of rendering an empty string.
//!
//! Pure: template text in, text out.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Context {
    pub app: AppCtx,
    pub host: HostCtx,
    pub release: ReleaseCtx,
    pub env: EnvCtx,
    /// The port of the blue-green instance going live (the Nginx site only; a unit names
    /// its instance's port `%i`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The server-block lines that answer 503 while the migrations run (`migrate.maintenance`),
    /// else empty: a site can always place it.
    pub maintenance: String,
}

#[derive(Debug, Serialize)]
pub struct AppCtx {
    pub name: String,
    pub deploy_to: String,
    pub current: String,
    pub user: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct HostCtx {
    pub name: String,
    pub address: String,
    pub roles: Vec<String>,
    pub vars: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Serialize)]
pub struct ReleaseCtx {
    pub id: String,
    pub path: String,
}

#[derive(Debug, Serialize)]
pub struct EnvCtx {
    pub path: Option<String>,
    pub keys: Vec<String>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("template `{template}`{}: {message}", .line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct TemplateError {
    pub template: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Renders `source` (read from the file `name`, used in errors) with `ctx`.
pub fn render(name: &str, source: &str, ctx: &Context) -> Result<String, TemplateError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Keep the file's trailing newline: unit files and configs end with one.
    env.set_keep_trailing_newline(true);
    let fail = |e: minijinja::Error| TemplateError {
        template: name.to_owned(),
        line: e.line(),
        message: match e.detail() {
            Some(detail) => format!("{}: {detail}", kind_text(&e)),
            None => kind_text(&e),
        },
    };
    let template = env.template_from_named_str(name, source).map_err(fail)?;
    template.render(ctx).map_err(fail)
}

fn kind_text(e: &minijinja::Error) -> String {
    e.kind().to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn ctx() -> Context {
        Context {
            app: AppCtx {
                name: "shop".into(),
                deploy_to: "/opt/shop".into(),
                current: "/opt/shop/current".into(),
                user: Some("shop".into()),
            },
            host: HostCtx {
                name: "web-1".into(),
                address: "10.0.0.5".into(),
                roles: vec!["web".into()],
                vars: [("region".to_owned(), toml::Value::String("eu".into()))].into(),
            },
            release: ReleaseCtx {
                id: "20260101T000000Z-abc".into(),
                path: "/opt/shop/releases/20260101T000000Z-abc".into(),
            },
            env: EnvCtx {
                path: Some("/etc/shop.env".into()),
                keys: vec!["DATABASE_URL".into(), "PORT".into()],
            },
            port: None,
            maintenance: String::new(),
        }
    }

    #[test]
    fn renders_a_unit() {
        let source = "[Service]\nUser={{ app.user }}\nEnvironmentFile={{ env.path }}\nWorkingDirectory={{ app.current }}\nExecStart={{ release.path }}/bin/server --region {{ host.vars.region }}\n# keys: {{ env.keys | join(\",\") }}\n";
        insta::assert_snapshot!(render("deploy/api.service", source, &ctx()).unwrap(), @r"
        [Service]
        User=shop
        EnvironmentFile=/etc/shop.env
        WorkingDirectory=/opt/shop/current
        ExecStart=/opt/shop/releases/20260101T000000Z-abc/bin/server --region eu
        # keys: DATABASE_URL,PORT
        ");
    }

    #[test]
    fn errors_name_the_template_and_line() {
        let e = render(
            "deploy/api.service",
            "[Service]\n\nExecStart={{ host.vars.zone }}\n",
            &ctx(),
        )
        .unwrap_err();
        assert_eq!(e.template, "deploy/api.service");
        assert_eq!(e.line, Some(3));
        assert!(
            e.to_string()
                .starts_with("template `deploy/api.service` line 3: undefined value"),
            "{e}"
        );
        let e = render("site.conf", "server {\n  {% if %}\n}", &ctx()).unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.to_string().contains("syntax error"), "{e}");
    }
}
