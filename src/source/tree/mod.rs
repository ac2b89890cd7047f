//! Writing a commit's tree from the cache into `releases/<sha>`.
//!
//! A commit is untrusted input: its tree is walked and checked against
//! `[source]` limits (paths, total and largest object size, depth) from tree
//! entries and object headers before any content is read, and blobs are
//! streamed to disk, so a git bomb or a huge blob is refused instead of
//! exhausting the memory of PID 1. A tree is an object like any other: its
//! size is read from its header before it is inflated, counts towards
//! `max_bytes`, and may not exceed what `max_files` entries can take
//! ([`tree_size_limit`]).

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository};

use super::release::{ReleaseError, TEMP_PREFIX, Volume, io_err};
use crate::config::ReleaseLimits;
use crate::sha::Sha;

/// The longest tree entry a release can hold: mode (6), space, a name of at
/// most NAME_MAX (255) bytes, NUL, and the 20-byte id.
const MAX_TREE_ENTRY: u64 = 6 + 1 + 255 + 1 + 20;
/// A file or directory name no filesystem takes (NAME_MAX).
const MAX_NAME: usize = 255;

/// The largest tree object a release within `limits` can have: one whose
/// entries are all as long as an entry can be, `max_files` of them, and no
/// larger than `max_file_size`. A bigger one is refused from its header,
/// without inflating it.
pub fn tree_size_limit(limits: &ReleaseLimits) -> u64 {
    limits
        .files
        .saturating_mul(MAX_TREE_ENTRY)
        .min(limits.file_size)
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
    size: u64,
}

/// Blobs above this are streamed to disk; smaller ones are read whole,
/// which is faster and verifies their hash.
const STREAM_ABOVE: u64 = 8 << 20;

/// The longest symlink target written (PATH_MAX); a longer one cannot be a
/// working link, and reading it would load an arbitrary blob.
const MAX_LINK: u64 = 4096;

/// What a commit's tree holds, as found by [`plan`].
#[derive(Default)]
struct TreePlan {
    dirs: Vec<PathBuf>,
    links: Vec<(PathBuf, Oid)>,
    files: Vec<FileEntry>,
}

/// Writes the tree of `commit` from the bare cache to `releases/<sha>`,
/// within `limits`.
///
/// Symlinks are created as git stores them and never followed: files are
/// opened with O_NOFOLLOW | O_EXCL, so an entry can never write through a
/// link that another entry created. Whatever fails, the temporary directory
/// is removed before returning.
pub fn materialise(
    volume: &Volume,
    cache: &Path,
    commit: Oid,
    limits: &ReleaseLimits,
) -> Result<Written, ReleaseError> {
    let sha = Sha::from(commit);
    let staging = volume
        .releases()
        .join(format!("{TEMP_PREFIX}{sha}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let result = write_release(cache, &staging, &sha, limits);
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
        return result;
    }
    let dest = volume.release(&sha);
    if let Err(e) = fs::rename(&staging, &dest) {
        let _ = fs::remove_dir_all(&staging);
        return Err(io_err("cannot move release into", &dest)(e));
    }
    result
}

fn git_error(sha: &Sha) -> impl Fn(git2::Error) -> ReleaseError + '_ {
    move |e| ReleaseError::Git {
        sha: sha.to_string(),
        message: e.message().to_string(),
    }
}

fn write_release(
    cache: &Path,
    staging: &Path,
    sha: &Sha,
    limits: &ReleaseLimits,
) -> Result<Written, ReleaseError> {
    let git_err = git_error(sha);
    let repo = Repository::open_bare(cache).map_err(&git_err)?;
    let tree = plan(&repo, sha, limits)?;
    fs::create_dir(staging).map_err(io_err("cannot create", staging))?;
    for dir in &tree.dirs {
        let p = staging.join(dir);
        fs::create_dir(&p).map_err(io_err("cannot create", &p))?;
    }
    for (path, oid) in &tree.links {
        let target = repo.find_blob(*oid).map_err(&git_err)?;
        let p = staging.join(path);
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target.content()), &p)
            .map_err(io_err("cannot create symlink", &p))?;
    }
    write_files(cache, staging, &tree.files, sha)
}

