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
//! 2. Build `<image>:<short sha>` from the release directory (sent as a tar
//!    context; `.dockerignore` is not applied) with `dockerfile` and
//!    `build_args`. `<image>` defaults to the repository of the old
//!    container's image. A failed build reports the tail of its log.
//! 3. Create `<name>-<short sha>` with the old container's configuration:
//!    its host config as is (binds, mounts, network mode, restart policy,
//!    published ports, ...), its networks and aliases, and from its config
//!    whatever it set beyond its old image's defaults (env, labels,
//!    entrypoint, cmd, healthcheck, user, workdir, ...): values equal to the
//!    old image's are left out, so the new image's own defaults apply.
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
//!    `--rm`, in which case Docker already has).
//!
//! Both containers run side by side for a moment, so anything exclusive to
//! one of them makes the new one fail to start and the old one keep serving:
//! host ports published with `-p` and listening ports under
//! `--network host`. Put those behind a proxy, or use `exit`.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    ContainerConfig, ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum,
    ContainerUpdateBody, EndpointSettings, HealthStatusEnum, ImageConfig, NetworkConnectRequest,
    NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder,
    StartContainerOptions, StopContainerOptions,
};
use futures_util::StreamExt;
use tracing::{debug, info, warn};

use super::{Redeploy, RedeployError, RedeployOutcome};
use crate::config::DockerRedeploy;

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
    let repository = match &cfg.image {
        Some(r) => r.clone(),
        None => {
            repository_of(old_config.image.as_deref().unwrap_or_default()).ok_or_else(|| {
                RedeployError::Docker {
                    step: "name the new image".into(),
                    message: format!(
                        "container {old_name} runs image {:?}, which names no repository: \
                     set [redeploy] docker.image",
                        old_config.image.unwrap_or_default()
                    ),
                }
            })?
        }
    };
    let tag = format!("{repository}:{}", request.short_sha());
    info!(container = %old_name, image = %tag, "redeploy: building the new image");
    build(&docker, cfg, request, &tag).await?;

    let new_name = format!("{old_name}-{}", request.short_sha());
    // Left over from an earlier attempt at the same sha.
    let _ = docker
        .remove_container(
            &new_name,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await;
    let image_config = old_image.and_then(|i| i.config);
    let (body, extra_networks) = new_container_body(&old, image_config.as_ref(), &tag);
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
    info!(container = %new_name, id = %short(&new_id), "redeploy: starting the new container");
    if let Err(reason) = start_and_wait(&docker, &new_id, &extra_networks, cfg.health_timeout).await
    {
        let logs = logs_tail(&docker, &new_id).await;
        let removed = docker
            .remove_container(
                &new_id,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await;
        if let Err(e) = removed {
            warn!(container = %new_name, "could not remove the failed new container: {e}");
        }
        return Err(RedeployError::NewContainer {
            name: new_name,
            reason: format!("{reason}{logs}"),
        });
    }
    let name = hand_over(&docker, &old_id, &old_name, &new_id, &new_name).await;
    info!(
        old = %old_name, new = %name, image = %tag,
        "redeploy: the new container is ready; stopping the old one (if that is this \
         container, cutover now receives SIGTERM and stops gracefully)"
    );
    docker
        .stop_container(&old_id, None::<StopContainerOptions>)
        .await
        .map_err(step("stop the old container"))?;
    Ok(RedeployOutcome::DockerReplaced {
        container_id: new_id,
        name,
        image: tag,
    })
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

async fn build(
    docker: &Docker,
    cfg: &DockerRedeploy,
    request: &Redeploy,
    tag: &str,
) -> Result<(), RedeployError> {
    let fail = |reason: String| RedeployError::Build {
        image: tag.to_string(),
        reason,
    };
    let dir = request.release_dir.clone();
    if !dir.join(&cfg.dockerfile).is_file() {
        return Err(fail(format!(
            "no {} in the release {}",
            cfg.dockerfile,
            dir.display()
        )));
    }
    if dir.join(".dockerignore").exists() {
        warn!("redeploy: .dockerignore is not applied; the whole release is the build context");
    }
    let context = tokio::task::spawn_blocking(move || tar_context(&dir))
        .await
        .map_err(|e| fail(format!("packing the context: {e}")))?
        .map_err(|e| fail(format!("packing the context: {e}")))?;
    let args: HashMap<String, String> = cfg.build_args.iter().cloned().collect();
    let mut options = BuildImageOptionsBuilder::new()
        .dockerfile(&cfg.dockerfile)
        .t(tag)
        .rm(true)
        .forcerm(true)
        .buildargs(&args);
    if let Some(network) = &cfg.build_network {
        options = options.networkmode(network);
    }
    let options = options.build();
    let started = Instant::now();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut remember = |line: &str| {
        let line = line.trim_end();
        if line.is_empty() {
            return;
        }
        debug!("build: {line}");
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_string());
    };
    let mut error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                for line in info.stream.as_deref().unwrap_or_default().lines() {
                    remember(line);
                }
                if let Some(message) = info.error_detail.and_then(|d| d.message) {
                    error = Some(message);
                }
            }
            Err(e) => {
                error = Some(api_message(&e));
                break;
            }
        }
    }
    let log = tail.iter().cloned().collect::<Vec<_>>().join("\n");
    if let Some(message) = error {
        let log = if log.is_empty() {
            String::new()
        } else {
            format!("\n{log}")
        };
        return Err(fail(format!("{message}{log}")));
    }
    docker
        .inspect_image(tag)
        .await
        .map_err(|e| fail(format!("{}\n{log}", api_message(&e))))?;
    info!(image = %tag, seconds = started.elapsed().as_secs_f64(), "redeploy: image built");
    Ok(())
}

