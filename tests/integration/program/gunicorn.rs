//! Each reload strategy with a real gunicorn (from PyPI, installed by
//! scripts/setup-python into a cached virtualenv), on a held socket, under
//! load, and into broken code.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use crate::fixture::prelude::*;

/// The virtualenv with gunicorn; set up once per test run (seconds when cached).
pub(crate) fn venv() -> &'static PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        if let Ok(v) = std::env::var("CUTOVER_VENV") {
            return PathBuf::from(v);
        }
        let script = format!("{}/scripts/setup-python", env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new(&script)
            .output()
            .expect("run scripts/setup-python");
        assert!(
            out.status.success(),
            "setup-python failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("export CUTOVER_VENV="))
            .expect("setup-python names the venv");
        PathBuf::from(line.trim())
    })
}

fn example(path: &str) -> String {
    format!("{}/examples/gunicorn/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// The example app with its VERSION changed.
fn app_source(version: &str) -> String {
    std::fs::read_to_string(example("app/app.py"))
        .unwrap()
        .replace("VERSION = \"v1\"", &format!("VERSION = \"{version}\""))
}

const BROKEN: &str = "def app(environ, start_response:\n    pass\n";

struct Gunicorn {
    dir: TestDir,
    releases: Releases,
    port: u16,
    cutover: Cutover,
}

fn start(strategy: &str) -> Gunicorn {
    let dir = TestDir::new();
    let releases = Releases::new(&dir);
    releases.add("a", &[("app.py", &app_source("v1"))]);
    releases.add("b", &[("app.py", &app_source("v2"))]);
    releases.add("broken", &[("app.py", BROKEN)]);
    releases.switch("a");
    let port = free_port();
    let gunicorn = venv().join("bin/gunicorn");
    // signal: gunicorn must re-read `current` itself on HUP (--chdir keeps the
    // symlink path); its readiness after HUP is the http check after a grace.
    // restart/overlap: cutover starts each instance in the resolved release,
    // and the workers' READY=1 (gunicorn.conf.py hooks) says the new code loaded.
    let gunicorn = gunicorn.display().to_string();
    let conf = example("gunicorn.conf.py");
    let current = releases.current().display().to_string();
    let mut command = vec![gunicorn.as_str(), "--config", &conf];
    let ready = match strategy {
        "signal" => {
            command.extend(["--chdir", &current]);
            format!("http = \"http://127.0.0.1:{port}/healthz\"\ngrace = \"1500ms\"")
        }
        _ => "notify = true".to_string(),
    };
    command.extend(["--workers", "2", "app:app"]);
    let config = ConfigToml::new()
        .listen("http", port, "")
        .app(
            &command,
            &format!(
                "workdir = \"{current}\"\nrestart = \"on-failure\"\nstop_timeout = \"30s\"\n\
                 forward_to = \"main\"\nreload_strategy = \"{strategy}\""
            ),
        )
        .section("ready", &format!("{ready}\ntimeout = \"30s\""))
        .to_string();
    let cutover = Cutover::run_config(Mode::Subreaper, &dir, &config);
    wait_for(Duration::from_secs(30), || {
        (example_version(port).ok()? == "v1").then_some(())
    })
    .unwrap_or_else(|| panic!("gunicorn never served v1\n{}", cutover.stderr()));
    wait_for_control(&dir);
    wait_for(SECS_20, || {
        (status(&dir)["programs"][0]["state"] == "running").then_some(())
    })
    .unwrap_or_else(|| panic!("never ready\n{}", cutover.stderr()));
    Gunicorn {
        dir,
        releases,
        port,
        cutover,
    }
}

/// Reloads into release b under load: new code, not one failed request.
fn reload_under_load(g: &Gunicorn) {
    g.releases.switch("b");
    let load = Load::example(g.port);
    std::thread::sleep(Duration::from_millis(300));
    let (code, out, err) = client(&g.dir, &["reload", "--wait"]);
    std::thread::sleep(Duration::from_millis(300));
    let result = load.finish();
    assert_eq!(code, 0, "{out}{err}\n{}", g.cutover.stderr());
    assert_no_failed("gunicorn reload under load", &result, 21, String::new);
    let versions = result.versions;
    assert_eq!(
        versions.first().map(String::as_str),
        Some("v1"),
        "{versions:?}"
    );
    assert_eq!(
        versions.last().map(String::as_str),
        Some("v2"),
        "{versions:?}"
    );
}

#[test]
fn gunicorn_overlap_reloads_under_load_and_refuses_broken_code() {
    let g = start("overlap");
    reload_under_load(&g);
    g.releases.switch("broken");
    let load = Load::example(g.port);
    let (code, _, err) = client(&g.dir, &["reload", "--wait"]);
    let result = load.finish();
    assert_ne!(code, 0);
    assert!(err.contains("before it was ready"), "{err}");
    assert_no_failed("gunicorn reload into broken code", &result, 1, String::new);
    let versions = result.versions;
    assert_eq!(versions, vec!["v2"], "users kept the working code");
    let st = status(&g.dir);
    assert_eq!(st["programs"][0]["reload_failures"], 1, "{st}");
    assert_eq!(st["reload"]["last"]["ok"], false);
}

#[test]
fn gunicorn_restart_reloads_under_load_and_comes_back_on_broken_code() {
    let g = start("restart");
    reload_under_load(&g);
    g.releases.switch("broken");
    let (code, _, err) = client(&g.dir, &["reload", "--wait"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("restarted the previous code") && err.contains("releases/b"),
        "{err}"
    );
    let v = wait_for(Duration::from_secs(30), || example_version(g.port).ok()).unwrap();
    assert_eq!(v, "v2", "back on the last release that worked");
}

#[test]
fn gunicorn_signal_reloads_by_hup_and_restarts_a_master_that_dies() {
    let g = start("signal");
    let pid_before = status(&g.dir)["programs"][0]["pid"].clone();
    reload_under_load(&g);
    assert_eq!(
        status(&g.dir)["programs"][0]["pid"],
        pid_before,
        "HUP keeps the master"
    );

    // gunicorn's master exits when new workers fail to boot.
    g.releases.switch("broken");
    let (code, _, err) = client(&g.dir, &["reload", "--wait"]);
    assert_ne!(code, 0);
    assert!(err.contains("while reloading"), "{err}");
    g.cutover
        .wait_for_log("the program died while reloading", SECS_20);
    // The operator puts working code back; the restart policy brings gunicorn up.
    g.releases.switch("b");
    let v = wait_for(Duration::from_secs(30), || example_version(g.port).ok()).unwrap();
    assert_eq!(v, "v2");
    assert!(status(&g.dir)["programs"][0]["restarts"].as_u64().unwrap() >= 1);
}
