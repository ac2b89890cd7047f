//! Step 3 of the docker redeploy: the new container's configuration,
//! derived from the old one and its image (with `pin` and
//! `keep_docker_socket` applied), and what counts as reaching an engine.
//! Pure functions of the inspected containers, apart from starting anything,
//! so the tests can check every carried-over setting.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{
    ContainerConfig, ContainerCreateBody, ContainerInspectResponse, EndpointSettings, HostConfig,
    ImageConfig, NetworkingConfig,
};

use super::build::COMMIT_LABEL;
use super::dockerfile::DOCKERFILE_LABEL;
use super::short;
use crate::config::{DockerPin, DockerRedeploy};

/// The old container's configuration with the new image; also the networks
/// to connect before start beyond the one the container is created on.
///
/// `pin`ned settings come from the old container whatever the new image
/// says; without `keep_docker_socket` nothing that reaches an engine is
/// carried over: no mount of an engine socket or of a directory holding one
/// ([`reaches_engine`]), no variable that points at one
/// ([`ENGINE_VARIABLES`]). A deployer's `confine` goes further (`confine`).
pub(super) fn new_container_body(
    old: &ContainerInspectResponse,
    old_image: Option<&ImageConfig>,
    image: &str,
    cfg: &DockerRedeploy,
) -> (ContainerCreateBody, Vec<(String, EndpointSettings)>) {
    let c: ContainerConfig = old.config.clone().unwrap_or_default();
    let i = old_image.cloned().unwrap_or_default();
    let old_short = short(old.id.as_deref().unwrap_or_default()).to_string();
    let env = c.env.map(|env| {
        let defaults = i.env.clone().unwrap_or_default();
        env.into_iter()
            .filter(|e| !defaults.contains(e))
            .filter(|e| cfg.keep_docker_socket || !is_engine_variable(e))
            .collect::<Vec<_>>()
    });
    let labels = c.labels.map(|labels| {
        let defaults = i.labels.clone().unwrap_or_default();
        labels
            .into_iter()
            // The new image's own label says what it was built from.
            .filter(|(k, v)| {
                defaults.get(k) != Some(v) && k != DOCKERFILE_LABEL && k != COMMIT_LABEL
            })
            .collect::<HashMap<_, _>>()
    });
    let mut host_config = old.host_config.clone();
    if !cfg.keep_docker_socket
        && let Some(h) = host_config.as_mut()
    {
        drop_engine_mounts(h, &cfg.socket);
    }
    let pinned = |setting| cfg.pin.contains(&setting);
    let mode = host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default();
    let (networking_config, extra) = networks(old, &mode, &old_short);
    let mut body = ContainerCreateBody {
        // Docker's default hostname is the short id: the new one gets its own.
        hostname: c.hostname.filter(|h| *h != old_short),
        domainname: c.domainname,
        user: user(c.user, i.user, pinned(DockerPin::User)),
        attach_stdin: c.attach_stdin,
        attach_stdout: c.attach_stdout,
        attach_stderr: c.attach_stderr,
        exposed_ports: beyond_defaults(c.exposed_ports, i.exposed_ports),
        tty: c.tty,
        open_stdin: c.open_stdin,
        stdin_once: c.stdin_once,
        env,
        cmd: command_part(c.cmd, i.cmd, pinned(DockerPin::Cmd)),
        healthcheck: own(c.healthcheck, i.healthcheck),
        args_escaped: c.args_escaped,
        image: Some(image.to_string()),
        volumes: beyond_defaults(c.volumes, i.volumes),
        working_dir: own(c.working_dir, i.working_dir),
        entrypoint: command_part(c.entrypoint, i.entrypoint, pinned(DockerPin::Entrypoint)),
        network_disabled: c.network_disabled,
        on_build: None,
        labels,
        stop_signal: own(c.stop_signal, i.stop_signal),
        stop_timeout: c.stop_timeout,
        shell: own(c.shell, i.shell),
        host_config,
        networking_config,
    };
    if let Some(rules) = &cfg.confine {
        super::confine::confine(&mut body, rules);
    }
    (body, extra)
}

/// Keeps only what the container set beyond its image's defaults.
fn own<T: PartialEq>(value: Option<T>, image: Option<T>) -> Option<T> {
    match (value, image) {
        (Some(v), Some(i)) if v == i => None,
        (v, _) => v,
    }
}

