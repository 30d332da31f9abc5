//! `shipit init`'s report: the files it created and the ones it left alone.

use serde::Serialize;

use crate::output::Report;

#[derive(Debug, Serialize)]
pub struct InitReport {
    pub created: Vec<String>,
    /// Files that existed already and were left as they were.
    pub kept: Vec<String>,
}

impl Report for InitReport {
    fn human(&self) -> String {
        let mut out = String::new();
        for f in &self.created {
            out.push_str(&format!("created {f}\n"));
        }
        for f in &self.kept {
            out.push_str(&format!("kept    {f} (exists)\n"));
        }
        out.push_str("next: edit the inventory, add host keys to inventory/known_hosts, run `shipit check`\n");
        out
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }
}
