//! Where and how to reach a host as `ssh` would: `ssh_config` parsing and matching, host
//! patterns, and the resolved reach of each host.

pub mod config;
pub mod pattern;
pub mod reach;
