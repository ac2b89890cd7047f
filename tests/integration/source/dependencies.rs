//! The dependency gate: a commit that changes lockfiles is never hot-loaded;
//! the old release keeps serving and `[redeploy]` asks for a new image.
//!
//! Real repositories (`tests/fixture/git.rs`), the real binary, `apps/fdserver.py`
//! serving the `version` file of the release it runs in.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::fixture::git::Repo;
use crate::fixture::prelude::*;

fn source(dir: &TestDir) -> Value {
    status(dir)["source"].clone()
}

fn serves(port: u16, version: &str) {
    wait_for(SECS_20, || {
        (served_version(port).ok()? == version).then_some(())
    })
    .unwrap_or_else(|| panic!("never served {version}: {:?}", served_version(port)));
}

/// A repository whose `main` serves v1 with one dependency file, the app's
/// port and the volume, in a fresh test dir.
struct Scene {
    dir: TestDir,
    repo: Repo,
    port: u16,
    root: std::path::PathBuf,
    v1: String,
}

impl Scene {
    fn new(lockfile: &str, content: &str) -> Scene {
        let dir = TestDir::new();
        let repo = Repo::new(&dir);
        let v1 = repo.commit("v1", &[("version", "v1"), (lockfile, content)]);
        repo.push();
        let root = dir.join("srv");
        Scene {
            dir,
            repo,
            port: free_port(),
            root,
            v1,
        }
    }

    fn config(&self, extra: &str) -> String {
        ConfigToml::new()
            .listen("", self.port, "")
            .app(&["python3", &app("fdserver.py")], "stop_timeout = \"5s\"")
            .ready_http(self.port, "grace = \"100ms\"")
            .source(&self.repo.remote.display().to_string(), &self.root, "")
            .raw(extra)
            .to_string()
    }

    /// cutover with `extra` in its config, once it serves v1.
    fn run(&self, mode: Mode, extra: &str) -> Cutover {
        let c = Cutover::run_config(mode, &self.dir, &self.config(extra));
        serves(self.port, "v1");
        c
    }

