//! Reload benchmark: prints figures, asserts nothing about time.
//!
//! gunicorn (examples/gunicorn) serves a small WSGI app under a steady wrk
//! load while its code is replaced RELOADS times. Each row is one way of
//! taking the new code:
//!
//! - `signal`, `restart`, `overlap`: gunicorn under `cutover run`, which holds
//!   the listening socket; a reload is a new `releases/<n>`, an atomic flip of
//!   the `current` symlink and a touch of the reload file;
//! - `naive`: what a shell script does without cutover: gunicorn bound to the
//!   port itself, stopped with SIGTERM and started again on each reload.
//!
//! Per row: requests wrk completed, requests that failed (socket errors plus
//! non-2xx/3xx answers), the time from trigger to the first answer from the
//! new code (GET / polled every 2 ms on its own connection) and, under
//! cutover, cutover's own part of each reload as it reports it in
//! `cutover status --json` (`action_ms + cutover_ms`).
//!
//! Run with `cargo bench --bench reload` (about a minute). Needs gunicorn and
//! wrk: `CUTOVER_VENV` and `WRK` from the environment, else from
//! `scripts/setup-python`. Traffic goes to 127.0.0.1 only. Every process
//! started here lives in a process group of its own; all of them, and the
//! temporary directories, are removed at the end, on panic and on Ctrl-C.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use support::fixture::wrk::{WrkResult, parse as parse_wrk};
use support::http::{poll_get, wait_served};
use support::procs::Group;
use support::{
    TempDir, command_text, free_port, install_cleanup, loadavg, log_problems, machine, max, p50,
    sleep, sleep_until, spawn_cutover, tail, toml_str,
};

const BIN: &str = env!("CARGO_BIN_EXE_cutover");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// wrk's run; every reload happens inside it.
const WRK_SECS: u64 = 12;
const WRK_THREADS: u32 = 1;
const WRK_CONNECTIONS: u32 = 8;
const RELOADS: usize = 5;
/// First reload this long after wrk starts, then one every RELOAD_EVERY.
const FIRST_RELOAD: Duration = Duration::from_millis(1500);
const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// Pause between two probes for the new code.
const PROBE_EVERY: Duration = Duration::from_millis(2);
/// Give up waiting for the new code (or for cutover to finish a reload).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Rows not started by then are skipped, to keep the bench bounded.
const BUDGET: Duration = Duration::from_secs(150);
const WORKERS: u32 = 2;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Cutover(&'static str),
    Naive,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Cutover(s) => s,
            Mode::Naive => "naive",
        }
    }
}

