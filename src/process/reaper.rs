//! The one owner of `waitpid`.
//!
//! Every child of cutover, whether a program it started or an orphan the
//! kernel re-parented to it, is reaped here with `waitpid(-1, WNOHANG)`.
//! Nothing else in cutover waits for a process: program actors ask the reaper
//! to tell them when their pid ends (`watch`). Mixing a global reaper with
//! per-child waits loses exit statuses, so there is exactly one.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::Instant;

use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, trace};

use crate::process::exit::ExitStatus;

/// How many exits of unwatched pids are remembered. A pid is watched right
/// after fork, but the child may be reaped before the request arrives; after
/// that the entries are orphans nobody will ask about.
const UNCLAIMED_CAPACITY: usize = 256;

/// Cloneable handle to the reaper task.
#[derive(Clone, Debug)]
pub struct Reaper {
    requests: mpsc::UnboundedSender<Watch>,
}

#[derive(Debug)]
struct Watch {
    pid: Pid,
    /// When the fork happened: an unclaimed exit reaped earlier than this
    /// belongs to an older process that had the same pid.
    forked_at: Instant,
    reply: oneshot::Sender<ExitStatus>,
}

/// Resolves when the watched process has been reaped.
pub type ExitWatch = oneshot::Receiver<ExitStatus>;

impl Reaper {
    /// Makes cutover a child subreaper (unless it is PID 1, which reaps
    /// anyway) and starts the reaping task.
    pub fn start() -> io::Result<Reaper> {
        if std::process::id() != 1 {
            // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes a plain integer flag.
            let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let sigchld = signal(SignalKind::child())?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(sigchld, rx));
        Ok(Reaper { requests: tx })
    }

    /// Asks to be told when `pid` ends. `forked_at` must be taken before fork.
    pub fn watch(&self, pid: Pid, forked_at: Instant) -> ExitWatch {
        let (reply, rx) = oneshot::channel();
        // If the reaper is gone the receiver errors, which callers treat as lost.
        let _ = self.requests.send(Watch {
            pid,
            forked_at,
            reply,
        });
        rx
    }
}

async fn run(
    mut sigchld: tokio::signal::unix::Signal,
    mut requests: mpsc::UnboundedReceiver<Watch>,
) {
    let mut state = State::default();
    state.reap_all();
    loop {
        tokio::select! {
            _ = sigchld.recv() => state.reap_all(),
            request = requests.recv() => match request {
                Some(w) => state.watch(w),
                // Every handle dropped: keep reaping orphans until the process exits.
                None => loop {
                    sigchld.recv().await;
                    state.reap_all();
                },
            },
        }
    }
}

#[derive(Default)]
struct State {
    watchers: HashMap<Pid, Watch>,
    unclaimed: VecDeque<(Pid, Instant, ExitStatus)>,
    orphans_reaped: u64,
}

impl State {
    fn watch(&mut self, w: Watch) {
        let found = self
            .unclaimed
            .iter()
            .position(|(pid, at, _)| *pid == w.pid && *at >= w.forked_at);
        match found {
            Some(i) => {
                let (_, _, status) = self.unclaimed.remove(i).expect("index from position");
                let _ = w.reply.send(status);
            }
            None => {
                self.watchers.insert(w.pid, w);
            }
        }
    }

    /// Reaps until no exited child is left (SIGCHLD coalesces).
    fn reap_all(&mut self) {
        loop {
            let mut raw = 0;
            // SAFETY: waitpid with a valid out-pointer; WNOHANG never blocks.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            if pid == 0 {
                return;
            }
            if pid < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return; // ECHILD: no children at all
            }
            let Some(status) = ExitStatus::from_wait_status(raw) else {
                continue;
            };
            let pid = Pid::from_raw(pid);
            match self.watchers.remove(&pid) {
                Some(w) => {
                    trace!(%pid, %status, "reaped watched process");
                    let _ = w.reply.send(status);
                }
                None => {
                    self.orphans_reaped += 1;
                    debug!(%pid, %status, total = self.orphans_reaped, "reaped unwatched process");
                    if self.unclaimed.len() == UNCLAIMED_CAPACITY {
                        self.unclaimed.pop_front();
                    }
                    self.unclaimed.push_back((pid, Instant::now(), status));
                }
            }
        }
    }
}
