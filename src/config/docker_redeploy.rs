//! `[redeploy] docker = { ... }`, also the build and replace of a
//! `[deployer]`: building the release's image and replacing the container
//! through the engine's API. Its settings, validated.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::Confinement;
use super::problems::{Problems, Segment};
use super::raw::RawDocker;
use super::values::{child, parse_duration, scalar_string};

/// Default Docker engine socket.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(120);

/// `[redeploy] docker = { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerRedeploy {
    /// The Docker engine's unix socket.
    pub socket: PathBuf,
    /// Relative to the release directory (the build context).
    pub dockerfile: String,
    pub build_args: Vec<(String, String)>,
    /// Repository of the new image, tagged with the short sha; default: the
    /// repository of the current container's image.
    pub image: Option<String>,
    /// Name or id of the container to replace; default: the one cutover runs in.
    pub container: Option<String>,
    /// How long the new container may take to become healthy.
    pub health_timeout: Duration,
    /// Network for the build's RUN steps (`host`, `none`, a network name);
    /// the engine's default (`default`, the bridge) when `None`.
    pub build_network: Option<String>,
    /// Taken from the old container whatever the new image says.
    pub pin: Vec<DockerPin>,
    /// Build even when the release's Dockerfile differs from the one the
    /// running image was built from (default: refuse).
    pub allow_dockerfile_change: bool,
    /// Keep mounts of the Docker socket in the new container (default: yes,
    /// so it can redeploy again).
    pub keep_docker_socket: bool,
    /// Set by `cutover deployer` only: what the new container may not have.
    pub confine: Option<Confinement>,
}

/// `[redeploy] docker.pin`: a setting of the old container that the new one
/// keeps even when the new image's Dockerfile sets another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerPin {
    User,
    Entrypoint,
    Cmd,
}

/// The `docker` table at `path`, every problem recorded; the app's
/// `[redeploy]` and `[deployer]` (which then confines it) share it.
pub(super) fn docker_action(
    path: &[Segment],
    raw: RawDocker,
    p: &mut Problems,
) -> Option<DockerRedeploy> {
    let socket = docker_socket(path, raw.socket.as_deref(), p);
    let dockerfile = raw.dockerfile.unwrap_or_else(|| "Dockerfile".to_string());
    if dockerfile.trim().is_empty()
        || dockerfile.starts_with('/')
        || dockerfile.split('/').any(|c| c == "..")
    {
        p.add(
            &child(path, "dockerfile"),
            format!("`{dockerfile}` must be a path inside the release, like \"Dockerfile\""),
        );
    }
    let build_args = build_args(path, raw.build_args, p);
    if let Some(image) = &raw.image
        && let Err(e) = check_repository(image)
    {
        p.add(&child(path, "image"), e);
    }
    if raw
        .container
        .as_deref()
        .is_some_and(|c| c.trim().is_empty())
    {
        p.add(&child(path, "container"), "empty container name");
    }
    if let Some(n) = &raw.build_network
        && (n.trim().is_empty() || n.trim() != n)
    {
        p.add(
            &child(path, "build_network"),
            format!("`{n}` is not a network: \"host\", \"none\", \"default\" or a network name"),
        );
    }
    let health_timeout = match raw.health_timeout {
        None => Some(DEFAULT_HEALTH_TIMEOUT),
        Some(t) => p.check(&child(path, "health_timeout"), parse_duration(&t)),
    };
    let pin = docker_pins(path, raw.pin.unwrap_or_default(), p);
    Some(DockerRedeploy {
        socket,
        dockerfile,
        build_args,
        image: raw.image,
        container: raw.container,
        health_timeout: health_timeout?,
        build_network: raw.build_network,
        pin,
        allow_dockerfile_change: raw.allow_dockerfile_change.unwrap_or(false),
        keep_docker_socket: raw.keep_docker_socket.unwrap_or(true),
        confine: None,
    })
}

/// `socket`, default /var/run/docker.sock; a `unix://` prefix (as in
/// DOCKER_HOST) is taken too.
fn docker_socket(path: &[Segment], raw: Option<&str>, p: &mut Problems) -> PathBuf {
    let socket = PathBuf::from(
        raw.map(|s| s.trim_start_matches("unix://"))
            .unwrap_or(DEFAULT_DOCKER_SOCKET),
    );
    if socket.is_relative() {
        p.add(
            &child(path, "socket"),
            format!("`{}` is not an absolute path", socket.display()),
        );
    }
    socket
}

/// `build_args`: values may be strings, numbers or booleans; every bad one
/// is reported.
fn build_args(
    path: &[Segment],
    raw: BTreeMap<String, toml::Value>,
    p: &mut Problems,
) -> Vec<(String, String)> {
    let mut build_args = Vec::new();
    for (k, v) in raw {
        let at = child(&child(path, "build_args"), &k);
        let Some(value) = p.check(&at, scalar_string(v)) else {
            continue;
        };
        if k.is_empty() || k.contains('=') {
            p.add(&at, "build argument names must be non-empty without `=`");
            continue;
        }
        build_args.push((k, value));
    }
    build_args
}

/// `pin`: each setting once.
fn docker_pins(path: &[Segment], names: Vec<String>, p: &mut Problems) -> Vec<DockerPin> {
    let mut pin = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match docker_pin(name) {
            Ok(setting) if pin.contains(&setting) => {
                p.add(&child(path, "pin"), format!("`{name}` is listed twice"));
            }
            Ok(setting) => pin.push(setting),
            Err(e) => p.add(&[child(path, "pin"), vec![Segment::Index(i)]].concat(), e),
        }
    }
    pin
}

/// One `pin` entry.
fn docker_pin(name: &str) -> Result<DockerPin, String> {
    match name {
        "user" => Ok(DockerPin::User),
        "entrypoint" => Ok(DockerPin::Entrypoint),
        "cmd" => Ok(DockerPin::Cmd),
        other => Err(format!(
            "`{other}` cannot be pinned: give \"user\", \"entrypoint\" or \"cmd\""
        )),
    }
}

/// A repository without a tag: `name`, `org/name`, `registry:5000/org/name`.
fn check_repository(image: &str) -> Result<(), String> {
    let last = image.rsplit('/').next().unwrap_or("");
    let ok = !image.is_empty()
        && !last.is_empty()
        && !last.contains(':')
        && !image.contains('@')
        && image
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{image}` is not an image repository like \"org/app\" \
             (lowercase, no tag: the tag is the short sha)"
        ))
    }
}
