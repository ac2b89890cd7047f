//! The deploy pipeline of the source actor, in two halves: `decide` fetches
//! and writes the commit and says whether it may go live (unchanged,
//! refused, needs an image, or a plan); `cut_over` carries a plan out: the
//! before_cutover hooks, the switch of `current`, the reload (rolled back
//! when it fails), the after_cutover hooks and the pruning. Every path ends
//! in one `DeployRecord`, so what happened is always on record, including
//! refusals.

use std::time::{Instant, SystemTime};

use tracing::{error, info, warn};

use super::dependency_check::{RedeployRequired, Verdict};
use super::history::{DeployRecord, Outcome, Record};
use super::progress::Phase;
use super::release::{Blame, ReleaseError};
use super::{Source, SourceError, retry_delay};
use crate::hooks::HookKind;
use crate::reload::trigger::Trigger;
use crate::sha::Sha;

/// What `decide` found.
enum Decision {
    /// Nothing to cut over to: the record says why.
    Done(DeployRecord),
    CutOver(Plan),
}

/// A written release that may go live.
struct Plan {
    record: Record,
    sha: Sha,
    /// The release serving now.
    current: Option<Sha>,
    /// Its dependency digest, when known.
    digest: Option<String>,
}

impl Source {
    /// Fetch, write, hook, switch, reload; roll back if the reload fails.
    /// Publishes each step while it runs.
    pub(super) async fn deploy(
        &mut self,
        target: Option<String>,
        trigger: Trigger,
    ) -> DeployRecord {
        self.publisher.begin(&trigger);
        let record = match self.decide(target, &trigger).await {
            Decision::Done(record) => record,
            Decision::CutOver(plan) => self.cut_over(plan, &trigger).await,
        };
        // Only a deploy that got somewhere ends the backoff; a failure has
        // already scheduled its retry.
        if record.outcome != Outcome::Failed {
            self.failures = 0;
        }
        self.publisher.end();
        self.publish();
        record
    }

    async fn decide(&mut self, target: Option<String>, trigger: &Trigger) -> Decision {
        let by_hand = trigger.by_hand();
        let started = Instant::now();
        let wanted = target.unwrap_or_else(|| self.config.git_ref.clone());
        self.last_check = Some(SystemTime::now());
        let current = self
            .volume
            .current_sha()
            .filter(|s| self.current_fits_image && self.volume.has_release(s));
        let mut record = Record::new(&trigger.to_string(), started, current.clone());

        let sha = match self.fetch(&wanted, current.clone()).await {
            Ok(sha) => sha,
            Err(e) => return Decision::Done(self.fetch_failed(record, e, by_hand)),
        };
        self.retry_at = None;
        self.last_error = None;
        self.publisher.sha(&sha);
        record.sha = Some(sha.clone());
        if current.as_ref() == Some(&sha) {
            return Decision::Done(record.finish(Outcome::Unchanged, None));
        }
        if let Some(refusal) = self.refusal(&record, &sha, trigger) {
            return Decision::Done(refusal);
        }
        if let Some(pending) = self.images.pending_for(&sha) {
            // Already recorded and handed to [redeploy]; nothing new to say.
            let why = needs_image(pending);
            return Decision::Done(record.finish(Outcome::RedeployRequired, Some(why)));
        }
        self.publisher.phase(Phase::Writing);
        if let Err(e) = self.write_release(&sha).await {
            return Decision::Done(self.write_failed(record, &sha, e, by_hand).await);
        }
        self.publisher.phase(Phase::CheckingDependencies);
        let verdict = self
            .dependencies
            .check(&self.volume.release(&sha), &sha)
            .await;
        match verdict {
            Err(e) => Decision::Done(self.failed_retrying(record, e.to_string(), by_hand)),
            Ok(Verdict::Differs(required)) => {
                let why = needs_image(&required);
                warn!(%sha, changed = ?required.changed_files, "dependencies changed: not hot-loading this release; {}", self.serving_note());
                let done = record.finish(Outcome::RedeployRequired, Some(why));
                self.remember(&done);
                self.request_redeploy(required);
                Decision::Done(done)
            }
            Ok(Verdict::Fits(digest)) => Decision::CutOver(Plan {
                record,
                sha,
                current,
                digest,
            }),
        }
    }