fn main() {
    install_cleanup();
    let started = Instant::now();
    let tools = Tools::find();
    let gunicorn_version = command_text(
        Command::new(tools.gunicorn()).arg("--version"),
        "gunicorn ?",
    );
    println!("cutover reload benchmark ({BIN})");
    println!(
        "machine: {}; {gunicorn_version}, --workers {WORKERS} (sync)",
        machine()
    );
    println!(
        "load:    {} -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{WRK_SECS}s --latency -H 'Connection: close' http://127.0.0.1:PORT/   (a fresh PORT per row)",
        tools.wrk.display()
    );
    println!(
        "reloads: {RELOADS} per row, at +{:.1} s then every {} s of the wrk run; new code = first GET / on a separate connection (every {} ms) answered by the new VERSION",
        FIRST_RELOAD.as_secs_f64(),
        RELOAD_EVERY.as_secs(),
        PROBE_EVERY.as_millis()
    );
    println!();

    let modes = [
        Mode::Cutover("signal"),
        Mode::Cutover("restart"),
        Mode::Cutover("overlap"),
        Mode::Naive,
    ];
    let mut rows = Vec::new();
    for mode in modes {
        if started.elapsed() > BUDGET {
            println!(
                "{}: skipped, the bench is over its time budget",
                mode.name()
            );
            continue;
        }
        let row = run_row(&tools, mode);
        row.print_details();
        rows.push(row);
    }

    println!();
    println!(
        "{:<8} | {:>8} | {:>6} | {:>32} | {:>30}",
        "strategy",
        "requests",
        "failed",
        "trigger->new code p50 / max (ms)",
        "cutover's own part p50 (ms)"
    );
    println!(
        "{:-<8}-+-{:-<8}-+-{:-<6}-+-{:-<32}-+-{:-<30}",
        "", "", "", "", ""
    );
    for row in &rows {
        row.print_line();
    }
    println!();
    println!(
        "failed = wrk socket errors (connect/read/write/timeout) + non-2xx/3xx answers. \
         cutover's own part = action_ms (trigger seen -> reload action started; for restart \
         without the old instance's graceful exit, which is gunicorn's time and shown as \
         `old stop` per reload) + cutover_ms (overlap: new instance ready -> old one told \
         to stop)."
    );
    println!(
        "whole bench: {:.1} s; load average now {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}

// ---------------------------------------------------------------- one row

struct Reload {
    /// Since wrk started.
    at: Duration,
    /// Trigger to first answer from the new code; None if it never came.
    new_code: Option<Duration>,
    /// Failed probes (connect/read errors, non-200) while waiting for it.
    probe_errors: u32,
    /// From `cutover status --json`, under cutover only.
    report: Option<Report>,
}

struct Report {
    ok: bool,
    error: Option<String>,
    action_ms: f64,
    ready_ms: f64,
    cutover_ms: f64,
    /// restart: the old gunicorn's graceful exit, the app's own time.
    old_stop_ms: f64,
    duration_ms: f64,
    /// Triggers cutover counted for this one touch.
    triggers: u64,
}

struct Row {
    mode: Mode,
    wrk: WrkResult,
    reloads: Vec<Reload>,
    /// Anything odd seen: log lines, failed or extra reloads.
    notes: Vec<String>,
}

fn run_row(tools: &Tools, mode: Mode) -> Row {
    let dir = TempDir::new(&format!("cutover-bench-{}", mode.name()));
    let root = dir.path().to_path_buf();
    let port = free_port();
    let log_path = root.join("server.log");
    std::fs::create_dir_all(root.join("releases")).unwrap();
    make_release(&root, 1);
    flip(&root, 1);

    let mut server = match mode {
        Mode::Cutover(strategy) => start_cutover(tools, &root, port, strategy, &log_path),
        Mode::Naive => start_naive(tools, &root, port, &log_path),
    };
    if let Err(e) = wait_served(port, START_TIMEOUT, &mut server, |b| is_version(b, 1)) {
        panic!(
            "{}: the server did not answer with v1: {e}\n{}",
            mode.name(),
            tail(&log_path, 30)
        );
    }
    let socket = root.join("ctl.sock");
    let mut last_status = match mode {
        Mode::Cutover(_) => Some(wait_running(&socket)),
        Mode::Naive => None,
    };

    // Next releases are written before wrk starts: a reload is only the flip
    // and the trigger.
    for n in 2..=RELOADS + 1 {
        make_release(&root, n);
    }
    let mut wrk = Group::spawn(
        Command::new(&tools.wrk)
            .args([
                format!("-t{WRK_THREADS}"),
                format!("-c{WRK_CONNECTIONS}"),
                format!("-d{WRK_SECS}s"),
                "--latency".into(),
                "-H".into(),
                "Connection: close".into(),
                format!("http://127.0.0.1:{port}/"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let wrk_started = Instant::now();
    let wrk_end = wrk_started + Duration::from_secs(WRK_SECS);

    let mut reloads = Vec::new();
    let mut notes = Vec::new();
    for i in 0..RELOADS {
        let n = i + 2;
        let due = wrk_started + FIRST_RELOAD + RELOAD_EVERY * i as u32;
        sleep_until(due);
        if Instant::now() + Duration::from_millis(500) > wrk_end {
            notes.push(format!(
                "reload {} skipped: too close to the end of the wrk run",
                i + 1
            ));
            break;
        }
        flip(&root, n);
        let at = wrk_started.elapsed();
        let trigger = Instant::now();
        match mode {
            Mode::Cutover(_) => touch(&root.join("reload"), n),
            Mode::Naive => {
                // What `kill $PID; wait; gunicorn ... &` does.
                server.terminate_leader();
                server.wait_exit(Duration::from_secs(30));
                server = start_naive(tools, &root, port, &log_path);
            }
        }
        let (new_code, probe_errors) = poll_get(port, trigger, RELOAD_TIMEOUT, PROBE_EVERY, |b| {
            is_version(b, n)
        });
        let report = last_status.as_mut().map(|prev| {
            let (report, now) = reload_report(&socket, prev);
            *prev = now;
            report
        });
        if let Some(r) = &report {
            if !r.ok {
                notes.push(format!(
                    "reload {} FAILED: {}",
                    i + 1,
                    r.error.as_deref().unwrap_or("?")
                ));
            }
            if r.triggers != 1 {
                notes.push(format!(
                    "reload {}: cutover counted {} triggers for one touch",
                    i + 1,
                    r.triggers
                ));
            }
        }
        if new_code.is_none() {
            notes.push(format!(
                "reload {}: v{n} not seen within {} s",
                i + 1,
                RELOAD_TIMEOUT.as_secs()
            ));
        }
        reloads.push(Reload {
            at,
            new_code,
            probe_errors,
            report,
        });
    }

    let wrk_out = wrk.wait_output(Duration::from_secs(WRK_SECS + 30));
    let wrk = parse_wrk(&wrk_out);
    if wrk.requests == 0 {
        notes.push(format!("wrk printed no result:\n{wrk_out}"));
    }
    if let Some(prev) = &last_status {
        let reload = &prev["reload"];
        let extra = reload["reloads"].as_u64().unwrap_or(0) as usize;
        if extra != reloads.len() {
            notes.push(format!(
                "cutover ran {extra} reloads for {} touches",
                reloads.len()
            ));
        }
    }
    server.stop(Duration::from_secs(15));
    // cutover's warnings and errors, gunicorn's errors.
    notes.extend(log_problems(&log_path, &["[ERROR]", "[CRITICAL]"]));
    drop(dir);
    Row {
        mode,
        wrk,
        reloads,
        notes,
    }
}

impl Row {
    fn new_code_ms(&self) -> Vec<f64> {
        self.reloads
            .iter()
            .filter_map(|r| r.new_code)
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect()
    }

    fn own_ms(&self) -> Vec<f64> {
        self.reloads
            .iter()
            .filter_map(|r| r.report.as_ref())
            .filter(|r| r.ok)
            .map(|r| r.action_ms + r.cutover_ms)
            .collect()
    }

    fn print_line(&self) {
        let new_code = self.new_code_ms();
        let missing = self.reloads.len() - new_code.len();
        let mut nc = if new_code.is_empty() {
            "-".to_string()
        } else {
            format!("{:.0} / {:.0}", p50(&new_code), max(&new_code))
        };
        if missing > 0 {
            let _ = write!(nc, " ({missing} never)");
        }
        let own = self.own_ms();
        let own = match self.mode {
            Mode::Naive => "- (no cutover)".to_string(),
            _ if own.is_empty() => "-".to_string(),
            _ => format!("{:.2}", p50(&own)),
        };
        println!(
            "{:<8} | {:>8} | {:>6} | {:>32} | {:>30}",
            self.mode.name(),
            self.wrk.requests,
            self.wrk.failed(),
            nc,
            own
        );
    }

    fn print_details(&self) {
        let w = &self.wrk;
        println!(
            "{}: {} requests ({} req/s), failed {} = connect {} + read {} + write {} + timeout {} + non-2xx/3xx {}; latency p50 {} p99 {} max {}",
            self.mode.name(),
            w.requests,
            w.rps,
            w.failed(),
            w.connect,
            w.read,
            w.write,
            w.timeout,
            w.non_2xx,
            w.latency_p50,
            w.latency_p99,
            w.latency_max
        );
        for (i, r) in self.reloads.iter().enumerate() {
            let mut line = format!(
                "  reload {} at +{:>5.2} s: new code after {:>8}, {} failed probes",
                i + 1,
                r.at.as_secs_f64(),
                r.new_code.map_or("never".into(), |d| format!(
                    "{:.1} ms",
                    d.as_secs_f64() * 1000.0
                )),
                r.probe_errors
            );
            if let Some(rep) = &r.report {
                let _ = write!(
                    line,
                    "; cutover: action {:.2} + old stop {:.1} + ready {:.1} + cutover {:.2} ms, reload {:.1} ms{}",
                    rep.action_ms,
                    rep.old_stop_ms,
                    rep.ready_ms,
                    rep.cutover_ms,
                    rep.duration_ms,
                    if rep.ok { "" } else { " FAILED" }
                );
            }
            println!("{line}");
        }
        for n in &self.notes {
            println!("  note: {n}");
        }
    }
}

// ---------------------------------------------------------------- servers

fn start_cutover(tools: &Tools, root: &Path, port: u16, strategy: &str, log: &Path) -> Group {
    let conf = format!("{REPO}/examples/gunicorn/gunicorn.conf.py");
    let current = root.join("current");
    let command = [
        tools.gunicorn().display().to_string(),
        "--config".into(),
        conf,
        "--chdir".into(),
        current.display().to_string(),
        "--workers".into(),
        WORKERS.to_string(),
        "app:app".into(),
    ];
    let command = command
        .iter()
        .map(|s| toml_str(s))
        .collect::<Vec<_>>()
        .join(", ");
    // gunicorn repeats no READY=1 after a HUP: `signal` is checked over HTTP
    // once the instance survived `grace`; restart/overlap wait for READY=1
    // from a worker of the new instance (gunicorn.conf.py hooks).
    let ready = if strategy == "signal" {
        format!("http = \"http://127.0.0.1:{port}/healthz\"\ngrace = \"300ms\"\n")
    } else {
        "notify = true\n".to_string()
    };
    let config = format!(
        r#"[[listen]]
name = "http"
address = "127.0.0.1:{port}"

[app]
command = [{command}]
workdir = {workdir}
stop_timeout = "30s"
reload_strategy = "{strategy}"

[reload]
touch = [{touch}]

[ready]
{ready}timeout = "30s"
"#,
        workdir = toml_str(&current.display().to_string()),
        touch = toml_str(&root.join("reload").display().to_string()),
    );
    spawn_cutover(root, &config, log, "warn", &[])
}

fn start_naive(tools: &Tools, root: &Path, port: u16, log: &Path) -> Group {
    let current = root.join("current");
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Group::spawn_logged(
        Command::new(tools.gunicorn())
            .arg("--config")
            .arg(format!("{REPO}/examples/gunicorn/gunicorn.conf.py"))
            .arg("--chdir")
            .arg(&current)
            .args(["--workers", &WORKERS.to_string()])
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .arg("app:app")
            .current_dir(&current),
        log,
    )
}

// ---------------------------------------------------------------- code volume

fn make_release(root: &Path, n: usize) {
    let src = std::fs::read_to_string(format!("{REPO}/examples/gunicorn/app/app.py")).unwrap();
    let from = "VERSION = \"v1\"";
    assert!(src.contains(from), "app.py no longer has {from}");
    let code = src.replacen(from, &format!("VERSION = \"v{n}\""), 1);
    let dir = root.join("releases").join(n.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.py"), code).unwrap();
}

/// Points `current` at releases/<n> atomically: symlink beside it, rename over it.
fn flip(root: &Path, n: usize) {
    let tmp = root.join("current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("releases/{n}"), &tmp).unwrap();
    std::fs::rename(&tmp, root.join("current")).unwrap();
}

fn touch(path: &Path, n: usize) {
    std::fs::write(path, format!("{n}\n")).unwrap();
}

// ---------------------------------------------------------------- HTTP probes

fn is_version(body: &str, n: usize) -> bool {
    body.starts_with(&format!("hello from v{n} "))
}

// ---------------------------------------------------------------- cutover status

fn status(socket: &Path) -> Option<serde_json::Value> {
    let out = Command::new(BIN)
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn wait_running(socket: &Path) -> serde_json::Value {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(s) = status(socket).filter(|s| s["programs"][0]["state"] == "running") {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "cutover never reported the app running"
        );
        sleep(Duration::from_millis(20));
    }
}

/// Waits until cutover finished the reload after `prev` and reports it.
fn reload_report(socket: &Path, prev: &serde_json::Value) -> (Report, serde_json::Value) {
    let want = prev["reload"]["reloads"].as_u64().unwrap_or(0) + 1;
    let triggers_before = prev["reload"]["triggers"].as_u64().unwrap_or(0);
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    loop {
        if let Some(s) = status(socket) {
            let r = &s["reload"];
            let done = r["last"]["id"].as_u64().unwrap_or(0) >= want
                && r["in_progress"] == false
                && r["pending"] == false;
            if done {
                let last = &r["last"];
                let p = &last["programs"][0];
                let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
                let report = Report {
                    ok: last["ok"].as_bool().unwrap_or(false) && p["ok"].as_bool().unwrap_or(false),
                    error: last["error"]
                        .as_str()
                        .or(p["error"].as_str())
                        .map(str::to_string),
                    action_ms: f(&p["action_ms"]),
                    ready_ms: f(&p["ready_ms"]),
                    cutover_ms: f(&p["cutover_ms"]),
                    old_stop_ms: f(&p["old_stop_ms"]),
                    duration_ms: f(&last["duration_ms"]),
                    triggers: r["triggers"].as_u64().unwrap_or(0) - triggers_before,
                };
                return (report, s);
            }
        }
        if Instant::now() > deadline {
            let s = status(socket).unwrap_or_default();
            return (
                Report {
                    ok: false,
                    error: Some(format!(
                        "no finished reload #{want} within {} s; status: {s}",
                        RELOAD_TIMEOUT.as_secs()
                    )),
                    action_ms: f64::NAN,
                    ready_ms: f64::NAN,
                    cutover_ms: f64::NAN,
                    old_stop_ms: f64::NAN,
                    duration_ms: f64::NAN,
                    triggers: 0,
                },
                s,
            );
        }
        sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------- tools

struct Tools {
    venv: PathBuf,
    wrk: PathBuf,
}

impl Tools {
    fn find() -> Tools {
        let mut vars: HashMap<String, String> = ["CUTOVER_VENV", "WRK"]
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        if vars.len() < 2 {
            let script = format!("{REPO}/scripts/setup-python");
            eprintln!("CUTOVER_VENV/WRK not set: running {script}");
            let out = Command::new(&script)
                .stderr(Stdio::inherit())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
            assert!(out.status.success(), "{script} failed ({})", out.status);
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                    vars.entry(k.to_string())
                        .or_insert_with(|| v.trim_matches(['"', '\'']).to_string());
                }
            }
        }
        let tools = Tools {
            venv: PathBuf::from(vars.get("CUTOVER_VENV").expect("no CUTOVER_VENV")),
            wrk: PathBuf::from(vars.get("WRK").expect("no WRK")),
        };
        assert!(
            tools.gunicorn().exists(),
            "{} missing",
            tools.gunicorn().display()
        );
        assert!(tools.wrk.exists(), "{} missing", tools.wrk.display());
        tools
    }

    fn gunicorn(&self) -> PathBuf {
        self.venv.join("bin/gunicorn")
    }
}
