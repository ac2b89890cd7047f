//! Integration tests: the real `cutover` binary against real processes.

mod helpers;

mod cli;
mod config_errors;
mod exit_codes;
mod gunicorn;
mod process_tree;
mod reload;
mod restart;

#[cfg(feature = "container-tests")]
mod container;
