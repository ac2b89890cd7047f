//! git plumbing for `[source]`, on libgit2: which commit a remote ref points
//! to (ls-remote), fetching it into a bare cache repository under the
//! volume. Everything here blocks; the source actor calls it from
//! `spawn_blocking`. The network is cutover's own transports
//! (`transport`: https on rustls, ssh through OpenSSH), which leave a typed
//! reason when they fail.
//!
//! Secrets (a token, the password of a URL, a proxy's credentials) never
//! reach a log line, a status or an error: every message leaving this
//! module goes through the remote's redactor.

mod connect;
mod error;
mod local_copy;
mod session;
mod smart_http;
mod ssh;
mod transport;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use git2::{AutotagOption, FetchOptions, Oid, Repository};

use crate::config::SourceConfig;
use crate::process::reaper::Reaper;
use crate::redact::{UrlRedactor, url_userinfo};
pub use error::TransportError;
use local_copy::{copy_objects, local_objects};
use session::{Settings, SshSettings};
use transport::with_session;

/// Where fetched commits land in the cache (never a branch: nothing checks it out).
const FETCHED: &str = "refs/cutover/fetched";
/// Every branch and tag, for a commit the remote will not send by its id.
const ALL_HEADS: &str = "+refs/heads/*:refs/cutover/heads/*";
const ALL_TAGS: &str = "+refs/tags/*:refs/cutover/tags/*";
/// libgit2's GIT_FETCH_DEPTH_UNSHALLOW: the whole history of a shallow cache.
const UNSHALLOW: i32 = i32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{0}")]
    Remote(String),
    #[error("{url}: {error}")]
    Transport { url: String, error: TransportError },
    #[error("ref `{wanted}` not found on {repo}")]
    RefNotFound { wanted: String, repo: String },
    #[error("commit {0} is not in the cache and the remote did not send it")]
    MissingCommit(String),
    #[error("cache repository {}: {message}", .path.display())]
    Cache { path: PathBuf, message: String },
    #[error("commit {0} is in the cache without all of its tree; fetching it again")]
    Incomplete(String),
}

/// A remote operation's failure: the transport's own reason where it gave
/// one (final: asking again gets the same answer), else libgit2's.
enum Failure {
    Transport(TransportError),
    Git(git2::Error),
}

/// How to reach the remote, with everything secret kept for redaction.
#[derive(Clone)]
pub struct RemoteSpec {
    url: String,
    settings: Arc<Settings>,
    depth: u32,
    /// The largest tree the connectivity check inflates.
    max_tree: u64,
}

impl RemoteSpec {
    /// The largest tree the connectivity check inflates.
    pub fn max_tree(&self) -> u64 {
        self.max_tree
    }

    /// `reaper` waits for the ssh client of an ssh remote.
    pub fn new(config: &SourceConfig, reaper: Option<Reaper>) -> RemoteSpec {
        let (user_in_url, password_in_url) = url_userinfo(&config.repo);
        let token = config.token.as_ref().map(|t| t.0.clone());
        let mut redactor = UrlRedactor::new(&config.repo);
        if let Some(token) = &token {
            redactor.add_secret(token);
        }
        let proxy = hyper_util::client::proxy::matcher::Matcher::from_env();
        for (_, value) in crate::config::proxy_variables() {
            // A proxy's credentials are as secret as the token.
            redactor.add_url(&value);
        }
        RemoteSpec {
            url: config.repo.clone(),
            depth: config.depth,
            max_tree: super::tree::tree_size_limit(&config.limits),
            settings: Arc::new(Settings {
                username: config.username.clone().or(user_in_url),
                password: token.or(password_in_url),
                ca_file: config.ca_file.clone(),
                proxy,
                ssh: SshSettings {
                    key: config.ssh_key.clone(),
                    known_hosts: config.known_hosts.clone(),
                    insecure_ignore_host_key: config.insecure_ignore_host_key,
                    reaper,
                },
                redactor,
            }),
        }
    }

    /// The URL as it may be shown: without userinfo or query values.
    pub fn shown(&self) -> &str {
        self.settings.redactor.shown()
    }

    /// Removes every secret from `text`: the URL's, the token and the proxy's.
    pub fn redact(&self, text: &str) -> String {
        self.settings.redactor.redact(text)
    }