    /// Why automatic triggers leave `sha` alone, if they do: it was rolled
    /// back, or its before_cutover hook failed (until the ref moves).
    fn refusal(&mut self, record: &Record, sha: &Sha, trigger: &Trigger) -> Option<DeployRecord> {
        if trigger.by_hand() {
            return None;
        }
        if self.state.bad.contains(sha) {
            let first_time = self.refused.as_ref() != Some(sha);
            self.refused = Some(sha.clone());
            let why = format!(
                "{sha} was rolled back or refused; waiting for `{}` to move to another commit",
                self.config.git_ref
            );
            let done = record.finish(Outcome::Refused, Some(why));
            if first_time {
                warn!(%sha, "not deploying a commit that was rolled back or refused");
                self.remember(&done);
            }
            return Some(done);
        }
        // With nothing served yet the hook is retried with backoff: the
        // database it needs may just not be up.
        let serving = self.volume.current_sha().is_some();
        if serving
            && let Some((_, hook_error)) = self.hook_failed.as_ref().filter(|(s, _)| s == sha)
        {
            // Still the reason nothing new is served.
            self.last_error = Some(hook_error.clone());
            let why = format!(
                "the before_cutover hook failed for {sha}; waiting for `{}` to move, or `cutover deploy`",
                self.config.git_ref
            );
            return Some(record.finish(Outcome::Refused, Some(why)));
        }
        None
    }

    async fn cut_over(&mut self, plan: Plan, trigger: &Trigger) -> DeployRecord {
        let Plan {
            record,
            sha,
            current,
            digest,
        } = plan;
        if let Err(e) = self
            .run_hooks(HookKind::BeforeCutover, &sha, current.as_ref())
            .await
        {
            let why = format!("{e}; {}", self.serving_note());
            let done = self.failed(record, why);
            // Status shows it until the ref moves on.
            self.last_error = done.error.clone();
            self.hook_failed = Some((sha.clone(), done.error.clone().unwrap_or_default()));
            return done;
        }
        self.publisher.phase(Phase::Switching);
        if let Err(e) = self.volume.switch_to(&sha) {
            return self.failed_retrying(record, e.to_string(), trigger.by_hand());
        }
        info!(%sha, previous = ?current, %trigger, "switched current; reloading");
        self.dependencies.switched(digest);
        self.images.withdraw();
        self.current_fits_image = true;
        self.hook_failed = None;
        self.state.previous = current.clone();
        self.state.bad.retain(|b| b != &sha);
        self.save_state();
        self.publish();

        if let Some(why) = self.reload_programs(Trigger::Deployed(sha.clone())).await {
            return self
                .roll_back_failed_deploy(record, &sha, current, why, trigger)
                .await;
        }
        let after = self
            .run_hooks(HookKind::AfterCutover, &sha, current.as_ref())
            .await
            .err();
        self.deployed_at = Some(Instant::now());
        self.prune().await;
        let done = record.finish(
            Outcome::Deployed,
            after.map(|e| format!("deployed, but {e}")),
        );
        info!(%sha, ms = done.duration_ms as u64, "deployed");
        self.remember(&done);
        done
    }

    /// Has the programs take up what `current` holds; the reason when that
    /// failed. Without programs (the first release) there is nothing to do.
    pub(super) async fn reload_programs(&self, trigger: Trigger) -> Option<String> {
        let wiring = self.wiring.as_ref()?;
        self.publisher.phase(Phase::Reloading);
        match wiring.queue.trigger_and_wait(trigger).await {
            Some(r) if r.ok => None,
            Some(r) => Some(r.error.unwrap_or_else(|| "reload failed".into())),
            None => Some("cutover is shutting down".into()),
        }
    }

