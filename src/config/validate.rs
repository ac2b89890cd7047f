//! Turns the raw TOML into a `Config`, collecting every problem on the way.
//!
//! Unknown keys are rejected by serde (`deny_unknown_fields`), which stops at
//! the first; to still report them all, each one found is removed from a copy
//! of the table and deserialization runs again.

use std::collections::HashSet;

use super::problems::{Locator, Problem, Problems, Segment};
use super::program::{Inherited, program};
use super::raw::{RawConfig, RawProgram};
use super::values::{child, key};
use super::{
    ChildEnv, Config, ControlConfig, DependenciesConfig, DeployerConfig, RedeployAction, sections,
};

const MAX_PASSES: usize = 64;

pub(super) fn parse(text: &str, command: Option<Vec<String>>) -> Result<Config, Vec<Problem>> {
    let locator = Locator::new(text);
    let mut table = parse_table(text, &locator)?;
    let mut problems = Problems::new(&locator);
    let raw = deserialize_reporting_unknown_keys(&mut table, &mut problems);
    let config = raw.and_then(|raw| validate(raw, command, &mut problems));
    match config {
        Some(c) if problems.list.is_empty() => Ok(c),
        _ => Err(problems.list),
    }
}

/// Only `[dependencies]`; the other sections are not looked at.
pub(super) fn parse_dependencies(text: &str) -> Result<DependenciesConfig, Vec<Problem>> {
    let locator = Locator::new(text);
    let mut table = parse_table(text, &locator)?;
    table.retain(|k, _| k == "dependencies");
    let mut problems = Problems::new(&locator);
    let raw = deserialize_reporting_unknown_keys(&mut table, &mut problems);
    let config = raw.map(|raw| super::fingerprints::dependencies(raw.dependencies, &mut problems));
    match config {
        Some(c) if problems.list.is_empty() => Ok(c),
        _ => Err(problems.list),
    }
}

/// Only `[control]`, for the client subcommands looking for the socket; the
/// other sections (users, secrets, programs) are not looked at.
pub(super) fn parse_control(text: &str) -> Result<ControlConfig, Vec<Problem>> {
    let locator = Locator::new(text);
    let mut table = parse_table(text, &locator)?;
    table.retain(|k, _| k == "control");
    let mut problems = Problems::new(&locator);
    let raw = deserialize_reporting_unknown_keys(&mut table, &mut problems);
    let config = raw.map(|raw| sections::control(raw.control, &mut problems));
    match config {
        Some(c) if problems.list.is_empty() => Ok(c),
        _ => Err(problems.list),
    }
}

/// `cutover deployer`'s file: `[deployer]` and nothing else.
pub(super) fn parse_deployer(
    text: &str,
    container: Option<String>,
) -> Result<DeployerConfig, Vec<Problem>> {
    let locator = Locator::new(text);
    let mut table = parse_table(text, &locator)?;
    let mut problems = Problems::new(&locator);
    for key in table.keys().filter(|k| *k != "deployer") {
        problems.add(
            &[Segment::Key(key.clone())],
            "a deployer's file has only [deployer]; the app's settings go in the app's file",
        );
    }
    table.retain(|k, _| k == "deployer");
    let raw = deserialize_reporting_unknown_keys(&mut table, &mut problems);
    let config = raw.and_then(|raw| {
        let mut section = raw.deployer;
        if let (Some(s), Some(c)) = (section.as_mut(), container) {
            s.container = Some(c);
        }
        super::deployer::deployer(section, &mut problems)
    });
    match config {
        Some(c) if problems.list.is_empty() => Ok(c),
        _ => Err(problems.list),
    }
}

fn parse_table(text: &str, locator: &Locator) -> Result<toml::Table, Vec<Problem>> {
    toml::from_str(text).map_err(|e| {
        vec![Problem {
            path: String::new(),
            location: e.span().map(|s| locator.line_col(s.start)),
            message: format!("invalid TOML: {}", e.message().trim_end()),
        }]
    })
}

fn deserialize_reporting_unknown_keys(
    table: &mut toml::Table,
    problems: &mut Problems,
) -> Option<RawConfig> {
    for _ in 0..MAX_PASSES {
        let value = toml::Value::Table(table.clone());
        let err = match serde_path_to_error::deserialize::<_, RawConfig>(value) {
            Ok(raw) => return Some(raw),
            Err(err) => err,
        };
        let mut path = convert_path(err.path());
        let message = err.inner().message().trim_end().to_string();
        if let Some(key) = unknown_field(&message) {
            // serde_path_to_error may or may not already end the path with the key.
            if path.last() != Some(&Segment::Key(key.clone())) {
                path.push(Segment::Key(key));
            }
            problems.add(&path, message.replacen("unknown field", "unknown key", 1));
            if remove(table, &path) {
                continue;
            }
        } else {
            problems.add(&path, message);
        }
        return None;
    }
    None
}

