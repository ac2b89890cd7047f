//! Real app servers under cutover, each run from its own example
//! (examples/<server>/cutover.toml with the port, paths, programs and
//! strategy substituted: tests/fixture/servers.rs), installed by the
//! project's scripts (scripts/setup-python, scripts/setup-servers), under two
//! wrk loads (tests/fixture/wrk.rs).
//!
//! For each server:
//! - `<server>_overlap`, `<server>_restart`: 5 reloads (v2..v6) while wrk runs
//!   with `Connection: close` and on kept-alive connections. Each reload must
//!   succeed and serve its version; not one request may fail with
//!   `Connection: close`. Failures on kept-alive connections are printed, not
//!   asserted: a client that reuses a connection the server is closing may
//!   see it reset, whatever the supervisor does.
//! - `<server>_broken_release`: a release that fails at load, under overlap
//!   and close-load: `cutover reload --wait` reports the failure, the old
//!   version keeps serving, not one request fails.
//!
//! Each test prints one line (`servers::<test>: ...`, see `--nocapture`) with
//! wrk's figures for both loads and the time from trigger to new code.

use std::time::Duration;

use crate::fixture::prelude::*;
use crate::fixture::servers::{Server, reloads_under_wrk, server, tools};
use crate::fixture::wrk::Wrk;

const RELOADS: usize = 5;
/// How long a server may take to serve v1 after cutover started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

struct Running {
    server: Server,
    dir: TestDir,
    releases: Releases,
    port: u16,
    cutover: Cutover,
}

