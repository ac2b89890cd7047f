//! The top of a `cutover run`: binds the held sockets, starts the reaper, the
//! signal listener, the reload queue and its triggers, the control socket and
//! HTTP endpoint, and one actor per program; routes signals; decides when
//! cutover exits and with which code.
//!
//! Exit rules: cutover exits once every program is finished. The first
//! program that finishes on its own (not stopped by cutover) takes the others
//! down with it and gives cutover its exit code; after a shutdown signal the
//! code is that of the first program in the config.

mod holders;

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::api::control::{self, Inventory, Published};
use crate::api::http::Routes;
use crate::config::Config;
use crate::process::exit::ExitStatus;
use crate::process::reaper::Reaper;
use crate::process::signals::{self, Incoming};
use crate::program::{self, Context, Finished, ProgramHandle};
use crate::reload::ReloadQueue;
use crate::reload::files::{self, WatchError};
use crate::reload::trigger::Trigger;
use crate::sockets::held::{self, ListenError};
use crate::source::{Source, Wiring};
use crate::status::SupervisorPhase;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot set up process reaping: {0}")]
    Reaper(io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("cannot serve HTTP on {address}: {source}")]
    Http {
        address: std::net::SocketAddr,
        source: io::Error,
    },
    #[error("cannot create runtime directory {}: {source}", .path.display())]
    RuntimeDir { path: PathBuf, source: io::Error },
    #[error("code volume: {0}")]
    Source(#[from] crate::source::SourceError),
}

/// Runs the programs of `config` until they are all finished; returns the
/// exit code for cutover. Everything that can fail on bad surroundings
/// (ports, watched directories) is set up before the first program starts,
/// and the endpoints answer from then on, the first deploy included.
pub async fn run(config: Config) -> Result<i32, SupervisorError> {
    let mut setup = Setup::prepare(&config).await?;
    let (published, view) = watch::channel(Published {
        phase: SupervisorPhase::Starting,
        programs: Vec::new(),
    });
    let inventory = setup.inventory(&config, view);
    let _endpoints = setup.serve(&config, inventory)?;
    // After the endpoints: taking sockets from a holder may wait for it to
    // come up, and probes and `cutover status` answer meanwhile.
    let (sockets, leases) = tokio::select! {
        bound = held::bind_all(&config.listen) => bound?,
        Some(Incoming::Shutdown(sig)) = setup.incoming.recv() => {
            info!(signal = %sig, "stopped while waiting for the socket holder");
            return Ok(128 + sig as i32);
        }
    };
    if let Some(code) = setup.first_release(&published).await {
        return Ok(code);
    }
    let Setup {
        reaper,
        incoming,
        runtime_dir,
        queue,
        coordinator,
        _triggers,
        source,
        exit_requests,
        ..
    } = setup;

    let (finished_tx, finished) = mpsc::unbounded_channel();
    let (events, _) = tokio::sync::broadcast::channel(64);
    let context = Context {
        reaper,
        finished: finished_tx,
        foreground_tty: config.programs.len() == 1 && owns_terminal_foreground(),
        runtime_dir: Arc::new(runtime_dir.0.clone()),
        events: events.clone(),
        watch_after_reload: watch_after_reload(&config),
    };
    let handles = start_programs(&config, &context, sockets);
    coordinator.start(handles.clone());
    let _holders = holders::keep_taking(
        leases,
        config.listen.clone(),
        handles.clone(),
        queue.clone(),
    );
    let _source = source.map(|s| {
        s.spawn(Wiring {
            queue: queue.clone(),
            programs: handles.clone(),
            events: events.subscribe(),
        })
    });
    published.send_replace(Published {
        phase: SupervisorPhase::Running,
        programs: handles.clone(),
    });
    let code = EventLoop {
        handles,
        queue,
        incoming,
        finished,
        exit_requests,
        published,
        statuses: HashMap::new(),
        first_to_end: None,
        stopping: false,
        redeploy_exit: None,
    }
    .run(&config.programs[0].name)
    .await;
    drop(runtime_dir);
    Ok(code)
}

/// Only a deploy can be rolled back when its instance stops answering: the
/// rollback window with a `[source]`, else never.
fn watch_after_reload(config: &Config) -> Duration {
    config
        .source
        .as_ref()
        .map_or(Duration::ZERO, |_| config.rollback_window)
}

