//! Code delivery from git when things go wrong: unreachable remotes, bad
//! credentials, deleted refs, releases that fail readiness or crash soon
//! after the cutover, cutover killed mid-deploy, damaged volumes, concurrent
//! triggers, symlinks pointing out of a release, and bad `[source]` configs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::fixture::git::{Repo, Server, git};
use crate::fixture::prelude::*;

fn start(mode: Mode, dir: &TestDir, toml: &str, env: &[(&str, &str)]) -> Cutover {
    let cfg = dir.write("cutover.toml", toml);
    Cutover::start_with(mode, dir, &["run", "-c", cfg.to_str().unwrap()], env)
}

fn source_status(dir: &TestDir) -> Value {
    status(dir)["source"].clone()
}

/// Every line of `<root>/history.jsonl`.
fn history(root: &Path) -> Vec<Value> {
    std::fs::read_to_string(root.join("history.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn is_bad(dir: &TestDir, sha: &str) -> bool {
    source_status(dir)["bad"]
        .as_array()
        .is_some_and(|b| b.iter().any(|s| s == sha))
}

/// Runs cutover once so that `current` holds v1 from `url`, then stops it.
fn deploy_v1_and_stop(mode: Mode, dir: &TestDir, toml: &str, env: &[(&str, &str)], port: u16) {
    let c = start(mode, dir, toml, env);
    wait_version(port, "v1", &c, SECS_20);
    drop(c);
    // The held socket is closed once every process of that cutover is gone.
    wait_for(SECS_20, || served_version(port).is_err().then_some(()))
        .expect("the first cutover kept serving after it was killed");
}

/// Restarted with a broken remote: v1 serves at once, the status says why
/// the remote failed and when it retries, the backoff doubles; `fix` then
/// lets the next retry deploy v2. Returns the last error seen.
fn serves_old_code_and_retries(
    c: &Cutover,
    dir: &TestDir,
    port: u16,
    root: &Path,
    v1: &str,
    v2: &str,
    fix: impl FnOnce(),
) -> String {
    wait_version(port, "v1", c, SECS_20);
    let src = wait_for(SECS_20, || {
        let s = source_status(dir);
        s["last_error"].is_string().then_some(s)
    })
    .unwrap_or_else(|| panic!("no error reported\n{}", c.stderr()));
    let error = src["last_error"].as_str().unwrap().to_string();
    let retry = src["retry_in_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("no retry planned: {src}"));
    assert!(retry <= 2.0, "the backoff starts at 1 s: {src}");
    assert_eq!(src["current"], v1, "{src}");
    // The first retry fails as well and doubles the delay.
    c.wait_for_log("retry_in=2s", SECS_20);
    assert_eq!(served_version(port).unwrap(), "v1");
    assert_eq!(current_sha(root).as_deref(), Some(v1));
    fix();
    wait_version(port, "v2", c, SECS_20);
    let src = wait_for(SECS_20, || {
        let s = source_status(dir);
        (s["current"] == v2).then_some(s)
    })
    .unwrap();
    assert!(src["last_error"].is_null(), "{src}");
    assert!(src["retry_in_seconds"].is_null(), "{src}");
    error
}

// ---- 1. the remote fails ---------------------------------------------------

#[test]
fn unreachable_daemon_keeps_serving_and_retries_until_it_is_back() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    let v1 = repo.release("v1");
    let daemon = Server::daemon(dir.path());
    let daemon_port = daemon.port();
    let root = dir.join("srv");
    let port = free_port();
    let url = format!("{}/remote.git", daemon.url);
    let toml = ConfigToml::deploying_overlap(port, &url, &root, "").to_string();
    deploy_v1_and_stop(Mode::Pid1, &dir, &toml, &[], port);

    daemon.stop();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", daemon_port)).is_err(),
        "the daemon is down"
    );
    let v2 = repo.release("v2");
    let c = start(Mode::Pid1, &dir, &toml, &[]);
    let mut revived = None;
    let error = serves_old_code_and_retries(&c, &dir, port, &root, &v1, &v2, || {
        revived = Some(Server::daemon_on(dir.path(), daemon_port));
    });
    assert!(
        error.contains(&format!("127.0.0.1:{daemon_port}")),
        "the error names the remote: {error}"
    );
}

#[test]
fn a_remote_path_that_disappears_keeps_serving_and_retries() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    let v1 = repo.release("v1");
    let root = dir.join("srv");
    let port = free_port();
    let toml =
        ConfigToml::deploying_overlap(port, repo.remote.to_str().unwrap(), &root, "").to_string();
    deploy_v1_and_stop(Mode::Subreaper, &dir, &toml, &[], port);

    let v2 = repo.release("v2");
    let away = dir.join("moved-away.git");
    std::fs::rename(&repo.remote, &away).unwrap();
    let c = start(Mode::Subreaper, &dir, &toml, &[]);
    let error = serves_old_code_and_retries(&c, &dir, port, &root, &v1, &v2, || {
        std::fs::rename(&away, &repo.remote).unwrap();
    });
    assert!(
        error.contains("remote.git") && error.contains("does not exist"),
        "{error}"
    );
}

