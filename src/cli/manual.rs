//! `shipit man`: roff manual pages rendered by clap_mangen from the command line's own
//! definition, so the manual never drifts from `--help`. Depends on `cli` and `output`.

use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::cli::Cli;
use crate::output::report::manual::ManualReport;

/// One manual page: its file name (`shipit-deploy.1`) and its roff text.
pub struct Page {
    pub file_name: String,
    pub roff: Vec<u8>,
}

/// `shipit(1)`, then one page per command (`shipit-deploy(1)`, ...).
pub fn pages() -> Vec<Page> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let commands = cmd
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .cloned()
        .collect::<Vec<_>>();
    std::iter::once(cmd).chain(commands).map(page).collect()
}

fn page(cmd: clap::Command) -> Page {
    let man = clap_mangen::Man::new(cmd);
    let mut roff = Vec::new();
    man.render(&mut roff).expect("writing to a Vec cannot fail");
    Page {
        file_name: man.get_filename(),
        roff,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write `{}`", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Writes every page into `dir`, creating it.
pub fn write_all(dir: &Path) -> Result<ManualReport, WriteError> {
    std::fs::create_dir_all(dir).map_err(|source| WriteError {
        path: dir.to_owned(),
        source,
    })?;
    let mut written = Vec::new();
    for page in pages() {
        let path = dir.join(&page.file_name);
        std::fs::write(&path, &page.roff).map_err(|source| WriteError {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(ManualReport { written })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_page_for_shipit_and_one_per_command() {
        let names: Vec<String> = pages().into_iter().map(|p| p.file_name).collect();
        assert_eq!(names[0], "shipit.1");
        for name in ["shipit-deploy.1", "shipit-rollback.1", "shipit-man.1"] {
            assert!(names.iter().any(|n| n == name), "{names:?}");
        }
        assert!(!names.iter().any(|n| n == "shipit-help.1"), "{names:?}");
    }
}
