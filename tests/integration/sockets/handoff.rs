//! Per-instance sockets (src/sockets/handoff.rs): whatever an old instance does
//! when it stops, no request fails; readiness probes reach the new instance
//! alone; an instance that stops passing its check after the cutover is
//! rolled back. Driven with fdserver.py's misbehaviours (greedy-stop,
//! unhealthy, unhealthy-after), which stand for uvicorn's and gunicorn +
//! uvicorn workers' (tests/integration/program/servers.rs runs the real ones).

use std::time::Duration;

use crate::fixture::cleanup::sleep;
use crate::fixture::git::Repo;
use crate::fixture::prelude::*;

/// fdserver under cutover with `strategy` and `listen` settings, serving
/// release `first` of those `add` made; returns once v1 answers and the
/// control socket is up.
struct Serving {
    dir: TestDir,
    releases: Releases,
    port: u16,
    cutover: Cutover,
}

fn serving(first: &str, add: impl FnOnce(&Releases), strategy: &str, listen: &str) -> Serving {
    let dir = TestDir::new();
    let releases = Releases::new(&dir);
    add(&releases);
    releases.switch(first);
    let port = free_port();
    let toml = ConfigToml::fdserver_in(port, &releases.current(), listen)
        .section(
            "reload",
            &format!("strategy = \"{strategy}\"\ndrain = \"200ms\""),
        )
        .ready_http(port, "grace = \"100ms\"\ntimeout = \"3s\"")
        .to_string();
    let cutover = Cutover::run_config(Mode::Subreaper, &dir, &toml);
    wait_version(port, "v1", &cutover, SECS_20);
    wait_for_control(&dir);
    Serving {
        dir,
        releases,
        port,
        cutover,
    }
}

/// Five reloads into releases whose old instances, once told to stop,
/// accept for another half second and close what they accepted unanswered.
fn five_reloads_with_greedy_stops(strategy: &str) {
    let greedy = |releases: &Releases| {
        for v in 1..=6 {
            releases.add(
                &format!("r{v}"),
                &[("version", &format!("v{v}")), ("greedy-stop", "0.5")],
            );
        }
    };
    let Serving {
        dir,
        releases,
        port,
        cutover: c,
    } = serving("r1", greedy, strategy, "");
    let load = Load::paced(port);
    for v in 2..=6 {
        releases.switch(&format!("r{v}"));
        let (code, out, err) = client(&dir, &["reload", "--wait"]);
        assert_eq!(code, 0, "reload to v{v}: {out}{err}\n{}", c.stderr());
        wait_version(port, &format!("v{v}"), &c, SECS_20);
        // The old instance's greedy half second must overlap the load.
        sleep(Duration::from_millis(700));
    }
    let r = load.finish();
    assert_no_failed(
        &format!("handoff {strategy}, over 5 reloads"),
        &r,
        101,
        || c.stderr(),
    );
    assert_eq!(r.versions, ["v1", "v2", "v3", "v4", "v5", "v6"]);
}

#[test]
fn an_old_instance_that_drops_what_it_accepts_loses_nothing_under_overlap() {
    five_reloads_with_greedy_stops("overlap");
}

#[test]
fn an_old_instance_that_drops_what_it_accepts_loses_nothing_under_restart() {
    five_reloads_with_greedy_stops("restart");
}

/// The new instance lives but its /healthz says 503. Over one shared socket
/// the old instance would answer the check half the time and the overlap
/// would cut over to code that does not serve.
#[test]
fn http_readiness_is_answered_by_the_new_instance_alone() {
    let Serving {
        dir,
        releases,
        port,
        cutover: _c,
    } = serving(
        "a",
        |r| {
            r.add("a", &[("version", "v1")]);
            r.add("b", &[("version", "v2"), ("unhealthy", "")]);
        },
        "overlap",
        "",
    );
    let load = Load::start(port);
    releases.switch("b");
    let (code, out, err) = client(&dir, &["reload", "--wait"]);
    assert_ne!(code, 0, "the reload must fail: {out}{err}");
    // The last attempt may be cut off by the deadline on a busy machine.
    let said = format!("{out}{err}");
    assert!(
        said.contains("status 503") || said.contains("no answer"),
        "the check's last answer is the new instance's: {said}"
    );
    sleep(Duration::from_millis(500));
    let r = load.finish();
    assert_no_failed(
        "handoff: the new instance fails its check",
        &r,
        0,
        String::new,
    );
    assert_eq!(
        r.versions,
        ["v1"],
        "the new instance never got user traffic"
    );
    let st = status(&dir);
    assert_eq!(st["programs"][0]["reload_failures"], 1, "{st}");
    assert_eq!(st["programs"][0]["state"], "running", "{st}");
}

