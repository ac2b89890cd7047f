//! cutover: a PID-1 supervisor for containers that reaps, forwards signals,
//! restarts programs by policy, and (as it grows) swaps in new code without
//! rebuilding the image.
//!
//! Map of the crate: `cli` parses and maps results to exit codes; `config`
//! loads and validates; `supervisor` wires the parts together; `program` is
//! the per-program actor; `spawn` forks and execs; `reaper` owns waitpid;
//! `signals` turns signals into messages; `group`, `restart`, `exit` and
//! `user` are the small pieces they share; `fingerprint` digests a release's
//! dependency files so a deploy can tell whether hot reload is safe.

pub mod cli;
pub mod config;
pub mod control;
pub mod exit;
pub mod fingerprint;
pub mod group;
pub mod hooks;
pub mod http;
pub mod listen;
pub mod logging;
pub mod notify;
pub mod program;
pub mod ready;
pub mod reaper;
pub mod redeploy;
pub mod reload;
pub mod restart;
pub mod signals;
pub mod source;
pub mod spawn;
pub mod status;
pub mod supervisor;
pub mod triggers;
pub mod user;
pub mod webhook;
