//! Steps 3 to 5 of the docker redeploy: the new container's configuration
//! derived from the old one (with `pin` and `keep_docker_socket` applied),
//! starting it and waiting for health, and the hand-over (rename, restart
//! policy, stop) while the old one still serves; earlier predecessors are
//! found by exact name. The health-gated replace (`replace`) reuses them.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    ContainerConfig, ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum,
    ContainerUpdateBody, EndpointSettings, HealthStatusEnum, ImageConfig, NetworkConnectRequest,
    NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    ListContainersOptionsBuilder, LogsOptionsBuilder, RenameContainerOptionsBuilder,
    StartContainerOptions,
};
use futures_util::StreamExt;
use tracing::{debug, info, warn};

use super::build::COMMIT_LABEL;
use super::dockerfile::DOCKERFILE_LABEL;
use super::{POLL, SETTLE, TAIL_LINES, api_message, short};
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
    // Keep only what the container set beyond its image's defaults.
    fn own<T: PartialEq>(value: Option<T>, image: Option<T>) -> Option<T> {
        match (value, image) {
            (Some(v), Some(i)) if v == i => None,
            (v, _) => v,
        }
    }
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
    let exposed_ports = c.exposed_ports.map(|ports| {
        let defaults = i.exposed_ports.clone().unwrap_or_default();
        ports
            .into_iter()
            .filter(|p| !defaults.contains(p))
            .collect::<Vec<_>>()
    });
    let volumes = c.volumes.map(|volumes| {
        let defaults = i.volumes.clone().unwrap_or_default();
        volumes
            .into_iter()
            .filter(|v| !defaults.contains(v))
            .collect::<Vec<_>>()
    });
    let mut host_config = old.host_config.clone();
    if !cfg.keep_docker_socket
        && let Some(h) = host_config.as_mut()
    {
        let socket = cfg.socket.as_path();
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
    let pinned = |setting| cfg.pin.contains(&setting);
    // An empty user is the image's default: pin root explicitly, by number
    // (a name is looked up in the new image's /etc/passwd).
    let user = if pinned(DockerPin::User) {
        Some(
            c.user
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "0:0".into()),
        )
    } else {
        own(c.user, i.user)
    };
    // An empty (not absent) entrypoint or cmd keeps the image's from applying.
    let entrypoint = if pinned(DockerPin::Entrypoint) {
        Some(c.entrypoint.unwrap_or_default())
    } else {
        own(c.entrypoint, i.entrypoint)
    };
    let cmd = if pinned(DockerPin::Cmd) {
        Some(c.cmd.unwrap_or_default())
    } else {
        own(c.cmd, i.cmd)
    };
    let mode = host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default();
    let mut primary = None;
    let mut extra = Vec::new();
    // Host, none, container:<id> and the default bridge take no endpoint settings.
    let user_network = !matches!(mode.as_str(), "" | "default" | "bridge" | "host" | "none")
        && !mode.starts_with("container:");
    // A container on the host's or another container's network joins no other.
    let joins_more = !matches!(mode.as_str(), "host" | "none") && !mode.starts_with("container:");
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
    let mut body = ContainerCreateBody {
        // Docker's default hostname is the short id: the new one gets its own.
        hostname: c.hostname.filter(|h| *h != old_short),
        domainname: c.domainname,
        user,
        attach_stdin: c.attach_stdin,
        attach_stdout: c.attach_stdout,
        attach_stderr: c.attach_stderr,
        exposed_ports: exposed_ports.filter(|p| !p.is_empty()),
        tty: c.tty,
        open_stdin: c.open_stdin,
        stdin_once: c.stdin_once,
        env,
        cmd,
        healthcheck: own(c.healthcheck, i.healthcheck),
        args_escaped: c.args_escaped,
        image: Some(image.to_string()),
        volumes: volumes.filter(|v| !v.is_empty()),
        working_dir: own(c.working_dir, i.working_dir),
        entrypoint,
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

/// Joins the networks beyond the one the container was created on.
pub(super) async fn connect_networks(
    docker: &Docker,
    id: &str,
    extra_networks: &[(String, EndpointSettings)],
) -> Result<(), NotUp> {
    for (network, endpoint) in extra_networks {
        docker
            .connect_network(
                network,
                NetworkConnectRequest {
                    container: id.to_string(),
                    endpoint_config: Some(endpoint.clone()),
                },
            )
            .await
            .map_err(|e| NotUp::NetworkNotJoined {
                network: network.clone(),
                message: api_message(&e),
            })?;
    }
    Ok(())
}

/// Starts a container (the new one; the old one in a rollback) and waits
/// until it counts as up; the reason if not.
pub(super) async fn start_and_wait(
    docker: &Docker,
    id: &str,
    extra_networks: &[(String, EndpointSettings)],
    timeout: Duration,
) -> Result<(), NotUp> {
    connect_networks(docker, id, extra_networks).await?;
    docker
        .start_container(id, None::<StartContainerOptions>)
        .await
        .map_err(|e| NotUp::NotStarted(api_message(&e)))?;
    let started = Instant::now();
    let settle = SETTLE.min(timeout);
    loop {
        let state = docker
            .inspect_container(id, None)
            .await
            .map_err(|e| NotUp::NotInspected(api_message(&e)))?
            .state
            .unwrap_or_default();
        let running = state.running == Some(true) && state.restarting != Some(true);
        if !running {
            return Err(NotUp::Stopped {
                status: state.status.unwrap_or(ContainerStateStatusEnum::EMPTY),
                exit_code: state.exit_code.unwrap_or(-1),
                error: state.error.filter(|e| !e.is_empty()),
            });
        }
        let health = state.health.as_ref();
        let health_status = health.and_then(|h| h.status);
        match health_status {
            Some(HealthStatusEnum::HEALTHY) => return Ok(()),
            Some(HealthStatusEnum::UNHEALTHY) => {
                let last = health
                    .and_then(|h| h.log.as_ref())
                    .and_then(|log| log.last())
                    .and_then(|r| r.output.clone())
                    .unwrap_or_default();
                return Err(NotUp::Unhealthy {
                    last: last.trim().to_string(),
                });
            }
            Some(HealthStatusEnum::STARTING) => {}
            // No healthcheck: running long enough is all there is to check.
            _ if started.elapsed() >= settle => return Ok(()),
            _ => {}
        }
        if started.elapsed() >= timeout {
            return Err(NotUp::NotHealthyWithin { timeout });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Why a container did not come up; it reads after the container's name
/// ("the new container <name> <why>").
#[derive(Debug, thiserror::Error)]
pub(super) enum NotUp {
    #[error("could not join network {network}: {message}")]
    NetworkNotJoined { network: String, message: String },
    #[error("did not start: {0}")]
    NotStarted(String),
    #[error("could not be inspected: {0}")]
    NotInspected(String),
    #[error("stopped ({status}, exit code {exit_code}){}", after_colon(.error.as_deref()))]
    Stopped {
        status: ContainerStateStatusEnum,
        exit_code: i64,
        error: Option<String>,
    },
    /// `last` is the last health check's output, trimmed.
    #[error("is unhealthy: {last:?}")]
    Unhealthy { last: String },
    #[error("did not become healthy within {}", humantime::format_duration(*.timeout))]
    NotHealthyWithin { timeout: Duration },
}

/// ": <error>", or nothing without one.
fn after_colon(error: Option<&str>) -> String {
    error.map(|e| format!(": {e}")).unwrap_or_default()
}

/// "\nlast log lines" of a container, or nothing.
pub(super) async fn logs_tail(docker: &Docker, id: &str) -> String {
    let options = LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .tail(&TAIL_LINES.to_string())
        .build();
    let mut stream = docker.logs(id, Some(options));
    let mut text = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        text.push_str(&chunk.to_string());
    }
    let text = text.trim_end();
    if text.is_empty() {
        String::new()
    } else {
        format!("; its last log lines:\n{text}")
    }
}

/// Renames while both run, so the old name passes to the new container with
/// no moment where neither has it; disables the old one's restart policy.
/// Returns the new container's final name.
pub(super) async fn hand_over(
    docker: &Docker,
    old_id: &str,
    old_name: &str,
    new_id: &str,
    new_name: &str,
) -> String {
    remove_stopped_predecessors(docker, old_name).await;
    let parked = format!("{old_name}-replaced-{}", short(old_id));
    let rename = |id: String, name: String| async move {
        docker
            .rename_container(
                &id,
                RenameContainerOptionsBuilder::new().name(&name).build(),
            )
            .await
            .map_err(|e| api_message(&e))
    };
    let mut name = new_name.to_string();
    match rename(old_id.to_string(), parked.clone()).await {
        Err(e) => warn!(
            "redeploy: could not rename {old_name} to {parked} ({e}); the new container keeps the name {new_name}"
        ),
        Ok(()) => match rename(new_id.to_string(), old_name.to_string()).await {
            Ok(()) => name = old_name.to_string(),
            Err(e) => {
                warn!(
                    "redeploy: could not rename {new_name} to {old_name} ({e}); it keeps its name"
                );
                let _ = rename(old_id.to_string(), old_name.to_string()).await;
            }
        },
    }
    let no_restart = ContainerUpdateBody {
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        ..Default::default()
    };
    if let Err(e) = docker.update_container(old_id, no_restart).await {
        warn!(
            "redeploy: could not clear the old container's restart policy: {}",
            api_message(&e)
        );
    }
    name
}

/// Whether a container named `names` (as listed: with a leading `/`) is a
/// predecessor of `name` parked by [`hand_over`]: `/<name>-replaced-<short id>`,
/// compared exactly (the engine's `name` filter is a regex, where the `.` of
/// `app.1` also matches the `x` of `appx1`).
pub(super) fn is_parked_predecessor(names: &[String], name: &str) -> bool {
    names.iter().any(|n| {
        n.strip_prefix('/')
            .and_then(|n| n.strip_prefix(name))
            .and_then(|rest| rest.strip_prefix("-replaced-"))
            .is_some_and(|id| id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

/// Stopped `<name>-replaced-*` containers left by earlier redeploys.
pub(super) async fn remove_stopped_predecessors(docker: &Docker, name: &str) {
    // The engine's filter narrows the list; `is_parked_predecessor` decides.
    let filters = HashMap::from([
        (
            "name",
            vec![format!("^/{}-replaced-", name.replace('.', "\\."))],
        ),
        ("status", vec!["exited".to_string(), "created".to_string()]),
    ]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let Ok(list) = docker.list_containers(Some(options)).await else {
        return;
    };
    for c in list {
        if !is_parked_predecessor(c.names.as_deref().unwrap_or_default(), name) {
            debug!(names = ?c.names, "redeploy: not a predecessor of {name}, kept");
            continue;
        }
        if let Some(id) = c.id {
            let removed = docker
                .remove_container(
                    &id,
                    None::<bollard::query_parameters::RemoveContainerOptions>,
                )
                .await;
            match removed {
                Ok(()) => {
                    info!(id = %short(&id), "redeploy: removed an earlier replaced container")
                }
                Err(e) => debug!("could not remove {id}: {}", api_message(&e)),
            }
        }
    }
}
