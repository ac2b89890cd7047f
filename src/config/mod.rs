//! The validated configuration: what cutover runs and how.
//!
//! `raw` mirrors the TOML, `validate` turns it into these types and collects
//! every problem, `problems` renders them with file:line:col. Everything here
//! is checked before anything starts, so a broken config starts nothing.

mod deployer;
mod docker_redeploy;
mod environments;
mod fingerprints;
mod known_hosts;
mod load;
mod problems;
mod program;
mod raw;
mod redeploy;
pub mod remote_url;
mod sections;
mod source;
mod validate;
mod values;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

pub use crate::process::spawn::ChildEnv;
pub use crate::process::user::RunAs;
pub use deployer::{Confinement, DeployerConfig, Keep};
pub use docker_redeploy::{DockerPin, DockerRedeploy};
pub use problems::ConfigError;
pub use source::proxy_variables;

use crate::fingerprint::Patterns;

/// Default path of the control socket (`[control] socket`).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/cutover.sock";

/// The control socket when `[control] socket` is not set: /run/cutover.sock
/// for root; for another user (a container run with `--user 1000:1000`, as
/// `cutover deployer` starts them), who cannot create it there,
/// /tmp/cutover-<uid>.sock. `docker exec` clients run as the same user by
/// default, so they find the same one.
pub fn default_control_socket() -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        PathBuf::from(DEFAULT_CONTROL_SOCKET)
    } else {
        std::env::temp_dir().join(format!("cutover-{uid}.sock"))
    }
}
/// Default path of the image's dependency fingerprint (`[dependencies] baseline`).
pub const DEFAULT_DEPENDENCIES_BASELINE: &str = "/etc/cutover/dependencies";

#[derive(Debug, Clone)]
pub struct Config {
    pub programs: Vec<ProgramConfig>,
    pub control: ControlConfig,
    pub reload: ReloadConfig,
    pub listen: Vec<ListenConfig>,
    pub source: Option<SourceConfig>,
    pub hooks: HooksConfig,
    /// A release that crashes within this time after its cutover is rolled back.
    pub rollback_window: Duration,
    /// Which files need a new image when they change; defaults when absent.
    pub dependencies: DependenciesConfig,
    /// What to do when a release needs a new image (`[redeploy]`).
    pub redeploy: Option<RedeployConfig>,
    /// Variables the config names as secret sources (`token_env`,
    /// `webhook_secret_env`, ...): read once at load, never passed to a
    /// child. Already in every `ChildEnv::withheld` below.
    pub secret_env: Vec<String>,
}

/// `[redeploy]`: how cutover gets a new image when a release's dependencies
/// differ from the image's. Run by `crate::redeploy::Redeploy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedeployConfig {
    pub action: RedeployAction,
    /// A failed redeploy is retried after 1 s, doubling up to this.
    pub retry_max: Duration,
}

/// Exactly one of the `[redeploy]` actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeployAction {
    /// Run a command with CUTOVER_SHA, CUTOVER_REF and CUTOVER_CHANGED_FILES.
    Command {
        command: Vec<String>,
        timeout: Duration,
        /// `[redeploy] user`, else the hooked program's user.
        user: Option<RunAs>,
        /// Cutover's environment minus the secrets.
        env: ChildEnv,
    },
    /// POST a JSON body to a URL.
    Webhook(WebhookTarget),
    /// Build a new image and replace this container through the Docker API.
    Docker(DockerRedeploy),
    /// Ask a `cutover deployer` (which alone holds the engine's socket) to
    /// build the release and replace this container.
    /// `timeout` bounds the wait for its answer (a build, then the health-
    /// gated replace, which ends this container before any answer).
    Deployer { socket: PathBuf, timeout: Duration },
    /// Stop gracefully and exit with this code (1..=255).
    Exit(u8),
}

/// `[redeploy] webhook`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// `http://` or `https://`.
    pub url: String,
    /// Signs the body: `X-Cutover-Signature-256: sha256=<hex HMAC-SHA256>`.
    pub secret: Option<Secret>,
    pub timeout: Duration,
}

