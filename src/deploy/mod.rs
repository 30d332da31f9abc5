//! The fleet pipeline of `shipit deploy` and `shipit rollback`: lock, read facts, plan
//! ([`crate::plan`]), then execute the plan's steps ([`crate::execute`]): stage every host,
//! once on the migrate host, switch in waves, finish; and `shipit plan`'s read-only preview.

pub mod envfile;
pub mod facts;
#[cfg(test)]
pub(crate) mod fake;
pub mod health;
pub mod hooks;
pub mod lock;
pub mod maintenance;
pub mod once;
pub mod phases;
pub mod pipeline;
pub mod preview;
pub mod restore;
pub mod stage;
pub mod strict;
pub mod switch;
pub mod templates;
pub mod upload;

use std::collections::BTreeMap;

use crate::artifact::{Codec, Packed};
use crate::inventory::Inventory;
use crate::output::{Event, Output};
use crate::plan::facts::ReleaseTree;
use crate::shell::Secret;
use crate::transport::fleet::Conn;

/// What executing a run's steps needs besides the plan: resolved once by the pipeline.
pub struct Ctx<'a> {
    pub inventory: &'a Inventory,
    pub templates: &'a stage::Templates,
    pub out: &'a Output,
    /// The run's token: it names the env file this run stages and its guard.
    pub token: &'a str,
    /// The release the run switches to.
    pub release: &'a str,
    /// A deploy stages, runs hooks and installs the env file; a rollback does none of it.
    pub deploy: bool,
    pub artifact: Option<&'a Packed>,
    pub uploads: Option<&'a upload::Uploads<'a>>,
    /// What each host's release tree was before the run, by host name.
    pub facts: BTreeMap<String, ReleaseTree>,
    /// The REVISION file's text.
    pub revision: String,
    /// The env file's content (same on every host), rendered once.
    pub env_content: Option<&'a Secret>,
    /// The dead-deployer guard of a deploy.
    pub guard: Option<switch::Guard>,
    /// When the run started (backup names).
    pub now_unix: u64,
}

impl Ctx<'_> {
    /// Tells the output which step a host is in (words, for people).
    pub fn step(&self, c: &Conn<'_>, words: &str) {
        self.out.emit(Event::Step {
            host: &c.host.name,
            step: words,
        });
    }

    pub fn note(&self, text: &str) {
        self.out.emit(Event::Note(text));
    }

    /// How a whole upload to `c` is compressed: zstd, or gzip where the host has no zstd.
    pub fn codec(&self, c: &Conn<'_>) -> Codec {
        match self.facts.get(&c.host.name) {
            Some(t) if !t.zstd => Codec::Gzip,
            _ => Codec::Zstd,
        }
    }

    pub fn release_dir(&self) -> String {
        format!("{}/releases/{}", self.inventory.app.deploy_to, self.release)
    }
}

/// What executing a host's steps has learned so far (the decisions only the host could
/// make: whether the env file changed, which units changed).
#[derive(Debug, Default)]
pub struct HostState {
    /// This run staged a new env file on the host.
    pub env_staged: bool,
    /// Units whose installed file changed.
    pub changed_units: Vec<String>,
    /// The guard is armed and not yet confirmed or disarmed.
    pub guard_armed: bool,
    /// When the Nginx site was pointed at the new blue-green instance: the drain of the old
    /// one counts from here.
    pub pointed_at: Option<std::time::Instant>,
}
