//! One program's section (`[app]` or `[[program]]`), validated: its command,
//! workdir, user, environment, restart pacing, stop and reload settings,
//! readiness, with what it inherits from the top-level sections.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::problems::{Problems, Segment};
use super::raw::RawProgram;
use super::values::{child, env_name_ok, env_table, parse_duration};
use super::{
    Backoff, ChildEnv, ForwardTo, ProgramConfig, ReadyConfig, ReloadStrategy, RestartPolicy,
    sections,
};
use crate::process::signals::parse_signal;
use crate::process::user::resolve_user;

/// Program settings that fall back to the top-level sections.
#[derive(Clone, Copy)]
pub(super) struct Inherited<'a> {
    pub(super) strategy: ReloadStrategy,
    pub(super) drain: Duration,
    pub(super) ready: &'a ReadyConfig,
}

pub(super) fn program(
    path: &[Segment],
    raw: RawProgram,
    implicit_name: bool,
    inherited: Inherited,
    problems: &mut Problems,
) -> Option<ProgramConfig> {
    let before = problems.list.len();
    let name = program_name(path, raw.name, implicit_name, problems);
    let command = command(path, raw.command, problems);
    let env = child_env(path, raw.env, raw.env_clear, raw.pass_env, problems);
    let user = raw
        .user
        .and_then(|u| problems.check(&child(path, "user"), resolve_user(&u)));
    let restart = restart_policy(path, raw.restart.as_deref(), problems);
    let stop_signal = match raw.stop_signal {
        None => Some(nix::sys::signal::Signal::SIGTERM),
        Some(s) => problems.check(&child(path, "stop_signal"), parse_signal(&s)),
    };
    let mut duration = |k: &str, v: Option<String>, default: Duration| match v {
        None => Some(default),
        Some(s) => problems.check(&child(path, k), parse_duration(&s)),
    };
    let defaults = Backoff::default();
    let stop_timeout = duration("stop_timeout", raw.stop_timeout, Duration::from_secs(10));
    let initial = duration("restart_delay", raw.restart_delay, defaults.initial);
    let max = duration("restart_delay_max", raw.restart_delay_max, defaults.max);
    let reset_after = duration(
        "restart_reset_after",
        raw.restart_reset_after,
        defaults.reset_after,
    );
    let window = duration("restart_window", raw.restart_window, defaults.window);
    let drain = duration("reload_drain", raw.reload_drain, inherited.drain);
    let limit = raw.restart_limit.unwrap_or(defaults.limit);
    if limit == 0 {
        problems.add(&child(path, "restart_limit"), "must be at least 1");
    }
    let reload = sections::strategy(
        path,
        raw.reload_strategy,
        raw.reload_signal,
        Some(inherited.strategy),
        problems,
    );
    let forward_to = forward_to(path, raw.forward_to.as_deref(), problems);
    let ready = match raw.ready {
        Some(own) => sections::ready(&child(path, "ready"), own, problems),
        None => inherited.ready.clone(),
    };
    if problems.list.len() > before {
        return None;
    }
    Some(ProgramConfig {
        name: name?,
        command: command?,
        workdir: raw.workdir.map(PathBuf::from),
        env,
        user,
        restart,
        stop_signal: stop_signal?,
        stop_timeout: stop_timeout?,
        backoff: Backoff {
            initial: initial?,
            max: max?,
            reset_after: reset_after?,
            limit,
            window: window?,
        },
        reload,
        drain: drain?,
        ready,
        forward_to,
    })
}

/// `name`: `[app]` is named "app"; every `[[program]]` needs one.
fn program_name(
    path: &[Segment],
    name: Option<String>,
    implicit_name: bool,
    problems: &mut Problems,
) -> Option<String> {
    match (name, implicit_name) {
        (Some(n), _) => problems.check(&child(path, "name"), check_name(&n).map(|_| n)),
        (None, true) => Some("app".to_string()),
        (None, false) => {
            problems.add(path, "missing key `name`");
            None
        }
    }
}

/// `command`: required, and its first word names the program.
fn command(
    path: &[Segment],
    command: Option<Vec<String>>,
    problems: &mut Problems,
) -> Option<Vec<String>> {
    match command {
        None => {
            problems.add(
                path,
                "missing key `command` (the program and its arguments)",
            );
            None
        }
        Some(c) if c.first().is_none_or(|p| p.trim().is_empty()) => {
            problems.add(
                &child(path, "command"),
                "empty command: give the program and its arguments",
            );
            None
        }
        Some(c) => Some(c),
    }
}

/// `restart`, default `never` (exit with the program, like tini).
fn restart_policy(path: &[Segment], name: Option<&str>, problems: &mut Problems) -> RestartPolicy {
    match name {
        None | Some("never") => RestartPolicy::Never,
        Some("on-failure") => RestartPolicy::OnFailure,
        Some("always") => RestartPolicy::Always,
        Some(other) => {
            problems.add(
                &child(path, "restart"),
                format!("unknown policy `{other}`; expected never, on-failure or always"),
            );
            RestartPolicy::Never
        }
    }
}

/// `forward_to`, default the whole process group.
fn forward_to(path: &[Segment], name: Option<&str>, problems: &mut Problems) -> ForwardTo {
    match name {
        None | Some("group") => ForwardTo::Group,
        Some("main") => ForwardTo::Main,
        Some(other) => {
            problems.add(
                &child(path, "forward_to"),
                format!("unknown target `{other}`; expected group or main"),
            );
            ForwardTo::Group
        }
    }
}

/// `env`, `env_clear` and `pass_env` of a program. `pass_env` without
/// `env_clear` is an error rather than ignored: whoever writes it expects
/// the rest of the environment to be dropped, and it would not be.
fn child_env(
    path: &[Segment],
    env: BTreeMap<String, toml::Value>,
    clear: Option<bool>,
    pass: Option<Vec<String>>,
    problems: &mut Problems,
) -> ChildEnv {
    let clear = clear.unwrap_or(false);
    let pass = pass.unwrap_or_default();
    if !clear && !pass.is_empty() {
        problems.add(
            &child(path, "pass_env"),
            "only with `env_clear = true` (without it every variable is inherited)",
        );
    }
    for (i, name) in pass.iter().enumerate() {
        if !env_name_ok(name) {
            let at = [child(path, "pass_env"), vec![Segment::Index(i)]].concat();
            problems.add(&at, "environment names must be non-empty without `=`");
        }
    }
    ChildEnv {
        clear,
        pass,
        set: env_table(&child(path, "env"), env, problems),
        withheld: Vec::new(),
    }
}

pub(super) fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name `{name}`: use letters, digits, `-` and `_`"
        ))
    }
}
