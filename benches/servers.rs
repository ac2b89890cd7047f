//! App server benchmark: prints figures, asserts nothing.
//!
//! Each example server (examples/<server>/: gunicorn, gunicorn with uvicorn
//! workers, uvicorn, uWSGI, Node, Puma) runs under `cutover run` from its own
//! cutover.toml, and takes RELOADS new releases by `overlap` and by `restart`
//! while two wrk loads run (one with `Connection: close`, one on kept-alive
//! connections). The harness is the one tests/integration/program/servers.rs asserts
//! with (tests/fixture/servers.rs and wrk.rs), so the bench measures exactly
//! what the tests check.
//!
//! Per row: requests wrk completed (both loads), requests that failed with
//! `Connection: close` and with keep-alive (socket errors plus non-2xx/3xx
//! answers), the time from `cutover reload` to the first answer from the
//! new version (p50 / max over the reloads), the app's own boot, the new
//! instance's readiness as cutover recorded it, and what comes after it.
//!
//! The boot is measured without cutover: the example's `[app] command`,
//! started BOOTS times in the release directory with a listening socket as
//! fd 3 (LISTEN_FDS=1, LISTEN_PID its own pid, as cutover passes it), timed
//! from the spawn to its first answer to `GET /` (connected at once, since
//! the socket listens from the start). Once on an idle machine, and once per
//! row under the same two wrk loads on the row's cutover (two cores are
//! shared, so the load slows a boot down). "ready" and "after ready" split
//! each reload's new-code time with cutover's own record of it (`cutover
//! status --json`): the new instance's start to its readiness, and from
//! there to the first answer from the new code. Servers whose example waits for
//! READY=1 get a third row with `[ready] http` on `/` in its place, the
//! check whose default grace issue 16 brought to 0.
//!
//! Run with `cargo bench --bench servers` (a few minutes). Needs the servers
//! and wrk: from the environment (`CUTOVER_VENV`, `WRK`, `CUTOVER_UWSGI`,
//! `CUTOVER_PUMA`, `CUTOVER_NODE`), else from scripts/setup-python and
//! scripts/setup-servers. Traffic goes to 127.0.0.1 only. Every process
//! started here lives in a process group of its own; all of them, and the
//! temporary directories, are removed at the end, on panic and on Ctrl-C.

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use support::fixture::cleanup::wait_for;
use support::fixture::servers::{
    ReloadRun, SERVERS, Server, Tools, WRK_CONNECTIONS, WRK_THREADS, reloads_under_wrk, tools,
};
use support::fixture::wrk::Wrk;
use support::http::example_version;
use support::procs::Group;
use support::{TempDir, free_port, install_cleanup, machine, max, ms, p50, spawn_cutover, tail};

const BIN: &str = env!("CARGO_BIN_EXE_cutover");
const RELOADS: usize = 5;
const BOOTS: usize = 3;
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One row: a strategy and a readiness check.
#[derive(Clone, Copy)]
enum Ready {
    /// The example's own `[ready]`.
    Example,
    /// `notify = true` replaced by `http` on `GET /`.
    Http,
}

const ROWS: [(&str, Ready); 3] = [
    ("overlap", Ready::Example),
    ("restart", Ready::Example),
    ("overlap", Ready::Http),
];

fn main() {
    install_cleanup();
    let tools = tools();
    println!("cutover app server benchmark ({BIN})");
    println!("machine: {}", machine());
    println!(
        "load:    two {} -t{WRK_THREADS} -c{WRK_CONNECTIONS} on GET / (one with -H 'Connection: close', one keep-alive), from before the first reload to after the last",
        tools.wrk.display()
    );
    println!(
        "reloads: {RELOADS} per row (flip `current`, `cutover reload --wait`, GET / until the new VERSION answers)"
    );
    println!();
    println!(
        "{:<18} | {:<8} | {:<6} | {:>9} | {:>6} | {:>10} | {:>23} | {:>14} | {:>9} | {:>11}",
        "server",
        "strategy",
        "ready",
        "requests",
        "failed",
        "failed k-a",
        "new code p50 / max (ms)",
        "boot idle/load",
        "ready p50",
        "after ready"
    );
    println!("{}", "-".repeat(150));
    let mut notes = Vec::new();
    for server in SERVERS {
        let idle_boot = match boot_ms(tools, server) {
            Ok(b) => Some(b),
            Err(e) => {
                notes.push(format!("{} boot: {e}", server.name));
                None
            }
        };
        let uses_notify = example_uses_notify(server);
        for (strategy, ready) in ROWS {
            if matches!(ready, Ready::Http) && !uses_notify {
                continue; // its own row already checks over http
            }
            let label = match ready {
                Ready::Http => "http",
                Ready::Example if uses_notify => "notify",
                Ready::Example => "http",
            };
            match run_row(tools, server, strategy, ready) {
                Ok((run, timing)) => {
                    let row = Row {
                        server,
                        strategy,
                        ready: label,
                        idle_boot,
                        timing,
                    };
                    print_row(&row, &run, &mut notes)
                }
                Err(e) => {
                    println!(
                        "{:<18} | {:<8} | {:<6} | did not run",
                        server.name, strategy, label
                    );
                    notes.push(format!("{} {strategy} {label}: {e}", server.name));
                }
            }
        }
    }
    println!();
    println!(
        "failed = wrk socket errors (connect/read/write/timeout) + non-2xx/3xx answers \
         (with Connection: close, and k-a: on kept-alive connections); \
         new code = from `cutover reload` to the first GET / answered by the new VERSION; \
         boot = p50 of {BOOTS} starts of the app's command without cutover, spawn to first answer, \
         on an idle machine / under the row's wrk loads; ready = the new instance's start to its readiness, \
         as cutover recorded it (p50); after ready = new code - reload action started - ready, \
         per reload (p50): the steering plus this client's 10 ms polling."
    );
    for n in notes {
        println!("note: {n}");
    }
}

