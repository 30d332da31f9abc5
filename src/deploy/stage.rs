//! Staging a host's configuration next to its release, before anything is switched: the
//! env file (as `<path>.shipit-next-<run token>`, 0600, read by this run only), the rendered units and Nginx site (in
//! `<release>/.shipit/`), each validated on the host (`systemd-analyze verify`, `nginx -t`).
//! A problem here fails staging, so nothing is switched anywhere.

use crate::commands::{self, exit};
use crate::deploy::envfile::{self, KeyDiff};
use crate::deploy::templates::{self, AppCtx, Context, EnvCtx, HostCtx, ReleaseCtx};
use crate::execute::{self, RemoteError, timeout};
use crate::inventory::{Host, Inventory};
use crate::shell::Secret;
use crate::transport::fleet::Conn;
use crate::transport::{ExecRequest, Exit, Stdin};

/// The templates of the inventory, read once by the caller (errors before any connection).
#[derive(Debug, Default)]
pub struct Templates {
    /// (unit name, template file as written in the inventory, template text)
    pub units: Vec<(String, String, String)>,
    /// (site, template file, template text)
    pub nginx: Option<(String, String, String)>,
    /// (template file, template text) of the compose file.
    pub compose: Option<(String, String)>,
}

/// Where a release keeps its candidates (relative to the release directory).
pub const SYSTEMD_DIR: &str = ".shipit/systemd";
pub const SYSTEMD_VERIFY_DIR: &str = ".shipit/systemd-verify";
pub const NGINX_DIR: &str = ".shipit/nginx";
pub const COMPOSE_FILE: &str = ".shipit/compose/docker-compose.yml";

pub fn context(inventory: &Inventory, host: &Host, release: &str) -> Context {
    let deploy_to = &inventory.app.deploy_to;
    let env = inventory.env.as_ref();
    Context {
        app: AppCtx {
            name: inventory.app.name.clone(),
            deploy_to: deploy_to.clone(),
            current: format!("{deploy_to}/current"),
            user: inventory.app.user.clone(),
        },
        host: HostCtx {
            name: host.name.clone(),
            address: host.address.clone(),
            roles: host.roles.clone(),
            vars: host.vars.clone(),
        },
        release: ReleaseCtx {
            id: release.to_owned(),
            path: format!("{deploy_to}/releases/{release}"),
        },
        env: EnvCtx {
            path: env.map(|e| e.path.clone()),
            keys: env
                .map(|e| {
                    let mut keys: Vec<String> = e.vars.keys().cloned().collect();
                    keys.extend(e.secrets.iter().map(|(k, _)| k.clone()));
                    keys.sort();
                    keys
                })
                .unwrap_or_default(),
        },
        port: None,
        maintenance: inventory
            .migrate
            .as_ref()
            .filter(|m| m.maintenance)
            .map(|_| commands::nginx::maintenance_lines(deploy_to))
            .unwrap_or_default(),
    }
}

/// Renders every template for every selected host before any connection, so a typo or an
/// undefined name stops the deploy while nothing has been touched. The release id is a
/// placeholder of the real shape (it is chosen later, from the hosts' releases).
pub fn check(
    inventory: &Inventory,
    hosts: &[&Host],
    templates: &Templates,
) -> Result<(), templates::TemplateError> {
    const PLACEHOLDER: &str = "20000101T000000Z-000000000000";
    for host in hosts {
        let mut ctx = context(inventory, host, PLACEHOLDER);
        for (_, file, source) in &templates.units {
            templates::render(file, source, &ctx).map_err(|e| unit_port_hint(e, source))?;
        }
        if let Some((_, file, source)) = &templates.nginx {
            let ports = inventory.blue_green().map(|(_, bg)| bg.ports);
            ctx.port = ports.map(|[a, _]| a);
            let first = templates::render(file, source, &ctx)?;
            if !ctx.maintenance.is_empty() && !first.contains(&ctx.maintenance) {
                return Err(templates::TemplateError {
                    template: file.clone(),
                    line: None,
                    message: "`migrate.maintenance` is set but the site does not place `{{ maintenance }}`: put it inside the `server { }` block that serves the app".to_owned(),
                });
            }
            if let Some([_, b]) = ports {
                ctx.port = Some(b);
                if templates::render(file, source, &ctx)? == first {
                    return Err(templates::TemplateError {
                        template: file.clone(),
                        line: None,
                        message: "the site does not use `{{ port }}`: with a blue-green unit, Nginx must proxy to the port of the live instance (e.g. `proxy_pass http://127.0.0.1:{{ port }};`), or it would keep sending requests to the old one".to_owned(),
                    });
                }
            }
        }
        if let Some((file, source)) = &templates.compose {
            templates::render(file, source, &ctx)?;
        }
    }
    Ok(())
}

