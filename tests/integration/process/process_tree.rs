//! PID-1 duties: reaping orphans, signals reaching the whole group, graceful
//! stop with SIGKILL escalation, and a clean start for the child.

use std::time::{Duration, Instant};

use crate::fixture::prelude::*;

/// 100 grandchildren are orphaned (their parent subshell exits at once) and
/// re-parented to cutover; none may stay a zombie.
#[test]
fn orphaned_grandchildren_are_all_reaped() {
    for mode in MODES {
        let dir = TestDir::new();
        let script =
            "for i in $(seq 100); do (sleep 0.2 &); done; echo spawned > spawned; sleep 100";
        let c = Cutover::start(mode, &dir, &["run", "--", "sh", "-c", script]);
        wait_for(SECS_20, || dir.join("spawned").exists().then_some(())).expect("app ran");
        // The orphans are cutover's children now; they end after 0.2 s.
        let settled = wait_for(Duration::from_secs(10), || {
            let d = c.descendants();
            let sleeping = d
                .iter()
                .filter(|p| p.name == "sleep" && p.state != 'Z')
                .count();
            (sleeping == 1).then_some(d)
        })
        .expect("orphans never ended");
        // Give the reaper a moment after the last exit, then look for zombies.
        std::thread::sleep(Duration::from_millis(200));
        let zombies: Vec<_> = c
            .descendants()
            .into_iter()
            .filter(|p| p.state == 'Z')
            .collect();
        assert!(
            zombies.is_empty(),
            "{mode:?}: zombies left: {zombies:?} (before: {settled:?})"
        );
        let reaped = c.stderr().matches("reaped unwatched process").count();
        assert!(
            reaped >= 100,
            "{mode:?}: only {reaped} orphans reaped\n{}",
            c.stderr()
        );
    }
}

/// A signal sent to cutover reaches a grandchild in the program's group.
#[test]
fn forwarded_signal_reaches_a_grandchild() {
    for mode in MODES {
        let dir = TestDir::new();
        let grandchild = "import signal, time, pathlib\n\
            signal.signal(signal.SIGUSR2, lambda *a: (pathlib.Path('got-usr2').write_text('yes'), exit(0)))\n\
            pathlib.Path('ready').write_text('')\n\
            time.sleep(100)\n";
        dir.write("grandchild.py", grandchild);
        // The shell ignores USR2; python installs its own handler over that.
        let script = "trap '' USR2; python3 grandchild.py & wait";
        let mut c = Cutover::start(mode, &dir, &["run", "--", "sh", "-c", script]);
        wait_for(SECS_20, || dir.join("ready").exists().then_some(())).expect("grandchild ready");
        c.signal(libc::SIGUSR2);
        wait_for(SECS_20, || (dir.read("got-usr2") == "yes").then_some(()))
            .unwrap_or_else(|| panic!("{mode:?}: grandchild never got USR2\n{}", c.stderr()));
        // The grandchild exits 0 on USR2, then the shell, then cutover.
        assert_eq!(c.wait(SECS_20), 0, "{mode:?}\n{}", c.stderr());
    }
}

/// A program that ignores SIGTERM is killed after stop_timeout, with its
/// whole group: nothing survives.
#[test]
fn sigterm_ignoring_program_is_killed_after_stop_timeout() {
    for mode in MODES {
        let dir = TestDir::new();
        let mut c = Cutover::run_config(
            mode,
            &dir,
            r#"[app]
command = ["sh", "-c", "trap '' TERM; sleep 1000 & sleep 1000 & echo up > up; wait"]
stop_timeout = "700ms"
"#,
        );
        wait_for(SECS_20, || dir.join("up").exists().then_some(())).expect("app up");
        let tree: Vec<i32> = c.descendants().iter().map(|p| p.pid).collect();
        assert!(tree.len() >= 3, "{tree:?}");
        let asked = Instant::now();
        c.signal(libc::SIGTERM);
        let code = c.wait(SECS_20);
        let took = asked.elapsed();
        assert_eq!(
            code,
            137,
            "{mode:?}: the shell dies of SIGKILL\n{}",
            c.stderr()
        );
        assert!(
            took >= Duration::from_millis(700),
            "{mode:?}: killed after {took:?}"
        );
        assert!(
            c.stderr().contains("did not stop in time"),
            "{}",
            c.stderr()
        );
        let survivors: Vec<i32> = tree.into_iter().filter(|&p| alive(p)).collect();
        assert!(survivors.is_empty(), "{mode:?}: survivors {survivors:?}");
    }
}

