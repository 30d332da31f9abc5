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
}

/// `shipit backup`: one verified backup now, under the deploy lock of the migrate host.
#[derive(Debug, Serialize)]
pub struct BackupReport {
    pub stage: String,
    pub host: String,
    pub backup: Option<BackupFile>,
    pub error: Option<String>,
    /// Not made because another run holds the lock (exit 5, as for a deploy or a task).
    #[serde(skip)]
    pub locked: bool,
}

impl Report for BackupReport {
    fn human(&self) -> String {
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
}

impl Report for BackupsReport {
    fn human(&self) -> String {
        table::backups(self)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }
}
