//! Going back: the automatic rollback of a deploy whose reload failed or
//! whose program crashed within the rollback window, and `cutover rollback
//! [--to SHA]`. A rollback passes the dependency gate like a deploy, marks
//! the release it leaves as bad, and reloads only the programs that are not
//! already back on the old code. Callers record the outcome.

use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Source;
use super::dependency_check::Verdict;
use super::history::{DeployRecord, Outcome, Record};
use super::progress::Phase;
use crate::program::ProgramHandle;
use crate::reload::trigger::Trigger;
use crate::sha::Sha;

/// Where a rollback goes.
pub(super) enum Target {
    Sha(Sha),
    /// As a person typed it: a full or abbreviated sha.
    Named(String),
}

impl Source {
    pub(super) async fn roll_back_failed_deploy(
        &mut self,
        record: Record,
        sha: &Sha,
        previous: Option<Sha>,
        why: String,
        trigger: &Trigger,
    ) -> DeployRecord {
        warn!(%sha, error = %why, "new release failed; rolling back");
        let trigger = Trigger::AfterFailedDeploy(Box::new(trigger.clone()));
        let rollback = self
            .rollback(previous.map(Target::Sha), &trigger, Some(sha))
            .await;
        // One record for the deploy and its rollback.
        let done = match (rollback.outcome, &rollback.sha) {
            (Outcome::RolledBack, Some(to)) => record.finish(
                Outcome::RolledBack,
                Some(format!("{why}; rolled back to {to}")),
            ),
            _ => record.finish(
                Outcome::Failed,
                Some(format!(
                    "{why}; and the rollback failed: {}",
                    rollback.error.as_deref().unwrap_or("unknown reason")
                )),
            ),
        };
        self.remember(&done);
        done
    }

    /// A rollback asked for on its own (a command, a crash), published as
    /// the deploy in progress while it runs.
    pub(super) async fn rollback_as_asked(
        &mut self,
        to: Option<String>,
        trigger: Trigger,
    ) -> DeployRecord {
        self.publisher.begin(&trigger);
        let bad = self.volume.current_sha();
        let record = self
            .rollback(to.map(Target::Named), &trigger, bad.as_ref())
            .await;
        self.publisher.end();
        self.publish();
        record
    }

    /// Switches `current` back to `to` (default: the previous release),
    /// marks the release left behind as bad, and reloads the programs. The
    /// caller records the outcome.
    pub(super) async fn rollback(
        &mut self,
        to: Option<Target>,
        trigger: &Trigger,
        bad: Option<&Sha>,
    ) -> DeployRecord {
        self.publisher.phase(Phase::RollingBack);
        let started = Instant::now();
        let from = self.volume.current_sha();
        let mut record = Record::new(&trigger.to_string(), started, from.clone());
        let target = match to.or_else(|| self.state.previous.clone().map(Target::Sha)) {
            None => {
                return record.finish(
                    Outcome::Refused,
                    Some("no previous release to roll back to".into()),
                );
            }
            Some(Target::Sha(sha)) => sha,
            Some(Target::Named(name)) => match self.full_sha_of(&name).await {
                Ok(sha) => sha,
                Err(why) => return self.failure(record, why.to_string()),
            },
        };
        self.publisher.sha(&target);
        record.sha = Some(target.clone());
        if let Err(e) = self.write_release(&target).await {
            return self.failure(record, format!("cannot restore {target}: {e}"));
        }
        self.publisher.phase(Phase::CheckingDependencies);
        let release = self.volume.release(&target);
        let digest = match self.dependencies.check_rollback(&release, &target).await {
            Verdict::Fits(digest) => digest,
            Verdict::Differs(required) => {
                let why = format!(
                    "cannot roll back to {target}: it needs other dependencies than this image has ({})",
                    required.changed_files.join(", ")
                );
                return record.finish(Outcome::Refused, Some(why));
            }
        };
        self.publisher.phase(Phase::Switching);
        if let Err(e) = self.volume.switch_to(&target) {
            return self.failure(record, e.to_string());
        }
        if let Some(bad) = bad
            .cloned()
            .or(from.clone())
            .filter(|b| b != &target && !self.state.bad.contains(b))
        {
            self.state.bad.push(bad);
        }
        self.state.previous = None;
        self.deployed_at = None;
        self.save_state();
        info!(sha = %target, from = ?from, "rolled back current");
        self.dependencies.switched(digest);
        self.publish();
        // Programs that already run the old code (overlap kept it, restart fell
        // back to it) need nothing; reload the others.
        let reload_error = match &self.wiring {
            Some(w) if !all_on(&w.programs, &self.volume.release(&target)) => {
                self.reload_programs(Trigger::RolledBack(target.clone()))
                    .await
            }
            _ => None,
        };
        record.finish(Outcome::RolledBack, reload_error)
    }

