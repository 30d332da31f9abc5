//! A database backup made on a host, and the reports of `shipit backup` (one made now) and
//! `shipit backups` (those on the migrate host).

use serde::Serialize;

use crate::output::{Report, table};

/// One backup made.
#[derive(Clone, Debug, Serialize)]
pub struct BackupFile {
    pub host: String,
    pub path: String,
    pub bytes: u64,
    /// Its sha256, as recorded beside it (`<path>.meta`) for a restore to check.
    pub sha256: String,
}

/// `shipit backup`: one verified backup now, under the deploy lock of the migrate host.
#[derive(Debug, Serialize)]
pub struct BackupReport {
    pub stage: String,
    pub host: String,
    pub backup: Option<BackupFile>,
    /// `--verify-restore`: the restore drill's result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill: Option<Drill>,
    pub error: Option<String>,
    /// Not made because another run holds the lock (exit 5, as for a deploy or a task).
    #[serde(skip)]
    pub locked: bool,
}

/// The restore drill: a backup restored into a scratch database, counted, dropped.
#[derive(Debug, Default, Serialize)]
pub struct Drill {
    pub backup: String,
    /// The scratch database (dropped after counting).
    pub database: Option<String>,
    pub tables: Vec<TableRows>,
    /// Rows in all tables.
    pub rows: u64,
}

#[derive(Debug, Serialize)]
pub struct TableRows {
    pub name: String,
    pub rows: u64,
}

impl Report for BackupReport {
    fn human(&self) -> String {
        if let Some(d) = &self.drill {
            let mut out = format!(
                "{}: restore drill of `{}`{}: {} tables, {} rows\n",
                self.host,
                d.backup,
                d.database
                    .as_deref()
                    .map(|db| format!(" into scratch database `{db}` (dropped)"))
                    .unwrap_or_default(),
                d.tables.len(),
                d.rows
            );
            for t in &d.tables {
                out.push_str(&format!("  {:<40} {:>12}\n", t.name, t.rows));
            }
            if let Some(e) = &self.error {
                out.push_str(&format!("{}: {e}\n", self.host));
            }
            return out;
        }
        match (&self.backup, &self.error) {
            (Some(b), _) => format!(
                "{}: backup `{}` ({})\n",
                b.host,
                b.path,
                table::bytes(b.bytes)
            ),
            (None, Some(e)) => format!("{}: {e}\n", self.host),
            (None, None) => format!("{}: no `[backup]` configured\n", self.host),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }
}

/// `shipit backups`: the backups on the migrate host, newest first.
#[derive(Debug, Serialize)]
pub struct BackupsReport {
    pub stage: String,
    pub host: String,
    pub dir: String,
    pub backups: Vec<BackupEntry>,
}

#[derive(Debug, Serialize)]
pub struct BackupEntry {
    pub name: String,
    pub bytes: u64,
    pub time: String,
    /// The sha256 recorded when it was made (none for a backup made before shipit
    /// recorded them).
    pub sha256: Option<String>,
    /// The release that was live when it was taken (none on a first deploy).
    pub live_release: Option<String>,
    /// The release a deploy took it for (before that release's migrations), or `manual`.
    pub taken_for: Option<String>,
}

impl Report for BackupsReport {
    fn human(&self) -> String {
        table::backups(self)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }
}
