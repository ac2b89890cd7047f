//! Code delivery from git: cutover fetches the configured ref into a cache
//! repository on the volume, writes the commit to `releases/<sha>`, runs the
//! hooks, switches `current`, reloads the programs, and rolls back when the
//! new release fails its readiness check or crashes soon after.
//!
//! One actor owns the volume, so deploys, rollbacks and the recorded history
//! are serialised however many triggers (poll, push, webhook, `cutover
//! deploy`) arrive at once. This file holds the actor and its handle;
//! `deploy` the pipeline, `git` the libgit2 work, `release` the files,
//! `history` the records, `watch` the timers and the push watch.

mod dependency_check;
mod deploy;
mod git;
mod history;
mod image;
mod progress;
mod release;
mod rollback;
mod steps;
mod tree;
mod watch;
mod writing;

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::sleep_until;
use tracing::{info, warn};

use crate::clock::timestamp;
use crate::config::{Config, HooksConfig, SourceConfig};
use crate::process::reaper::Reaper;
use crate::program::{ProgramEvent, ProgramHandle};
use crate::reload::ReloadQueue;
use crate::reload::trigger::Trigger;
use crate::sha::Sha;

use dependency_check::DependencyGate;
pub use dependency_check::{DependencyStatus, RedeployRequired};
use git::{GitError, RemoteSpec, open_cache};
/// Also for the redeploy webhook's URL.
pub use history::{DeployRecord, Outcome};
use image::ImageRequests;
pub use image::{ImageState, ImageStatus};
pub use progress::InProgress;
use progress::Publisher;
use release::{ReleaseError, State, Volume};
use watch::{git_push_watcher, next_event, tick};

const HISTORY_SHOWN: usize = 20;
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error(transparent)]
    Fingerprint(#[from] crate::fingerprint::FingerprintError),
    #[error("a background task of the deploy failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceStatus {
    pub repo: String,
    pub git_ref: String,
    pub root: String,
    pub current: Option<Sha>,
    pub previous: Option<Sha>,
    pub bad: Vec<Sha>,
    pub last_check: Option<String>,
    pub last_error: Option<String>,
    pub retry_in_seconds: Option<f64>,
    pub history: Vec<DeployRecord>,
    pub dependencies: DependencyStatus,
    pub redeploy: ImageStatus,
    /// The deploy or rollback running now, and its step.
    #[serde(default)]
    pub deploying: Option<InProgress>,
    #[serde(skip)]
    retry_at: Option<Instant>,
}

#[derive(Debug)]
enum Command {
    Deploy {
        target: Option<String>,
        /// `Trigger::DeployCommand` (by hand) may go to a sha that automatic
        /// triggers hold back (rolled back, hook failed).
        trigger: Trigger,
        reply: Option<oneshot::Sender<DeployRecord>>,
    },
    Rollback {
        to: Option<String>,
        reply: Option<oneshot::Sender<DeployRecord>>,
    },
}

/// Cloneable handle to the source actor: commands go to it, its state is
/// read from what it last published.
#[derive(Clone, Debug)]
pub struct SourceHandle {
    commands: mpsc::UnboundedSender<Command>,
    status: tokio::sync::watch::Receiver<SourceStatus>,
    image: tokio::sync::watch::Receiver<ImageStatus>,
}

impl SourceHandle {
    /// An automatic look at the configured ref (push, webhook, start).
    pub fn deploy(&self, trigger: Trigger) {
        let _ = self.commands.send(Command::Deploy {
            target: None,
            trigger,
            reply: None,
        });
    }

    /// `cutover deploy [REF|SHA]`; with `wait`, the record once it is done.
    pub async fn deploy_by_hand(&self, target: Option<String>, wait: bool) -> Option<DeployRecord> {
        self.ask(wait, |reply| Command::Deploy {
            target,
            trigger: Trigger::DeployCommand,
            reply,
        })
        .await
    }

