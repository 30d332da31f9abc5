//! `[app]`: the app's name, where its releases live on a host, how many to keep, its user.

use toml::Spanned;

use super::error::Problems;
use super::paths::{remote_path, tree_problem};
use super::raw::RawApp;
use super::validate::{Validator, unix_name};

#[derive(Debug)]
pub struct App {
    pub name: String,
    pub deploy_to: String,
    pub keep_releases: u32,
    /// The service user owning `shared/` and reading the env file; `None` = the SSH user.
    pub user: Option<String>,
}

impl Validator<'_> {
    pub(super) fn app(
        &self,
        raw: Option<RawApp>,
        local: bool,
        p: &mut Problems<'_>,
    ) -> Option<App> {
        let Some(raw) = raw else {
            p.missing(0..0, "app");
            return None;
        };
        let whole = p.section("app");
        let name = match raw.name {
            None => {
                p.missing(whole.clone(), "app.name");
                None
            }
            Some(n) => {
                let ok = !n.get_ref().is_empty()
                    && n.get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if !ok {
                    p.invalid(
                        n.span(),
                        "app.name",
                        "use letters, digits, `.`, `_` and `-` only (it names files and units)",
                    );
                }
                Some(n.into_inner())
            }
        };
        let deploy_to = match raw.deploy_to {
            None => {
                p.missing(whole, "app.deploy_to");
                None
            }
            Some(mut d) => {
                // On this machine a relative `deploy_to` is clear: relative to the project.
                if local && !d.get_ref().starts_with('/') && !d.get_ref().is_empty() {
                    let joined = self.ctx.base_dir.join(d.get_ref());
                    let normal = joined.to_string_lossy().trim_end_matches('/').to_owned();
                    d = Spanned::new(d.span(), normal);
                }
                let ok = remote_path(&d, "app.deploy_to", p);
                if let Some(why) = tree_problem(d.get_ref()).filter(|_| ok) {
                    p.invalid(d.span(), "app.deploy_to", why);
                }
                Some(d.into_inner())
            }
        };
        let keep_releases = match raw.keep_releases {
            None => 5,
            Some(k) if *k.get_ref() >= 2 && *k.get_ref() <= 1000 => *k.get_ref() as u32,
            Some(k) => {
                p.invalid(
                    k.span(),
                    "app.keep_releases",
                    "must be at least 2 (the current release and the one to roll back to)",
                );
                5
            }
        };
        let user = raw.user.map(|u| {
            unix_name(&u, "app.user", p);
            u.into_inner()
        });
        Some(App {
            name: name?,
            deploy_to: deploy_to?,
            keep_releases,
            user,
        })
    }
}