#[test]
fn wrong_credentials_are_reported_without_the_secret_and_retried() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    let v1 = repo.release("v1");
    let right = "s3cret-right-token";
    let wrong = "wr0ng-t0ken-value";
    let server = Server::http(&dir, dir.path(), Some(("deploy", right)));
    let http_port = server.port();
    let root = dir.join("srv");
    let port = free_port();
    let url = format!("{}/remote.git", server.url);
    let toml = ConfigToml::deploying_overlap(
        port,
        &url,
        &root,
        "username = \"deploy\"\ntoken_env = \"CUTOVER_TEST_TOKEN\"",
    )
    .to_string();
    deploy_v1_and_stop(
        Mode::Subreaper,
        &dir,
        &toml,
        &[("CUTOVER_TEST_TOKEN", right)],
        port,
    );

    let v2 = repo.release("v2");
    let c = start(
        Mode::Subreaper,
        &dir,
        &toml,
        &[("CUTOVER_TEST_TOKEN", wrong)],
    );
    let mut server = Some(server);
    let error = serves_old_code_and_retries(&c, &dir, port, &root, &v1, &v2, || {
        // The server side rotates to the token cutover holds.
        drop(server.take());
        server = Some(Server::http_on(
            &dir,
            dir.path(),
            Some(("deploy", wrong)),
            http_port,
        ));
    });
    assert!(
        error.to_lowercase().contains("auth"),
        "the error says why: {error}"
    );
    let shown = format!(
        "{}\n{}\n{}",
        status(&dir),
        c.stderr(),
        std::fs::read_to_string(root.join("history.jsonl")).unwrap()
    );
    for secret in [right, wrong] {
        assert!(!shown.contains(secret), "secret {secret} leaked:\n{shown}");
    }
}

#[test]
fn a_deleted_ref_keeps_serving_and_deploys_once_it_is_back() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    let v1 = repo.release("v1");
    let daemon = Server::daemon(dir.path());
    let root = dir.join("srv");
    let port = free_port();
    let url = format!("{}/remote.git", daemon.url);
    let toml = ConfigToml::deploying_overlap(port, &url, &root, "").to_string();
    deploy_v1_and_stop(Mode::Subreaper, &dir, &toml, &[], port);

    let v2 = repo.release("v2");
    git(&repo.remote, &["update-ref", "-d", "refs/heads/main"]);
    let c = start(Mode::Subreaper, &dir, &toml, &[]);
    let error = serves_old_code_and_retries(&c, &dir, port, &root, &v1, &v2, || {
        git(&repo.remote, &["update-ref", "refs/heads/main", &v2]);
    });
    assert!(error.contains("`main` not found"), "{error}");
    daemon.stop();
}

// ---- 2. automatic rollback when the new release is not ready -----------------

/// A cutover on a local bare repo (push-watched) serving v1; returns it with
/// the repo, the port, the root and v1's sha.
struct Running {
    dir: TestDir,
    repo: Repo,
    port: u16,
    root: PathBuf,
    v1: String,
    cutover: Cutover,
}

fn running(mode: Mode, source_extra: &str, rest: &str) -> Running {
    running_with(mode, None, source_extra, rest)
}

fn running_with(mode: Mode, command: Option<&str>, source_extra: &str, rest: &str) -> Running {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    let url = repo.remote.to_str().unwrap().to_string();
    running_on(mode, dir, repo, &url, command, source_extra, rest)
}

