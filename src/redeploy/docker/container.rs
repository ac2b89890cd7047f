//! Steps 4 and 5 of the docker redeploy: starting the new container (its
//! configuration comes from `carry_over`) and waiting for health, and the
//! hand-over (rename, restart policy, stop) while the old one still serves;
//! earlier predecessors are found by exact name. The health-gated replace
//! (`replace`) reuses them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    ContainerStateStatusEnum, ContainerUpdateBody, EndpointSettings, HealthStatusEnum,
    NetworkConnectRequest, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    ListContainersOptionsBuilder, LogsOptionsBuilder, RenameContainerOptionsBuilder,
    StartContainerOptions,
};
use futures_util::StreamExt;
use tracing::{debug, info, warn};

use super::{POLL, SETTLE, TAIL_LINES, api_message, short};

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