/// Points `root/current` at `root/releases/<name>` with an atomic rename.
fn flip(root: &Path, name: &str) {
    let tmp = root.join("current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(root.join("releases").join(name), &tmp).unwrap();
    std::fs::rename(&tmp, root.join("current")).unwrap();
}

fn example_uses_notify(server: &Server) -> bool {
    let text = std::fs::read_to_string(server.example("cutover.toml")).unwrap();
    text.lines()
        .any(|l| l.trim_start().starts_with("notify = true"))
}

/// The example's config for a row: `[ready] notify` swapped for an http
/// check on `GET /` for [`Ready::Http`].
fn row_config(
    tools: &Tools,
    server: &Server,
    root: &Path,
    port: u16,
    strategy: &str,
    ready: Ready,
) -> String {
    let config = server.config(tools, root, port, free_port(), strategy);
    match ready {
        Ready::Example => config,
        Ready::Http => {
            let check = format!("http = \"http://127.0.0.1:{port}/\"");
            assert!(
                config.contains("\nnotify = true"),
                "{}: no notify to replace",
                server.name
            );
            config.replacen("\nnotify = true", &format!("\n{check}"), 1)
        }
    }
}

/// p50 of [`BOOTS`] starts of the example's `[app] command` without cutover:
/// spawn to the first answer to `GET /`, in ms.
fn boot_ms(tools: &Tools, server: &Server) -> Result<f64, String> {
    let dir = TempDir::new(&format!("cutover-bench-boot-{}", server.name));
    let root = dir.path().join("srv");
    let release = root.join("releases").join("v1");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(release.join(server.app_file), server.app_source("v1")).unwrap();
    flip(&root, "v1");
    let config: toml::Table = server
        .config(tools, &root, 8000, free_port(), "overlap")
        .parse()
        .map_err(|e| format!("example config: {e}"))?;
    let app = config["app"].as_table().ok_or("no [app]")?;
    let command: Vec<&str> = app["command"]
        .as_array()
        .ok_or("no [app] command")?
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let mut times = Vec::new();
    for _ in 0..BOOTS {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let started = Instant::now();
        // The socket comes in as stdin; the shell moves it to fd 3 and gives
        // the server its own pid as LISTEN_PID, as cutover does after fork.
        let mut app = Group::spawn(
            Command::new("/bin/sh")
                .arg("-c")
                .arg("exec 3<&0 </dev/null; LISTEN_PID=$$ exec \"$@\"")
                .arg("sh")
                .args(&command)
                .current_dir(&release)
                .env("LISTEN_FDS", "1")
                .env("LISTEN_FDNAMES", "http")
                .env_remove("NOTIFY_SOCKET")
                .stdin(Stdio::from(OwnedFd::from(listener)))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let answered = wait_for(START_TIMEOUT, || {
            (example_version(port).ok()? == "v1").then_some(started.elapsed())
        });
        app.stop(Duration::from_secs(10));
        times.push(ms(answered.ok_or("never answered")?));
    }
    Ok(p50(&times))
}

/// The row's reloads under load, and the app's boot under the same load.
fn run_row(
    tools: &Tools,
    server: &Server,
    strategy: &str,
    ready: Ready,
) -> Result<(ReloadRun, Timing), String> {
    let dir = TempDir::new(&format!("cutover-bench-{}-{strategy}", server.name));
    let root = dir.path().join("srv");
    let versions: Vec<String> = (1..=RELOADS + 1).map(|n| format!("v{n}")).collect();
    // every release is written before the load starts: a reload is only the
    // flip and the trigger
    for v in &versions {
        let release = root.join("releases").join(v);
        std::fs::create_dir_all(&release).unwrap();
        std::fs::write(release.join(server.app_file), server.app_source(v)).unwrap();
    }
    flip(&root, "v1");
    let port = free_port();
    let config = row_config(tools, server, &root, port, strategy, ready);
    let log = dir.path().join("cutover.log");
    let mut cutover = spawn_cutover(dir.path(), &config, &log, "info", &[]);
    if wait_for(START_TIMEOUT, || {
        (example_version(port).ok()? == "v1").then_some(())
    })
    .is_none()
    {
        return Err(format!("v1 never answered\n{}", tail(&log, 20)));
    }
    let loaded_boot = {
        let close = Wrk::start(&tools.wrk, port, WRK_THREADS, WRK_CONNECTIONS, true);
        let keep_alive = Wrk::start(&tools.wrk, port, WRK_THREADS, WRK_CONNECTIONS, false);
        std::thread::sleep(Duration::from_millis(500));
        let boot = boot_ms(tools, server).ok();
        close.finish();
        keep_alive.finish();
        boot
    };
    let socket = dir.path().join("ctl.sock");
    // Per reload, cutover's own record: (action started, readiness seen) in
    // ms from the trigger, as `cutover status` reports the last reload.
    let records = std::sync::Mutex::new(Vec::new());
    let run = reloads_under_wrk(tools, port, &versions[1..], |v| {
        flip(&root, v);
        let out = Command::new(BIN)
            .args(["reload", "--wait"])
            .env("CUTOVER_SOCKET", &socket)
            .env("CUTOVER_LOG", "warn")
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        records.lock().unwrap().push(last_reload(&socket)?);
        Ok(())
    });
    cutover.stop(Duration::from_secs(30));
    let records = records.into_inner().unwrap();
    let timing = Timing {
        loaded_boot,
        ready: records.iter().map(|(_, ready)| *ready).collect(),
        after_ready: run
            .new_code
            .iter()
            .zip(&records)
            .filter_map(|(seen, (action, ready))| Some(ms((*seen)?) - action - ready))
            .collect(),
    };
    Ok((run, timing))
}

/// From the last reload's record in `cutover status --json`: the time from
/// the trigger to the new instance's start (action_ms, plus for `restart`
/// the old one's drain and stop, which come first), and ready_ms.
fn last_reload(socket: &Path) -> Result<(f64, f64), String> {
    let out = Command::new(BIN)
        .args(["status", "--json"])
        .env("CUTOVER_SOCKET", socket)
        .env("CUTOVER_LOG", "warn")
        .output()
        .map_err(|e| e.to_string())?;
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("status --json: {e}"))?;
    let program = &status["reload"]["last"]["programs"][0];
    let field = |name: &str| {
        program[name]
            .as_f64()
            .ok_or_else(|| format!("no {name} in the reload record: {status}"))
    };
    let mut started = field("action_ms")?;
    if program["strategy"] == "restart" {
        started += field("drain_ms")? + field("old_stop_ms")?;
    }
    Ok((started, field("ready_ms")?))
}

/// What a row measured besides the reloads under load.
struct Timing {
    /// The app's boot without cutover, under the row's wrk loads.
    loaded_boot: Option<f64>,
    /// Per reload: the new instance's start to its readiness, as cutover
    /// saw it (its boot, plus the check's own latency).
    ready: Vec<f64>,
    /// Per reload: from readiness seen to the first answer from the new
    /// code (steering, plus the client's 10 ms polling).
    after_ready: Vec<f64>,
}

struct Row<'a> {
    server: &'a Server,
    strategy: &'a str,
    ready: &'a str,
    idle_boot: Option<f64>,
    timing: Timing,
}

