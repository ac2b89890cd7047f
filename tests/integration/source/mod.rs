//! Code from git: deploys, faults, forges over https and ssh, the dependency gate, secrets kept out of sight (src/source).

pub(crate) mod dependencies;
pub(crate) mod deploys;
pub(crate) mod forge_fixture;
pub(crate) mod forges;
pub(crate) mod forges_ssh;
pub(crate) mod redaction;
pub(crate) mod source_faults;
