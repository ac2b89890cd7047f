//! The docker client (and the compose clients) for the container tests:
//! every call bounded in time, so a hung engine fails the test instead of
//! hanging CI.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const DOCKER_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the docker client; killed (and the test failed) after `DOCKER_TIMEOUT`.
pub fn docker(args: &[&str]) -> Output {
    let client = std::env::var("DOCKER").unwrap_or_else(|_| "docker".to_string());
    let mut cmd = Command::new(client);
    cmd.args(args);
    bounded(cmd, &format!("docker {args:?}"))
}

/// `docker build ARGS` with Docker's legacy builder (DOCKER_BUILDKIT=0: the
/// engine's BuildKit wants a bridge network and newer clients a buildx
/// plugin, neither of which is there; scripts/build-test-image says more).
pub fn docker_build(args: &[&str]) -> Output {
    let client = std::env::var("DOCKER").unwrap_or_else(|_| "docker".to_string());
    let mut cmd = Command::new(client);
    cmd.arg("build").args(args).env("DOCKER_BUILDKIT", "0");
    bounded(cmd, &format!("docker build {args:?}"))
}

/// Runs `cmd` (a docker or compose client) with no stdin, its output
/// captured; killed (and the test failed) after `DOCKER_TIMEOUT`. `what`
/// names it in that failure.
pub fn bounded(mut cmd: Command, what: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    let deadline = Instant::now() + DOCKER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {DOCKER_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: std::fs::read(out).unwrap_or_default(),
        stderr: std::fs::read(err).unwrap_or_default(),
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn inspect(what: &str, format: &str) -> Option<String> {
    let out = docker(&["inspect", "-f", format, what]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
