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
    #[error("commit {0} is in the cache without all of its tree; fetching it again")]
    Incomplete(String),
}

/// How to reach the remote, with everything secret kept for redaction.
#[derive(Clone)]
pub struct RemoteSpec {
    url: String,
    redactor: UrlRedactor,
    ssh_key: Option<PathBuf>,
    insecure_ignore_host_key: bool,
    username: Option<String>,
    password: Option<String>,
    depth: u32,
}

impl RemoteSpec {
    pub fn new(config: &SourceConfig) -> RemoteSpec {
        let (user_in_url, password_in_url) = url_userinfo(&config.repo);
        let token = config.token.as_ref().map(|t| t.0.clone());
        let mut redactor = UrlRedactor::new(&config.repo);
        if let Some(token) = &token {
            redactor.add_secret(token);
        }
        RemoteSpec {
            url: config.repo.clone(),
            redactor,
            ssh_key: config.ssh_key.clone(),
            insecure_ignore_host_key: config.insecure_ignore_host_key,
            username: config.username.clone().or(user_in_url),
            password: token.or(password_in_url),
            depth: config.depth,
        }
    }

    /// The URL as it may be shown: without userinfo or query values.
    pub fn shown(&self) -> &str {
        self.redactor.shown()
    }

    /// Removes every secret from `text`: the URL's and the token.
    pub fn redact(&self, text: &str) -> String {
        self.redactor.redact(text)
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
        GitError::Remote(self.redact(&format!("{}: {why}", self.shown())))
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
        callbacks.certificate_check(move |cert, _host| {
            // Passthrough lets libgit2 check ssh host keys against known_hosts
            // and TLS certificates against the system store; libgit2 asks
            // before it sends any request, so credentials never reach an
            // unverified server.
            Ok(
                if skips_verification(cert.as_hostkey().is_some(), insecure) {
                    CertificateCheckStatus::CertificateOk
                } else {
                    CertificateCheckStatus::CertificatePassthrough
                },
            )
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
            if copy_objects(&objects, cache, expected).is_ok() {
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
        if !complete(cache, commit) {
            return Err(GitError::Incomplete(commit.to_string()));
        }
        Ok(commit)
    }
}

/// Whether a server's identity is accepted unchecked: only an ssh host key,
/// and only with `insecure_ignore_host_key` (no known_hosts in the image).
/// A TLS certificate is always verified, whatever the config says: accepting
/// any certificate would hand the token to whoever sits on the path.
fn skips_verification(is_ssh_host_key: bool, insecure_ignore_host_key: bool) -> bool {
    is_ssh_host_key && insecure_ignore_host_key
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
/// changes an object file once written, so sharing the inode is safe.
///
/// What the cache lacks lands in a quarantine object directory first
/// (`cutover-incoming/objects`); only once `commit` and its whole tree are
/// found there (with the cache as the rest) are the files renamed into
/// place: packs before their index, so git never reads half a pack, and the
/// commit's own loose object last. A pack is taken only once its index
/// exists, i.e. once the push that wrote it finished writing it. A copy
/// killed at any point leaves nothing that git reads half written, and what
/// it leaves in the quarantine goes with the next copy.
fn copy_objects(from: &Path, cache: &Repository, commit: Oid) -> std::io::Result<()> {
    let to = cache.path().join("objects");
    let incoming = cache.path().join(INCOMING);
    // Fetches are serialised by the source actor: anything here is left
    // over from a cutover killed mid-copy.
    let _ = std::fs::remove_dir_all(&incoming);
    let quarantine = incoming.join("objects");
    let from_packs = from.join("pack");
    std::fs::create_dir_all(quarantine.join("pack"))?;
    std::fs::create_dir_all(to.join("pack"))?;
    // Relative to an objects directory, in the order they are renamed.
    let mut taken: Vec<PathBuf> = Vec::new();
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
            let rel = Path::new("pack").join(file);
            if link_or_copy(&from.join(&rel), &to.join(&rel), &quarantine.join(&rel))? {
                taken.push(rel);
            }
        }
    }
    let hex = commit.to_string();
    let commit_rel = Path::new(&hex[..2]).join(&hex[2..]);
    let mut commit_taken = false;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let fan = entry.file_name();
        let is_fan = fan
            .to_str()
            .is_some_and(|n| n.len() == 2 && n.bytes().all(|b| b.is_ascii_hexdigit()));
        if !is_fan {
            continue;
        }
        for object in std::fs::read_dir(entry.path())? {
            let name = object?.file_name();
            // Skips git's tmp_obj_* files, still being written.
            if !name
                .to_str()
                .is_some_and(|n| n.len() == 38 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                continue;
            }
            let rel = Path::new(&fan).join(&name);
            std::fs::create_dir_all(quarantine.join(&fan))?;
            if link_or_copy(
                &entry.path().join(&name),
                &to.join(&rel),
                &quarantine.join(&rel),
            )? {
                if rel == commit_rel {
                    commit_taken = true;
                } else {
                    taken.push(rel);
                }
            }
        }
    }
    if commit_taken {
        taken.push(commit_rel);
    }
    // The connectivity check, on a handle that sees the quarantine.
    let checked = Repository::open_bare(cache.path()).and_then(|r| {
        r.odb()?.add_disk_alternate(&quarantine.to_string_lossy())?;
        Ok(complete(&r, commit))
    });
    if !matches!(checked, Ok(true)) {
        let _ = std::fs::remove_dir_all(&incoming);
        return Err(std::io::Error::other(format!(
            "the local remote does not hold commit {commit} and its whole tree"
        )));
    }
    for rel in &taken {
        if let Some(parent) = rel.parent() {
            std::fs::create_dir_all(to.join(parent))?;
        }
        std::fs::rename(quarantine.join(rel), to.join(rel))?;
    }
    let _ = std::fs::remove_dir_all(&incoming);
    // libgit2 caches the list of packs; look again for the new ones.
    if let Ok(odb) = cache.odb() {
        let _ = odb.refresh();
    }
    Ok(())
}

/// Links (or copies) `from` to `tmp` unless `to` is already in place;
/// whether it did.
fn link_or_copy(from: &Path, to: &Path, tmp: &Path) -> std::io::Result<bool> {
    if std::fs::symlink_metadata(to).is_ok() {
        return Ok(false);
    }
    if std::fs::hard_link(from, tmp).is_err() {
        std::fs::copy(from, tmp)?;
    }
    Ok(true)
}

/// Whether `commit`, its tree, every subtree and every blob are in `repo`:
/// what a release needs, checked before the cache is trusted with it. Trees
/// and blobs shared by many paths are looked at once.
pub fn complete(repo: &Repository, commit: Oid) -> bool {
    let Ok(odb) = repo.odb() else {
        return false;
    };
    let Ok(root) = repo.find_commit(commit).map(|c| c.tree_id()) else {
        return false;
    };
    let mut seen = std::collections::HashSet::new();
    let mut trees = vec![root];
    while let Some(oid) = trees.pop() {
        if !seen.insert(oid) {
            continue;
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

/// What replaces a secret in anything shown.
const REDACTED: &str = "***";
/// A user name or query value at least this long is taken for a token and
/// also removed from free text; shorter ones ("git", "deploy", "page=2") are
/// removed only where the URL itself appears, so that messages stay readable.
const TOKEN_LIKE: usize = 8;

/// `scheme://[userinfo@]host[:port][/path][?query][#fragment]`, cut at its
/// parts. `None` for what is not such a URL: a path, `git@host:org/app.git`.
struct UrlParts<'a> {
    scheme: &'a str,
    userinfo: Option<&'a str>,
    host: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    fragment: Option<&'a str>,
}

fn url_parts(url: &str) -> Option<UrlParts<'_>> {
    let (scheme, rest) = url.split_once("://")?;
    let is_scheme = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !is_scheme {
        return None;
    }
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    Some(UrlParts {
        scheme,
        userinfo,
        host,
        path,
        query,
        fragment,
    })
}

/// `https://user:pass@host/x` -> (Some("user"), Some("pass")).
fn url_userinfo(url: &str) -> (Option<String>, Option<String>) {
    let Some(userinfo) = url_parts(url).and_then(|p| p.userinfo) else {
        return (None, None);
    };
    match userinfo.split_once(':') {
        Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
        None => (Some(userinfo.to_string()), None),
    }
}

/// The URL as it may be shown: the whole userinfo (a token may be the user
/// name: `https://TOKEN@host`, `https://TOKEN:x-oauth-basic@host`), every
/// query value and the fragment become `***`; scheme, host, port and path
/// stay. Anything that is not a `scheme://` URL is returned as it is.
pub fn redact_url(url: &str) -> String {
    let Some(p) = url_parts(url) else {
        return url.to_string();
    };
    let mut out = format!("{}://", p.scheme);
    if p.userinfo.is_some() {
        out.push_str(REDACTED);
        out.push('@');
    }
    out.push_str(p.host);
    out.push_str(p.path);
    if let Some(query) = p.query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, "")) => format!("{key}="),
                Some((key, _)) => format!("{key}={REDACTED}"),
                // `?TOKEN`: a bare value is a value too.
                None if pair.is_empty() => String::new(),
                None => REDACTED.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    if let Some(fragment) = p.fragment {
        out.push('#');
        if !fragment.is_empty() {
            out.push_str(REDACTED);
        }
    }
    out
}