/// One actor per program, each with its share of the held sockets.
fn start_programs(
    config: &Config,
    context: &Context,
    sockets: Vec<held::HeldSocket>,
) -> Vec<ProgramHandle> {
    let names = config
        .programs
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>();
    config
        .programs
        .iter()
        .zip(crate::sockets::handoff::distribute(sockets, &names))
        .map(|(p, sockets)| program::start(p.clone(), context.clone(), sockets))
        .collect()
}

/// Everything bound and opened before the first program starts.
struct Setup {
    started: Instant,
    reaper: Reaper,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    runtime_dir: RuntimeDir,
    queue: ReloadQueue,
    coordinator: crate::reload::Unstarted,
    _triggers: files::Triggers,
    http: Option<tokio::net::TcpListener>,
    webhook: Option<tokio::net::TcpListener>,
    source: Option<Source>,
    exit_requests: mpsc::UnboundedReceiver<u8>,
}

impl Setup {
    async fn prepare(config: &Config) -> Result<Setup, SupervisorError> {
        let started = Instant::now();
        let reaper = Reaper::start().map_err(SupervisorError::Reaper)?;
        let incoming = signals::listen().map_err(SupervisorError::Signals)?;
        let runtime_dir = RuntimeDir::create()?;
        let (queue, coordinator) = ReloadQueue::new(config.reload.debounce);
        let default_root = config.programs[0]
            .workdir
            .clone()
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("/"));
        let _triggers = files::start(&config.reload, &default_root, &queue)?;
        let http = bind_http(config.control.http).await?;
        let webhook = bind_http(config.source.as_ref().and_then(|s| s.webhook)).await?;
        // `[redeploy] exit = N`: stop the programs and exit with N.
        let (exit_tx, exit_requests) = mpsc::unbounded_channel::<u8>();
        let source = match &config.source {
            Some(sc) => Some(Source::open(sc.clone(), config, reaper.clone(), exit_tx).await?),
            None => None,
        };
        Ok(Setup {
            started,
            reaper,
            incoming,
            runtime_dir,
            queue,
            coordinator,
            _triggers,
            http,
            webhook,
            source,
            exit_requests,
        })
    }

    /// What the control socket and the HTTP endpoint answer from.
    fn inventory(&self, config: &Config, supervisor: watch::Receiver<Published>) -> Inventory {
        Inventory {
            supervisor,
            queue: self.queue.clone(),
            source: self.source.as_ref().map(Source::handle),
            webhook_secret: config
                .source
                .as_ref()
                .and_then(|s| s.webhook_secret.clone()),
            git_ref: config.source.as_ref().map(|s| s.git_ref.clone()),
            started: self.started,
        }
    }

    /// Starts the control socket and the HTTP listeners.
    fn serve(
        &mut self,
        config: &Config,
        inventory: Inventory,
    ) -> Result<Endpoints, SupervisorError> {
        let control = match control::serve(&config.control.socket, inventory.clone()) {
            Ok(server) => {
                info!(socket = %config.control.socket.display(), "control socket ready");
                Some(server)
            }
            Err(e) => {
                warn!(socket = %config.control.socket.display(), error = %e, "no control socket; `cutover reload` and `cutover status` will not reach this cutover");
                None
            }
        };
        let webhook = self.webhook.take().map(|listener| {
            AbortOnDrop(crate::api::http::serve(
                listener,
                inventory.clone(),
                Routes::WebhookOnly,
            ))
        });
        let http = self
            .http
            .take()
            .map(|listener| AbortOnDrop(crate::api::http::serve(listener, inventory, Routes::All)));
        Ok(Endpoints {
            _control: control,
            _webhook: webhook,
            _http: http,
        })
    }

    /// With git as the source: serve what `current` holds at once (a
    /// restarted container serves immediately) or fetch the first release
    /// before starting. Some exit code when cutover is to exit instead.
    async fn first_release(&mut self, published: &watch::Sender<Published>) -> Option<i32> {
        let src = self.source.as_mut().filter(|s| !s.has_current())?;
        published.send_modify(|p| p.phase = SupervisorPhase::WaitingForFirstRelease);
        tokio::select! {
            () = src.first_deploy() => None,
            Some(Incoming::Shutdown(sig)) = self.incoming.recv() => {
                info!(signal = %sig, "stopped before the first release arrived");
                Some(128 + sig as i32)
            }
            Some(code) = self.exit_requests.recv() => {
                info!(code, "exiting for a redeploy before the first release ran");
                Some(i32::from(code))
            }
        }
    }
}

