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

mod dependencies;
mod deploy;
mod git;
mod history;
mod image;
mod release;
mod watch;

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::sleep_until;
use tracing::{info, warn};

use crate::config::{Config, HooksConfig, RunAs, SourceConfig};
use crate::program::{ProgramEvent, ProgramHandle};
use crate::reaper::Reaper;
use crate::reload::ReloadQueue;
use crate::status::timestamp;

use dependencies::DependencyGate;
pub use dependencies::{DependencyStatus, RedeployRequired};
pub use git::redact_url;
use git::{GitError, RemoteSpec, open_cache};
pub use history::{DeployRecord, Outcome};
use image::ImageRequests;
pub use image::ImageStatus;
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
    #[error("{0}")]
    Other(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceStatus {
    pub repo: String,
    pub git_ref: String,
    pub root: String,
    pub current: Option<String>,
    pub previous: Option<String>,
    pub bad: Vec<String>,
    pub last_check: Option<String>,
    pub last_error: Option<String>,
    pub retry_in_seconds: Option<f64>,
    pub history: Vec<DeployRecord>,
    pub dependencies: DependencyStatus,
    pub redeploy: ImageStatus,
}

#[derive(Debug)]
enum Command {
    Deploy {
        target: Option<String>,
        trigger: String,
        /// Asked for by a person (`cutover deploy`): may go to a sha that
        /// automatic triggers hold back (rolled back, hook failed).
        by_hand: bool,
        reply: Option<oneshot::Sender<DeployRecord>>,
    },
    Rollback {
        to: Option<String>,
        reply: Option<oneshot::Sender<DeployRecord>>,
    },
    Status(oneshot::Sender<SourceStatus>),
}

/// Cloneable handle to the source actor.
#[derive(Clone, Debug)]
pub struct SourceHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl SourceHandle {
    /// An automatic look at the configured ref (push, webhook, start).
    pub fn deploy(&self, trigger: &str) {
        let _ = self.commands.send(Command::Deploy {
            target: None,
            trigger: trigger.to_string(),
            by_hand: false,
            reply: None,
        });
    }

    /// `cutover deploy [REF|SHA]`; with `wait`, the record once it is done.
    pub async fn deploy_by_hand(&self, target: Option<String>, wait: bool) -> Option<DeployRecord> {
        self.ask(wait, |reply| Command::Deploy {
            target,
            trigger: "deploy command".to_string(),
            by_hand: true,
            reply,
        })
        .await
    }

    /// `cutover rollback [--to SHA]`; with `wait`, the record once it is done.
    pub async fn rollback(&self, to: Option<String>, wait: bool) -> Option<DeployRecord> {
        self.ask(wait, |reply| Command::Rollback { to, reply })
            .await
    }

    pub async fn status(&self) -> Option<SourceStatus> {
        let (reply, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Status(reply));
        rx.await.ok()
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
    refused: Option<String>,
    /// The sha whose before_cutover hook failed: automatic triggers leave it
    /// alone (no hook rerun on every poll) until the ref moves; `cutover
    /// deploy` tries again.
    hook_failed: Option<String>,
    reaper: Reaper,
    hook_user: Option<RunAs>,
    dependencies: DependencyGate,
    /// False while `current` holds code for other dependencies than the
    /// image's (found at start); the first deploy then replaces it.
    current_fits_image: bool,
    images: ImageRequests,
    wiring: Option<Wiring>,
}

impl Source {
    /// Opens the volume, cleans up after an interrupted run and restores a
    /// missing release directory from the cache.
    /// `exit` receives the code of a `[redeploy] exit = N` action.
    pub fn open(
        config: SourceConfig,
        all: &Config,
        reaper: Reaper,
        exit: mpsc::UnboundedSender<u8>,
    ) -> Result<Source, SourceError> {
        let redeployer = all
            .redeploy
            .clone()
            .map(|r| crate::redeploy::Redeployer::new(r, reaper.clone()));
        let dependencies = DependencyGate::open(all.dependencies.clone())?;
        let volume = Volume {
            root: config.root.clone(),
        };
        for leftover in volume.prepare()? {
            warn!(name = %leftover, "removed what an interrupted deploy left behind");
        }
        let history = volume.read_history(HISTORY_SHOWN).into();
        let state = volume.load_state();
        let remote = RemoteSpec::new(&config);
        let mut source = Source {
            config,
            hooks: all.hooks.clone(),
            rollback_window: all.rollback_window,
            volume,
            remote,
            state,
            history,
            last_check: None,
            last_error: None,
            failures: 0,
            retry_at: None,
            deployed_at: None,
            refused: None,
            hook_failed: None,
            reaper,
            // Hooks run as the app's user: migrations write what the app reads.
            hook_user: all.programs.first().and_then(|p| p.user.clone()),
            dependencies,
            current_fits_image: true,
            images: ImageRequests::start(redeployer, exit),
            wiring: None,
        };
        source.recover_current();
        if source.has_current() && !source.dependencies.serving(&source.volume.current()) {
            warn!(sha = ?source.volume.current_sha(), "`current` needs other dependencies than this image has; fetching `{}` before starting", source.config.git_ref);
            source.current_fits_image = false;
        }
        Ok(source)
    }

    /// `current` pointing at a release that is gone: write it again from the
    /// cache, or drop the dangling link so the first deploy fetches.
    fn recover_current(&self) {
        let Some(sha) = self.volume.current_sha() else {
            return;
        };
        if self.volume.has_release(&sha) {
            return;
        }
        let restored = git2::Oid::from_str(&sha)
            .map_err(|e| e.to_string())
            .and_then(|oid| {
                release::materialise(&self.volume, &self.volume.cache(), oid)
                    .map_err(|e| e.to_string())
            });
        match restored {
            Ok(_) => warn!(%sha, "release directory was missing; restored it from the cache"),
            Err(e) => {
                warn!(%sha, error = %e, "`current` points at a missing release that the cache cannot restore; fetching again");
                let _ = std::fs::remove_file(self.volume.current());
            }
        }
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
        loop {
            let record = self.deploy(None, "first start", false).await;
            if self.has_current() {
                info!(sha = ?record.sha, "first release in place");
                return;
            }
            let delay = self.retry_at.map_or(RETRY_FIRST, |t| {
                t.saturating_duration_since(tokio::time::Instant::now())
            });
            warn!(error = ?record.error, retry_in = %humantime::format_duration(delay), "no code to run yet; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Starts the actor; it checks the remote once right away.
    pub fn spawn(mut self, wiring: Wiring) -> SourceHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = SourceHandle { commands: tx };
        self.wiring = Some(wiring);
        let watcher = git_push_watcher(&self.config.repo, handle.clone());
        tokio::spawn(async move {
            let _watcher = watcher;
            self.run(rx).await;
        });
        handle.deploy("start");
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
                    Some(command) => self.handle(command, &mut commands).await,
                },
                _ = tick(&mut poll) => { self.deploy(None, "poll", false).await; }
                _ = sleep_until(self.retry_at.unwrap_or_else(tokio::time::Instant::now)), if self.retry_at.is_some() => {
                    self.retry_at = None;
                    self.deploy(None, "retry", false).await;
                }
                event = next_event(&mut events) => {
                    if let Some(ProgramEvent::Exited { name, status }) = event {
                        self.on_crash(&name, &status.to_string()).await;
                    }
                }
            }
        }
    }

    async fn handle(&mut self, command: Command, queue: &mut mpsc::UnboundedReceiver<Command>) {
        match command {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Rollback { to, reply } => {
                let record = self.rollback(to, "rollback command", None).await;
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
                by_hand,
                reply,
            } => {
                let record = self.deploy(target, &trigger, by_hand).await;
                if let Some(r) = reply {
                    let _ = r.send(record);
                }
                // Automatic triggers that arrived meanwhile (a burst of pushes)
                // collapse into one more look at the remote.
                let mut follow_up = false;
                let mut others = Vec::new();
                while let Ok(next) = queue.try_recv() {
                    match next {
                        Command::Deploy { by_hand: false, .. } => follow_up = true,
                        other => others.push(other),
                    }
                }
                if follow_up {
                    self.deploy(None, "push (coalesced)", false).await;
                }
                for other in others {
                    Box::pin(self.handle(other, queue)).await;
                }
            }
        }
    }

    fn status(&self) -> SourceStatus {
        SourceStatus {
            repo: self.remote.shown().to_string(),
            git_ref: self.config.git_ref.clone(),
            root: self.volume.root.display().to_string(),
            current: self.volume.current_sha(),
            previous: self.state.previous.clone(),
            bad: self.state.bad.clone(),
            last_check: self.last_check.map(timestamp),
            last_error: self.last_error.clone(),
            retry_in_seconds: self.retry_at.map(|t| {
                t.saturating_duration_since(tokio::time::Instant::now())
                    .as_secs_f64()
            }),
            history: self.history.iter().cloned().collect(),
            dependencies: self.dependencies.status(),
            redeploy: self.images.status(),
        }
    }
}
