//! Dependency fingerprints: a stable digest of the files that decide what a
//! release needs installed in the image (lockfiles, requirements, the
//! Dockerfile). Hot reload is only safe while the new release's fingerprint
//! equals the one baked into the image; this module computes, compares and
//! stores fingerprints, and the deploy pipeline decides what to do with them.
//!
//! **Which files.** Glob patterns (`[dependencies] files`, default
//! `patterns::DEFAULT_PATTERNS`) are matched against each file's path relative to the
//! release, with `/` as separator. `*`, `?` and `[...]` never match `/`, so a
//! pattern without a slash (`requirements*.txt`) matches at the release's top
//! level only; `**` matches any number of directories (`**/go.sum` matches
//! `go.sum` and `svc/go.sum`), and `svc/*.lock` matches inside `svc/`. The
//! walk skips every `.git` and never follows a symlinked directory; it only
//! descends as deep as some pattern can match (the defaults read the top
//! level alone, however large `node_modules` is).
//!
//! **Digests.** A regular file's digest is the SHA-256 of its contents (what
//! `sha256sum` prints). A symlink that matches is never followed (a release
//! may hold links that point outside it): its digest is the SHA-256 of
//! `symlink\0` followed by its target text, so turning a file into a link
//! with the same text still counts as a change. The fingerprint is the
//! SHA-256 of `cutover-fingerprint-v1\n` then, for every file in byte order
//! of its path, `path\0hex\n`: independent of the order files were created
//! or listed in, and sensitive to paths (renaming a lockfile changes it).
//!
//! **Baselines** are JSON files (`{"digest": ..., "files": {path: hex}}`)
//! written through a temporary file and a rename, so a reader never sees
//! half of one; reading one checks that its digest matches its files.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod patterns;

pub use patterns::{Patterns, compile_pattern};

/// Prefix of [`Fingerprint::digest`].
pub const DIGEST_PREFIX: &str = "sha256:";

/// Versions the encoding hashed into the fingerprint.
const ENCODING: &[u8] = b"cutover-fingerprint-v1\n";

