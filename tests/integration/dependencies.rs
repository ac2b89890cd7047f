//! The dependency gate: a commit that changes lockfiles is never hot-loaded;
//! the old release keeps serving and `[redeploy]` asks for a new image.
//!
//! Real repositories (`gitrepo.rs`), the real binary, `apps/fdserver.py`
//! serving the `version` file of the release it runs in.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::gitrepo::Repo;
use crate::helpers::*;

fn config(port: u16, repo: &Path, root: &Path, extra: &str) -> String {
    format!(
        r#"[[listen]]
address = "127.0.0.1:{port}"

[app]
command = ["python3", "{server}"]
stop_timeout = "5s"

[ready]
http = "http://127.0.0.1:{port}/healthz"
grace = "100ms"

[source]
repo = "{repo}"
root = "{root}"

{extra}
"#,
        server = app("fdserver.py"),
        repo = repo.display(),
        root = root.display(),
    )
}

fn source(dir: &TestDir) -> Value {
    status(dir)["source"].clone()
}

fn serves(port: u16, version: &str) {
    wait_for(SECS_20, || {
        (served_version(port).ok()? == version).then_some(())
    })
    .unwrap_or_else(|| panic!("never served {version}: {:?}", served_version(port)));
}

/// Code-only commits hot-load; a requirements change does not: the old
/// release keeps serving, status says redeploy-required with the file, and
/// the redeploy command gets the sha, the ref and the changed files.
#[test]
fn a_dependency_change_is_not_hot_loaded_and_asks_for_an_image() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    repo.commit(
        "v1",
        &[("version", "v1"), ("requirements.txt", "flask==3.0\n")],
    );
    repo.push();
    let port = free_port();
    let root = dir.join("srv");
    let asked = dir.join("asked");
    let cutover = Cutover::run_config(
        Mode::Subreaper,
        &dir,
        &config(
            port,
            &repo.remote,
            &root,
            &format!(
                r#"[dependencies]
baseline = "{baseline}"

[redeploy]
command = ["sh", "-c", "echo \"$CUTOVER_SHA $CUTOVER_REF $CUTOVER_CHANGED_FILES\" >> {asked}"]
"#,
                baseline = dir.join("no-baseline").display(),
                asked = asked.display()
            ),
        ),
    );
    serves(port, "v1");
    wait_for_control(&dir);
    let first = source(&dir)["dependencies"].clone();
    assert!(
        first["baseline"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "the first release became the baseline: {first}"
    );

    let v2 = repo.release("v2");
    serves(port, "v2");
    assert_eq!(source(&dir)["current"], v2.as_str());

    let v3 = repo.commit(
        "v3",
        &[("version", "v3"), ("requirements.txt", "flask==3.1\n")],
    );
    repo.push();
    let line = wait_for(SECS_20, || {
        std::fs::read_to_string(&asked)
            .ok()
            .filter(|s| !s.is_empty())
    })
    .unwrap_or_else(|| panic!("redeploy command never ran\n{}", cutover.stderr()));
    assert_eq!(line.trim(), format!("{v3} main requirements.txt"));
    let src = source(&dir);
    assert_eq!(src["current"], v2.as_str(), "the old release keeps serving");
    assert_eq!(served_version(port).unwrap(), "v2");
    let required = &src["dependencies"]["redeploy_required"];
    assert_eq!(required["sha"], v3.as_str(), "{src}");
    assert_eq!(
        required["changed_files"],
        serde_json::json!(["requirements.txt"])
    );
    assert_eq!(
        src["history"].as_array().unwrap().last().unwrap()["outcome"],
        "redeploy-required"
    );
    assert_eq!(src["redeploy"]["state"], "done", "{src}");
    let (_, text, _) = client(&dir, &["status"]);
    assert!(text.contains(&format!("redeploy-required {v3}")), "{text}");

    // Nothing new: further triggers neither hot-load it nor ask again.
    client(&dir, &["deploy", "--wait"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read_to_string(&asked).unwrap().lines().count(), 1);
    assert_eq!(served_version(port).unwrap(), "v2");
    assert!(
        root.join("releases").join(&v3).is_dir(),
        "the release stays written for the image build"
    );
}

/// A baseline baked into the image by `cutover fingerprint --write` is
/// compared with the very first release; `exit = 75` stops the app
/// gracefully and passes 75 through, for orchestrators that replace the
/// container themselves.
#[test]
fn a_baked_baseline_is_honoured_and_exit_75_hands_over_to_the_orchestrator() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    repo.commit("v1", &[("version", "v1"), ("package-lock.json", "{}\n")]);
    repo.push();
    // The image was built from this commit's lockfile.
    let baseline = dir.join("baseline.json");
    let (code, _, err) = run_cutover(
        &dir,
        &[
            "fingerprint",
            repo.work.to_str().unwrap(),
            "--write",
            baseline.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let port = free_port();
    let root = dir.join("srv");
    let mut cutover = Cutover::run_config(
        Mode::Pid1,
        &dir,
        &config(
            port,
            &repo.remote,
            &root,
            &format!(
                "[dependencies]\nbaseline = \"{}\"\n\n[redeploy]\nexit = 75\n",
                baseline.display()
            ),
        ),
    );
    serves(port, "v1");
    repo.commit(
        "v2",
        &[
            ("version", "v2"),
            ("package-lock.json", "{\"lockfileVersion\": 3}\n"),
        ],
    );
    repo.push();
    let code = cutover.wait(SECS_20);
    assert_eq!(code, 75, "{}", cutover.stderr());
    let log = cutover.stderr();
    assert!(log.contains("stopping for a redeploy"), "{log}");
    assert!(
        log.contains("stopped program=app") || log.contains("exited program=app"),
        "the app was stopped, not abandoned: {log}"
    );
    let current = std::fs::read_link(root.join("current")).unwrap();
    assert!(
        !current.ends_with(repo.head()),
        "the dependency change never became current: {}",
        current.display()
    );
}

/// A new image (its baseline made from v2's lockfile) starting on a volume
/// whose `current` still holds v1: v1 must not run on it. cutover fetches the
/// ref first and starts on v2, and refuses to roll back to v1.
#[test]
fn a_new_image_does_not_start_old_code_that_needs_other_dependencies() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    let v1 = repo.commit("v1", &[("version", "v1"), ("go.sum", "a v1.0.0\n")]);
    repo.push();
    let port = free_port();
    let root = dir.join("srv");
    let baseline = dir.join("baseline.json");
    let toml = config(
        port,
        &repo.remote,
        &root,
        &format!("[dependencies]\nbaseline = \"{}\"\n", baseline.display()),
    );
    // The old image: no baseline file, so v1 becomes it.
    let mut old = Cutover::run_config(Mode::Subreaper, &dir, &toml);
    serves(port, "v1");
    old.signal(libc::SIGTERM);
    old.wait(SECS_20);
    drop(old);

    // v2 changes go.sum; the new image was built (and fingerprinted) for it.
    let v2 = repo.commit("v2", &[("version", "v2"), ("go.sum", "a v1.1.0\n")]);
    repo.push();
    let (code, _, err) = run_cutover(
        &dir,
        &[
            "fingerprint",
            repo.work.to_str().unwrap(),
            "--write",
            baseline.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let new = Cutover::run_config(Mode::Subreaper, &dir, &toml);
    let first = wait_for(SECS_20, || served_version(port).ok())
        .unwrap_or_else(|| panic!("nothing served\n{}", new.stderr()));
    assert_eq!(
        first,
        "v2",
        "old code ran on the new image\n{}",
        new.stderr()
    );
    wait_for_control(&dir);
    assert_eq!(source(&dir)["current"], v2.as_str());
    let (code, _, err) = client(&dir, &["rollback", "--to", &v1, "--wait"]);
    assert_ne!(code, 0);
    assert!(err.contains("needs other dependencies"), "{err}");
    assert_eq!(served_version(port).unwrap(), "v2");
}

/// A redeploy that fails is retried with backoff (1 s, doubling), not in a
/// loop, while the old release keeps serving; status says why.
#[test]
fn a_failing_redeploy_is_retried_with_backoff() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    repo.commit("v1", &[("version", "v1"), ("Gemfile.lock", "rack (3.0)\n")]);
    repo.push();
    let port = free_port();
    let root = dir.join("srv");
    let attempts = dir.join("attempts");
    let _cutover = Cutover::run_config(
        Mode::Subreaper,
        &dir,
        &config(
            port,
            &repo.remote,
            &root,
            &format!(
                "[dependencies]\nbaseline = \"{}\"\n\n[redeploy]\n\
                 command = [\"sh\", \"-c\", \"date +%s.%N >> {}; echo CI is down >&2; exit 1\"]\n",
                dir.join("no-baseline").display(),
                attempts.display()
            ),
        ),
    );
    serves(port, "v1");
    repo.commit("v2", &[("version", "v2"), ("Gemfile.lock", "rack (3.1)\n")]);
    repo.push();
    let count = || {
        std::fs::read_to_string(&attempts)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    wait_for(SECS_20, || (count() >= 3).then_some(()))
        .unwrap_or_else(|| panic!("not retried: {} attempts", count()));
    let times: Vec<f64> = std::fs::read_to_string(&attempts)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    // 1 s, then 2 s between attempts (no faster than the backoff).
    assert!(times[1] - times[0] >= 0.9, "{times:?}");
    assert!(times[2] - times[1] >= 1.9, "{times:?}");
    // The third attempt may still be running; its failure follows at once.
    let src = wait_for(SECS_20, || {
        let src = source(&dir);
        (src["redeploy"]["state"] == "failed").then_some(src)
    })
    .unwrap_or_else(|| panic!("never failed: {}", source(&dir)));
    assert!(
        src["redeploy"]["retry_in_seconds"].as_f64().is_some(),
        "{src}"
    );
    assert!(
        src["redeploy"]["last_result"]
            .as_str()
            .is_some_and(|r| r.contains("redeploy command failed")),
        "{src}"
    );
    assert_eq!(served_version(port).unwrap(), "v1");
}
