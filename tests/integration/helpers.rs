//! Test helpers: a temp dir per test, the real `cutover` binary started
//! either as PID 1 of a fresh PID namespace or as an ordinary child
//! (subreaper mode), and a guard that kills every process it started.
//!
//! What the benches need as well (ports, HTTP, load, processes, polling)
//! lives in the shared fixture module (tests/fixture/) and is re-exported
//! here, so that test files keep using `crate::helpers::*`.

#![allow(dead_code)]

use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

// Not every test file uses every one of these.
#[allow(unused_imports)]
pub use crate::fixture::{
    BIN, app,
    cleanup::wait_for,
    http::{example_version, http_get, served_version},
    load::{Load, LoadResult},
    ports::free_port,
    procs::{Proc, alive, children_of, descendants_of, processes},
    write_files,
};
use crate::fixture::{cleanup::TempDir, procs};

/// How cutover is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of a new PID namespace (`unshare --pid --fork --mount-proc`).
    Pid1,
    /// An ordinary child of the test; cutover registers as child subreaper.
    Subreaper,
}

pub const MODES: [Mode; 2] = [Mode::Pid1, Mode::Subreaper];

/// A temp dir per test, removed when dropped; `path`, `join`, `write` and
/// `read` come from the fixture's [`TempDir`].
pub struct TestDir(TempDir);

impl TestDir {
    pub fn new() -> Self {
        TestDir(TempDir::new("cutover-test"))
    }
}

impl Deref for TestDir {
    type Target = TempDir;

