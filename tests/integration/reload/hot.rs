//! Hot reload with a small fd-passing test server (tests/integration/apps/
//! fdserver.py): triggers, debounce, the three strategies' failure handling,
//! held sockets, sd_notify readiness, the control socket and HTTP endpoint.

use std::time::{Duration, Instant};

use crate::fixture::config::quote;
use crate::fixture::prelude::*;

const HTTP_READY: &str = "grace = \"300ms\"\ntimeout = \"10s\"";

fn http_ready(port: u16) -> String {
    format!("http = \"http://127.0.0.1:{port}/healthz\"\n{HTTP_READY}")
}

struct Setup {
    dir: TestDir,
    releases: Releases,
    port: u16,
    cutover: Cutover,
}

/// Like `setup`, with an http check on the app's port plus `probe` settings.
fn setup_with_http(strategy: &str, probe: &str, b_files: &[(&str, &str)]) -> Setup {
    setup_on(free_port(), strategy, None, Some(probe), b_files, "")
}

/// Releases a (v1) and b (v2); current -> a; cutover serving v1.
fn setup(strategy: &str, ready: Option<&str>, b_files: &[(&str, &str)]) -> Setup {
    setup_on(free_port(), strategy, ready, None, b_files, "")
}

fn setup_on(
    port: u16,
    strategy: &str,
    ready: Option<&str>,
    probe: Option<&str>,
    b_files: &[(&str, &str)],
    reload_extra: &str,
) -> Setup {
    let dir = TestDir::new();
    let releases = Releases::new(&dir);
    releases.add("a", &[("version", "v1")]);
    let mut files = vec![("version", "v2")];
    files.extend_from_slice(b_files);
    releases.add("b", &files);
    releases.switch("a");
    let ready = match (ready, probe) {
        (Some(r), _) => r.to_string(),
        (None, Some(p)) => format!("http = \"http://127.0.0.1:{port}/healthz\"\n{p}"),
        (None, None) => http_ready(port),
    };
    let cutover = Cutover::run_config(
        Mode::Subreaper,
        &dir,
        &ConfigToml::fdserver_in(port, &releases.current(), "")
            .section(
                "reload",
                &format!(
                    "touch = [{}]\nstrategy = \"{strategy}\"\n{reload_extra}",
                    quote(&dir.join("reload").display().to_string()),
                ),
            )
            .section("ready", &ready)
            .to_string(),
    );
    wait_for(SECS_20, || {
        (served_version(port).ok()? == "v1").then_some(())
    })
    .unwrap_or_else(|| panic!("never served v1\n{}", cutover.stderr()));
    wait_for_control(&dir);
    wait_for(SECS_20, || {
        (status(&dir)["programs"][0]["state"] == "running").then_some(())
    })
    .unwrap_or_else(|| panic!("never ready\n{}", cutover.stderr()));
    Setup {
        dir,
        releases,
        port,
        cutover,
    }
}

/// Waits until no reload runs or waits, then returns the number of reloads.
fn settled_reloads(dir: &TestDir) -> u64 {
    wait_for(SECS_20, || {
        let s = status(dir);
        let r = &s["reload"];
        (r["in_progress"] == false && r["pending"] == false).then(|| r["reloads"].as_u64().unwrap())
    })
    .expect("reloads never settled")
}

fn wait_reloads(dir: &TestDir, n: u64) {
    wait_for(SECS_20, || (settled_reloads(dir) >= n).then_some(()))
        .unwrap_or_else(|| panic!("expected {n} reloads: {}", status(dir)));
    // Nothing more may follow: the debounce (200 ms) has passed by then.
    assert_stays(
        "one action makes exactly one reload",
        Duration::from_millis(400),
        || settled_reloads(dir) == n,
    );
}

#[test]
fn touch_file_triggers_once_per_create_touch_replace_and_utime() {
    let s = setup("restart", None, &[]);
    let touch = s.dir.join("reload");
    assert!(!touch.exists(), "the touch file does not exist at start");

    std::fs::write(&touch, "x").unwrap(); // create
    wait_reloads(&s.dir, 1);
    let out = std::process::Command::new("touch")
        .arg(&touch)
        .status()
        .unwrap(); // GNU touch
    assert!(out.success());
    wait_reloads(&s.dir, 2);
    let tmp = s.dir.join("reload.new"); // atomic replace
    std::fs::write(&tmp, "y").unwrap();
    std::fs::rename(&tmp, &touch).unwrap();
    wait_reloads(&s.dir, 3);
    // A timestamp change without writing, as Ansible's `file: state=touch` does.
    let f = std::fs::File::open(&touch).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    wait_reloads(&s.dir, 4);
    let st = status(&s.dir);
    assert!(
        st["reload"]["last"]["trigger"]
            .as_str()
            .unwrap()
            .contains("touch"),
        "{st}"
    );
    assert_eq!(st["reload"]["last"]["ok"], true);
}

