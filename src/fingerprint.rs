//! Dependency fingerprints: a stable digest of the files that decide what a
//! release needs installed in the image (lockfiles, requirements, the
//! Dockerfile). Hot reload is only safe while the new release's fingerprint
//! equals the one baked into the image; this module computes, compares and
//! stores fingerprints, and the deploy pipeline decides what to do with them.
//!
//! **Which files.** Glob patterns (`[dependencies] files`, default
//! [`DEFAULT_PATTERNS`]) are matched against each file's path relative to the
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
use std::sync::OnceLock;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The dependency files of the common ecosystems, used when the config has
/// no `[dependencies] files`.
pub const DEFAULT_PATTERNS: &[&str] = &[
    "requirements*.txt",
    "poetry.lock",
    "Pipfile.lock",
    "package-lock.json",
    "yarn.lock",
    "Gemfile.lock",
    "go.sum",
    "Cargo.lock",
    "Dockerfile",
];

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

/// Checks one pattern and compiles it with the matching rules above.
/// `Err` is the reason, ready for a config problem.
pub fn compile_pattern(pattern: &str) -> Result<Glob, String> {
    if pattern.trim().is_empty() {
        return Err("empty pattern".to_string());
    }
    if pattern.starts_with('/') {
        return Err("patterns are relative to the release: remove the leading `/`".to_string());
    }
    if pattern.split('/').any(|c| c == "." || c == "..") {
        return Err("patterns are relative to the release: no `.` or `..` components".to_string());
    }
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| e.kind().to_string())
}

/// A compiled set of patterns. Equal when the pattern texts are equal.
#[derive(Debug, Clone)]
pub struct Patterns {
    patterns: Vec<String>,
    /// Compiled by `new`; for the defaults, on first use (see `default`).
    set: OnceLock<GlobSet>,
    /// How many path components a match can have; `None` for `**` or classes.
    max_depth: Option<usize>,
}

impl Patterns {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Patterns, FingerprintError> {
        let patterns: Vec<String> = patterns.iter().map(|p| p.as_ref().to_string()).collect();
        let set = compile_set(&patterns)?;
        Ok(Patterns {
            max_depth: max_depth(&patterns),
            patterns,
            set: OnceLock::from(set),
        })
    }

    /// The pattern texts, as configured.
    pub fn as_strings(&self) -> &[String] {
        &self.patterns
    }

    fn is_match(&self, relative: &Path) -> bool {
        self.set
            .get_or_init(|| compile_set(&self.patterns).expect("the default patterns are valid"))
            .is_match(relative)
    }
}

fn compile_set(patterns: &[String]) -> Result<GlobSet, FingerprintError> {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        let glob = compile_pattern(p).map_err(|reason| FingerprintError::Pattern {
            pattern: p.clone(),
            reason,
        })?;
        builder.add(glob);
    }
    builder.build().map_err(|e| FingerprintError::Pattern {
        pattern: patterns.join(", "),
        reason: e.to_string(),
    })
}

fn max_depth(patterns: &[String]) -> Option<usize> {
    let mut max_depth = Some(0);
    for p in patterns {
        // Only a literal `/` matches `/` (literal_separator), except
        // through `**` or a class such as `[/]`.
        let depth = (!p.contains("**") && !p.contains('[')).then(|| p.matches('/').count() + 1);
        max_depth = max_depth.zip(depth).map(|(a, b)| a.max(b));
    }
    max_depth
}

impl Default for Patterns {
    /// [`DEFAULT_PATTERNS`], compiled on first use: every config has them
    /// unless it names its own, but only a deploy matches files against
    /// them, and compiling a glob set runs (and so keeps resident) about
    /// 0.5 MB of regex compiler code in every `cutover run`.
    fn default() -> Self {
        let patterns: Vec<String> = DEFAULT_PATTERNS.iter().map(|p| p.to_string()).collect();
        Patterns {
            max_depth: max_depth(&patterns),
            patterns,
            set: OnceLock::new(),
        }
    }
}

impl PartialEq for Patterns {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl Eq for Patterns {}

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
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn compute(root: &Path) -> Fingerprint {
        Fingerprint::compute(root, &Patterns::default()).unwrap()
    }

