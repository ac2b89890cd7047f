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
/// Where objects taken from a local remote wait to be renamed into place.
const INCOMING: &str = "cutover-incoming";
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
        // libgit2 takes a local path that does not exist for a URL and says
        // "unsupported URL protocol"; say what is wrong instead.
        let local = Path::new(self.url.strip_prefix("file://").unwrap_or(&self.url));
        let why = if local.is_absolute() && !local.exists() {
            "no repository there: the path does not exist"
        } else {
            e.message()
        };
        GitError::Remote(self.redact(&format!("{}: {why}", self.shown)))
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
        if let Some(objects) = local_objects(&self.url) {
            // Errors (a concurrent gc on the remote, a full disk) leave the
            // work to libgit2's transport below.
            if copy_objects(
                &objects,
                &cache.path().join("objects"),
                &cache.path().join(INCOMING),
            )
            .is_ok()
                && cache.find_commit(expected).is_ok()
            {
                let _ = cache.reference(FETCHED, expected, true, "cutover: local copy");
                return Ok(expected);
            }
        }
        let refspec = format!("+{name}:{FETCHED}");
        let attempt = |refspecs: &[&str], depth: i32| -> Result<(), git2::Error> {
            let mut remote = cache.remote_anonymous(&self.url)?;
            let mut options = FetchOptions::new();
            options
                .remote_callbacks(self.callbacks())
                .download_tags(AutotagOption::None)
                .update_fetchhead(false);
            if depth > 0 {
                options.depth(depth);
            }
            remote.fetch(refspecs, Some(&mut options), None)
        };
        let mut result = attempt(&[refspec.as_str()], self.depth as i32);
        if let Err(e) = &result {
            // Not every transport or server allows a shallow fetch; fall back.
            let shallow_refused = self.depth > 0
                && (e.class() == git2::ErrorClass::Net || e.message().contains("shallow"));
            if shallow_refused && e.code() != git2::ErrorCode::Auth {
                result = attempt(&[refspec.as_str()], 0);
            }
        }
        let by_sha = full_sha(name).is_some();
        if let Err(e) = &result
            && by_sha
            && e.code() != git2::ErrorCode::Auth
        {
            // Most servers (git daemon, self-hosted forges by default) refuse
            // to send a commit no ref advertises: fetch every branch and tag
            // with their history and look for it there.
            let depth = if cache.is_shallow() { UNSHALLOW } else { 0 };
            result = attempt(&[ALL_HEADS, ALL_TAGS], depth);
        }
        result.map_err(|e| self.error(&e))?;
        if by_sha {
            // Only that commit will do: what FETCHED held before is another one.
            return cache
                .find_commit(expected)
                .map(|c| c.id())
                .map_err(|_| GitError::MissingCommit(expected.to_string()));
        }
        // The ref may have moved between ls-remote and fetch: deploy what was fetched.
        let commit = cache
            .find_commit(expected)
            .or_else(|_| {
                cache
                    .revparse_single(FETCHED)
                    .and_then(|o| o.peel_to_commit())
            })
            .map_err(|_| GitError::MissingCommit(expected.to_string()))?;
        Ok(commit.id())
    }
}

/// A remote on this machine (a plain absolute path or file://): its object
/// directory, when its objects can be taken as they are (no alternates).
fn local_objects(url: &str) -> Option<PathBuf> {
    let path = Path::new(url.strip_prefix("file://").unwrap_or(url));
    if !path.is_absolute() {
        return None;
    }
    let objects = [path.join("objects"), path.join(".git").join("objects")]
        .into_iter()
        .find(|p| p.join("pack").is_dir())?;
    (!objects.join("info").join("alternates").exists()).then_some(objects)
}

/// Takes a local remote's packs and loose objects as they are, hard linked
/// where the filesystem allows and copied elsewhere, like `git clone
/// --local`. libgit2's local transport would instead build a new pack,
/// searching deltas and compressing every object again: about 6 s for a
/// 100 MB tree on two cores, against well under one for this. Git never
/// changes an object file once written, so sharing the inode is safe. Each
/// file lands in `incoming` first and is renamed into place, a pack before
/// its index, so an interrupted copy leaves nothing that git would read half
/// written (and what it leaves in `incoming` goes with the next copy); a pack
/// is taken only once its index exists, i.e. once the push that wrote it
/// finished writing it.
fn copy_objects(from: &Path, to: &Path, incoming: &Path) -> std::io::Result<()> {
    // Fetches are serialised by the source actor: anything here is left
    // over from a cutover killed mid-copy.
    let _ = std::fs::remove_dir_all(incoming);
    std::fs::create_dir_all(incoming)?;
    let from_packs = from.join("pack");
    let to_packs = to.join("pack");
    std::fs::create_dir_all(&to_packs)?;
    for entry in std::fs::read_dir(&from_packs)? {
        let name = entry?.file_name();
        let Some(stem) = name
            .to_str()
            .filter(|n| n.starts_with("pack-"))
            .and_then(|n| n.strip_suffix(".idx"))
        else {
            continue;
        };
        for file in [format!("{stem}.pack"), format!("{stem}.idx")] {
            take_object_file(&from_packs.join(&file), &to_packs.join(&file), incoming)?;
        }
    }
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let fan = entry.file_name();
        let is_fan = fan
            .to_str()
            .is_some_and(|n| n.len() == 2 && n.bytes().all(|b| b.is_ascii_hexdigit()));
        if !is_fan {
            continue;
        }
        let to_fan = to.join(&fan);
        for object in std::fs::read_dir(entry.path())? {
            let name = object?.file_name();
            // Skips git's tmp_obj_* files, still being written.
            if !name
                .to_str()
                .is_some_and(|n| n.len() == 38 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                continue;
            }
            std::fs::create_dir_all(&to_fan)?;
            take_object_file(&entry.path().join(&name), &to_fan.join(&name), incoming)?;
        }
    }
    Ok(())
}

fn take_object_file(from: &Path, to: &Path, incoming: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(to).is_ok() {
        return Ok(());
    }
    let tmp = incoming.join(to.file_name().unwrap_or_default());
    if std::fs::hard_link(from, &tmp).is_err() {
        std::fs::copy(from, &tmp)?;
    }
    std::fs::rename(&tmp, to)
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