/// A relative touch path is taken from where cutover starts, as an Ansible
/// task or a newcomer writes it (`touch = ["reload"]`).
#[test]
fn a_relative_touch_path_triggers_too() {
    let dir = TestDir::new();
    let _c = Cutover::run_config(
        Mode::Subreaper,
        &dir,
        "[app]\ncommand = [\"sleep\", \"1000\"]\n\n[reload]\ntouch = [\"reload\"]\n\n[ready]\ngrace = \"0s\"\n",
    );
    wait_for_control(&dir);
    dir.write("reload", "");
    wait_reloads(&dir, 1);
}

#[test]
fn sighup_and_reload_command_trigger_reloads() {
    let s = setup("restart", None, &[]);
    s.releases.switch("b");
    s.cutover.signal(libc::SIGHUP);
    wait_reloads(&s.dir, 1);
    assert_eq!(served_version(s.port).unwrap(), "v2");
    assert_eq!(status(&s.dir)["reload"]["last"]["trigger"], "SIGHUP");

    s.releases.switch("a");
    let (code, out, err) = client(&s.dir, &["reload", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reload #2 done"), "{out}");
    assert_eq!(
        served_version(s.port).unwrap(),
        "v1",
        "--wait returns after the cutover"
    );
}

#[test]
fn a_burst_of_200_touches_makes_at_most_two_reloads() {
    // The promise holds for a burst without a pause of `debounce`. A busy
    // machine can stall this writer (or cutover's watcher) for a few hundred
    // ms, which rightly ends a burst, so the debounce here is well above that.
    let debounce = Duration::from_secs(1);
    let s = setup_on(free_port(), "restart", None, None, &[], "debounce = \"1s\"");
    let touch = s.dir.join("reload");
    let started = Instant::now();
    let mut last_write = Instant::now();
    let mut longest_pause = Duration::ZERO;
    for i in 0..200 {
        std::fs::write(&touch, i.to_string()).unwrap();
        longest_pause = longest_pause.max(last_write.elapsed());
        last_write = Instant::now();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        longest_pause < debounce,
        "the writer itself paused {longest_pause:?}: not one burst"
    );
    let reloads = settled_reloads(&s.dir);
    let st = status(&s.dir);
    assert!((1..=2).contains(&reloads), "{reloads} reloads: {st}");
    assert!(st["reload"]["triggers"].as_u64().unwrap() >= 10, "{st}");
}

#[test]
fn overlap_into_broken_code_keeps_the_old_instance_serving() {
    // READY=1 comes from the new instance only: no timing involved.
    let s = setup("overlap", Some("notify = true"), &[("crash", "")]);
    let pid_before = status(&s.dir)["programs"][0]["pid"].clone();
    s.releases.switch("b");
    let load = Load::start(s.port);
    let (code, _, err) = client(&s.dir, &["reload", "--wait"]);
    let result = load.finish();
    assert_eq!(code, 1, "{err}\n{}", s.cutover.stderr());
    // The error says why, in the app's own last words on stderr.
    assert!(
        err.contains("exited with status 3 before it was ready: fdserver: broken release, exiting"),
        "{err}"
    );
    let st = status(&s.dir);
    let error = st["reload"]["last"]["programs"][0]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.ends_with(": fdserver: broken release, exiting"),
        "{st}"
    );
    // ... and the line still reaches cutover's stderr (the container log).
    assert!(
        s.cutover
            .stderr()
            .contains("fdserver: broken release, exiting"),
        "{}",
        s.cutover.stderr()
    );
    assert_no_failed("reload into a broken release", &result, 0, String::new);
    assert_eq!(result.versions, vec!["v1"], "users saw only the old code");
    let st = status(&s.dir);
    assert_eq!(st["programs"][0]["pid"], pid_before, "{st}");
    assert_eq!(st["programs"][0]["state"], "running");
    assert_eq!(st["programs"][0]["reload_failures"], 1);
    assert_eq!(st["reload"]["last"]["ok"], false);
}

/// Without sd_notify, a new instance must survive `grace` before the http
/// check (which the old instance could answer) counts; a release that dies
/// at boot within it is rejected.
#[test]
fn overlap_with_http_check_rejects_a_release_that_dies_within_grace() {
    let probe = "grace = \"3s\"\ntimeout = \"10s\"";
    let s = setup_with_http("overlap", probe, &[("crash", "")]);
    s.releases.switch("b");
    let (code, _, err) = client(&s.dir, &["reload", "--wait"]);
    assert_eq!(code, 1, "{err}\n{}", s.cutover.stderr());
    assert!(
        err.contains("exited with status 3 before it was ready"),
        "{err}"
    );
    assert_eq!(served_version(s.port).unwrap(), "v1");
}

#[test]
fn overlap_cuts_over_under_load_without_a_failed_request() {
    let s = setup("overlap", None, &[]);
    s.releases.switch("b");
    let load = Load::start(s.port);
    std::thread::sleep(Duration::from_millis(200));
    let (code, out, err) = client(&s.dir, &["reload", "--wait"]);
    std::thread::sleep(Duration::from_millis(200));
    let result = load.finish();
    assert_eq!(code, 0, "{out}{err}");
    assert_no_failed("reload --wait under load", &result, 21, || {
        format!("{result:?}")
    });
    assert_eq!(result.versions.first().map(String::as_str), Some("v1"));
    assert_eq!(
        result.versions.last().map(String::as_str),
        Some("v2"),
        "{result:?}"
    );
    let last = &status(&s.dir)["reload"]["last"]["programs"][0];
    assert!(
        last["release"].as_str().unwrap().ends_with("releases/b"),
        "{last}"
    );
}

#[test]
fn restart_into_broken_code_comes_back_in_the_last_good_directory() {
    let s = setup("restart", None, &[("crash", "")]);
    s.releases.switch("b");
    let (code, _, err) = client(&s.dir, &["reload", "--wait"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("exited with status 3") && err.contains("releases/a"),
        "{err}"
    );
    // `current` still points at the broken release; the program runs the old one.
    let v = wait_for(SECS_20, || served_version(s.port).ok()).unwrap();
    assert_eq!(v, "v1");
    let st = status(&s.dir);
    assert!(
        st["programs"][0]["release"]
            .as_str()
            .unwrap()
            .ends_with("releases/a"),
        "{st}"
    );
    // A crash restart also stays on the code that worked.
    let pid = st["programs"][0]["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill(2) on the test's own grandchild.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for(SECS_20, || {
        (status(&s.dir)["programs"][0]["restarts"] == 1).then_some(())
    })
    .unwrap();
    assert_eq!(
        wait_for(SECS_20, || served_version(s.port).ok()).unwrap(),
        "v1"
    );
}

#[test]
fn restart_under_load_refuses_no_connection() {
    let s = setup("restart", None, &[]);
    s.releases.switch("b");
    let load = Load::start(s.port);
    std::thread::sleep(Duration::from_millis(200));
    let (code, out, err) = client(&s.dir, &["reload", "--wait"]);
    std::thread::sleep(Duration::from_millis(200));
    let result = load.finish();
    assert_eq!(code, 0, "{out}{err}");
    // The held socket keeps connections in the backlog while nothing accepts.
    assert_no_failed("restart under load", &result, 0, String::new);
    assert_eq!(result.versions, vec!["v1", "v2"], "{result:?}");
}

#[test]
fn notify_readiness_speaks_for_the_new_instance() {
    // The new release boots slowly; with sd_notify the old one serves until
    // the new one says READY=1, although both answer on the same port.
    let s = setup(
        "overlap",
        Some("notify = true\ngrace = \"0s\""),
        &[("boot-delay", "1.0")],
    );
    s.releases.switch("b");
    let load = Load::start(s.port);
    let asked = Instant::now();
    let (code, out, err) = client(&s.dir, &["reload", "--wait"]);
    let took = asked.elapsed();
    let result = load.finish();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        took >= Duration::from_secs(1),
        "returned before the new instance was ready: {took:?}"
    );
    assert_no_failed("reload waits for readiness", &result, 0, String::new);
    assert_eq!(served_version(s.port).unwrap(), "v2");
}

