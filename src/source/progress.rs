//! What the source actor is doing right now, published for readers.
//!
//! A deploy can take minutes (a migration hook, a 100 MB fetch), and probes
//! must be answered all the while. The actor therefore never answers
//! questions: it publishes a `SourceStatus` on a `watch` channel whenever its
//! state changes, and the phase of a deploy in progress as it moves on. The
//! control socket and the HTTP endpoint read the last snapshot and add what
//! depends on the moment of reading (how long a phase has run, when the next
//! retry comes).

use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::SourceStatus;
use crate::clock::timestamp;
use crate::hooks::HookKind;
use crate::reload::trigger::Trigger;
use crate::sha::Sha;

/// A step of the deploy pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Phase {
    /// Asking the remote and fetching what it has.
    Fetching,
    /// Writing the commit to `releases/<sha>`.
    Writing,
    /// Fingerprinting the dependency files.
    CheckingDependencies,
    /// A `[hooks]` command.
    Hook {
        kind: HookKind,
        /// e.g. "before_cutover[0]".
        name: String,
        command: Vec<String>,
    },
    /// Pointing `current` at the release.
    Switching,
    /// The programs take the new code up.
    Reloading,
    RollingBack,
    /// Removing releases beyond `keep`.
    Pruning,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Fetching => f.write_str("fetching"),
            Phase::Writing => f.write_str("writing the release"),
            Phase::CheckingDependencies => f.write_str("checking dependencies"),
            Phase::Hook { name, command, .. } => write!(f, "hook {name} `{}`", command.join(" ")),
            Phase::Switching => f.write_str("switching current"),
            Phase::Reloading => f.write_str("reloading the programs"),
            Phase::RollingBack => f.write_str("rolling back"),
            Phase::Pruning => f.write_str("pruning old releases"),
        }
    }
}

/// What the source actor is carrying out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Deploy,
    Rollback,
}

/// The deploy (or rollback) in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InProgress {
    pub action: Action,
    pub trigger: String,
    pub started_at: String,
    /// Known once the remote answered.
    pub sha: Option<Sha>,
    pub phase: Phase,
    pub phase_started_at: String,
    /// Filled in when read.
    #[serde(default)]
    pub phase_seconds: f64,
    #[serde(default)]
    pub seconds: f64,
    #[serde(skip)]
    started: Option<Instant>,
    #[serde(skip)]
    phase_started: Option<Instant>,
}

impl InProgress {
    pub(super) fn new(trigger: &Trigger) -> InProgress {
        let now = SystemTime::now();
        InProgress {
            action: if trigger.rolls_back() {
                Action::Rollback
            } else {
                Action::Deploy
            },
            trigger: trigger.to_string(),
            started_at: timestamp(now),
            sha: None,
            phase: Phase::Fetching,
            phase_started_at: timestamp(now),
            phase_seconds: 0.0,
            seconds: 0.0,
            started: Some(Instant::now()),
            phase_started: Some(Instant::now()),
        }
    }

    /// One line for people: `deploy of 3f2a9c1d0b7e by push: hook
    /// before_cutover[0] `…` for 4.2 s (5.0 s in all)`.
    pub fn describe(&self) -> String {
        format!(
            "{} of {} by {}: {} for {:.1} s ({:.1} s in all)",
            match self.action {
                Action::Deploy => "deploy",
                Action::Rollback => "rollback",
            },
            self.sha.as_ref().map_or("-", |s| s.short()),
            self.trigger,
            self.phase,
            self.phase_seconds,
            self.seconds
        )
    }

    /// Fills in the durations as of now.
    pub(super) fn as_of_now(&mut self) {
        let secs = |t: Option<Instant>| t.map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.seconds = secs(self.started);
        self.phase_seconds = secs(self.phase_started);
    }
}

/// The sending side, shared by the actor and the steps it runs (a hook
/// reports which command it started without holding the actor).
#[derive(Clone, Debug)]
pub(super) struct Publisher(watch::Sender<SourceStatus>);

impl Publisher {
    pub(super) fn new(initial: SourceStatus) -> (Publisher, watch::Receiver<SourceStatus>) {
        let (tx, rx) = watch::channel(initial);
        (Publisher(tx), rx)
    }

    /// Publishes the actor's state, keeping the deploy in progress.
    pub(super) fn state(&self, mut status: SourceStatus) {
        self.0.send_modify(|shown| {
            status.deploying = shown.deploying.take();
            *shown = status;
        });
    }

    pub(super) fn begin(&self, trigger: &Trigger) {
        self.0
            .send_modify(|s| s.deploying = Some(InProgress::new(trigger)));
    }

    pub(super) fn sha(&self, sha: &Sha) {
        self.0.send_modify(|s| {
            if let Some(d) = s.deploying.as_mut() {
                d.sha = Some(sha.clone());
            }
        });
    }

    pub(super) fn phase(&self, phase: Phase) {
        self.0.send_modify(|s| {
            if let Some(d) = s.deploying.as_mut() {
                d.phase = phase;
                d.phase_started_at = timestamp(SystemTime::now());
                d.phase_started = Some(Instant::now());
            }
        });
    }

    pub(super) fn end(&self) {
        self.0.send_modify(|s| s.deploying = None);
    }
}