    fn deref(&self) -> &TempDir {
        &self.0
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

/// A running cutover; dropping it kills it and everything below it.
pub struct Cutover {
    child: Child,
    mode: Mode,
    logs: PathBuf,
    out: PathBuf,
    exit: Option<i32>,
}

impl Cutover {
    pub fn start(mode: Mode, dir: &TestDir, args: &[&str]) -> Cutover {
        Self::start_with(mode, dir, args, &[])
    }

    pub fn start_with(mode: Mode, dir: &TestDir, args: &[&str], env: &[(&str, &str)]) -> Cutover {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let logs = dir.join(&format!("cutover-{n}.stderr"));
        let out = dir.join(&format!("cutover-{n}.stdout"));
        let mut cmd = match mode {
            Mode::Pid1 => {
                let mut c = Command::new("unshare");
                c.args(["--pid", "--fork", "--mount-proc", "--kill-child", BIN]);
                c
            }
            Mode::Subreaper => Command::new(BIN),
        };
        cmd.args(args)
            .current_dir(dir.path())
            .env("CUTOVER_LOG", "debug")
            .env("CUTOVER_SOCKET", dir.join("control.sock"))
            .env_remove("CUTOVER_CONFIG")
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&logs).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start cutover");
        Cutover {
            child,
            mode,
            logs,
            out,
            exit: None,
        }
    }

    /// Writes `toml` as the config and runs `cutover run -c` on it.
    pub fn run_config(mode: Mode, dir: &TestDir, toml: &str) -> Cutover {
        let cfg = dir.write("cutover.toml", toml);
        Self::start(mode, dir, &["run", "-c", cfg.to_str().unwrap()])
    }

    /// The control socket this cutover listens on.
    pub fn socket(dir: &TestDir) -> PathBuf {
        dir.join("control.sock")
    }

    /// Host pid of the cutover process itself (inside unshare in Pid1 mode).
    pub fn pid(&self) -> i32 {
        let outer = self.child.id() as i32;
        match self.mode {
            Mode::Subreaper => outer,
            Mode::Pid1 => wait_for(Duration::from_secs(5), || {
                children_of(outer).into_iter().next()
            })
            .expect("cutover did not start inside unshare"),
        }
    }

    pub fn signal(&self, sig: i32) {
        procs::signal(self.pid(), sig);
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.logs).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits for cutover to exit; the exit code (128+N for a signal).
    pub fn wait(&mut self, timeout: Duration) -> i32 {
        if let Some(code) = self.exit {
            return code;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                use std::os::unix::process::ExitStatusExt;
                let code = status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
                self.exit = Some(code);
                return code;
            }
            if Instant::now() > deadline {
                panic!(
                    "cutover did not exit within {timeout:?}\n--- stderr ---\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every process below cutover, with its state letter (R, S, Z, ...).
    pub fn descendants(&self) -> Vec<Proc> {
        descendants_of(self.pid())
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        if wait_for(timeout, || self.stderr().contains(needle).then_some(())).is_none() {
            panic!(
                "log never contained {needle:?}\n--- stderr ---\n{}",
                self.stderr()
            );
        }
    }
}

impl Drop for Cutover {
    fn drop(&mut self) {
        if self.exit.is_some() {
            return;
        }
        procs::kill_tree(self.child.id() as i32);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cutover ARGS` to completion: (exit code, stdout, stderr).
pub fn run_cutover(dir: &TestDir, args: &[&str]) -> (i32, String, String) {
    let mut c = Cutover::start(Mode::Subreaper, dir, args);
    let code = c.wait(Duration::from_secs(20));
    (code, c.stdout(), c.stderr())
}

pub const SECS_20: Duration = Duration::from_secs(20);

/// Runs a client subcommand (`reload`, `status`, ...) against the cutover of `dir`.
pub fn client(dir: &TestDir, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("CUTOVER_SOCKET", Cutover::socket(dir))
        .env("CUTOVER_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cutover status --json` of the cutover in `dir`.
pub fn status(dir: &TestDir) -> serde_json::Value {
    let (code, out, err) = client(dir, &["status", "--json"]);
    assert_eq!(code, 0, "status failed: {err}");
    serde_json::from_str(&out).unwrap()
}

/// Waits until the control socket answers.
pub fn wait_for_control(dir: &TestDir) {
    wait_for(SECS_20, || (client(dir, &["status"]).0 == 0).then_some(()))
        .expect("control socket never answered");
}

/// A code volume: releases/<name>/ and an atomically switched `current`.
pub struct Releases {
    pub root: PathBuf,
}

impl Releases {
    pub fn new(dir: &TestDir) -> Releases {
        let root = dir.join("srv");
        std::fs::create_dir_all(root.join("releases")).unwrap();
        Releases { root }
    }

    pub fn current(&self) -> PathBuf {
        self.root.join("current")
    }

    pub fn release(&self, name: &str) -> PathBuf {
        self.root.join("releases").join(name)
    }

    /// Adds release `name` with `files` (path, content).
    pub fn add(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.release(name);
        std::fs::create_dir_all(&dir).unwrap();
        write_files(&dir, files);
        dir
    }

    /// Points `current` at release `name` with an atomic rename.
    pub fn switch(&self, name: &str) {
        let tmp = self.root.join("current.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(self.release(name), &tmp).unwrap();
        std::fs::rename(&tmp, self.current()).unwrap();
    }
}

/// Waits until `port` serves `version`; otherwise fails with cutover's log.
pub fn wait_version(port: u16, version: &str, c: &Cutover, timeout: Duration) {
    wait_for(timeout, || {
        (served_version(port).ok()? == version).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "never served {version} (serving {:?})\n--- stderr ---\n{}",
            served_version(port),
            c.stderr()
        )
    });
}

/// The sha `<root>/current` points to, if any.
pub fn current_sha(root: &Path) -> Option<String> {
    let target = std::fs::read_link(root.join("current")).ok()?;
    Some(target.file_name()?.to_str()?.to_string())
}

/// Names under `<root>/releases` that start with `.tmp-`: partial releases.
pub fn partials(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("releases"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the checks a cutover with `[source]` makes at its start are
/// over (`last_check` has stopped moving), so that a push after it is found
/// by its own trigger alone.
pub fn wait_settled(dir: &TestDir) -> String {
    crate::fixture::cleanup::wait_steady(SECS_20, Duration::from_millis(300), || {
        Some(status(dir)["source"]["last_check"].as_str()?.to_string())
    })
    .expect("the source never settled")
}