#[test]
fn readiness_timeout_is_reported() {
    let port_never = free_port();
    let ready = format!("tcp = \"127.0.0.1:{port_never}\"\ntimeout = \"700ms\"\ngrace = \"0s\"");
    let dir = TestDir::new();
    let releases = Releases::new(&dir);
    releases.add("a", &[("version", "v1")]);
    releases.switch("a");
    let port = free_port();
    let c = Cutover::run_config(
        Mode::Subreaper,
        &dir,
        &ConfigToml::fdserver_in(port, &releases.current(), "")
            .section(
                "reload",
                &format!(
                    "touch = [{}]\nstrategy = \"overlap\"\n",
                    quote(&dir.join("reload").display().to_string()),
                ),
            )
            .section("ready", &ready)
            .to_string(),
    );
    wait_for_control(&dir);
    wait_for(SECS_20, || {
        (status(&dir)["programs"][0]["state"] == "unready").then_some(())
    })
    .unwrap_or_else(|| panic!("{}", c.stderr()));
    let (code, _, err) = client(&dir, &["reload", "--wait"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("not ready within 700ms") && err.contains(&port_never.to_string()),
        "{err}"
    );
}

#[test]
fn control_errors_are_clear_and_harmless() {
    let dir = TestDir::new();
    let (code, _, err) = client(&dir, &["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("no cutover is running"), "{err}");

    let c = Cutover::start(Mode::Subreaper, &dir, &["run", "--", "sleep", "100"]);
    wait_for_control(&dir);
    wait_for(SECS_20, || {
        (status(&dir)["programs"][0]["state"] == "running").then_some(())
    })
    .unwrap();
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(Cutover::socket(&dir)).unwrap();
    stream.write_all(b"{\"command\": \"explode\"}\n").unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut answer)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["ok"], false);
    assert!(
        v["error"].as_str().unwrap().contains("malformed request"),
        "{v}"
    );
    assert_eq!(
        status(&dir)["programs"][0]["state"],
        "running",
        "{}",
        c.stderr()
    );
    let mode = std::fs::metadata(Cutover::socket(&dir)).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    // Bound in a private directory, never under its final name with the
    // umask's mode, and nothing is left of the staging.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".cutover-sock-") || n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn http_endpoint_serves_health_status_and_metrics() {
    let dir = TestDir::new();
    let port = free_port();
    let c = Cutover::run_config(
        Mode::Subreaper,
        &dir,
        &format!(
            "[control]\nhttp = \"127.0.0.1:{port}\"\n\n[app]\ncommand = [\"sleep\", \"100\"]\n\n[ready]\ngrace = \"300ms\"\n"
        ),
    );
    let health = wait_for(SECS_20, || http_get(port, "/healthz").ok())
        .unwrap_or_else(|| panic!("{}", c.stderr()));
    assert_eq!(health, "ok\n");
    let st: serde_json::Value = serde_json::from_str(&http_get(port, "/status").unwrap()).unwrap();
    assert_eq!(st["programs"][0]["name"], "app");
    let metrics = http_get(port, "/metrics").unwrap();
    assert!(
        metrics.contains("cutover_program_up{program=\"app\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE cutover_reloads_total counter"),
        "{metrics}"
    );
    assert!(http_get(port, "/nope").unwrap_err().contains("404"));
}

#[test]
fn dev_mode_watch_reloads_on_matching_files_only() {
    let dir = TestDir::new();
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("pkg")).unwrap();
    let c = Cutover::run_config(
        Mode::Subreaper,
        &dir,
        &format!(
            "[app]\ncommand = [\"sleep\", \"100\"]\nworkdir = \"{}\"\n\n[reload]\nwatch = [\"**/*.py\"]\n\n[ready]\ngrace = \"0s\"\n",
            src.display()
        ),
    );
    wait_for_control(&dir);
    std::fs::write(src.join("notes.txt"), "not code").unwrap();
    assert_stays_with(
        "a change to notes.txt reloads nothing",
        Duration::from_millis(500),
        || settled_reloads(&dir) == 0,
        || c.stderr(),
    );
    std::fs::write(src.join("pkg/views.py"), "x = 1\n").unwrap();
    wait_for(SECS_20, || (settled_reloads(&dir) >= 1).then_some(())).unwrap();
    assert!(
        status(&dir)["reload"]["last"]["trigger"]
            .as_str()
            .unwrap()
            .contains("pkg/views.py")
    );
}