/// A unit template naming `port`: the instance's port is `%i` in a template unit.
fn unit_port_hint(mut e: templates::TemplateError, source: &str) -> templates::TemplateError {
    if source.contains("{{ port") || source.contains("{{port") {
        e.message.push_str(
            " (`port` is the Nginx site's; in a template unit the instance's port is `%i`)",
        );
    }
    e
}

/// `stage_env`: stages the next env file as run `token`'s when its content differs from
/// the host's, or when the host's has a mode other than 0600 or another owner than the app
/// user (it is then rewritten with the same content); returns which keys change (names
/// only), or `None` when nothing was staged. A file at the path that shipit did not write
/// is an error: it is never replaced.
pub async fn stage_env(
    conn: &Conn<'_>,
    inventory: &Inventory,
    content: &Secret,
    token: &str,
) -> Result<Option<KeyDiff>, RemoteError> {
    let Some(env) = &inventory.env else {
        return Ok(None);
    };
    let host = conn.host.name.as_str();
    let fail = |message: String| RemoteError::new(host, "stage_env", message);
    // The app user's, else the SSH user's: never root's, which `sudo` would leave it.
    let owner = inventory
        .app
        .user
        .as_deref()
        .or(conn.transport.sudo_login());
    let read = commands::envfile::read(&env.path, owner);
    let what = format!("reading `{}`", env.path);
    let o = execute::output(
        conn,
        "stage_env",
        &what,
        ExecRequest::new(&read, timeout::SHORT).as_root(),
    )
    .await?;
    let (current, loose) = match o.exit {
        Exit::Code(0) => (o.stdout.text(), false),
        Exit::Code(exit::ENV_LOOSE) => (o.stdout.text(), true),
        Exit::Code(exit::FOREIGN_FILE) => {
            return Err(RemoteError::from_output(host, "stage_env", &what, &o)
                .saying(o.stderr.text().trim().to_owned()));
        }
        _ => {
            return Err(RemoteError::from_output(host, "stage_env", &what, &o)
                .saying(format!("cannot read `{}` ({})", env.path, o.exit)));
        }
    };
    if envfile::same_content(&current, content) && !loose {
        return Ok(None);
    }
    let diff = envfile::key_diff(&current, content);
    let next = commands::envfile::next_path(&env.path, token);
    let write = commands::files::write(&next, "600", owner);
    let req = ExecRequest::new(&write, timeout::SHORT)
        .stdin(Stdin::Secret(content.clone()))
        .as_root();
    let o = execute::output(conn, "stage_env", "writing the env file", req).await?;
    if !o.success() {
        return Err(fail(format!(
            "cannot write `{next}` ({}): {}",
            o.exit,
            o.stderr.text().trim()
        )));
    }
    Ok(Some(diff))
}

