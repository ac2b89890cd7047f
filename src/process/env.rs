//! A child's environment, decided before fork: what it inherits of
//! cutover's own (all, or with `env_clear` only `pass_env`), never the
//! protocol variables that describe cutover's sockets nor the secrets the
//! config reads, then its user's HOME/USER/LOGNAME and the configured
//! values; and where its program is found in the PATH it will have.

use std::ffi::{OsStr, OsString};

use super::user::RunAs;

/// What a child (program, hook, readiness or redeploy command) starts with,
/// built before fork by `build_env`: cutover's own environment (with
/// `clear`, only the `pass` names of it), minus cutover's protocol
/// variables and the `withheld` secret sources, then `set` over it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChildEnv {
    /// `env_clear`: start from an empty environment.
    pub clear: bool,
    /// `pass_env`: names kept from cutover's environment under `clear`.
    pub pass: Vec<String>,
    /// `env`: set over what is inherited.
    pub set: Vec<(String, String)>,
    /// Secret sources (`Config::secret_env`): never inherited.
    pub withheld: Vec<String>,
}

impl ChildEnv {
    /// The same environment with `more` set over it (a hook: its
    /// program's environment, then `[hooks] env`).
    pub fn with(&self, more: &[(String, String)]) -> ChildEnv {
        let mut env = self.clone();
        env.set.extend_from_slice(more);
        env
    }
}

pub(super) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Environment cutover sets itself; inherited values would describe cutover's
/// own sockets, not the program's.
const RESERVED_ENV: [&str; 4] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
];

/// The child's environment: `inherited` (cutover's own; with `env_clear`
/// only the `pass_env` names of it), minus cutover's protocol variables and
/// the secrets the config reads, plus the user's HOME/USER/LOGNAME, the
/// configured values, and what cutover adds.
pub(super) fn build_env(
    inherited: impl Iterator<Item = (OsString, OsString)>,
    policy: &ChildEnv,
    user: Option<&RunAs>,
    extra: &[(String, String)],
) -> Vec<(OsString, OsString)> {
    let named = |list: &[String], k: &OsStr| list.iter().any(|n| OsStr::new(n) == k);
    let mut env: Vec<(OsString, OsString)> = inherited
        .filter(|(k, _)| !RESERVED_ENV.iter().any(|r| OsStr::new(r) == k))
        .filter(|(k, _)| !named(&policy.withheld, k))
        .filter(|(k, _)| !policy.clear || named(&policy.pass, k))
        .collect();
    let mut set = |k: &str, v: &str| {
        env.retain(|(key, _)| key != k);
        env.push((k.into(), v.into()));
    };
    if let Some(user) = user {
        if let Some(home) = &user.home {
            set("HOME", &home.to_string_lossy());
        }
        set("USER", &user.name);
        set("LOGNAME", &user.name);
    }
    for (k, v) in policy.set.iter().chain(extra) {
        set(k, v);
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(env: &[(OsString, OsString)]) -> Vec<String> {
        env.iter()
            .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
            .collect()
    }

    fn inherited() -> impl Iterator<Item = (OsString, OsString)> {
        [
            ("PATH", "/bin"),
            ("GIT_TOKEN", "t0ken"),
            ("LANG", "C.UTF-8"),
            ("NOTIFY_SOCKET", "/run/cutover-notify"),
            ("OTHER", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
    }

    #[test]
    fn secrets_and_protocol_variables_are_never_inherited() {
        let env = ChildEnv {
            set: vec![("OTHER".into(), "y".into())],
            withheld: vec!["GIT_TOKEN".into()],
            ..ChildEnv::default()
        };
        let extra = [("CUTOVER_PROGRAM".to_string(), "web".to_string())];
        assert_eq!(
            names(&build_env(inherited(), &env, None, &extra)),
            [
                "PATH=/bin",
                "LANG=C.UTF-8",
                "OTHER=y",
                "CUTOVER_PROGRAM=web"
            ]
        );
    }

    #[test]
    fn env_clear_keeps_only_pass_env_and_env() {
        let env = ChildEnv {
            clear: true,
            pass: vec!["PATH".into(), "GIT_TOKEN".into()],
            set: vec![("DATABASE_PATH".into(), "/db".into())],
            withheld: vec!["GIT_TOKEN".into()],
        };
        assert_eq!(
            names(&build_env(inherited(), &env, None, &[])),
            ["PATH=/bin", "DATABASE_PATH=/db"]
        );
    }
}
