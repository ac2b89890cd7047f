//! One supervised program, as an actor.
//!
//! A task owns the program's instances and all its state (restart
//! bookkeeping, the last directory that proved good, counters); a cloneable
//! `ProgramHandle` (`handle`) sends it commands. When the program is
//! finished for good (it ended and will not be restarted, or it was
//! stopped) the task reports `Finished` to the supervisor. `instance`
//! starts and stops processes, `strategy` carries out the reload strategies
//! (`reload_request`: what a reload is asked and answered with), `stderr`
//! relays each instance's stderr and keeps its last line for errors.

mod handle;
mod handover;
mod instance;
pub(crate) mod notify;
pub(crate) mod ready;
mod reload_request;
pub(crate) mod restart;
pub(crate) mod state;
mod stderr;
mod strategy;
mod waiting;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::clock::timestamp;
use crate::config::{ForwardTo, ProgramConfig};
use crate::process::exit::ExitStatus;
use crate::process::group::signal_group;
use crate::process::reaper::Reaper;
use crate::program::restart::{Decision, RestartTracker};
use crate::sockets::handoff::{Generation, ProgramSockets};
use state::{ProgramState, ProgramStatus};

use handle::Command;
pub use handle::ProgramHandle;
use instance::{Dir, Instance};
use reload_request::{ReloadError, ReloadRequest};

/// A program that is done for good, with the status cutover passes on.
#[derive(Debug, Clone)]
pub struct Finished {
    pub name: String,
    pub status: ExitStatus,
}

/// What the rest of cutover may want to know about a program as it happens.
#[derive(Debug, Clone)]
pub enum ProgramEvent {
    /// An instance ended on its own (a crash, or a clean exit nobody asked for).
    Exited { name: String, status: ExitStatus },
    /// The instance a reload brought up stopped passing its readiness check
    /// while its main process lives (workers crash-looping, a deadlock).
    Unready { name: String, why: String },
}

/// Shared, read-only things every program actor needs.
#[derive(Clone)]
pub struct Context {
    pub reaper: Reaper,
    pub finished: mpsc::UnboundedSender<Finished>,
    /// Hand the terminal's foreground to the program (interactive `docker run -it`).
    pub foreground_tty: bool,
    /// Where per-instance NOTIFY_SOCKETs are created.
    pub runtime_dir: Arc<PathBuf>,
    pub events: tokio::sync::broadcast::Sender<ProgramEvent>,
    /// After a reload, how long the new instance's readiness keeps being
    /// checked (the rollback window); zero for never.
    pub watch_after_reload: Duration,
}

/// Starts the actor; the program is launched at once.
pub fn start(config: ProgramConfig, context: Context, sockets: ProgramSockets) -> ProgramHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let stats = Stats::default();
    let (published, status) = watch::channel(stats.snapshot(&config));
    let handle = ProgramHandle {
        name: config.name.clone(),
        commands: tx,
        status,
    };
    let tracker = RestartTracker::new(config.restart, config.backoff);
    let program = Program {
        config,
        context,
        commands: rx,
        tracker,
        stats,
        published,
        good_dir: None,
        launched: 0,
        sockets,
        serving_generation: ProgramSockets::first(),
        first_release_starting: false,
        sockets_replaced: false,
    };
    tokio::spawn(program.run());
    handle
}

struct Program {
    config: ProgramConfig,
    context: Context,
    commands: mpsc::UnboundedReceiver<Command>,
    tracker: RestartTracker,
    /// Changed only through `update`, which publishes it.
    stats: Stats,
    published: watch::Sender<ProgramStatus>,
    /// The directory of the last instance that proved ready: where crash
    /// restarts and failed reloads go back to, even if a symlink moved.
    good_dir: Option<PathBuf>,
    launched: u64,
    /// The listening sockets, and their hand-off between instances.
    sockets: ProgramSockets,
    /// The sockets a (re)started instance takes: those traffic goes to.
    serving_generation: Generation,
    /// The first release just appeared in a workdir that was waited for, and
    /// the instance started from it is not ready yet: a reload for that
    /// release meanwhile is that start (see `supervise`). Cleared at its
    /// readiness or exit, and by new sockets (a reload must move onto them).
    first_release_starting: bool,
    /// The shared sockets were replaced and the running instance still has
    /// the old ones: the next reload must start a new instance.
    sockets_replaced: bool,
}

#[derive(Default)]
struct Stats {
    state: Option<ProgramState>,
    /// The instance that serves now (the old one, during an overlap).
    serving: Option<Serving>,
    restarts: u64,
    reloads: u64,
    reload_failures: u64,
    last_exit: Option<ExitStatus>,
}

/// What status shows of the serving instance.
struct Serving {
    pid: i32,
    release: Option<PathBuf>,
    started_at: SystemTime,
}

