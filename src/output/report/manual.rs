//! `shipit man --dir`'s report: the manual pages written.

use std::path::PathBuf;

use serde::Serialize;

use crate::output::Report;

#[derive(Debug, Serialize)]
pub struct ManualReport {
    pub written: Vec<PathBuf>,
}

impl Report for ManualReport {
    fn human(&self) -> String {
        self.written
            .iter()
            .map(|path| format!("wrote {}\n", path.display()))
            .collect()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }
}
