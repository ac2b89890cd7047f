//! What every child's environment leaves out, and whose user and
//! environment the hooks and the redeploy command get: settled once every
//! program is known.

use super::Config;
use super::problems::{Problems, Segment};
use super::raw::RawConfig;
use super::values::{child, key};
use super::{ChildEnv, RedeployAction};

/// Every variable the config names as a secret source (`*_env` keys).
pub(super) fn secret_env_names(raw: &RawConfig) -> Vec<String> {
    let source = raw.source.as_ref();
    let redeploy = raw.redeploy.as_ref();
    let mut names: Vec<String> = [
        source.and_then(|s| s.token_env.clone()),
        source.and_then(|s| s.webhook_secret_env.clone()),
        redeploy.and_then(|r| r.webhook_secret_env.clone()),
    ]
    .into_iter()
    .flatten()
    .filter(|n| !n.is_empty())
    .collect();
    // A proxy URL with credentials is a secret too: cutover's git fetches
    // use it, its children never see it.
    names.extend(
        super::proxy_variables()
            .into_iter()
            .filter(|(_, value)| crate::redact::url_userinfo(value) != (None, None))
            .map(|(name, _)| name),
    );
    names.sort();
    names.dedup();
    names
}

/// A program as written, valid or not.
pub(super) struct Declared {
    pub(super) path: Vec<Segment>,
    pub(super) name: Option<String>,
    pub(super) pass_env: Vec<String>,
}

/// Gives every child its secrets to withhold, the hooks their program's
/// user and environment, and the redeploy command its user; a `pass_env`
/// that names a secret is refused.
pub(super) fn wire_environments(
    config: &mut Config,
    entries: &[Declared],
    problems: &mut Problems,
) {
    let secrets = config.secret_env.clone();
    for Declared { path, pass_env, .. } in entries {
        for (i, name) in pass_env.iter().enumerate() {
            if secrets.contains(name) {
                let at = [child(path, "pass_env"), vec![Segment::Index(i)]].concat();
                problems.add(
                    &at,
                    format!(
                        "`{name}` is a secret this config reads; it is never passed to a program"
                    ),
                );
            }
        }
    }
    for p in &mut config.programs {
        p.env.withheld = secrets.clone();
    }
    let hooks_path = [key("hooks"), key("program")];
    let hooked = match config.hooks.program.clone() {
        Some(name) => {
            if !entries
                .iter()
                .any(|d| d.name.as_deref() == Some(name.as_str()))
            {
                let known: Vec<&str> = entries.iter().filter_map(|d| d.name.as_deref()).collect();
                problems.add(
                    &hooks_path,
                    format!("no program named `{name}` (programs: {})", known.join(", ")),
                );
            }
            config.programs.iter().find(|p| p.name == name)
        }
        None => config.programs.first(),
    };
    let (user, env) = match hooked {
        Some(p) => (p.user.clone(), p.env.with(&config.hooks.env.set)),
        None => (
            None,
            ChildEnv {
                withheld: secrets.clone(),
                ..config.hooks.env.clone()
            },
        ),
    };
    config.hooks.program = hooked.map(|p| p.name.clone());
    config.hooks.user = user.clone();
    config.hooks.env = env;
    if let Some(RedeployAction::Command {
        user: command_user,
        env,
        ..
    }) = config.redeploy.as_mut().map(|r| &mut r.action)
    {
        if command_user.is_none() {
            *command_user = user;
        }
        env.withheld = secrets;
    }
}

#[cfg(test)]
mod tests {
    use super::super::ConfigError;
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<(String, String)>> {
        Config::parse(text, "t.toml", None).map_err(|e| match e {
            ConfigError::Invalid { problems, .. } => {
                problems.into_iter().map(|p| (p.path, p.message)).collect()
            }
            other => panic!("{other}"),
        })
    }

    /// PATH and HOME stand in for secrets: they are set wherever tests run.
    const SOURCE: &str = "[source]\nrepo = \"/r\"\nroot = \"/srv\"\ntoken_env = \"PATH\"\n\
                          webhook_secret_env = \"HOME\"\n";

    #[test]
    fn every_child_withholds_the_secrets_the_config_reads() {
        let c = parse(&format!(
            "[[program]]\nname = \"web\"\ncommand = [\"w\"]\nenv = {{ DATABASE_PATH = \"/db\" }}\n\
             [[program]]\nname = \"worker\"\ncommand = [\"k\"]\nenv_clear = true\n\
             pass_env = [\"LANG\"]\nenv = {{ QUEUE = \"q\" }}\n\
             [hooks]\nprogram = \"worker\"\nenv = {{ MIGRATING = 1 }}\n\
             [redeploy]\ncommand = [\"ci\"]\n{SOURCE}"
        ))
        .unwrap();
        let secrets = vec!["HOME".to_string(), "PATH".to_string()];
        assert_eq!(c.secret_env, secrets);
        assert!(c.programs.iter().all(|p| p.env.withheld == secrets));
        assert_eq!(c.hooks.program.as_deref(), Some("worker"));
        assert_eq!(
            c.hooks.env,
            ChildEnv {
                clear: true,
                pass: vec!["LANG".into()],
                set: vec![
                    ("QUEUE".into(), "q".into()),
                    ("MIGRATING".into(), "1".into())
                ],
                withheld: secrets.clone(),
            }
        );
        match c.redeploy.unwrap().action {
            RedeployAction::Command { env, user, .. } => {
                assert_eq!(env.withheld, secrets);
                assert_eq!(user, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hooks_default_to_the_first_program_and_redeploy_to_its_user() {
        let c = parse(
            "[[program]]\nname = \"web\"\ncommand = [\"w\"]\nuser = \"0:0\"\n\
             env = { A = \"1\" }\n[[program]]\nname = \"worker\"\ncommand = [\"k\"]\n\
             [redeploy]\ncommand = [\"ci\"]\n",
        )
        .unwrap();
        assert_eq!(c.hooks.program.as_deref(), Some("web"));
        assert_eq!(c.hooks.env.set, [("A".to_string(), "1".to_string())]);
        assert_eq!(c.hooks.user.as_ref().map(|u| u.uid.as_raw()), Some(0));
        match c.redeploy.unwrap().action {
            RedeployAction::Command { user, .. } => assert_eq!(user, c.hooks.user),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn environment_mistakes_are_reported_with_their_path() {
        let problems = parse(&format!(
            "[app]\ncommand = [\"a\"]\npass_env = [\"LANG\"]\n\
             [hooks]\nprogram = \"web\"\nenv = {{ \"\" = \"x\" }}\n\
             [redeploy]\nexit = 75\nuser = \"0\"\n{SOURCE}"
        ))
        .unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert!(paths.contains(&"app.pass_env"), "{problems:?}");
        assert!(paths.contains(&"hooks.program"), "{problems:?}");
        assert!(paths.contains(&"hooks.env."), "{problems:?}");
        assert!(paths.contains(&"redeploy.user"), "{problems:?}");

        let problems = parse(&format!(
            "[app]\ncommand = [\"a\"]\nenv_clear = true\npass_env = [\"LANG\", \"PATH\"]\n{SOURCE}"
        ))
        .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "app.pass_env[1]");
        assert!(problems[0].1.contains("secret"), "{problems:?}");
    }
}
