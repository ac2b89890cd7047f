//! Validation of `[source]`, `[hooks]` and `[rollback]`: code that cutover
//! pulls from git itself. Secrets named by `token_env`/`token_file` and the
//! webhook secret are read here, so a missing one is a config error before
//! anything starts.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::problems::{Problems, Segment};
use super::raw::{RawHooks, RawRollback, RawSource};
use super::remote_url::RemoteUrl;
use super::values::{child, env_table, parse_duration, secret};
use super::{ChildEnv, HooksConfig, ReleaseLimits, SourceConfig};

pub(super) fn source(raw: RawSource, p: &mut Problems) -> Option<SourceConfig> {
    let path = [Segment::Key("source".into())];
    let before = p.list.len();
    let repo = raw.repo.filter(|r| !r.trim().is_empty());
    let root = raw.root.map(PathBuf::from);
    check_repo_and_root(&path, repo.is_none(), root.as_deref(), p);
    let git_ref = git_ref(&path, raw.git_ref, p);
    let poll = match raw.poll {
        None => None,
        Some(text) => p
            .check(&child(&path, "poll"), parse_duration(&text))
            .filter(|d| !d.is_zero()),
    };
    let keep = keep(&path, raw.keep, p);
    let insecure_ignore_host_key = raw.insecure_ignore_host_key.unwrap_or(false);
    let kind = repo
        .as_deref()
        .and_then(|r| p.check(&child(&path, "repo"), RemoteUrl::parse(r)));
    let ssh_key = raw.ssh_key.map(PathBuf::from);
    let known_hosts = raw.known_hosts.map(PathBuf::from);
    let ca_file = raw.ca_file.map(PathBuf::from);
    check_key_files(
        &path,
        ssh_key.as_deref(),
        known_hosts.as_deref(),
        ca_file.as_deref(),
        p,
    );
    check_remote_kind(
        &path,
        kind.as_ref(),
        known_hosts.is_some(),
        insecure_ignore_host_key,
        p,
    );
    let token = secret(&path, "token", raw.token_env, raw.token_file, p);
    let webhook_secret = secret(
        &path,
        "webhook_secret",
        raw.webhook_secret_env,
        raw.webhook_secret_file,
        p,
    );
    let webhook = webhook_address(&path, raw.webhook, webhook_secret.is_some(), p);
    let limits = release_limits(
        &path,
        raw.max_files,
        raw.max_bytes,
        raw.max_file_size,
        raw.max_depth,
        p,
    );
    if p.list.len() > before {
        return None;
    }
    Some(SourceConfig {
        repo: repo?,
        git_ref,
        root: root?,
        poll,
        keep,
        depth: raw.depth.unwrap_or(1),
        ssh_key,
        known_hosts,
        insecure_ignore_host_key,
        ca_file,
        username: raw.username,
        token,
        webhook,
        webhook_secret,
        limits,
    })
}

/// `repo` and `root` have no default: without them there is nothing to pull
/// and nowhere to put it.
fn check_repo_and_root(path: &[Segment], no_repo: bool, root: Option<&Path>, p: &mut Problems) {
    if no_repo {
        p.add(
            path,
            "missing key `repo` (a URL or a path to a git repository)",
        );
    }
    match root {
        None => p.add(
            path,
            "missing key `root` (the volume for releases/ and current)",
        ),
        Some(r) if r.is_relative() => p.add(&child(path, "root"), "must be an absolute path"),
        _ => {}
    }
}

/// `ref`, default `main`: anything git could take for a range or two
/// arguments is refused.
fn git_ref(path: &[Segment], raw: Option<String>, p: &mut Problems) -> String {
    let git_ref = raw.unwrap_or_else(|| "main".to_string());
    if git_ref.trim().is_empty() || git_ref.contains("..") || git_ref.contains(' ') {
        p.add(
            &child(path, "ref"),
            format!("`{git_ref}` is not a branch, tag or commit id"),
        );
    }
    git_ref
}

/// `keep`, default 5: a rollback needs the previous release still on disk.
fn keep(path: &[Segment], raw: Option<u32>, p: &mut Problems) -> u32 {
    let keep = raw.unwrap_or(5);
    if keep < 2 {
        p.add(
            &child(path, "keep"),
            "keep at least 2 releases (current and the previous good one)",
        );
    }
    keep
}