/// Walks the commit's tree from tree objects and object headers only (no
/// blob is read), and stops at the first limit exceeded: a tree naming the
/// same subtree ten times, six levels deep, is a million paths from a few
/// hundred bytes of objects.
fn plan(repo: &Repository, sha: &Sha, limits: &ReleaseLimits) -> Result<TreePlan, ReleaseError> {
    let git_err = git_error(sha);
    let mut planner = Planner {
        repo,
        odb: repo.odb().map_err(&git_err)?,
        sha,
        limits,
        max_tree: tree_size_limit(limits),
        sizes: HashMap::new(),
        paths: 0,
        bytes: 0,
        pending: Vec::new(),
        out: TreePlan::default(),
    };
    let (commit_size, _) = planner.odb.read_header(sha.oid()).map_err(&git_err)?;
    if commit_size as u64 > planner.max_tree {
        return Err(planner.over(
            "max_file_size",
            planner.max_tree,
            format!("the commit object is {commit_size} bytes"),
        ));
    }
    let root = repo
        .find_commit(sha.oid())
        .map(|c| c.tree_id())
        .map_err(&git_err)?;
    planner.pending.push((root, PathBuf::new(), 1));
    while let Some((oid, prefix, depth)) = planner.pending.pop() {
        planner.visit_tree(oid, &prefix, depth)?;
    }
    let mut out = planner.out;
    // Parents before children: the stack visits a directory's entries after
    // pushing the directory itself, and sorting by depth keeps that order.
    out.dirs.sort_by_key(|d| d.components().count());
    Ok(out)
}

/// The walk of [`plan`]: what it found so far, and the counts the limits
/// apply to.
struct Planner<'a> {
    repo: &'a Repository,
    odb: git2::Odb<'a>,
    sha: &'a Sha,
    limits: &'a ReleaseLimits,
    /// [`tree_size_limit`].
    max_tree: u64,
    /// Blob sizes by id: a blob named many times is looked up once.
    sizes: HashMap<Oid, u64>,
    paths: u64,
    /// Blobs and trees alike count towards `max_bytes`.
    bytes: u64,
    /// Trees still to visit, with their path and depth.
    pending: Vec<(Oid, PathBuf, u64)>,
    out: TreePlan,
}

impl Planner<'_> {
    fn over(&self, limit: &'static str, allowed: u64, found: String) -> ReleaseError {
        ReleaseError::OverLimit {
            sha: self.sha.to_string(),
            limit,
            allowed,
            found,
        }
    }

    fn count(&mut self, size: u64) -> Result<(), ReleaseError> {
        self.bytes += size;
        if self.bytes > self.limits.bytes {
            return Err(self.over(
                "max_bytes",
                self.limits.bytes,
                format!(
                    "more than {} bytes in all (trees included)",
                    self.limits.bytes
                ),
            ));
        }
        Ok(())
    }

    /// Checks one tree from its header, then each of its entries.
    fn visit_tree(&mut self, oid: Oid, prefix: &Path, depth: u64) -> Result<(), ReleaseError> {
        let git_err = git_error(self.sha);
        // The header first: a tree of a few hundred MB packs into a few
        // hundred KB, and inflating it is what would exhaust the memory.
        let (size, _) = self.odb.read_header(oid).map_err(&git_err)?;
        let size = size as u64;
        if size > self.max_tree {
            return Err(self.tree_too_large(size, prefix));
        }
        self.count(size)?;
        let tree = self.repo.find_tree(oid).map_err(&git_err)?;
        if depth > self.limits.depth {
            return Err(self.over(
                "max_depth",
                self.limits.depth,
                format!("`{}` is {depth} levels deep", prefix.display()),
            ));
        }
        for entry in tree.iter() {
            self.visit_entry(&entry, prefix, depth)?;
        }
        Ok(())
    }

    /// A tree larger than `max_files` entries can take, or than
    /// `max_file_size`, whichever is less.
    fn tree_too_large(&self, size: u64, prefix: &Path) -> ReleaseError {
        let (max_tree, limits) = (self.max_tree, self.limits);
        let what = match prefix.as_os_str().is_empty() {
            true => "the root tree".to_string(),
            false => format!("the tree of `{}`", prefix.display()),
        };
        let limit = if max_tree == limits.file_size {
            "max_file_size"
        } else {
            "max_files"
        };
        self.over(
            limit,
            if limit == "max_files" {
                limits.files
            } else {
                max_tree
            },
            format!("{what} is {size} bytes, more than {max_tree} bytes of entries"),
        )
    }

    fn visit_entry(
        &mut self,
        entry: &git2::TreeEntry<'_>,
        prefix: &Path,
        depth: u64,
    ) -> Result<(), ReleaseError> {
        let name = entry.name_bytes();
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.contains(&b'/')
            || name.len() > MAX_NAME
        {
            return Err(ReleaseError::UnsafePath {
                sha: self.sha.to_string(),
                name: String::from_utf8_lossy(name).into_owned(),
            });
        }
        self.paths += 1;
        if self.paths > self.limits.files {
            return Err(self.over(
                "max_files",
                self.limits.files,
                format!("more than {} paths", self.limits.files),
            ));
        }
        let path = prefix.join(std::ffi::OsStr::from_bytes(name));
        let kind = entry.kind();
        if kind != Some(ObjectType::Blob) {
            if kind == Some(ObjectType::Tree) {
                self.pending.push((entry.id(), path.clone(), depth + 1));
            }
            // A submodule (commit entry): an empty directory, as git leaves it.
            self.out.dirs.push(path);
            return Ok(());
        }
        self.add_blob(entry, path)
    }

    /// A file or a symlink, checked from its object's header.
    fn add_blob(&mut self, entry: &git2::TreeEntry<'_>, path: PathBuf) -> Result<(), ReleaseError> {
        let size = match self.sizes.get(&entry.id()) {
            Some(size) => *size,
            None => {
                let (size, _) = self
                    .odb
                    .read_header(entry.id())
                    .map_err(git_error(self.sha))?;
                self.sizes.insert(entry.id(), size as u64);
                size as u64
            }
        };
        if size > self.limits.file_size {
            return Err(self.over(
                "max_file_size",
                self.limits.file_size,
                format!("`{}` is {size} bytes", path.display()),
            ));
        }
        self.count(size)?;
        if entry.filemode() == 0o120000 {
            if size > MAX_LINK {
                return Err(self.over(
                    "symlink target length",
                    MAX_LINK,
                    format!("`{}` points at {size} bytes", path.display()),
                ));
            }
            self.out.links.push((path, entry.id()));
        } else {
            self.out.files.push(FileEntry {
                path,
                oid: entry.id(),
                mode: entry.filemode(),
                size,
            });
        }
        Ok(())
    }
}

