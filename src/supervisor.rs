//! The top of a `cutover run`: binds the held sockets, starts the reaper, the
//! signal listener, the reload queue and its triggers, the control socket and
//! HTTP endpoint, and one actor per program; routes signals; decides when
//! cutover exits and with which code.
//!
//! Exit rules: cutover exits once every program is finished. The first
//! program that finishes on its own (not stopped by cutover) takes the others
//! down with it and gives cutover its exit code; after a shutdown signal the
//! code is that of the first program in the config.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::control::{self, Inventory};
use crate::exit::ExitStatus;
use crate::http::Routes;
use crate::listen::{self, ListenError};
use crate::program::{self, Context, Finished, ProgramHandle};
use crate::reaper::Reaper;
use crate::reload::ReloadQueue;
use crate::signals::{self, Incoming};
use crate::source::{Source, Wiring};
use crate::triggers::{self, WatchError};

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
/// (ports, watched directories) is set up before the first program starts.
pub async fn run(config: Config) -> Result<i32, SupervisorError> {
    let started = Instant::now();
    let reaper = Reaper::start().map_err(SupervisorError::Reaper)?;
    let mut incoming = signals::listen().map_err(SupervisorError::Signals)?;
    let sockets = Arc::new(listen::bind_all(&config.listen)?);
    let runtime_dir = RuntimeDir::create()?;
    let (queue, coordinator) = ReloadQueue::new(config.reload.debounce);
    let default_root = config.programs[0]
        .workdir
        .clone()
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"));
    let _triggers = triggers::start(&config.reload, &default_root, &queue)?;
    let http = match config.control.http {
        Some(address) => Some(
            crate::http::bind(address)
                .await
                .map_err(|source| SupervisorError::Http { address, source })?,
        ),
        None => None,
    };

    let webhook = match config.source.as_ref().and_then(|s| s.webhook) {
        Some(address) => Some(
            crate::http::bind(address)
                .await
                .map_err(|source| SupervisorError::Http { address, source })?,
        ),
        None => None,
    };

    // With git as the source: serve what `current` holds at once (a restarted
    // container serves immediately) or fetch the first release before starting.
    // `[redeploy] exit = N`: stop the programs and exit with N.
    let (exit_tx, mut exit_requests) = mpsc::unbounded_channel::<u8>();
    let mut source = match &config.source {
        Some(sc) => Some(Source::open(
            sc.clone(),
            &config,
            reaper.clone(),
            exit_tx.clone(),
        )?),
        None => None,
    };
    if let Some(src) = source.as_mut().filter(|s| !s.has_current()) {
        tokio::select! {
            () = src.first_deploy() => {}
            Some(Incoming::Shutdown(sig)) = incoming.recv() => {
                info!(signal = %sig, "stopped before the first release arrived");
                return Ok(128 + sig as i32);
            }
            Some(code) = exit_requests.recv() => {
                info!(code, "exiting for a redeploy before the first release ran");
                return Ok(i32::from(code));
            }
        }
    }

    let (finished_tx, mut finished) = mpsc::unbounded_channel();
    let (events, _) = tokio::sync::broadcast::channel(64);
    let context = Context {
        reaper,
        finished: finished_tx,
        foreground_tty: config.programs.len() == 1 && owns_terminal_foreground(),
        sockets,
        runtime_dir: Arc::new(runtime_dir.0.clone()),
        events: events.clone(),
    };
    let handles: Vec<ProgramHandle> = config
        .programs
        .iter()
        .map(|p| program::start(p.clone(), context.clone()))
        .collect();
    coordinator.start(handles.clone());
    let source = source.map(|s| {
        s.spawn(Wiring {
            queue: queue.clone(),
            programs: handles.clone(),
            events: events.subscribe(),
        })
    });
    let inventory = Inventory {
        programs: handles.clone(),
        queue: queue.clone(),
        source,
        webhook_secret: config
            .source
            .as_ref()
            .and_then(|s| s.webhook_secret.clone()),
        git_ref: config.source.as_ref().map(|s| s.git_ref.clone()),
        started,
    };
    let _control = match control::serve(&config.control.socket, inventory.clone()) {
        Ok(server) => {
            info!(socket = %config.control.socket.display(), "control socket ready");
            Some(server)
        }
        Err(e) => {
            warn!(socket = %config.control.socket.display(), error = %e, "no control socket; `cutover reload` and `cutover status` will not reach this cutover");
            None
        }
    };
    let _webhook = webhook.map(|listener| {
        AbortOnDrop(crate::http::serve(
            listener,
            inventory.clone(),
            Routes::WebhookOnly,
        ))
    });
    let _http =
        http.map(|listener| AbortOnDrop(crate::http::serve(listener, inventory, Routes::All)));

    let mut statuses: HashMap<String, ExitStatus> = HashMap::new();
    let mut first_to_end: Option<Finished> = None;
    let mut stopping = false;
    let mut redeploy_exit: Option<u8> = None;
    while statuses.len() < handles.len() {
        tokio::select! {
            Some(code) = exit_requests.recv(), if !stopping => {
                info!(code, "stopping for a redeploy: the new image takes over");
                stopping = true;
                redeploy_exit = Some(code);
                handles.iter().for_each(ProgramHandle::stop);
            }
            Some(signal) = incoming.recv() => match signal {
                Incoming::Shutdown(sig) if !stopping => {
                    info!(signal = %sig, "shutting down");
                    stopping = true;
                    handles.iter().for_each(ProgramHandle::stop);
                }
                Incoming::Shutdown(sig) => {
                    warn!(signal = %sig, "second shutdown signal: killing the programs now");
                    handles.iter().for_each(ProgramHandle::kill);
                }
                Incoming::Hangup => queue.trigger("SIGHUP"),
                Incoming::Forward(sig) => forward(&handles, sig),
            },
            Some(done) = finished.recv() => {
                statuses.insert(done.name.clone(), done.status);
                if !stopping {
                    if handles.len() > 1 {
                        info!(program = %done.name, status = %done.status, "program finished; stopping the others");
                    }
                    stopping = true;
                    handles.iter().filter(|h| h.name() != done.name).for_each(ProgramHandle::stop);
                    first_to_end = Some(done);
                }
            }
        }
    }

    if let Some(code) = redeploy_exit {
        info!(code, "cutover exiting for a redeploy");
        return Ok(i32::from(code));
    }
    let status = match first_to_end {
        Some(done) => done.status,
        None => statuses[&config.programs[0].name],
    };
    info!(%status, code = status.code(), "cutover exiting");
    Ok(status.code())
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
