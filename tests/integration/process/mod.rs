//! PID-1 duties and what children get: exit statuses, the process tree, the environment, kills at any instant (src/process).

pub(crate) mod crash_safety;
pub(crate) mod environment;
pub(crate) mod exit_codes;
pub(crate) mod process_tree;
