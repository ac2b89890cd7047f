//! Code delivery from git: deploys by push, poll, webhook and command;
//! hooks; rollback; history.
//!
//! Every test makes a real repository with the machine's `git` (a work tree
//! and a bare remote, see `tests/fixture/git.rs`), runs the real `cutover` with
//! `apps/fdserver.py` serving the `version` file of the release it runs in,
//! and checks what users get on the app's port, what `current` points to,
//! `cutover status` and `history.jsonl`. The remote is the bare repository's
//! path (watched for pushes), `git daemon` or `apps/git_http.py` on loopback.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::fixture::config::array;
use crate::fixture::git::{Repo, Server, git};
use crate::fixture::prelude::*;

/// A test dir with a repository whose `main` serves v1, and a port.
struct Setup {
    dir: TestDir,
    repo: Repo,
    root: PathBuf,
    port: u16,
    v1: String,
}

impl Setup {
    fn new() -> Setup {
        let dir = TestDir::new();
        let repo = Repo::new(&dir);
        let v1 = repo.release("v1");
        let root = dir.join("srv");
        Setup {
            dir,
            repo,
            root,
            port: free_port(),
            v1,
        }
    }

    /// The bare remote as a plain path (so cutover watches it for pushes).
    fn path_remote(&self) -> String {
        self.repo.remote.display().to_string()
    }

    fn config(&self, repo: &str, source_extra: &str, extra: &str) -> String {
        ConfigToml::deploying(self.port, repo, &self.root, source_extra)
            .raw(extra)
            .to_string()
    }

    /// Runs cutover on `toml` and waits until the app serves v1.
    fn start(&self, toml: &str) -> Cutover {
        self.start_with(toml, &[])
    }

    fn start_with(&self, toml: &str, env: &[(&str, &str)]) -> Cutover {
        let cfg = self.dir.write("cutover.toml", toml);
        let c = Cutover::start_with(
            Mode::Subreaper,
            &self.dir,
            &["run", "-c", cfg.to_str().unwrap()],
            env,
        );
        self.wait_version(&c, "v1");
        wait_for_control(&self.dir);
        c
    }

    fn wait_version(&self, c: &Cutover, version: &str) {
        wait_version(self.port, version, c, SECS_20);
    }

    fn release_dir(&self, sha: &str) -> PathBuf {
        self.root.join("releases").join(sha)
    }

    /// Where `current` points, as stored in the link.
    fn current_link(&self) -> PathBuf {
        std::fs::read_link(self.root.join("current")).expect("current is a symlink")
    }

