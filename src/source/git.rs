//! git plumbing for `[source]`, on libgit2: which commit a remote ref points
//! to (ls-remote), fetching it into a bare cache repository under the
//! volume, and credentials. Everything here blocks; the source actor calls
//! it from `spawn_blocking`.
//!
//! Secrets (a token, the password of a URL) never reach a log line, a status
//! or an error: every message leaving this module goes through `redact`.

use std::path::{Path, PathBuf};

use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, FetchOptions, Oid,
    RemoteCallbacks, Repository,
};

use crate::config::SourceConfig;

/// Where fetched commits land in the cache (never a branch: nothing checks it out).
const FETCHED: &str = "refs/cutover/fetched";

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{0}")]
    Remote(String),
    #[error("ref `{wanted}` not found on {repo}")]
    RefNotFound { wanted: String, repo: String },
    #[error("commit {0} is not in the cache and the remote did not send it")]
    MissingCommit(String),
    #[error("cache repository {}: {message}", .path.display())]
    Cache { path: PathBuf, message: String },
}

/// How to reach the remote, with everything secret kept for redaction.
#[derive(Clone)]
pub struct RemoteSpec {
    url: String,
    shown: String,
    ssh_key: Option<PathBuf>,
    insecure_ignore_host_key: bool,
    username: Option<String>,
    password: Option<String>,
    secrets: Vec<String>,
    depth: u32,
}

impl RemoteSpec {
    pub fn new(config: &SourceConfig) -> RemoteSpec {
        let (user_in_url, password_in_url) = url_userinfo(&config.repo);
        let token = config.token.as_ref().map(|t| t.0.clone());
        let mut secrets: Vec<String> = token.iter().cloned().collect();
        secrets.extend(password_in_url.clone());
        RemoteSpec {
            url: config.repo.clone(),
            shown: redact_url(&config.repo),
            ssh_key: config.ssh_key.clone(),
            insecure_ignore_host_key: config.insecure_ignore_host_key,
            username: config.username.clone().or(user_in_url),
            password: token.or(password_in_url),
            secrets,
            depth: config.depth,
        }
    }

    /// The URL as it may be shown: without a password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Removes every secret from `text`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.replace(&self.url, &self.shown);
        for s in &self.secrets {
            if !s.is_empty() {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }

    fn error(&self, e: &git2::Error) -> GitError {
        GitError::Remote(self.redact(&format!("{}: {}", self.shown, e.message())))
    }

    fn callbacks(&self) -> RemoteCallbacks<'_> {
        let mut callbacks = RemoteCallbacks::new();
        let mut attempts = 0;
        callbacks.credentials(move |_url, username_from_url, allowed| {
            // libgit2 asks again after a rejection; a second ask means the
            // credentials are wrong, and asking forever would hang the deploy.
            attempts += 1;
            if attempts > 1 {
                return Err(git2::Error::from_str(
                    "authentication failed (credentials rejected)",
                ));
            }
            let user = self
                .username
                .as_deref()
                .or(username_from_url)
                .unwrap_or("git");
            if allowed.contains(CredentialType::SSH_KEY)
                && let Some(key) = &self.ssh_key
            {
                return Cred::ssh_key(user, None, key, None);
            }
            if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
                && let Some(password) = &self.password
            {
                return Cred::userpass_plaintext(user, password);
            }
            Err(git2::Error::from_str(
                "authentication required: set token_env, token_file or ssh_key",
            ))
        });
        let insecure = self.insecure_ignore_host_key;
        callbacks.certificate_check(move |_cert, _host| {
            // Passthrough lets libgit2 check ssh host keys against known_hosts
            // and TLS certificates against the system store.
            Ok(if insecure {
                CertificateCheckStatus::CertificateOk
            } else {
                CertificateCheckStatus::CertificatePassthrough
            })
        });
        callbacks
    }

