//! The code volume: `releases/<sha>/` directories, the `current` symlink
//! programs run in, cutover's cache and state under `.cutover/`, and the
//! deploy history in `history.jsonl`.
//!
//! A release is written under a temporary name and renamed into place, and
//! `current` is switched by renaming a new symlink over it, so a cutover
//! killed at any moment leaves either the old state or the new one; leftover
//! temporaries are removed at the next start.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};
use serde::{Deserialize, Serialize};

use crate::sha::Sha;

const TEMP_PREFIX: &str = ".tmp-";

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
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ReleaseError + 'a {
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
        let path = self.state_file();
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(state).expect("state serializes");
        fs::write(&tmp, body).map_err(io_err("cannot write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("cannot replace", &path))
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

/// What a materialisation wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    pub files: usize,
    pub bytes: u64,
}

struct FileEntry {
    path: PathBuf,
    oid: Oid,
    mode: i32,
}

/// Writes the tree of `commit` from the bare cache to `releases/<sha>`.
///
/// Symlinks are created as git stores them and never followed: files are
/// opened with O_NOFOLLOW | O_EXCL, so an entry can never write through a
/// link that another entry created.
pub fn materialise(volume: &Volume, cache: &Path, commit: Oid) -> Result<Written, ReleaseError> {
    let sha = Sha::from(commit);
    let git_err = |e: git2::Error| ReleaseError::Git {
        sha: sha.to_string(),
        message: e.message().to_string(),
    };
    let staging = volume
        .releases()
        .join(format!("{TEMP_PREFIX}{sha}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir(&staging).map_err(io_err("cannot create", &staging))?;

    let repo = Repository::open_bare(cache).map_err(git_err)?;
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(git_err)?;
    let mut files = Vec::new();
    let mut links = Vec::new();
    let mut dirs = Vec::new();
    let mut unsafe_name = None;
    tree.walk(TreeWalkMode::PreOrder, |parent, entry| {
        let name = entry.name_bytes();
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            unsafe_name = Some(String::from_utf8_lossy(name).into_owned());
            return TreeWalkResult::Abort;
        }
        let path = Path::new(parent).join(std::ffi::OsStr::from_bytes(name));
        match entry.kind() {
            Some(ObjectType::Tree) => dirs.push(path),
            Some(ObjectType::Blob) if entry.filemode() == 0o120000 => {
                links.push((path, entry.id()))
            }
            Some(ObjectType::Blob) => files.push(FileEntry {
                path,
                oid: entry.id(),
                mode: entry.filemode(),
            }),
            // A submodule (commit entry): an empty directory, as git leaves it.
            _ => dirs.push(path),
        }
        TreeWalkResult::Ok
    })
    .map_err(git_err)?;
    if let Some(name) = unsafe_name {
        let _ = fs::remove_dir_all(&staging);
        return Err(ReleaseError::UnsafePath {
            sha: sha.to_string(),
            name,
        });
    }
    for dir in &dirs {
        let p = staging.join(dir);
        fs::create_dir(&p).map_err(io_err("cannot create", &p))?;
    }
    for (path, oid) in &links {
        let target = repo.find_blob(*oid).map_err(git_err)?;
        let p = staging.join(path);
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target.content()), &p)
            .map_err(io_err("cannot create symlink", &p))?;
    }
    let written = write_files(cache, &staging, &files, sha.as_str())?;
    let dest = volume.release(&sha);
    fs::rename(&staging, &dest).map_err(io_err("cannot move release into", &dest))?;
    Ok(written)
}

/// Writes blobs on as many threads as there are cores (up to 4); each
/// thread has its own handle on the cache (libgit2 handles are not shared).
fn write_files(
    cache: &Path,
    staging: &Path,
    files: &[FileEntry],
    sha: &str,
) -> Result<Written, ReleaseError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || -> Result<Written, ReleaseError> {
                    let repo = Repository::open_bare(cache).map_err(|e| ReleaseError::Git {
                        sha: sha.to_string(),
                        message: e.message().to_string(),
                    })?;
                    let mut written = Written::default();
                    for f in part {
                        let blob = repo.find_blob(f.oid).map_err(|e| ReleaseError::Git {
                            sha: sha.to_string(),
                            message: e.message().to_string(),
                        })?;
                        let p = staging.join(&f.path);
                        let mode = if f.mode & 0o111 != 0 { 0o755 } else { 0o644 };
                        let mut out = OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(mode)
                            .custom_flags(libc::O_NOFOLLOW)
                            .open(&p)
                            .map_err(io_err("cannot create", &p))?;
                        out.write_all(blob.content())
                            .map_err(io_err("cannot write", &p))?;
                        written.files += 1;
                        written.bytes += blob.content().len() as u64;
                    }
                    Ok(written)
                })
            })
            .collect();
        let mut total = Written::default();
        for w in workers {
            let part = w.join().expect("writer thread panicked")?;
            total.files += part.files;
            total.bytes += part.bytes;
        }
        Ok(total)
    })
}