fn running_on(
    mode: Mode,
    dir: TestDir,
    repo: Repo,
    url: &str,
    command: Option<&str>,
    source_extra: &str,
    rest: &str,
) -> Running {
    let v1 = repo.release("v1");
    let root = dir.join("srv");
    let port = free_port();
    let toml = match command {
        Some(cmd) => ConfigToml::new()
            .listen("http", port, "")
            .section("app", &format!("command = {}\n{RESTART_OVERLAP}", cmd))
            .ready_notify()
            .source(url, &root, source_extra)
            .raw(rest)
            .to_string(),
        None => ConfigToml::deploying_overlap(port, url, &root, source_extra)
            .raw(rest)
            .to_string(),
    };
    let cutover = start(mode, &dir, &toml, &[]);
    wait_version(port, "v1", &cutover, SECS_20);
    wait_for_control(&dir);
    wait_for(SECS_20, || {
        (status(&dir)["programs"][0]["state"] == "running").then_some(())
    })
    .unwrap_or_else(|| panic!("never ready\n{}", cutover.stderr()));
    Running {
        dir,
        repo,
        port,
        root,
        v1,
        cutover,
    }
}

/// Waits until the history holds a record with `outcome` for `sha`.
fn wait_record(r: &Running, outcome: &str, sha: &str) -> Value {
    wait_for(SECS_20, || {
        history(&r.root)
            .into_iter()
            .find(|h| h["outcome"] == outcome && h["sha"] == sha)
    })
    .unwrap_or_else(|| {
        panic!(
            "no {outcome} record for {sha}: {:?}\n{}",
            history(&r.root),
            r.cutover.stderr()
        )
    })
}

/// After a rollback of `bad`: a push that leaves the ref on it is refused,
/// and moving the ref on to a good commit deploys.
fn bad_sha_is_not_retried_until_the_ref_moves(r: &Running, bad: &str) {
    let reloads = status(&r.dir)["reload"]["reloads"].as_u64().unwrap();
    // Pushing a tag touches the remote's refs: the watcher looks at `main`
    // again, which still points at the bad commit.
    r.repo.push_ref("HEAD:refs/tags/poke");
    let refused = wait_record(r, "refused", bad);
    assert!(
        refused["error"].as_str().unwrap().contains("rolled back"),
        "{refused}"
    );
    assert_stays(
        "v1 current and served, nothing reloaded for a refused commit",
        Duration::from_millis(500),
        || {
            current_sha(&r.root).as_deref() == Some(r.v1.as_str())
                && served_version(r.port).is_ok_and(|v| v == "v1")
                && status(&r.dir)["reload"]["reloads"].as_u64() == Some(reloads)
        },
    );

    git(
        &r.repo.work,
        &[
            "rm",
            "-q",
            "--ignore-unmatch",
            "crash",
            "exit-after",
            "unhealthy",
        ],
    );
    let v3 = r.repo.release("v3");
    wait_version(r.port, "v3", &r.cutover, SECS_20);
    wait_record(r, "deployed", &v3);
    assert_eq!(current_sha(&r.root).as_deref(), Some(v3.as_str()));
    assert!(is_bad(&r.dir, bad), "still marked bad: {}", status(&r.dir));
}

#[test]
fn a_release_that_crashes_at_boot_is_rolled_back_without_a_failed_request() {
    let r = running(Mode::Pid1, "", "");
    let pid = status(&r.dir)["programs"][0]["pid"].clone();
    let load = Load::start(r.port);
    std::thread::sleep(Duration::from_millis(200));
    let bad = r
        .repo
        .commit("v2 broken", &[("version", "v2"), ("crash", "")]);
    r.repo.push();
    let rolled = wait_record(&r, "rolled-back", &bad);
    wait_for(SECS_20, || is_bad(&r.dir, &bad).then_some(()))
        .unwrap_or_else(|| panic!("not marked bad: {}", status(&r.dir)));
    std::thread::sleep(Duration::from_millis(200));
    let result = load.finish();
    assert!(
        rolled["error"]
            .as_str()
            .unwrap()
            .contains("exited with status 3"),
        "{rolled}"
    );
    assert_eq!(rolled["trigger"], "push", "{rolled}");
    assert_no_failed(
        "source_faults: a release crashing soon after",
        &result,
        11,
        String::new,
    );
    assert_eq!(
        result.versions,
        vec!["v1"],
        "users saw only the old code ({} requests)",
        result.ok
    );
    assert_eq!(current_sha(&r.root).as_deref(), Some(r.v1.as_str()));
    let st = status(&r.dir);
    assert_eq!(
        st["programs"][0]["pid"], pid,
        "the old instance kept serving"
    );
    assert_eq!(st["source"]["current"], r.v1.as_str());
    bad_sha_is_not_retried_until_the_ref_moves(&r, &bad);
}

