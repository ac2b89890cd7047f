//! The reload queue: every trigger (touch file, watched files, SIGHUP,
//! `cutover reload`) lands here, and reloads run one at a time.
//!
//! Debounce without added latency: the first trigger after a quiet period
//! acts at once. Triggers that arrive while a reload runs, or within
//! `debounce` of the previous trigger, coalesce into exactly one follow-up,
//! which starts once nothing has arrived for `debounce`. A burst of touches
//! therefore costs at most two reloads, and reloads never overlap.

pub(crate) mod files;
pub(crate) mod record;
pub(crate) mod trigger;

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tracing::{debug, info, warn};

use crate::clock::timestamp;
use crate::program::ProgramHandle;
use record::{ReloadRecord, ReloadStats};
use trigger::Trigger;

/// Cloneable handle to the reload coordinator.
#[derive(Clone, Debug)]
pub struct ReloadQueue {
    tx: mpsc::UnboundedSender<Message>,
    stats: watch::Receiver<ReloadStats>,
}

#[derive(Debug)]
enum Message {
    Trigger {
        source: Trigger,
        waiter: Option<oneshot::Sender<ReloadRecord>>,
    },
}

/// The receiving end, until the programs it reloads exist.
pub struct Unstarted {
    messages: mpsc::UnboundedReceiver<Message>,
    debounce: Duration,
    published: watch::Sender<ReloadStats>,
}

impl Unstarted {
    /// Starts serving the queue, reloading `programs` in this order.
    pub fn start(self, programs: Vec<ProgramHandle>) {
        let coordinator = Coordinator {
            programs,
            debounce: self.debounce,
            messages: self.messages,
            published: self.published,
            stats: ReloadStats::default(),
            last_trigger: None,
            pending: None,
            running: None,
        };
        tokio::spawn(coordinator.run());
    }
}

impl ReloadQueue {
    /// A queue that accepts triggers at once; they are served once
    /// `Unstarted::start` is given the programs.
    pub fn new(debounce: Duration) -> (ReloadQueue, Unstarted) {
        let (tx, messages) = mpsc::unbounded_channel();
        let (published, stats) = watch::channel(ReloadStats::default());
        (
            ReloadQueue { tx, stats },
            Unstarted {
                messages,
                debounce,
                published,
            },
        )
    }

    /// Queues a reload; `source` says what asked for it.
    pub fn trigger(&self, source: Trigger) {
        let _ = self.tx.send(Message::Trigger {
            source,
            waiter: None,
        });
    }

    /// Queues a reload and waits for the reload that covers it.
    pub async fn trigger_and_wait(&self, source: Trigger) -> Option<ReloadRecord> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Message::Trigger {
            source,
            waiter: Some(tx),
        });
        rx.await.ok()
    }

    /// The coordinator's last published counters; never waits for it.
    pub fn stats(&self) -> ReloadStats {
        self.stats.borrow().clone()
    }
}

/// Triggers waiting to be served by one reload.
struct Batch {
    sources: Vec<Trigger>,
    first_seen: Instant,
    first_seen_at: SystemTime,
    waiters: Vec<oneshot::Sender<ReloadRecord>>,
}

impl Batch {
    fn describe(&self) -> String {
        match self.sources.len() {
            1 => self.sources[0].to_string(),
            n => format!("{} (+{} coalesced)", self.sources[0], n - 1),
        }
    }
}

struct Coordinator {
    programs: Vec<ProgramHandle>,
    debounce: Duration,
    messages: mpsc::UnboundedReceiver<Message>,
    published: watch::Sender<ReloadStats>,
    stats: ReloadStats,
    last_trigger: Option<Instant>,
    pending: Option<Batch>,
    running: Option<(JoinHandle<ReloadRecord>, Vec<oneshot::Sender<ReloadRecord>>)>,
}

impl Coordinator {
    async fn run(mut self) {
        loop {
            let follow_up_at = self.last_trigger.map(|t| (t + self.debounce).into());
            tokio::select! {
                message = self.messages.recv() => match message {
                    None => return,
                    Some(Message::Trigger { source, waiter }) => self.on_trigger(source, waiter),
                },
                record = finished(&mut self.running) => self.on_finished(record),
                _ = sleep_until(follow_up_at.unwrap_or_else(tokio::time::Instant::now)),
                    if self.pending.is_some() && self.running.is_none() => self.start_pending(),
            }
            self.publish();
        }
    }

    fn publish(&mut self) {
        self.stats.in_progress = self.running.is_some();
        self.stats.pending = self.pending.is_some();
        self.published.send_if_modified(|shown| {
            let changed = shown != &self.stats;
            if changed {
                *shown = self.stats.clone();
            }
            changed
        });
    }

    fn on_trigger(&mut self, source: Trigger, waiter: Option<oneshot::Sender<ReloadRecord>>) {
        let now = Instant::now();
        self.stats.triggers += 1;
        let quiet = self
            .last_trigger
            .is_none_or(|t| now.duration_since(t) >= self.debounce);
        self.last_trigger = Some(now);
        debug!(%source, quiet, running = self.running.is_some(), "reload trigger");
        let batch = self.pending.get_or_insert_with(|| Batch {
            sources: Vec::new(),
            first_seen: now,
            first_seen_at: SystemTime::now(),
            waiters: Vec::new(),
        });
        batch.sources.push(source);
        batch.waiters.extend(waiter);
        if quiet && self.running.is_none() {
            self.start_pending();
        }
    }

    fn start_pending(&mut self) {
        let Some(batch) = self.pending.take() else {
            return;
        };
        self.stats.reloads += 1;
        let id = self.stats.reloads;
        let trigger = batch.describe();
        info!(id, %trigger, "reload started");
        let programs = self.programs.clone();
        let (first_seen, first_seen_at) = (batch.first_seen, batch.first_seen_at);
        let task = tokio::spawn(async move {
            let mut reports = Vec::new();
            let mut error = None;
            for program in &programs {
                let report = program.reload(&trigger).await;
                let failed = !report.ok;
                if failed {
                    error = Some(format!(
                        "{}: {}",
                        report.program,
                        report.error.clone().unwrap_or_default()
                    ));
                }
                reports.push(report);
                if failed {
                    // The same code would fail the next program too; keep it on the old code.
                    break;
                }
            }
            ReloadRecord {
                id,
                trigger,
                started_at: timestamp(first_seen_at),
                duration_ms: first_seen.elapsed().as_secs_f64() * 1000.0,
                ok: error.is_none(),
                error,
                programs: reports,
            }
        });
        self.running = Some((task, batch.waiters));
    }

    fn on_finished(&mut self, record: ReloadRecord) {
        let (_, waiters) = self.running.take().expect("a reload was running");
        if record.ok {
            info!(
                id = record.id,
                ms = record.duration_ms as u64,
                "reload finished"
            );
        } else {
            self.stats.failures += 1;
            warn!(id = record.id, error = %record.error.as_deref().unwrap_or(""), "reload failed");
        }
        for w in waiters {
            let _ = w.send(record.clone());
        }
        self.stats.last = Some(record);
    }
}

async fn finished(
    running: &mut Option<(JoinHandle<ReloadRecord>, Vec<oneshot::Sender<ReloadRecord>>)>,
) -> ReloadRecord {
    match running {
        Some((task, _)) => task.await.unwrap_or_else(|e| ReloadRecord {
            id: 0,
            trigger: String::new(),
            started_at: timestamp(SystemTime::now()),
            duration_ms: 0.0,
            ok: false,
            error: Some(format!("reload task failed: {e}")),
            programs: Vec::new(),
        }),
        None => std::future::pending().await,
    }
}
