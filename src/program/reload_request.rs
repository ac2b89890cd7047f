//! What a reload of one program is asked with and answered with: the
//! request, why it failed (typed until it becomes the report's text), what
//! it measured, and the `ProgramReload` report built from them. Apart from
//! the strategies (`strategy`) because the actor's loop, its waits and its
//! handle deal in requests and reports without running any strategy.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::oneshot;

use super::instance::Instance;
use super::state::ProgramReload;
use crate::clock::ms;
use crate::config::ProgramConfig;
use crate::hooks::last_words;
use crate::process::exit::ExitStatus;
use crate::process::spawn::SpawnError;
use crate::program::ready::NotReady;

/// A reload asked of the actor, and where its report goes.
#[derive(Debug)]
pub(crate) struct ReloadRequest {
    pub trigger: String,
    pub received: Instant,
    pub reply: oneshot::Sender<ProgramReload>,
}

/// The measured parts of a successful reload.
#[derive(Default)]
pub(crate) struct Timings {
    pub(super) action: Duration,
    pub(super) ready: Duration,
    pub(super) cutover: Duration,
    /// `restart`: the old instance's graceful exit (the app's time).
    pub(super) old_stop: Duration,
    pub(super) drain: Duration,
    pub(super) pid: Option<i32>,
    pub(super) release: Option<PathBuf>,
}

/// Why a reload did not bring the new code up; kept typed until it
/// becomes the text of a report.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error("cannot send {signal}: {source}")]
    Signal {
        signal: Signal,
        source: nix::errno::Errno,
    },
    #[error("cannot start the new code: {0}")]
    Start(#[source] SpawnError),
    #[error("no socket for the new instance: {0}")]
    Sockets(#[source] std::io::Error),
    #[error(transparent)]
    NotReady(#[from] NotReady),
    #[error("the new instance {status} before it was ready{}", last_words(.said))]
    NewExited {
        status: ExitStatus,
        /// Its last line on stderr: usually the exception that killed it.
        said: Option<String>,
    },
    #[error("the program {0} while reloading")]
    Died(ExitStatus),
    #[error("{why}; restarted the previous code in {dir}")]
    FellBack { why: Box<ReloadError>, dir: String },
    #[error("{why}; the previous code could not start either: {source}")]
    FallBackFailed {
        why: Box<ReloadError>,
        source: SpawnError,
    },
    #[error("{0}")]
    Refused(&'static str),
}

impl ReloadRequest {
    pub fn report(
        &self,
        config: &ProgramConfig,
        result: Result<Timings, ReloadError>,
    ) -> ProgramReload {
        let (t, error) = match result {
            Ok(t) => (t, None),
            Err(e) => (Timings::default(), Some(e.to_string())),
        };
        ProgramReload {
            program: config.name.clone(),
            strategy: config.reload.into(),
            ok: error.is_none(),
            error,
            pid: t.pid,
            release: t.release.map(|r| r.display().to_string()),
            action_ms: ms(t.action),
            ready_ms: ms(t.ready),
            cutover_ms: ms(t.cutover),
            old_stop_ms: ms(t.old_stop),
            drain_ms: ms(t.drain),
        }
    }

    /// Answers a reload that the start under way already is (it runs the
    /// release this reload asks for): with that start's readiness, or why it
    /// failed.
    pub(super) fn answer_with_start(
        self,
        config: &ProgramConfig,
        instance: &Instance,
        ready: Result<Duration, ReloadError>,
    ) {
        let result = ready.map(|took| Timings {
            ready: took,
            pid: Some(instance.pid.as_raw()),
            release: instance.dir.clone(),
            ..Timings::default()
        });
        let report = self.report(config, result);
        let _ = self.reply.send(report);
    }

    pub fn refuse(self, config: &ProgramConfig, why: &'static str) {
        let report = self.report(config, Err(ReloadError::Refused(why)));
        let _ = self.reply.send(report);
    }
}
