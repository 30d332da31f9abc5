//! End-to-end tests: the real `shipit` binary against real OpenSSH sshd hosts started by the
//! fixture in `support` (one per test host, each with its own filesystem view).

#[allow(dead_code)]
#[path = "../common/rawtar.rs"]
mod rawtar;
mod support;

mod auth;
mod blue_green;
mod build;
mod check;
mod ci_output;
mod cli;
mod common;
mod completions;
mod compose;
mod concurrency;
mod database;
mod delta;
mod deploy;
mod dist;
mod docker_fixture;
mod exec;
mod extends;
mod faults;
mod file_times;
mod fleet;
mod harden_delta;
mod harden_guard;
mod harden_misc;
mod harden_paths;
mod harden_review_a;
mod harden_review_b;
mod harden_tar;
mod host_keys;
mod hostile;
mod inventory_cli;
mod jump;
mod maintenance;
mod notify;
mod openssh;
mod openssh_differential;
mod operator;
mod plan;
mod plan_steps;
mod report_schema;
mod restore;
mod rollback_hooks;
mod scaffold;
mod secret_sources;
mod secrets;
mod seed_dash;
mod seed_intric;
mod seed_melvin;
mod seed_obd2;
mod services;
mod sharding;
mod sudo;
mod systemd_fleet;
mod tasks;
mod transport;
mod waves;
