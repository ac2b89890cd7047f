//! App server benchmark: prints figures, asserts nothing.
//!
//! Each example server (examples/<server>/: gunicorn, gunicorn with uvicorn
//! workers, uvicorn, uWSGI, Node, Puma) runs under `cutover run` from its own
//! cutover.toml, and takes RELOADS new releases by `overlap` and by `restart`
//! while two wrk loads run (one with `Connection: close`, one on kept-alive
//! connections). The harness is the one tests/integration/servers.rs asserts
//! with (tests/fixture/servers.rs and wrk.rs), so the bench measures exactly
//! what the tests check.
//!
//! Per row: requests wrk completed (both loads), requests that failed with
//! `Connection: close` and with keep-alive (socket errors plus non-2xx/3xx
//! answers), and the time from `cutover reload` to the first answer from the
//! new version (p50 / max over the reloads).
//!
//! Run with `cargo bench --bench servers` (a few minutes). Needs the servers
//! and wrk: from the environment (`CUTOVER_VENV`, `WRK`, `CUTOVER_UWSGI`,
//! `CUTOVER_PUMA`, `CUTOVER_NODE`), else from scripts/setup-python and
//! scripts/setup-servers. Traffic goes to 127.0.0.1 only. Every process
//! started here lives in a process group of its own; all of them, and the
//! temporary directories, are removed at the end, on panic and on Ctrl-C.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[path = "support/mod.rs"]
mod support;

use support::fixture::cleanup::wait_for;
use support::fixture::servers::{
    ReloadRun, SERVERS, Server, Tools, WRK_CONNECTIONS, WRK_THREADS, reloads_under_wrk, tools,
};
use support::http::example_version;
use support::{TempDir, free_port, install_cleanup, machine, max, p50, spawn_cutover, tail};

const BIN: &str = env!("CARGO_BIN_EXE_cutover");
const RELOADS: usize = 5;
const STRATEGIES: [&str; 2] = ["overlap", "restart"];
const START_TIMEOUT: Duration = Duration::from_secs(30);

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
        "{:<18} | {:<8} | {:>9} | {:>12} | {:>17} | {:>24}",
        "server",
        "strategy",
        "requests",
        "failed close",
        "failed keep-alive",
        "new code p50 / max (ms)"
    );
    println!("{}", "-".repeat(102));
    let mut notes = Vec::new();
    for server in SERVERS {
        for strategy in STRATEGIES {
            match run_row(tools, server, strategy) {
                Ok(run) => print_row(server, strategy, &run, &mut notes),
                Err(e) => {
                    println!("{:<18} | {:<8} | did not run", server.name, strategy);
                    notes.push(format!("{} {strategy}: {e}", server.name));
                }
            }
        }
    }
    println!();
    println!(
        "failed = wrk socket errors (connect/read/write/timeout) + non-2xx/3xx answers; \
         new code = from `cutover reload` to the first GET / answered by the new VERSION."
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

fn run_row(tools: &Tools, server: &Server, strategy: &str) -> Result<ReloadRun, String> {
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
    let config = server.config(tools, &root, port, free_port(), strategy);
    let log = dir.path().join("cutover.log");
    let mut cutover = spawn_cutover(dir.path(), &config, &log, "info", &[]);
    if wait_for(START_TIMEOUT, || {
        (example_version(port).ok()? == "v1").then_some(())
    })
    .is_none()
    {
        return Err(format!("v1 never answered\n{}", tail(&log, 20)));
    }
    let socket = dir.path().join("ctl.sock");
    let run = reloads_under_wrk(tools, port, &versions[1..], |v| {
        flip(&root, v);
        let out = Command::new(BIN)
            .args(["reload", "--wait"])
            .env("CUTOVER_SOCKET", &socket)
            .env("CUTOVER_LOG", "warn")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    cutover.stop(Duration::from_secs(30));
    Ok(run)
}

fn print_row(server: &Server, strategy: &str, run: &ReloadRun, notes: &mut Vec<String>) {
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
    println!(
        "{:<18} | {:<8} | {:>9} | {:>12} | {:>17} | {:>24}",
        server.name,
        strategy,
        run.close.requests + run.keep_alive.requests,
        run.close.failed(),
        run.keep_alive.failed(),
        new_code
    );
    for (version, why) in &run.failed_reloads {
        notes.push(format!(
            "{} {strategy}: reload to {version} failed: {}",
            server.name,
            why.trim()
        ));
    }
}
