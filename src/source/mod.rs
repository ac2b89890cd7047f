//! Code delivery from git: cutover fetches the configured ref into a cache
//! repository on the volume, writes the commit to `releases/<sha>`, runs the
//! hooks, switches `current`, reloads the programs, and rolls back when the
//! new release fails its readiness check or crashes soon after.
//!
//! One actor owns the volume, so deploys, rollbacks and the recorded history
//! are serialised however many triggers (poll, push, webhook, `cutover
//! deploy`) arrive at once. `git` does the libgit2 work, `release` the files.

mod git;
mod release;

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::sleep_until;
use tracing::{error, info, warn};

use crate::config::{HooksConfig, RunAs, SourceConfig};
use crate::hooks::Hooks;
use crate::program::{ProgramEvent, ProgramHandle};
use crate::reaper::Reaper;
use crate::reload::ReloadQueue;
use crate::status::timestamp;

pub use git::redact_url;
use git::{GitError, RemoteSpec, open_cache};
use release::{ReleaseError, State, Volume};

const HISTORY_SHOWN: usize = 20;
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("{0}")]
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Deployed,
    RolledBack,
    Failed,
    Refused,
    Unchanged,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Deployed => "deployed",
            Outcome::RolledBack => "rolled-back",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
            Outcome::Unchanged => "unchanged",
        })
    }
}

/// One line of history.jsonl, and the answer to `cutover deploy --wait`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRecord {
    pub time: String,
    pub trigger: String,
    pub outcome: Outcome,
    pub sha: Option<String>,
    pub previous: Option<String>,
    pub duration_ms: f64,
    pub error: Option<String>,
}

impl DeployRecord {
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Deployed | Outcome::Unchanged)
    }
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
}

