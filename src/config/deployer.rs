//! `[deployer]`: the file of `cutover deployer`, the one container that
//! holds the engine's socket on the app's behalf. Its limits are set here,
//! in a file the app's commits never reach; the app's own file only names
//! the deployer's socket.

use std::path::PathBuf;

use super::docker_redeploy::docker_action;
use super::problems::{Problems, Segment};
use super::raw::{RawDeployer, RawDocker};
use super::values::{child, key};
use super::{DockerPin, DockerRedeploy};

/// The deployer's limits on a container it starts for an app: the engine's
/// sockets, `--privileged` and the host settings below never pass, unless
/// `keep` names them; the user is always `user`, by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// `uid:gid`, numeric: a name would be looked up in the new image.
    pub user: String,
    pub keep: Vec<Keep>,
}

/// `[deployer] keep`: host settings of the old container the deployer may
/// carry over, each of which can give a container more than its own code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// `--cap-add`.
    CapAdd,
    /// `--device`, device cgroup rules and requests (GPUs).
    Devices,
    /// `--security-opt` (seccomp, AppArmor, SELinux labels).
    SecurityOpt,
    /// `--group-add`.
    GroupAdd,
    /// `--pid/--ipc/--uts/--userns/--cgroupns host`.
    HostNamespaces,
    /// `--volumes-from`: another container's mounts, unchecked.
    VolumesFrom,
}

/// `[deployer]`: `cutover deployer`'s own file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployerConfig {
    /// Where app containers ask (a unix socket on a volume they share).
    pub socket: PathBuf,
    /// The code volume's releases directory as this container sees it:
    /// requests name a release in it, never a path.
    pub releases: PathBuf,
    /// Peers allowed by user id: 0 and the confinement's user by default.
    pub allow_uids: Vec<u32>,
    /// The build and the replace, with `container` and `confine` set.
    pub docker: DockerRedeploy,
}

pub(super) fn deployer(raw: Option<RawDeployer>, p: &mut Problems) -> Option<DeployerConfig> {
    let path = [key("deployer")];
    let Some(raw) = raw else {
        p.add(
            &path,
            "missing: socket, releases, container and user are required",
        );
        return None;
    };
    let before = p.list.len();
    let socket = absolute(&path, "socket", raw.socket, p);
    let releases = absolute(&path, "releases", raw.releases, p);
    let container = container(&path, raw.container, p);
    let user = user(&path, raw.user.as_deref(), p);
    let keep = keep_list(&path, raw.keep.unwrap_or_default(), p);
    let docker_path = child(&path, "docker");
    let raw_docker = raw.docker.unwrap_or_default();
    refuse_what_the_deployer_decides(&docker_path, &raw_docker, p);
    let docker = docker_action(&docker_path, raw_docker, p);
    if p.list.len() > before {
        return None;
    }
    let (uid, gid) = user?;
    let mut docker = docker?;
    docker.container = container;
    docker.pin = vec![DockerPin::User, DockerPin::Entrypoint, DockerPin::Cmd];
    docker.keep_docker_socket = false;
    docker.confine = Some(Confinement {
        user: format!("{uid}:{gid}"),
        keep,
    });
    let allow_uids = raw.allow_uids.unwrap_or_else(|| {
        let mut uids = vec![0, uid];
        uids.dedup();
        uids
    });
    Some(DeployerConfig {
        socket: socket?,
        releases: releases?,
        allow_uids,
        docker,
    })
}

/// `container`: required, here or from the command line.
fn container(path: &[Segment], raw: Option<String>, p: &mut Problems) -> Option<String> {
    match raw {
        Some(c) if !c.trim().is_empty() => Some(c),
        Some(_) => {
            p.add(&child(path, "container"), "empty container name");
            None
        }
        None => {
            p.add(
                &child(path, "container"),
                "missing: the name of the app container to replace (compose's container_name), \
                 here or as `cutover deployer --container NAME`",
            );
            None
        }
    }
}

/// `user`: required, numeric (see `numeric_user`).
fn user(path: &[Segment], raw: Option<&str>, p: &mut Problems) -> Option<(u32, u32)> {
    match raw.map(numeric_user) {
        Some(Ok(ids)) => Some(ids),
        Some(Err(e)) => {
            p.add(&child(path, "user"), e);
            None
        }
        None => {
            p.add(
                &child(path, "user"),
                "missing: the new containers' user as \"uid:gid\", e.g. \"1000:1000\"",
            );
            None
        }
    }
}

/// `keep`: a setting named twice counts once.
fn keep_list(path: &[Segment], names: Vec<String>, p: &mut Problems) -> Vec<Keep> {
    let mut keep = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match keep_setting(name) {
            Ok(k) if !keep.contains(&k) => keep.push(k),
            Ok(_) => {}
            Err(e) => p.add(&[child(path, "keep"), vec![Segment::Index(i)]].concat(), e),
        }
    }
    keep
}