    /// The full sha of a kept release named by a full or abbreviated sha
    /// (`cutover rollback --to`), or of a commit in the cache.
    async fn full_sha_of(&self, name: &str) -> Result<Sha, UnknownCommit> {
        let name = name.to_ascii_lowercase();
        if let Ok(sha) = Sha::parse(&name) {
            return Ok(sha);
        }
        if name.len() < 4 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(UnknownCommit::NotACommitId(name));
        }
        let volume = self.volume.clone();
        tokio::task::spawn_blocking(move || full_sha_in(&volume, &name))
            .await
            .map_err(UnknownCommit::LookupFailed)?
    }

    pub(super) async fn on_crash(&mut self, program: &str, status: &str) {
        let Some(at) = self.deployed_at else { return };
        if at.elapsed() > self.rollback_window {
            return;
        }
        let Some(sha) = self.volume.current_sha() else {
            return;
        };
        warn!(%program, %status, %sha, after = %humantime::format_duration(Duration::from_secs(at.elapsed().as_secs())), "failed within the rollback window; rolling back");
        let trigger = Trigger::Crash {
            program: program.to_string(),
            status: status.to_string(),
            window: self.rollback_window,
        };
        let record = self.rollback_as_asked(None, trigger).await;
        self.remember(&record);
    }
}

/// Reads the releases directory, then the cache, for an abbreviated sha.
fn full_sha_in(volume: &super::Volume, name: &str) -> Result<Sha, UnknownCommit> {
    let kept: Vec<Sha> = std::fs::read_dir(volume.releases())
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| Sha::parse(e.file_name().to_str()?).ok())
                .filter(|sha| sha.as_str().starts_with(name))
                .collect()
        })
        .unwrap_or_default();
    match kept.as_slice() {
        [one] => return Ok(one.clone()),
        [] => {}
        _ => {
            return Err(UnknownCommit::Ambiguous {
                name: name.to_string(),
                kept,
            });
        }
    }
    git2::Repository::open_bare(volume.cache())
        .and_then(|repo| Ok(repo.revparse_single(name)?.peel_to_commit()?.id()))
        .map(Sha::from)
        .map_err(|_| UnknownCommit::NoMatch(name.to_string()))
}

/// Why `cutover rollback --to <name>` found no single commit to go to.
#[derive(Debug, thiserror::Error)]
enum UnknownCommit {
    #[error("`{0}` is not a commit id")]
    NotACommitId(String),
    #[error("looking up the commit failed: {0}")]
    LookupFailed(tokio::task::JoinError),
    #[error("`{name}` is ambiguous: {}", kept.iter().map(Sha::as_str).collect::<Vec<_>>().join(", "))]
    Ambiguous { name: String, kept: Vec<Sha> },
    #[error("no kept release or cached commit matches `{0}`")]
    NoMatch(String),
}

/// Whether every program already runs in `dir`, as last published.
fn all_on(programs: &[ProgramHandle], dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    programs
        .iter()
        .all(|p| p.status().release.is_some_and(|r| Path::new(&r) == dir))
}
