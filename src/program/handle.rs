//! What the rest of cutover holds of a program: a cloneable handle that
//! sends the actor commands and reads the status it publishes, without ever
//! waiting for the actor itself (which may be busy in a reload or a stop).

use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};

use super::reload_request::ReloadRequest;
use super::state::{ProgramReload, ProgramStatus};
use crate::sockets::held::HeldSocket;
use crate::sockets::link::HolderLink;

/// What a handle asks of the actor.
#[derive(Debug)]
pub(super) enum Command {
    /// Pass a signal to the running instance's process group.
    Signal(Signal),
    /// Stop gracefully: stop_signal, stop_timeout, then SIGKILL.
    Stop,
    /// Skip the grace period.
    Kill,
    Reload(ReloadRequest),
    /// New shared sockets and the link to a restarted holder, for the
    /// instances started from now on; a reload follows.
    ReplaceSockets(Vec<Arc<HeldSocket>>, HolderLink),
}

#[derive(Clone, Debug)]
pub struct ProgramHandle {
    pub(super) name: String,
    pub(super) commands: mpsc::UnboundedSender<Command>,
    pub(super) status: watch::Receiver<ProgramStatus>,
}

impl ProgramHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn signal(&self, signal: Signal) {
        let _ = self.commands.send(Command::Signal(signal));
    }

    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
    }

    pub fn kill(&self) {
        let _ = self.commands.send(Command::Kill);
    }

    /// Instances started from now on take these sockets instead of the
    /// shared ones of the same names.
    pub fn replace_sockets(&self, sockets: Vec<Arc<HeldSocket>>, holder: HolderLink) {
        let _ = self.commands.send(Command::ReplaceSockets(sockets, holder));
    }

    /// Reloads the program with its strategy; resolves when it is done.
    pub async fn reload(&self, trigger: &str) -> ProgramReload {
        let (reply, rx) = oneshot::channel();
        let request = ReloadRequest {
            trigger: trigger.to_string(),
            received: Instant::now(),
            reply,
        };
        let _ = self.commands.send(Command::Reload(request));
        rx.await.unwrap_or_else(|_| ProgramReload {
            program: self.name.clone(),
            strategy: self.status.borrow().strategy,
            ok: false,
            error: Some("the program is finished".to_string()),
            pid: None,
            release: None,
            action_ms: 0.0,
            ready_ms: 0.0,
            cutover_ms: 0.0,
            old_stop_ms: 0.0,
            drain_ms: 0.0,
        })
    }

    /// The program's last published state; never waits for the actor, which
    /// may be busy in a reload or a stop.
    pub fn status(&self) -> ProgramStatus {
        self.status.borrow().clone()
    }
}