/// `[dependencies]`: the files whose fingerprint must match the image's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependenciesConfig {
    /// Globs relative to the release (`crate::fingerprint::DEFAULT_PATTERNS`).
    pub patterns: Patterns,
    /// The fingerprint baked into the image (`cutover fingerprint --write`).
    pub baseline: PathBuf,
}

impl Default for DependenciesConfig {
    fn default() -> Self {
        DependenciesConfig {
            patterns: Patterns::default(),
            baseline: PathBuf::from(DEFAULT_DEPENDENCIES_BASELINE),
        }
    }
}

/// Where the code comes from when cutover pulls it from git itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// As written; may hold credentials, so show it only through `redacted_repo`.
    pub repo: String,
    pub git_ref: String,
    /// The volume: releases/<sha>/, the `current` symlink, cutover's cache and history.
    pub root: PathBuf,
    pub poll: Option<Duration>,
    pub keep: u32,
    /// 0 for a full fetch.
    pub depth: u32,
    /// A deploy key (OpenSSH private key file) for an ssh remote.
    pub ssh_key: Option<PathBuf>,
    /// The ssh server's keys; `None`: `~/.ssh/known_hosts`, then the system's.
    pub known_hosts: Option<PathBuf>,
    /// ssh only: take the server's host key unchecked. https is always verified.
    pub insecure_ignore_host_key: bool,
    /// A private CA for an https remote, added to the system store.
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    /// An https token, read from the environment or a file when the config loads.
    pub token: Option<Secret>,
    pub webhook: Option<SocketAddr>,
    pub webhook_secret: Option<Secret>,
    /// What one commit may write before it is refused as hostile or broken.
    pub limits: ReleaseLimits,
}

/// `[source] max_files`, `max_bytes`, `max_file_size`, `max_depth`: a git
/// bomb (a few KB of objects naming millions of paths) or one huge blob is
/// refused before it exhausts the memory or the disk of PID 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseLimits {
    /// Paths (files, symlinks and directories) in the tree.
    pub files: u64,
    /// Sum of all blob sizes.
    pub bytes: u64,
    /// The largest blob.
    pub file_size: u64,
    /// Path components of the deepest entry.
    pub depth: u64,
}

impl Default for ReleaseLimits {
    fn default() -> ReleaseLimits {
        ReleaseLimits {
            files: 100_000,
            bytes: 2 << 30,
            file_size: 512 << 20,
            depth: 64,
        }
    }
}

/// A credential; its Debug and Display never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HooksConfig {
    pub before_cutover: Vec<Vec<String>>,
    pub after_cutover: Vec<Vec<String>>,
    /// Per hook.
    pub timeout: Duration,
    /// The program the hooks serve (`[hooks] program`, default the first):
    /// they run as its user, in its environment.
    pub program: Option<String>,
    /// That program's environment plus `[hooks] env`.
    pub env: ChildEnv,
    /// That program's user.
    pub user: Option<RunAs>,
}

#[derive(Debug, Clone)]
pub struct ProgramConfig {
    pub name: String,
    pub command: Vec<String>,
    pub workdir: Option<PathBuf>,
    /// `env`, `env_clear`, `pass_env`, and the secrets it never gets.
    pub env: ChildEnv,
    pub user: Option<RunAs>,
    pub restart: RestartPolicy,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub backoff: Backoff,
    pub reload: ReloadStrategy,
    /// How long an old instance keeps its accepted connections, with no new
    /// ones reaching it, before its stop signal.
    pub drain: Duration,
    pub ready: ReadyConfig,
    /// Who receives the signals cutover forwards (USR1, USR2, WINCH, ...).
    pub forward_to: ForwardTo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardTo {
    /// The program's whole process group (like `tini -g`).
    Group,
    /// Only the process cutover started. Right for gunicorn, whose workers
    /// die of a HUP or USR2 meant for the master.
    Main,
}

/// How a program takes new code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadStrategy {
    /// Send this signal to the program's main process; it reloads itself
    /// (gunicorn, uWSGI, nginx, puma). Then check readiness.
    Signal(Signal),
    /// Graceful stop, then start again.
    Restart,
    /// Start a new instance beside the old one, wait until it is ready, then
    /// stop the old one. A new instance that fails changes nothing.
    Overlap,
    /// Not reloaded (a sidecar that keeps running across code changes).
    None,
}