#[derive(Debug)]
enum Command {
    Deploy {
        target: Option<String>,
        trigger: String,
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
    /// Queues a deploy of the configured ref (`target` None) or of `target`.
    pub fn deploy(&self, target: Option<String>, trigger: &str) {
        let _ = self.commands.send(Command::Deploy {
            target,
            trigger: trigger.to_string(),
            reply: None,
        });
    }

    pub async fn deploy_and_wait(
        &self,
        target: Option<String>,
        trigger: &str,
    ) -> Option<DeployRecord> {
        let (reply, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Deploy {
            target,
            trigger: trigger.to_string(),
            reply: Some(reply),
        });
        rx.await.ok()
    }

    pub async fn rollback_and_wait(&self, to: Option<String>) -> Option<DeployRecord> {
        let (reply, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Rollback {
            to,
            reply: Some(reply),
        });
        rx.await.ok()
    }

    pub async fn status(&self) -> Option<SourceStatus> {
        let (reply, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Status(reply));
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
    wiring: Option<Wiring>,
}

impl Source {
    /// Opens the volume, cleans up after an interrupted run and restores a
    /// missing release directory from the cache.
    pub fn open(
        config: SourceConfig,
        hooks: HooksConfig,
        rollback_window: Duration,
        reaper: Reaper,
        hook_user: Option<RunAs>,
    ) -> Result<Source, SourceError> {
        let volume = Volume {
            root: config.root.clone(),
        };
        for leftover in volume.prepare()? {
            warn!(name = %leftover, "removed what an interrupted deploy left behind");
        }
        let history = volume.read_history(HISTORY_SHOWN).into();
        let state = volume.load_state();
        let remote = RemoteSpec::new(&config);
        let source = Source {
            config,
            hooks,
            rollback_window,
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
            hook_user,
            wiring: None,
        };
        source.recover_current();
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

    /// Whether `current` points at a release that exists.
    pub fn has_current(&self) -> bool {
        self.volume
            .current_sha()
            .is_some_and(|s| self.volume.has_release(&s))
    }

    /// The first deploy into an empty volume, before any program runs;
    /// retried with backoff until it succeeds.
    pub async fn first_deploy(&mut self) {
        loop {
            let record = self.deploy(None, "first start").await;
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
        handle.deploy(None, "start");
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
                _ = tick(&mut poll) => { self.deploy(None, "poll").await; }
                _ = sleep_until(self.retry_at.unwrap_or_else(tokio::time::Instant::now)), if self.retry_at.is_some() => {
                    self.retry_at = None;
                    self.deploy(None, "retry").await;
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
                if let Some(r) = reply {
                    let _ = r.send(record);
                }
            }
            Command::Deploy {
                target,
                trigger,
                reply,
            } => {
                let record = self.deploy(target, &trigger).await;
                if let Some(r) = reply {
                    let _ = r.send(record);
                }
                // Automatic triggers that arrived meanwhile (a burst of pushes)
                // collapse into one more look at the remote.
                let mut follow_up = false;
                let mut others = Vec::new();
                while let Ok(next) = queue.try_recv() {
                    match next {
                        Command::Deploy {
                            target: None,
                            reply: None,
                            ..
                        } => follow_up = true,
                        other => others.push(other),
                    }
                }
                if follow_up {
                    self.deploy(None, "push (coalesced)").await;
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
        }
    }

    /// Fetch, write, hook, switch, reload; roll back if the reload fails.
    async fn deploy(&mut self, target: Option<String>, trigger: &str) -> DeployRecord {
        let started = Instant::now();
        let explicit = target.is_some() || trigger == "deploy command";
        let wanted = target.unwrap_or_else(|| self.config.git_ref.clone());
        self.last_check = Some(SystemTime::now());
        let current = self
            .volume
            .current_sha()
            .filter(|s| self.volume.has_release(s));
        let mut record = Record::new(trigger, started, current.clone());

        let sha = match self.fetch(&wanted, current.clone()).await {
            Ok(sha) => sha,
            Err(e) => return self.fetch_failed(record, e, explicit),
        };
        self.failures = 0;
        self.retry_at = None;
        self.last_error = None;
        record.sha = Some(sha.clone());
        if current.as_deref() == Some(sha.as_str()) {
            return record.finish(Outcome::Unchanged, None);
        }
        if self.state.bad.contains(&sha) && !explicit {
            let first_time = self.refused.as_deref() != Some(sha.as_str());
            self.refused = Some(sha.clone());
            let why = format!(
                "{sha} was rolled back; waiting for `{}` to move to another commit",
                self.config.git_ref
            );
            let done = record.finish(Outcome::Refused, Some(why));
            if first_time {
                warn!(%sha, "not deploying a commit that was rolled back");
                self.remember(&done);
            }
            return done;
        }
        if !explicit && self.hook_failed.as_deref() == Some(sha.as_str()) {
            let why = format!(
                "the before_cutover hook failed for {sha}; waiting for `{}` to move, or `cutover deploy`",
                self.config.git_ref
            );
            return record.finish(Outcome::Refused, Some(why));
        }
        if let Err(e) = self.write_release(&sha).await {
            return self.failed(record, e.to_string());
        }
        if let Err(e) = self
            .run_hooks("before_cutover", &sha, current.as_deref())
            .await
        {
            self.hook_failed = Some(sha.clone());
            return self.failed(record, format!("{e}; the old release keeps serving"));
        }
        if let Err(e) = self.volume.switch_to(&sha) {
            return self.failed(record, e.to_string());
        }
        info!(%sha, previous = ?current, %trigger, "switched current; reloading");
        self.state.previous = current.clone();
        self.state.bad.retain(|b| b != &sha);
        self.save_state();

        let reload = match &self.wiring {
            Some(w) => Some(
                w.queue
                    .trigger_and_wait(format!("deploy {}", &sha[..12]))
                    .await,
            ),
            None => None,
        };
        if let Some(reload) = reload {
            let failure = match reload {
                Some(r) if r.ok => None,
                Some(r) => Some(r.error.unwrap_or_else(|| "reload failed".into())),
                None => Some("cutover is shutting down".into()),
            };
            if let Some(why) = failure {
                return self
                    .roll_back_failed_deploy(record, &sha, current, why)
                    .await;
            }
        }
        let after = self
            .run_hooks("after_cutover", &sha, current.as_deref())
            .await
            .err();
        self.deployed_at = Some(Instant::now());
        let protect: Vec<&str> = [Some(sha.as_str()), current.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        for gone in self.volume.prune(self.config.keep as usize, &protect) {
            info!(sha = %gone, "removed old release");
        }
        let done = record.finish(
            Outcome::Deployed,
            after.map(|e| format!("deployed, but {e}")),
        );
        info!(%sha, ms = done.duration_ms as u64, "deployed");
        self.remember(&done);
        done
    }

    async fn fetch(&self, wanted: &str, current: Option<String>) -> Result<String, SourceError> {
        let remote = self.remote.clone();
        let cache = self.volume.cache();
        let wanted = wanted.to_string();
        tokio::task::spawn_blocking(move || -> Result<String, SourceError> {
            let repo = open_cache(&cache)?;
            let (name, oid) = remote.resolve(&repo, &wanted)?;
            if current.as_deref() == Some(oid.to_string().as_str()) {
                return Ok(oid.to_string());
            }
            Ok(remote.fetch(&repo, &name, oid)?.to_string())
        })
        .await
        .map_err(|e| SourceError::Other(e.to_string()))?
    }

    async fn write_release(&self, sha: &str) -> Result<(), SourceError> {
        if self.volume.has_release(sha) {
            return Ok(());
        }
        let volume = self.volume.clone();
        let oid = git2::Oid::from_str(sha).map_err(|e| SourceError::Other(e.to_string()))?;
        let started = Instant::now();
        let written = tokio::task::spawn_blocking(move || {
            release::materialise(&volume, &volume.cache(), oid)
        })
        .await
        .map_err(|e| SourceError::Other(e.to_string()))??;
        info!(%sha, files = written.files, bytes = written.bytes, ms = started.elapsed().as_millis() as u64, "release written");
        Ok(())
    }

    async fn run_hooks(
        &self,
        kind: &'static str,
        sha: &str,
        previous: Option<&str>,
    ) -> Result<(), crate::hooks::HookError> {
        let commands = match kind {
            "before_cutover" => &self.hooks.before_cutover,
            _ => &self.hooks.after_cutover,
        };
        if commands.is_empty() {
            return Ok(());
        }
        let dir = self.volume.release(sha);
        let env = vec![
            ("CUTOVER_RELEASE_DIR".to_string(), dir.display().to_string()),
            ("CUTOVER_SHA".to_string(), sha.to_string()),
            (
                "CUTOVER_PREVIOUS_SHA".to_string(),
                previous.unwrap_or("").to_string(),
            ),
        ];
        Hooks {
            kind,
            commands,
            dir: &dir,
            env,
            user: self.hook_user.as_ref(),
            timeout: self.hooks.timeout,
            reaper: &self.reaper,
        }
        .run()
        .await
    }

    fn fetch_failed(&mut self, record: Record, e: SourceError, explicit: bool) -> DeployRecord {
        let message = self.remote.redact(&e.to_string());
        let repeated = self.last_error.as_deref() == Some(message.as_str());
        self.last_error = Some(message.clone());
        if !explicit {
            self.failures += 1;
            let delay = RETRY_FIRST
                .saturating_mul(1 << self.failures.min(16).saturating_sub(1))
                .min(RETRY_MAX);
            self.retry_at = Some(tokio::time::Instant::now() + delay);
            warn!(error = %message, retry_in = %humantime::format_duration(delay), "cannot get the code; the current release keeps serving");
        }
        let done = record.finish(Outcome::Failed, Some(message));
        if !repeated {
            self.remember(&done);
        }
        done
    }

    fn failed(&mut self, record: Record, why: String) -> DeployRecord {
        let why = self.remote.redact(&why);
        error!(error = %why, "deploy failed");
        let done = record.finish(Outcome::Failed, Some(why));
        self.remember(&done);
        done
    }

    async fn roll_back_failed_deploy(
        &mut self,
        record: Record,
        sha: &str,
        previous: Option<String>,
        why: String,
    ) -> DeployRecord {
        warn!(%sha, error = %why, "new release failed; rolling back");
        let outcome = self
            .rollback(
                previous,
                &format!("rollback after {}", record.trigger),
                Some(sha),
            )
            .await;
        let done = record.finish(
            Outcome::RolledBack,
            Some(format!(
                "{why}; rolled back to {}",
                outcome.sha.as_deref().unwrap_or("nothing")
            )),
        );
        self.remember(&done);
        done
    }

    /// Switches `current` back to `to` (default: the previous release),
    /// marks the release left behind as bad, and reloads the programs.
    async fn rollback(
        &mut self,
        to: Option<String>,
        trigger: &str,
        bad: Option<&str>,
    ) -> DeployRecord {
        let started = Instant::now();
        let from = self.volume.current_sha();
        let mut record = Record::new(trigger, started, from.clone());
        let Some(target) = to.or_else(|| self.state.previous.clone()) else {
            return record.finish(
                Outcome::Refused,
                Some("no previous release to roll back to".into()),
            );
        };
        let target = match self.full_sha_of(&target) {
            Ok(sha) => sha,
            Err(why) => return self.failed(record, why),
        };
        record.sha = Some(target.clone());
        if let Err(e) = self.write_release(&target).await {
            return self.failed(record, format!("cannot restore {target}: {e}"));
        }
        if let Err(e) = self.volume.switch_to(&target) {
            return self.failed(record, e.to_string());
        }
        if let Some(bad) = bad
            .map(str::to_string)
            .or(from.clone())
            .filter(|b| b != &target && !self.state.bad.contains(b))
        {
            self.state.bad.push(bad);
        }
        self.state.previous = None;
        self.deployed_at = None;
        self.save_state();
        info!(sha = %target, from = ?from, "rolled back current");
        // Programs that already run the old code (overlap kept it, restart fell
        // back to it) need nothing; reload the others.
        let reload_error = match &self.wiring {
            Some(w) if !all_on(&w.programs, &self.volume.release(&target)).await => {
                match w
                    .queue
                    .trigger_and_wait(format!("rollback {}", &target[..12.min(target.len())]))
                    .await
                {
                    Some(r) if r.ok => None,
                    Some(r) => r.error,
                    None => Some("cutover is shutting down".into()),
                }
            }
            _ => None,
        };
        let done = record.finish(Outcome::RolledBack, reload_error);
        if bad.is_none() {
            self.remember(&done);
        }
        done
    }

    /// The full sha of a kept release named by a full or abbreviated sha
    /// (`cutover rollback --to`), or of a commit in the cache.
    fn full_sha_of(&self, name: &str) -> Result<String, String> {
        let name = name.to_ascii_lowercase();
        if release::is_sha(&name) {
            return Ok(name);
        }
        if name.len() < 4 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("`{name}` is not a commit id"));
        }
        let kept: Vec<String> = std::fs::read_dir(self.volume.releases())
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| release::is_sha(n) && n.starts_with(&name))
                    .collect()
            })
            .unwrap_or_default();
        match kept.as_slice() {
            [one] => return Ok(one.clone()),
            [] => {}
            _ => return Err(format!("`{name}` is ambiguous: {}", kept.join(", "))),
        }
        git2::Repository::open_bare(self.volume.cache())
            .and_then(|repo| Ok(repo.revparse_single(&name)?.peel_to_commit()?.id()))
            .map(|id| id.to_string())
            .map_err(|_| format!("no kept release or cached commit matches `{name}`"))
    }

    async fn on_crash(&mut self, program: &str, status: &str) {
        let Some(at) = self.deployed_at else { return };
        if at.elapsed() > self.rollback_window {
            return;
        }
        let sha = self.volume.current_sha().unwrap_or_default();
        warn!(%program, %status, %sha, after = %humantime::format_duration(Duration::from_secs(at.elapsed().as_secs())), "crashed within the rollback window; rolling back");
        let trigger = format!(
            "rollback: {program} {status} within {}",
            humantime::format_duration(self.rollback_window)
        );
        let record = self.rollback(None, &trigger, Some(&sha)).await;
        self.remember(&record);
    }

    fn remember(&mut self, record: &DeployRecord) {
        if let Err(e) = self.volume.append_history(record) {
            warn!(error = %e, "cannot write deploy history");
        }
        self.history.push_back(record.clone());
        while self.history.len() > HISTORY_SHOWN {
            self.history.pop_front();
        }
    }

    fn save_state(&self) {
        if let Err(e) = self.volume.save_state(&self.state) {
            error!(error = %e, "cannot save deploy state");
        }
    }
}

/// A deploy record being filled in.
struct Record {
    trigger: String,
    started: Instant,
    at: SystemTime,
    previous: Option<String>,
    sha: Option<String>,
}

impl Record {
    fn new(trigger: &str, started: Instant, previous: Option<String>) -> Record {
        Record {
            trigger: trigger.to_string(),
            started,
            at: SystemTime::now(),
            previous,
            sha: None,
        }
    }