    /// The release directories present.
    fn releases(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.root.join("releases"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn history(&self) -> Vec<Value> {
        history(&self.root)
    }

    /// Waits until history.jsonl holds `n` lines; returns them.
    fn wait_history(&self, c: &Cutover, n: usize) -> Vec<Value> {
        wait_for(SECS_20, || {
            let h = self.history();
            (h.len() >= n).then_some(h)
        })
        .unwrap_or_else(|| {
            panic!(
                "history never reached {n} lines: {:?}\n--- stderr ---\n{}",
                self.history(),
                c.stderr()
            )
        })
    }
}

pub(crate) fn history(root: &Path) -> Vec<Value> {
    std::fs::read_to_string(root.join("history.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("history lines are JSON"))
        .collect()
}

/// `[source]` part of the status of the cutover in `dir`.
fn source_status(dir: &TestDir) -> Value {
    status(dir)["source"].clone()
}

/// A hook script that appends `<label>|<pwd -P>|$CUTOVER_RELEASE_DIR|
/// $CUTOVER_SHA|$CUTOVER_PREVIOUS_SHA` to `record`, says hello on stdout,
/// and fails when the release has a file `fail-hook`.
fn hook_script(dir: &TestDir) -> PathBuf {
    dir.write(
        "hook.sh",
        r#"#!/bin/sh
printf '%s|%s|%s|%s|%s\n' "$1" "$(pwd -P)" "$CUTOVER_RELEASE_DIR" "$CUTOVER_SHA" "$CUTOVER_PREVIOUS_SHA" >> "$2"
echo "hello from the $1 hook"
if [ -e fail-hook ]; then
    echo "refusing: fail-hook present" >&2
    exit 7
fi
"#,
    )
}

/// The `[hooks]` section running the recording hook script before and
/// after the cutover, and the file it records to.
fn hooks_config(dir: &TestDir) -> (String, PathBuf) {
    let script = hook_script(dir).display().to_string();
    let record = dir.join("hooks.log");
    let cmd = |label: &str| {
        format!(
            "[{}]",
            array(&["sh", &script, label, record.to_str().unwrap()])
        )
    };
    let hooks = ConfigToml::new().section(
        "hooks",
        &format!(
            "before_cutover = {}\nafter_cutover = {}\ntimeout = \"10s\"",
            cmd("before"),
            cmd("after")
        ),
    );
    (hooks.to_string(), record)
}

fn hook_lines(record: &Path) -> Vec<String> {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn first_start_fetches_writes_the_release_and_serves_it() {
    let s = Setup::new();
    let c = s.start(&s.config(&s.path_remote(), "", ""));

    assert_eq!(s.current_link(), Path::new("releases").join(&s.v1));
    assert!(
        s.release_dir(&s.v1).join("version").is_file(),
        "{:?}",
        s.releases()
    );
    assert_eq!(
        s.releases(),
        BTreeSet::from([s.v1.clone()]),
        "nothing but the release"
    );
    let src = source_status(&s.dir);
    assert_eq!(src["current"], s.v1.as_str(), "{src}");
    assert_eq!(src["git_ref"], "main");
    assert!(src["last_error"].is_null(), "{src}");
    let h = s.history();
    assert_eq!(h.len(), 1, "{h:?}\n{}", c.stderr());
    assert_eq!(h[0]["outcome"], "deployed");
    assert_eq!(h[0]["sha"], s.v1.as_str());
    assert_eq!(h[0]["trigger"], "first start");
    assert!(h[0]["previous"].is_null());
    // The app runs in the release, reached through `current`.
    let release = status(&s.dir)["programs"][0]["release"].clone();
    assert!(
        release
            .as_str()
            .unwrap()
            .ends_with(&format!("releases/{}", s.v1)),
        "{release}"
    );
}

#[test]
fn restart_serves_the_old_release_at_once_while_the_remote_is_unreachable() {
    let s = Setup::new();
    let toml = s.config(&s.path_remote(), "", "");
    let mut c = s.start(&toml);
    c.signal(libc::SIGTERM);
    c.wait(SECS_20);
    drop(c);

    let away = s.dir.join("moved-away.git");
    std::fs::rename(&s.repo.remote, &away).unwrap();
    let started = Instant::now();
    let c = s.start(&toml);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?} to serve the existing release",
        started.elapsed()
    );
    let src = wait_for(SECS_20, || {
        let src = source_status(&s.dir);
        (!src["last_error"].is_null()).then_some(src)
    })
    .unwrap_or_else(|| panic!("no error in status\n{}", c.stderr()));
    assert_eq!(src["current"], s.v1.as_str(), "{src}");
    let error = src["last_error"].as_str().unwrap();
    assert!(error.contains("remote.git"), "{error}");
    assert!(src["retry_in_seconds"].is_number(), "{src}");
    let (code, text, _) = client(&s.dir, &["status"]);
    assert_eq!(code, 0);
    assert!(text.contains("last error:"), "{text}");
    assert_eq!(served_version(s.port).unwrap(), "v1");
    let h = s.history();
    assert_eq!(h.last().unwrap()["outcome"], "failed", "{h:?}");
}

#[test]
fn git_push_into_the_local_bare_repo_deploys_and_runs_the_hooks() {
    let s = Setup::new();
    let (hooks, record) = hooks_config(&s.dir);
    let c = s.start(&s.config(&s.path_remote(), "", &hooks));
    // The first deploy ran the hooks too, with no previous release.
    let first = hook_lines(&record);
    let dir1 = s.release_dir(&s.v1);
    let real1 = std::fs::canonicalize(&dir1).unwrap();
    assert_eq!(
        first,
        [
            format!("before|{}|{}|{}|", real1.display(), dir1.display(), s.v1),
            format!("after|{}|{}|{}|", real1.display(), dir1.display(), s.v1),
        ],
        "{}",
        c.stderr()
    );
    c.wait_for_log("watching the repository for pushes", SECS_20);

    let pushed = Instant::now();
    let v2 = s.repo.release("v2");
    s.wait_version(&c, "v2");
    let took = pushed.elapsed();
    let h = s.wait_history(&c, 2);
    assert_eq!(h[1]["trigger"], "push", "{h:?}");
    assert_eq!(h[1]["outcome"], "deployed");
    assert_eq!(h[1]["sha"], v2.as_str());
    assert_eq!(h[1]["previous"], s.v1.as_str());
    assert!(took < Duration::from_secs(10), "push to v2 took {took:?}");

    let dir2 = s.release_dir(&v2);
    let real2 = std::fs::canonicalize(&dir2).unwrap();
    let lines = wait_for(SECS_20, || {
        let l = hook_lines(&record);
        (l.len() >= 4).then_some(l)
    })
    .unwrap();
    assert_eq!(
        lines[2..],
        [
            format!(
                "before|{}|{}|{v2}|{}",
                real2.display(),
                dir2.display(),
                s.v1
            ),
            format!("after|{}|{}|{v2}|{}", real2.display(), dir2.display(), s.v1),
        ],
        "{}",
        c.stderr()
    );
    assert_eq!(s.current_link(), Path::new("releases").join(&v2));
    // Hook output is in cutover's log under the hook's name.
    let log = c.stderr();
    for (hook, line) in [
        ("before_cutover[0]", "hello from the before hook"),
        ("after_cutover[0]", "hello from the after hook"),
    ] {
        assert!(
            log.lines().any(|l| l.contains(&format!("{hook}: {line}"))),
            "no `{hook}: {line}` in\n{log}"
        );
    }
}

#[test]
fn a_failing_before_cutover_hook_keeps_the_old_release_and_is_not_retried() {
    let s = Setup::new();
    let (hooks, record) = hooks_config(&s.dir);
    // Polling as well as the push watch: neither may retry the failed sha.
    let c = s.start(&s.config(&s.path_remote(), "poll = \"200ms\"", &hooks));
    c.wait_for_log("watching the repository for pushes", SECS_20);

    let bad = s.repo.commit(
        "v2 with a failing hook",
        &[("version", "v2"), ("fail-hook", "")],
    );
    s.repo.push();
    let h = s.wait_history(&c, 2);
    assert_eq!(h[1]["outcome"], "failed", "{h:?}");
    assert_eq!(h[1]["sha"], bad.as_str());
    let error = h[1]["error"].as_str().unwrap();
    assert!(
        error.contains("before_cutover[0]") && error.contains("old release keeps serving"),
        "{error}"
    );
    assert_eq!(s.current_link(), Path::new("releases").join(&s.v1));
    assert_eq!(served_version(s.port).unwrap(), "v1");
    assert!(
        c.stderr().contains("refusing: fail-hook present"),
        "the hook's stderr is logged too\n{}",
        c.stderr()
    );

    // Several polls later the hook has still run once for that commit.
    std::thread::sleep(Duration::from_millis(1500));
    let runs = hook_lines(&record)
        .iter()
        .filter(|l| l.starts_with("before|") && l.contains(&bad))
        .count();
    assert_eq!(runs, 1, "{:?}\n{}", hook_lines(&record), c.stderr());
    assert!(
        hook_lines(&record)
            .iter()
            .all(|l| !l.starts_with("after|") || !l.contains(&bad)),
        "after_cutover must not run for an aborted cutover"
    );
    assert_eq!(s.history().len(), 2, "{:?}", s.history());
    assert_eq!(served_version(s.port).unwrap(), "v1");
    assert_eq!(source_status(&s.dir)["current"], s.v1.as_str());

    // Once the ref moves on, the next commit deploys.
    git(&s.repo.work, &["rm", "-q", "fail-hook"]);
    let v3 = s.repo.release("v3");
    s.wait_version(&c, "v3");
    assert_eq!(s.current_link(), Path::new("releases").join(&v3));
}

#[test]
fn polling_a_git_daemon_deploys_only_when_the_ref_moves() {
    let s = Setup::new();
    let daemon = Server::daemon(s.dir.path());
    let url = format!("{}/remote.git", daemon.url);
    let c = s.start(&s.config(&url, "poll = \"250ms\"", ""));
    let fetched = s.root.join(".cutover/cache.git/refs/cutover/fetched");
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let before = stamp(&fetched);
    assert!(before.is_some(), "the first deploy fetched into the cache");

    // Polls with nothing new: checked, not fetched, not deployed.
    let first_check = wait_for(SECS_20, || {
        source_status(&s.dir)["last_check"]
            .as_str()
            .map(str::to_string)
    })
    .unwrap();
    let later_check = wait_for(SECS_20, || {
        let now = source_status(&s.dir)["last_check"].as_str()?.to_string();
        (now != first_check).then_some(now)
    })
    .unwrap_or_else(|| panic!("no poll happened\n{}", c.stderr()));
    std::thread::sleep(Duration::from_millis(800));
    let st = status(&s.dir);
    assert_ne!(
        st["source"]["last_check"],
        later_check.as_str(),
        "polls go on"
    );
    assert_eq!(s.history().len(), 1, "{:?}", s.history());
    assert_eq!(st["reload"]["reloads"], 0, "{st}");
    assert_eq!(stamp(&fetched), before, "nothing was fetched");
    assert!(st["source"]["last_error"].is_null(), "{st}");

    let v2 = s.repo.release("v2");
    s.wait_version(&c, "v2");
    let h = s.wait_history(&c, 2);
    assert_eq!(h[1]["trigger"], "poll", "{h:?}");
    assert_eq!(h[1]["sha"], v2.as_str());
    assert_eq!(s.current_link(), Path::new("releases").join(&v2));
    assert_stays(
        "no deploy or reload after the one the poll made",
        Duration::from_millis(800),
        || s.history().len() == 2 && status(&s.dir)["reload"]["reloads"] == 1,
    );
}

/// One HTTP/1.1 POST; (status code, body).
pub(crate) fn http_post(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    s.write_all(request.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.to_string())
}

/// The status code of a GET.
fn http_get_code(port: u16, path: &str) -> u16 {
    match http_get(port, path) {
        Ok(_) => 200,
        Err(e) => e
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or(0),
    }
}

const WEBHOOK_SECRET: &str = "webhook secret for the tests";

pub(crate) fn push_body(git_ref: &str, after: &str) -> Vec<u8> {
    serde_json::json!({
        "ref": git_ref,
        "before": "0".repeat(40),
        "after": after,
        "repository": {"full_name": "acme/app"},
    })
    .to_string()
    .into_bytes()
}

pub(crate) fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[test]
fn webhooks_deploy_only_signed_pushes_of_the_followed_ref() {
    let s = Setup::new();
    // A network remote, so no push watch deploys behind the webhooks' back.
    let daemon = Server::daemon(s.dir.path());
    let url = format!("{}/remote.git", daemon.url);
    let (http, hook_port) = (free_port(), free_port());
    let c = s.start_with(
        &s.config(
            &url,
            &format!(
                "webhook_secret_env = \"TEST_WEBHOOK_SECRET\"\nwebhook = \"127.0.0.1:{hook_port}\""
            ),
            &format!("[control]\nhttp = \"127.0.0.1:{http}\""),
        ),
        &[("TEST_WEBHOOK_SECRET", WEBHOOK_SECRET)],
    );
    // The first deploy is followed by a check once the actor runs; wait
    // until that one is done too (last_check stops moving).
    let settled = wait_settled(&s.dir);
    let v2 = s.repo.release("v2");
    let main = push_body("refs/heads/main", &v2);
    let signed = github_signature(WEBHOOK_SECRET, &main);
    let github = |signature: Option<&str>, body: &[u8]| {
        let mut headers = vec![("X-GitHub-Event", "push")];
        headers.extend(signature.map(|s| ("X-Hub-Signature-256", s)));
        http_post(http, "/webhook", &headers, body)
    };

    let wrong = github_signature("not the secret", &main);
    let (code, body) = github(Some(&wrong), &main);
    assert_eq!(code, 401, "{body}");
    let (code, body) = github(None, &main);
    assert_eq!(code, 401, "{body}");
    let (code, body) = http_post(
        http,
        "/webhook",
        &[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "guess")],
        &main,
    );
    assert_eq!(code, 401, "{body}");
    let other = push_body("refs/heads/other", &v2);
    let (code, body) = github(Some(&github_signature(WEBHOOK_SECRET, &other)), &other);
    assert_eq!(code, 202, "{body}");
    assert!(body.contains("ignored"), "{body}");
    // None of these started a deploy: the remote was not even looked at.
    std::thread::sleep(Duration::from_millis(500));
    let src = source_status(&s.dir);
    assert_eq!(src["last_check"], settled.as_str(), "{src}");
    assert_eq!(s.history().len(), 1);
    assert_eq!(served_version(s.port).unwrap(), "v1");

    // A GitHub delivery signed with the secret deploys.
    let (code, body) = github(Some(&signed), &main);
    assert_eq!(code, 202, "{body}");
    s.wait_version(&c, "v2");
    let h = s.wait_history(&c, 2);
    assert_eq!(h[1]["trigger"], "webhook (GitHub)", "{h:?}");
    assert_eq!(h[1]["sha"], v2.as_str());

    // GitLab on the webhook-only listener.
    let v3 = s.repo.release("v3");
    let main = push_body("refs/heads/main", &v3);
    let (code, body) = http_post(
        hook_port,
        "/webhook",
        &[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", WEBHOOK_SECRET),
        ],
        &main,
    );
    assert_eq!(code, 202, "{body}");
    s.wait_version(&c, "v3");
    let h = s.wait_history(&c, 3);
    assert_eq!(h[2]["trigger"], "webhook (GitLab)", "{h:?}");
    assert_eq!(h[2]["sha"], v3.as_str());

    // The webhook listener serves nothing else; [control] http does.
    assert_eq!(http_get_code(hook_port, "/status"), 404);
    assert_eq!(http_get_code(hook_port, "/healthz"), 404);
    assert_eq!(http_get_code(http, "/status"), 200);
    let (code, _) = http_post(hook_port, "/status", &[], b"{}");
    assert_eq!(code, 404);
}

#[test]
fn deploy_and_rollback_commands_move_current_and_are_recorded() {
    let s = Setup::new();
    // A network remote and no poll: only the commands deploy.
    let daemon = Server::daemon(s.dir.path());
    let url = format!("{}/remote.git", daemon.url);
    let c = s.start(&s.config(&url, "", ""));
    let v2 = s.repo.release("v2");
    let v3 = s.repo.release("v3");
    assert_stays("nothing deploys alone", Duration::from_millis(300), || {
        served_version(s.port).is_ok_and(|v| v == "v1")
    });

    let (code, out, err) = client(&s.dir, &["deploy", "--wait"]);
    assert_eq!(code, 0, "{out}{err}\n{}", c.stderr());
    assert!(
        out.starts_with(&format!("deployed {v3} in ")) && out.contains("(deploy command)"),
        "{out}"
    );
    assert_eq!(
        served_version(s.port).unwrap(),
        "v3",
        "--wait returns after the cutover"
    );

    // An explicit older commit, which the shallow cache does not hold.
    let (code, out, err) = client(&s.dir, &["deploy", &v2, "--wait"]);
    assert_eq!(code, 0, "{out}{err}\n{}", c.stderr());
    assert!(out.starts_with(&format!("deployed {v2} in ")), "{out}");
    assert_eq!(served_version(s.port).unwrap(), "v2");
    assert_eq!(s.current_link(), Path::new("releases").join(&v2));

    // Deploying what runs changes nothing.
    let (code, out, err) = client(&s.dir, &["deploy", &v2, "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with(&format!("unchanged {v2}")), "{out}");

    let (code, out, err) = client(&s.dir, &["deploy", "no-such-branch", "--wait"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("deploy failed") && err.contains("no-such-branch"),
        "{err}"
    );
    assert_eq!(served_version(s.port).unwrap(), "v2");

    // Back to the previous release (v3).
    let (code, out, err) = client(&s.dir, &["rollback", "--wait"]);
    assert_eq!(code, 0, "{out}{err}\n{}", c.stderr());
    assert!(
        out.starts_with(&format!("rolled-back {v3} in ")) && out.contains("(rollback command)"),
        "{out}"
    );
    assert_eq!(served_version(s.port).unwrap(), "v3");
    assert_eq!(s.current_link(), Path::new("releases").join(&v3));
    let src = source_status(&s.dir);
    assert_eq!(src["bad"], serde_json::json!([v2]), "{src}");

    // A rollback consumes the previous release; a second one has nowhere to go.
    let (code, out, err) = client(&s.dir, &["rollback", "--wait"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("no previous release"), "{err}");
    assert_eq!(served_version(s.port).unwrap(), "v3");

    // To a kept release named by its abbreviated sha.
    let (code, out, err) = client(&s.dir, &["rollback", "--to", &s.v1[..12], "--wait"]);
    assert_eq!(code, 0, "{out}{err}\n{}", c.stderr());
    assert!(
        out.starts_with(&format!("rolled-back {} in ", s.v1)),
        "{out}"
    );
    assert_eq!(served_version(s.port).unwrap(), "v1");
    assert_eq!(s.current_link(), Path::new("releases").join(&s.v1));
    // And by its full sha.
    let (code, out, err) = client(&s.dir, &["rollback", "--to", &v3, "--wait"]);
    assert_eq!(code, 0, "{out}{err}\n{}", c.stderr());
    assert_eq!(served_version(s.port).unwrap(), "v3");

    let h = s.history();
    let summary: Vec<(String, String, String)> = h
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or("-").to_string();
            (text("outcome"), text("sha"), text("trigger"))
        })
        .collect();
    let expected = [
        ("deployed", s.v1.as_str(), "first start"),
        ("deployed", v3.as_str(), "deploy command"),
        ("deployed", v2.as_str(), "deploy command"),
        ("failed", "-", "deploy command"),
        ("rolled-back", v3.as_str(), "rollback command"),
        ("rolled-back", s.v1.as_str(), "rollback command"),
        ("rolled-back", v3.as_str(), "rollback command"),
    ]
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()));
    assert_eq!(summary, expected);

    let (code, text, _) = client(&s.dir, &["status"]);
    assert_eq!(code, 0);
    assert!(
        text.contains(&format!("current {v3}")),
        "status shows what runs:\n{text}"
    );
    for needle in [
        format!("rolled-back {} by rollback command", &v3[..12]),
        format!("rolled-back {} by rollback command", &s.v1[..12]),
        format!("deployed    {} by deploy command", &v2[..12]),
    ] {
        assert!(text.contains(&needle), "no {needle:?} in\n{text}");
    }
}

#[test]
fn keep_two_prunes_old_releases_but_never_current_or_previous() {
    let s = Setup::new();
    let c = s.start(&s.config(&s.path_remote(), "keep = 2", ""));
    c.wait_for_log("watching the repository for pushes", SECS_20);
    let mut shas = vec![s.v1.clone()];
    for (n, version) in ["v2", "v3", "v4"].into_iter().enumerate() {
        let sha = s.repo.release(version);
        s.wait_version(&c, version);
        s.wait_history(&c, n + 2);
        let previous = shas.last().unwrap().clone();
        shas.push(sha.clone());
        assert_eq!(
            s.releases(),
            BTreeSet::from([previous.clone(), sha.clone()]),
            "after {version}"
        );
        assert_eq!(source_status(&s.dir)["previous"], previous.as_str());
    }
    // The previous release is really there to roll back to.
    let (code, out, err) = client(&s.dir, &["rollback", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(served_version(s.port).unwrap(), "v3");
    assert!(c.stderr().contains("removed old release"));
}

const TOKEN: &str = "tok-3f9a1c77e2b04d55";

/// Whether `secret` appears anywhere in the files under `root`.
pub(crate) fn files_containing(root: &Path, secret: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file()
                && std::fs::read(&path)
                    .unwrap()
                    .windows(secret.len())
                    .any(|w| w == secret.as_bytes())
            {
                found.push(path);
            }
        }
    }
    found
}

/// Deploys over smart HTTP with Basic auth, then makes the remote fail, and
/// looks for `secret` in every place cutover writes to.
fn secrets_stay_out_of_logs_status_and_history(repo_in_url: bool) {
    let s = Setup::new();
    let server = Server::http(&s.dir, s.dir.path(), Some(("deploy", TOKEN)));
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let (repo, extra, env) = if repo_in_url {
        let url = format!("http://deploy:{TOKEN}@127.0.0.1:{port}/remote.git");
        (url, "poll = \"250ms\"".to_string(), vec![])
    } else {
        let url = format!("{}/remote.git", server.url);
        let extra = "poll = \"250ms\"\nusername = \"deploy\"\ntoken_env = \"TEST_GIT_TOKEN\"";
        (url, extra.to_string(), vec![("TEST_GIT_TOKEN", TOKEN)])
    };
    let c = s.start_with(&s.config(&repo, &extra, ""), &env);
    let v2 = s.repo.release("v2");
    s.wait_version(&c, "v2");
    assert_eq!(s.current_link(), Path::new("releases").join(&v2));

    // Errors name the remote: make some.
    drop(server);
    let src = wait_for(SECS_20, || {
        let src = source_status(&s.dir);
        (!src["last_error"].is_null()).then_some(src)
    })
    .unwrap_or_else(|| panic!("the dead remote never showed\n{}", c.stderr()));
    let error = src["last_error"].as_str().unwrap();
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    if repo_in_url {
        assert_eq!(
            src["repo"],
            // The whole userinfo: the user name may be a token too.
            format!("http://***@127.0.0.1:{port}/remote.git")
        );
    }
    let (_, json, _) = client(&s.dir, &["status", "--json"]);
    let (_, text, _) = client(&s.dir, &["status"]);
    let history = std::fs::read_to_string(s.root.join("history.jsonl")).unwrap();
    assert!(history.lines().count() >= 3, "{history}");
    for (what, content) in [
        ("stderr", c.stderr()),
        ("status --json", json),
        ("status", text),
        ("history.jsonl", history),
    ] {
        assert!(
            !content.contains(TOKEN),
            "the secret is in {what}:\n{content}"
        );
    }
    assert_eq!(
        files_containing(&s.root, TOKEN),
        Vec::<PathBuf>::new(),
        "the secret is on the volume"
    );
}

#[test]
fn a_token_from_the_environment_never_shows() {
    secrets_stay_out_of_logs_status_and_history(false);
}

#[test]
fn a_password_in_the_repo_url_never_shows() {
    secrets_stay_out_of_logs_status_and_history(true);
}

/// Without `[source]`, the host updates the code (`git pull` in the volume)
/// and touches the reload file: that keeps working.
#[test]
fn a_code_volume_without_source_reloads_on_git_pull_and_touch() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    repo.release("v1");
    let checkout = dir.join("app");
    git(
        dir.path(),
        &["clone", "-q", repo.remote.to_str().unwrap(), "app"],
    );
    let port = free_port();
    let touch = dir.join("reload");
    let c = Cutover::run_config(
        Mode::Subreaper,
        &dir,
        &format!(
            r#"[[listen]]
address = "127.0.0.1:{port}"

[app]
command = ["python3", "{server}"]
workdir = "{checkout}"

[reload]
touch = ["{touch}"]

[ready]
http = "http://127.0.0.1:{port}/healthz"
grace = "100ms"
"#,
            server = app("fdserver.py"),
            checkout = checkout.display(),
            touch = touch.display(),
        ),
    );
    let served = |v: &str| {
        wait_for(SECS_20, || (served_version(port).ok()? == v).then_some(()))
            .unwrap_or_else(|| panic!("never served {v}\n{}", c.stderr()))
    };
    served("v1");
    repo.release("v2");
    git(&checkout, &["pull", "-q", "--ff-only"]);
    std::fs::write(&touch, "").unwrap();
    served("v2");
    assert!(status(&dir)["source"].is_null());
}
