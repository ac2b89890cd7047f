//! The code volume: `releases/<sha>/` directories, the `current` symlink
//! programs run in, cutover's cache and state under `.cutover/` (the last
//! exit for a redeploy among it), and the deploy history in `history.jsonl`.
//!
//! A release is written under a temporary name and renamed into place, and
//! `current` is switched by renaming a new symlink over it, so a cutover
//! killed at any moment leaves either the old state or the new one; leftover
//! temporaries are removed at the next start; one left by a failed write
//! is removed at once.
//!
//! Writing a commit's tree into `releases/<sha>` is `tree`'s.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sha::Sha;

/// Names of what is being written: removed at the next start.
pub(super) const TEMP_PREFIX: &str = ".tmp-";

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("reading commit {sha} from the cache: {message}")]
    Git { sha: String, message: String },
    #[error("commit {sha} has an unsafe path `{name}`; refusing to write it")]
    UnsafePath { sha: String, name: String },
    #[error("commit {sha} is over `[source] {limit}` = {allowed}: {found}; refusing to write it")]
    OverLimit {
        sha: String,
        limit: &'static str,
        allowed: u64,
        found: String,
    },
    #[error(
        "cutover died {deaths} times while writing commit {sha} (killed for its memory?); \
         refusing to write it again"
    )]
    DiedWriting { sha: String, deaths: u32 },
}

/// Who a failed write is down to, which decides what the source does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The commit (over a limit, an unsafe path): refused and marked bad.
    Commit,
    /// The cache (an object missing or unreadable): fetched again.
    Cache,
    /// The volume (disk full, permissions): retried later.
    Volume,
}

impl ReleaseError {
    pub fn blame(&self) -> Blame {
        match self {
            ReleaseError::OverLimit { .. }
            | ReleaseError::UnsafePath { .. }
            | ReleaseError::DiedWriting { .. } => Blame::Commit,
            ReleaseError::Git { .. } => Blame::Cache,
            ReleaseError::Io { .. } => Blame::Volume,
        }
    }

    /// ENOSPC or EDQUOT while writing.
    pub fn disk_full(&self) -> bool {
        matches!(self, ReleaseError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
    }
}

pub(super) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ReleaseError + 'a {
    move |source| ReleaseError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Persistent decisions that must survive a restart of the container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// The release that served before the current one.
    pub previous: Option<Sha>,
    /// Commits rolled back; not deployed again until the ref moves on.
    pub bad: Vec<Sha>,
}

#[derive(Debug, Clone)]
pub struct Volume {
    pub root: PathBuf,
}