/// The release directory as an uncompressed tar; symlinks stay symlinks.
fn tar_context(dir: &Path) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    builder.into_inner()
}

/// The old container's configuration with the new image; also the networks
/// to connect before start beyond the one the container is created on.
pub(super) fn new_container_body(
    old: &ContainerInspectResponse,
    old_image: Option<&ImageConfig>,
    image: &str,
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
            .collect::<Vec<_>>()
    });
    let labels = c.labels.map(|labels| {
        let defaults = i.labels.clone().unwrap_or_default();
        labels
            .into_iter()
            .filter(|(k, v)| defaults.get(k) != Some(v))
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
    let host_config = old.host_config.clone();
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
    let body = ContainerCreateBody {
        // Docker's default hostname is the short id: the new one gets its own.
        hostname: c.hostname.filter(|h| *h != old_short),
        domainname: c.domainname,
        user: own(c.user, i.user),
        attach_stdin: c.attach_stdin,
        attach_stdout: c.attach_stdout,
        attach_stderr: c.attach_stderr,
        exposed_ports: exposed_ports.filter(|p| !p.is_empty()),
        tty: c.tty,
        open_stdin: c.open_stdin,
        stdin_once: c.stdin_once,
        env,
        cmd: own(c.cmd, i.cmd),
        healthcheck: own(c.healthcheck, i.healthcheck),
        args_escaped: c.args_escaped,
        image: Some(image.to_string()),
        volumes: volumes.filter(|v| !v.is_empty()),
        working_dir: own(c.working_dir, i.working_dir),
        entrypoint: own(c.entrypoint, i.entrypoint),
        network_disabled: c.network_disabled,
        on_build: None,
        labels,
        stop_signal: own(c.stop_signal, i.stop_signal),
        stop_timeout: c.stop_timeout,
        shell: own(c.shell, i.shell),
        host_config,
        networking_config,
    };
    (body, extra)
}

/// Starts the new container and waits until it counts as up; the reason if not.
async fn start_and_wait(
    docker: &Docker,
    id: &str,
    extra_networks: &[(String, EndpointSettings)],
    timeout: Duration,
) -> Result<(), String> {
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
            .map_err(|e| format!("could not join network {network}: {}", api_message(&e)))?;
    }
    docker
        .start_container(id, None::<StartContainerOptions>)
        .await
        .map_err(|e| format!("did not start: {}", api_message(&e)))?;
    let started = Instant::now();
    let settle = SETTLE.min(timeout);
    loop {
        let state = docker
            .inspect_container(id, None)
            .await
            .map_err(|e| format!("could not be inspected: {}", api_message(&e)))?
            .state
            .unwrap_or_default();
        let running = state.running == Some(true) && state.restarting != Some(true);
        if !running {
            let status = state.status.unwrap_or(ContainerStateStatusEnum::EMPTY);
            let mut why = format!(
                "stopped ({status}, exit code {})",
                state.exit_code.unwrap_or(-1)
            );
            if let Some(error) = state.error.filter(|e| !e.is_empty()) {
                why.push_str(&format!(": {error}"));
            }
            return Err(why);
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
                return Err(format!("is unhealthy: {:?}", last.trim()));
            }
            Some(HealthStatusEnum::STARTING) => {}
            // No healthcheck: running long enough is all there is to check.
            _ if started.elapsed() >= settle => return Ok(()),
            _ => {}
        }
        if started.elapsed() >= timeout {
            return Err(format!(
                "did not become healthy within {}",
                humantime::format_duration(timeout)
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// "\nlast log lines" of a container, or nothing.
async fn logs_tail(docker: &Docker, id: &str) -> String {
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
async fn hand_over(
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

/// Stopped `<name>-replaced-*` containers left by earlier redeploys.
async fn remove_stopped_predecessors(docker: &Docker, name: &str) {
    let filters = HashMap::from([
        ("name", vec![format!("^/{name}-replaced-")]),
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

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{HostConfig, NetworkSettings};

    #[test]
    fn container_id_from_mountinfo() {
        let id = "4a0f3e5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9012345678abcdef01";
        let text = format!(
            "1187 1100 0:52 / / rw,relatime - overlay overlay rw\n\
             1200 1187 8:1 /var/lib/docker/containers/{id}/resolv.conf /etc/resolv.conf rw - ext4 /dev/sda1 rw\n\
             1201 1187 0:23 /docker.sock /run/docker.sock rw - tmpfs tmpfs rw\n"
        );
        assert_eq!(container_id_in_mountinfo(&text).as_deref(), Some(id));
        assert_eq!(
            container_id_in_mountinfo("1 0 0:1 / / rw - ext4 /dev/sda rw\n"),
            None
        );
    }

    #[test]
    fn repository_names() {
        for (image, repo) in [
            ("cutover-test:latest", Some("cutover-test")),
            ("acme/app", Some("acme/app")),
            ("registry:5000/acme/app:v1", Some("registry:5000/acme/app")),
            ("registry:5000/acme/app", Some("registry:5000/acme/app")),
            ("acme/app@sha256:abcd", Some("acme/app")),
            ("sha256:0123abcd", None),
            ("", None),
        ] {
            assert_eq!(repository_of(image).as_deref(), repo, "{image}");
        }
    }

    #[test]
    fn the_new_container_keeps_what_the_old_one_set_beyond_its_image() {
        let old = ContainerInspectResponse {
            id: Some("0123456789abcdef".into()),
            config: Some(ContainerConfig {
                hostname: Some("0123456789ab".into()),
                env: Some(vec![
                    "PATH=/usr/bin".into(),
                    "APP_MODE=prod".into(),
                    "CUTOVER_CONFIG=/etc/cutover.toml".into(),
                ]),
                labels: Some(HashMap::from([
                    ("from.image".into(), "1".into()),
                    ("team".into(), "web".into()),
                ])),
                entrypoint: Some(vec!["cutover".into(), "run".into()]),
                cmd: Some(vec!["--".into(), "sleep".into(), "1000".into()]),
                image: Some("acme/app:old".into()),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                network_mode: Some("appnet".into()),
                binds: Some(vec!["/srv:/srv".into()]),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                networks: Some(HashMap::from([
                    (
                        "appnet".into(),
                        EndpointSettings {
                            aliases: Some(vec!["web".into(), "0123456789ab".into()]),
                            ip_address: Some("172.18.0.5".into()),
                            ..Default::default()
                        },
                    ),
                    ("backnet".into(), EndpointSettings::default()),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let image = ImageConfig {
            env: Some(vec!["PATH=/usr/bin".into()]),
            labels: Some(HashMap::from([("from.image".into(), "1".into())])),
            entrypoint: Some(vec!["cutover".into(), "run".into()]),
            cmd: Some(vec!["/bin/bash".into()]),
            ..Default::default()
        };
        let (body, extra) = new_container_body(&old, Some(&image), "acme/app:abc");
        assert_eq!(body.image.as_deref(), Some("acme/app:abc"));
        assert_eq!(body.hostname, None);
        assert_eq!(
            body.env.unwrap(),
            ["APP_MODE=prod", "CUTOVER_CONFIG=/etc/cutover.toml"]
        );
        assert_eq!(
            body.labels.unwrap(),
            HashMap::from([("team".to_string(), "web".to_string())])
        );
        assert_eq!(body.entrypoint, None, "the image's entrypoint applies");
        assert_eq!(body.cmd.unwrap(), ["--", "sleep", "1000"]);
        assert_eq!(
            body.host_config.unwrap().binds.unwrap(),
            ["/srv:/srv".to_string()]
        );
        let endpoints = body.networking_config.unwrap().endpoints_config.unwrap();
        let appnet = &endpoints["appnet"];
        assert_eq!(appnet.aliases.as_deref().unwrap(), ["web".to_string()]);
        assert_eq!(
            appnet.ip_address, None,
            "the new container gets its own address"
        );
        assert_eq!(
            extra.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["backnet"]
        );
    }
}