    /// `cutover fingerprint` of the work tree into `baseline`, as a
    /// Dockerfile bakes it for the commit the image is built from.
    fn bake_baseline(&self, baseline: &Path) {
        let (code, _, err) = run_cutover(
            &self.dir,
            &[
                "fingerprint",
                self.repo.work.to_str().unwrap(),
                "--write",
                baseline.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{err}");
    }
}

/// Code-only commits hot-load; a requirements change does not: the old
/// release keeps serving, status says redeploy-required with the file, and
/// the redeploy command gets the sha, the ref and the changed files.
#[test]
fn a_dependency_change_is_not_hot_loaded_and_asks_for_an_image() {
    let s = Scene::new("requirements.txt", "flask==3.0\n");
    let (dir, repo, port, root) = (&s.dir, &s.repo, s.port, &s.root);
    let asked = dir.join("asked");
    let cutover = s.run(
        Mode::Subreaper,
        &format!(
            r#"[dependencies]
baseline = "{baseline}"

[redeploy]
command = ["sh", "-c", "echo \"$CUTOVER_SHA $CUTOVER_REF $CUTOVER_CHANGED_FILES\" >> {asked}"]
"#,
            baseline = dir.join("no-baseline").display(),
            asked = asked.display()
        ),
    );
    wait_for_control(dir);
    let first = source(dir)["dependencies"].clone();
    assert!(
        first["baseline"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "the first release became the baseline: {first}"
    );

    let v2 = repo.release("v2");
    serves(port, "v2");
    assert_eq!(source(dir)["current"], v2.as_str());

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
    let src = source(dir);
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
    // The command wrote its line before it exited; "done" follows its exit.
    wait_for(SECS_20, || {
        (source(dir)["redeploy"]["state"] == "done").then_some(())
    })
    .unwrap_or_else(|| panic!("the redeploy never finished: {}", source(dir)));
    let (_, text, _) = client(dir, &["status"]);
    assert!(text.contains(&format!("redeploy-required {v3}")), "{text}");

    // Nothing new: further triggers neither hot-load it nor ask again.
    client(dir, &["deploy", "--wait"]);
    assert_stays(
        "v3 asked for once, v2 served",
        Duration::from_millis(300),
        || {
            std::fs::read_to_string(&asked).unwrap().lines().count() == 1
                && served_version(port).is_ok_and(|v| v == "v2")
        },
    );
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
    let s = Scene::new("package-lock.json", "{}\n");
    let (repo, root) = (&s.repo, &s.root);
    // The image was built from this commit's lockfile.
    let baseline = s.dir.join("baseline.json");
    s.bake_baseline(&baseline);
    let mut cutover = s.run(
        Mode::Pid1,
        &format!(
            "[dependencies]\nbaseline = \"{}\"\n\n[redeploy]\nexit = 75\n",
            baseline.display()
        ),
    );
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
    let s = Scene::new("go.sum", "a v1.0.0\n");
    let (dir, repo, port, v1) = (&s.dir, &s.repo, s.port, &s.v1);
    let baseline = dir.join("baseline.json");
    let extra = format!("[dependencies]\nbaseline = \"{}\"\n", baseline.display());
    // The old image: no baseline file, so v1 becomes it.
    let mut old = s.run(Mode::Subreaper, &extra);
    old.signal(libc::SIGTERM);
    old.wait(SECS_20);
    drop(old);

    // v2 changes go.sum; the new image was built (and fingerprinted) for it.
    let v2 = repo.commit("v2", &[("version", "v2"), ("go.sum", "a v1.1.0\n")]);
    repo.push();
    s.bake_baseline(&baseline);
    let new = Cutover::run_config(Mode::Subreaper, dir, &s.config(&extra));
    let first = wait_for(SECS_20, || served_version(port).ok())
        .unwrap_or_else(|| panic!("nothing served\n{}", new.stderr()));
    assert_eq!(
        first,
        "v2",
        "old code ran on the new image\n{}",
        new.stderr()
    );
    wait_for_control(dir);
    assert_eq!(source(dir)["current"], v2.as_str());
    let (code, _, err) = client(dir, &["rollback", "--to", v1, "--wait"]);
    assert_ne!(code, 0);
    assert!(err.contains("needs other dependencies"), "{err}");
    assert_eq!(served_version(port).unwrap(), "v2");
}

/// A redeploy that fails is retried with backoff (1 s, doubling), not in a
/// loop, while the old release keeps serving; status says why.
#[test]
fn a_failing_redeploy_is_retried_with_backoff() {
    let s = Scene::new("Gemfile.lock", "rack (3.0)\n");
    let (dir, repo, port) = (&s.dir, &s.repo, s.port);
    let attempts = dir.join("attempts");
    let _cutover = s.run(
        Mode::Subreaper,
        &format!(
            "[dependencies]\nbaseline = \"{}\"\n\n[redeploy]\n\
             command = [\"sh\", \"-c\", \"date +%s.%N >> {}; echo CI is down >&2; exit 1\"]\n",
            dir.join("no-baseline").display(),
            attempts.display()
        ),
    );
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
        let src = source(dir);
        (src["redeploy"]["state"] == "failed").then_some(src)
    })
    .unwrap_or_else(|| panic!("never failed: {}", source(dir)));
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

/// After `exit = 75` for a commit that needs a new image, an orchestrator
/// that merely restarts the container (`--restart`, compose's `restart:`)
/// starts the same image again. cutover then serves the release that fits
/// (v1), says that it already exited for the commit with this image, and
/// does not exit again, whatever triggers arrive; a newer commit that needs
/// an image is allowed one exit; a new image (another baked baseline)
/// deploys the commit.
#[test]
fn a_restart_with_the_same_image_does_not_exit_again_for_the_same_commit() {
    let s = Scene::new("requirements.txt", "flask==3.0\n");
    let (dir, repo, port) = (&s.dir, &s.repo, s.port);
    let baseline = dir.join("baseline.json");
    s.bake_baseline(&baseline);
    // `poll` goes to [source], which the scene's config ends with.
    let extra = format!(
        "poll = \"500ms\"\n\n[dependencies]\nbaseline = \"{}\"\n\n[redeploy]\nexit = 75\n",
        baseline.display()
    );
    let mut first = s.run(Mode::Subreaper, &extra);
    let x = repo.commit(
        "v2",
        &[("version", "v2"), ("requirements.txt", "flask==3.1\n")],
    );
    repo.push();
    assert_eq!(first.wait(SECS_20), 75, "{}", first.stderr());
    drop(first);

    // The orchestrator restarts the same image on the same volume.
    let mut second = Cutover::run_config(Mode::Subreaper, dir, &s.config(&extra));
    wait_for(SECS_20, || {
        (served_version(port).ok()? == "v1").then_some(())
    })
    .unwrap_or_else(|| panic!("the restart never served v1\n{}", second.stderr()));
    wait_for_control(dir);
    let src = wait_for(SECS_20, || {
        let src = source(dir);
        (src["redeploy"]["state"] == "waiting-for-image").then_some(src)
    })
    .unwrap_or_else(|| panic!("not waiting for an image: {}", source(dir)));
    assert_eq!(src["dependencies"]["redeploy_required"]["sha"], x.as_str());
    assert_eq!(src["redeploy"]["exited_for"]["sha"], x.as_str(), "{src}");
    assert_eq!(src["redeploy"]["exited_for"]["code"], 75, "{src}");
    assert_eq!(
        src["redeploy"]["exited_for"]["image"], src["dependencies"]["baseline"],
        "the image is known by its baseline: {src}"
    );
    // Polls (every 500 ms) and a deploy by hand change nothing.
    client(dir, &["deploy", "--wait"]);
    std::thread::sleep(Duration::from_secs(2));
    let (code, text, err) = client(dir, &["status"]);
    assert_eq!(code, 0, "cutover is gone: {err}\n{}", second.stderr());
    assert!(text.contains(&format!("redeploy-required {x}")), "{text}");
    assert!(
        text.contains(&format!("already exited with 75 for {x}")),
        "{text}"
    );
    assert!(text.contains("waiting for a new image"), "{text}");
    assert_eq!(served_version(port).unwrap(), "v1");
    let log = second.stderr();
    assert_eq!(
        log.matches("not exiting again").count(),
        1,
        "one line says why, once: {log}"
    );
    assert!(!log.contains("stopping for a redeploy"), "{log}");

    // A newer commit that needs an image too: one exit for it.
    let y = repo.commit(
        "v3",
        &[("version", "v3"), ("requirements.txt", "flask==3.2\n")],
    );
    repo.push();
    assert_eq!(second.wait(SECS_20), 75, "{}", second.stderr());
    drop(second);
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(s.root.join(".cutover/exited-for.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["sha"], y.as_str(), "{record}");

    // A new image, built (and fingerprinted) for the newest commit: it is
    // deployed, nothing waits and nothing exits.
    s.bake_baseline(&baseline);
    let third = Cutover::run_config(Mode::Subreaper, dir, &s.config(&extra));
    serves(port, "v3");
    wait_for_control(dir);
    std::thread::sleep(Duration::from_secs(1));
    let src = source(dir);
    assert_eq!(src["current"], y.as_str(), "{}", third.stderr());
    assert!(src["dependencies"]["redeploy_required"].is_null(), "{src}");
    assert_eq!(src["redeploy"]["state"], "none", "{src}");
}