/// `stage_units`: renders the units into `release_dir` and verifies them on the host.
pub async fn stage_units(
    conn: &Conn<'_>,
    inventory: &Inventory,
    templates: &Templates,
    release: &str,
    release_dir: &str,
) -> Result<(), RemoteError> {
    const STEP: &str = "stage_units";
    let host = conn.host.name.as_str();
    let ctx = context(inventory, conn.host, release);
    let deploy_to = &inventory.app.deploy_to;
    let current = format!("{deploy_to}/current/");
    let release_path = format!("{deploy_to}/releases/{release}/");
    for (unit, file, source) in &templates.units {
        let text = templates::render(file, source, &ctx)
            .map_err(|e| RemoteError::new(host, STEP, unit_port_hint(e, source).to_string()))?;
        put(
            conn,
            STEP,
            &format!("{release_dir}/{SYSTEMD_DIR}/{unit}"),
            text.as_bytes(),
        )
        .await?;
        // Verified as it will run after the switch, when `current` is this release: on a
        // first deploy `current` does not exist yet and verify would call ExecStart missing.
        let as_switched = text.replace(&current, &release_path);
        put(
            conn,
            STEP,
            &format!("{release_dir}/{SYSTEMD_VERIFY_DIR}/{unit}"),
            as_switched.as_bytes(),
        )
        .await?;
    }
    let verify = commands::systemd::verify(&format!("{release_dir}/{SYSTEMD_VERIFY_DIR}"));
    let what = "verifying the units";
    let o = execute::output(
        conn,
        STEP,
        what,
        ExecRequest::new(&verify, timeout::SHORT * 2).as_root(),
    )
    .await?;
    match o.exit {
        Exit::Code(0) => Ok(()),
        Exit::Code(exit::VERIFY_FAILED) => Err(RemoteError::from_output(host, STEP, what, &o)
            .saying(format!(
                "`systemd-analyze verify` rejects the units:\n{}",
                o.stderr.text().trim_end()
            ))),
        _ => Err(RemoteError::from_output(host, STEP, what, &o)),
    }
}

/// `stage_site`: renders the Nginx site into `release_dir` (for a blue-green unit, pointing
/// at `port`) and tests it on the host.
pub async fn stage_site(
    conn: &Conn<'_>,
    inventory: &Inventory,
    templates: &Templates,
    release: &str,
    release_dir: &str,
    port: Option<u16>,
) -> Result<(), RemoteError> {
    const STEP: &str = "stage_site";
    let host = conn.host.name.as_str();
    let Some((site, file, source)) = &templates.nginx else {
        return Ok(());
    };
    let mut ctx = context(inventory, conn.host, release);
    ctx.port = port;
    let text = templates::render(file, source, &ctx)
        .map_err(|e| RemoteError::new(host, STEP, e.to_string()))?;
    let candidate = format!("{release_dir}/{NGINX_DIR}/{site}");
    put(conn, STEP, &candidate, text.as_bytes()).await?;
    let test = commands::nginx::test(site, &candidate);
    let what = "testing the nginx site";
    let req = ExecRequest::new(&test, timeout::SHORT).as_root();
    let o = execute::output(conn, STEP, what, req).await?;
    match o.exit {
        Exit::Code(0) => Ok(()),
        Exit::Code(exit::NGINX_INVALID) => Err(RemoteError::from_output(host, STEP, what, &o)
            .saying(format!(
                "`nginx -t` rejects site `{site}` (rendered from `{file}`); the live site is unchanged:\n{}",
                o.stderr.text().trim_end()
            ))),
        _ => Err(RemoteError::from_output(host, STEP, what, &o)),
    }
}