    fn error(&self, failure: Failure) -> GitError {
        let e = match failure {
            Failure::Transport(error) => {
                return GitError::Transport {
                    url: self.shown().to_string(),
                    error,
                };
            }
            Failure::Git(e) => e,
        };
        // libgit2 takes a local path that does not exist for a URL and says
        // "unsupported URL protocol"; say what is wrong instead.
        let local = Path::new(self.url.strip_prefix("file://").unwrap_or(&self.url));
        let why = if local.is_absolute() && !local.exists() {
            "no repository there: the path does not exist"
        } else {
            e.message()
        };
        GitError::Remote(self.redact(&format!("{}: {why}", self.shown())))
    }

    /// Runs libgit2 remote work with this remote's transport settings.
    fn remote_op<T>(&self, work: impl FnOnce() -> Result<T, git2::Error>) -> Result<T, Failure> {
        match with_session(&self.settings, work) {
            (Ok(value), _) => Ok(value),
            (Err(_), Some(transport)) => Err(Failure::Transport(transport)),
            (Err(e), None) => Err(Failure::Git(e)),
        }
    }

    /// The commit `wanted` (branch, tag, full ref or 40-hex sha) points to on
    /// the remote, with the ref's full name; a sha is taken as is.
    pub fn resolve(&self, cache: &Repository, wanted: &str) -> Result<(String, Oid), GitError> {
        if let Some(oid) = full_sha(wanted) {
            return Ok((wanted.to_string(), oid));
        }
        let heads = self
            .remote_op(|| {
                let mut remote = cache.remote_anonymous(&self.url)?;
                let connection = remote.connect_auth(git2::Direction::Fetch, None, None)?;
                let heads = connection
                    .list()?
                    .iter()
                    .map(|h| (h.name().to_string(), h.oid()))
                    .collect::<Vec<_>>();
                Ok(heads)
            })
            .map_err(|f| self.error(f))?;
        let candidates = [
            wanted.to_string(),
            format!("refs/heads/{wanted}"),
            format!("refs/tags/{wanted}"),
        ];
        for name in &candidates {
            // An annotated tag is listed twice; the peeled `^{}` entry is the commit.
            let peeled = format!("{name}^{{}}");
            let found = heads
                .iter()
                .find(|(h, _)| *h == peeled)
                .or_else(|| heads.iter().find(|(h, _)| h == name));
            if let Some((_, oid)) = found {
                return Ok((name.clone(), *oid));
            }
        }
        Err(GitError::RefNotFound {
            wanted: wanted.to_string(),
            repo: self.shown().to_string(),
        })
    }

    /// Fetches `name` (a full ref, or a sha) into the cache, which does not
    /// hold the whole commit yet; returns its commit.
    pub fn fetch(&self, cache: &Repository, name: &str, expected: Oid) -> Result<Oid, GitError> {
        if let Some(objects) = local_objects(&self.url) {
            // Errors (a concurrent gc on the remote, a full disk) leave the
            // work to libgit2's transport below. A copy that succeeded was
            // checked complete in its quarantine.
            if copy_objects(&objects, cache, expected, self.max_tree).is_ok() {
                let _ = cache.reference(FETCHED, expected, true, "cutover: local copy");
                return Ok(expected);
            }
        }
        let refspec = format!("+{name}:{FETCHED}");
        let attempt = |refspecs: &[&str], depth: i32| {
            self.remote_op(|| {
                let mut remote = cache.remote_anonymous(&self.url)?;
                let mut options = FetchOptions::new();
                options
                    .download_tags(AutotagOption::None)
                    .update_fetchhead(false);
                if depth > 0 {
                    options.depth(depth);
                }
                remote.fetch(refspecs, Some(&mut options), None)
            })
        };
        // A transport's own failure (refused, down, untrusted) is final:
        // asking again another way gets the same answer.
        let retryable = |r: &Result<(), Failure>| matches!(r, Err(Failure::Git(_)));
        let mut result = attempt(&[refspec.as_str()], self.depth as i32);
        if let Err(Failure::Git(e)) = &result {
            // Not every transport or server allows a shallow fetch; fall back.
            if self.depth > 0
                && (e.class() == git2::ErrorClass::Net || e.message().contains("shallow"))
            {
                result = attempt(&[refspec.as_str()], 0);
            }
        }
        let by_sha = full_sha(name).is_some();
        if by_sha && retryable(&result) {
            // Most servers (git daemon, self-hosted forges by default) refuse
            // to send a commit no ref advertises: fetch every branch and tag
            // with their history and look for it there.
            let depth = if cache.is_shallow() { UNSHALLOW } else { 0 };
            result = attempt(&[ALL_HEADS, ALL_TAGS], depth);
        }
        result.map_err(|f| self.error(f))?;
        let commit = if by_sha {
            // Only that commit will do: what FETCHED held before is another one.
            cache
                .find_commit(expected)
                .map(|c| c.id())
                .map_err(|_| GitError::MissingCommit(expected.to_string()))?
        } else {
            // The ref may have moved between ls-remote and fetch: deploy what was fetched.
            cache
                .find_commit(expected)
                .or_else(|_| {
                    cache
                        .revparse_single(FETCHED)
                        .and_then(|o| o.peel_to_commit())
                })
                .map_err(|_| GitError::MissingCommit(expected.to_string()))?
                .id()
        };
        if !complete(cache, commit, self.max_tree) {
            return Err(GitError::Incomplete(commit.to_string()));
        }
        Ok(commit)
    }
}

