//! `shipit init`: scaffolds a stage's inventory, unit and site templates, an empty
//! known_hosts and a GitHub Actions workflow. Existing files are never overwritten.

use std::path::{Path, PathBuf};

use crate::output::report::init::InitReport;

const INVENTORY: &str = r#"# shipit inventory for the `{stage}` stage: `shipit check {stage}`, `shipit plan {stage}`,
# `shipit deploy {stage}`. Every key and its default: examples/reference.toml in shipit's repo.

[app]
name = "myapp"
deploy_to = "/opt/myapp"
keep_releases = 5
# user = "myapp"                        # service user: owns shared/, reads the env file

[ssh]
user = "deploy"
# Not root: the env file, units and site (under /etc) go through `sudo -n`, the releases stay
# deploy's. On each host: `echo 'deploy ALL=(root) NOPASSWD: ALL' > /etc/sudoers.d/shipit`.
sudo = true
# identity = "~/.ssh/id_ed25519"        # else $SHIPIT_SSH_KEY (CI), ssh-agent, ~/.ssh/id_*
known_hosts = "inventory/known_hosts"   # strict: add each host's key after checking it

[[hosts]]
name = "web-1"
address = "203.0.113.10"
roles = ["web", "migrate"]

[artifact]
path = "dist"
# build = "npm ci && npm run build"
shared_dirs = ["storage"]

[env]
path = "/etc/myapp.env"
# from_env = ["DATABASE_URL"]           # secrets, read from the deployer's environment
vars = { NODE_ENV = "production", PORT = "3000" }

[[systemd]]
unit = "myapp.service"
template = "deploy/myapp.service.j2"

[nginx]
site = "myapp"
template = "deploy/nginx.conf.j2"

[health]
url = "http://127.0.0.1:3000/healthz"
timeout = "60s"

[rollout]
waves = ["1", "100%"]
"#;

const KNOWN_HOSTS: &str = "# Host keys shipit trusts (strict: unknown keys are refused).\n# Check each fingerprint with the host's owner, then add its line, e.g. the one\n# `shipit check` prints for an unknown key.\n";

const UNIT: &str = r#"[Unit]
Description={{ app.name }}
After=network.target

[Service]
Type=simple
{% if app.user %}User={{ app.user }}
{% endif %}EnvironmentFile={{ env.path }}
WorkingDirectory={{ app.current }}
ExecStart=/usr/bin/node {{ app.current }}/server.js
Restart=on-failure

[Install]
WantedBy=multi-user.target
"#;

const SITE: &str = r#"server {
    listen 80;
    server_name {{ host.address }};

    location / {
        proxy_pass http://127.0.0.1:3000;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
}
"#;

const WORKFLOW: &str = include_str!("../../examples/github-actions/deploy.yml");

/// Writes the scaffold under `dir` for `stage`.
pub fn scaffold(dir: &Path, stage: &str) -> std::io::Result<InitReport> {
    let files: Vec<(PathBuf, String)> = vec![
        (
            dir.join("inventory").join(format!("{stage}.toml")),
            INVENTORY.replace("{stage}", stage),
        ),
        (dir.join("inventory/known_hosts"), KNOWN_HOSTS.to_owned()),
        (dir.join("deploy/myapp.service.j2"), UNIT.to_owned()),
        (dir.join("deploy/nginx.conf.j2"), SITE.to_owned()),
        (
            dir.join(".github/workflows/deploy.yml"),
            WORKFLOW.replace("production", stage),
        ),
    ];
    let mut report = InitReport {
        created: Vec::new(),
        kept: Vec::new(),
    };
    for (path, text) in files {
        let shown = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .display()
            .to_string();
        if path.exists() {
            report.kept.push(shown);
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
        report.created.push(shown);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    /// The scaffold deploys as a user that is not root: the steps under `/etc` go through
    /// sudo, so it says `ssh.sudo = true`.
    #[test]
    fn the_scaffold_parses_and_uses_sudo_for_its_user_that_is_not_root() {
        let text = super::INVENTORY.replace("{stage}", "staging");
        let inv = crate::inventory::for_tests(&text);
        assert_ne!(inv.ssh.user, "root");
        assert!(inv.ssh.sudo && inv.sudo());
    }
}
