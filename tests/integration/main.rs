//! Integration tests: the real `cutover` binary against real processes.

/// Shared with the benches: ports, git, HTTP, load, processes, temp dirs.
#[path = "../fixture/mod.rs"]
mod fixture;
mod gitrepo;
mod helpers;

mod cli;
mod config_errors;
mod crash_safety;
mod dependencies;
mod django;
mod environment;
mod exit_codes;
mod fingerprint;
mod first_release;
mod forge_fixture;
mod forges;
mod forges_ssh;
mod gunicorn;
mod handoff;
mod holder;
mod holder_hostile;
mod hostile;
mod idle_flood;
mod process_tree;
mod redaction;
mod redeploy;
mod reload;
mod responsive;
mod restart;
mod servers;
mod source;
mod source_faults;
mod status_escapes;
mod watch_symlinks;

#[cfg(feature = "container-tests")]
mod ansible;
#[cfg(feature = "container-tests")]
mod compose_holder;
#[cfg(feature = "container-tests")]
mod container;
#[cfg(feature = "container-tests")]
mod dockercli;
#[cfg(feature = "container-tests")]
mod e2e;
#[cfg(feature = "container-tests")]
mod holder_docker;
#[cfg(feature = "container-tests")]
mod redeploy_docker;
