//! `[backup]` and `[migrate]`: the database steps run on the migrate host before a switch.

use super::error::Problems;
use super::paths::{remote_path, tree_problem};
use super::raw::{RawBackup, S};
use super::validate::Validator;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupKind {
    Postgres,
    Command,
}

#[derive(Debug)]
pub struct Backup {
    pub kind: BackupKind,
    pub command: String,
    pub dir: String,
    pub keep: u32,
    pub extension: String,
    pub verify: Option<String>,
    /// `kind = "command"`: restores a backup read on stdin (`shipit restore`, `rollback
    /// --restore-db`); `kind = "postgres"` has its own.
    pub restore: Option<String>,
    /// `kind = "command"`: the restore drill, reading a backup on stdin and printing
    /// `<table> <rows>` lines (`shipit backup --verify-restore`).
    pub drill: Option<String>,
}

#[derive(Debug)]
pub struct Migrate {
    pub command: String,
    /// While the migrations run, every host's Nginx site answers 503 with `Retry-After`
    /// (the site template places `{{ maintenance }}`).
    pub maintenance: bool,
}

impl Validator<'_> {
    pub(super) fn backup(
        &self,
        raw: S<RawBackup>,
        app: &str,
        p: &mut Problems<'_>,
    ) -> Option<Backup> {
        let span = raw.span();
        let raw = raw.into_inner();
        let kind = match raw.kind.as_ref().map(|k| k.get_ref().as_str()) {
            None | Some("command") => BackupKind::Command,
            Some("postgres") => BackupKind::Postgres,
            Some(other) => {
                let k = raw.kind.as_ref().expect("matched Some");
                p.invalid(
                    k.span(),
                    "backup.kind",
                    format!("must be \"postgres\" or \"command\", not {other:?}"),
                );
                BackupKind::Command
            }
        };
        let (command, extension, verify) = match kind {
            BackupKind::Postgres => (
                raw.command.map_or_else(
                    // No connection string in argv: shipit passes `DATABASE_URL` as PG* variables.
                    || "pg_dump --format=custom".to_owned(),
                    |c| c.into_inner(),
                ),
                raw.extension
                    .map_or_else(|| "dump".to_owned(), |e| e.into_inner()),
                Some(
                    raw.verify
                        .map_or_else(|| "pg_restore --list".to_owned(), |v| v.into_inner()),
                ),
            ),
            BackupKind::Command => {
                let Some(command) = raw.command else {
                    p.missing(span, "backup.command");
                    return None;
                };
                (
                    command.into_inner(),
                    raw.extension
                        .map_or_else(|| "bak".to_owned(), |e| e.into_inner()),
                    raw.verify.map(|v| v.into_inner()),
                )
            }
        };
        if extension.is_empty()
            || extension.contains('/')
            || extension.starts_with('.')
            || extension == "meta"
            || extension.ends_with(".meta")
        {
            p.invalid(
                span.clone(),
                "backup.extension",
                "must be a file extension like `dump` or `sql.gz`, without a leading dot (and not `meta`: each backup's record is `<file>.meta`)",
            );
        }
        let mut for_command = |key: &str, value: Option<S<String>>| {
            let value = value?;
            if kind == BackupKind::Postgres {
                p.invalid(
                    value.span(),
                    key,
                    "is for `kind = \"command\"`: `kind = \"postgres\"` restores with `pg_restore` itself",
                );
                return None;
            }
            if value.get_ref().trim().is_empty() {
                p.invalid(value.span(), key, "must be a command, not empty");
                return None;
            }
            Some(value.into_inner())
        };
        let restore = for_command("backup.restore", raw.restore);
        let drill = for_command("backup.drill", raw.drill);
        let dir = match raw.dir {
            Some(d) => {
                let ok = remote_path(&d, "backup.dir", p);
                if let Some(why) = tree_problem(d.get_ref()).filter(|_| ok) {
                    p.invalid(d.span(), "backup.dir", why);
                }
                d.into_inner()
            }
            None => format!("/var/backups/{app}"),
        };
        let keep = match raw.keep {
            None => 7,
            Some(k) if *k.get_ref() >= 1 && *k.get_ref() <= 10_000 => *k.get_ref() as u32,
            Some(k) => {
                p.invalid(k.span(), "backup.keep", "must be at least 1");
                7
            }
        };
        Some(Backup {
            kind,
            command,
            dir,
            keep,
            extension,
            verify,
            restore,
            drill,
        })
    }
}