async fn bind_http(
    address: Option<std::net::SocketAddr>,
) -> Result<Option<tokio::net::TcpListener>, SupervisorError> {
    match address {
        Some(address) => crate::api::http::bind(address)
            .await
            .map(Some)
            .map_err(|source| SupervisorError::Http { address, source }),
        None => Ok(None),
    }
}

/// The endpoints; each stops serving when dropped.
struct Endpoints {
    _control: Option<control::ControlServer>,
    _webhook: Option<AbortOnDrop>,
    _http: Option<AbortOnDrop>,
}

/// The supervisor's event loop: signals, finished programs and redeploy
/// exits, until every program is finished.
struct EventLoop {
    handles: Vec<ProgramHandle>,
    queue: ReloadQueue,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    finished: mpsc::UnboundedReceiver<Finished>,
    exit_requests: mpsc::UnboundedReceiver<u8>,
    published: watch::Sender<Published>,
    statuses: HashMap<String, ExitStatus>,
    first_to_end: Option<Finished>,
    stopping: bool,
    redeploy_exit: Option<u8>,
}

impl EventLoop {
    async fn run(mut self, first_program: &str) -> i32 {
        while self.statuses.len() < self.handles.len() {
            tokio::select! {
                Some(code) = self.exit_requests.recv(), if !self.stopping => {
                    info!(code, "stopping for a redeploy: the new image takes over");
                    self.redeploy_exit = Some(code);
                    self.stop_all(None);
                }
                Some(signal) = self.incoming.recv() => match signal {
                    Incoming::Shutdown(sig) if !self.stopping => {
                        info!(signal = %sig, "shutting down");
                        self.stop_all(None);
                    }
                    Incoming::Shutdown(sig) => {
                        warn!(signal = %sig, "second shutdown signal: killing the programs now");
                        self.handles.iter().for_each(ProgramHandle::kill);
                    }
                    Incoming::Hangup => self.queue.trigger(Trigger::Signal(Signal::SIGHUP)),
                    Incoming::Forward(sig) => forward(&self.handles, sig),
                },
                Some(done) = self.finished.recv() => {
                    self.statuses.insert(done.name.clone(), done.status);
                    if !self.stopping {
                        if self.handles.len() > 1 {
                            info!(program = %done.name, status = %done.status, "program finished; stopping the others");
                        }
                        self.stop_all(Some(&done.name));
                        self.first_to_end = Some(done);
                    }
                }
            }
        }
        if let Some(code) = self.redeploy_exit {
            info!(code, "cutover exiting for a redeploy");
            return i32::from(code);
        }
        let status = match self.first_to_end {
            Some(done) => done.status,
            None => self.statuses[first_program],
        };
        info!(%status, code = status.code(), "cutover exiting");
        status.code()
    }

    /// Stops every program but `except` (one that already finished).
    fn stop_all(&mut self, except: Option<&str>) {
        self.stopping = true;
        self.published
            .send_modify(|p| p.phase = SupervisorPhase::Stopping);
        self.handles
            .iter()
            .filter(|h| Some(h.name()) != except)
            .for_each(ProgramHandle::stop);
    }
}

fn forward(handles: &[ProgramHandle], signal: Signal) {
    info!(%signal, "forwarding signal");
    for h in handles {
        h.signal(signal);
    }
}

/// True when cutover is in the foreground of a terminal on stdin, as under
/// `docker run -it`; the program then gets the foreground instead.
fn owns_terminal_foreground() -> bool {
    let stdin = std::io::stdin();
    match nix::unistd::tcgetpgrp(&stdin) {
        Ok(fg) => fg == nix::unistd::getpgrp(),
        Err(_) => false,
    }
}

/// Private directory for per-instance NOTIFY_SOCKETs; removed on drop.
struct RuntimeDir(PathBuf);

impl RuntimeDir {
    fn create() -> Result<RuntimeDir, SupervisorError> {
        // Unique even when every cutover is PID 1 of its own namespace.
        let template = std::env::temp_dir().join("cutover-XXXXXX");
        let path = nix::unistd::mkdtemp(&template).map_err(|e| SupervisorError::RuntimeDir {
            path: template.clone(),
            source: e.into(),
        })?;
        // Programs running as another user must reach their NOTIFY_SOCKET.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|source| SupervisorError::RuntimeDir {
                path: path.clone(),
                source,
            })?;
        Ok(RuntimeDir(path))
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            error!(dir = %self.0.display(), error = %e, "cannot remove runtime directory");
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
