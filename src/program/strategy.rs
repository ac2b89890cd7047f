//! The reload strategies of one program: `signal`, `restart`, `overlap`.
//!
//! Each ends with the program running (new code, or the old code kept when
//! the new failed) or ended, and a `ProgramReload` report for the caller.
//! A broken release never replaces a working one: with `overlap` the old
//! instance keeps serving; with `restart` the program is brought back in the
//! last directory that proved ready, even if `current` now points elsewhere.
//! With per-instance sockets (`handoff`), an old instance is sent its stop
//! signal only once no new connection reaches it and its accept queue is
//! empty (the drain), so it has nothing to drop when it stops.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{info, warn};

use super::instance::{Dir, ExitSlot, Instance, ready_of};
use super::reload_request::{ReloadError, ReloadRequest, Timings};
use super::state::ProgramState;
use super::{Ended, Flow, Program};
use crate::clock::ms;
use crate::config::ReloadStrategy;
use crate::process::exit::ExitStatus;
use crate::program::ready::NotReady;

/// Where a reload leaves the program.
pub(super) enum After {
    Running(Instance),
    Ended(Ended),
}

enum Wait {
    Ready,
    NotReady(NotReady),
    Exited(ExitStatus),
    Stop { kill: bool },
}

impl Program {
    pub(super) async fn reload(&mut self, old: Instance, request: ReloadRequest) -> After {
        let strategy = self.strategy_now();
        let before = self.stats.state;
        if strategy != ReloadStrategy::None {
            info!(program = %self.config.name, strategy = %strategy.name(), trigger = %request.trigger, "reloading");
            self.set_state(ProgramState::Reloading);
        }
        let (mut after, result) = match strategy {
            ReloadStrategy::None => (After::Running(old), Ok(Timings::default())),
            ReloadStrategy::Signal(signal) => self.by_signal(old, signal, &request).await,
            ReloadStrategy::Restart => self.by_restart(old, &request).await,
            ReloadStrategy::Overlap => self.by_overlap(old, &request).await,
        };
        let reloaded = result.is_ok() && strategy != ReloadStrategy::None;
        self.finish_reload(&after, before, result, request);
        if let (After::Running(instance), true) = (&mut after, reloaded) {
            self.watch_readiness(instance);
            self.take_users(instance).await;
        }
        after
    }

    /// A reload asked for while the program was down (backing off): the new
    /// instance is already launched; wait for it like any reload.
    pub(super) async fn reload_from_stopped(
        &mut self,
        mut new: Instance,
        request: ReloadRequest,
    ) -> Ended {
        let action = request.received.elapsed();
        let started = Instant::now();
        let result = match self.wait_ready(&mut new, None).await {
            Wait::Ready => Ok(self.accept(&new, action, started, started.elapsed())),
            Wait::NotReady(why) => Err(why.into()),
            Wait::Exited(status) => {
                let said = new.last_words().await;
                self.finish_reload(
                    &After::Ended(Ended::Exited(status)),
                    None,
                    Err(ReloadError::NewExited { status, said }),
                    request,
                );
                return self.exited(new, status).await;
            }
            Wait::Stop { kill } => {
                let status = self.stop(new, kill).await;
                request.refuse(&self.config, "cutover is stopping");
                return Ended::Stopped(status);
            }
        };
        if result.is_ok() {
            self.take_users(&new).await;
        }
        let after = After::Running(new);
        self.finish_reload(&after, None, result, request);
        match after {
            After::Running(instance) => self.supervise_boxed(instance).await,
            After::Ended(ended) => ended,
        }
    }

    fn finish_reload(
        &mut self,
        after: &After,
        before: Option<ProgramState>,
        result: Result<Timings, ReloadError>,
        request: ReloadRequest,
    ) {
        let reloads = self.strategy_now() != ReloadStrategy::None;
        if reloads {
            self.update(|s| s.reloads += 1);
        }
        if matches!(after, After::Running(_)) && result.is_ok() {
            self.sockets_replaced = false;
        }
        match (&result, after) {
            (Ok(t), _) => {
                info!(
                    program = %self.config.name,
                    pid = t.pid.unwrap_or_default(),
                    ready_ms = ms(t.ready) as u64,
                    total_ms = ms(request.received.elapsed()) as u64,
                    "reload done"
                );
                if reloads {
                    self.set_state(ProgramState::Running);
                }
            }
            (Err(why), after) => {
                warn!(program = %self.config.name, error = %why, "reload failed");
                let state = match after {
                    After::Running(i) if i.ready.is_some() => Some(ProgramState::Starting),
                    _ => before,
                };
                self.update(|s| {
                    s.reload_failures += 1;
                    s.state = state;
                });
            }
        }
        let report = request.report(&self.config, result);
        let _ = request.reply.send(report);
    }