impl Volume {
    pub fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }

    pub fn current(&self) -> PathBuf {
        self.root.join("current")
    }

    pub fn cache(&self) -> PathBuf {
        self.root.join(".cutover").join("cache.git")
    }

    pub fn history(&self) -> PathBuf {
        self.root.join("history.jsonl")
    }

    fn state_file(&self) -> PathBuf {
        self.root.join(".cutover").join("state.json")
    }

    fn exited_for_file(&self) -> PathBuf {
        self.root.join(".cutover").join("exited-for.json")
    }

    /// The record of the release being written (see `writing`).
    pub fn writing_file(&self) -> PathBuf {
        self.root.join(".cutover").join("writing.json")
    }

    pub fn release(&self, sha: &Sha) -> PathBuf {
        self.releases().join(sha)
    }

    /// Creates the layout and removes what an interrupted run left behind;
    /// returns the names removed.
    pub fn prepare(&self) -> Result<Vec<String>, ReleaseError> {
        let releases = self.releases();
        fs::create_dir_all(&releases).map_err(io_err("cannot create", &releases))?;
        let state = self.root.join(".cutover");
        fs::create_dir_all(&state).map_err(io_err("cannot create", &state))?;
        let mut removed = Vec::new();
        for entry in fs::read_dir(&releases)
            .map_err(io_err("cannot read", &releases))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) {
                let _ = fs::remove_dir_all(entry.path());
                removed.push(name);
            }
        }
        let stale_link = self.root.join("current.tmp");
        if fs::symlink_metadata(&stale_link).is_ok() {
            let _ = fs::remove_file(&stale_link);
            removed.push("current.tmp".to_string());
        }
        Ok(removed)
    }

    /// The sha `current` points to, whether or not its directory exists.
    pub fn current_sha(&self) -> Option<Sha> {
        let target = fs::read_link(self.current()).ok()?;
        Sha::parse(target.file_name()?.to_str()?).ok()
    }

    pub fn has_release(&self, sha: &Sha) -> bool {
        self.release(sha).is_dir()
    }

    /// Points `current` at `releases/<sha>` atomically (relative, so the
    /// volume works wherever it is mounted).
    pub fn switch_to(&self, sha: &Sha) -> Result<(), ReleaseError> {
        let tmp = self.root.join("current.tmp");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("releases").join(sha), &tmp)
            .map_err(io_err("cannot create", &tmp))?;
        fs::rename(&tmp, self.current()).map_err(io_err("cannot replace", &self.current()))
    }

    /// Removes the oldest releases beyond `keep`, never one in `protect`.
    pub fn prune(&self, keep: usize, protect: &[Sha]) -> Vec<Sha> {
        let Ok(entries) = fs::read_dir(self.releases()) else {
            return Vec::new();
        };
        let mut releases: Vec<(std::time::SystemTime, Sha)> = entries
            .flatten()
            .filter_map(|e| {
                let name = Sha::parse(e.file_name().to_str()?).ok()?;
                let modified = e.metadata().ok()?.modified().ok()?;
                Some((modified, name))
            })
            .collect();
        releases.sort_by_key(|r| std::cmp::Reverse(r.0));
        let mut removed = Vec::new();
        for (_, name) in releases.into_iter().skip(keep) {
            if !protect.contains(&name) && fs::remove_dir_all(self.release(&name)).is_ok() {
                removed.push(name);
            }
        }
        removed
    }

    pub fn load_state(&self) -> State {
        fs::read(self.state_file())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save_state(&self, state: &State) -> Result<(), ReleaseError> {
        write_json(&self.state_file(), state)
    }

    /// The record of the last `[redeploy] exit`; none when there is none
    /// or it cannot be read (then a restart may exit once more, which is
    /// what it did before the record existed: said in the log).
    pub fn load_exited_for(&self) -> Option<ExitedFor> {
        let path = self.exited_for_file();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the record of the last exit for a redeploy; ignoring it");
                return None;
            }
        };
        serde_json::from_slice(&bytes)
            .inspect_err(|e| tracing::warn!(path = %path.display(), error = %e, "the record of the last exit for a redeploy is corrupt; ignoring it"))
            .ok()
    }

    pub fn save_exited_for(&self, record: &ExitedFor) -> Result<(), ReleaseError> {
        write_json(&self.exited_for_file(), record)
    }

    pub fn append_history(&self, line: &impl Serialize) -> Result<(), ReleaseError> {
        let path = self.history();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("cannot open", &path))?;
        let mut body = serde_json::to_vec(line).expect("history serializes");
        body.push(b'\n');
        file.write_all(&body).map_err(io_err("cannot write", &path))
    }

    /// The last `n` history entries, oldest first.
    pub fn read_history<T: for<'de> Deserialize<'de>>(&self, n: usize) -> Vec<T> {
        let text = fs::read_to_string(self.history()).unwrap_or_default();
        let mut entries: Vec<T> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let skip = entries.len().saturating_sub(n);
        entries.drain(..skip);
        entries
    }
}

/// Writes `value` to `path` under a temporary name renamed into place, so a
/// crash leaves the old file or the new one, never half of one.
/// Writes `value` to `path` through a temporary file renamed over it. The
/// temporary is created anew (O_EXCL, which never follows a symlink), so a
/// link planted under its name in a shared volume writes nowhere else.
pub(super) fn write_json(path: &Path, value: &impl Serialize) -> Result<(), ReleaseError> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(value).expect("volume records serialize");
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_err("cannot remove", &tmp)(e));
        }
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io_err("cannot create", &tmp))?;
    file.write_all(&body)
        .map_err(io_err("cannot write", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err("cannot replace", path))
}

/// An `exit = N` cutover asked for to get a new image, as recorded in the
/// volume just before it exited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitedFor {
    /// The commit that needed a new image.
    pub sha: Sha,
    /// The image as cutover can tell it apart: the digest of its dependency
    /// baseline (the baked file, or without one the adopted release's).
    pub image: String,
    pub code: u8,
    pub time: String,
}

impl ExitedFor {
    /// Whether this exit already answered a request for `sha` on `image`.
    pub(super) fn holds(&self, sha: &Sha, image: &str) -> bool {
        &self.sha == sha && self.image == image
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_recognised() {
        let e = ReleaseError::Io {
            action: "cannot write",
            path: PathBuf::from("/srv/x"),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert!(e.disk_full());
        assert_eq!(e.blame(), Blame::Volume);
    }
}
