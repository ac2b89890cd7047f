//! What a deploy, rollback or refusal leaves on record: one JSON line in
//! `<root>/history.jsonl` and in `cutover status`, and the answer to
//! `cutover deploy --wait`.

use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::clock::timestamp;
use crate::sha::Sha;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Deployed,
    RolledBack,
    Failed,
    Refused,
    Unchanged,
    /// The release changes dependencies: it needs a new image.
    RedeployRequired,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Deployed => "deployed",
            Outcome::RolledBack => "rolled-back",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
            Outcome::Unchanged => "unchanged",
            Outcome::RedeployRequired => "redeploy-required",
        })
    }
}

/// One line of history.jsonl, and the answer to `cutover deploy --wait`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRecord {
    pub time: String,
    pub trigger: String,
    pub outcome: Outcome,
    pub sha: Option<Sha>,
    pub previous: Option<Sha>,
    pub duration_ms: f64,
    pub error: Option<String>,
}

impl DeployRecord {
    /// What `cutover deploy/rollback --wait` exits 0 for: it did what was
    /// asked, without an error on the way (an after_cutover hook included).
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
            && matches!(
                self.outcome,
                Outcome::Deployed | Outcome::Unchanged | Outcome::RolledBack
            )
    }
}

/// A deploy record being filled in.
pub(super) struct Record {
    pub(super) trigger: String,
    pub(super) started: Instant,
    pub(super) at: SystemTime,
    pub(super) previous: Option<Sha>,
    pub(super) sha: Option<Sha>,
}

impl Record {
    pub(super) fn new(trigger: &str, started: Instant, previous: Option<Sha>) -> Record {
        Record {
            trigger: trigger.to_string(),
            started,
            at: SystemTime::now(),
            previous,
            sha: None,
        }
    }

    pub(super) fn finish(&self, outcome: Outcome, error: Option<String>) -> DeployRecord {
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
