//! What a container started by `cutover deployer` may not have, whatever the
//! container it replaces had: the engine (sockets and the variables that
//! point at one are already left out without `keep_docker_socket`),
//! `--privileged`, and host settings that give more than the container's
//! own code unless the deployer's file `keep`s them. Its user is the
//! deployer's, by number, so code baked into the new image by a commit
//! (an `/etc/ld.so.preload`, an `/etc/passwd` entry) runs as that user.

use bollard::models::{ContainerCreateBody, HostConfig};

use crate::config::{Confinement, Keep};

/// Applies `confine` to a container about to be created.
pub(super) fn confine(body: &mut ContainerCreateBody, confine: &Confinement) {
    body.user = Some(confine.user.clone());
    if let Some(host) = body.host_config.as_mut() {
        confine_host(host, &confine.keep);
    }
}

fn confine_host(h: &mut HostConfig, keep: &[Keep]) {
    let kept = |k| keep.contains(&k);
    h.privileged = Some(false);
    // The defaults again: masked /proc paths are what systempaths=unconfined
    // removes, so a privileged or unconfined old container's (empty) lists
    // must not pass either.
    h.masked_paths = None;
    h.readonly_paths = None;
    h.cgroup_parent = None;
    if !kept(Keep::CapAdd) {
        h.cap_add = None;
    }
    if !kept(Keep::Devices) {
        h.devices = None;
        h.device_cgroup_rules = None;
        h.device_requests = None;
    }
    if !kept(Keep::SecurityOpt) {
        // no-new-privileges only ever takes away.
        h.security_opt = h.security_opt.take().map(|opts| {
            opts.into_iter()
                .filter(|o| o.starts_with("no-new-privileges") && !o.ends_with("false"))
                .collect()
        });
    }
    if !kept(Keep::GroupAdd) {
        h.group_add = None;
    }
    if !kept(Keep::HostNamespaces) {
        let not_host = |mode: &mut Option<String>| {
            if mode.as_deref() == Some("host") {
                *mode = None;
            }
        };
        not_host(&mut h.pid_mode);
        not_host(&mut h.ipc_mode);
        not_host(&mut h.uts_mode);
        not_host(&mut h.userns_mode);
        h.cgroupns_mode = None;
    }
    if !kept(Keep::VolumesFrom) {
        h.volumes_from = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wide_open() -> ContainerCreateBody {
        ContainerCreateBody {
            user: Some("root".into()),
            host_config: Some(HostConfig {
                privileged: Some(true),
                cap_add: Some(vec!["SYS_ADMIN".into()]),
                devices: Some(vec![Default::default()]),
                security_opt: Some(vec![
                    "seccomp=unconfined".into(),
                    "apparmor=unconfined".into(),
                    "no-new-privileges".into(),
                ]),
                group_add: Some(vec!["999".into()]),
                pid_mode: Some("host".into()),
                ipc_mode: Some("shareable".into()),
                userns_mode: Some("host".into()),
                volumes_from: Some(vec!["engine-holder".into()]),
                masked_paths: Some(vec![]),
                binds: Some(vec!["/srv/app:/srv/app".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn nothing_beyond_the_containers_own_code_passes_by_default() {
        let mut body = wide_open();
        let rules = Confinement {
            user: "1000:1000".into(),
            keep: vec![],
        };
        confine(&mut body, &rules);
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        let h = body.host_config.unwrap();
        assert_eq!(h.privileged, Some(false));
        assert_eq!(h.cap_add, None);
        assert_eq!(h.devices, None);
        assert_eq!(h.security_opt, Some(vec!["no-new-privileges".to_string()]));
        assert_eq!(h.group_add, None);
        assert_eq!(h.pid_mode, None);
        assert_eq!(h.userns_mode, None);
        assert_eq!(h.volumes_from, None);
        assert_eq!(h.masked_paths, None);
        // What is the container's own stays.
        assert_eq!(h.ipc_mode.as_deref(), Some("shareable"));
        assert_eq!(h.binds, Some(vec!["/srv/app:/srv/app".to_string()]));
    }

    #[test]
    fn keep_lets_named_settings_through_but_never_privileged() {
        let mut body = wide_open();
        let rules = Confinement {
            user: "1000:1000".into(),
            keep: vec![Keep::CapAdd, Keep::HostNamespaces],
        };
        confine(&mut body, &rules);
        let h = body.host_config.unwrap();
        assert_eq!(h.privileged, Some(false));
        assert_eq!(h.cap_add, Some(vec!["SYS_ADMIN".to_string()]));
        assert_eq!(h.pid_mode.as_deref(), Some("host"));
        assert_eq!(h.group_add, None);
    }
}
