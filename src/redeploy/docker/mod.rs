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
//! host ports published with `-p` and listening ports under
//! `--network host`. Put those behind a proxy, or use `exit`.
//!
//! `dockerfile` guards the Dockerfile, `build` makes the image, `container`
//! creates, starts, checks and hands over the container; this file finds
//! the old one and runs the steps.

mod build;
mod container;
mod dockerfile;

use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptions,
};
use tracing::{debug, info, warn};

use super::{Redeploy, RedeployError, RedeployOutcome};
use crate::config::DockerRedeploy;
use build::build;
use container::{hand_over, logs_tail, new_container_body, start_and_wait};

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
    let dockerfile_digest =
        dockerfile::check(cfg, request, old_config.labels.as_ref(), &tag).await?;
    info!(container = %old_name, image = %tag, "redeploy: building the new image");
    build(&docker, cfg, request, &tag, &dockerfile_digest).await?;

    let new_name = format!("{old_name}-{}", request.short_sha());
    // Left over from an earlier attempt at the same sha.
    let _ = docker
        .remove_container(
            &new_name,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await;
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::{
        ContainerConfig, ContainerInspectResponse, EndpointSettings, ImageConfig,
    };

    use super::container::{is_docker_socket, is_parked_predecessor, new_container_body};
    use super::*;
    use crate::config::DockerPin;
    use bollard::models::{HostConfig, Mount, NetworkSettings};

    fn cfg(pin: &[DockerPin]) -> DockerRedeploy {
        DockerRedeploy {
            socket: "/var/run/docker.sock".into(),
            dockerfile: "Dockerfile".into(),
            build_args: vec![],
            image: None,
            container: None,
            health_timeout: Duration::from_secs(60),
            build_network: None,
            pin: pin.to_vec(),
            allow_dockerfile_change: false,
            keep_docker_socket: true,
        }
    }

    #[test]
    fn predecessors_are_matched_by_exact_name() {
        let names = |n: &str| vec![format!("/{n}")];
        assert!(is_parked_predecessor(
            &names("app.1-replaced-0123456789ab"),
            "app.1"
        ));
        for other in [
            "appx1-replaced-0123456789ab",
            "app.1x-replaced-0123456789ab",
            "app.1-replaced-0123456789ab-x",
            "app.1-replaced-0123",
            "app.1-0123456789ab",
            "app.1",
            "xapp.1-replaced-0123456789ab",
        ] {
            assert!(!is_parked_predecessor(&names(other), "app.1"), "{other}");
        }
        assert!(
            !is_parked_predecessor(&["app.1-replaced-0123456789ab".into()], "app.1"),
            "listed names start with /"
        );
    }

    #[test]
    fn docker_sockets_are_recognised() {
        let socket = Path::new("/run/engine.sock");
        for (path, is) in [
            ("/var/run/docker.sock", true),
            ("/run/docker.sock", true),
            ("/run/engine.sock", true),
            ("/run/engine.sock.bak", false),
            ("/srv", false),
            ("", false),
        ] {
            assert_eq!(is_docker_socket(path, socket), is, "{path}");
        }
    }

    /// The old container as cutover-test runs it: cutover as root.
    fn plain_old() -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some("0123456789abcdef".into()),
            config: Some(ContainerConfig {
                user: Some(String::new()),
                entrypoint: Some(vec!["cutover".into()]),
                cmd: None,
                labels: Some(HashMap::from([(
                    "cutover.dockerfile".into(),
                    "sha256:00".into(),
                )])),
                image: Some("acme/app:old".into()),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                binds: Some(vec![
                    "/var/run/docker.sock:/var/run/docker.sock".into(),
                    "/srv/cfg:/cfg:ro".into(),
                    "/run/docker.sock:/sock/d.sock".into(),
                ]),
                mounts: Some(vec![
                    Mount {
                        source: Some("/run/engine.sock".into()),
                        target: Some("/engine".into()),
                        ..Default::default()
                    },
                    Mount {
                        source: Some("/data".into()),
                        target: Some("/data".into()),
                        ..Default::default()
                    },
                ]),
                privileged: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pinned_settings_come_from_the_old_container() {
        let old = plain_old();
        let image = ImageConfig {
            entrypoint: Some(vec!["cutover".into()]),
            labels: Some(HashMap::from([(
                "cutover.dockerfile".into(),
                "sha256:00".into(),
            )])),
            ..Default::default()
        };
        // Not pinned: equal to the old image's, so the new image decides.
        let (body, _) = new_container_body(&old, Some(&image), "acme/app:new", &cfg(&[]));
        assert_eq!(body.user, Some(String::new()));
        assert_eq!(body.entrypoint, None);
        assert_eq!(body.cmd, None);
        assert_eq!(
            body.labels,
            Some(HashMap::new()),
            "the label is the image's"
        );
        let all = [DockerPin::User, DockerPin::Entrypoint, DockerPin::Cmd];
        let (body, _) = new_container_body(&old, Some(&image), "acme/app:new", &cfg(&all));
        assert_eq!(body.user.as_deref(), Some("0:0"), "root, by number");
        assert_eq!(body.entrypoint.unwrap(), ["cutover"]);
        assert_eq!(
            body.cmd,
            Some(vec![]),
            "empty, so the new image's CMD does not apply"
        );
        let mut named = plain_old();
        named.config.as_mut().unwrap().user = Some("1000:1000".into());
        let (body, _) = new_container_body(&named, Some(&image), "a:b", &cfg(&[DockerPin::User]));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(body.entrypoint, None, "entrypoint not pinned");
    }

    #[test]
    fn docker_socket_mounts_are_dropped_when_configured() {
        let old = plain_old();
        let mut c = cfg(&[]);
        let (body, _) = new_container_body(&old, None, "a:b", &c);
        let host = body.host_config.unwrap();
        assert_eq!(host.binds.unwrap().len(), 3, "kept by default");
        assert_eq!(host.mounts.unwrap().len(), 2);
        c.keep_docker_socket = false;
        c.socket = "/engine".into();
        let (body, _) = new_container_body(&old, None, "a:b", &c);
        let host = body.host_config.unwrap();
        assert_eq!(host.binds.unwrap(), ["/srv/cfg:/cfg:ro".to_string()]);
        let targets: Vec<_> = host.mounts.unwrap().into_iter().map(|m| m.target).collect();
        assert_eq!(targets, [Some("/data".to_string())]);
        assert_eq!(host.privileged, Some(true), "copied as is");
    }

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
        let (body, extra) = new_container_body(&old, Some(&image), "acme/app:abc", &cfg(&[]));
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