fn print_row(row: &Row, run: &ReloadRun, notes: &mut Vec<String>) {
    let Row {
        server, strategy, ..
    } = row;
    let v = run.new_code_ms();
    let never = run.new_code.len() - v.len();
    let mut new_code = if v.is_empty() {
        "-".to_string()
    } else {
        format!("{:.0} / {:.0}", p50(&v), max(&v))
    };
    if never > 0 {
        new_code.push_str(&format!(" ({never} never)"));
    }
    let figure = |f: Option<f64>| f.map_or("-".to_string(), |f| format!("{f:.0}"));
    let t = &row.timing;
    let boot = format!("{} / {}", figure(row.idle_boot), figure(t.loaded_boot));
    let p50_of = |v: &[f64]| (!v.is_empty()).then(|| p50(v));
    println!(
        "{:<18} | {:<8} | {:<6} | {:>9} | {:>6} | {:>10} | {:>23} | {:>14} | {:>9} | {:>11}",
        server.name,
        strategy,
        row.ready,
        run.close.requests + run.keep_alive.requests,
        run.close.failed(),
        run.keep_alive.failed(),
        new_code,
        boot,
        figure(p50_of(&t.ready)),
        figure(p50_of(&t.after_ready))
    );
    for (version, why) in &run.failed_reloads {
        notes.push(format!(
            "{} {strategy}: reload to {version} failed: {}",
            server.name,
            why.trim()
        ));
    }
}
