//! Deploy hooks (`[hooks] before_cutover`, `after_cutover`): commands such as
//! database migrations, run in the new release directory before or after the
//! programs switch to it.
//!
//! They run as the program they serve (`[hooks] program`, default the
//! first): its user, its environment (`env`, `env_clear`, `pass_env`) plus
//! `[hooks] env`, never the secrets cutover reads; a migration then sees
//! the settings the app sees.
//!
//! They are started by cutover's own spawn and reaped by the one reaper like
//! every other process; their output is read from a pipe and logged line by
//! line under the hook's name, and a hook that outlives its timeout is killed
//! with its whole process group.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::timeout;
use tracing::{info, warn};

use crate::config::{ChildEnv, RunAs};
use crate::process::exit::ExitStatus;
use crate::process::group::signal_group;
use crate::process::reaper::Reaper;
use crate::process::spawn::{LaunchSpec, fork_exec};

/// Which hooks: a typo in a string cannot run the wrong ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    BeforeCutover,
    AfterCutover,
}

impl HookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::BeforeCutover => "before_cutover",
            HookKind::AfterCutover => "after_cutover",
        }
    }
}

impl std::fmt::Display for HookKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook {hook} could not start: {message}")]
    Start { hook: String, message: String },
    #[error("hook {hook} (`{command}`) failed: {status}{}", last_words(.output))]
    Failed {
        hook: String,
        command: String,
        status: ExitStatus,
        /// Its last line of output: for a migration, usually the exception.
        output: Option<String>,
    },
    #[error("hook {hook} did not finish within {}", humantime::format_duration(*.timeout))]
    Timeout { hook: String, timeout: Duration },
}

/// `: <line>` for an error that ends with a process's last line of output.
pub(crate) fn last_words(output: &Option<String>) -> String {
    output
        .as_ref()
        .map(|line| format!(": {line}"))
        .unwrap_or_default()
}

/// The longest last line of output an error carries.
const LAST_LINE_MAX: usize = 300;

/// One group of hooks to run in order; the first failure stops the rest.
pub struct Hooks<'a> {
    pub kind: HookKind,
    pub commands: &'a [Vec<String>],
    pub dir: &'a Path,
    /// The hooked program's environment plus `[hooks] env`.
    pub env: &'a ChildEnv,
    /// CUTOVER_RELEASE_DIR, CUTOVER_SHA, CUTOVER_PREVIOUS_SHA.
    pub extra_env: Vec<(String, String)>,
    pub user: Option<&'a RunAs>,
    pub timeout: Duration,
    pub reaper: &'a Reaper,
    /// Told the name and command of each hook as it starts.
    pub started: &'a (dyn Fn(&str, &[String]) + Sync),
}

impl Hooks<'_> {
    pub async fn run(&self) -> Result<(), HookError> {
        for (i, command) in self.commands.iter().enumerate() {
            let name = format!("{}[{i}]", self.kind);
            (self.started)(&name, command);
            self.run_one(&name, command).await?;
        }
        Ok(())
    }

    async fn run_one(&self, name: &str, command: &[String]) -> Result<(), HookError> {
        run_logged(&LoggedCommand {
            what: "hook",
            name,
            command,
            dir: self.dir,
            env: self.env,
            extra_env: &self.extra_env,
            user: self.user,
            timeout: self.timeout,
            reaper: self.reaper,
        })
        .await
    }
}

/// One command run to completion with its output logged line by line under
/// `name`: a hook, or the `[redeploy] command`.
pub struct LoggedCommand<'a> {
    /// What it is, for the log ("hook", "redeploy command").
    pub what: &'static str,
    pub name: &'a str,
    pub command: &'a [String],
    pub dir: &'a Path,
    pub env: &'a ChildEnv,
    /// Set last, over `env`.
    pub extra_env: &'a [(String, String)],
    pub user: Option<&'a RunAs>,
    pub timeout: Duration,
    pub reaper: &'a Reaper,
}

/// Runs `run` through cutover's spawn and reaper; a non-zero exit, a failure
/// to start and the timeout (the whole process group is killed) are errors.
pub async fn run_logged(run: &LoggedCommand<'_>) -> Result<(), HookError> {
    let LoggedCommand {
        what,
        name,
        command,
        dir,
        env,
        extra_env,
        user,
        timeout: limit,
        reaper,
    } = *run;
    let start_err = |message: String| HookError::Start {
        hook: name.to_string(),
        message,
    };
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| start_err(e.to_string()))?;
    let spec = LaunchSpec {
        command,
        workdir: Some(dir),
        env,
        extra_env,
        user,
        listen: &[],
        foreground_tty: false,
        output: Some(write.as_fd()),
        input: None,
        errors: None,
    };
    info!(hook = %name, command = ?command, dir = %dir.display(), "running {what}");
    let forked_at = std::time::Instant::now();
    let forked = fork_exec(&spec).map_err(|e| start_err(e.to_string()))?;
    let mut exit = reaper.watch(forked.pid, forked_at);
    // Our copy must go, or the pipe never reaches end-of-file.
    drop(write);
    let pid = forked
        .confirm()
        .await
        .map_err(|e| start_err(e.to_string()))?;
    let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(read)
        .map_err(|e| start_err(e.to_string()))?;
    let logger = tokio::spawn(log_lines(reader, name.to_string()));
    let status = match timeout(limit, &mut exit).await {
        Ok(status) => status.unwrap_or(ExitStatus::Exited(255)),
        Err(_) => {
            warn!(hook = %name, timeout = %humantime::format_duration(limit), "{what} {name} timed out after {}; killed it", humantime::format_duration(limit));
            signal_group(pid, Signal::SIGKILL);
            let _ = exit.await;
            logger.abort();
            return Err(HookError::Timeout {
                hook: name.to_string(),
                timeout: limit,
            });
        }
    };
    // Output left in the pipe by processes that outlived the hook is not waited for.
    let output = match tokio::time::timeout(Duration::from_secs(1), logger).await {
        Ok(Ok(last)) => last,
        _ => None,
    };
    let ms = forked_at.elapsed().as_millis() as u64;
    outcome(run, status, output, ms)
}

/// Logs every line of the command's output under its name `hook`, and
/// returns the last non-blank one, shortened, for an error.
async fn log_lines(reader: tokio::net::unix::pipe::Receiver, hook: String) -> Option<String> {
    let mut lines = BufReader::new(reader).lines();
    let mut last = None;
    while let Ok(Some(line)) = lines.next_line().await {
        // Prefixed in the message itself, so the text format shows
        // the hook first (fields come after the message).
        info!(hook = %hook, "{hook}: {line}");
        if !line.trim().is_empty() {
            last = Some(line);
        }
    }
    last.map(|line| shorten(line.trim()))
}

/// Logs how the command ended, after `ms`; a non-zero exit is an error
/// that carries its last line of `output`.
fn outcome(
    run: &LoggedCommand<'_>,
    status: ExitStatus,
    output: Option<String>,
    ms: u64,
) -> Result<(), HookError> {
    let LoggedCommand { what, name, .. } = *run;
    if status.success() {
        info!(hook = %name, %status, ms, "{what} {name} finished: {status}");
        Ok(())
    } else {
        warn!(hook = %name, %status, ms, "{what} {name} failed: {status}");
        Err(HookError::Failed {
            hook: name.to_string(),
            command: run.command.join(" "),
            status,
            output,
        })
    }
}

fn shorten(line: &str) -> String {
    match line.char_indices().nth(LAST_LINE_MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}
