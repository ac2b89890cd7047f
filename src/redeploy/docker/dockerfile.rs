//! The Dockerfile guard of the docker redeploy: a commit's Dockerfile decides
//! what the new image is (its USER, its ENTRYPOINT, what its RUN steps do),
//! so by default a release whose Dockerfile differs from the one the running
//! image was built from is refused (`allow_dockerfile_change = false`).
//!
//! Every image cutover builds carries the SHA-256 of its Dockerfile as the
//! label `cutover.dockerfile`; that label on the running container is the
//! baseline, and it survives restarts and reschedules. An image built
//! outside cutover has no such label: the operator can add it
//! (`docker build --label cutover.dockerfile=sha256:<sha256sum of the
//! Dockerfile>`, or `docker run --label ...`); without it, the baseline is the
//! Dockerfile of the release being served (`<root>/current`), which with the
//! default dependency patterns matches the image's (a changed Dockerfile is
//! never hot-loaded). With neither there is nothing to compare with, and the
//! build is refused too.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::DockerRedeploy;
use crate::redeploy::{Redeploy, RedeployError};

/// Image label holding `sha256:<hex>` of the Dockerfile it was built from.
pub(super) const DOCKERFILE_LABEL: &str = "cutover.dockerfile";

/// `sha256:<hex>` of a Dockerfile's bytes (what `sha256sum` prints, prefixed).
pub(super) fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What the release's Dockerfile is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Baseline {
    /// The running container's `cutover.dockerfile` label.
    Label(String),
    /// The digest of the served release's Dockerfile, and that release.
    Served(String, PathBuf),
    /// Neither.
    Unknown,
}

/// Ok when `new` (the release's Dockerfile digest) may be built, else why not.
pub(super) fn verdict(dockerfile: &str, new: &str, baseline: &Baseline) -> Result<(), String> {
    let refused = "refused: set [redeploy] docker.allow_dockerfile_change = true to build it";
    match baseline {
        Baseline::Label(old) if old == new => Ok(()),
        Baseline::Served(old, _) if old == new => Ok(()),
        Baseline::Label(old) => Err(format!(
            "the release's {dockerfile} ({new}) differs from the one the running image was \
             built from (label {DOCKERFILE_LABEL}={old}); {refused}"
        )),
        Baseline::Served(old, dir) => Err(format!(
            "the release's {dockerfile} ({new}) differs from the served release's ({old}, in \
             {}); {refused}",
            dir.display()
        )),
        Baseline::Unknown => Err(format!(
            "cannot tell whether {dockerfile} changed: the running container has no \
             {DOCKERFILE_LABEL} label and no release is served to compare with (build the \
             image with --label {DOCKERFILE_LABEL}=sha256:<sha256sum of the {dockerfile}>); \
             {refused}"
        )),
    }
}

/// The served release, when `release_dir` is `<root>/releases/<sha>` and
/// `<root>/current` points at a release.
pub(super) fn served_release(release_dir: &Path) -> Option<PathBuf> {
    let releases = release_dir.parent()?;
    if releases.file_name()? != "releases" {
        return None;
    }
    let current = releases.parent()?.join("current");
    current.canonicalize().ok().filter(|d| d.is_dir())
}

/// Reads the release's Dockerfile, checks it against the baseline unless
/// changes are allowed, and returns its digest (the new image's label).
pub(super) async fn check(
    cfg: &DockerRedeploy,
    request: &Redeploy,
    labels: Option<&HashMap<String, String>>,
    image: &str,
) -> Result<String, RedeployError> {
    let label = labels.and_then(|l| l.get(DOCKERFILE_LABEL)).cloned();
    let (dir, dockerfile) = (request.release_dir.clone(), cfg.dockerfile.clone());
    // File reads block: off the runtime thread.
    let (new, baseline) = tokio::task::spawn_blocking(move || {
        let new = fs::read(dir.join(&dockerfile)).map(|b| digest(&b));
        let baseline = match label {
            Some(label) => Baseline::Label(label),
            None => served_release(&dir)
                .and_then(|served| {
                    let old = fs::read(served.join(&dockerfile)).ok()?;
                    Some(Baseline::Served(digest(&old), served))
                })
                .unwrap_or(Baseline::Unknown),
        };
        (new, baseline)
    })
    .await
    .map_err(|e| RedeployError::Docker {
        step: "check the Dockerfile".into(),
        message: e.to_string(),
    })?;
    let new = new.map_err(|e| RedeployError::Build {
        image: image.to_string(),
        reason: format!(
            "no {} in the release {}: {e}",
            cfg.dockerfile,
            request.release_dir.display()
        ),
    })?;
    if cfg.allow_dockerfile_change {
        return Ok(new);
    }
    tracing::debug!(dockerfile = %new, ?baseline, "redeploy: checking the Dockerfile");
    verdict(&cfg.dockerfile, &new, &baseline).map_err(|message| RedeployError::Docker {
        step: "check the Dockerfile".into(),
        message,
    })?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256sum_with_a_prefix() {
        assert_eq!(
            digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_ne!(digest(b"a"), digest(b"b"));
    }

    #[test]
    fn only_an_unchanged_dockerfile_passes() {
        let (a, b) = (digest(b"FROM x\n"), digest(b"FROM x\nUSER root\n"));
        assert_eq!(
            verdict("Dockerfile", &a, &Baseline::Label(a.clone())),
            Ok(())
        );
        let served = Baseline::Served(a.clone(), PathBuf::from("/srv/releases/abc"));
        assert_eq!(verdict("Dockerfile", &a, &served), Ok(()));
        let why = verdict("Dockerfile", &b, &Baseline::Label(a.clone())).unwrap_err();
        assert!(why.contains("running image was built from"), "{why}");
        assert!(why.contains("allow_dockerfile_change"), "{why}");
        let why = verdict("Dockerfile", &b, &served).unwrap_err();
        assert!(why.contains("/srv/releases/abc"), "{why}");
        let why = verdict("Dockerfile", &a, &Baseline::Unknown).unwrap_err();
        assert!(
            why.starts_with("cannot tell whether Dockerfile changed"),
            "{why}"
        );
    }

    #[test]
    fn the_served_release_is_found_from_the_layout() {
        let root = tempfile::tempdir().unwrap();
        let releases = root.path().join("releases");
        std::fs::create_dir_all(releases.join("old")).unwrap();
        std::fs::create_dir_all(releases.join("new")).unwrap();
        assert_eq!(served_release(&releases.join("new")), None, "no current");
        std::os::unix::fs::symlink("releases/old", root.path().join("current")).unwrap();
        assert_eq!(
            served_release(&releases.join("new")),
            Some(releases.join("old").canonicalize().unwrap())
        );
        let elsewhere = root.path().join("other").join("new");
        std::fs::create_dir_all(&elsewhere).unwrap();
        assert_eq!(served_release(&elsewhere), None, "not a release layout");
    }
}