/// Removes a URL's secrets from free text (an error message, a response
/// body): the URL itself becomes its [`redact_url`] form, and its userinfo,
/// password, token-like user name, query values and fragment (also
/// percent-decoded) become `***` wherever else they appear.
#[derive(Clone)]
pub struct UrlRedactor {
    shown: String,
    /// (what, by what), longest first so that no secret is left half replaced.
    replacements: Vec<(String, String)>,
}

impl UrlRedactor {
    pub fn new(url: &str) -> UrlRedactor {
        let shown = redact_url(url);
        let mut r = UrlRedactor {
            shown: shown.clone(),
            replacements: Vec::new(),
        };
        r.add(url, &shown);
        let Some(p) = url_parts(url) else {
            return r;
        };
        if let Some(info) = p.userinfo {
            // The URL may appear in another form (another path, a trailing
            // slash): its `userinfo@` still goes.
            r.add(&format!("{info}@"), &format!("{REDACTED}@"));
            let (user, password) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            if let Some(password) = password {
                r.add_secret(password);
            }
            if user.len() >= TOKEN_LIKE {
                r.add_secret(user);
            }
        }
        let values = p
            .query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .map(|pair| pair.split_once('=').map_or(pair, |(_, v)| v))
            .chain(p.fragment);
        for value in values {
            if value.len() >= TOKEN_LIKE {
                r.add_secret(value);
            }
        }
        r
    }