#[derive(Debug, thiserror::Error)]
pub enum FingerprintError {
    #[error("invalid pattern `{pattern}`: {reason}")]
    Pattern { pattern: String, reason: String },
    #[error("cannot fingerprint {}: {source}", path.display())]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot fingerprint {}: not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("cannot list {}: {source}", path.display())]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} matches a dependency pattern but is not a regular file or symlink", path.display())]
    NotAFile { path: PathBuf },
    #[error("{} matches a dependency pattern but its name is not UTF-8", path.display())]
    NonUtf8Path { path: PathBuf },
    #[error("cannot read baseline {}: {source}", path.display())]
    ReadBaseline {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("baseline {} is not a fingerprint: {source}", path.display())]
    ParseBaseline {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("baseline {} is corrupt: its digest does not match its files", path.display())]
    CorruptBaseline { path: PathBuf },
    #[error("cannot write baseline {}: {source}", path.display())]
    WriteBaseline {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The digest of a release's dependency files, and the files that went into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// `sha256:<hex>` over every (path, file digest).
    pub digest: String,
    /// Relative path (`/`-separated) to the SHA-256 hex of that file.
    pub files: BTreeMap<String, String>,
}

impl Fingerprint {
    /// Fingerprints the files of `root` (followed if itself a symlink) that
    /// match `patterns`.
    pub fn compute(root: &Path, patterns: &Patterns) -> Result<Fingerprint, FingerprintError> {
        let meta = std::fs::metadata(root).map_err(|source| FingerprintError::Root {
            path: root.to_path_buf(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(FingerprintError::NotADirectory {
                path: root.to_path_buf(),
            });
        }
        let mut files = BTreeMap::new();
        // (directory relative to root, its depth in components)
        let mut stack = vec![(PathBuf::new(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let abs = root.join(&dir);
            let entries = std::fs::read_dir(&abs).map_err(|source| FingerprintError::ReadDir {
                path: abs.clone(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| FingerprintError::ReadDir {
                    path: abs.clone(),
                    source,
                })?;
                let name = entry.file_name();
                if name == ".git" {
                    continue;
                }
                let relative = dir.join(&name);
                let path = entry.path();
                // Not followed: the type of the entry itself.
                let kind = entry.file_type().map_err(|source| FingerprintError::Read {
                    path: path.clone(),
                    source,
                })?;
                if kind.is_dir() {
                    if patterns.max_depth.is_none_or(|max| depth + 1 < max) {
                        stack.push((relative, depth + 1));
                    }
                    continue;
                }
                if !patterns.is_match(&relative) {
                    continue;
                }
                let Some(key) = relative.to_str() else {
                    return Err(FingerprintError::NonUtf8Path { path });
                };
                let digest = if kind.is_symlink() {
                    symlink_digest(&path)?
                } else if kind.is_file() {
                    file_digest(&path)?
                } else {
                    // A FIFO, socket or device: reading it could block or never end.
                    return Err(FingerprintError::NotAFile { path });
                };
                files.insert(key.to_string(), digest);
            }
        }
        Ok(Fingerprint::from_files(files))
    }

    /// The fingerprint of these (path, file digest) entries.
    pub fn from_files(files: BTreeMap<String, String>) -> Fingerprint {
        Fingerprint {
            digest: digest_of(&files),
            files,
        }
    }

    /// Same dependencies: hot reload is safe.
    pub fn matches(&self, other: &Fingerprint) -> bool {
        self.digest == other.digest
    }

    /// Paths whose digest differs, or that only one side has, in byte order.
    pub fn diff(&self, other: &Fingerprint) -> Vec<String> {
        let mut changed: Vec<String> = self
            .files
            .iter()
            .filter(|(path, digest)| other.files.get(*path) != Some(*digest))
            .map(|(path, _)| path.clone())
            .collect();
        changed.extend(
            other
                .files
                .keys()
                .filter(|path| !self.files.contains_key(*path))
                .cloned(),
        );
        changed.sort();
        changed
    }

    /// Reads a baseline; `Ok(None)` when there is none yet.
    pub fn read(path: &Path) -> Result<Option<Fingerprint>, FingerprintError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(FingerprintError::ReadBaseline {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let fingerprint: Fingerprint =
            serde_json::from_str(&text).map_err(|source| FingerprintError::ParseBaseline {
                path: path.to_path_buf(),
                source,
            })?;
        if digest_of(&fingerprint.files) != fingerprint.digest {
            return Err(FingerprintError::CorruptBaseline {
                path: path.to_path_buf(),
            });
        }
        Ok(Some(fingerprint))
    }

    /// Writes a baseline atomically (a temporary file beside it, then a
    /// rename), creating the parent directory if needed.
    pub fn write(&self, path: &Path) -> Result<(), FingerprintError> {
        let err = |source| FingerprintError::WriteBaseline {
            path: path.to_path_buf(),
            source,
        };
        let name = path.file_name().ok_or_else(|| {
            err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a file name",
            ))
        })?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(parent).map_err(err)?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = parent.join(tmp_name);
        let _ = std::fs::remove_file(&tmp);
        let mut json = serde_json::to_string_pretty(self).map_err(|e| err(e.into()))?;
        json.push('\n');
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            file.write_all(json.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            // Make the rename itself durable; best effort.
            if let Ok(dir) = File::open(parent) {
                let _ = dir.sync_all();
            }
            Ok(())
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(err)
    }
}

fn digest_of(files: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(ENCODING);
    for (path, digest) in files {
        hasher.update(path.as_bytes());
        hasher.update(b"\0");
        hasher.update(digest.as_bytes());
        hasher.update(b"\n");
    }
    format!("{DIGEST_PREFIX}{}", hex::encode(hasher.finalize()))
}

/// SHA-256 of a regular file, opened without following a symlink swapped in
/// since the directory was listed, and without blocking on a FIFO.
fn file_digest(path: &Path) -> Result<String, FingerprintError> {
    let err = |source| FingerprintError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(err)?;
    if !file.metadata().map_err(err)?.is_file() {
        return Err(FingerprintError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err(e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The digest of a symlink's target text; the target is never touched.
fn symlink_digest(path: &Path) -> Result<String, FingerprintError> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::fs::read_link(path).map_err(|source| FingerprintError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut hasher = Sha256::new();
    hasher.update(b"symlink\0");
    hasher.update(target.as_os_str().as_bytes());
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod digest_tests;
