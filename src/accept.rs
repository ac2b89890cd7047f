//! What the accept loops of the control socket and the HTTP listeners share:
//! a bound on open connections and a calm answer to failing `accept`.
//!
//! Both listeners run on the supervisor's single thread, beside the reaper
//! and the program actors, and may face clients that never finish a request.
//! Each connection therefore holds a slot; when all are taken, the oldest
//! connection that is only waiting for its request gives up its slot, so a
//! flood of silent clients can neither exhaust file descriptors nor lock out
//! the health checks and `cutover status` that come after it. A connection
//! that is being answered is never cut.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, info, warn};

/// The open connections of one listener, oldest first.
#[derive(Clone)]
pub struct Slots {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    limit: usize,
    next_id: u64,
    open: VecDeque<Entry>,
}

struct Entry {
    id: u64,
    state: Arc<SlotState>,
}

#[derive(Default)]
struct SlotState {
    busy: AtomicBool,
    evicted: Notify,
}

/// One admitted connection; gives its slot back when dropped.
pub struct Slot {
    id: u64,
    state: Arc<SlotState>,
    slots: Slots,
}

impl Slots {
    pub fn new(limit: usize) -> Slots {
        Slots {
            inner: Arc::new(Mutex::new(Inner {
                limit: limit.max(1),
                next_id: 0,
                open: VecDeque::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; a poisoned one still holds
        // a consistent list.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection. When all are taken, the oldest idle
    /// connection is told to close and its slot is reused; `None` when every
    /// connection is busy answering a request.
    pub fn admit(&self) -> Option<Slot> {
        let mut inner = self.lock();
        if inner.open.len() >= inner.limit {
            let idle = inner
                .open
                .iter()
                .position(|e| !e.state.busy.load(Ordering::Acquire))?;
            let entry = inner.open.remove(idle).expect("position is in range");
            // notify_one keeps the wakeup if the connection is not waiting yet.
            entry.state.evicted.notify_one();
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let state = Arc::new(SlotState::default());
        inner.open.push_back(Entry {
            id,
            state: state.clone(),
        });
        Some(Slot {
            id,
            state,
            slots: self.clone(),
        })
    }
}

impl Slot {
    /// Marks the connection busy until the guard is dropped: a request has
    /// arrived and is being answered, so it must not be evicted.
    pub fn busy(&self) -> Busy {
        self.state.busy.store(true, Ordering::Release);
        Busy {
            state: self.state.clone(),
        }
    }

    /// Completes when the connection must close to make room for a new one.
    pub async fn evicted(&self) {
        self.state.evicted.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.slots.lock();
        if let Some(i) = inner.open.iter().position(|e| e.id == self.id) {
            inner.open.remove(i);
        }
    }
}

/// See `Slot::busy`.
pub struct Busy {
    state: Arc<SlotState>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.state.busy.store(false, Ordering::Release);
    }
}

/// Pacing for an accept loop whose `accept` fails. Out of file descriptors
/// (EMFILE, ENFILE) the pending connection stays queued and the listener
/// stays readable, so retrying at once would spin the supervisor's only
/// thread; instead the loop sleeps 100 ms, doubling up to 1 s, and logs once
/// per streak of failures rather than on every turn.
pub struct AcceptBackoff {
    listener: &'static str,
    failures: u32,
    delay: Duration,
}

const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(1);

impl AcceptBackoff {
    /// `listener` names the listener in the log ("control socket", ...).
    pub fn new(listener: &'static str) -> AcceptBackoff {
        AcceptBackoff {
            listener,
            failures: 0,
            delay: FIRST_DELAY,
        }
    }

    /// A connection was accepted: ends a streak of failures.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            info!(
                listener = self.listener,
                failures = self.failures,
                "accepting connections again"
            );
            self.failures = 0;
            self.delay = FIRST_DELAY;
        }
    }

    /// `accept` failed with `error`; returns once it is worth trying again.
    pub async fn failed(&mut self, error: &io::Error) {
        if let Some(delay) = self.record(error) {
            tokio::time::sleep(delay).await;
        }
    }

    /// Counts the failure; how long to wait before the next `accept`.
    fn record(&mut self, error: &io::Error) -> Option<Duration> {
        if is_per_connection(error) {
            // The peer gave up before it was accepted; the listener is fine.
            debug!(listener = self.listener, %error, "connection lost before accept");
            return None;
        }
        if self.failures == 0 {
            warn!(
                listener = self.listener,
                %error,
                "accept failed; retrying with backoff until it works again"
            );
        }
        self.failures = self.failures.saturating_add(1);
        let delay = self.delay;
        self.delay = (self.delay * 2).min(MAX_DELAY);
        Some(delay)
    }
}

/// A freshly accepted stream that can be told, without waiting, that
/// there is no room for it.
pub trait Refusable {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
}

impl Refusable for tokio::net::TcpStream {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        tokio::net::TcpStream::try_write(self, buf)
    }
}

impl Refusable for tokio::net::UnixStream {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        tokio::net::UnixStream::try_write(self, buf)
    }
}

/// The accept loop both kinds of listener share: the next connection that
/// gets a slot. Failing `accept`s back off; a connection over the cap is
/// sent `busy` (best effort: its send buffer is empty) and closed.
pub async fn next_admitted<S, F>(
    mut accept: impl FnMut() -> F,
    slots: &Slots,
    backoff: &mut AcceptBackoff,
    busy: &[u8],
) -> (S, Slot)
where
    S: Refusable,
    F: std::future::Future<Output = io::Result<S>>,
{
    loop {
        let stream = match accept().await {
            Ok(stream) => stream,
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        backoff.succeeded();
        match slots.admit() {
            Some(slot) => return (stream, slot),
            None => {
                debug!(
                    listener = backoff.listener,
                    "every connection is busy; refusing one"
                );
                let _ = stream.try_write(busy);
            }
        }
    }
}

/// Errors that concern one incoming connection, not the listener.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || error.raw_os_error() == Some(libc::EPROTO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_listener_evicts_the_oldest_idle_connection() {
        let slots = Slots::new(2);
        let first = slots.admit().unwrap();
        let second = slots.admit().unwrap();
        let _busy = second.busy();
        let third = slots.admit().expect("the first connection was idle");
        assert_eq!(slots.lock().open.len(), 2);
        // The first one was told to close; it returns its slot on drop.
        let evicted = futures_util::FutureExt::now_or_never(first.evicted());
        assert!(evicted.is_some());
        drop(first);
        assert_eq!(slots.lock().open.len(), 2);
        let _third_busy = third.busy();
        assert!(slots.admit().is_none(), "every connection is busy");
        drop(third);
        assert!(slots.admit().is_some());
    }

    #[test]
    fn accept_failures_back_off_up_to_a_second() {
        let mut backoff = AcceptBackoff::new("test");
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let delays: Vec<u64> = (0..6)
            .map(|_| backoff.record(&emfile).unwrap().as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.record(&emfile), Some(FIRST_DELAY));
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(backoff.record(&aborted), None);
    }
}
