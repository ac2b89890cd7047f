//! Resolving `user = "..."` to the ids a program runs with.
//!
//! Done once while validating the config, so an unknown user is reported
//! before anything starts and the child after fork only makes syscalls.

use std::ffi::CString;
use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User, getgrouplist};

/// The account a program runs as, resolved when the config is loaded so that
/// an unknown user is a config error rather than a failure at fork time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
    pub home: Option<PathBuf>,
}

/// Accepts `name`, `name:group`, `uid` and `uid:gid`.
pub fn resolve_user(spec: &str) -> Result<RunAs, String> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() {
        return Err("empty user name".to_string());
    }
    let entry = if let Ok(uid) = user_part.parse::<u32>() {
        User::from_uid(Uid::from_raw(uid)).map_err(|e| format!("cannot look up uid {uid}: {e}"))?
    } else {
        let found = User::from_name(user_part)
            .map_err(|e| format!("cannot look up user `{user_part}`: {e}"))?;
        Some(
            found.ok_or_else(|| {
                format!("unknown user `{user_part}` (not in the passwd database)")
            })?,
        )
    };
    let explicit_gid = group_part.map(resolve_group).transpose()?;
    match entry {
        Some(user) => {
            let gid = explicit_gid.unwrap_or(user.gid);
            let name_c = CString::new(user.name.clone())
                .map_err(|_| format!("user name `{}` contains a NUL byte", user.name))?;
            let groups = match explicit_gid {
                // An explicit group replaces the supplementary groups too, as `docker run -u` does.
                Some(g) => vec![g],
                None => getgrouplist(&name_c, gid).unwrap_or_else(|_| vec![gid]),
            };
            Ok(RunAs {
                name: user.name,
                uid: user.uid,
                gid,
                groups,
                home: Some(user.dir),
            })
        }
        None => {
            // A bare uid with no passwd entry is allowed (common in images).
            let uid = Uid::from_raw(user_part.parse().expect("checked numeric above"));
            let gid = explicit_gid.unwrap_or(Gid::from_raw(uid.as_raw()));
            Ok(RunAs {
                name: uid.to_string(),
                uid,
                gid,
                groups: vec![gid],
                home: None,
            })
        }
    }
}

fn resolve_group(spec: &str) -> Result<Gid, String> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(Gid::from_raw(gid));
    }
    Group::from_name(spec)
        .map_err(|e| format!("cannot look up group `{spec}`: {e}"))?
        .map(|g| g.gid)
        .ok_or_else(|| format!("unknown group `{spec}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_root_by_name_and_number() {
        let by_name = resolve_user("root").unwrap();
        assert_eq!(by_name.uid, Uid::from_raw(0));
        assert_eq!(by_name.gid, Gid::from_raw(0));
        assert_eq!(resolve_user("0").unwrap().name, "root");
        let numeric = resolve_user("4242:4343").unwrap();
        assert_eq!((numeric.uid.as_raw(), numeric.gid.as_raw()), (4242, 4343));
    }

    #[test]
    fn unknown_user_is_named() {
        let err = resolve_user("no-such-user-xyz").unwrap_err();
        assert!(err.contains("no-such-user-xyz"), "{err}");
        assert!(
            resolve_user("root:no-such-group-xyz")
                .unwrap_err()
                .contains("group")
        );
    }
}
