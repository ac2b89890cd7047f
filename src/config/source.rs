//! Validation of `[source]`, `[hooks]` and `[rollback]`: code that cutover
//! pulls from git itself. Secrets named by `token_env`/`token_file` and the
//! webhook secret are read here, so a missing one is a config error before
//! anything starts.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

use super::problems::{Problems, Segment};
use super::raw::{RawHooks, RawRollback, RawSource};
use super::values::{child, parse_duration, secret};
use super::{HooksConfig, SourceConfig};

pub(super) fn source(raw: RawSource, p: &mut Problems) -> Option<SourceConfig> {
    let path = [Segment::Key("source".into())];
    let before = p.list.len();
    let repo = raw.repo.filter(|r| !r.trim().is_empty());
    if repo.is_none() {
        p.add(
            &path,
            "missing key `repo` (a URL or a path to a git repository)",
        );
    }
    let root = raw.root.map(PathBuf::from);
    match &root {
        None => p.add(
            &path,
            "missing key `root` (the volume for releases/ and current)",
        ),
        Some(r) if r.is_relative() => p.add(&child(&path, "root"), "must be an absolute path"),
        _ => {}
    }
    let git_ref = raw.git_ref.unwrap_or_else(|| "main".to_string());
    if git_ref.trim().is_empty() || git_ref.contains("..") || git_ref.contains(' ') {
        p.add(
            &child(&path, "ref"),
            format!("`{git_ref}` is not a branch, tag or commit id"),
        );
    }
    let poll = match raw.poll {
        None => None,
        Some(text) => p
            .check(&child(&path, "poll"), parse_duration(&text))
            .filter(|d| !d.is_zero()),
    };
    let keep = raw.keep.unwrap_or(5);
    if keep < 2 {
        p.add(
            &child(&path, "keep"),
            "keep at least 2 releases (current and the previous good one)",
        );
    }
    let ssh_key = raw.ssh_key.map(PathBuf::from);
    if let Some(k) = &ssh_key
        && !k.is_file()
    {
        p.add(
            &child(&path, "ssh_key"),
            format!("`{}` is not a readable file", k.display()),
        );
    }
    let token = secret(&path, "token", raw.token_env, raw.token_file, p);
    let webhook_secret = secret(
        &path,
        "webhook_secret",
        raw.webhook_secret_env,
        raw.webhook_secret_file,
        p,
    );
    let webhook = raw
        .webhook
        .and_then(|w| match w.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => Some(addr),
            _ => {
                p.add(
                    &child(&path, "webhook"),
                    format!("`{w}` is not a host:port address"),
                );
                None
            }
        });
    if webhook.is_some() && webhook_secret.is_none() {
        p.add(
            &child(&path, "webhook"),
            "a webhook needs a secret: set webhook_secret_env or webhook_secret_file",
        );
    }
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
        insecure_ignore_host_key: raw.insecure_ignore_host_key.unwrap_or(false),
        username: raw.username,
        token,
        webhook,
        webhook_secret,
    })
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
    HooksConfig {
        before_cutover: raw.before_cutover,
        after_cutover: raw.after_cutover,
        timeout,
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