#[test]
fn a_release_that_fails_its_ready_check_is_rolled_back() {
    // The check runs in the new instance's release directory.
    let ready = "[ready]\nnotify = true\ntimeout = \"1500ms\"\ncommand = [\"sh\", \"-c\", \"test ! -e unhealthy\"]\n";
    let with_check = |port: u16, url: &str, root: &Path| {
        ConfigToml::deploying_overlap(port, url, root, "")
            .to_string()
            .replace("[ready]\nnotify = true\ntimeout = \"10s\"\n", ready)
    };
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    let v1 = repo.release("v1");
    let root = dir.join("srv");
    let port = free_port();
    let toml = with_check(port, repo.remote.to_str().unwrap(), &root);
    assert!(toml.contains("unhealthy"));
    let cutover = start(Mode::Subreaper, &dir, &toml, &[]);
    wait_version(port, "v1", &cutover, SECS_20);
    wait_for_control(&dir);
    let r = Running {
        dir,
        repo,
        port,
        root,
        v1,
        cutover,
    };
    let load = Load::start(r.port);
    let bad = r
        .repo
        .commit("v2 unhealthy", &[("version", "v2"), ("unhealthy", "")]);
    r.repo.push();
    let rolled = wait_record(&r, "rolled-back", &bad);
    std::thread::sleep(Duration::from_millis(200));
    let result = load.finish();
    assert!(
        rolled["error"].as_str().unwrap().contains("check command"),
        "{rolled}"
    );
    // The new instance answers on the shared socket while its check fails;
    // what matters is that no request fails and v1 serves in the end.
    assert_no_failed("source_faults: a failing check", &result, 0, String::new);
    assert_eq!(
        result.versions.last().map(String::as_str),
        Some("v1"),
        "{} requests",
        result.ok
    );
    assert_eq!(served_version(r.port).unwrap(), "v1");
    assert_eq!(current_sha(&r.root).as_deref(), Some(r.v1.as_str()));
    assert!(is_bad(&r.dir, &bad));
    git(&r.repo.work, &["rm", "-q", "unhealthy"]);
    let v3 = r.repo.release("v3");
    wait_version(r.port, "v3", &r.cutover, SECS_20);
    wait_record(&r, "deployed", &v3);
}

// ---- 3. crash within the rollback window ------------------------------------

/// fdserver, killed `exit-after` seconds after start when the release has
/// that file.
fn crashing_later() -> String {
    format!(
        "[\"sh\", \"-c\", \"if [ -f exit-after ]; then (sleep $(cat exit-after); kill -KILL $$) & fi; exec python3 {}\"]",
        app("fdserver.py")
    )
}

#[test]
fn a_crash_within_the_rollback_window_rolls_back() {
    let r = running_with(
        Mode::Subreaper,
        Some(&crashing_later()),
        "",
        "[rollback]\nwindow = \"10s\"\n",
    );
    let bad = r
        .repo
        .commit("v2 dies soon", &[("version", "v2"), ("exit-after", "2")]);
    r.repo.push();
    wait_record(&r, "deployed", &bad);
    let rolled = wait_record(&r, "rolled-back", &r.v1);
    assert!(
        rolled["trigger"].as_str().unwrap().contains("within 10s"),
        "{rolled}"
    );
    wait_for(SECS_20, || is_bad(&r.dir, &bad).then_some(()))
        .unwrap_or_else(|| panic!("not marked bad: {}", status(&r.dir)));
    wait_version(r.port, "v1", &r.cutover, SECS_20);
    assert_eq!(current_sha(&r.root).as_deref(), Some(r.v1.as_str()));
    // v1 keeps serving: no crash loop on the bad release.
    assert_stays("v1 served and running", Duration::from_millis(1500), || {
        served_version(r.port).is_ok_and(|v| v == "v1")
            && status(&r.dir)["programs"][0]["state"] == "running"
    });
    bad_sha_is_not_retried_until_the_ref_moves(&r, &bad);
}