/// The files `ssh_key`, `known_hosts` and `ca_file` are read now, so that a
/// wrong one is a config error rather than a failure at the first fetch.
fn check_key_files(
    path: &[Segment],
    ssh_key: Option<&Path>,
    known_hosts: Option<&Path>,
    ca_file: Option<&Path>,
    p: &mut Problems,
) {
    if let Some(k) = ssh_key {
        p.check(&child(path, "ssh_key"), check_ssh_key(k));
    }
    if let Some(k) = known_hosts {
        p.check(&child(path, "known_hosts"), check_known_hosts(k));
    }
    if let Some(ca) = ca_file {
        p.check(
            &child(path, "ca_file"),
            crate::tls::read_ca_file(ca).map_err(|e| {
                let text = e.to_string();
                text.strip_prefix(&format!("ca_file `{}`: ", ca.display()))
                    .map(|why| format!("`{}`: {why}", ca.display()))
                    .unwrap_or(text)
            }),
        );
    }
}

/// What the kind of remote needs: an ssh remote the `ssh` client and the
/// server's host keys; `insecure_ignore_host_key` means nothing for https.
fn check_remote_kind(
    path: &[Segment],
    kind: Option<&RemoteUrl>,
    has_known_hosts: bool,
    insecure_ignore_host_key: bool,
    p: &mut Problems,
) {
    match kind {
        Some(RemoteUrl::Ssh(_)) => {
            if find_in_path("ssh").is_none() {
                p.add(
                    &child(path, "repo"),
                    "an ssh remote needs the OpenSSH client `ssh`, which is not in PATH \
                     (Debian: apt-get install openssh-client)",
                );
            }
            if !has_known_hosts && !insecure_ignore_host_key && !default_known_hosts_exist() {
                p.add(
                    &child(path, "known_hosts"),
                    "no known_hosts for the ssh server: neither ~/.ssh/known_hosts nor \
                     /etc/ssh/ssh_known_hosts exists; set known_hosts to a file with the \
                     server's key (ssh-keyscan HOST > known_hosts, then check its fingerprint)",
                );
            }
        }
        Some(_) if insecure_ignore_host_key => p.add(
            &child(path, "insecure_ignore_host_key"),
            "applies to ssh remotes only: an https certificate is always verified \
             (for a private CA, set ca_file)",
        ),
        _ => {}
    }
}

/// `webhook`: the address to listen on for push notifications, which are
/// only believed when signed, so it needs a secret.
fn webhook_address(
    path: &[Segment],
    webhook: Option<String>,
    has_secret: bool,
    p: &mut Problems,
) -> Option<SocketAddr> {
    let webhook = webhook.and_then(|w| match w.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => Some(addr),
        _ => {
            p.add(
                &child(path, "webhook"),
                format!("`{w}` is not a host:port address"),
            );
            None
        }
    });
    if webhook.is_some() && !has_secret {
        p.add(
            &child(path, "webhook"),
            "a webhook needs a secret: set webhook_secret_env or webhook_secret_file",
        );
    }
    webhook
}

/// `max_files`, `max_bytes`, `max_file_size`, `max_depth`, each defaulting
/// on its own.
fn release_limits(
    path: &[Segment],
    max_files: Option<u64>,
    max_bytes: Option<toml::Value>,
    max_file_size: Option<toml::Value>,
    max_depth: Option<u64>,
    p: &mut Problems,
) -> ReleaseLimits {
    let defaults = ReleaseLimits::default();
    ReleaseLimits {
        files: positive(path, "max_files", max_files, p).unwrap_or(defaults.files),
        bytes: size(path, "max_bytes", max_bytes, p).unwrap_or(defaults.bytes),
        file_size: size(path, "max_file_size", max_file_size, p).unwrap_or(defaults.file_size),
        depth: positive(path, "max_depth", max_depth, p).unwrap_or(defaults.depth),
    }
}

