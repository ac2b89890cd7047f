//! The sockets' side of a reload: which generation of per-instance sockets
//! a new instance takes, giving them up when it fails, and the drain of the
//! old instance before its stop signal (see `handoff`).

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::instance::Instance;
use super::{Flow, Program};
use crate::config::ReloadStrategy;
use crate::sockets::handoff::Generation;

/// How often the drain looks at the old instance's accept queue.
const DRAIN_POLL: Duration = Duration::from_millis(5);

impl Program {
    /// The configured strategy, except after the listening sockets were
    /// replaced (a restarted holder): a program reloaded by signal, or not
    /// at all, would keep serving on the old ones, so it restarts once.
    pub(super) fn strategy_now(&self) -> ReloadStrategy {
        match self.config.reload {
            ReloadStrategy::Signal(_) | ReloadStrategy::None if self.sockets_replaced => {
                ReloadStrategy::Restart
            }
            configured => configured,
        }
    }

    /// Sockets for the instance a reload starts: new ones when they are per
    /// instance, the serving ones when they are shared.
    pub(super) async fn next_generation(&mut self) -> std::io::Result<Generation> {
        if self.sockets.steered() {
            self.sockets.add_generation().await
        } else {
            Ok(self.serving_generation)
        }
    }

    /// A new instance did not make it: its sockets go, and users (who never
    /// left the serving instance) no longer share the group with its probes.
    /// A holder's group sends users to this program only once an instance
    /// of it is ready there: the first one, or the first after the holder
    /// restarted. Every path by which an instance proves ready ends here.
    pub(super) async fn take_users(&mut self, ready: &Instance) {
        if self.sockets.users_elsewhere() {
            self.sockets.steer_to(ready.generation).await;
            info!(program = %self.config.name, "users steered to this container");
        }
    }

    /// Cutover is stopping and users come through a holder: they go to
    /// another container's instance if one serves, and this instance
    /// drains what it has queued before its stop signal. Alone, it stops at
    /// once: users wait in its socket for the next container. A stop with
    /// kill asked for meanwhile is returned.
    pub(super) async fn leave(&mut self, instance: &Instance) -> Option<bool> {
        if !self.sockets.leave().await {
            return None;
        }
        info!(program = %self.config.name, pid = %instance.pid, "users went to another container; draining before the stop");
        self.drain(instance, &[]).await.1
    }

    pub(super) async fn abandon(&mut self, next: Generation) {
        if next != self.serving_generation {
            if !self.sockets.users_elsewhere() {
                self.sockets.steer_to(self.serving_generation).await;
            }
            self.sockets.retire(next).await;
        }
    }

    /// Once users are steered away from `old`: waits until its accept queue
    /// is empty and at least `drain` has passed, so that what it accepted is
    /// read and in progress before it is told to stop. Bounded by
    /// `drain + stop_timeout` for an instance that stopped accepting; what it
    /// leaves moves to the new sockets when its own close. Commands are
    /// answered meanwhile (`others` are the other live instances); a stop
    /// asked for ends the drain and is returned (whether to kill).
    pub(super) async fn drain(
        &mut self,
        old: &Instance,
        others: &[&Instance],
    ) -> (Duration, Option<bool>) {
        let started = Instant::now();
        if !self.sockets.steered() || old.exit.seen().is_some() {
            return (Duration::ZERO, None);
        }
        let least = self.config.drain;
        let most = least + self.config.stop_timeout;
        let mut live = vec![old];
        live.extend_from_slice(others);
        loop {
            let queued = self.sockets.queued(old.generation);
            let waited = started.elapsed();
            if queued == 0 && waited >= least {
                break;
            }
            if waited >= most {
                warn!(program = %self.config.name, pid = %old.pid, queued, "the old instance stopped taking its queued connections; they move to the new instance's sockets");
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(DRAIN_POLL) => {}
                command = self.commands.recv(), if !self.commands.is_closed() => {
                    match self.answer(command, &live) {
                        None => {}
                        Some(Flow::Stop { kill }) => return (started.elapsed(), Some(kill)),
                        Some(Flow::Reload(r)) => r.refuse(&self.config, "a reload of this program is already running"),
                    }
                }
            }
        }
        (started.elapsed(), None)
    }
}
