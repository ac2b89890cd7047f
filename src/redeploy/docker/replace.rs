//! Health-gated replace, for a container that cannot run beside its
//! successor because it publishes host ports (`-p`, compose `ports:`): the
//! engine gives a host port to one running container at a time, and a
//! running container's port bindings cannot change. So the old container
//! stops first, then the new one starts and must become healthy; if it does
//! not, it is removed and the old one is started again (rollback). The time
//! from the stop to a healthy container again is the gap, measured and
//! reported.
//!
//! cutover runs inside the old container, so it cannot stop it and carry on.
//! It starts a one-shot replacer container instead, running the hidden
//! `cutover replace` subcommand with the engine's socket mounted and no
//! network, and waits for its own SIGTERM. The replacer runs the old
//! container's image: that holds this very cutover, at this path, speaking
//! this protocol, while the new image may be broken or hold another
//! version. It is kept as `<name>-replace-<short sha>`, for its log and as
//! the record of the outcome: its exit code 3 (rolled back) makes the old
//! container, started again, refuse that sha instead of replacing itself,
//! failing and coming back in a loop. The next redeploy of another sha
//! removes it.
//!
//! When the container to replace is not the one cutover runs in
//! (`docker.container`), cutover does the replacer's job itself.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointSettings, HostConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StartContainerOptions, StopContainerOptions,
};
use tracing::{debug, info, warn};

use super::container::{connect_networks, hand_over, logs_tail, start_and_wait};
use super::{api_message, connect, short, step};
use crate::config::DockerRedeploy;
use crate::redeploy::{RedeployError, RedeployOutcome};

/// Label of a replacer: the name of the container it replaces.
const REPLACER_OF: &str = "cutover.replacer.of";
/// The replacer's exit code when it rolled back.
const EXIT_ROLLED_BACK: u8 = 3;
/// Before the stop: lets the old cutover record "replacing" in its status
/// first. Not part of the gap.
const GRACE: Duration = Duration::from_millis(500);

/// The host ports the old container publishes, if any: then it cannot run
/// beside its successor. Under `--network host` bindings do not apply (the
/// engine ignores them): that case stays side by side, where `[[listen]]
/// reuse_port` lets both hold the app's port, and without it the new one
/// fails to bind while the old one keeps serving.
pub(super) fn published_ports(old: &ContainerInspectResponse) -> Option<Vec<String>> {
    let host = old.host_config.as_ref()?;
    if host.network_mode.as_deref() == Some("host") {
        return None;
    }
    let mut ports: Vec<String> = Vec::new();
    for (port, bindings) in host.port_bindings.iter().flatten() {
        for b in bindings.iter().flatten() {
            let ip = b.host_ip.as_deref().filter(|ip| !ip.is_empty());
            let host_port = b.host_port.as_deref().unwrap_or_default();
            ports.push(format!("{}:{host_port}->{port}", ip.unwrap_or("*")));
        }
    }
    if host.publish_all_ports == Some(true) {
        ports.push("all exposed ports (-P)".into());
    }
    ports.sort();
    (!ports.is_empty()).then_some(ports)
}

fn replacer_name(name: &str, short_sha: &str) -> String {
    format!("{name}-replace-{short_sha}")
}

