//! cutover: a PID-1 supervisor for containers that reaps, forwards signals,
//! restarts programs by policy, and (as it grows) swaps in new code without
//! rebuilding the image.
//!
//! Map of the crate, from the top down (each imports only what is below it;
//! docs/architecture.md follows a push through it):
//! - `cli`: parses arguments, runs a subcommand, maps its result to an exit
//!   code. `supervisor`: `cutover run`, which wires everything below
//!   together. `holder`: `cutover hold`, the socket holder's side.
//! - `api`: the control socket and the HTTP endpoint (status, probes,
//!   metrics, webhooks) and the accept loop they share. `status`: the status
//!   model they serve, gathered from what the actors publish.
//! - `source`: code from git into `releases/<sha>` and `current`, its hooks,
//!   rollbacks and the dependency check. `reload`: the queue every trigger
//!   lands in (`trigger`, `files`), and its record.
//! - `program`: one supervised program as an actor, its instances, reload
//!   strategies, readiness, restarts and notify socket. `redeploy`: a new
//!   image when dependencies change (command, webhook, docker, the deployer
//!   and its server). `hooks`: commands run before the cutover.
//! - `sockets`: every listening socket (held, taken from a holder, steered
//!   per instance, probed) and the holder's wire and protocol.
//! - `config`: the file, validated, every problem at once.
//! - `process`: fork/exec, the one `waitpid` owner, exit statuses, process
//!   groups, signals, users, a child's environment.
//! - Leaves: `fingerprint` (dependency digests), `redact` (what may be
//!   shown), `webhook` (forge signatures), `tls`, `clock`, `sha`, `memory`,
//!   `logging`.
//!
//! Only `cli` (the binary's entry) and `webhook` (signing, for tests that
//! play a forge) are public: the rest is internal, so dead code shows.

pub(crate) mod api;
pub mod cli;
pub(crate) mod clock;
pub(crate) mod config;
pub(crate) mod fingerprint;
pub(crate) mod holder;
pub(crate) mod hooks;
pub(crate) mod logging;
pub(crate) mod memory;
pub(crate) mod process;
pub(crate) mod program;
pub(crate) mod redact;
pub(crate) mod redeploy;
pub(crate) mod reload;
pub(crate) mod sha;
pub(crate) mod sockets;
pub(crate) mod source;
pub(crate) mod status;
pub(crate) mod supervisor;
pub(crate) mod tls;
pub mod webhook;