#[test]
fn a_crash_after_the_rollback_window_does_not_roll_back() {
    let r = running_with(
        Mode::Subreaper,
        Some(&crashing_later()),
        "",
        "[rollback]\nwindow = \"1s\"\n",
    );
    let v2 = r
        .repo
        .commit("v2 dies later", &[("version", "v2"), ("exit-after", "4")]);
    r.repo.push();
    wait_record(&r, "deployed", &v2);
    wait_version(r.port, "v2", &r.cutover, SECS_20);
    // The crash (4 s after start) comes after the window (1 s) closed.
    wait_for(SECS_20, || {
        (status(&r.dir)["programs"][0]["restarts"].as_u64()? >= 1).then_some(())
    })
    .unwrap_or_else(|| panic!("never crashed: {}", status(&r.dir)));
    std::thread::sleep(Duration::from_millis(500));
    let st = status(&r.dir);
    assert_eq!(st["source"]["current"], v2.as_str(), "{st}");
    assert!(!is_bad(&r.dir, &v2), "{st}");
    assert!(
        history(&r.root)
            .iter()
            .all(|h| h["outcome"] != "rolled-back"),
        "{:?}",
        history(&r.root)
    );
    assert_eq!(current_sha(&r.root).as_deref(), Some(v2.as_str()));
    assert!(
        !r.cutover.stderr().contains("rolling back"),
        "{}",
        r.cutover.stderr()
    );
}

// ---- 4. SIGKILL in the middle of a deploy ----------------------------------