    fn finish(&self, outcome: Outcome, error: Option<String>) -> DeployRecord {
        DeployRecord {
            time: timestamp(self.at),
            trigger: self.trigger.clone(),
            outcome,
            sha: self.sha.clone(),
            previous: self.previous.clone(),
            duration_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            error,
        }
    }
}

/// Whether every program already runs in `dir`.
async fn all_on(programs: &[ProgramHandle], dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for p in programs {
        let on = p
            .status()
            .await
            .and_then(|s| s.release)
            .is_some_and(|r| Path::new(&r) == dir);
        if !on {
            return false;
        }
    }
    true
}

async fn tick(poll: &mut Option<tokio::time::Interval>) {
    match poll {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn next_event(
    events: &mut Option<broadcast::Receiver<ProgramEvent>>,
) -> Option<ProgramEvent> {
    match events {
        Some(rx) => match rx.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(_)) => None,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// A bare repository on this machine (`[source] repo` is a path): watch its
/// refs so a `git push` into it deploys without polling.
fn git_push_watcher(repo: &str, handle: SourceHandle) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let path = Path::new(repo.strip_prefix("file://").unwrap_or(repo));
    if !path.is_absolute() || !path.join("refs").is_dir() {
        return None;
    }
    let refs = path.join("refs");
    let packed = path.join("packed-refs");
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let relevant = event.paths.iter().any(|p| {
            (p.starts_with(&refs) || p == &packed) && p.extension().is_none_or(|e| e != "lock")
        });
        if relevant {
            handle.deploy(None, "push");
        }
    })
    .ok()?;
    watcher
        .watch(&path.join("refs"), RecursiveMode::Recursive)
        .ok()?;
    watcher.watch(path, RecursiveMode::NonRecursive).ok()?;
    info!(repo = %path.display(), "watching the repository for pushes");
    Some(watcher)
}