/// The container's entries that its image does not list already; none when
/// that leaves none.
fn beyond_defaults<T: PartialEq>(values: Option<Vec<T>>, image: Option<Vec<T>>) -> Option<Vec<T>> {
    values
        .map(|values| {
            let defaults = image.unwrap_or_default();
            values
                .into_iter()
                .filter(|v| !defaults.contains(v))
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
}

/// An empty user is the image's default: pin root explicitly, by number
/// (a name is looked up in the new image's /etc/passwd).
fn user(user: Option<String>, image: Option<String>, pinned: bool) -> Option<String> {
    if pinned {
        Some(
            user.filter(|u| !u.is_empty())
                .unwrap_or_else(|| "0:0".into()),
        )
    } else {
        own(user, image)
    }
}

/// The entrypoint or the cmd. An empty (not absent) one keeps the image's
/// from applying.
fn command_part(
    value: Option<Vec<String>>,
    image: Option<Vec<String>>,
    pinned: bool,
) -> Option<Vec<String>> {
    if pinned {
        Some(value.unwrap_or_default())
    } else {
        own(value, image)
    }
}

/// Drops the bind mounts and mounts that reach an engine, from either side.
fn drop_engine_mounts(h: &mut HostConfig, socket: &Path) {
    if let Some(binds) = h.binds.as_mut() {
        binds.retain(|bind| {
            let mut parts = bind.split(':');
            let (src, dst) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            !(reaches_engine(src, socket) || reaches_engine(dst, socket))
        });
    }
    if let Some(mounts) = h.mounts.as_mut() {
        mounts.retain(|m| {
            ![&m.source, &m.target]
                .iter()
                .any(|p| p.as_deref().is_some_and(|p| reaches_engine(p, socket)))
        });
    }
}

/// The old container's networks for the new one, without the old short id
/// among the aliases: the one to create it on (for a user-defined network
/// mode), and the others to join before it starts.
fn networks(
    old: &ContainerInspectResponse,
    mode: &str,
    old_short: &str,
) -> (Option<NetworkingConfig>, Vec<(String, EndpointSettings)>) {
    let mut primary = None;
    let mut extra = Vec::new();
    // Host, none, container:<id> and the default bridge take no endpoint settings.
    let user_network = !matches!(mode, "" | "default" | "bridge" | "host" | "none")
        && !mode.starts_with("container:");
    // A container on the host's or another container's network joins no other.
    let joins_more = !matches!(mode, "host" | "none") && !mode.starts_with("container:");
    let networks = old
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default();
    for (name, settings) in networks {
        let aliases = settings.aliases.map(|a| {
            a.into_iter()
                .filter(|alias| *alias != old_short)
                .collect::<Vec<_>>()
        });
        let endpoint = EndpointSettings {
            aliases,
            links: settings.links,
            driver_opts: settings.driver_opts,
            ..Default::default()
        };
        if name == mode && user_network {
            primary = Some((name, endpoint));
        } else if name != mode && joins_more && !matches!(name.as_str(), "bridge" | "host" | "none")
        {
            extra.push((name, endpoint));
        }
    }
    let networking_config = primary.map(|(name, endpoint)| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(name, endpoint)])),
    });
    (networking_config, extra)
}

/// Where container engines put their API sockets on a host (and in this
/// container, for the configured `socket`).
const ENGINE_SOCKETS: &[&str] = &[
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/run/containerd/containerd.sock",
    "/run/containerd/containerd.sock",
    "/var/run/podman/podman.sock",
    "/run/podman/podman.sock",
    "/run/buildkit/buildkitd.sock",
    "/var/run/cri-dockerd.sock",
    "/run/cri-dockerd.sock",
];
/// Engine sockets by name, wherever they are mounted from or to.
const ENGINE_SOCKET_NAMES: &[&str] = &[
    "docker.sock",
    "containerd.sock",
    "podman.sock",
    "buildkitd.sock",
    "cri-dockerd.sock",
    "dockershim.sock",
];
/// Variables that point a client at an engine (or carry its credentials).
pub(super) const ENGINE_VARIABLES: &[&str] = &[
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "CONTAINERD_ADDRESS",
    "CONTAINER_HOST",
    "BUILDKIT_HOST",
];

/// A mount source or target that gives access to an engine: an engine
/// socket itself (the configured one, a known path, a known name), or a
/// directory that holds one (`-v /var/run:/var/run`, `-v /:/host`).
pub(super) fn reaches_engine(path: &str, socket: &Path) -> bool {
    let trimmed = path.trim_end_matches('/');
    if path.is_empty() {
        return false;
    }
    if trimmed.is_empty() {
        return true; // the root: everything under it
    }
    let path = Path::new(trimmed);
    let named = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| ENGINE_SOCKET_NAMES.contains(&n));
    named
        || ENGINE_SOCKETS
            .iter()
            .map(Path::new)
            .chain([socket])
            .any(|engine| engine.starts_with(path))
}

/// An environment entry (`NAME=value`) that points at an engine.
pub(super) fn is_engine_variable(entry: &str) -> bool {
    let name = entry.split_once('=').map_or(entry, |(name, _)| name);
    ENGINE_VARIABLES.contains(&name)
}