    /// The commit `wanted` (branch, tag, full ref or 40-hex sha) points to on
    /// the remote, with the ref's full name; a sha is taken as is.
    pub fn resolve(&self, cache: &Repository, wanted: &str) -> Result<(String, Oid), GitError> {
        if let Some(oid) = full_sha(wanted) {
            return Ok((wanted.to_string(), oid));
        }
        let mut remote = cache
            .remote_anonymous(&self.url)
            .map_err(|e| self.error(&e))?;
        let connection = remote
            .connect_auth(git2::Direction::Fetch, Some(self.callbacks()), None)
            .map_err(|e| self.error(&e))?;
        let heads = connection.list().map_err(|e| self.error(&e))?;
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
                .find(|h| h.name() == peeled)
                .or_else(|| heads.iter().find(|h| h.name() == name));
            if let Some(head) = found {
                return Ok((name.clone(), head.oid()));
            }
        }
        Err(GitError::RefNotFound {
            wanted: wanted.to_string(),
            repo: self.shown.clone(),
        })
    }

    /// Fetches `name` (a full ref, or a sha) into the cache; returns its commit.
    pub fn fetch(&self, cache: &Repository, name: &str, expected: Oid) -> Result<Oid, GitError> {
        if cache.find_commit(expected).is_ok() {
            return Ok(expected);
        }
        let refspec = format!("+{name}:{FETCHED}");
        let attempt = |depth: u32| -> Result<(), git2::Error> {
            let mut remote = cache.remote_anonymous(&self.url)?;
            let mut options = FetchOptions::new();
            options
                .remote_callbacks(self.callbacks())
                .download_tags(AutotagOption::None)
                .update_fetchhead(false);
            if depth > 0 {
                options.depth(depth as i32);
            }
            remote.fetch(&[refspec.as_str()], Some(&mut options), None)
        };
        if let Err(e) = attempt(self.depth) {
            // Not every transport or server allows a shallow fetch; fall back.
            let shallow_refused = self.depth > 0
                && (e.class() == git2::ErrorClass::Net || e.message().contains("shallow"));
            if !shallow_refused || e.code() == git2::ErrorCode::Auth {
                return Err(self.error(&e));
            }
            attempt(0).map_err(|e| self.error(&e))?;
        }
        let commit = cache
            .find_commit(expected)
            .or_else(|_| {
                cache
                    .revparse_single(FETCHED)
                    .and_then(|o| o.peel_to_commit())
            })
            .map_err(|_| GitError::MissingCommit(expected.to_string()))?;
        if full_sha(name).is_none() && commit.id() != expected {
            // The ref moved between ls-remote and fetch: deploy what was fetched.
            return Ok(commit.id());
        }
        Ok(commit.id())
    }
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

/// `https://user:pass@host/x` -> (Some("user"), Some("pass")).
fn url_userinfo(url: &str) -> (Option<String>, Option<String>) {
    let Some((_, rest)) = url.split_once("://") else {
        return (None, None);
    };
    let authority = rest.split('/').next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return (None, None);
    };
    match userinfo.split_once(':') {
        Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
        None => (Some(userinfo.to_string()), None),
    }
}

/// The URL with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url_userinfo(url) {
        (Some(user), Some(password)) if !password.is_empty() => {
            url.replacen(&format!("{user}:{password}@"), &format!("{user}:***@"), 1)
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("https://deploy:s3cret@git.example.com/org/app.git"),
            "https://deploy:***@git.example.com/org/app.git"
        );
        assert_eq!(
            redact_url("git@github.com:org/app.git"),
            "git@github.com:org/app.git"
        );
        assert_eq!(redact_url("/srv/repo.git"), "/srv/repo.git");
        assert_eq!(
            url_userinfo("https://tok@host/x"),
            (Some("tok".to_string()), None)
        );
    }

    #[test]
    fn full_shas_are_recognised() {
        assert!(full_sha(&"a".repeat(40)).is_some());
        assert!(full_sha("main").is_none());
        assert!(full_sha(&"g".repeat(40)).is_none());
    }
}
