//! An empty volume: the program's workdir (`current`) does not exist yet,
//! as on the first run of a playbook that checks the code out after it
//! started the container. cutover waits for the first release instead of
//! failing to start in a loop (before: `cannot enter workdir ... ENOENT`,
//! backoff, giving up, the container restarting), says so in its status,
//! refuses reloads meanwhile, and starts the program once `current` exists.

use std::time::Duration;

use crate::fixture::prelude::*;

fn program_state(dir: &TestDir) -> String {
    status(dir)["programs"][0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_missing_workdir_is_waited_for_then_the_program_starts() {
    let dir = TestDir::new();
    let releases = Releases::new(&dir);
    let config = format!(
        r#"[app]
command = ["sh", "-c", "echo started in $(pwd -P) >> {starts}; exec sleep 1000"]
workdir = "{current}"
restart = "on-failure"
restart_delay = "10ms"

[reload]
touch = ["{touch}"]
strategy = "restart"
"#,
        starts = dir.join("starts").display(),
        current = releases.current().display(),
        touch = dir.join("reload").display(),
    );
    let mut c = Cutover::run_config(Mode::Subreaper, &dir, &config);
    wait_for_control(&dir);
    assert_eq!(program_state(&dir), "waiting-for-release", "{}", c.stderr());
    // Well past what the restart policy would have given up in.
    std::thread::sleep(Duration::from_secs(2));
    let st = status(&dir);
    assert_eq!(st["programs"][0]["state"], "waiting-for-release", "{st}");
    assert_eq!(st["programs"][0]["restarts"], 0, "{st}");
    assert!(!dir.join("starts").exists(), "started without a workdir");
    assert!(
        c.stderr().contains("waiting for the first release"),
        "{}",
        c.stderr()
    );
    assert!(
        !c.stderr().contains("cannot enter workdir"),
        "{}",
        c.stderr()
    );
    // A reload has nothing to load yet.
    let (code, out, err) = client(&dir, &["reload", "--wait"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("no release yet"),
        "{out}{err}"
    );

    // The first checkout, then the touch a playbook would send.
    let v1 = releases.add("v1", &[("version", "v1")]);
    releases.switch("v1");
    std::fs::write(dir.join("reload"), "").unwrap();
    wait_for(SECS_20, || (program_state(&dir) == "running").then_some(()))
        .unwrap_or_else(|| panic!("never started\n{}", c.stderr()));
    let starts = dir.read("starts");
    assert_eq!(
        starts.lines().collect::<Vec<_>>(),
        [format!(
            "started in {}",
            v1.canonicalize().unwrap().display()
        )],
        "started once, in the release"
    );
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait(SECS_20), 143, "{}", c.stderr());
}

#[test]
fn a_program_waiting_for_its_release_stops_at_once() {
    let dir = TestDir::new();
    let releases = Releases::new(&dir);
    let config = format!(
        "[app]\ncommand = [\"sleep\", \"1000\"]\nworkdir = \"{}\"\n",
        releases.current().display()
    );
    let mut c = Cutover::run_config(Mode::Subreaper, &dir, &config);
    wait_for_control(&dir);
    assert_eq!(program_state(&dir), "waiting-for-release");
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait(Duration::from_secs(5)), 0, "{}", c.stderr());
}

/// The checkout starts the program (its workdir appears), and the
/// playbook's `reload --wait` arrives while that start is still getting
/// ready: the start is the reload. Before, a second instance of the same
/// release was started beside the first.
#[test]
fn a_reload_during_the_first_start_of_that_release_waits_for_it() {
    let dir = TestDir::new();
    let releases = Releases::new(&dir);
    let config = format!(
        r#"[app]
command = ["sh", "-c", "echo started >> {starts}; sleep 1.5; touch ready-$$; exec sleep 1000"]
workdir = "{current}"

[reload]
strategy = "overlap"

[ready]
command = ["sh", "-c", "test -e ready-$CUTOVER_PID"]
interval = "50ms"
timeout = "20s"
"#,
        starts = dir.join("starts").display(),
        current = releases.current().display(),
    );
    let mut c = Cutover::run_config(Mode::Subreaper, &dir, &config);
    wait_for_control(&dir);
    assert_eq!(program_state(&dir), "waiting-for-release", "{}", c.stderr());
    releases.add("v1", &[("version", "v1")]);
    releases.switch("v1");
    wait_for(SECS_20, || dir.join("starts").exists().then_some(()))
        .unwrap_or_else(|| panic!("never started\n{}", c.stderr()));
    assert_eq!(program_state(&dir), "starting", "{}", c.stderr());
    let (code, out, err) = client(&dir, &["reload", "--wait"]);
    assert_eq!(code, 0, "{out}{err}\n{}", c.stderr());
    assert_eq!(program_state(&dir), "running");
    assert_eq!(
        dir.read("starts").lines().count(),
        1,
        "one instance started"
    );
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait(SECS_20), 143, "{}", c.stderr());
}
