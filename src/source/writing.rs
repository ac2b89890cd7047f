//! The record of a release being written (`.cutover/writing.json`), so that
//! a commit that kills PID 1 while it is written is not retried blindly at
//! every restart.
//!
//! Writing a release reads untrusted objects; the limits in `release` bound
//! what that costs, but if cutover dies anyway (the kernel's OOM killer, a
//! crash in libgit2), a restarted container would take the same commit
//! again and die the same way, in a loop serving nothing. The record is
//! written before the release and removed after it, whatever the outcome;
//! finding it at the next write of the same commit means the process died
//! in between. After [`DEATHS_BEFORE_BAD`] such deaths the commit is
//! refused and marked bad like any commit over a limit, with the reason.

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::release::{ReleaseError, Volume, write_json};
use crate::sha::Sha;

/// Deaths while writing the same commit before it is refused.
pub const DEATHS_BEFORE_BAD: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
struct Writing {
    sha: Sha,
    /// Earlier writes of this commit that never finished.
    deaths: u32,
}

/// Removes the record when the write is over, whatever its outcome.
#[must_use = "the record is removed when the guard drops"]
pub struct WriteGuard {
    path: PathBuf,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Records that `sha` is being written; refuses it when earlier writes of
/// it died [`DEATHS_BEFORE_BAD`] times. Blocking: call it off the runtime.
pub fn begin(volume: &Volume, sha: &Sha) -> Result<WriteGuard, ReleaseError> {
    let path = volume.writing_file();
    let earlier = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Writing>(&bytes).ok(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the record of the release being written; ignoring it");
            None
        }
    };
    let deaths = earlier
        .filter(|w| &w.sha == sha)
        .map_or(0, |w| w.deaths + 1);
    if deaths >= DEATHS_BEFORE_BAD {
        let _ = fs::remove_file(&path);
        return Err(ReleaseError::DiedWriting {
            sha: sha.to_string(),
            deaths,
        });
    }
    if deaths > 0 {
        tracing::warn!(%sha, deaths, "cutover died while writing this commit before; trying once more");
    }
    write_json(
        &path,
        &Writing {
            sha: sha.clone(),
            deaths,
        },
    )?;
    Ok(WriteGuard { path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_whose_write_died_twice_is_refused_and_a_finished_one_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let volume = Volume {
            root: dir.path().to_path_buf(),
        };
        volume.prepare().unwrap();
        let a = Sha::parse(&"a".repeat(40)).unwrap();
        let b = Sha::parse(&"b".repeat(40)).unwrap();
        // A write that finishes leaves no record.
        drop(begin(&volume, &a).unwrap());
        assert!(!volume.writing_file().exists());
        drop(begin(&volume, &a).unwrap());
        // Two that die (the guard never dropped), then the third is refused.
        std::mem::forget(begin(&volume, &a).unwrap());
        std::mem::forget(begin(&volume, &a).unwrap());
        let refused = begin(&volume, &a).err().expect("refused");
        assert!(
            refused.to_string().contains("died 2 times while writing"),
            "{refused}"
        );
        assert_eq!(refused.blame(), super::super::release::Blame::Commit);
        // Another commit starts afresh.
        std::mem::forget(begin(&volume, &a).unwrap());
        drop(begin(&volume, &b).unwrap());
        assert!(!volume.writing_file().exists());
    }
}
