//! What every bench binary needs so that nothing it starts outlives a run,
//! even on panic or Ctrl-C: the process groups it starts ([`procs::Group`]), the
//! temporary directories it makes ([`TempDir`]), and the cleanup that removes
//! both ([`install_cleanup`], an interruptible [`sleep`]). Also the small
//! helpers the benches share: loopback HTTP and polling ([`http`]), the
//! machine line, log tails and figures, and starting `cutover run`.
//!
//! Included by each bench with `#[path = "support/mod.rs"] mod support;`; it
//! is no bench target of its own (no `[[bench]]` entry, no `main.rs`).

// Each bench uses its own part of this module.
#![allow(dead_code)]

pub mod http;
pub mod procs;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use procs::Group;

/// Process groups started here, by leader pid (= pgid).
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Stops every [`procs::Group`] and removes every [`TempDir`] still alive when the
/// bench panics; SIGINT/SIGTERM make the next [`sleep`] (or
/// [`check_interrupted`]) panic, which does the same.
pub fn install_cleanup() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        cleanup_all();
    }));
    extern "C" fn on_signal(_: libc::c_int) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }
    // SAFETY: the handler only stores to an atomic; SA_RESETHAND makes a
    // second Ctrl-C kill the bench outright.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESETHAND;
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
}

/// Panics (and so cleans up) once SIGINT or SIGTERM came.
pub fn check_interrupted() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        panic!("interrupted");
    }
}

pub fn sleep(d: Duration) {
    check_interrupted();
    std::thread::sleep(d);
}

pub fn sleep_until(t: Instant) {
    while let Some(left) = t.checked_duration_since(Instant::now()) {
        sleep(left.min(Duration::from_millis(100)));
    }
}

fn cleanup_all() {
    let groups: Vec<i32> = std::mem::take(&mut *GROUPS.lock().unwrap_or_else(|e| e.into_inner()));
    for pid in groups {
        procs::stop_tree(pid, Duration::from_secs(10));
    }
    let dirs: Vec<PathBuf> = std::mem::take(&mut *DIRS.lock().unwrap_or_else(|e| e.into_inner()));
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A temporary directory, removed when dropped and on panic.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .unwrap()
            .keep();
        DIRS.lock().unwrap().push(dir.clone());
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        DIRS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|d| d != &self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- cutover

/// Writes `config` to `dir/cutover.toml`, has `cutover check` accept it, and
/// starts `cutover run` on it in `dir`: control socket `dir/ctl.sock`,
/// `CUTOVER_LOG=level`, `env` set for both, output into `log`.
pub fn spawn_cutover(
    dir: &Path,
    config: &str,
    log: &Path,
    level: &str,
    env: &[(&str, &str)],
) -> Group {
    let bin = env!("CARGO_BIN_EXE_cutover");
    let path = dir.join("cutover.toml");
    std::fs::write(&path, config).unwrap();
    let mut check = Command::new(bin);
    check
        .args(["check", "-c"])
        .arg(&path)
        .envs(env.iter().copied());
    let out = check.output().unwrap();
    assert!(
        out.status.success(),
        "cutover check rejects the config:\n{config}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::File::create(log).unwrap();
    Group::spawn_logged(
        Command::new(bin)
            .args(["run", "-c"])
            .arg(&path)
            .arg("--socket")
            .arg(dir.join("ctl.sock"))
            .current_dir(dir)
            .env("CUTOVER_LOG", level)
            .envs(env.iter().copied()),
        log,
    )
}

// ---------------------------------------------------------------- machine, logs, figures

/// The trimmed stdout of `cmd` if it succeeded, else `fallback`.
pub fn command_text(cmd: &mut Command, fallback: &str) -> String {
    match cmd.stderr(Stdio::null()).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        _ => fallback.to_string(),
    }
}

/// "nproc N, Linux RELEASE, load average L1 L5 L15".
pub fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "nproc {}, Linux {}, load average {}",
        command_text(&mut Command::new("nproc"), "?"),
        kernel.trim(),
        loadavg()
    )
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TOML basic string (JSON's escapes are valid TOML).
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Lines of a log with cutover's warnings and errors, a Python traceback or
/// one of `also` in them, as notes (the first 8, then a count).
pub fn log_problems(path: &Path, also: &[&str]) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| {
            [" WARN ", " ERROR ", "Traceback"]
                .iter()
                .chain(also)
                .any(|m| l.contains(m))
        })
        .collect();
    let mut notes: Vec<String> = bad.iter().take(8).map(|l| format!("log: {l}")).collect();
    if bad.len() > 8 {
        notes.push(format!("log: ... {} more such lines", bad.len() - 8));
    }
    notes
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn p50(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::MIN, f64::max)
}

/// Runs git in `dir` without the user's or the system's config; panics with
/// git's stderr on failure, returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .stdin(Stdio::null())
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed in {}:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
