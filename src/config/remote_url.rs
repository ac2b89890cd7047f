//! What kind of remote `[source] repo` names, decided once from the text:
//! a path on this machine, `git://`, smart http(s), or ssh in either of
//! git's spellings (`ssh://[user@]host[:port]/path` and the scp-like
//! `[user@]host:path`). The config refuses anything else by name, and the
//! ssh transport takes its host, port, user and path from here.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteUrl {
    /// An absolute or relative path, or `file://`.
    Local(PathBuf),
    /// `git://`: libgit2's own transport (no authentication, no encryption).
    Git,
    /// `http://` or `https://`: cutover's smart-http transport.
    Http {
        tls: bool,
    },
    Ssh(SshTarget),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// As git sends it to `git-upload-pack`: absolute for `ssh://host/x`,
    /// as written for `host:x` and `ssh://host/~user/x` (`~user/x`).
    pub path: String,
}

impl RemoteUrl {
    /// Classifies `url`; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<RemoteUrl, String> {
        if let Some((scheme, rest)) = url.split_once("://") {
            return match scheme.to_ascii_lowercase().as_str() {
                "https" => Ok(RemoteUrl::Http { tls: true }),
                "http" => Ok(RemoteUrl::Http { tls: false }),
                "git" => Ok(RemoteUrl::Git),
                "file" => Ok(RemoteUrl::Local(PathBuf::from(rest))),
                "ssh" | "git+ssh" | "ssh+git" => ssh_url(rest).map(RemoteUrl::Ssh),
                other => Err(format!(
                    "unsupported URL scheme `{other}://`: use https://, ssh://, \
                     the scp-like user@host:path, git://, file:// or a path"
                )),
            };
        }
        // git's rule: a colon before any slash makes it scp-like ssh.
        match (url.find(':'), url.find('/')) {
            (Some(colon), slash) if slash.is_none_or(|s| colon < s) => {
                scp_like(url, colon).map(RemoteUrl::Ssh)
            }
            _ => Ok(RemoteUrl::Local(PathBuf::from(url))),
        }
    }
}

fn ssh_url(rest: &str) -> Result<SshTarget, String> {
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if path.len() <= 1 {
        return Err("an ssh URL needs a repository path: ssh://git@host/org/app.git".into());
    }
    let (user, host_port) = split_user(authority);
    let (host, port) = if let Some(inner) = host_port.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("`{host_port}`: unclosed `[` in the host"))?;
        (host, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("`{p}` is not a port number"))?,
        ),
    };
    // `ssh://host/~user/repo` names a path relative to a home directory.
    let path = match path.strip_prefix("/~") {
        Some(home) => format!("~{home}"),
        None => path.to_string(),
    };
    target(user, host, port, path)
}

fn scp_like(url: &str, colon: usize) -> Result<SshTarget, String> {
    let (authority, path) = (&url[..colon], &url[colon + 1..]);
    if path.is_empty() {
        return Err(format!(
            "`{url}` names no repository path after `:` (user@host:org/app.git)"
        ));
    }
    let (user, host) = split_user(authority);
    target(user, host, None, path.to_string())
}

fn split_user(authority: &str) -> (Option<&str>, &str) {
    match authority.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, authority),
    }
}

fn target(
    user: Option<&str>,
    host: &str,
    port: Option<u16>,
    path: String,
) -> Result<SshTarget, String> {
    // ssh would read a leading dash as an option: never let a URL pass one.
    if host.is_empty() || host.starts_with('-') || host.contains(char::is_whitespace) {
        return Err(format!("`{host}` is not a host name"));
    }
    if let Some(u) = user
        && (u.is_empty() || u.starts_with('-') || u.contains(char::is_whitespace))
    {
        return Err(format!("`{u}` is not a user name"));
    }
    if path.contains('\n') || path.contains('\0') {
        return Err("the repository path has a control character".into());
    }
    Ok(SshTarget {
        user: user.map(str::to_string),
        host: host.to_string(),
        port,
        path,
    })
}

/// `path` quoted for the remote shell as git quotes it: in single quotes,
/// with `'` and `!` escaped outside them.
pub fn shell_quote(path: &str) -> String {
    let mut out = String::from("'");
    for c in path.chars() {
        match c {
            '\'' | '!' => {
                out.push('\'');
                out.push('\\');
                out.push(c);
                out.push('\'');
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(url: &str) -> SshTarget {
        match RemoteUrl::parse(url) {
            Ok(RemoteUrl::Ssh(t)) => t,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn both_ssh_spellings_parse_as_git_reads_them() {
        let t = ssh("ssh://git@host.example:2222/org/app.git");
        assert_eq!(t.user.as_deref(), Some("git"));
        assert_eq!((t.host.as_str(), t.port), ("host.example", Some(2222)));
        assert_eq!(t.path, "/org/app.git");
        let t = ssh("git@github.com:org/app.git");
        assert_eq!((t.host.as_str(), t.port), ("github.com", None));
        assert_eq!(t.path, "org/app.git");
        assert_eq!(ssh("ssh://[::1]:22/x").host, "::1");
        assert_eq!(ssh("git+ssh://h/~alice/app.git").path, "~alice/app.git");
        assert_eq!(ssh("host:app.git").user, None);
    }

    #[test]
    fn other_kinds_and_refusals() {
        assert_eq!(
            RemoteUrl::parse("https://h/x.git"),
            Ok(RemoteUrl::Http { tls: true })
        );
        assert_eq!(
            RemoteUrl::parse("/srv/git/app.git"),
            Ok(RemoteUrl::Local("/srv/git/app.git".into()))
        );
        assert_eq!(
            RemoteUrl::parse("./dir:with/colon"),
            Ok(RemoteUrl::Local("./dir:with/colon".into()))
        );
        let err = RemoteUrl::parse("ftp://h/x").unwrap_err();
        assert!(err.contains("unsupported URL scheme `ftp://`"), "{err}");
        assert!(RemoteUrl::parse("ssh://-oProxyCommand=x/y").is_err());
        assert!(RemoteUrl::parse("-oProxyCommand=x:y").is_err());
        assert!(RemoteUrl::parse("ssh://h:99999/x").is_err());
        assert!(RemoteUrl::parse("ssh://h").is_err());
        assert!(RemoteUrl::parse("host:").is_err());
    }

    #[test]
    fn paths_are_quoted_for_the_remote_shell() {
        assert_eq!(shell_quote("/org/app.git"), "'/org/app.git'");
        assert_eq!(shell_quote("it's!"), r"'it'\''s'\!''");
    }
}
