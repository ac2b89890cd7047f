//! Process groups: each program instance runs in its own, so that a signal,
//! a stop or a kill reaches the whole tree it started (workers, shells,
//! grandchildren), not only the process cutover forked.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};
use tracing::warn;

/// How often to look whether a group has emptied. Processes in a group do
/// not announce their exit to us unless they are our children.
const POLL: Duration = Duration::from_millis(10);

/// Sends `signal` to every process in group `pgid`. False if the group is gone.
pub fn signal_group(pgid: Pid, signal: Signal) -> bool {
    match killpg(pgid, signal) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(e) => {
            warn!(%pgid, %signal, error = %e, "cannot signal process group");
            false
        }
    }
}

/// Whether any process (zombies included, until reaped) is left in the group.
pub fn group_alive(pgid: Pid) -> bool {
    killpg(pgid, None) != Err(Errno::ESRCH)
}

/// Waits until the group is empty or `deadline` passes; true if it emptied.
pub async fn wait_group_empty(pgid: Pid, deadline: Instant) -> bool {
    loop {
        if !group_alive(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(POLL).await;
    }
}
