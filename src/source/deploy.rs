//! The deploy pipeline of the source actor: fetch, write the release, run
//! the hooks, switch `current`, reload, and roll back when the new release
//! fails. Every path ends in one `DeployRecord` appended to the history, so
//! what happened is always on record, including refusals.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use tracing::{error, info, warn};

use super::dependencies::{RedeployRequired, Verdict};
use super::history::{DeployRecord, Outcome, Record};
use super::release;
use super::{HISTORY_SHOWN, RETRY_FIRST, RETRY_MAX, Source, SourceError, open_cache};
use crate::hooks::Hooks;
use crate::program::ProgramHandle;

impl Source {
    /// Fetch, write, hook, switch, reload; roll back if the reload fails.
    pub(super) async fn deploy(
        &mut self,
        target: Option<String>,
        trigger: &str,
        by_hand: bool,
    ) -> DeployRecord {
        let started = Instant::now();
        let wanted = target.unwrap_or_else(|| self.config.git_ref.clone());
        self.last_check = Some(SystemTime::now());
        let current = self
            .volume
            .current_sha()
            .filter(|s| self.current_fits_image && self.volume.has_release(s));
        let mut record = Record::new(trigger, started, current.clone());

        let sha = match self.fetch(&wanted, current.clone()).await {
            Ok(sha) => sha,
            Err(e) => return self.fetch_failed(record, e, by_hand),
        };
        self.failures = 0;
        self.retry_at = None;
        self.last_error = None;
        record.sha = Some(sha.clone());
        if current.as_deref() == Some(sha.as_str()) {
            return record.finish(Outcome::Unchanged, None);
        }
        if self.state.bad.contains(&sha) && !by_hand {
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
        if !by_hand && self.hook_failed.as_deref() == Some(sha.as_str()) {
            let why = format!(
                "the before_cutover hook failed for {sha}; waiting for `{}` to move, or `cutover deploy`",
                self.config.git_ref
            );
            return record.finish(Outcome::Refused, Some(why));
        }
        if let Some(pending) = self.dependencies.pending_for(&sha) {
            // Already recorded and handed to [redeploy]; nothing new to say.
            let why = needs_image(pending);
            return record.finish(Outcome::RedeployRequired, Some(why));
        }
        if let Err(e) = self.write_release(&sha).await {
            return self.failed(record, e.to_string());
        }
        let digest = match self
            .dependencies
            .check(&self.volume.release(&sha), &sha)
            .await
        {
            Err(e) => return self.failed(record, e.to_string()),
            Ok(Verdict::Differs(required)) => {
                let why = needs_image(&required);
                warn!(%sha, changed = ?required.changed_files, "dependencies changed: not hot-loading this release; the old one keeps serving");
                let done = record.finish(Outcome::RedeployRequired, Some(why));
                self.remember(&done);
                self.request_redeploy(required);
                return done;
            }
            Ok(Verdict::Fits(digest)) => digest,
        };
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
        self.dependencies.switched(digest);
        self.current_fits_image = true;
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

    pub(super) async fn fetch(
        &self,
        wanted: &str,
        current: Option<String>,
    ) -> Result<String, SourceError> {
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

    pub(super) async fn write_release(&self, sha: &str) -> Result<(), SourceError> {
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

    pub(super) async fn run_hooks(
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

    pub(super) fn failed(&mut self, record: Record, why: String) -> DeployRecord {
        let done = self.failure(record, why);
        self.remember(&done);
        done
    }

    /// A failed record, logged but not yet remembered.
    fn failure(&self, record: Record, why: String) -> DeployRecord {
        let why = self.remote.redact(&why);
        error!(error = %why, trigger = %record.trigger, "failed");
        record.finish(Outcome::Failed, Some(why))
    }

    pub(super) async fn roll_back_failed_deploy(
        &mut self,
        record: Record,
        sha: &str,
        previous: Option<String>,
        why: String,
    ) -> DeployRecord {
        warn!(%sha, error = %why, "new release failed; rolling back");
        let trigger = format!("rollback after {}", record.trigger);
        let rollback = self.rollback(previous, &trigger, Some(sha)).await;
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

    /// Switches `current` back to `to` (default: the previous release),
    /// marks the release left behind as bad, and reloads the programs. The
    /// caller records the outcome.
    pub(super) async fn rollback(
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
            Err(why) => return self.failure(record, why),
        };
        record.sha = Some(target.clone());
        if let Err(e) = self.write_release(&target).await {
            return self.failure(record, format!("cannot restore {target}: {e}"));
        }
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
        if let Err(e) = self.volume.switch_to(&target) {
            return self.failure(record, e.to_string());
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
        self.dependencies.switched(digest);
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
        record.finish(Outcome::RolledBack, reload_error)
    }

    /// The full sha of a kept release named by a full or abbreviated sha
    /// (`cutover rollback --to`), or of a commit in the cache.
    pub(super) fn full_sha_of(&self, name: &str) -> Result<String, String> {
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

    pub(super) async fn on_crash(&mut self, program: &str, status: &str) {
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

    pub(super) fn remember(&mut self, record: &DeployRecord) {
        if let Err(e) = self.volume.append_history(record) {
            warn!(error = %e, "cannot write deploy history");
        }
        self.history.push_back(record.clone());
        while self.history.len() > HISTORY_SHOWN {
            self.history.pop_front();
        }
    }

    pub(super) fn save_state(&self) {
        if let Err(e) = self.volume.save_state(&self.state) {
            error!(error = %e, "cannot save deploy state");
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

impl Source {
    fn request_redeploy(&self, required: RedeployRequired) {
        self.images.request(crate::redeploy::Redeploy {
            release_dir: self.volume.release(&required.sha),
            sha: required.sha,
            git_ref: self.config.git_ref.clone(),
            changed_files: required.changed_files,
        });
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