/// Writes `count` files of `size` pseudo-random bytes under `big/` in the
/// work tree (incompressible, so fetching and writing them takes a while).
fn write_big_tree(work: &Path, count: usize, size: usize) {
    let big = work.join("big");
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..count {
        let sub = big.join(format!("d{:02}", i % 50));
        std::fs::create_dir_all(&sub).unwrap();
        let mut data = Vec::with_capacity(size);
        while data.len() < size {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            data.extend_from_slice(&state.to_le_bytes());
        }
        std::fs::write(sub.join(format!("f{i:05}")), &data).unwrap();
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Pushes a 2,000-file, 32 MB commit to a running cutover and SIGKILLs it
/// as soon as `moment` (polled every millisecond) says so; then checks that
/// the next start serves the old `current` at once, removes the leftovers,
/// and deploys the big commit whole once the remote is reachable.
/// Over `git daemon` when `daemon` is set (a fetch that takes a while), else
/// from the bare repository's path.
fn sigkill_during_deploy(daemon: bool, moment: impl Fn(&Running) -> bool) -> Running {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    let server = daemon.then(|| Server::daemon_on(dir.path(), free_port()));
    let url = match &server {
        Some(s) => format!("{}/remote.git", s.url),
        None => repo.remote.to_str().unwrap().to_string(),
    };
    let r = running_on(Mode::Pid1, dir, repo, &url, None, "", "");
    write_big_tree(&r.repo.work, 2000, 16 * 1024);
    let v2 = r.repo.commit("v2 big", &[("version", "v2")]);
    r.repo.push();
    if daemon {
        let (code, _, err) = client(&r.dir, &["deploy"]);
        assert_eq!(code, 0, "{err}");
    }
    wait_for(Duration::from_secs(60), || {
        if !moment(&r) {
            std::thread::sleep(Duration::from_millis(1));
            return None;
        }
        r.cutover.signal(libc::SIGKILL);
        Some(())
    })
    .unwrap_or_else(|| panic!("the moment to kill never came\n{}", r.cutover.stderr()));
    let Running {
        dir,
        repo,
        port,
        root,
        v1,
        mut cutover,
    } = r;
    cutover.wait(SECS_20);
    let killed_log = cutover.stderr();
    assert!(
        !killed_log.contains(&format!("release written sha={v2}")),
        "killed too late:\n{killed_log}"
    );
    assert!(!root.join("releases").join(&v2).exists());
    assert_eq!(current_sha(&root).as_deref(), Some(v1.as_str()));
    wait_for(SECS_20, || served_version(port).is_err().then_some(()))
        .expect("nothing may serve once cutover is killed");
    let leftovers = partials(&root);

    // Next start without the remote: the old release serves at once.
    let away = dir.join("away.git");
    std::fs::rename(&repo.remote, &away).unwrap();
    let toml = dir.read("cutover.toml");
    let c = start(Mode::Pid1, &dir, &toml, &[]);
    wait_version(port, "v1", &c, SECS_20);
    assert!(
        partials(&root).is_empty(),
        "partial left: {:?}",
        partials(&root)
    );
    if !leftovers.is_empty() {
        c.wait_for_log("removed what an interrupted deploy left behind", SECS_20);
    }

    // With the remote back, the big release deploys whole.
    std::fs::rename(&away, &repo.remote).unwrap();
    wait_version(port, "v2", &c, SECS_20);
    let big = files_under(&root.join("releases").join(&v2).join("big"));
    assert_eq!(big.len(), 2000);
    assert!(partials(&root).is_empty());
    assert_eq!(current_sha(&root).as_deref(), Some(v2.as_str()));
    Running {
        dir,
        repo,
        port,
        root,
        v1,
        cutover: c,
    }
}

#[test]
fn sigkill_while_writing_a_release_leaves_the_old_current_serving() {
    // Kill at the first sign of the partial release.
    let r = sigkill_during_deploy(false, |r| !partials(&r.root).is_empty());
    assert!(
        r.cutover.stderr().contains(".tmp-"),
        "the partial release was removed at start:\n{}",
        r.cutover.stderr()
    );
}

#[test]
fn sigkill_while_fetching_leaves_a_usable_cache() {
    // Kill as soon as the fetch writes its first object into the cache.
    let before = std::sync::OnceLock::new();
    sigkill_during_deploy(true, |r| {
        let objects = r.root.join(".cutover/cache.git/objects");
        let now = files_under(&objects);
        let before = before.get_or_init(|| now.clone());
        assert!(partials(&r.root).is_empty(), "killed after the fetch");
        now.iter().any(|f| !before.contains(f))
    });
}

// ---- 5. damaged volumes ---------------------------------------------------------

#[test]
fn a_missing_release_directory_is_restored_from_the_cache() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    let v1 = repo.release("v1");
    let root = dir.join("srv");
    let port = free_port();
    let toml =
        ConfigToml::deploying_overlap(port, repo.remote.to_str().unwrap(), &root, "").to_string();
    deploy_v1_and_stop(Mode::Subreaper, &dir, &toml, &[], port);

    std::fs::remove_dir_all(root.join("releases").join(&v1)).unwrap();
    // Only the cache can help: the remote is gone.
    std::fs::rename(&repo.remote, dir.join("away.git")).unwrap();
    let c = start(Mode::Subreaper, &dir, &toml, &[]);
    wait_version(port, "v1", &c, SECS_20);
    assert_eq!(current_sha(&root).as_deref(), Some(v1.as_str()));
    assert_eq!(
        std::fs::read_to_string(root.join("current/version")).unwrap(),
        "v1"
    );
    c.wait_for_log("restored it from the cache", SECS_20);
}

#[test]
fn a_dangling_current_the_cache_cannot_restore_is_fetched_again() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    let v1 = repo.release("v1");
    let root = dir.join("srv");
    let port = free_port();
    let toml =
        ConfigToml::deploying_overlap(port, repo.remote.to_str().unwrap(), &root, "").to_string();
    deploy_v1_and_stop(Mode::Pid1, &dir, &toml, &[], port);

    // The release and the whole cache are gone: `current` dangles.
    std::fs::remove_dir_all(root.join("releases").join(&v1)).unwrap();
    std::fs::remove_dir_all(root.join(".cutover").join("cache.git")).unwrap();
    assert!(std::fs::symlink_metadata(root.join("current")).is_ok());
    assert!(!root.join("current").exists());
    let v2 = repo.release("v2");
    let c = start(Mode::Pid1, &dir, &toml, &[]);
    wait_version(port, "v2", &c, SECS_20);
    assert_eq!(current_sha(&root).as_deref(), Some(v2.as_str()));
    assert!(root.join("current/version").is_file());
}