    /// Records a new instance as good and returns the timings.
    fn accept(
        &mut self,
        new: &Instance,
        action: Duration,
        started: Instant,
        cutover: Duration,
    ) -> Timings {
        self.good_dir = new.dir.clone();
        self.update(|s| s.serving = Some(super::Serving::of(new)));
        Timings {
            action,
            ready: started.elapsed().saturating_sub(cutover),
            cutover,
            old_stop: Duration::ZERO,
            drain: Duration::ZERO,
            pid: Some(new.pid.as_raw()),
            release: new.dir.clone(),
        }
    }

    /// `signal`: the program reloads itself; readiness is checked again.
    async fn by_signal(
        &mut self,
        mut old: Instance,
        signal: Signal,
        request: &ReloadRequest,
    ) -> (After, Result<Timings, ReloadError>) {
        // The leader only: workers of gunicorn and the like must not see it.
        if let Err(e) = nix::sys::signal::kill(old.pid, signal) {
            return (
                After::Running(old),
                Err(ReloadError::Signal { signal, source: e }),
            );
        }
        let action = request.received.elapsed();
        let started = Instant::now();
        // Report the code it now serves: the workdir as it resolves now.
        if let Some(w) = &self.config.workdir {
            old.dir = Some(std::fs::canonicalize(w).unwrap_or_else(|_| w.clone()));
        }
        self.check_readiness(&mut old, false);
        match self.wait_ready(&mut old, None).await {
            Wait::Ready => {
                let t = self.accept(&old, action, started, Duration::ZERO);
                (After::Running(old), Ok(t))
            }
            Wait::NotReady(why) => (After::Running(old), Err(why.into())),
            Wait::Exited(status) => {
                warn!(program = %self.config.name, %status, "the program died while reloading; its restart policy decides what follows");
                let ended = self.exited(old, status).await;
                (After::Ended(ended), Err(ReloadError::Died(status)))
            }
            Wait::Stop { kill } => (
                After::Ended(Ended::Stopped(self.stop(old, kill).await)),
                Err(ReloadError::Refused("cutover is stopping")),
            ),
        }
    }

    /// `restart`: graceful stop, start on the re-resolved workdir. Held
    /// sockets keep connections waiting in the backlog meanwhile.
    async fn by_restart(
        &mut self,
        old: Instance,
        request: &ReloadRequest,
    ) -> (After, Result<Timings, ReloadError>) {
        let fallback = self.good_dir.clone().or_else(|| old.dir.clone());
        let stopping = Instant::now();
        // New connections wait in the next instance's sockets while this one
        // finishes what it has; if none can be bound, they share the old ones.
        let retired = old.generation;
        let next = match self.next_generation().await {
            Ok(next) => next,
            Err(e) => {
                warn!(program = %self.config.name, error = %e, "restarting on the old sockets");
                retired
            }
        };
        let (drained, stop_asked) = if next == retired {
            (Duration::ZERO, None)
        } else {
            self.sockets.steer_to(next).await;
            self.serving_generation = next;
            self.drain(&old, &[]).await
        };
        if let Some(kill) = stop_asked {
            let status = self.stop(old, kill).await;
            return (
                After::Ended(Ended::Stopped(status)),
                Err(ReloadError::Refused("cutover is stopping")),
            );
        }
        self.stop(old, false).await;
        if next != retired {
            self.sockets.retire(retired).await;
        }
        // The old instance's graceful exit is the app's time, not cutover's.
        let stopped_in = stopping.elapsed();
        let action = request.received.elapsed().saturating_sub(stopped_in);
        let started = Instant::now();
        // The old instance has stopped: the new one is alone.
        let mut new = match self.launch(&Dir::Resolve, next, true).await {
            Ok(i) => i,
            Err(e) => {
                return self.fall_back(fallback, ReloadError::Start(e)).await;
            }
        };
        match self.wait_ready(&mut new, None).await {
            Wait::Ready => {
                let mut t = self.accept(&new, action, started, Duration::ZERO);
                t.old_stop = stopped_in.saturating_sub(drained);
                t.drain = drained;
                (After::Running(new), Ok(t))
            }
            Wait::NotReady(why) => {
                self.stop(new, false).await;
                self.fall_back(fallback, why.into()).await
            }
            Wait::Exited(status) => {
                let said = new.last_words().await;
                self.clear_leftovers(new.pid).await;
                self.fall_back(fallback, ReloadError::NewExited { status, said })
                    .await
            }
            Wait::Stop { kill } => (
                After::Ended(Ended::Stopped(self.stop(new, kill).await)),
                Err(ReloadError::Refused("cutover is stopping")),
            ),
        }
    }

