//! Integration tests: the real `cutover` binary against real processes.
//!
//! The folders mirror src's subsystems (process/, program/, reload/,
//! sockets/, source/, status/, api/, fingerprint/, config/, redeploy/,
//! supervisor/), plus containers/ for the tests on a real Docker engine and
//! docs.rs for the snippets of README.md and docs/. Every helper lives in
//! one home, tests/fixture/ (shared with the benches); test files take what
//! they use most from `crate::fixture::prelude`.
//!
//! scripts/test selects phases by module path substrings (`holder::`,
//! `handoff::`, `reload::hot::`, `servers::`, `container::`, ...): a test
//! moved or a module renamed must keep every phase's set the same.

/// The one home of the helpers, shared with the benches: cutover started as
/// PID 1 or a subreaper, the config builder, ports, git, HTTP, load,
/// processes, temp dirs.
#[path = "../fixture/mod.rs"]
mod fixture;

mod api;
mod config;
mod docs;
mod fingerprint;
mod process;
mod program;
mod redeploy;
mod reload;
mod sockets;
mod source;
mod status;
mod supervisor;

#[cfg(feature = "container-tests")]
mod containers;
