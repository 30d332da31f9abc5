//! The report of `shipit exec` and `shipit task`: how the command ended on each host.

use serde::Serialize;

use crate::output::{Report, table};

#[derive(Debug, Serialize)]
pub struct ExecReport {
    pub stage: String,
    /// `shipit task`: the task's name (its command is `command`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    pub command: String,
    pub hosts: Vec<HostExec>,
}

impl Report for ExecReport {
    fn human(&self) -> String {
        table::exec(self)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serializes")
    }
}

impl ExecReport {
    pub fn failed(&self) -> usize {
        self.hosts.iter().filter(|h| !h.ok).count()
    }
}

#[derive(Debug, Serialize)]
pub struct HostExec {
    pub host: String,
    pub ok: bool,
    /// The command's exit status; `None` when it never ran or its status was lost.
    pub exit_code: Option<u32>,
    pub stdout: String,
    pub stderr: String,
    pub error: Option<String>,
}

impl HostExec {
    /// A host the command never ran on.
    pub fn failed(host: &str, error: String) -> HostExec {
        HostExec {
            host: host.to_owned(),
            ok: false,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            error: Some(error),
        }
    }
}
