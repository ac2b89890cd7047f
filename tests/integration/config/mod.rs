//! The config file: every problem at once, where it is, and nothing started (src/config).

pub(crate) mod config_errors;