/// Decided here, never by the app: refuse the keys that would say otherwise.
fn refuse_what_the_deployer_decides(docker_path: &[Segment], raw: &RawDocker, p: &mut Problems) {
    for (set, name, why) in [
        (
            raw.container.is_some(),
            "container",
            "give [deployer] container",
        ),
        (
            raw.pin.is_some(),
            "pin",
            "the deployer always pins user, entrypoint and cmd",
        ),
        (
            raw.keep_docker_socket.is_some(),
            "keep_docker_socket",
            "a deployer never passes an engine socket on",
        ),
    ] {
        if set {
            p.add(&child(docker_path, name), format!("not here: {why}"));
        }
    }
}

fn absolute(
    path: &[Segment],
    name: &str,
    value: Option<String>,
    p: &mut Problems,
) -> Option<PathBuf> {
    let at = child(path, name);
    match value.map(PathBuf::from) {
        Some(v) if v.is_absolute() => Some(v),
        Some(v) => {
            p.add(&at, format!("`{}` is not an absolute path", v.display()));
            None
        }
        None => {
            p.add(&at, "missing");
            None
        }
    }
}

/// "1000:1000" -> (1000, 1000). Names are refused: the new image's
/// /etc/passwd, which a commit can change, would decide what they mean.
fn numeric_user(spec: &str) -> Result<(u32, u32), String> {
    let parse = |s: &str| s.parse::<u32>().ok();
    match spec.split_once(':') {
        Some((u, g)) if parse(u).is_some() && parse(g).is_some() => {
            Ok((parse(u).unwrap_or_default(), parse(g).unwrap_or_default()))
        }
        _ => Err(format!(
            "`{spec}` is not \"uid:gid\" in numbers: a name would be looked up in the \
             new image's /etc/passwd, which the commit being deployed can change"
        )),
    }
}

fn keep_setting(name: &str) -> Result<Keep, String> {
    Ok(match name {
        "cap_add" => Keep::CapAdd,
        "devices" => Keep::Devices,
        "security_opt" => Keep::SecurityOpt,
        "group_add" => Keep::GroupAdd,
        "host_namespaces" => Keep::HostNamespaces,
        "volumes_from" => Keep::VolumesFrom,
        "privileged" => {
            return Err(
                "`privileged` is never carried over: a privileged container is root on the host"
                    .into(),
            );
        }
        other => {
            return Err(format!(
                "`{other}` is not a setting the deployer can keep: give \"cap_add\", \
                 \"devices\", \"security_opt\", \"group_add\", \"host_namespaces\" or \
                 \"volumes_from\""
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};
    use super::*;

    fn load(text: &str) -> Result<DeployerConfig, Vec<(String, String)>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deployer.toml");
        std::fs::write(&path, text).unwrap();
        Config::load_deployer(&path, None).map_err(|e| match e {
            ConfigError::Invalid { problems, .. } => {
                problems.into_iter().map(|p| (p.path, p.message)).collect()
            }
            other => panic!("{other}"),
        })
    }

    const GOOD: &str = "[deployer]\nsocket = \"/run/d/deployer.sock\"\n\
        releases = \"/srv/app/releases\"\ncontainer = \"app\"\nuser = \"1000:1000\"\n";

    #[test]
    fn a_minimal_file_pins_everything_the_app_could_change() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.allow_uids, [0, 1000]);
        assert_eq!(c.docker.container.as_deref(), Some("app"));
        assert!(!c.docker.keep_docker_socket);
        assert_eq!(c.docker.pin.len(), 3);
        let confine = c.docker.confine.unwrap();
        assert_eq!(confine.user, "1000:1000");
        assert!(confine.keep.is_empty());
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let text = "[deployer]\nsocket = \"rel.sock\"\nuser = \"app\"\n\
            keep = [\"privileged\", \"cap_add\"]\n\
            docker = { keep_docker_socket = true, pin = [\"user\"] }\n\n[app]\ncommand = [\"x\"]\n";
        let problems = load(text).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        for expected in [
            "app",
            "deployer.socket",
            "deployer.releases",
            "deployer.container",
            "deployer.user",
            "deployer.keep[0]",
            "deployer.docker.keep_docker_socket",
            "deployer.docker.pin",
        ] {
            assert!(paths.contains(&expected), "{expected} in {problems:?}");
        }
        let user = problems.iter().find(|(p, _)| p == "deployer.user").unwrap();
        assert!(user.1.contains("/etc/passwd"), "{user:?}");
    }

    #[test]
    fn the_app_file_cannot_carry_a_deployer_section() {
        let text = format!("[app]\ncommand = [\"true\"]\n\n{GOOD}");
        let err = Config::parse(&text, "t.toml", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cutover deployer --config"), "{err}");
    }
}