/// A deploy key ssh will take: readable, a private key, and not readable
/// by others (ssh refuses such a key, and says so only at the first fetch).
fn check_ssh_key(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("`{shown}` cannot be read: {e}"))?;
    if text.trim_start().starts_with("ssh-") {
        return Err(format!(
            "`{shown}` is a public key; ssh_key takes the private half (-----BEGIN OPENSSH PRIVATE KEY-----)"
        ));
    }
    if !text.contains("PRIVATE KEY-----") {
        return Err(format!(
            "`{shown}` is not an ssh private key (expected -----BEGIN OPENSSH PRIVATE KEY-----)"
        ));
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("`{shown}`: {e}"))?;
    if meta.uid() == nix::unistd::geteuid().as_raw() && meta.mode() & 0o077 != 0 {
        return Err(format!(
            "`{shown}` is readable by other users (mode {:o}) and ssh refuses such a key: \
             chmod 600 it (on Kubernetes, mount the secret with defaultMode: 0400)",
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

fn check_known_hosts(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("`{shown}` cannot be read: {e}"))?;
    super::known_hosts::check(&text)
        .map(|_| ())
        .map_err(|why| format!("`{shown}` {why}"))
}

fn default_known_hosts_exist() -> bool {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    home.map(|h| h.join(".ssh/known_hosts"))
        .into_iter()
        .chain([PathBuf::from("/etc/ssh/ssh_known_hosts")])
        .any(|f| f.is_file())
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The proxy variables set in cutover's environment, as curl reads them:
/// `(name, value)`.
pub fn proxy_variables() -> Vec<(String, String)> {
    [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .into_iter()
    .filter_map(|name| {
        let value = std::env::var(name).ok()?;
        (!value.trim().is_empty()).then(|| (name.to_string(), value))
    })
    .collect()
}

/// A count that must be at least 1 (0 would refuse every commit).
fn positive(path: &[Segment], key: &str, value: Option<u64>, p: &mut Problems) -> Option<u64> {
    let v = value?;
    if v == 0 {
        p.add(&child(path, key), "must be at least 1");
        return None;
    }
    Some(v)
}

/// A size in bytes: a number, or a string like "512MiB", "2GiB", "100 MB".
fn size(path: &[Segment], key: &str, value: Option<toml::Value>, p: &mut Problems) -> Option<u64> {
    let parsed = match value? {
        toml::Value::Integer(n) if n > 0 => Ok(n as u64),
        toml::Value::String(text) => parse_size(&text),
        other => Err(format!("`{other}` is not a size")),
    };
    p.check(
        &child(path, key),
        parsed.and_then(|n| {
            if n == 0 {
                Err("must be more than 0 bytes".to_string())
            } else {
                Ok(n)
            }
        }),
    )
}

/// "512MiB" -> 536870912; units B, KB/MB/GB/TB (powers of 1000) and
/// KiB/MiB/GiB/TiB (powers of 1024), case-insensitive, a space allowed.
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid size `{text}`; write it like \"512MiB\", \"2GiB\" or a number of bytes")
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1000,
        "mb" | "m" => 1000_u64.pow(2),
        "gb" | "g" => 1000_u64.pow(3),
        "tb" | "t" => 1000_u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

pub(super) fn hooks(raw: Option<RawHooks>, p: &mut Problems) -> HooksConfig {
    let raw = raw.unwrap_or_default();
    let path = [Segment::Key("hooks".into())];
    let mut check = |key: &str, list: &[Vec<String>]| {
        for (i, cmd) in list.iter().enumerate() {
            if cmd.first().is_none_or(|c| c.trim().is_empty()) {
                let at = [child(&path, key), vec![Segment::Index(i)]].concat();
                p.add(&at, "empty command");
            }
        }
    };
    check("before_cutover", &raw.before_cutover);
    check("after_cutover", &raw.after_cutover);
    let timeout = raw
        .timeout
        .and_then(|t| p.check(&child(&path, "timeout"), parse_duration(&t)))
        .unwrap_or(Duration::from_secs(300));
    // The program is looked up, and its user and environment added, once
    // every program is known (`environments::wire_environments`).
    let set = env_table(&child(&path, "env"), raw.env, p);
    HooksConfig {
        before_cutover: raw.before_cutover,
        after_cutover: raw.after_cutover,
        timeout,
        program: raw.program,
        env: ChildEnv {
            set,
            ..ChildEnv::default()
        },
        user: None,
    }
}

pub(super) fn rollback_window(raw: Option<RawRollback>, p: &mut Problems) -> Duration {
    let path = [
        Segment::Key("rollback".into()),
        Segment::Key("window".into()),
    ];
    raw.and_then(|r| r.window)
        .and_then(|w| p.check(&path, parse_duration(&w)))
        .unwrap_or(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("100 MB"), Ok(100_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1kib"), Ok(1024));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("-1GiB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }
}