/// Whether `commit`, its tree, every subtree and every blob are in `repo`:
/// what a release needs, checked before the cache is trusted with it. Trees
/// and blobs shared by many paths are looked at once. A tree over
/// `max_tree` bytes (see `tree::tree_size_limit`) is
/// only checked present, never inflated: writing the release refuses it.
pub fn complete(repo: &Repository, commit: Oid, max_tree: u64) -> bool {
    let Ok(odb) = repo.odb() else {
        return false;
    };
    match odb.read_header(commit) {
        Ok((size, _)) if size as u64 <= max_tree => {}
        // A commit too big to read is refused when the release is written.
        Ok(_) => return true,
        Err(_) => return false,
    }
    let Ok(root) = repo.find_commit(commit).map(|c| c.tree_id()) else {
        return false;
    };
    let mut seen = std::collections::HashSet::new();
    let mut trees = vec![root];
    while let Some(oid) = trees.pop() {
        if !seen.insert(oid) {
            continue;
        }
        match odb.read_header(oid) {
            Ok((size, _)) if size as u64 <= max_tree => {}
            Ok(_) => continue,
            Err(_) => return false,
        }
        let Ok(tree) = repo.find_tree(oid) else {
            return false;
        };
        for entry in tree.iter() {
            match entry.kind() {
                Some(git2::ObjectType::Tree) => trees.push(entry.id()),
                Some(git2::ObjectType::Blob)
                    if seen.insert(entry.id()) && !odb.exists(entry.id()) =>
                {
                    return false;
                }
                // A submodule's commit lives in another repository.
                _ => {}
            }
        }
    }
    true
}

/// Throws the cache away (an object missing or unreadable in it), so that
/// the next fetch starts afresh. Renamed first, so a cutover killed while
/// deleting it leaves no half-deleted cache in use.
pub fn discard_cache(path: &Path) -> Result<(), GitError> {
    let discarded = path.with_extension("git.discarded");
    let _ = std::fs::remove_dir_all(&discarded);
    if path.exists() {
        std::fs::rename(path, &discarded).map_err(|e| GitError::Cache {
            path: path.to_path_buf(),
            message: format!("cannot discard the damaged cache: {e}"),
        })?;
    }
    let _ = std::fs::remove_dir_all(&discarded);
    Ok(())
}

/// Opens the bare cache repository, creating it on first use.
pub fn open_cache(path: &Path) -> Result<Repository, GitError> {
    let result = if path.join("HEAD").exists() {
        Repository::open_bare(path)
    } else {
        Repository::init_bare(path)
    };
    result.map_err(|e| GitError::Cache {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    })
}

fn full_sha(text: &str) -> Option<Oid> {
    (text.len() == 40 && text.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| Oid::from_str(text).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_shas_are_recognised() {
        assert!(full_sha(&"a".repeat(40)).is_some());
        assert!(full_sha("main").is_none());
        assert!(full_sha(&"g".repeat(40)).is_none());
    }
}
