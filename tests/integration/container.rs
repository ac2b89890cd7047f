//! cutover as the ENTRYPOINT of a real container on a real Docker engine.
//!
//! Needs `scripts/setup-docker` and `scripts/build-test-image` to have run
//! (scripts/test does both, and exports DOCKER, the client to use);
//! enabled with `--features container-tests`.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::dockercli::{docker as run, text};
use crate::helpers::*;

const IMAGE: &str = "cutover-test:latest";

/// A container that is removed (with everything in it) when dropped.
struct Container {
    name: String,
}

impl Container {
    fn start(extra: &[&str], command: &[&str]) -> Container {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "cutover-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut args = vec!["run", "-d", "--network", "host", "--name", &name];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.push("--");
        args.extend_from_slice(command);
        let out = run(&args);
        assert!(out.status.success(), "docker run failed: {}", text(&out));
        Container { name }
    }

    fn exec(&self, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", &self.name];
        args.extend_from_slice(cmd);
        run(&args)
    }

    fn wait_exit(&self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            let out = run(&[
                "inspect",
                "-f",
                "{{.State.Running}} {{.State.ExitCode}}",
                &self.name,
            ]);
            let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if let Some(code) = t.strip_prefix("false ") {
                return code.parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "container still running: {t}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        text(&run(&["logs", &self.name]))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run(&["rm", "-f", &self.name]);
    }
}

#[test]
fn cutover_is_pid_1_in_the_container() {
    let c = Container::start(&[], &["sleep", "1000"]);
    let found = wait_for(SECS_20, || {
        let out = c.exec(&["cat", "/proc/1/comm"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    assert_eq!(found.as_deref(), Some("cutover"), "{}", c.logs());
}

#[test]
fn docker_stop_is_graceful_and_keeps_the_exit_code() {
    let c = Container::start(
        &[],
        &[
            "sh",
            "-c",
            "trap 'echo graceful; exit 42' TERM; echo ready; sleep 1000 & wait",
        ],
    );
    wait_for(SECS_20, || c.logs().contains("ready").then_some(())).expect("app ready");
    let asked = Instant::now();
    let out = run(&["stop", "-t", "15", &c.name]);
    assert!(out.status.success(), "{}", text(&out));
    let took = asked.elapsed();
    assert_eq!(c.wait_exit(SECS_20), 42, "{}", c.logs());
    assert!(c.logs().contains("graceful"));
    // Well before docker's own 15 s SIGKILL.
    assert!(took < Duration::from_secs(5), "docker stop took {took:?}");
}

#[test]
fn orphans_are_reaped_in_the_container() {
    // The app orphans 50 processes, waits for them to end, and exits with
    // the number of zombies it can see.
    let script = "for i in $(seq 50); do (sleep 0.2 &); done; sleep 1.5; \
                  exit $(grep -c '^[0-9]* ([^)]*) Z' /proc/[0-9]*/stat | grep -vc ':0$')";
    let c = Container::start(&["-e", "CUTOVER_LOG=debug"], &["sh", "-c", script]);
    assert_eq!(c.wait_exit(SECS_20), 0, "zombies were left\n{}", c.logs());
    let reaped = c.logs().matches("reaped unwatched process").count();
    assert!(
        reaped >= 50,
        "only {reaped} orphans reaped by cutover\n{}",
        c.logs()
    );
}
