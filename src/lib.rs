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
//!
//! Only `cli` (the binary's entry) and `webhook` (signing, for tests that
//! play a forge) are public: the rest is internal, so dead code shows.

pub(crate) mod accept;
pub mod cli;
pub(crate) mod clock;
pub(crate) mod config;
pub(crate) mod control;
pub(crate) mod deployer;
pub(crate) mod exit;
pub(crate) mod fingerprint;
pub(crate) mod group;
pub(crate) mod handoff;
pub(crate) mod holder;
pub(crate) mod hooks;
pub(crate) mod http;
pub(crate) mod listen;
pub(crate) mod logging;
pub(crate) mod memory;
pub(crate) mod notify;
pub(crate) mod program;
pub(crate) mod ready;
pub(crate) mod reaper;
pub(crate) mod redact;
pub(crate) mod redeploy;
pub(crate) mod reload;
pub(crate) mod report;
pub(crate) mod restart;
pub(crate) mod sha;
pub(crate) mod signals;
pub(crate) mod source;
pub(crate) mod spawn;
pub(crate) mod status;
pub(crate) mod steer;
pub(crate) mod supervisor;
pub(crate) mod tls;
pub(crate) mod trigger;
pub(crate) mod triggers;
pub(crate) mod user;
pub mod webhook;
