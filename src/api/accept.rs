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
    /// Evicted connections stay here until they have closed: the cap is on
    /// descriptors, not on promises to close.
    open: VecDeque<Entry>,
    /// Told whenever a slot is given back.
    released: Arc<Notify>,
}

struct Entry {
    id: u64,
    state: Arc<SlotState>,
    evicting: bool,
}

/// Why `admit` gave no slot.
pub enum Full {
    /// Every connection is busy answering a request.
    Busy,
    /// An idle connection was told to close; try again once it has.
    Evicting(Arc<Notify>),
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
                released: Arc::new(Notify::new()),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; a poisoned one still holds
        // a consistent list.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection. When all are taken, the oldest idle
    /// connection is told to close, and the new one waits until it has
    /// (`Full::Evicting`); `Full::Busy` when every connection is answering.
    pub fn admit(&self) -> Result<Slot, Full> {
        let mut inner = self.lock();
        if inner.open.len() >= inner.limit {
            if !inner.open.iter().any(|e| e.evicting) {
                let idle = inner
                    .open
                    .iter_mut()
                    .find(|e| !e.state.busy.load(Ordering::Acquire))
                    .ok_or(Full::Busy)?;
                idle.evicting = true;
                // notify_one keeps the wakeup if the connection is not waiting yet.
                idle.state.evicted.notify_one();
            }
            return Err(Full::Evicting(inner.released.clone()));
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let state = Arc::new(SlotState::default());
        inner.open.push_back(Entry {
            id,
            state: state.clone(),
            evicting: false,
        });
        Ok(Slot {
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
        inner.released.notify_waiters();
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

/// How long a new connection waits for an evicted one to close.
const EVICTION_WAIT: Duration = Duration::from_secs(1);
const EVICTION_POLL: Duration = Duration::from_millis(10);

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
        // Bounded: an evicted connection closes at its next turn on this thread.
        let waited_until = tokio::time::Instant::now() + EVICTION_WAIT;
        loop {
            match slots.admit() {
                Ok(slot) => return (stream, slot),
                Err(Full::Evicting(released)) if tokio::time::Instant::now() < waited_until => {
                    let notified = released.notified();
                    // A slot given back between admit and here is seen on the next try.
                    let _ = tokio::time::timeout(EVICTION_POLL, notified).await;
                }
                Err(_) => {
                    debug!(
                        listener = backoff.listener,
                        "every connection is busy; refusing one"
                    );
                    let _ = stream.try_write(busy);
                    break;
                }
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
        let first = slots.admit().ok().unwrap();
        let second = slots.admit().ok().unwrap();
        let _busy = second.busy();
        // Full: the idle first one is told to close, and the newcomer waits
        // for it; the cap holds in descriptors the whole time.
        assert!(matches!(slots.admit(), Err(Full::Evicting(_))));
        assert!(
            matches!(slots.admit(), Err(Full::Evicting(_))),
            "one eviction at a time"
        );
        assert_eq!(slots.lock().open.len(), 2);
        let evicted = futures_util::FutureExt::now_or_never(first.evicted());
        assert!(evicted.is_some());
        drop(first);
        let third = slots.admit().ok().expect("the first one closed");
        assert_eq!(slots.lock().open.len(), 2);
        let _third_busy = third.busy();
        assert!(
            matches!(slots.admit(), Err(Full::Busy)),
            "every connection is busy"
        );
        drop(third);
        assert!(slots.admit().is_ok());
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