impl Serving {
    fn of(instance: &Instance) -> Serving {
        Serving {
            pid: instance.pid.as_raw(),
            release: instance.dir.clone(),
            started_at: instance.started_at,
        }
    }
}

impl Stats {
    fn snapshot(&self, config: &ProgramConfig) -> ProgramStatus {
        ProgramStatus {
            name: config.name.clone(),
            state: self.state.unwrap_or(ProgramState::Starting),
            pid: self.serving.as_ref().map(|s| s.pid),
            strategy: config.reload.into(),
            release: self
                .serving
                .as_ref()
                .and_then(|s| s.release.as_ref())
                .map(|d| d.display().to_string()),
            started_at: self.serving.as_ref().map(|s| timestamp(s.started_at)),
            restarts: self.restarts,
            reloads: self.reloads,
            reload_failures: self.reload_failures,
            last_exit: self.last_exit.map(|s| s.to_string()),
        }
    }
}

enum Ended {
    /// It ended by itself; the restart policy decides what follows.
    Exited(ExitStatus),
    /// cutover stopped it; the program is finished.
    Stopped(ExitStatus),
}

/// A command that changes what the actor is doing.
enum Flow {
    Stop { kill: bool },
    Reload(ReloadRequest),
}

impl Program {
    async fn run(mut self) {
        let status = self.lifecycle().await;
        self.update(|s| {
            s.state = Some(ProgramState::Stopped);
            s.serving = None;
        });
        let _ = self.context.finished.send(Finished {
            name: self.config.name.clone(),
            status,
        });
    }

    async fn lifecycle(&mut self) -> ExitStatus {
        let mut dir = Dir::Resolve;
        let mut reload_on_start = match self.wait_for_workdir().await {
            Some(request) => request,
            // Stopped before it ever ran.
            None => return ExitStatus::Exited(0),
        };
        loop {
            self.set_state(ProgramState::Starting);
            let started = Instant::now();
            let status = match self.launch(&dir, self.serving_generation, true).await {
                Ok(instance) => {
                    self.update(|s| s.serving = Some(Serving::of(&instance)));
                    let ended = match reload_on_start.take() {
                        Some(request) => self.reload_from_stopped(instance, request).await,
                        None => self.supervise(instance).await,
                    };
                    match ended {
                        Ended::Stopped(status) => return status,
                        Ended::Exited(status) => status,
                    }
                }
                Err(e) => {
                    self.first_release_starting = false;
                    error!(program = %self.config.name, error = %e, "cannot start program");
                    let status = ExitStatus::Exited(e.exit_code());
                    if let Some(request) = reload_on_start.take() {
                        self.update(|s| s.reload_failures += 1);
                        let report = request.report(&self.config, Err(ReloadError::Start(e)));
                        let _ = request.reply.send(report);
                    }
                    status
                }
            };
            self.update(|s| {
                s.last_exit = Some(status);
                s.serving = None;
            });
            match self
                .tracker
                .on_exit(status, started.elapsed(), Instant::now())
            {
                Decision::Finish => return status,
                Decision::GiveUp { failures, window } => {
                    error!(
                        program = %self.config.name,
                        %status,
                        failures,
                        window = %humantime::format_duration(window),
                        "giving up: the program keeps failing; not restarting it again"
                    );
                    return status;
                }
                Decision::RestartAfter(delay) => {
                    info!(
                        program = %self.config.name,
                        delay = %humantime::format_duration(delay),
                        "restarting after backoff"
                    );
                    self.set_state(ProgramState::BackingOff);
                    match self.wait_backoff(delay).await {
                        None => return status,
                        Some(request) => reload_on_start = request,
                    }
                    self.update(|s| s.restarts += 1);
                }
            }
            dir = match (&reload_on_start, &self.good_dir) {
                (None, Some(good)) => Dir::Pinned(good.clone()),
                _ => Dir::Resolve,
            };
        }
    }