/// `stage_compose`: renders the compose file into `release_dir`, checks it (and pulls its
/// images). `env_next` is the env file this run staged on the host, if it did (Compose
/// reads it).
pub async fn stage_compose(
    conn: &Conn<'_>,
    inventory: &Inventory,
    templates: &Templates,
    release: &str,
    release_dir: &str,
    env_next: Option<&str>,
) -> Result<(), RemoteError> {
    const STEP: &str = "stage_compose";
    let host = conn.host.name.as_str();
    let (Some((file, source)), Some(compose)) = (&templates.compose, &inventory.compose) else {
        return Ok(());
    };
    let ctx = context(inventory, conn.host, release);
    let text = templates::render(file, source, &ctx)
        .map_err(|e| RemoteError::new(host, STEP, e.to_string()))?;
    let no_vars = Default::default();
    let vars = inventory.env.as_ref().map_or(&no_vars, |e| &e.vars);
    let unpinned = commands::compose::unpinned_images(&text, vars);
    if !unpinned.is_empty() {
        let list: Vec<String> = unpinned
            .iter()
            .map(|(l, i)| format!("line {l}: `{i}`"))
            .collect();
        return Err(RemoteError::new(
            host,
            STEP,
            format!(
                "the compose file rendered from `{file}` uses images without a pinned tag ({}); name a version or a digest so a release always means the same images",
                list.join(", ")
            ),
        ));
    }
    let path = format!("{release_dir}/{COMPOSE_FILE}");
    put(conn, STEP, &path, text.as_bytes()).await?;
    let env_path = env_next.or(inventory.env.as_ref().map(|e| e.path.as_str()));
    let stage = commands::compose::stage(&compose.project, &path, env_path, compose.pull);
    let what = if compose.pull {
        "checking the compose file and pulling its images"
    } else {
        "checking the compose file"
    };
    let o = execute::output(
        conn,
        STEP,
        what,
        ExecRequest::new(&stage, timeout::SHORT * 30).as_root(),
    )
    .await?;
    if o.success() {
        return Ok(());
    }
    let why = match o.exit {
        Exit::Code(exit::NO_COMPOSE) => {
            "the host has neither `docker compose` nor `docker-compose`"
        }
        Exit::Code(exit::COMPOSE_INVALID) => "Compose rejects the file",
        Exit::Code(exit::PULL_FAILED) => "pulling the images failed",
        _ => "it failed",
    };
    Err(RemoteError::from_output(host, STEP, what, &o)
        .saying(format!("{what}: {why}:\n{}", o.stderr.text().trim_end())))
}

async fn put(conn: &Conn<'_>, step: &str, path: &str, content: &[u8]) -> Result<(), RemoteError> {
    let cmd = commands::files::write(path, "644", None);
    let req = ExecRequest::new(&cmd, timeout::SHORT).stdin(Stdin::Bytes(content.to_vec()));
    let o = execute::output(conn, step, &format!("writing `{path}`"), req).await?;
    if o.success() {
        return Ok(());
    }
    Err(
        RemoteError::from_output(&conn.host.name, step, "writing", &o).saying(format!(
            "cannot write `{path}` ({}): {}",
            o.exit,
            o.stderr.text().trim()
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blue_green(site: &str, unit: &str) -> Result<(), templates::TemplateError> {
        let inv = crate::inventory::for_tests(
            "[app]\nname = \"shop\"\ndeploy_to = \"/opt/shop\"\n\n[[hosts]]\nname = \"h1\"\n\n\
             [[systemd]]\nunit = \"shop@.service\"\ntemplate = \"u\"\nports = [3001, 3002]\n\n\
             [nginx]\nsite = \"shop\"\ntemplate = \"s\"\n\n\
             [[health]]\nurl = \"http://127.0.0.1:{{ port }}/healthz\"\n",
        );
        let templates = Templates {
            units: vec![("shop@.service".into(), "u".into(), unit.into())],
            nginx: Some(("shop".into(), "s".into(), site.into())),
            compose: None,
        };
        let hosts: Vec<&Host> = inv.hosts.iter().collect();
        check(&inv, &hosts, &templates)
    }

    #[test]
    fn a_blue_green_site_must_follow_the_port() {
        let unit = "[Service]\nEnvironment=PORT=%i\n";
        assert_eq!(
            blue_green("proxy_pass http://127.0.0.1:{{ port }};\n", unit),
            Ok(())
        );
        let e = blue_green("proxy_pass http://127.0.0.1:3001;\n", unit).unwrap_err();
        assert!(e.message.contains("does not use `{{ port }}`"), "{e}");
        // A unit has no `port`: the instance's is `%i`, and the error says so.
        let e = blue_green(
            "proxy_pass http://127.0.0.1:{{ port }};\n",
            "[Service]\nEnvironment=PORT={{ port }}\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("`%i`"), "{e}");
    }
}