    /// The actor's state as last published, with durations as of now;
    /// never waits for the actor, which may be in the middle of a deploy.
    pub fn status(&self) -> SourceStatus {
        let mut status = self.status.borrow().clone();
        status.redeploy = self.image.borrow().clone();
        status.retry_in_seconds = status
            .retry_at
            .map(|t| t.saturating_duration_since(Instant::now()).as_secs_f64());
        if let Some(d) = status.deploying.as_mut() {
            d.as_of_now();
        }
        status
    }

    /// `cutover rollback [--to SHA]`; with `wait`, the record once it is done.
    pub async fn rollback(&self, to: Option<String>, wait: bool) -> Option<DeployRecord> {
        self.ask(wait, |reply| Command::Rollback { to, reply })
            .await
    }

    /// Sends a command; None when not waiting or when the actor is gone.
    async fn ask(
        &self,
        wait: bool,
        command: impl FnOnce(Option<oneshot::Sender<DeployRecord>>) -> Command,
    ) -> Option<DeployRecord> {
        if !wait {
            let _ = self.commands.send(command(None));
            return None;
        }
        let (reply, rx) = oneshot::channel();
        let _ = self.commands.send(command(Some(reply)));
        rx.await.ok()
    }
}

/// What the source needs from the rest of the supervisor once programs run.
pub struct Wiring {
    pub queue: ReloadQueue,
    pub programs: Vec<ProgramHandle>,
    pub events: broadcast::Receiver<ProgramEvent>,
}

pub struct Source {
    config: SourceConfig,
    hooks: HooksConfig,
    rollback_window: Duration,
    volume: Volume,
    remote: RemoteSpec,
    state: State,
    history: VecDeque<DeployRecord>,
    last_check: Option<SystemTime>,
    last_error: Option<String>,
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
    /// The last cutover to a new release, for the rollback window.
    deployed_at: Option<Instant>,
    /// The bad sha last refused, so a poll does not log the refusal every time.
    refused: Option<Sha>,
    /// The sha whose before_cutover hook failed, and the error: automatic
    /// triggers leave it alone (no hook rerun on every poll) until the ref
    /// moves; `cutover deploy` tries again.
    hook_failed: Option<(Sha, String)>,
    reaper: Reaper,
    dependencies: DependencyGate,
    /// False while `current` holds code for other dependencies than the
    /// image's (found at start); the first deploy then replaces it.
    current_fits_image: bool,
    images: ImageRequests,
    wiring: Option<Wiring>,
    publisher: Publisher,
    handle: SourceHandle,
    commands: Option<mpsc::UnboundedReceiver<Command>>,
}

impl Source {
    /// Opens the volume, cleans up after an interrupted run and restores a
    /// missing release directory from the cache (on a blocking thread: the
    /// volume may be slow and a release large).
    /// `exit` receives the code of a `[redeploy] exit = N` action.
    pub async fn open(
        config: SourceConfig,
        all: &Config,
        reaper: Reaper,
        exit: mpsc::UnboundedSender<u8>,
    ) -> Result<Source, SourceError> {
        let redeployer = all
            .redeploy
            .clone()
            .map(|r| crate::redeploy::Redeployer::new(r, reaper.clone()));
        let volume = Volume {
            root: config.root.clone(),
        };
        let dependencies = all.dependencies.clone();
        let opened = {
            let volume = volume.clone();
            let limits = config.limits;
            tokio::task::spawn_blocking(move || Opened::read(&volume, dependencies, &limits))
                .await??
        };
        let remote = RemoteSpec::new(&config, Some(reaper.clone()));
        let (publisher, status) = Publisher::new(SourceStatus::default());
        let (commands, receiver) = mpsc::unbounded_channel();
        let images = ImageRequests::start(redeployer, exit, volume.clone(), opened.exited_for);
        let image = images.watch();
        let source = Source {
            config,
            hooks: all.hooks.clone(),
            rollback_window: all.rollback_window,
            volume,
            remote,
            state: opened.state,
            history: opened.history,
            last_check: None,
            last_error: None,
            failures: 0,
            retry_at: None,
            deployed_at: None,
            refused: None,
            hook_failed: None,
            reaper,
            dependencies: opened.dependencies,
            current_fits_image: opened.current_fits_image,
            images,
            wiring: None,
            publisher,
            handle: SourceHandle {
                commands,
                status,
                image,
            },
            commands: Some(receiver),
        };
        if !source.current_fits_image {
            warn!(sha = ?source.volume.current_sha(), "`current` needs other dependencies than this image has; fetching `{}` before starting", source.config.git_ref);
        }
        source.publish();
        Ok(source)
    }