    /// The URL as it may be shown.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Also removes `secret` (a token from `token_env`, say), as written and
    /// percent-decoded.
    pub fn add_secret(&mut self, secret: &str) {
        self.add(secret, REDACTED);
        if let Some(decoded) = percent_decoded(secret) {
            self.add(&decoded, REDACTED);
        }
    }

    fn add(&mut self, what: &str, by: &str) {
        if what.is_empty() || what == by {
            return;
        }
        self.replacements.push((what.to_string(), by.to_string()));
        self.replacements
            .sort_by_key(|(what, _)| std::cmp::Reverse(what.len()));
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (what, by) in &self.replacements {
            if out.contains(what.as_str()) {
                out = out.replace(what.as_str(), by);
            }
        }
        out
    }
}

/// `a%2Fb` -> `a/b`; `None` when there is nothing to decode.
fn percent_decoded(text: &str) -> Option<String> {
    if !text.contains('%') {
        return None;
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().filter(|d| d != text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_query_values_and_fragments_never_show() {
        let cases = [
            // A token as the user name, with and without a dummy password.
            (
                "https://ghp_0123456789abcdef@github.com/org/app.git",
                "https://***@github.com/org/app.git",
            ),
            (
                "https://ghp_0123456789abcdef:x-oauth-basic@github.com/org/app.git",
                "https://***@github.com/org/app.git",
            ),
            (
                "https://deploy:s3cret@git.example.com:8443/org/app.git",
                "https://***@git.example.com:8443/org/app.git",
            ),
            (
                "ssh://git@git.example.com:2222/org/app.git",
                "ssh://***@git.example.com:2222/org/app.git",
            ),
            // scp-like ssh and paths are not URLs: nothing secret in them.
            ("git@github.com:org/app.git", "git@github.com:org/app.git"),
            ("/srv/repo.git", "/srv/repo.git"),
            ("file:///srv/repo.git", "file:///srv/repo.git"),
            (
                "https://git.example.com/org/app.git",
                "https://git.example.com/org/app.git",
            ),
            // Every query value, whatever its key; empty ones stay empty.
            (
                "https://ci.example.com/hook?token=abc&x=1&sig=&signature=zz",
                "https://ci.example.com/hook?token=***&x=***&sig=&signature=***",
            ),
            (
                "http://ci.example.com/hook?SECRETVALUE",
                "http://ci.example.com/hook?***",
            ),
            (
                "https://ci.example.com/hook?access_token=t#frag",
                "https://ci.example.com/hook?access_token=***#***",
            ),
            (
                "https://ci.example.com/hook#",
                "https://ci.example.com/hook#",
            ),
            (
                "https://ci.example.com?key=k",
                "https://ci.example.com?key=***",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        assert_eq!(
            url_userinfo("https://tok@host/x"),
            (Some("tok".to_string()), None)
        );
        assert_eq!(
            url_userinfo("https://u:p@host?q=a@b"),
            (Some("u".to_string()), Some("p".to_string()))
        );
        assert_eq!(url_userinfo("git@host:org/app.git"), (None, None));
    }

    #[test]
    fn secrets_leave_free_text() {
        let url = "https://ghp_0123456789abcdef:x-oauth-basic@github.com/org/app.git";
        let r = UrlRedactor::new(url);
        let text = format!(
            "{url}: failed; retrying https://ghp_0123456789abcdef:x-oauth-basic@github.com/org/other \
             as ghp_0123456789abcdef"
        );
        let out = r.redact(&text);
        assert!(!out.contains("ghp_"), "{out}");
        assert!(!out.contains("x-oauth-basic"), "{out}");
        assert!(
            out.starts_with("https://***@github.com/org/app.git: failed"),
            "{out}"
        );
        assert!(out.contains("https://***@github.com/org/other"), "{out}");

        // Short, conventional user names stay readable outside the URL.
        let r = UrlRedactor::new("https://git@host/x.git");
        assert_eq!(
            r.redact("git says: https://git@host/x.git"),
            "git says: https://***@host/x.git"
        );

        let mut r = UrlRedactor::new("https://ci.example.com/hook?token=0123456789&page=2");
        r.add_secret("tok%2Fen-from-env");
        let out = r.redact(
            "bad token 0123456789 on page=2 (tok/en-from-env, tok%2Fen-from-env) \
             https://ci.example.com/hook?token=0123456789&page=2",
        );
        assert_eq!(
            out,
            "bad token *** on page=2 (***, ***) https://ci.example.com/hook?token=***&page=***"
        );
    }

    #[test]
    fn insecure_ignore_host_key_never_skips_tls_verification() {
        assert!(skips_verification(true, true), "ssh host key, opted out");
        assert!(!skips_verification(true, false), "ssh host key, checked");
        assert!(
            !skips_verification(false, true),
            "TLS certificate, opted out"
        );
        assert!(!skips_verification(false, false), "TLS certificate");
    }

    #[test]
    fn full_shas_are_recognised() {
        assert!(full_sha(&"a".repeat(40)).is_some());
        assert!(full_sha("main").is_none());
        assert!(full_sha(&"g".repeat(40)).is_none());
    }
}