    /// Runs commands against the instance until it ends or is stopped.
    async fn supervise(&mut self, mut instance: Instance) -> Ended {
        // Reloads asked for while this instance, started from the release
        // they ask for, was still getting ready: a playbook's `reload --wait`
        // right after the checkout that started the program. This start is
        // their reload; a second instance would only boot the same code.
        let mut joined: Vec<ReloadRequest> = Vec::new();
        loop {
            // Every instance that serves passes here: after a start, a
            // reload, or a fall-back to the last good directory.
            if self.stats.serving.as_ref().map(|s| s.pid) != Some(instance.pid.as_raw()) {
                self.update(|s| s.serving = Some(Serving::of(&instance)));
            }
            tokio::select! {
                biased;
                status = instance.exit.wait() => {
                    self.first_release_starting = false;
                    instance.output_relayed().await;
                    let said = if joined.is_empty() {
                        None
                    } else {
                        instance.last_words().await
                    };
                    for request in joined.drain(..) {
                        let said = said.clone();
                        let exited = ReloadError::NewExited { status, said };
                        request.answer_with_start(&self.config, &instance, Err(exited));
                    }
                    return self.exited(instance, status).await;
                }
                result = instance::ready_of(&mut instance.ready) => {
                    instance.ready = None;
                    self.first_release_starting = false;
                    let ready = result.is_ok();
                    for request in joined.drain(..) {
                        let answer = result.clone().map_err(Into::into);
                        request.answer_with_start(&self.config, &instance, answer);
                    }
                    self.on_ready(&instance, result);
                    if ready {
                        self.take_users(&instance).await;
                    }
                }
                why = instance::unready_of(&mut instance.watchdog) => {
                    instance.watchdog = None;
                    warn!(program = %self.config.name, pid = %instance.pid, error = %why, "the reloaded instance lives but no longer passes its readiness check");
                    self.set_state(ProgramState::Unready);
                    let _ = self.context.events.send(ProgramEvent::Unready {
                        name: self.config.name.clone(),
                        why: why.to_string(),
                    });
                }
                command = self.commands.recv() => match self.answer(command, &[&instance]) {
                    None => {}
                    Some(Flow::Stop { kill }) => {
                        let kill = kill || self.leave(&instance).await.unwrap_or(false);
                        return Ended::Stopped(self.stop(instance, kill).await);
                    }
                    Some(Flow::Reload(request))
                        if self.first_release_starting
                            && instance.ready.is_some()
                            && self.runs_current(&instance).await =>
                    {
                        info!(program = %self.config.name, pid = %instance.pid, "reload: the start under way runs that release; answering once it is ready");
                        joined.push(request);
                    }
                    Some(Flow::Reload(request)) => match self.reload(instance, request).await {
                        strategy::After::Running(next) => instance = next,
                        strategy::After::Ended(ended) => return ended,
                    },
                },
            }
        }
    }

    async fn exited(&mut self, instance: Instance, status: ExitStatus) -> Ended {
        info!(program = %self.config.name, pid = %instance.pid, %status, "exited");
        let _ = self.context.events.send(ProgramEvent::Exited {
            name: self.config.name.clone(),
            status,
        });
        self.clear_leftovers(instance.pid).await;
        Ended::Exited(status)
    }

    fn on_ready(
        &mut self,
        instance: &Instance,
        result: Result<Duration, crate::program::ready::NotReady>,
    ) {
        match result {
            Ok(took) => {
                info!(program = %self.config.name, pid = %instance.pid, ms = took.as_millis() as u64, "ready");
                self.set_state(ProgramState::Running);
                self.good_dir = instance.dir.clone();
            }
            Err(e) => {
                warn!(program = %self.config.name, pid = %instance.pid, error = %e, "not ready");
                self.set_state(ProgramState::Unready);
            }
        }
    }

    /// Handles the commands that need no change of flow; returns the others.
    /// `live` are the instances running now (two during an overlap).
    fn answer(&mut self, command: Option<Command>, live: &[&Instance]) -> Option<Flow> {
        match command {
            Some(Command::Signal(signal)) => {
                for instance in live {
                    match self.config.forward_to {
                        ForwardTo::Group => {
                            signal_group(instance.pid, signal);
                        }
                        ForwardTo::Main => {
                            let _ = nix::sys::signal::kill(instance.pid, signal);
                        }
                    }
                }
                None
            }
            Some(Command::Stop) | None => Some(Flow::Stop { kill: false }),
            Some(Command::Kill) => Some(Flow::Stop { kill: true }),
            Some(Command::Reload(request)) => Some(Flow::Reload(request)),
            Some(Command::ReplaceSockets(sockets, holder)) => {
                let shared = self.sockets.replace_shared(&sockets);
                if self.sockets.replace_holder(&holder) | shared {
                    self.first_release_starting = false;
                    info!(program = %self.config.name, "new listening sockets; the next reload starts an instance on them");
                    self.sockets_replaced = true;
                }
                None
            }
        }
    }

    /// The one place program state changes: every change is published.
    fn set_state(&mut self, state: ProgramState) {
        if self.stats.state != Some(state) {
            debug!(program = %self.config.name, from = ?self.stats.state, to = ?state, "state");
        }
        self.update(|s| s.state = Some(state));
    }

    /// Changes the bookkeeping and publishes the result for readers.
    fn update(&mut self, change: impl FnOnce(&mut Stats)) {
        change(&mut self.stats);
        self.published
            .send_replace(self.stats.snapshot(&self.config));
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}