    /// The handle, usable at once: commands sent before `spawn` wait in
    /// the queue, and status is published from the first deploy on.
    pub fn handle(&self) -> SourceHandle {
        self.handle.clone()
    }

    /// Whether `current` points at a release that exists and may run on
    /// this image.
    pub fn has_current(&self) -> bool {
        self.current_fits_image
            && self
                .volume
                .current_sha()
                .is_some_and(|s| self.volume.has_release(&s))
    }

    /// The first deploy into an empty volume, before any program runs;
    /// retried with backoff until it succeeds.
    pub async fn first_deploy(&mut self) {
        let mut attempt: u32 = 0;
        loop {
            let record = self.deploy(None, Trigger::FirstStart).await;
            if self.has_current() {
                info!(sha = ?record.sha, "first release in place");
                return;
            }
            attempt += 1;
            let backoff = retry_delay(attempt);
            let delay = self.retry_at.map_or(backoff, |t| {
                t.saturating_duration_since(tokio::time::Instant::now())
            });
            self.retry_at = Some(tokio::time::Instant::now() + delay);
            self.publish();
            warn!(error = ?record.error, attempt, retry_in = %humantime::format_duration(delay), "no release to serve yet; nothing runs until one is in place; retrying");
            tokio::time::sleep(delay).await;
            self.retry_at = None;
        }
    }