impl ReloadStrategy {
    pub fn name(self) -> &'static str {
        match self {
            ReloadStrategy::Signal(_) => "signal",
            ReloadStrategy::Restart => "restart",
            ReloadStrategy::Overlap => "overlap",
            ReloadStrategy::None => "none",
        }
    }
}

/// When an instance counts as ready. All configured checks must pass, in
/// order: sd_notify READY=1, surviving `grace`, then http/tcp/command polled
/// every `interval`, all within `timeout`. `grace` (None: not set) is 0
/// where the check speaks for the instance alone (READY=1 from its own
/// NOTIFY_SOCKET, or http/tcp probes steered to its own per-instance
/// socket), else 1 s: on a shared socket a crashing new instance is told
/// from the old one still answering there only by surviving that long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyConfig {
    pub http: Option<HttpTarget>,
    pub tcp: Option<String>,
    pub command: Option<Vec<String>>,
    pub notify: bool,
    pub timeout: Duration,
    pub interval: Duration,
    pub grace: Option<Duration>,
}

impl ReadyConfig {
    /// Whether any check can be asked again at any time (notify cannot).
    pub fn polls(&self) -> bool {
        self.http.is_some() || self.tcp.is_some() || self.command.is_some()
    }
}

impl Default for ReadyConfig {
    fn default() -> Self {
        ReadyConfig {
            http: None,
            tcp: None,
            command: None,
            notify: false,
            timeout: Duration::from_secs(30),
            interval: Duration::from_millis(50),
            grace: None,
        }
    }
}

/// `http://host:port/path`, split for a plain HTTP/1.1 GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub authority: String,
    pub path: String,
}

impl HttpTarget {
    pub fn parse(url: &str) -> Result<HttpTarget, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!(
                "`{url}`: only http:// URLs are supported (the check runs inside the container)"
            )
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !authority.ends_with(']')
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(HttpTarget {
            authority,
            path: path.to_string(),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }
}

/// Triggers shared by every program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadConfig {
    /// Files whose creation, modification, touch or replacement triggers a reload.
    pub touch: Vec<PathBuf>,
    /// Dev mode: glob patterns (relative to `watch_root`) whose changes trigger.
    pub watch: Vec<String>,
    pub watch_root: Option<PathBuf>,
    pub debounce: Duration,
    /// The default of every program's `drain`.
    pub drain: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            touch: Vec::new(),
            watch: Vec::new(),
            watch_root: None,
            debounce: Duration::from_millis(200),
            drain: Duration::from_millis(500),
        }
    }
}

/// A socket cutover binds once and passes to programs as fd 3, 4, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    pub name: String,
    pub address: ListenAddress,
    pub backlog: u32,
    /// SO_REUSEPORT: another process of the same user (a replacement
    /// container on the host network) may bind the same address meanwhile.
    pub reuse_port: bool,
    /// Programs that receive it; every program when `None`.
    pub programs: Option<Vec<String>>,
    /// Each instance gets a socket of its own in one SO_REUSEPORT group, so
    /// that traffic can be steered to one instance and drained from another.
    /// Otherwise every instance shares the one socket.
    pub per_instance: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// Taken from the `cutover hold` listening on this unix socket.
    Holder(PathBuf),
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddress::Tcp(a) => write!(f, "{a}"),
            ListenAddress::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddress::Holder(p) => write!(f, "from the holder at {}", p.display()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Exit with the program's status when it ends (the default, like tini).
    Never,
    /// Restart after a non-zero exit or a death by signal.
    OnFailure,
    /// Restart whenever it ends, except when cutover stops it.
    Always,
}

/// Restart pacing: exponential backoff with a crash-loop limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// A program that stayed up this long starts again from `initial`.
    pub reset_after: Duration,
    /// Give up after this many failures within `window`.
    pub limit: u32,
    pub window: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
            limit: 5,
            window: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub socket: PathBuf,
    /// Optional HTTP endpoint: /healthz, /status, /metrics.
    pub http: Option<SocketAddr>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: default_control_socket(),
            http: None,
        }
    }
}