#[test]
fn a_current_pointing_at_garbage_is_replaced_by_a_fresh_deploy() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    repo.release("v1");
    let root = dir.join("srv");
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::symlink("releases/not-a-release", root.join("current")).unwrap();
    let port = free_port();
    let toml =
        ConfigToml::deploying_overlap(port, repo.remote.to_str().unwrap(), &root, "").to_string();
    let c = start(Mode::Subreaper, &dir, &toml, &[]);
    wait_version(port, "v1", &c, SECS_20);
    assert_eq!(current_sha(&root), Some(repo.head()));
}

// ---- 6. concurrent triggers ---------------------------------------------------

#[test]
fn concurrent_deploys_and_pushes_are_serialised() {
    let r = running(Mode::Subreaper, "", "");
    // Each new release boots for 0.7 s, so the deploys would overlap if they could.
    let v2 = r
        .repo
        .commit("v2", &[("version", "v2"), ("boot-delay", "0.7")]);
    r.repo.push();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let socket = Cutover::socket(&r.dir);
            std::thread::spawn(move || {
                std::process::Command::new(BIN)
                    .args(["deploy", "--wait"])
                    .env("CUTOVER_SOCKET", socket)
                    .env("CUTOVER_LOG", "warn")
                    .output()
                    .unwrap()
            })
        })
        .collect();
    // While v2 is being cut over, another push lands.
    wait_for(SECS_20, || {
        (current_sha(&r.root).as_deref() == Some(v2.as_str())).then_some(())
    })
    .unwrap_or_else(|| panic!("v2 never switched in\n{}", r.cutover.stderr()));
    let v3 = r.repo.release("v3");
    for c in clients {
        let out = c.join().unwrap();
        assert!(
            out.status.success(),
            "deploy --wait failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_version(r.port, "v3", &r.cutover, SECS_20);
    wait_record(&r, "deployed", &v3);
    assert_stays("v3 stays current", Duration::from_millis(500), || {
        current_sha(&r.root).as_deref() == Some(v3.as_str())
    });

    let records = history(&r.root);
    assert!(
        records.iter().any(|h| h["sha"] == v2.as_str()),
        "{records:?}"
    );
    let mut spans: Vec<(std::time::SystemTime, std::time::SystemTime)> = records
        .iter()
        .map(|h| {
            assert!(h["error"].is_null(), "no error: {h}");
            assert!(
                h["outcome"] == "deployed" || h["outcome"] == "unchanged",
                "{h}"
            );
            let start = humantime::parse_rfc3339(h["time"].as_str().unwrap()).unwrap();
            let took = Duration::from_secs_f64(h["duration_ms"].as_f64().unwrap() / 1000.0);
            (start, start + took)
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        // Timestamps have millisecond resolution.
        assert!(
            pair[0].1 <= pair[1].0 + Duration::from_millis(1),
            "overlapping deploys: {records:?}"
        );
    }
    assert!(spans.len() >= 3, "v1, v2 and v3 were deployed: {records:?}");
}

// ---- 7. symlinks out of the release ---------------------------------------------

#[test]
fn symlinks_out_of_a_release_are_written_as_stored_and_never_followed() {
    let dir = TestDir::new();
    let outside = dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "untouched").unwrap();
    let repo = Repo::new(&dir);
    let abs_target = outside.to_str().unwrap().to_string();
    let rel_target = "../../../outside/secret";
    std::os::unix::fs::symlink(&abs_target, repo.work.join("escape")).unwrap();
    std::os::unix::fs::symlink(rel_target, repo.work.join("up")).unwrap();
    std::os::unix::fs::symlink("/etc", repo.work.join("etc")).unwrap();
    let v1 = repo.commit("v1 with links", &[("version", "v1")]);
    repo.push();

    let root = dir.join("srv");
    let port = free_port();
    let toml =
        ConfigToml::deploying_overlap(port, repo.remote.to_str().unwrap(), &root, "keep = 2")
            .to_string();
    let c = start(Mode::Subreaper, &dir, &toml, &[]);
    wait_version(port, "v1", &c, SECS_20);
    let release = root.join("releases").join(&v1);
    for (name, target) in [
        ("escape", abs_target.as_str()),
        ("up", rel_target),
        ("etc", "/etc"),
    ] {
        let meta = std::fs::symlink_metadata(release.join(name)).unwrap();
        assert!(meta.file_type().is_symlink(), "{name} is a symlink");
        assert_eq!(
            std::fs::read_link(release.join(name)).unwrap(),
            PathBuf::from(target)
        );
    }
    // `up` really leads out of the release, to the file outside.
    assert_eq!(
        std::fs::read_to_string(release.join("up")).unwrap(),
        "untouched"
    );

    // Later releases replace the links by a directory and a file of the same
    // name, and pruning (keep = 2) removes the release with the links.
    git(&repo.work, &["rm", "-q", "escape", "up"]);
    let v2 = repo.commit(
        "v2",
        &[("version", "v2"), ("escape/inside", "x"), ("up", "a file")],
    );
    repo.push();
    wait_version(port, "v2", &c, SECS_20);
    let v3 = repo.release("v3");
    wait_version(port, "v3", &c, SECS_20);
    wait_for(SECS_20, || (!release.exists()).then_some(()))
        .unwrap_or_else(|| panic!("v1 was never pruned\n{}", c.stderr()));
    assert!(root.join("releases").join(&v2).is_dir());
    assert!(root.join("releases").join(&v3).is_dir());
    assert_eq!(
        std::fs::read_to_string(root.join("releases").join(&v2).join("up")).unwrap(),
        "a file"
    );

    // Nothing outside the releases was read through, written or removed.
    let names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "untouched"
    );
    assert!(Path::new("/etc/passwd").is_file());
    let records = history(&root);
    assert!(
        records.iter().all(|h| h["outcome"] == "deployed"),
        "{records:?}"
    );
}