    /// Starts the actor; it checks the remote once right away.
    pub fn spawn(mut self, wiring: Wiring) -> SourceHandle {
        let handle = self.handle.clone();
        let commands = self.commands.take().expect("the source is spawned once");
        self.wiring = Some(wiring);
        let watcher = git_push_watcher(&self.config.repo, handle.clone());
        tokio::spawn(async move {
            let _watcher = watcher;
            self.run(commands).await;
        });
        handle.deploy(Trigger::Start);
        handle
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut poll = self.config.poll.map(|p| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let mut events = self.wiring.as_mut().map(|w| w.events.resubscribe());
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None => return,
                    Some(command) => self.on_command(command, &mut commands).await,
                },
                _ = tick(&mut poll) => { self.deploy(None, Trigger::Poll).await; }
                _ = sleep_until(self.retry_at.unwrap_or_else(tokio::time::Instant::now)), if self.retry_at.is_some() => {
                    self.retry_at = None;
                    self.deploy(None, Trigger::Retry).await;
                }
                event = next_event(&mut events) => {
                    match event {
                        Some(ProgramEvent::Exited { name, status }) => {
                            self.on_crash(&name, &status.to_string()).await;
                        }
                        Some(ProgramEvent::Unready { name, why }) => self.on_crash(&name, &why).await,
                        None => {}
                    }
                }
            }
            self.publish();
        }
    }

    async fn on_command(&mut self, command: Command, queue: &mut mpsc::UnboundedReceiver<Command>) {
        match command {
            Command::Rollback { to, reply } => {
                let record = self.rollback_as_asked(to, Trigger::RollbackCommand).await;
                // A rollback with nowhere to go changed nothing: not history.
                if record.outcome != Outcome::Refused {
                    self.remember(&record);
                }
                if let Some(r) = reply {
                    let _ = r.send(record);
                }
            }
            Command::Deploy {
                target,
                trigger,
                reply,
            } => {
                let record = self.deploy(target, trigger).await;
                if let Some(r) = reply {
                    let _ = r.send(record);
                }
                // Automatic triggers that arrived meanwhile (a burst of pushes)
                // collapse into one more look at the remote.
                let mut follow_up = false;
                let mut others = Vec::new();
                while let Ok(next) = queue.try_recv() {
                    match next {
                        Command::Deploy { ref trigger, .. } if !trigger.by_hand() => {
                            follow_up = true
                        }
                        other => others.push(other),
                    }
                }
                if follow_up {
                    self.deploy(None, Trigger::Coalesced).await;
                }
                for other in others {
                    Box::pin(self.on_command(other, queue)).await;
                }
            }
        }
    }

    /// Publishes the actor's state for readers.
    fn publish(&self) {
        self.publisher.state(self.status());
    }

    fn status(&self) -> SourceStatus {
        let mut dependencies = self.dependencies.status();
        dependencies.redeploy_required = self.images.pending();
        SourceStatus {
            repo: self.remote.shown().to_string(),
            git_ref: self.config.git_ref.clone(),
            root: self.volume.root.display().to_string(),
            current: self.volume.current_sha(),
            previous: self.state.previous.clone(),
            bad: self.state.bad.clone(),
            last_check: self.last_check.map(timestamp),
            last_error: self.last_error.clone(),
            retry_in_seconds: None,
            history: self.history.iter().cloned().collect(),
            dependencies,
            redeploy: self.images.status(),
            deploying: None,
            retry_at: self.retry_at.map(tokio::time::Instant::into_std),
        }
    }
}

/// What `Source::open` reads from the volume, off the runtime thread.
struct Opened {
    state: State,
    history: VecDeque<DeployRecord>,
    dependencies: DependencyGate,
    current_fits_image: bool,
    /// The last `[redeploy] exit`, so a restart of the same image does not
    /// exit again for the same commit.
    exited_for: Option<release::ExitedFor>,
}

impl Opened {
    fn read(
        volume: &Volume,
        dependencies: crate::config::DependenciesConfig,
        limits: &crate::config::ReleaseLimits,
    ) -> Result<Opened, SourceError> {
        let mut dependencies = DependencyGate::open(dependencies)?;
        for leftover in volume.prepare()? {
            warn!(name = %leftover, "removed what an interrupted deploy left behind");
        }
        recover_current(volume, limits);
        let current = volume.current_sha().filter(|s| volume.has_release(s));
        let current_fits_image = current.is_none() || dependencies.serving(&volume.current());
        Ok(Opened {
            state: volume.load_state(),
            history: volume.read_history(HISTORY_SHOWN).into(),
            dependencies,
            current_fits_image,
            exited_for: volume.load_exited_for(),
        })
    }
}

/// `current` pointing at a release that is gone: write it again from the
/// cache, or drop the dangling link so the first deploy fetches.
fn recover_current(volume: &Volume, limits: &crate::config::ReleaseLimits) {
    let Some(sha) = volume.current_sha() else {
        return;
    };
    if volume.has_release(&sha) {
        return;
    }
    let restored = tree::materialise(volume, &volume.cache(), sha.oid(), limits);
    match restored {
        Ok(_) => warn!(%sha, "release directory was missing; restored it from the cache"),
        Err(e) => {
            warn!(%sha, error = %e, "`current` points at a missing release that the cache cannot restore; fetching again");
            let _ = std::fs::remove_file(volume.current());
        }
    }
}

/// Backoff for retries: 1 s, 2 s, 4 s … up to five minutes.
pub(super) fn retry_delay(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1 << failures.min(16).saturating_sub(1))
        .min(RETRY_MAX)
}
