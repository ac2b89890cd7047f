//! The dependency gate of the deploy pipeline: a release whose dependency
//! fingerprint differs from the image's baseline is never hot-loaded, since
//! the packages installed in the image are not the ones its code expects.
//!
//! The baseline is the file baked into the image by `cutover fingerprint
//! --write`. Without one, the first release cutover serves becomes it, in
//! memory only: after a restart the release then served (which ran on this
//! image) becomes it again, and nothing is written outside the volume when
//! cutover runs on a host rather than in a container. The gate remembers the one release that is waiting for a
//! new image, so status can show it and triggers do not ask twice.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::SourceError;
use crate::config::DependenciesConfig;
use crate::fingerprint::{Fingerprint, FingerprintError};
use crate::sha::Sha;

/// A release held back until the image is rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedeployRequired {
    pub sha: Sha,
    /// Dependency files that differ from the baseline (changed, added, removed).
    pub changed_files: Vec<String>,
    pub digest: String,
}

/// What `cutover status` shows of the gate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DependencyStatus {
    /// The baseline file and its digest (none yet: the first release sets it).
    pub baseline_file: String,
    pub baseline: Option<String>,
    /// The digest of the release `current` points at, when known.
    pub current: Option<String>,
    pub redeploy_required: Option<RedeployRequired>,
}

/// The gate's answer for one release.
#[derive(Debug)]
pub enum Verdict {
    /// It may run on this image (same dependencies, or it just became the
    /// baseline); its digest, when it could be fingerprinted.
    Fits(Option<String>),
    /// Different dependencies: needs a new image.
    Differs(RedeployRequired),
}

pub struct DependencyGate {
    config: DependenciesConfig,
    baseline: Option<Fingerprint>,
    current: Option<String>,
}

impl DependencyGate {
    /// Reads the baseline; a baseline that exists but cannot be read or is
    /// corrupt is an error, because guessing would risk a hot load onto the
    /// wrong packages.
    pub fn open(config: DependenciesConfig) -> Result<DependencyGate, FingerprintError> {
        let baseline = Fingerprint::read(&config.baseline)?;
        Ok(DependencyGate {
            config,
            baseline,
            current: None,
        })
    }

    /// Called at start with the release `current` points at, before any
    /// program runs: without a baseline it becomes the baseline. False when
    /// it needs other dependencies than this image has (a new image, made
    /// for a newer commit, starting on a volume that still holds the old
    /// code): it must not run here.
    pub fn serving(&mut self, release: &Path) -> bool {
        match Fingerprint::compute(release, &self.config.patterns) {
            Ok(fp) => {
                self.current = Some(fp.digest.clone());
                match &self.baseline {
                    None => {
                        self.adopt(fp);
                        true
                    }
                    Some(baseline) => baseline.matches(&fp),
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot fingerprint the release `current` points at");
                true
            }
        }
    }

    /// Compares `release` (not yet serving) with the baseline; the answer
    /// for a deploy. A release that fits supersedes one waiting for an image.
    pub async fn check(&mut self, release: &Path, sha: &Sha) -> Result<Verdict, SourceError> {
        let fp = self.compute(release).await?;
        let verdict = match &self.baseline {
            None => {
                let digest = fp.digest.clone();
                self.adopt(fp);
                Verdict::Fits(Some(digest))
            }
            Some(baseline) => judge(baseline, fp, sha),
        };
        Ok(verdict)
    }

    /// The answer for a rollback: nothing is adopted or remembered, and a
    /// release that cannot be fingerprinted fits, as at start.
    pub async fn check_rollback(&self, release: &Path, sha: &Sha) -> Verdict {
        match (&self.baseline, self.compute(release).await) {
            (Some(baseline), Ok(fp)) => judge(baseline, fp, sha),
            (None, Ok(fp)) => Verdict::Fits(Some(fp.digest)),
            (_, Err(e)) => {
                warn!(error = %e, %sha, "cannot fingerprint the release to roll back to");
                Verdict::Fits(None)
            }
        }
    }

    /// Fingerprints off the async threads: a release may be large.
    async fn compute(&self, release: &Path) -> Result<Fingerprint, SourceError> {
        let patterns = self.config.patterns.clone();
        let dir = release.to_path_buf();
        Ok(tokio::task::spawn_blocking(move || Fingerprint::compute(&dir, &patterns)).await??)
    }

    /// The image as cutover can tell images apart: the digest of its baked
    /// baseline, or without one of the release adopted as the baseline (the
    /// same on every start of any image with the same `current`, so only a
    /// baked baseline lets a new image be recognised).
    pub fn image(&self) -> Option<String> {
        self.baseline.as_ref().map(|b| b.digest.clone())
    }

    /// `current` now holds the release with this digest.
    pub fn switched(&mut self, digest: Option<String>) {
        self.current = digest;
    }

    pub fn status(&self) -> DependencyStatus {
        DependencyStatus {
            baseline_file: self.config.baseline.display().to_string(),
            baseline: self.baseline.as_ref().map(|b| b.digest.clone()),
            current: self.current.clone(),
            // Filled in by the source from the image requests, its one record.
            redeploy_required: None,
        }
    }

    fn adopt(&mut self, fp: Fingerprint) {
        info!(digest = %fp.digest, files = fp.files.len(), missing = %self.config.baseline.display(), "no dependency baseline in the image; the first release served becomes it");
        self.current = Some(fp.digest.clone());
        self.baseline = Some(fp);
    }
}

fn judge(baseline: &Fingerprint, fp: Fingerprint, sha: &Sha) -> Verdict {
    if baseline.matches(&fp) {
        return Verdict::Fits(Some(fp.digest));
    }
    Verdict::Differs(RedeployRequired {
        sha: sha.clone(),
        changed_files: baseline.diff(&fp),
        digest: fp.digest,
    })
}
