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
//!
//! What is hashed is what the builder reads: the Dockerfile must be a
//! regular file reached through no symlink inside the release. A commit's
//! `Dockerfile -> ../<served sha>/Dockerfile` would otherwise hash the
//! served release's file on cutover's disk while the builder, resolving the
//! link inside the build context, builds another one the commit brought.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

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
pub(super) fn verdict(
    dockerfile: &str,
    new: &str,
    baseline: &Baseline,
) -> Result<(), DockerfileRefused> {
    let dockerfile = dockerfile.to_string();
    let new = new.to_string();
    match baseline {
        Baseline::Label(old) if *old == new => Ok(()),
        Baseline::Served(old, _) if *old == new => Ok(()),
        Baseline::Label(old) => Err(DockerfileRefused::DiffersFromLabel {
            dockerfile,
            new,
            old: old.clone(),
        }),
        Baseline::Served(old, dir) => Err(DockerfileRefused::DiffersFromServed {
            dockerfile,
            new,
            old: old.clone(),
            dir: dir.clone(),
        }),
        Baseline::Unknown => Err(DockerfileRefused::NoBaseline { dockerfile }),
    }
}

/// Why a release's Dockerfile may not be built without
/// `allow_dockerfile_change`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum DockerfileRefused {
    #[error(
        "the release's {dockerfile} ({new}) differs from the one the running image was \
         built from (label {label}={old}); {refused}",
        label = DOCKERFILE_LABEL,
        refused = REFUSED
    )]
    DiffersFromLabel {
        dockerfile: String,
        new: String,
        old: String,
    },
    #[error(
        "the release's {dockerfile} ({new}) differs from the served release's ({old}, in \
         {}); {refused}",
        .dir.display(),
        refused = REFUSED
    )]
    DiffersFromServed {
        dockerfile: String,
        new: String,
        old: String,
        dir: PathBuf,
    },
    #[error(
        "cannot tell whether {dockerfile} changed: the running container has no \
         {label} label and no release is served to compare with (build the \
         image with --label {label}=sha256:<sha256sum of the {dockerfile}>); \
         {refused}",
        label = DOCKERFILE_LABEL,
        refused = REFUSED
    )]
    NoBaseline { dockerfile: String },
}

const REFUSED: &str = "refused: set [redeploy] docker.allow_dockerfile_change = true to build it";

/// The bytes of `release/dockerfile`, a regular file reached through no
/// symlink and no `..`; else why not.
pub(super) fn read_in_release(release: &Path, dockerfile: &str) -> Result<Vec<u8>, String> {
    let mut path = release.to_path_buf();
    for component in Path::new(dockerfile).components() {
        let Component::Normal(name) = component else {
            return Err(format!(
                "{dockerfile} must be a path inside the release, without `..`"
            ));
        };
        path.push(name);
        let meta = fs::symlink_metadata(&path)
            .map_err(|e| format!("no {dockerfile} in the release {}: {e}", release.display()))?;
        if meta.file_type().is_symlink() {
            let to = fs::read_link(&path).unwrap_or_default();
            return Err(format!(
                "the release's {dockerfile} is reached through a symlink (`{}` -> `{}`): the \
                 builder would read another file than the one checked; refused",
                path.strip_prefix(release).unwrap_or(&path).display(),
                to.display()
            ));
        }
    }
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(format!("the release's {dockerfile} is not a regular file"));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(bytes)
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
        let new = read_in_release(&dir, &dockerfile).map(|b| digest(&b));
        let baseline = match label {
            Some(label) => Baseline::Label(label),
            None => served_release(&dir)
                .and_then(|served| {
                    let old = read_in_release(&served, &dockerfile).ok()?;
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
    let new = new.map_err(|reason| RedeployError::Build {
        image: image.to_string(),
        reason,
    })?;
    if cfg.allow_dockerfile_change {
        return Ok(new);
    }
    tracing::debug!(dockerfile = %new, ?baseline, "redeploy: checking the Dockerfile");
    verdict(&cfg.dockerfile, &new, &baseline).map_err(|refused| RedeployError::Docker {
        step: "check the Dockerfile".into(),
        message: refused.to_string(),
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
        let why = verdict("Dockerfile", &b, &Baseline::Label(a.clone()))
            .unwrap_err()
            .to_string();
        assert!(why.contains("running image was built from"), "{why}");
        assert!(why.contains("allow_dockerfile_change"), "{why}");
        let why = verdict("Dockerfile", &b, &served).unwrap_err().to_string();
        assert!(why.contains("/srv/releases/abc"), "{why}");
        let why = verdict("Dockerfile", &a, &Baseline::Unknown)
            .unwrap_err()
            .to_string();
        assert!(
            why.starts_with("cannot tell whether Dockerfile changed"),
            "{why}"
        );
    }

    /// The finding: a symlinked Dockerfile pointing at the served release's
    /// hashes that file while the builder builds the commit's own.
    #[test]
    fn a_dockerfile_reached_through_a_symlink_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let served = root.path().join("releases/aaaa");
        let new = root.path().join("releases/bbbb");
        std::fs::create_dir_all(&served).unwrap();
        std::fs::write(served.join("Dockerfile"), "FROM good\n").unwrap();
        std::fs::create_dir_all(new.join("aaaa")).unwrap();
        std::fs::write(new.join("aaaa/Dockerfile"), "FROM evil\n").unwrap();
        std::os::unix::fs::symlink("../aaaa/Dockerfile", new.join("Dockerfile")).unwrap();
        let why = read_in_release(&new, "Dockerfile").unwrap_err();
        assert!(why.contains("through a symlink"), "{why}");
        assert!(why.contains("../aaaa/Dockerfile"), "{why}");
        // A symlinked directory on the way is refused too.
        std::os::unix::fs::symlink("aaaa", new.join("docker")).unwrap();
        let why = read_in_release(&new, "docker/Dockerfile").unwrap_err();
        assert!(why.contains("`docker` -> `aaaa`"), "{why}");
        let why = read_in_release(&new, "../aaaa/Dockerfile").unwrap_err();
        assert!(why.contains("without `..`"), "{why}");
        // A plain file is read as it is.
        assert_eq!(
            read_in_release(&served, "Dockerfile").unwrap(),
            b"FROM good\n"
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