fn convert_path(path: &serde_path_to_error::Path) -> Vec<Segment> {
    use serde_path_to_error::Segment as S;
    path.iter()
        .filter_map(|s| match s {
            S::Seq { index } => Some(Segment::Index(*index)),
            S::Map { key } => Some(Segment::Key(key.clone())),
            S::Enum { variant } => Some(Segment::Key(variant.clone())),
            S::Unknown => None,
        })
        .collect()
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

/// Removes the entry at `path` (tables and arrays of tables) from `table`.
fn remove(table: &mut toml::Table, path: &[Segment]) -> bool {
    let Some((Segment::Key(last), parents)) = path.split_last() else {
        return false;
    };
    let mut current: Option<&mut toml::Value> = None;
    for seg in parents {
        let next = match (current.take(), seg) {
            (None, Segment::Key(k)) => table.get_mut(k),
            (Some(toml::Value::Table(t)), Segment::Key(k)) => t.get_mut(k),
            (Some(toml::Value::Array(a)), Segment::Index(i)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(v) => current = Some(v),
            None => return false,
        }
    }
    match current {
        None => table.remove(last).is_some(),
        Some(toml::Value::Table(t)) => t.remove(last).is_some(),
        Some(_) => false,
    }
}

fn validate(
    raw: RawConfig,
    command: Option<Vec<String>>,
    problems: &mut Problems,
) -> Option<Config> {
    if raw.deployer.is_some() {
        problems.add(
            &[key("deployer")],
            "[deployer] is read by `cutover deployer --config FILE`, in a container of its own; \
             the app's file asks it with [redeploy] deployer = \"<its socket>\"",
        );
    }
    let secret_env = secret_env_names(&raw);
    let mut entries: Vec<(Vec<Segment>, RawProgram)> = Vec::new();
    let had_app = raw.app.is_some();
    if let Some(app) = raw.app {
        entries.push((vec![key("app")], app));
    }
    if had_app && !raw.program.is_empty() {
        problems.add(
            &[key("program")],
            "use either [app] (one program) or [[program]] (several), not both",
        );
    }
    for (i, p) in raw.program.into_iter().enumerate() {
        entries.push((vec![key("program"), Segment::Index(i)], p));
    }

    if let Some(cmd) = command {
        match entries.len() {
            0 => entries.push((vec![key("app")], RawProgram::default())),
            1 => {}
            n => {
                problems.add(
                    &[],
                    format!(
                        "a command after `--` replaces the program's command, \
                         but this config has {n} programs"
                    ),
                );
                return None;
            }
        }
        entries[0].1.command = Some(cmd);
    }
    if entries.is_empty() {
        problems.add(
            &[],
            "nothing to run: add [app] with a command, [[program]] entries, \
             or give a command after `--`",
        );
        return None;
    }

    let (reload, default_strategy) = sections::reload(raw.reload, problems);
    let default_ready = sections::ready(&[key("ready")], raw.ready.unwrap_or_default(), problems);
    // Names and pass_env as written, for checks that need every program,
    // including those that did not validate.
    let declared: Vec<Declared> = entries
        .iter()
        .map(|(path, raw)| Declared {
            path: path.clone(),
            name: raw
                .name
                .clone()
                .or_else(|| (path == &[key("app")]).then(|| "app".to_string())),
            pass_env: raw.pass_env.clone().unwrap_or_default(),
        })
        .collect();
    let mut names = HashSet::new();
    let mut programs = Vec::new();
    for (path, raw) in entries {
        let implicit_name = path == [key("app")];
        let inherited = Inherited {
            strategy: default_strategy,
            drain: reload.drain,
            ready: &default_ready,
        };
        if let Some(p) = program(&path, raw, implicit_name, inherited, problems) {
            if !names.insert(p.name.clone()) {
                problems.add(
                    &child(&path, "name"),
                    format!("another program is already named `{}`", p.name),
                );
            }
            programs.push(p);
        }
    }

    let control = sections::control(raw.control, problems);
    let names: Vec<String> = programs.iter().map(|p| p.name.clone()).collect();
    let listen = sections::listen(raw.listen, &names, problems);
    let source = raw.source.and_then(|s| super::source::source(s, problems));
    let hooks = super::source::hooks(raw.hooks, problems);
    let rollback_window = super::source::rollback_window(raw.rollback, problems);
    let dependencies = super::fingerprints::dependencies(raw.dependencies, problems);
    let redeploy = raw
        .redeploy
        .and_then(|r| super::redeploy::redeploy(r, problems));
    if let Some(source) = &source {
        // Programs run in the deployed code unless told otherwise; a relative
        // workdir is a directory inside the release.
        let current = source.root.join("current");
        for p in &mut programs {
            p.workdir = Some(match p.workdir.take() {
                None => current.clone(),
                Some(dir) if dir.is_relative() => current.join(dir),
                Some(dir) => dir,
            });
        }
    }
    let mut config = Config {
        programs,
        control,
        reload,
        listen,
        source,
        hooks,
        rollback_window,
        dependencies,
        redeploy,
        secret_env,
    };
    wire_environments(&mut config, &declared, problems);
    Some(config)
}

/// Every variable the config names as a secret source (`*_env` keys).
fn secret_env_names(raw: &RawConfig) -> Vec<String> {
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
struct Declared {
    path: Vec<Segment>,
    name: Option<String>,
    pass_env: Vec<String>,
}

/// Gives every child its secrets to withhold, the hooks their program's
/// user and environment, and the redeploy command its user; a `pass_env`
/// that names a secret is refused.
fn wire_environments(config: &mut Config, entries: &[Declared], problems: &mut Problems) {
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
