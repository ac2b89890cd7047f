//! Unit tests of the docker redeploy: names, mountinfo, the new container's
//! configuration and the health-gated replace's choice.

use std::collections::HashMap;

use bollard::models::{ContainerConfig, ContainerInspectResponse, EndpointSettings, ImageConfig};

use super::carry_over::{is_engine_variable, new_container_body, reaches_engine};
use super::container::is_parked_predecessor;
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
        confine: None,
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
        // directories that hold an engine socket
        ("/var/run", true),
        ("/var/run/", true),
        ("/run", true),
        ("/var", true),
        ("/", true),
        ("/run/containerd", true),
        // other engines' sockets, by name wherever they are
        ("/hostrun/containerd.sock", true),
        ("/x/podman.sock", true),
        // neighbours that hold none
        ("/run/cutover", false),
        ("/var/lib/app", false),
        ("/srv/app/docker.sock.d", false),
    ] {
        assert_eq!(reaches_engine(path, socket), is, "{path}");
    }
    for (entry, is) in [
        ("DOCKER_HOST=tcp://10.0.0.1:2375", true),
        ("CONTAINERD_ADDRESS=/run/containerd/containerd.sock", true),
        ("DOCKER_CERT_PATH=/certs", true),
        ("DOCKER_HOSTNAME=x", false),
        ("PATH=/usr/bin", false),
    ] {
        assert_eq!(is_engine_variable(entry), is, "{entry}");
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

#[test]
fn published_ports_call_for_a_health_gated_replace() {
    use bollard::models::PortBinding;
    let with = |mode: &str, bindings: Option<Vec<PortBinding>>, all: bool| {
        let mut old = plain_old();
        let host = old.host_config.as_mut().unwrap();
        host.network_mode = Some(mode.into());
        host.port_bindings = Some(HashMap::from([("8000/tcp".to_string(), bindings)]));
        host.publish_all_ports = Some(all);
        super::replace::published_ports(&old)
    };
    let binding = |ip: &str, port: &str| PortBinding {
        host_ip: Some(ip.into()),
        host_port: Some(port.into()),
    };
    assert_eq!(
        with(
            "appnet",
            Some(vec![binding("127.0.0.1", "8080"), binding("", "80")]),
            false
        ),
        Some(vec![
            "*:80->8000/tcp".to_string(),
            "127.0.0.1:8080->8000/tcp".to_string()
        ])
    );
    assert_eq!(
        with("bridge", None, true),
        Some(vec!["all exposed ports (-P)".to_string()])
    );
    assert_eq!(with("bridge", Some(vec![]), false), None, "exposed only");
    assert_eq!(
        with("host", Some(vec![binding("", "80")]), true),
        None,
        "ignored under the host network: side by side"
    );
    assert_eq!(super::replace::published_ports(&plain_old()), None);
}

#[test]
fn new_container_names_stay_bounded() {
    use super::base_name;
    assert_eq!(base_name("app"), "app");
    assert_eq!(base_name("app-27bcc692045a"), "app");
    assert_eq!(
        base_name("app-27bcc692045a-27bcc692045a-0123456789ab"),
        "app"
    );
    // not a short sha: kept
    assert_eq!(base_name("my-app-v2"), "my-app-v2");
    assert_eq!(base_name("app-27BCC692045A"), "app-27BCC692045A");
    assert_eq!(base_name("web-27bcc692045"), "web-27bcc692045");
    // a name that is only a short sha stays a name
    assert_eq!(base_name("27bcc692045a"), "27bcc692045a");
}