/// Before building: the replacers of earlier redeploys of `name`. The one of
/// `short_sha`, if it rolled back, refuses the redeploy; the rest are removed.
pub(super) async fn settle_earlier(
    docker: &Docker,
    name: &str,
    short_sha: &str,
) -> Result<(), RedeployError> {
    let filters = HashMap::from([
        ("label", vec![format!("{REPLACER_OF}={name}")]),
        (
            "status",
            vec!["exited".into(), "created".into(), "dead".into()],
        ),
    ]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let list = docker
        .list_containers(Some(options))
        .await
        .map_err(step("list earlier replacers"))?;
    let this = replacer_name(name, short_sha);
    for c in list {
        let Some(id) = c.id else { continue };
        let is_this = c.names.iter().flatten().any(|n| *n == format!("/{this}"));
        if is_this {
            let state = docker.inspect_container(&id, None).await.ok();
            let code = state.and_then(|i| i.state).and_then(|s| s.exit_code);
            if code == Some(i64::from(EXIT_ROLLED_BACK)) {
                let logs = logs_tail(docker, &id).await;
                return Err(RedeployError::Docker {
                    step: "health-gated replace".into(),
                    message: format!(
                        "the replace by {short_sha} was rolled back before and is not \
                         tried again; remove container {this} to try it again{logs}"
                    ),
                });
            }
        }
        match docker.remove_container(&id, None).await {
            Ok(()) => debug!(id = %short(&id), "redeploy: removed an earlier replacer"),
            Err(e) => debug!("could not remove replacer {id}: {}", api_message(&e)),
        }
    }
    Ok(())
}

/// After the new container is created: joins its extra networks, then has
/// the replacer (or, for another container than cutover's own, this
/// process) stop the old one and start it. The new container is removed if
/// that cannot begin.
#[allow(clippy::too_many_arguments)]
pub(super) async fn begin(
    docker: &Docker,
    cfg: &DockerRedeploy,
    old: &ContainerInspectResponse,
    new_id: &str,
    extra_networks: &[(String, EndpointSettings)],
    image: &str,
    short_sha: &str,
    is_own: bool,
) -> Result<RedeployOutcome, RedeployError> {
    let old_id = old.id.as_deref().unwrap_or_default();
    let old_name = old
        .name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/');
    let outcome = match connect_networks(docker, new_id, extra_networks).await {
        Err(reason) => Err(RedeployError::Docker {
            step: "prepare the new container".into(),
            message: reason.to_string(),
        }),
        Ok(()) if is_own => start_replacer(docker, cfg, old, old_name, new_id, short_sha)
            .await
            .map(|replacer| RedeployOutcome::DockerReplacing {
                replacer,
                image: image.to_string(),
            }),
        Ok(()) => match stop_then_start(docker, old_id, new_id, cfg.health_timeout).await {
            Ok(Replaced::Done { name, gap, .. }) => Ok(RedeployOutcome::DockerReplaced {
                container_id: new_id.to_string(),
                name,
                image: image.to_string(),
                gap: Some(gap),
            }),
            Ok(Replaced::RolledBack { name, reason, gap }) => Err(RedeployError::RolledBack {
                name,
                reason,
                gap_ms: gap.as_millis(),
            }),
            Err(e) => Err(e),
        },
    };
    if outcome.is_err() {
        // Not started, or failed and already removed: either way not needed.
        let force = RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = docker.remove_container(new_id, Some(force)).await;
    }
    outcome
}

/// Creates and starts the replacer; its name.
async fn start_replacer(
    docker: &Docker,
    cfg: &DockerRedeploy,
    old: &ContainerInspectResponse,
    old_name: &str,
    new_id: &str,
    short_sha: &str,
) -> Result<String, RedeployError> {
    let fail = |message: String| RedeployError::Docker {
        step: "start the replacer".into(),
        message,
    };
    let socket = cfg.socket.to_string_lossy().into_owned();
    // The host's side of the socket as mounted here: the replacer's mount.
    let source = old
        .mounts
        .iter()
        .flatten()
        .find(|m| m.destination.as_deref() == Some(socket.as_str()))
        .and_then(|m| m.source.clone())
        .ok_or_else(|| fail(format!("{old_name} has no mount at {socket} to pass on")))?;
    let exe = std::env::current_exe()
        .ok()
        .filter(|p| p.exists())
        .map_or_else(|| "cutover".to_string(), |p| p.display().to_string());
    let timeout = humantime::format_duration(cfg.health_timeout).to_string();
    let old_id = old.id.clone().unwrap_or_default();
    let cmd = [
        "replace", "--engine", &socket, "--old", &old_id, "--new", new_id,
    ];
    let mut cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    cmd.extend(["--health-timeout".to_string(), timeout]);
    let body = ContainerCreateBody {
        image: old.image.clone(),
        entrypoint: Some(vec![exe]),
        cmd: Some(cmd),
        // Whoever may use the socket in the old container may in this one.
        user: old.config.as_ref().and_then(|c| c.user.clone()),
        labels: Some(HashMap::from([(REPLACER_OF.into(), old_name.into())])),
        host_config: Some(HostConfig {
            binds: Some(vec![format!("{source}:{socket}")]),
            group_add: old.host_config.as_ref().and_then(|h| h.group_add.clone()),
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let name = replacer_name(old_name, short_sha);
    let options = CreateContainerOptionsBuilder::new().name(&name).build();
    let created = docker
        .create_container(Some(options), body)
        .await
        .map_err(|e| fail(api_message(&e)))?;
    if let Err(e) = docker
        .start_container(&created.id, None::<StartContainerOptions>)
        .await
    {
        let _ = docker.remove_container(&created.id, None).await;
        return Err(fail(api_message(&e)));
    }
    info!(
        replacer = %name,
        "replacing: container stopping for a health-gated replace (`docker logs {name}` \
         has the result)"
    );
    Ok(name)
}

/// What the replacer did.
#[derive(Debug)]
pub(super) enum Replaced {
    /// The new container is healthy under `name`; the old one is parked.
    Done {
        name: String,
        gap: Duration,
        stopping: Duration,
    },
    /// The new container `name` failed and was removed; the old one runs again.
    RolledBack {
        name: String,
        reason: String,
        gap: Duration,
    },
}

impl fmt::Display for Replaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Replaced::Done {
                name,
                gap,
                stopping,
            } => write!(
                f,
                "replaced: {name} is healthy after a gap of {} ms (stopping the old \
                 container took {} ms)",
                gap.as_millis(),
                stopping.as_millis()
            ),
            Replaced::RolledBack { name, reason, gap } => write!(
                f,
                "rolled back: the new container {name} {reason}; it was removed and the old \
                 container serves again after a gap of {} ms",
                gap.as_millis()
            ),
        }
    }
}

/// Stops the old container, starts the new one and waits until it is
/// healthy, then hands over; if it is not, removes it and starts the old
/// one again. An error leaves the old one stopped only when it says so.
pub(super) async fn stop_then_start(
    docker: &Docker,
    old_id: &str,
    new_id: &str,
    timeout: Duration,
) -> Result<Replaced, RedeployError> {
    let name_of = async |id: &str| {
        let c = docker
            .inspect_container(id, None)
            .await
            .map_err(step("inspect the containers"))?;
        Ok::<_, RedeployError>(
            c.name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
        )
    };
    let old_name = name_of(old_id).await?;
    let new_name = name_of(new_id).await?;
    tokio::time::sleep(GRACE).await;
    info!(old = %old_name, "replace: stopping the old container (its stop timeout applies)");
    let stop_requested = Instant::now();
    docker
        .stop_container(old_id, None::<StopContainerOptions>)
        .await
        .map_err(step("stop the old container (it may still run)"))?;
    let stopping = stop_requested.elapsed();
    info!(new = %new_name, stopping_ms = stopping.as_millis(), "replace: starting the new container");
    match start_and_wait(docker, new_id, &[], timeout).await {
        Ok(()) => {
            let gap = stop_requested.elapsed();
            let name = hand_over(docker, old_id, &old_name, new_id, &new_name).await;
            let done = Replaced::Done {
                name,
                gap,
                stopping,
            };
            info!(gap_ms = gap.as_millis(), "{done}");
            Ok(done)
        }
        Err(reason) => {
            let reason = format!("{reason}{}", logs_tail(docker, new_id).await);
            warn!(new = %new_name, "replace: the new container {reason}; rolling back");
            let force = RemoveContainerOptionsBuilder::new().force(true).build();
            if let Err(e) = docker.remove_container(new_id, Some(force)).await {
                warn!("replace: could not remove {new_name}: {}", api_message(&e));
            }
            if let Err(again) = start_and_wait(docker, old_id, &[], timeout).await {
                return Err(RedeployError::Docker {
                    step: "roll back".into(),
                    message: format!(
                        "the new container {new_name} {reason}; it was removed, and the old \
                         container {old_name} did not come back: it {again}"
                    ),
                });
            }
            let gap = stop_requested.elapsed();
            let rolled_back = Replaced::RolledBack {
                name: new_name,
                reason,
                gap,
            };
            warn!(gap_ms = gap.as_millis(), "{rolled_back}");
            Ok(rolled_back)
        }
    }
}

/// `cutover replace`: what the replacer container is started with.
#[derive(Debug, Clone)]
pub struct ReplacerArgs {
    /// The engine's socket.
    pub engine: PathBuf,
    pub old: String,
    pub new: String,
    pub health_timeout: Duration,
}

/// The replacer's one job; its exit code (0 replaced, 3 rolled back, 1
/// failed) and the result line.
pub async fn run_replacer(args: &ReplacerArgs) -> (u8, String) {
    let docker = match connect(&args.engine).await {
        Ok(d) => d,
        Err(e) => return (1, format!("replace failed: {e}")),
    };
    match stop_then_start(&docker, &args.old, &args.new, args.health_timeout).await {
        Ok(done @ Replaced::Done { .. }) => (0, done.to_string()),
        Ok(back @ Replaced::RolledBack { .. }) => (EXIT_ROLLED_BACK, back.to_string()),
        Err(e) => (1, format!("replace failed: {e}")),
    }
}