/// Writes blobs on as many threads as there are cores (up to 4); each
/// thread has its own handle on the cache (libgit2 handles are not shared).
fn write_files(
    cache: &Path,
    staging: &Path,
    files: &[FileEntry],
    sha: &Sha,
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
                    let git_err = git_error(sha);
                    let repo = Repository::open_bare(cache).map_err(&git_err)?;
                    let odb = repo.odb().map_err(&git_err)?;
                    let mut written = Written::default();
                    for f in part {
                        let p = staging.join(&f.path);
                        let mode = if f.mode & 0o111 != 0 { 0o755 } else { 0o644 };
                        let mut out = OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(mode)
                            .custom_flags(libc::O_NOFOLLOW)
                            .open(&p)
                            .map_err(io_err("cannot create", &p))?;
                        written.bytes += write_blob(&odb, f, &mut out, &p, sha)?;
                        written.files += 1;
                    }
                    Ok(written)
                })
            })
            .collect();
        let mut total = Written::default();
        let mut first_error = None;
        for w in workers {
            match w.join().expect("writer thread panicked") {
                Ok(part) => {
                    total.files += part.files;
                    total.bytes += part.bytes;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(total), Err)
    })
}

/// Copies one blob into `out`: a large one streamed from a loose object;
/// libgit2 cannot stream from a pack, so a packed blob is read whole (at
/// most `max_file_size`, checked by [`plan`]).
fn write_blob(
    odb: &git2::Odb<'_>,
    file: &FileEntry,
    out: &mut fs::File,
    path: &Path,
    sha: &Sha,
) -> Result<u64, ReleaseError> {
    let git_err = git_error(sha);
    let oid = file.oid;
    let stream = if file.size > STREAM_ABOVE {
        odb.reader(oid)
    } else {
        Err(git2::Error::from_str("small enough to read whole"))
    };
    match stream {
        Ok((mut reader, _, _)) => io::copy(&mut reader, out).map_err(|e| {
            // The reader fails with a libgit2 error (a corrupt object), the
            // file with an OS error (a full disk).
            if e.raw_os_error().is_some() {
                io_err("cannot write", path)(e)
            } else {
                ReleaseError::Git {
                    sha: sha.to_string(),
                    message: e.to_string(),
                }
            }
        }),
        Err(_) => {
            let blob = odb.read(oid).map_err(&git_err)?;
            out.write_all(blob.data())
                .map_err(io_err("cannot write", path))?;
            Ok(blob.data().len() as u64)
        }
    }
}

#[cfg(test)]
mod hostile_tree_tests;
