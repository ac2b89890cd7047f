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

/// Why `user = "..."` names no account; the text is the config problem.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("empty user name")]
    Empty,
    #[error("cannot look up uid {uid}: {errno}")]
    LookupUid { uid: u32, errno: nix::Error },
    #[error("cannot look up user `{name}`: {errno}")]
    LookupName { name: String, errno: nix::Error },
    #[error("unknown user `{0}` (not in the passwd database)")]
    Unknown(String),
    #[error("user name `{0}` contains a NUL byte")]
    NulInName(String),
    /// The part after `:`.
    #[error(transparent)]
    Group(#[from] GroupError),
}

/// Why the group of `user = "name:group"` names no group.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("cannot look up group `{name}`: {errno}")]
    Lookup { name: String, errno: nix::Error },
    #[error("unknown group `{0}`")]
    Unknown(String),
}

/// Accepts `name`, `name:group`, `uid` and `uid:gid`.
pub fn resolve_user(spec: &str) -> Result<RunAs, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() {
        return Err(UserError::Empty);
    }
    let entry = if let Ok(uid) = user_part.parse::<u32>() {
        User::from_uid(Uid::from_raw(uid)).map_err(|errno| UserError::LookupUid { uid, errno })?
    } else {
        let found = User::from_name(user_part).map_err(|errno| UserError::LookupName {
            name: user_part.to_string(),
            errno,
        })?;
        Some(found.ok_or_else(|| UserError::Unknown(user_part.to_string()))?)
    };
    let explicit_gid = group_part.map(resolve_group).transpose()?;
    match entry {
        Some(user) => {
            let gid = explicit_gid.unwrap_or(user.gid);
            let name_c = CString::new(user.name.clone())
                .map_err(|_| UserError::NulInName(user.name.clone()))?;
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

fn resolve_group(spec: &str) -> Result<Gid, GroupError> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(Gid::from_raw(gid));
    }
    Group::from_name(spec)
        .map_err(|errno| GroupError::Lookup {
            name: spec.to_string(),
            errno,
        })?
        .map(|g| g.gid)
        .ok_or_else(|| GroupError::Unknown(spec.to_string()))
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
        let err = resolve_user("no-such-user-xyz").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown user `no-such-user-xyz` (not in the passwd database)"
        );
        assert_eq!(
            resolve_user("root:no-such-group-xyz")
                .unwrap_err()
                .to_string(),
            "unknown group `no-such-group-xyz`"
        );
        assert_eq!(
            resolve_user(":0").unwrap_err().to_string(),
            "empty user name"
        );
    }
}