/// Stop waits for the whole group, and returns as soon as it is empty.
#[test]
fn graceful_stop_exits_when_the_group_is_gone() {
    let dir = TestDir::new();
    let mut c = Cutover::start(
        Mode::Pid1,
        &dir,
        &["run", "--", "sh", "-c", "sleep 1000 & sleep 1000 & wait"],
    );
    c.wait_for_log("started", SECS_20);
    wait_for(SECS_20, || (c.descendants().len() >= 3).then_some(())).unwrap();
    let tree: Vec<i32> = c.descendants().iter().map(|p| p.pid).collect();
    c.signal(libc::SIGTERM);
    // Default stop_timeout is 10 s; sleep dies of TERM at once, so no SIGKILL.
    assert_eq!(c.wait(SECS_20), 143);
    assert!(
        !c.stderr().contains("did not stop in time"),
        "{}",
        c.stderr()
    );
    assert!(tree.iter().all(|&p| !alive(p)));
}

/// The program starts with an empty signal mask and default dispositions,
/// even when cutover itself inherited ignored signals.
#[test]
fn child_gets_clean_signal_mask_and_dispositions() {
    let cmd = format!(
        "trap '' USR1 HUP; exec {} run -- grep -E '^Sig(Blk|Ign)' /proc/self/status",
        BIN
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &cmd])
        .env("CUTOVER_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in text.lines() {
        let mask = line.split_whitespace().nth(1).unwrap();
        assert!(mask.chars().all(|c| c == '0'), "not clean: {line}");
    }
    assert_eq!(text.lines().count(), 2, "{text}");
}

#[test]
fn env_workdir_and_user_are_applied() {
    let dir = TestDir::new();
    let work = dir.join("work");
    std::fs::create_dir(&work).unwrap();
    // nobody must be able to enter the temp dir to write there.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    std::fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut c = Cutover::run_config(
        Mode::Subreaper,
        &dir,
        &format!(
            r#"[app]
command = ["sh", "-c", "echo $GREETING $PORT $(pwd) $(id -u):$(id -g) $HOME > out"]
workdir = "{}"
env = {{ GREETING = "hello", PORT = 8000 }}
user = "nobody"
"#,
            work.display()
        ),
    );
    assert_eq!(c.wait(SECS_20), 0, "{}", c.stderr());
    let out = std::fs::read_to_string(work.join("out")).unwrap();
    assert_eq!(
        out.trim(),
        format!("hello 8000 {} 65534:65534 /nonexistent", work.display())
    );
}

/// With several programs, the first to end on its own takes the others down
/// and gives cutover its exit code.
#[test]
fn first_program_to_end_stops_the_others() {
    let dir = TestDir::new();
    let mut c = Cutover::run_config(
        Mode::Pid1,
        &dir,
        r#"[[program]]
name = "web"
command = ["sleep", "1000"]

[[program]]
name = "worker"
command = ["sh", "-c", "sleep 0.3; exit 9"]
"#,
    );
    assert_eq!(c.wait(SECS_20), 9, "{}", c.stderr());
    let log = c.stderr();
    assert!(
        log.contains("program=worker") && log.contains("stopping the others"),
        "{log}"
    );
}

/// SIGINT and SIGQUIT to cutover mean graceful shutdown: the program gets its
/// stop_signal (TERM here), not the signal cutover received.
#[test]
fn sigint_and_sigquit_stop_gracefully() {
    for sig in [libc::SIGINT, libc::SIGQUIT] {
        let dir = TestDir::new();
        let script =
            "trap 'exit 11' TERM; trap 'exit 12' INT QUIT; echo up > up; sleep 1000 & wait";
        let mut c = Cutover::start(Mode::Pid1, &dir, &["run", "--", "sh", "-c", script]);
        wait_for(SECS_20, || dir.join("up").exists().then_some(())).expect("app up");
        c.signal(sig);
        assert_eq!(c.wait(SECS_20), 11, "signal {sig}\n{}", c.stderr());
    }
}

/// A second shutdown signal skips what is left of stop_timeout.
#[test]
fn second_shutdown_signal_kills_at_once() {
    let dir = TestDir::new();
    let mut c = Cutover::run_config(
        Mode::Subreaper,
        &dir,
        "[app]\ncommand = [\"sh\", \"-c\", \"trap '' TERM; echo up > up; sleep 1000\"]\nstop_timeout = \"60s\"\n",
    );
    wait_for(SECS_20, || dir.join("up").exists().then_some(())).expect("app up");
    c.signal(libc::SIGTERM);
    c.wait_for_log("stopping", SECS_20);
    let asked = Instant::now();
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait(SECS_20), 137, "{}", c.stderr());
    assert!(asked.elapsed() < Duration::from_secs(10));
    assert!(
        c.stderr().contains("second shutdown signal"),
        "{}",
        c.stderr()
    );
}
