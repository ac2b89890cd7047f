//! Test helpers: a temp dir per test, the real `cutover` binary started
//! either as PID 1 of a fresh PID namespace or as an ordinary child
//! (subreaper mode), and a guard that kills every process it started.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_cutover");

/// How cutover is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of a new PID namespace (`unshare --pid --fork --mount-proc`).
    Pid1,
    /// An ordinary child of the test; cutover registers as child subreaper.
    Subreaper,
}

pub const MODES: [Mode; 2] = [Mode::Pid1, Mode::Subreaper];

pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        TestDir {
            dir: tempfile::Builder::new()
                .prefix("cutover-test")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.join(name)).unwrap_or_default()
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
        // SAFETY: kill(2) with a pid we started.
        unsafe { libc::kill(self.pid(), sig) };
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
        let root = self.child.id() as i32;
        for p in descendants_of(root) {
            // SAFETY: kill(2); a stale pid at worst gets ESRCH.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub state: char,
    pub name: String,
}

pub fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid ..."; comm may contain spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let mut rest = stat[close + 2..].split_whitespace();
        let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = rest.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        out.push(Proc {
            pid,
            ppid,
            state,
            name: stat[open + 1..close].to_string(),
        });
    }
    out
}

pub fn children_of(pid: i32) -> Vec<i32> {
    processes()
        .into_iter()
        .filter(|p| p.ppid == pid)
        .map(|p| p.pid)
        .collect()
}

pub fn descendants_of(root: i32) -> Vec<Proc> {
    let all = processes();
    let mut by_parent: HashMap<i32, Vec<&Proc>> = HashMap::new();
    for p in &all {
        by_parent.entry(p.ppid).or_default().push(p);
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for child in by_parent.get(&pid).into_iter().flatten() {
            out.push((*child).clone());
            stack.push(child.pid);
        }
    }
    out
}

pub fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks existence.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive && processes().iter().any(|p| p.pid == pid && p.state != 'Z')
}

/// Polls `f` every 10 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cutover ARGS` to completion: (exit code, stdout, stderr).
pub fn run_cutover(dir: &TestDir, args: &[&str]) -> (i32, String, String) {
    let mut c = Cutover::start(Mode::Subreaper, dir, args);
    let code = c.wait(Duration::from_secs(20));
    (code, c.stdout(), c.stderr())
}

pub const SECS_20: Duration = Duration::from_secs(20);

/// A port free on 127.0.0.1 that no other test of this run is given.
///
/// Ports come from below the kernel's ephemeral range (32768 and up), so no
/// outgoing connection of a parallel test takes one between this call and
/// the bind, and from a counter, so two tests never get the same one.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    // Another test binary running at the same time starts elsewhere.
    let base = 20_000 + (std::process::id() as usize % 400) * 25;
    loop {
        let port = (base + NEXT.fetch_add(1, Ordering::Relaxed) % 2_500) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One HTTP/1.0 GET against 127.0.0.1:port; the body, or why it failed.
pub fn http_get(port: u16, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    s.read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no HTTP head")?;
    if !head.starts_with("HTTP/1.")
        || !head
            .split_whitespace()
            .nth(1)
            .is_some_and(|c| c.starts_with('2'))
    {
        return Err(format!("status: {}", head.lines().next().unwrap_or("")));
    }
    Ok(body.to_string())
}

/// The version string a test app serves at `/` ("v2 12345" -> "v2").
pub fn served_version(port: u16) -> Result<String, String> {
    http_get(port, "/").map(|b| b.split_whitespace().next().unwrap_or("").to_string())
}

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
        for (path, content) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
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

/// The path of a test app under tests/integration/apps.
pub fn app(name: &str) -> String {
    format!(
        "{}/tests/integration/apps/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Requests `/` in a loop from a second thread, counting failures and the
/// versions served. Bounded: at most 20,000 requests or 120 s.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<LoadResult>>,
}

#[derive(Debug, Default)]
pub struct LoadResult {
    pub ok: usize,
    pub failed: Vec<String>,
    pub versions: Vec<String>,
}

impl Load {
    pub fn start(port: u16) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut r = LoadResult::default();
            let started = Instant::now();
            while !flag.load(Ordering::Relaxed)
                && r.ok + r.failed.len() < 20_000
                && started.elapsed() < Duration::from_secs(120)
            {
                match served_version(port) {
                    Ok(v) => {
                        r.ok += 1;
                        if r.versions.last() != Some(&v) {
                            r.versions.push(v);
                        }
                    }
                    Err(e) => r.failed.push(e),
                }
            }
            r
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> LoadResult {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