    /// What keeps serving while a release is held back, said truthfully.
    pub(super) fn serving_note(&self) -> &'static str {
        if self.volume.current_sha().is_some() && self.current_fits_image {
            "the old release keeps serving"
        } else {
            "nothing is served until a release is in place"
        }
    }

    pub(super) fn fetch_failed(
        &mut self,
        record: Record,
        e: SourceError,
        by_hand: bool,
    ) -> DeployRecord {
        let message = self.remote.redact(&e.to_string());
        let repeated = self.last_error.as_deref() == Some(message.as_str());
        self.last_error = Some(message.clone());
        if !by_hand {
            self.failures += 1;
            let delay = retry_delay(self.failures);
            self.retry_at = Some(tokio::time::Instant::now() + delay);
            warn!(error = %message, retry_in = %humantime::format_duration(delay), "cannot get the code; {}", self.serving_note());
        }
        let done = record.finish(Outcome::Failed, Some(message));
        if !repeated {
            self.remember(&done);
        }
        done
    }

    /// A release that could not be written: a commit over a limit is
    /// refused and marked bad (like a rolled-back one, until the ref moves);
    /// a cache that cannot be read is thrown away and fetched again; a full
    /// disk or another volume error is retried with backoff. The old release
    /// keeps serving throughout.
    async fn write_failed(
        &mut self,
        record: Record,
        sha: &Sha,
        e: SourceError,
        by_hand: bool,
    ) -> DeployRecord {
        let release = match &e {
            SourceError::Release(r) => Some(r),
            _ => None,
        };
        match release.map(ReleaseError::blame) {
            Some(Blame::Commit) => {
                warn!(%sha, error = %e, "refusing the commit and marking it bad; {}", self.serving_note());
                if !self.state.bad.contains(sha) {
                    self.state.bad.push(sha.clone());
                    self.save_state();
                }
                self.refused = Some(sha.clone());
                let why = format!("{e}; {}", self.serving_note());
                let done = record.finish(Outcome::Refused, Some(self.remote.redact(&why)));
                self.remember(&done);
                done
            }
            Some(Blame::Cache) => {
                self.discard_cache().await;
                self.failed_retrying(record, format!("{e}; the cache is fetched again"), by_hand)
            }
            _ if release.is_some_and(ReleaseError::disk_full) => {
                let why =
                    format!("{e}: the disk is full; not the commit's fault, so it is retried");
                self.failed_retrying(record, why, by_hand)
            }
            _ => self.failed_retrying(record, e.to_string(), by_hand),
        }
    }

    /// A failed record, remembered, with a retry scheduled (with backoff)
    /// when the deploy was automatic: it goes to wherever the ref is then.
    pub(super) fn failed_retrying(
        &mut self,
        record: Record,
        why: String,
        by_hand: bool,
    ) -> DeployRecord {
        let done = self.failed(record, why);
        self.last_error = done.error.clone();
        if !by_hand {
            self.failures += 1;
            let delay = retry_delay(self.failures);
            self.retry_at = Some(tokio::time::Instant::now() + delay);
            warn!(retry_in = %humantime::format_duration(delay), "deploy failed; retrying; {}", self.serving_note());
        }
        done
    }

    pub(super) fn failed(&mut self, record: Record, why: String) -> DeployRecord {
        let done = self.failure(record, why);
        self.remember(&done);
        done
    }

    /// A failed record, logged but not yet remembered.
    pub(super) fn failure(&self, record: Record, why: String) -> DeployRecord {
        let why = self.remote.redact(&why);
        error!(error = %why, trigger = %record.trigger, "failed");
        record.finish(Outcome::Failed, Some(why))
    }

    pub(super) fn remember(&mut self, record: &DeployRecord) {
        if let Err(e) = self.volume.append_history(record) {
            warn!(error = %e, "cannot write deploy history");
        }
        self.history.push_back(record.clone());
        while self.history.len() > super::HISTORY_SHOWN {
            self.history.pop_front();
        }
    }

    pub(super) fn save_state(&self) {
        if let Err(e) = self.volume.save_state(&self.state) {
            error!(error = %e, "cannot save deploy state");
        }
    }

    fn request_redeploy(&mut self, required: RedeployRequired) {
        let redeploy = crate::redeploy::Redeploy {
            release_dir: self.volume.release(&required.sha),
            sha: required.sha.to_string(),
            git_ref: self.config.git_ref.clone(),
            changed_files: required.changed_files.clone(),
        };
        // A release only differs from a baseline, so there is one.
        let image = self.dependencies.image().unwrap_or_default();
        self.images.request(required, redeploy, image);
    }
}

/// The refusal message for a release that needs a new image.
fn needs_image(required: &RedeployRequired) -> String {
    format!(
        "redeploy-required {}: dependencies changed ({}); needs a new image, the old release keeps serving",
        required.sha,
        required.changed_files.join(", ")
    )
}
