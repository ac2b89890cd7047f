//! Turns the raw TOML into a `Config`, collecting every problem on the way.
//!
//! Unknown keys are rejected by serde (`deny_unknown_fields`), which stops at
//! the first; to still report them all, each one found is removed from a copy
//! of the table and deserialization runs again.

use std::collections::HashSet;
use std::path::Path;

use super::environments::{Declared, secret_env_names, wire_environments};
use super::problems::{Locator, Problem, Problems, Segment};
use super::program::{Inherited, program};
use super::raw::{RawConfig, RawProgram};
use super::values::{child, key};
use super::{Config, ControlConfig, DependenciesConfig, DeployerConfig, ProgramConfig, sections};

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
    let entries = program_entries(raw.app, raw.program, command, problems)?;
    let (reload, default_strategy) = sections::reload(raw.reload, problems);
    let default_ready = sections::ready(&[key("ready")], raw.ready.unwrap_or_default(), problems);
    let declared = declared(&entries);
    let inherited = Inherited {
        strategy: default_strategy,
        drain: reload.drain,
        ready: &default_ready,
    };
    let mut programs = programs(entries, inherited, problems);

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
        run_in_release(&source.root, &mut programs);
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

/// The programs to validate, each with its key path: `[app]` or the
/// `[[program]]` entries, the command after `--` replacing the one
/// program's command. `None` when there is nothing (or too much) to run.
fn program_entries(
    app: Option<RawProgram>,
    program: Vec<RawProgram>,
    command: Option<Vec<String>>,
    problems: &mut Problems,
) -> Option<Vec<(Vec<Segment>, RawProgram)>> {
    let mut entries: Vec<(Vec<Segment>, RawProgram)> = Vec::new();
    let had_app = app.is_some();
    if let Some(app) = app {
        entries.push((vec![key("app")], app));
    }
    if had_app && !program.is_empty() {
        problems.add(
            &[key("program")],
            "use either [app] (one program) or [[program]] (several), not both",
        );
    }
    for (i, p) in program.into_iter().enumerate() {
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
    Some(entries)
}

/// Names and pass_env as written, for checks that need every program,
/// including those that did not validate.
fn declared(entries: &[(Vec<Segment>, RawProgram)]) -> Vec<Declared> {
    entries
        .iter()
        .map(|(path, raw)| Declared {
            path: path.clone(),
            name: raw
                .name
                .clone()
                .or_else(|| (path == &[key("app")]).then(|| "app".to_string())),
            pass_env: raw.pass_env.clone().unwrap_or_default(),
        })
        .collect()
}

/// Validates every program; each name once.
fn programs(
    entries: Vec<(Vec<Segment>, RawProgram)>,
    inherited: Inherited,
    problems: &mut Problems,
) -> Vec<ProgramConfig> {
    let mut names = HashSet::new();
    let mut programs = Vec::new();
    for (path, raw) in entries {
        let implicit_name = path == [key("app")];
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
    programs
}

/// Programs run in the deployed code unless told otherwise; a relative
/// workdir is a directory inside the release.
fn run_in_release(root: &Path, programs: &mut [ProgramConfig]) {
    let current = root.join("current");
    for p in programs {
        p.workdir = Some(match p.workdir.take() {
            None => current.clone(),
            Some(dir) if dir.is_relative() => current.join(dir),
            Some(dir) => dir,
        });
    }
}
