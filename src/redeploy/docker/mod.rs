//! `[redeploy] docker`: build a new image from the release and replace this
//! container with one that runs it, through the Docker Engine API on a
//! mounted socket (bollard). The API version is negotiated, so an engine
//! that speaks only 1.41 (Debian's 20.10) works.
//!
//! Steps, each of which leaves the old container serving if it fails:
//! 1. Find the container to replace: `docker.container` if set, else the one
//!    cutover runs in (the `/var/lib/docker/containers/<id>/` mounts in
//!    /proc/self/mountinfo, else the hostname, which Docker sets to the
//!    short id unless `--hostname` was given).
//! 2. Unless `allow_dockerfile_change`, refuse a release whose Dockerfile
//!    differs from the one the running image was built from (see
//!    `dockerfile`). Build `<image>:<short sha>` from the release directory
//!    (sent as a tar context; `.dockerignore` is not applied) with
//!    `dockerfile` and `build_args`, labelled `cutover.dockerfile` with the
//!    Dockerfile's digest. `<image>` defaults to the repository of the old
//!    container's image. A failed build reports the tail of its log.
//! 3. Create `<name>-<short sha>` with the old container's configuration:
//!    its host config as is (binds, mounts, network mode, restart policy,
//!    published ports, privileges, ...; mounts of the Docker socket are
//!    dropped without `keep_docker_socket`), its networks and aliases, and
//!    from its config whatever it set beyond its old image's defaults (env,
//!    labels, entrypoint, cmd, healthcheck, user, workdir, ...): values equal
//!    to the old image's are left out, so the new image's own defaults apply,
//!    except for the `pin`ned ones (user, entrypoint, cmd), always the old
//!    container's.
//! 4. Start it and wait: with a HEALTHCHECK until it is `healthy`, without
//!    one until it has been running for 5 s; within `health_timeout` either
//!    way. If it exits, turns unhealthy or times out, it is removed and the
//!    error carries the tail of its log.
//! 5. Hand over, all while the old one still runs: rename the old one to
//!    `<name>-replaced-<its short id>`, the new one to `<name>`, set the old
//!    one's restart policy to `no` (so a daemon restart does not bring it
//!    back), then stop it. When the old container is this one, that stop is
//!    cutover's own SIGTERM: it stops its programs gracefully and exits,
//!    which is the intended end. The stopped predecessor is kept for its
//!    logs; the next docker redeploy removes it (unless it was started with
//!    `--rm`, in which case Docker already has), matching its name exactly.
//!
//! Both containers run side by side for a moment, so anything exclusive to
//! one of them makes the new one fail to start and the old one keep serving:
//! listening ports under `--network host` (unless `[[listen]] reuse_port`).
//! Host ports published with `-p` are exclusive too, so an old container
//! that publishes some is replaced the other way round instead, stop first
//! and rollback on failure, with a gap (see `replace`).
//!
//! `dockerfile` guards the Dockerfile, `build` makes the image, `container`
//! creates, starts, checks and hands over the container, `replace` does the
//! health-gated replace; this file finds the old one and runs the steps.

mod build;
mod carry_over;
mod confine;
mod container;
mod dockerfile;
mod replace;

pub use replace::{ReplacerArgs, run_replacer};

use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerConfig, ContainerInspectResponse, EndpointSettings};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptions,
};
use tracing::{debug, info, warn};

use super::{Redeploy, RedeployError, RedeployOutcome};
use crate::config::DockerRedeploy;
use build::build;
use carry_over::new_container_body;
use container::{hand_over, logs_tail, start_and_wait};

/// Per API request; a build is one request, so this bounds it too.
const API_TIMEOUT_SECS: u64 = 3600;
/// Without a HEALTHCHECK the new container must run this long.
const SETTLE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(500);
/// Build or container log lines kept for an error message.
const TAIL_LINES: usize = 15;

fn step(step: &str) -> impl Fn(bollard::errors::Error) -> RedeployError + '_ {
    move |e| RedeployError::Docker {
        step: step.to_string(),
        message: api_message(&e),
    }
}

