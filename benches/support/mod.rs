//! What only the benches need, on top of the fixture module they share with
//! the integration tests (tests/fixture/: ports, git, HTTP, load and figures,
//! process groups, temp dirs and the cleanup on panic or Ctrl-C, all
//! re-exported here under their old names): starting `cutover run` on a
//! checked config, the machine line, log tails and log problems.
//!
//! Included by each bench with `#[path = "support/mod.rs"] mod support;`; it
//! is no bench target of its own (no `[[bench]]` entry, no `main.rs`).

// Each bench uses its own part of this module.
#![allow(dead_code)]

#[path = "../../tests/fixture/mod.rs"]
pub mod fixture;

use std::path::Path;
use std::process::{Command, Stdio};

// Each bench uses some of these.
#[allow(unused_imports)]
pub use fixture::cleanup::{TempDir, check_interrupted, install_cleanup, sleep, sleep_until};
#[allow(unused_imports)]
pub use fixture::{
    git::git,
    load::{max, ms, p50, p99},
    ports::free_port,
};
#[allow(unused_imports)]
pub use fixture::{http, procs};

use procs::Group;

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
    spawn_cutover_bin(Path::new(fixture::BIN), dir, config, log, level, env)
}

/// [`spawn_cutover`] with another cutover binary (a baseline build).
pub fn spawn_cutover_bin(
    bin: &Path,
    dir: &Path,
    config: &str,
    log: &Path,
    level: &str,
    env: &[(&str, &str)],
) -> Group {
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

/// A `kB` field of /proc/PID/status (VmHWM, VmRSS, ...), if the process is there.
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Bytes of the files under `path`, recursively.
pub fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => total += dir_bytes(&e.path()),
            Ok(_) => total += e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => {}
        }
    }
    total
}
