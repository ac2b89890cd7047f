//! The config file exactly as written: serde structs that mirror the TOML.
//!
//! Leaves that need interpretation (durations, signals, users, policies) stay
//! strings here so that `validate` can check every one of them and report all
//! problems at once, instead of serde stopping at the first.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Shorthand for a single program named "app".
    pub app: Option<RawProgram>,
    /// Several programs: `[[program]] name = "web"`.
    #[serde(default)]
    pub program: Vec<RawProgram>,
    pub control: Option<RawControl>,
    pub reload: Option<RawReload>,
    /// Readiness check for every program that has no `ready` of its own.
    pub ready: Option<RawReady>,
    /// Sockets cutover binds once and hands to the programs (systemd protocol).
    #[serde(default)]
    pub listen: Vec<RawListen>,
    /// Code pulled from git by cutover itself.
    pub source: Option<RawSource>,
    pub hooks: Option<RawHooks>,
    pub rollback: Option<RawRollback>,
    /// Files whose changes need a new image instead of a hot reload.
    pub dependencies: Option<RawDependencies>,
    /// What to do when a release needs a new image.
    pub redeploy: Option<RawRedeploy>,
    /// `cutover deployer`'s own file; refused by `cutover run`.
    pub deployer: Option<RawDeployer>,
}

/// `[deployer]`: the trusted side of a docker redeploy (`cutover deployer`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeployer {
    pub socket: Option<String>,
    pub releases: Option<String>,
    pub container: Option<String>,
    pub user: Option<String>,
    pub allow_uids: Option<Vec<u32>>,
    pub keep: Option<Vec<String>>,
    pub docker: Option<RawDocker>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub repo: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub root: Option<String>,
    pub poll: Option<String>,
    pub keep: Option<u32>,
    pub depth: Option<u32>,
    pub ssh_key: Option<String>,
    pub known_hosts: Option<String>,
    /// Skip the ssh host key check against known_hosts.
    pub insecure_ignore_host_key: Option<bool>,
    pub ca_file: Option<String>,
    pub username: Option<String>,
    pub token_env: Option<String>,
    pub token_file: Option<String>,
    pub webhook: Option<String>,
    pub webhook_secret_env: Option<String>,
    pub webhook_secret_file: Option<String>,
    /// Limits on what one commit may write: paths, total and largest blob
    /// sizes ("2GiB" or a number of bytes), directory depth.
    pub max_files: Option<u64>,
    pub max_bytes: Option<toml::Value>,
    pub max_file_size: Option<toml::Value>,
    pub max_depth: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    #[serde(default)]
    pub before_cutover: Vec<Vec<String>>,
    #[serde(default)]
    pub after_cutover: Vec<Vec<String>>,
    pub timeout: Option<String>,
    /// The program whose user and environment the hooks get; default the first.
    pub program: Option<String>,
    /// Added to that program's environment for the hooks.
    #[serde(default)]
    pub env: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollback {
    pub window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDependencies {
    /// Glob patterns relative to the release.
    pub files: Option<Vec<String>>,
    /// Where the image's fingerprint is stored.
    pub baseline: Option<String>,
}

/// `[redeploy]`: exactly one of `command`, `webhook`, `docker`, `deployer`,
/// `exit`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedeploy {
    pub command: Option<Vec<String>>,
    pub webhook: Option<String>,
    pub webhook_secret_env: Option<String>,
    pub webhook_secret_file: Option<String>,
    /// For `command` and `webhook`.
    pub timeout: Option<String>,
    pub docker: Option<RawDocker>,
    /// The socket of a `cutover deployer` that builds and replaces for us.
    pub deployer: Option<String>,
    /// Integer, checked by validation (1..=255).
    pub exit: Option<i64>,
    /// Upper bound of the retry backoff.
    pub retry_max: Option<String>,
    /// Who runs `command`; default: the hooked program's user.
    pub user: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDocker {
    pub socket: Option<String>,
    pub dockerfile: Option<String>,
    #[serde(default)]
    pub build_args: BTreeMap<String, toml::Value>,
    pub image: Option<String>,
    /// The container to replace; default: the one cutover runs in.
    pub container: Option<String>,
    pub health_timeout: Option<String>,
    /// Network mode for the build's RUN steps ("host", "none", a network).
    pub build_network: Option<String>,
    /// Old container settings the new one keeps whatever the new image says:
    /// "user", "entrypoint", "cmd".
    pub pin: Option<Vec<String>>,
    /// Build a release whose Dockerfile differs from the running image's.
    pub allow_dockerfile_change: Option<bool>,
    /// Keep the Docker socket's mount in the new container.
    pub keep_docker_socket: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProgram {
    pub name: Option<String>,
    pub command: Option<Vec<String>>,
    pub workdir: Option<String>,
    /// Values may be strings, numbers or booleans (`PORT = 8000`).
    #[serde(default)]
    pub env: BTreeMap<String, toml::Value>,
    /// Start from an empty environment instead of cutover's.
    pub env_clear: Option<bool>,
    /// With `env_clear`: names kept from cutover's environment.
    pub pass_env: Option<Vec<String>>,
    pub user: Option<String>,
    pub restart: Option<String>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<String>,
    /// First delay before a restart; doubles on every failure.
    pub restart_delay: Option<String>,
    pub restart_delay_max: Option<String>,
    /// Uptime after which the delay and the failure count start over.
    pub restart_reset_after: Option<String>,
    /// Give up after this many failures within `restart_window`.
    pub restart_limit: Option<u32>,
    pub restart_window: Option<String>,
    /// Overrides `[reload] strategy` for this program.
    pub reload_strategy: Option<String>,
    /// Overrides `[reload] signal` for this program.
    pub reload_signal: Option<String>,
    /// Overrides `[reload] drain` for this program.
    pub reload_drain: Option<String>,
    pub ready: Option<RawReady>,
    /// Where forwarded signals go: "group" (default) or "main".
    pub forward_to: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    pub socket: Option<String>,
    /// Address of the HTTP endpoint for /healthz, /status and /metrics.
    pub http: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReload {
    pub touch: Option<Vec<String>>,
    pub watch: Option<Vec<String>>,
    pub watch_root: Option<String>,
    pub debounce: Option<String>,
    pub strategy: Option<String>,
    pub signal: Option<String>,
    /// Between taking traffic off an old instance and its stop signal.
    pub drain: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReady {
    pub http: Option<String>,
    pub tcp: Option<String>,
    pub command: Option<Vec<String>>,
    pub notify: Option<bool>,
    pub timeout: Option<String>,
    pub interval: Option<String>,
    pub grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub name: Option<String>,
    pub address: Option<String>,
    pub backlog: Option<u32>,
    /// SO_REUSEPORT (TCP only).
    pub reuse_port: Option<bool>,
    /// A socket of its own for each instance (default where possible).
    pub per_instance: Option<bool>,
    /// Take the socket named `name` from a `cutover hold` ("unix:/path").
    pub from: Option<String>,
    /// Programs that receive this socket; all of them when absent.
    pub programs: Option<Vec<String>>,
}