// ---- 8. bad [source] configs ----------------------------------------------------

#[test]
fn bad_source_configs_list_every_problem_and_start_nothing() {
    let dir = TestDir::new();
    let marker = dir.join("started");
    let app_section = format!(
        "[app]\ncommand = [\"sh\", \"-c\", \"touch {}\"]\n\n",
        marker.display()
    );
    let everything_wrong = format!(
        r#"{app_section}[source]
root = "relative/srv"
keep = 1
poll = "every now and then"
webhook = "127.0.0.1:0"
token_env = "CUTOVER_TEST_NO_SUCH_TOKEN"
"#
    );
    let (code, err) = check_config(&dir, &everything_wrong);
    assert_eq!(code, 78, "{err}");
    for expected in [
        "source: missing key `repo`",
        "source.root: must be an absolute path",
        "source.keep: keep at least 2 releases",
        "source.poll: invalid duration `every now and then`",
        "source.webhook: a webhook needs a secret",
        "source.token_env: environment variable `CUTOVER_TEST_NO_SUCH_TOKEN` is not set",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(err.contains("6 problems"), "{err}");

    let root = dir.join("srv");
    let no_root = format!(
        "{app_section}[source]\nrepo = \"{}\"\n",
        dir.join("r.git").display()
    );
    let (code, err) = check_config(&dir, &no_root);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("source: missing key `root`"), "{err}");

    // `cutover run` refuses the same configs before starting anything.
    for toml in [&everything_wrong, &no_root] {
        let cfg = dir.write("cutover.toml", toml);
        let (code, _, err) = run_cutover(&dir, &["run", "-c", cfg.to_str().unwrap()]);
        assert_eq!(code, 78, "{err}");
        assert!(err.contains("source"), "{err}");
    }
    let good_but_for_token = format!(
        "{app_section}[source]\nrepo = \"https://example.invalid/app.git\"\nroot = \"{}\"\ntoken_env = \"CUTOVER_TEST_NO_SUCH_TOKEN\"\n",
        root.display()
    );
    let cfg = dir.write("cutover.toml", &good_but_for_token);
    let (code, _, err) = run_cutover(&dir, &["run", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("source.token_env"), "{err}");
    // A program started by mistake would have written its marker by then.
    assert_stays(
        "no program started, nothing created on the volume",
        Duration::from_millis(200),
        || !marker.exists() && !root.exists(),
    );
}