    fn sha256_hex(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[test]
    fn digest_is_independent_of_creation_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let files = [
            ("requirements.txt", "flask==3.0\n"),
            ("poetry.lock", "lock\n"),
            ("Dockerfile", "FROM debian\n"),
            ("requirements-dev.txt", "pytest\n"),
        ];
        for (p, c) in files {
            write(a.path(), p, c);
        }
        for (p, c) in files.iter().rev() {
            write(b.path(), p, c);
        }
        let (fa, fb) = (compute(a.path()), compute(b.path()));
        assert_eq!(fa, fb);
        assert!(fa.matches(&fb));
        assert!(fa.digest.starts_with(DIGEST_PREFIX));
        assert_eq!(fa.digest.len(), DIGEST_PREFIX.len() + 64);
        assert_eq!(fa.files.len(), 4);
        // Per-file digests are what sha256sum prints.
        assert_eq!(fa.files["poetry.lock"], sha256_hex(b"lock\n"));
        // And computing twice gives the same.
        assert_eq!(compute(a.path()), fa);
    }

    #[test]
    fn content_change_changes_digest() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "requirements.txt", "flask==3.0\n");
        let before = compute(d.path());
        write(d.path(), "requirements.txt", "flask==3.1\n");
        let after = compute(d.path());
        assert_ne!(before.digest, after.digest);
        assert!(!before.matches(&after));
        assert_eq!(before.diff(&after), ["requirements.txt"]);
    }

    #[test]
    fn rename_changes_digest() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "requirements.txt", "flask\n");
        let before = compute(d.path());
        std::fs::rename(
            d.path().join("requirements.txt"),
            d.path().join("requirements-prod.txt"),
        )
        .unwrap();
        let after = compute(d.path());
        assert_ne!(before.digest, after.digest);
        assert_eq!(
            before.diff(&after),
            ["requirements-prod.txt", "requirements.txt"]
        );
    }

    #[test]
    fn non_matching_files_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "requirements.txt", "flask\n");
        let before = compute(d.path());
        write(d.path(), "app.py", "print('hi')\n");
        write(d.path(), "README.md", "# app\n");
        // Patterns without a slash match at the top level only.
        write(d.path(), "vendor/lib/requirements.txt", "other\n");
        write(d.path(), "svc/go.sum", "sum\n");
        // Directories are not files, even when their name matches.
        std::fs::create_dir_all(d.path().join("Cargo.lock")).unwrap();
        write(d.path(), ".git/poetry.lock", "x\n");
        let after = compute(d.path());
        assert_eq!(before, after);
        assert_eq!(after.files.keys().collect::<Vec<_>>(), ["requirements.txt"]);
    }

    #[test]
    fn slash_and_double_star_patterns_match_relative_paths() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "go.sum", "a\n");
        write(d.path(), "svc/go.sum", "b\n");
        write(d.path(), "svc/deep/go.sum", "c\n");
        write(d.path(), "web/package-lock.json", "d\n");
        write(d.path(), "web/sub/package-lock.json", "e\n");
        write(d.path(), ".git/go.sum", "ignored\n");
        write(d.path(), "svc/.git/go.sum", "ignored\n");
        let patterns = Patterns::new(&["**/go.sum", "web/*.json"]).unwrap();
        let fp = Fingerprint::compute(d.path(), &patterns).unwrap();
        assert_eq!(
            fp.files.keys().collect::<Vec<_>>(),
            [
                "go.sum",
                "svc/deep/go.sum",
                "svc/go.sum",
                "web/package-lock.json"
            ]
        );
    }

    #[test]
    fn symlinks_are_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "secret.txt", "one\n");
        write(
            outside.path(),
            "dir/requirements.txt",
            "inside a linked dir\n",
        );
        let d = tempfile::tempdir().unwrap();
        let target = outside.path().join("secret.txt");
        std::os::unix::fs::symlink(&target, d.path().join("requirements.txt")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("dir"), d.path().join("linked")).unwrap();
        let patterns = Patterns::new(&["requirements*.txt", "**/requirements.txt"]).unwrap();
        let before = Fingerprint::compute(d.path(), &patterns).unwrap();
        // Only the link itself, digested by its target text.
        assert_eq!(
            before.files.keys().collect::<Vec<_>>(),
            ["requirements.txt"]
        );
        let mut text = b"symlink\0".to_vec();
        text.extend_from_slice(target.to_str().unwrap().as_bytes());
        assert_eq!(before.files["requirements.txt"], sha256_hex(&text));
        // Changing what the link points at changes nothing.
        write(outside.path(), "secret.txt", "two\n");
        assert_eq!(Fingerprint::compute(d.path(), &patterns).unwrap(), before);
        // A regular file with the link's text is still a different file.
        std::fs::remove_file(d.path().join("requirements.txt")).unwrap();
        write(d.path(), "requirements.txt", target.to_str().unwrap());
        let file = Fingerprint::compute(d.path(), &patterns).unwrap();
        assert_ne!(file.digest, before.digest);
        // A dangling link is fine too.
        std::fs::remove_file(d.path().join("requirements.txt")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", d.path().join("requirements.txt")).unwrap();
        assert!(Fingerprint::compute(d.path(), &patterns).is_ok());
    }

    #[test]
    fn root_may_be_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "releases/abc/Cargo.lock", "x\n");
        std::os::unix::fs::symlink(d.path().join("releases/abc"), d.path().join("current"))
            .unwrap();
        let fp = compute(&d.path().join("current"));
        assert_eq!(fp.files.keys().collect::<Vec<_>>(), ["Cargo.lock"]);
    }

    #[test]
    fn special_files_that_match_are_errors() {
        let d = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(
            &d.path().join("yarn.lock"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let err = Fingerprint::compute(d.path(), &Patterns::default()).unwrap_err();
        assert!(matches!(err, FingerprintError::NotAFile { .. }), "{err}");
        assert!(err.to_string().contains("yarn.lock"), "{err}");
    }

    #[test]
    fn missing_root_names_the_path() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        let err = Fingerprint::compute(&missing, &Patterns::default()).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        write(d.path(), "file", "");
        let err = Fingerprint::compute(&d.path().join("file"), &Patterns::default()).unwrap_err();
        assert!(matches!(err, FingerprintError::NotADirectory { .. }));
    }

    #[test]
    fn empty_release_has_a_stable_digest() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (fa, fb) = (compute(a.path()), compute(b.path()));
        assert!(fa.files.is_empty());
        assert_eq!(fa, fb);
    }

    #[test]
    fn diff_lists_changed_added_and_removed() {
        let entries = |list: &[(&str, &str)]| {
            Fingerprint::from_files(
                list.iter()
                    .map(|(p, d)| (p.to_string(), d.to_string()))
                    .collect(),
            )
        };
        let old = entries(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let new = entries(&[("a", "1"), ("b", "9"), ("d", "4")]);
        assert_eq!(old.diff(&new), ["b", "c", "d"]);
        assert_eq!(new.diff(&old), ["b", "c", "d"]);
        assert!(old.diff(&old).is_empty());
    }

    #[test]
    fn baseline_round_trip() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "release/Gemfile.lock", "gems\n");
        write(d.path(), "release/Dockerfile", "FROM ruby\n");
        let fp = compute(&d.path().join("release"));
        let baseline = d.path().join("etc/cutover/dependencies");
        assert_eq!(Fingerprint::read(&baseline).unwrap(), None);
        fp.write(&baseline).unwrap();
        assert_eq!(Fingerprint::read(&baseline).unwrap(), Some(fp.clone()));
        // Overwriting replaces it, and leaves no temporary file behind.
        let other = Fingerprint::from_files(BTreeMap::new());
        other.write(&baseline).unwrap();
        assert_eq!(Fingerprint::read(&baseline).unwrap(), Some(other));
        let names: Vec<_> = std::fs::read_dir(baseline.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["dependencies"]);
    }

    #[test]
    fn bad_baselines_are_errors_naming_the_path() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("baseline");
        std::fs::write(&path, "not json").unwrap();
        let err = Fingerprint::read(&path).unwrap_err();
        assert!(matches!(err, FingerprintError::ParseBaseline { .. }));
        assert!(err.to_string().contains("baseline"), "{err}");
        let mut fp = Fingerprint::from_files(
            [("go.sum".to_string(), "ab".to_string())]
                .into_iter()
                .collect(),
        );
        fp.files.insert("go.mod".into(), "cd".into());
        std::fs::write(&path, serde_json::to_string(&fp).unwrap()).unwrap();
        let err = Fingerprint::read(&path).unwrap_err();
        assert!(matches!(err, FingerprintError::CorruptBaseline { .. }));
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        for bad in ["[unclosed", "/abs/requirements.txt", "./Dockerfile", ""] {
            assert!(compile_pattern(bad).is_err(), "{bad:?}");
            let err = Patterns::new(&[bad]).unwrap_err();
            assert!(matches!(err, FingerprintError::Pattern { .. }));
        }
        assert!(Patterns::new(DEFAULT_PATTERNS).is_ok());
        assert_eq!(Patterns::default().max_depth, Some(1));
        assert_eq!(Patterns::new(&["a/b/*.lock"]).unwrap().max_depth, Some(3));
        assert_eq!(Patterns::new(&["**/go.sum"]).unwrap().max_depth, None);
    }
}