/// Runs `name`'s example under cutover with `strategy` on release v1; returns
/// once v1 answers and cutover reports the program running.
fn start(name: &str, strategy: &str) -> Running {
    let tools = tools();
    let server = server(name);
    let dir = TestDir::new();
    let releases = Releases::new(&dir);
    releases.add("v1", &[(server.app_file, &server.app_source("v1"))]);
    releases.switch("v1");
    let port = free_port();
    let config = server.config(tools, &releases.root, port, free_port(), strategy);
    let path = dir.write("cutover.toml", &config);
    let (code, out, err) = run_cutover(&dir, &["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 0, "cutover check rejects\n{config}\n{out}{err}");
    let cutover = Cutover::run_config(Mode::Subreaper, &dir, &config);
    wait_for(START_TIMEOUT, || {
        (example_version(port).ok()? == "v1").then_some(())
    })
    .unwrap_or_else(|| panic!("{name} never served v1\n{}", cutover.stderr()));
    wait_for_control(&dir);
    wait_for(SECS_20, || {
        (status(&dir)["programs"][0]["state"] == "running").then_some(())
    })
    .unwrap_or_else(|| panic!("{name} never ready\n{}", cutover.stderr()));
    Running {
        server,
        dir,
        releases,
        port,
        cutover,
    }
}

/// The end of cutover's log (with the servers' output), for a failure message.
fn log_tail(c: &Cutover) -> String {
    let log = c.stderr();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// RELOADS reloads under both wrk loads; see the module doc.
fn reloads(name: &str, strategy: &str) {
    let r = start(name, strategy);
    let versions: Vec<String> = (2..2 + RELOADS).map(|n| format!("v{n}")).collect();
    for v in &versions {
        r.releases
            .add(v, &[(r.server.app_file, &r.server.app_source(v))]);
    }
    let run = reloads_under_wrk(tools(), r.port, &versions, |v| {
        r.releases.switch(v);
        match client(&r.dir, &["reload", "--wait"]) {
            (0, _, _) => Ok(()),
            (code, out, err) => Err(format!("exit {code}: {out}{err}")),
        }
    });
    eprintln!(
        "servers::{}_{strategy}: {}",
        name.replace('-', "_"),
        run.summary()
    );
    assert!(
        run.failed_reloads.is_empty(),
        "failed reloads: {:?}\n{}",
        run.failed_reloads,
        r.cutover.stderr()
    );
    for (v, seen) in versions.iter().zip(&run.new_code) {
        assert!(
            seen.is_some(),
            "{v} was never served\n{}",
            r.cutover.stderr()
        );
    }
    assert!(
        run.close.requests > 0 && run.keep_alive.requests > 0,
        "wrk ran: {}\n{}",
        run.close.output,
        run.keep_alive.output
    );
    assert_no_failed(
        &format!("servers::{name} {strategy}, Connection: close"),
        &run.close,
        0,
        || format!("{}\n{}", run.close.summary(), log_tail(&r.cutover)),
    );
    // The bound docs/benchmarks.md states ("Keep-alive"): a server that closes
    // idle kept-alive connections when it stops loses at most the request
    // each wrk connection sends in that instant, once per reload.
    let bound = (crate::fixture::servers::WRK_CONNECTIONS as usize * RELOADS) as u64;
    assert!(
        run.keep_alive.failed() <= bound,
        "keep-alive: more than one lost request per connection and reload ({bound}): {}\n{}",
        run.keep_alive.summary(),
        log_tail(&r.cutover)
    );
    assert_eq!(example_version(r.port).as_deref(), Ok("v6"));
    assert_eq!(
        status(&r.dir)["reload"]["reloads"],
        RELOADS,
        "one reload per trigger"
    );
}

/// A release that fails at load, under overlap and close-load.
fn broken_release(name: &str) {
    let r = start(name, "overlap");
    r.releases
        .add("broken", &[(r.server.app_file, r.server.broken)]);
    let load = Wrk::start(
        &tools().wrk,
        r.port,
        crate::fixture::servers::WRK_THREADS,
        crate::fixture::servers::WRK_CONNECTIONS,
        true,
    );
    std::thread::sleep(Duration::from_millis(500));
    r.releases.switch("broken");
    let (code, out, err) = client(&r.dir, &["reload", "--wait"]);
    // what users get after the failed reload: the old code, every time
    let served: Vec<Result<String, String>> = (0..20)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(25));
            example_version(r.port)
        })
        .collect();
    let w = load.finish();
    eprintln!(
        "servers::{}_broken_release: reload exit {code}; close: {}",
        name.replace('-', "_"),
        w.summary()
    );
    assert_ne!(
        code,
        0,
        "`reload --wait` must report the broken release\n{out}{err}\n{}",
        r.cutover.stderr()
    );
    assert!(
        served.iter().all(|v| v.as_deref() == Ok("v1")),
        "the old version keeps serving: {served:?}\n{}",
        r.cutover.stderr()
    );
    assert!(w.requests > 0, "wrk ran: {}", w.output);
    assert_no_failed("servers: a failed reload under wrk", &w, 0, || {
        format!("{}\n{}", w.summary(), log_tail(&r.cutover))
    });
    let st = status(&r.dir);
    assert_eq!(st["reload"]["last"]["ok"], false, "{st}");
}

macro_rules! server_tests {
    ($($test:ident, $kind:ident => $name:literal;)*) => {
        $(
            #[test]
            fn $test() {
                server_tests!(@run $kind, $name);
            }
        )*
    };
    (@run overlap, $name:literal) => { reloads($name, "overlap") };
    (@run restart, $name:literal) => { reloads($name, "restart") };
    (@run broken, $name:literal) => { broken_release($name) };
}

server_tests! {
    gunicorn_overlap, overlap => "gunicorn";
    gunicorn_restart, restart => "gunicorn";
    gunicorn_broken_release, broken => "gunicorn";
    gunicorn_uvicorn_overlap, overlap => "gunicorn-uvicorn";
    gunicorn_uvicorn_restart, restart => "gunicorn-uvicorn";
    gunicorn_uvicorn_broken_release, broken => "gunicorn-uvicorn";
    uvicorn_overlap, overlap => "uvicorn";
    uvicorn_restart, restart => "uvicorn";
    uvicorn_broken_release, broken => "uvicorn";
    uwsgi_overlap, overlap => "uwsgi";
    uwsgi_restart, restart => "uwsgi";
    uwsgi_broken_release, broken => "uwsgi";
    node_overlap, overlap => "node";
    node_restart, restart => "node";
    node_broken_release, broken => "node";
    puma_overlap, overlap => "puma";
    puma_restart, restart => "puma";
    puma_broken_release, broken => "puma";
}