    /// Brings the program back in the last directory that worked.
    async fn fall_back(
        &mut self,
        dir: Option<PathBuf>,
        why: ReloadError,
    ) -> (After, Result<Timings, ReloadError>) {
        let target = dir.clone().map_or(Dir::Resolve, Dir::Pinned);
        let shown = dir
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "its workdir".into());
        warn!(program = %self.config.name, error = %why, dir = %shown, "new code failed; starting the previous code again");
        match self.launch(&target, self.serving_generation, true).await {
            Ok(instance) => (
                After::Running(instance),
                Err(ReloadError::FellBack {
                    why: Box::new(why),
                    dir: shown,
                }),
            ),
            Err(e) => (
                After::Ended(Ended::Exited(ExitStatus::Exited(e.exit_code()))),
                Err(ReloadError::FallBackFailed {
                    why: Box::new(why),
                    source: e,
                }),
            ),
        }
    }

    /// `overlap`: the new instance starts beside the old one; the old one is
    /// stopped only once the new one is ready. Users see no gap.
    async fn by_overlap(
        &mut self,
        mut old: Instance,
        request: &ReloadRequest,
    ) -> (After, Result<Timings, ReloadError>) {
        let started = Instant::now();
        let next = match self.next_generation().await {
            Ok(next) => next,
            Err(e) => return (After::Running(old), Err(ReloadError::Sockets(e))),
        };
        let mut new = match self.launch(&Dir::Resolve, next, false).await {
            Ok(i) => i,
            Err(e) => {
                self.abandon(next).await;
                return (After::Running(old), Err(ReloadError::Start(e)));
            }
        };
        let action = request.received.elapsed().saturating_sub(started.elapsed());
        match self.wait_ready(&mut new, Some(&mut old.exit)).await {
            Wait::Ready => {
                let cutover_started = Instant::now();
                let t = self.accept(&new, action, started, Duration::ZERO);
                let old_pid = old.pid;
                let retired = old.generation;
                self.sockets.steer_to(next).await;
                self.serving_generation = next;
                let steered = cutover_started.elapsed();
                let (drained, stop_asked) = self.drain(&old, &[&new]).await;
                if let Some(kill) = stop_asked {
                    self.stop(old, kill).await;
                    return (
                        After::Ended(Ended::Stopped(self.stop(new, kill).await)),
                        Err(ReloadError::Refused("cutover is stopping")),
                    );
                }
                self.stop_previous(old).await;
                if retired != next {
                    self.sockets.retire(retired).await;
                }
                info!(program = %self.config.name, old = %old_pid, new = %new.pid, "cut over to the new instance");
                (
                    After::Running(new),
                    Ok(Timings {
                        // stop() sends stop_signal first thing; cutover's own part
                        // ends there, less the drain the config asks for.
                        cutover: steered,
                        drain: drained,
                        ..t
                    }),
                )
            }
            Wait::NotReady(why) => {
                self.stop(new, false).await;
                self.abandon(next).await;
                (After::Running(old), Err(why.into()))
            }
            Wait::Exited(status) => {
                let said = new.last_words().await;
                self.clear_leftovers(new.pid).await;
                self.abandon(next).await;
                (
                    After::Running(old),
                    Err(ReloadError::NewExited { status, said }),
                )
            }
            Wait::Stop { kill } => {
                self.stop(new, kill).await;
                self.abandon(next).await;
                (
                    After::Ended(Ended::Stopped(self.stop(old, kill).await)),
                    Err(ReloadError::Refused("cutover is stopping")),
                )
            }
        }
    }

    async fn stop_previous(&mut self, old: Instance) {
        let state = self.stats.state;
        self.stop(old, false).await;
        self.update(|s| s.state = state);
    }

    /// Waits for `new` to pass readiness while answering commands. `old`, the
    /// instance still serving during an overlap, may end meanwhile; that is
    /// remembered in its slot and handled once the reload is over.
    async fn wait_ready(&mut self, new: &mut Instance, mut old: Option<&mut ExitSlot>) -> Wait {
        loop {
            tokio::select! {
                biased;
                status = new.exit.wait() => return Wait::Exited(status),
                status = old_exit(&mut old) => {
                    warn!(program = %self.config.name, %status, "the old instance ended during the overlap");
                    old = None;
                }
                result = ready_of(&mut new.ready) => {
                    new.ready = None;
                    return match result {
                        Ok(_) => Wait::Ready,
                        Err(e) => Wait::NotReady(e),
                    };
                }
                command = self.commands.recv(), if !self.commands.is_closed() => {
                    match self.answer(command, &[&*new]) {
                        None => {}
                        Some(Flow::Stop { kill }) => return Wait::Stop { kill },
                        Some(Flow::Reload(r)) => r.refuse(&self.config, "a reload of this program is already running"),
                    }
                }
            }
        }
    }

    fn supervise_boxed(
        &mut self,
        instance: Instance,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Ended> + Send + '_>> {
        Box::pin(self.supervise(instance))
    }
}

async fn old_exit(old: &mut Option<&mut ExitSlot>) -> ExitStatus {
    match old {
        Some(slot) if slot.seen().is_none() => slot.wait().await,
        _ => std::future::pending().await,
    }
}