/// The engine's own message, without bollard's wrapping where there is one.
fn api_message(e: &bollard::errors::Error) -> String {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError {
            status_code,
            message,
        } => format!("{message} ({status_code})"),
        E::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

pub(super) async fn replace(
    cfg: &DockerRedeploy,
    request: &Redeploy,
) -> Result<RedeployOutcome, RedeployError> {
    let docker = connect(&cfg.socket).await?;
    let target = match &cfg.container {
        Some(c) => c.clone(),
        None => own_container()?,
    };
    let old = docker
        .inspect_container(&target, None)
        .await
        .map_err(step("inspect the container to replace"))?;
    let old_id = old.id.clone().unwrap_or_default();
    let old_name = old
        .name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    let old_config = old.config.clone().unwrap_or_default();
    // The image the old container was created from; gone if it was removed.
    let old_image = match old.image.as_deref() {
        Some(id) => docker.inspect_image(id).await.ok(),
        None => None,
    };
    refuse_own_commit(old_image.as_ref(), request)?;
    let tag = new_image_tag(cfg, &old_config, &old_name, request)?;
    let published = replace::published_ports(&old);
    prepare_for_ports(&docker, &old, &old_name, published.as_deref(), request).await?;
    let dockerfile_digest =
        dockerfile::check(cfg, request, old_config.labels.as_ref(), &tag).await?;
    info!(container = %old_name, image = %tag, "redeploy: building the new image");
    build(&docker, cfg, request, &tag, &dockerfile_digest).await?;

    let new_name = format!("{}-{}", base_name(&old_name), request.short_sha());
    clear_earlier_attempt(&docker, &new_name, request).await?;
    let image_config = old_image.and_then(|i| i.config);
    let (body, extra_networks) = new_container_body(&old, image_config.as_ref(), &tag, cfg);
    let created = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(&new_name).build()),
            body,
        )
        .await
        .map_err(|e| RedeployError::NewContainer {
            name: new_name.clone(),
            reason: format!("could not be created: {}", api_message(&e)),
        })?;
    let new_id = created.id;
    if published.is_some() {
        let is_own =
            cfg.container.is_none() || own_container().is_ok_and(|own| old_id.starts_with(&own));
        let sha = request.short_sha();
        return replace::begin(
            &docker,
            cfg,
            &old,
            &new_id,
            &extra_networks,
            &tag,
            sha,
            is_own,
        )
        .await;
    }
    let old = Named {
        id: old_id,
        name: old_name,
    };
    let new = Named {
        id: new_id,
        name: new_name,
    };
    start_beside(&docker, cfg, old, new, &extra_networks, tag).await
}

/// `<repository>:<short sha>`: the configured repository, else the old
/// container's.
fn new_image_tag(
    cfg: &DockerRedeploy,
    old_config: &ContainerConfig,
    old_name: &str,
    request: &Redeploy,
) -> Result<String, RedeployError> {
    let old_image = old_config.image.as_deref().unwrap_or_default();
    let repository = match &cfg.image {
        Some(r) => r.clone(),
        None => repository_of(old_image).ok_or_else(|| RedeployError::Docker {
            step: "name the new image".into(),
            message: format!(
                "container {old_name} runs image {old_image:?}, which names no repository: \
                     set [redeploy] docker.image"
            ),
        })?,
    };
    Ok(format!("{repository}:{}", request.short_sha()))
}

/// Says how the new container will take over: beside the old one, or (with
/// host ports `published`) in its place, which needs the old one kept to
/// roll back to and earlier attempts settled.
async fn prepare_for_ports(
    docker: &Docker,
    old: &ContainerInspectResponse,
    old_name: &str,
    published: Option<&[String]>,
    request: &Redeploy,
) -> Result<(), RedeployError> {
    let host_network = old
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.as_deref())
        == Some("host");
    if let Some(ports) = published {
        info!(
            container = %old_name, ports = %ports.join(", "),
            "redeploy: the container publishes host ports, which only one running container \
             can hold: health-gated replace (stop it, start the new one, roll back if that \
             is not healthy), with a gap"
        );
        if old.host_config.as_ref().and_then(|h| h.auto_remove) == Some(true) {
            return Err(RedeployError::Docker {
                step: "health-gated replace".into(),
                message: format!(
                    "{old_name} was started with --rm: stopping it would remove it, leaving \
                     nothing to roll back to; run it without --rm"
                ),
            });
        }
        replace::settle_earlier(docker, old_name, request.short_sha()).await?;
    } else if host_network {
        info!(
            container = %old_name,
            "redeploy: host network: the new container starts beside the old one; with \
             [[listen]] reuse_port both hold the port, else it cannot bind and the old one \
             keeps serving"
        );
    }
    Ok(())
}

/// A container by id and name (without the leading `/`).
struct Named {
    id: String,
    name: String,
}