/// With the sockets shared (`per_instance = false`), the old behaviour: a
/// probe may reach either instance. Still serves, and the config says so.
#[test]
fn a_shared_socket_still_serves_across_reloads() {
    let Serving {
        dir,
        releases,
        port,
        cutover: c,
    } = serving(
        "a",
        |r| {
            r.add("a", &[("version", "v1")]);
            r.add("b", &[("version", "v2")]);
        },
        "overlap",
        "per_instance = false",
    );
    releases.switch("b");
    let (code, out, err) = client(&dir, &["reload", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_version(port, "v2", &c, SECS_20);
    assert!(c.stderr().contains("per_instance=false"), "{}", c.stderr());
}

#[test]
fn per_instance_sockets_are_refused_where_they_cannot_work() {
    let dir = TestDir::new();
    let toml = r#"[[listen]]
name = "a"
address = "unix:/tmp/cutover-never.sock"
per_instance = true

[[listen]]
name = "b"
address = "127.0.0.1:1"
per_instance = true

[[program]]
name = "web"
command = ["true"]

[[program]]
name = "worker"
command = ["true"]

[reload]
drain = "soon"
"#;
    let cfg = dir.write("cutover.toml", toml);
    let (code, _out, err) = run_cutover(&dir, &["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("listen[0].per_instance"), "{err}");
    assert!(err.contains("only for TCP addresses"), "{err}");
    assert!(err.contains("listen[1].per_instance"), "{err}");
    assert!(err.contains("goes to 2 programs"), "{err}");
    assert!(err.contains("reload.drain"), "{err}");
}

/// After the cutover, v2's /healthz turns to 503 while its process lives:
/// within the rollback window, cutover goes back to v1 as after a crash.
#[test]
fn an_instance_that_stops_passing_readiness_in_the_window_is_rolled_back() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    let v1 = repo.release("v1");
    let root = dir.join("srv");
    let port = free_port();
    let toml = ConfigToml::deploying(port, &repo.remote.display().to_string(), &root, "")
        .raw("[reload]\nstrategy = \"overlap\"\n\n[rollback]\nwindow = \"60s\"\n")
        .to_string();
    let cfg = dir.write("cutover.toml", &toml);
    let c = Cutover::start(Mode::Subreaper, &dir, &["run", "-c", cfg.to_str().unwrap()]);
    wait_version(port, "v1", &c, SECS_20);
    wait_for_control(&dir);
    let load = Load::paced(port);
    let v2 = repo.commit("v2", &[("version", "v2"), ("unhealthy-after", "2")]);
    repo.push();
    wait_version(port, "v2", &c, SECS_20);
    // Three failed checks a second apart after two healthy seconds, then
    // the rollback's own overlap.
    wait_version(port, "v1", &c, Duration::from_secs(30));
    sleep(Duration::from_millis(300));
    let r = load.finish();
    assert_no_failed(
        "handoff: a rollback after failed checks",
        &r,
        0,
        String::new,
    );
    assert_eq!(
        r.versions,
        ["v1", "v2", "v1"],
        "{} requests\n{}",
        r.requests(),
        c.stderr()
    );
    assert_eq!(current_sha(&root).as_deref(), Some(v1.as_str()));
    let history = wait_for(SECS_20, || {
        let st = status(&dir);
        let h = st["source"]["history"].as_array()?.clone();
        (h.last()?["outcome"] == "rolled-back").then_some(h)
    })
    .unwrap_or_else(|| panic!("no rollback in the history\n{}", c.stderr()));
    let last = history.last().unwrap();
    let trigger = last["trigger"].as_str().unwrap();
    assert!(
        trigger.contains("stopped passing its readiness check"),
        "{trigger}"
    );
    assert!(
        c.stderr().contains(&v2[..12]) || c.stderr().contains(&v2),
        "{}",
        c.stderr()
    );
}

/// Two cutovers on one address (two containers on the host network): the
/// second would join the first one's group and steer its traffic, so it
/// refuses to start and says why; the first serves on. With
/// `reuse_port = true` sharing is asked for, and it starts.
#[test]
fn a_second_cutover_on_the_same_address_is_refused() {
    let s = serving(
        "v1",
        |r| drop(r.add("v1", &[("version", "v1")])),
        "overlap",
        "",
    );
    let other = TestDir::new();
    let releases = Releases::new(&other);
    releases.add("v2", &[("version", "v2")]);
    releases.switch("v2");
    let cfg = other.write(
        "cutover.toml",
        &ConfigToml::fdserver_in(s.port, &releases.current(), "")
            .section("reload", "strategy = \"overlap\"\ndrain = \"200ms\"")
            .ready_http(s.port, "grace = \"100ms\"\ntimeout = \"3s\"")
            .to_string(),
    );
    let (code, _, stderr) = run_cutover(&other, &["run", "-c", cfg.to_str().unwrap()]);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("another process listens there already") && stderr.contains("`http`"),
        "{stderr}"
    );
    for _ in 0..20 {
        assert_eq!(served_version(s.port).unwrap(), "v1");
    }
    // Asked for, sharing starts (what reaches it is the first one's steering's call).
    let shared = ConfigToml::fdserver_in(s.port, &releases.current(), "reuse_port = true")
        .section("reload", "strategy = \"overlap\"\ndrain = \"200ms\"")
        .ready_http(s.port, "grace = \"100ms\"\ntimeout = \"3s\"")
        .to_string();
    let cfg = other.write("shared.toml", &shared);
    let second = Cutover::start(
        Mode::Subreaper,
        &other,
        &["run", "-c", cfg.to_str().unwrap()],
    );
    second.wait_for_log("started program=app", SECS_20);
    assert_eq!(served_version(s.port).unwrap(), "v1");
    drop(s);
}

/// With per-instance sockets an http check speaks for the new instance
/// alone, so no `grace` is waited for by default: the reload is ready as
/// soon as the app answers (fdserver boots in well under a second), where
/// it used to wait a whole second first. Set on a shared socket, the grace
/// stays.
#[test]
fn exact_probes_wait_no_grace_by_default() {
    let ready_ms = |listen: &str| {
        let dir = TestDir::new();
        let releases = Releases::new(&dir);
        releases.add("v1", &[("version", "v1")]);
        releases.add("v2", &[("version", "v2")]);
        releases.switch("v1");
        let port = free_port();
        let toml = ConfigToml::fdserver_in(port, &releases.current(), listen)
            .section("reload", "strategy = \"overlap\"\ndrain = \"200ms\"")
            .ready_http(port, "timeout = \"3s\"")
            .to_string();
        let c = Cutover::run_config(Mode::Subreaper, &dir, &toml);
        wait_version(port, "v1", &c, SECS_20);
        wait_for_control(&dir);
        releases.switch("v2");
        let (code, out, err) = client(&dir, &["reload", "--wait"]);
        assert_eq!(code, 0, "{out}{err}\n{}", c.stderr());
        let st = status(&dir);
        st["reload"]["last"]["programs"][0]["ready_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("{st}"))
    };
    let exact = ready_ms("");
    assert!(exact < 900.0, "waited {exact} ms for a grace it needs not");
    let shared = ready_ms("per_instance = false");
    assert!(
        shared >= 1000.0,
        "a shared socket keeps its grace: {shared} ms"
    );
}