/// Starts the new container while the old one still serves; once it is
/// healthy, hands the name over and stops the old one. A new container that
/// does not come up is removed, and the old one serves on.
async fn start_beside(
    docker: &Docker,
    cfg: &DockerRedeploy,
    old: Named,
    new: Named,
    extra_networks: &[(String, EndpointSettings)],
    tag: String,
) -> Result<RedeployOutcome, RedeployError> {
    info!(container = %new.name, id = %short(&new.id), "redeploy: starting the new container");
    if let Err(reason) = start_and_wait(docker, &new.id, extra_networks, cfg.health_timeout).await {
        let logs = logs_tail(docker, &new.id).await;
        let removed = docker
            .remove_container(
                &new.id,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await;
        if let Err(e) = removed {
            warn!(container = %new.name, "could not remove the failed new container: {e}");
        }
        return Err(RedeployError::NewContainer {
            name: new.name,
            reason: format!("{reason}{logs}"),
        });
    }
    let name = hand_over(docker, &old.id, &old.name, &new.id, &new.name).await;
    info!(
        old = %old.name, new = %name, image = %tag,
        "redeploy: the new container is ready; stopping the old one (if that is this \
         container, cutover now receives SIGTERM and stops gracefully)"
    );
    docker
        .stop_container(&old.id, None::<StopContainerOptions>)
        .await
        .map_err(step("stop the old container"))?;
    Ok(RedeployOutcome::DockerReplaced {
        container_id: new.id,
        name,
        image: tag,
        gap: None,
    })
}

/// Refuses to build for the commit the running image was itself built for:
/// that image's container found the commit still needing an image, so the
/// build did not make one that fits, and another build would make the same.
fn refuse_own_commit(
    image: Option<&bollard::models::ImageInspect>,
    request: &Redeploy,
) -> Result<(), RedeployError> {
    let built_for = image
        .and_then(|i| i.config.as_ref())
        .and_then(|c| c.labels.as_ref())
        .and_then(|l| l.get(build::COMMIT_LABEL));
    if built_for.map(String::as_str) == Some(request.sha.as_str()) {
        let image = image
            .and_then(|i| i.repo_tags.as_ref())
            .and_then(|t| t.first().cloned())
            .or_else(|| image.and_then(|i| i.id.clone()))
            .unwrap_or_default();
        return Err(RedeployError::ImageDoesNotFit {
            sha: request.sha.clone(),
            image,
        });
    }
    Ok(())
}

/// A container already named `name` for this commit: one that runs is
/// another redeploy under way (refused: one at a time); one that does not
/// is left over from an attempt that failed, and removed.
async fn clear_earlier_attempt(
    docker: &Docker,
    name: &str,
    request: &Redeploy,
) -> Result<(), RedeployError> {
    let Ok(found) = docker.inspect_container(name, None).await else {
        return Ok(());
    };
    let state = found.state.as_ref();
    let running = state.is_some_and(|s| {
        s.running == Some(true) || s.restarting == Some(true) || s.paused == Some(true)
    });
    if running {
        return Err(RedeployError::AlreadyUnderWay {
            sha: request.sha.clone(),
            name: name.to_string(),
            state: state
                .and_then(|s| s.status)
                .map_or_else(|| "running".to_string(), |s| s.to_string()),
        });
    }
    let _ = docker
        .remove_container(
            name,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await;
    Ok(())
}

/// The name new containers are derived from: `name` without the
/// `-<short sha>` suffixes earlier redeploys gave it, so that names stay
/// bounded whatever happened to a hand-over's rename.
pub(super) fn base_name(name: &str) -> &str {
    let mut base = name;
    while let Some((head, tail)) = base.rsplit_once('-') {
        let is_short_sha = tail.len() == 12
            && tail
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !is_short_sha || head.is_empty() {
            break;
        }
        base = head;
    }
    base
}

async fn connect(socket: &Path) -> Result<Docker, RedeployError> {
    let fail = |message: String| RedeployError::DockerConnect {
        socket: socket.display().to_string(),
        message,
    };
    if !socket.exists() {
        return Err(fail(
            "no such socket: mount it into the container (-v /var/run/docker.sock:/var/run/docker.sock)"
                .into(),
        ));
    }
    let path = socket.to_str().ok_or_else(|| fail("not UTF-8".into()))?;
    let docker = Docker::connect_with_unix(path, API_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
        .map_err(|e| fail(e.to_string()))?
        .negotiate_version()
        .await
        .map_err(|e| fail(api_message(&e)))?;
    debug!(api = %docker.client_version(), "docker API version negotiated");
    Ok(docker)
}

/// The id of the container cutover runs in.
fn own_container() -> Result<String, RedeployError> {
    if let Some(id) = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|t| container_id_in_mountinfo(&t))
    {
        return Ok(id);
    }
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    if host.len() == 12 && host.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(host);
    }
    Err(RedeployError::Docker {
        step: "find this container".into(),
        message: "cutover does not seem to run in a Docker container (no \
                  /var/lib/docker/containers/<id>/ mount, hostname not a container id): \
                  set [redeploy] docker.container"
            .into(),
    })
}

/// Docker bind-mounts /etc/hostname, /etc/hosts and /etc/resolv.conf from
/// `<data root>/containers/<id>/`; the mount's root (field 4) names the id.
pub(super) fn container_id_in_mountinfo(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let root = line.split(' ').nth(3)?;
        let (_, rest) = root.split_once("/containers/")?;
        let id = rest.split('/').next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

/// "registry:5000/org/app:tag" -> "registry:5000/org/app"; None for an image id.
pub(super) fn repository_of(image: &str) -> Option<String> {
    let image = image.split('@').next().unwrap_or_default();
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    let repo = match image[last_slash..].rfind(':') {
        Some(colon) => &image[..last_slash + colon],
        None => image,
    };
    let is_id = repo.starts_with("sha256") || repo.is_empty();
    (!is_id).then(|| repo.to_string())
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod replace_tests;
