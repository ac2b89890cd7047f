//! `cutover hold` and `[[listen]] from`, with real processes on this host:
//! the app's cutover takes its socket from the holder over SCM_RIGHTS; an app
//! cutover replaced by another (what `docker compose up -d` does to a
//! container) refuses no connection, because the holder keeps the socket
//! and its backlog; peers are checked; status says who holds what. The
//! container tests run the same on a bridge network with published ports.

use std::time::Duration;

use crate::fixture::cleanup::sleep;
use crate::fixture::prelude::*;

pub(crate) struct Scene {
    pub dir: TestDir,
    pub port: u16,
    pub holder_socket: std::path::PathBuf,
    pub holder: Cutover,
}

pub(crate) fn start_holder(
    dir: &TestDir,
    port: u16,
    at: &std::path::Path,
    extra: &[&str],
) -> Cutover {
    let listen = format!("http=127.0.0.1:{port}");
    let mut args = vec!["hold", "--listen", &listen, "--at", at.to_str().unwrap()];
    args.extend_from_slice(extra);
    let holder = Cutover::start(Mode::Subreaper, dir, &args);
    holder.wait_for_log("waiting for takers", SECS_20);
    holder
}

impl Scene {
    pub(crate) fn new(extra_holder_args: &[&str]) -> Scene {
        let dir = TestDir::new();
        let port = free_port();
        let holder_socket = dir.join("run/sockets");
        let holder = start_holder(&dir, port, &holder_socket, extra_holder_args);
        std::fs::write(dir.join("version"), "v1").unwrap();
        Scene {
            dir,
            port,
            holder_socket,
            holder,
        }
    }

    /// An app cutover's config: fdserver in this scene's dir on the holder's
    /// `http` socket (with `listen` lines), reloading by overlap, its
    /// control socket at `control`.
    fn app_config(&self, control: &str, listen: &str) -> String {
        ConfigToml::new()
            .listen_from(
                "http",
                &format!("unix:{}", self.holder_socket.display()),
                listen,
            )
            .app(
                &["python3", &app("fdserver.py")],
                &format!(
                    "workdir = \"{}\"\nstop_timeout = \"5s\"\nreload_strategy = \"overlap\"",
                    self.dir.path().display()
                ),
            )
            .control(&self.dir.join(control).display().to_string(), 0, "")
            .to_string()
    }

    /// An app cutover taking its socket from the holder, serving.
    fn app(&self, n: usize) -> Cutover {
        self.app_with(n, "")
    }

    fn app_with(&self, n: usize, listen: &str) -> Cutover {
        let cfg = self.dir.write(
            &format!("app{n}.toml"),
            &self.app_config(&format!("app{n}.sock"), listen),
        );
        let c = Cutover::start(
            Mode::Subreaper,
            &self.dir,
            &["run", "-c", cfg.to_str().unwrap()],
        );
        wait_version(self.port, "v1", &c, SECS_20);
        c
    }

    /// A second app cutover beside the first, not waited for; it and its
    /// control socket.
    fn second_app(&self) -> (Cutover, std::path::PathBuf) {
        let cfg = self
            .dir
            .write("app2.toml", &self.app_config("app2.sock", ""));
        let control = self.dir.join("app2.sock");
        let second = Cutover::start_with(
            Mode::Subreaper,
            &self.dir,
            &["run", "-c", cfg.to_str().unwrap()],
            &[("CUTOVER_SOCKET", control.to_str().unwrap())],
        );
        (second, control)
    }

    fn status(&self) -> serde_json::Value {
        let (code, out, err) = run_cutover(
            &self.dir,
            &[
                "status",
                "--json",
                "--holder",
                self.holder_socket.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{out}{err}");
        serde_json::from_str(&out).unwrap()
    }
}

/// What compose does to an app container: stop the old one, start a new
/// one. The holder keeps the socket, so connections made in between wait
/// in its backlog and are served by the new app.
#[test]
fn an_app_replaced_by_a_new_one_refuses_no_connection() {
    let s = Scene::new(&[]);
    let mut first = s.app(1);
    let load = Load::paced(s.port);
    sleep(Duration::from_millis(500));
    first.signal(libc::SIGTERM);
    first.wait(SECS_20);
    let gone = std::time::Instant::now();
    sleep(Duration::from_millis(300));
    let second = s.app(2);
    let gap = gone.elapsed();
    sleep(Duration::from_millis(500));
    let r = load.finish();
    assert_no_failed(
        &format!("holder: app replaced, no app for {} ms", gap.as_millis()),
        &r,
        101,
        || second.stderr(),
    );
    let st = s.status();
    let takers = st["takers"].as_array().unwrap();
    assert_eq!(takers.len(), 1, "the first app's lease ended: {st}");
    assert_eq!(takers[0]["pid"], second.pid(), "{st}");
    assert_eq!(st["sockets"][0]["name"], "http");
}

/// A restarted holder has new sockets (in a container, in a new network
/// namespace: the old ones get nothing). The app's cutover notices, takes
/// the new ones and reloads its program onto them, without a restart.
/// Shared sockets here: on one host the old per-instance sockets would stay
/// in the new holder's group (holder_docker tests the per-instance case,
/// each holder in its own network namespace).
#[test]
fn a_restarted_holder_is_noticed_and_its_new_sockets_taken() {
    let mut s = Scene::new(&[]);
    let app = s.app_with(1, "per_instance = false");
    let before = status(&s.dir)["programs"][0]["pid"].clone();
    let load = Load::paced(s.port);
    s.holder.signal(libc::SIGTERM);
    assert_eq!(s.holder.wait(SECS_20), 0, "{}", s.holder.stderr());
    sleep(Duration::from_millis(300));
    s.holder = start_holder(&s.dir, s.port, &s.holder_socket, &[]);
    app.wait_for_log("took the new holder's sockets", SECS_20);
    app.wait_for_log("reload done", SECS_20);
    sleep(Duration::from_millis(300));
    let r = load.finish();
    assert_no_failed("holder restarted", &r, 0, || app.stderr());
    let st = status(&s.dir);
    assert_ne!(
        st["programs"][0]["pid"], before,
        "the program was reloaded: {st}"
    );
    assert_eq!(
        st["reload"]["last"]["trigger"], "new sockets from a restarted holder",
        "{st}"
    );
    let holder = s.status();
    assert_eq!(holder["takers"][0]["pid"], app.pid(), "{holder}");
    assert!(app.stderr().contains("the socket holder went away"));
}

/// Only the users and groups the holder is told to trust get the sockets;
/// both sides say why.
#[test]
fn a_peer_the_holder_does_not_trust_is_refused_on_both_sides() {
    // 0660 with group 4242: the peer gets through the file's mode by a
    // supplementary group, but its own gid is not one the holder allows.
    let s = Scene::new(&["--allow-gid", "4242", "--allow-uid", "0"]);
    let cfg = s.dir.write("app.toml", &s.app_config("app.sock", ""));
    std::fs::set_permissions(
        s.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--groups=4242", "--"])
        .arg(env!("CARGO_BIN_EXE_cutover"))
        .args(["check", "-c", cfg.to_str().unwrap()])
        .output()
        .expect("setpriv");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--groups=4242", "--"])
        .arg(env!("CARGO_BIN_EXE_cutover"))
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env("CUTOVER_LOG", "warn")
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("refused by the holder: uid 65534 gid 65534"),
        "{err}"
    );
    s.holder
        .wait_for_log("refused by the holder: uid 65534 gid 65534", SECS_20);
    assert_eq!(s.status()["refused"], 1);
    // Root is allowed here, and takes them.
    let _app = s.app(1);
}

#[test]
fn sockets_the_holder_does_not_have_are_named() {
    let s = Scene::new(&[]);
    let toml = s
        .app_config("app.sock", "")
        .replace("name = \"http\"", "name = \"https\"");
    let cfg = s.dir.write("app.toml", &toml);
    let (code, _out, err) = run_cutover(&s.dir, &["run", "-c", cfg.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("the holder has no socket named `https` (it holds [\"http\"])"),
        "{err}"
    );
}

#[test]
fn from_and_address_exclude_each_other() {
    let dir = TestDir::new();
    let cfg = dir.write(
        "cutover.toml",
        r#"[[listen]]
name = "http"
address = "127.0.0.1:1"
from = "unix:/run/cutover/sockets"

[[listen]]
from = "unix:/run/cutover/sockets"

[[listen]]
name = "b"
from = "relative/path"

[app]
command = ["true"]
"#,
    );
    let (code, _out, err) = run_cutover(&dir, &["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("listen[0].from"), "{err}");
    assert!(err.contains("missing key `name`"), "{err}");
    assert!(err.contains("listen[2].from"), "{err}");
}

#[test]
fn the_holder_answers_probes_and_says_who_took_what() {
    let http = free_port();
    let address = format!("127.0.0.1:{http}");
    let s = Scene::new(&["--http", &address, "--http-status"]);
    assert_eq!(
        http_get(http, "/healthz").as_deref(),
        Ok("holding 1 socket(s) for 0 taker(s)\n")
    );
    let app = s.app(1);
    let st: serde_json::Value = serde_json::from_str(&http_get(http, "/status").unwrap()).unwrap();
    assert_eq!(st["takers"][0]["pid"], app.pid(), "{st}");
    assert_eq!(st["takers"][0]["names"][0], "http", "{st}");
    assert_eq!(st["sockets"][0]["address"], format!("127.0.0.1:{}", s.port));
    assert_eq!(
        http_get(http, "/healthz").as_deref(),
        Ok("holding 1 socket(s) for 1 taker(s)\n")
    );
    let (code, text, _) = run_cutover(
        &s.dir,
        &["status", "--holder", s.holder_socket.to_str().unwrap()],
    );
    assert_eq!(code, 0);
    assert!(text.contains("taken by "), "{text}");
    assert!(text.contains(&format!("pid {}", app.pid())), "{text}");
}

/// Per-instance sockets through the holder: five reloads whose old
/// instances, once told to stop, accept for another half second and close
/// what they accepted unanswered. The holder steers and drains in its own
/// group, so not one request fails.
#[test]
fn reloads_through_the_holder_lose_nothing_to_a_greedy_old_instance() {
    let s = Scene::new(&[]);
    std::fs::write(s.dir.join("greedy-stop"), "0.5").unwrap();
    let app = s.app(1);
    let load = Load::paced(s.port);
    for v in 2..=6 {
        std::fs::write(s.dir.join("version"), format!("v{v}")).unwrap();
        let (code, out, err) = client(&s.dir, &["reload", "--wait"]);
        assert_eq!(code, 0, "{out}{err}\n{}", app.stderr());
        wait_version(s.port, &format!("v{v}"), &app, SECS_20);
        sleep(Duration::from_millis(700));
    }
    let r = load.finish();
    assert_no_failed("holder per-instance, over 5 reloads", &r, 0, || {
        app.stderr()
    });
    assert_eq!(r.versions, ["v1", "v2", "v3", "v4", "v5", "v6"]);
}

/// A second app (a new container beside the old one, as `[redeploy] docker`
/// starts it) takes users once it is ready; the first one, greedy when it
/// stops, then has nothing left to drop.
#[test]
fn a_second_app_beside_the_first_takes_over_without_a_failure() {
    let s = Scene::new(&[]);
    std::fs::write(s.dir.join("greedy-stop"), "0.5").unwrap();
    let mut first = s.app(1);
    let load = Load::paced(s.port);
    sleep(Duration::from_millis(300));
    std::fs::write(s.dir.join("version"), "v2").unwrap();
    let (second, _) = s.second_app();
    wait_version(s.port, "v2", &second, SECS_20);
    second.wait_for_log("users steered to this container", SECS_20);
    sleep(Duration::from_millis(300));
    first.signal(libc::SIGTERM);
    first.wait(SECS_20);
    sleep(Duration::from_millis(500));
    let r = load.finish();
    assert_no_failed("holder side by side", &r, 0, || second.stderr());
    assert_eq!(r.versions, ["v1", "v2"], "no v1 after the second took over");
}

/// Steering belongs to live takers: the old container reloads while a new
/// one serves beside it (users go to the old one's new instance), then
/// stops. Users must then go to the new container, which is ready, never to
/// a socket nobody serves; and a reload of the survivor loses nothing.
#[test]
fn a_taker_that_reloads_and_goes_leaves_users_with_the_one_that_stays() {
    let s = Scene::new(&[]);
    let mut first = s.app(1);
    let load = Load::paced(s.port);
    std::fs::write(s.dir.join("version"), "v2").unwrap();
    let (second, control) = s.second_app();
    second.wait_for_log("users steered to this container", SECS_20);
    wait_version(s.port, "v2", &second, SECS_20);
    // The first container reloads (a push, a touch): users follow it.
    std::fs::write(s.dir.join("version"), "v3").unwrap();
    let (code, out, err) = client(&s.dir, &["reload", "--wait"]);
    assert_eq!(code, 0, "{out}{err}\n{}", first.stderr());
    wait_version(s.port, "v3", &first, SECS_20);
    sleep(Duration::from_millis(300));
    first.signal(libc::SIGTERM);
    first.wait(SECS_20);
    wait_version(s.port, "v2", &second, SECS_20);
    // And the survivor reloads, alone.
    std::fs::write(s.dir.join("version"), "v4").unwrap();
    let (code, out, err) = run_cutover(
        &s.dir,
        &["reload", "--wait", "--socket", control.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}\n{}", second.stderr());
    wait_version(s.port, "v4", &second, SECS_20);
    sleep(Duration::from_millis(300));
    let r = load.finish();
    assert_no_failed("holder: a taker reloads and goes", &r, 0, || {
        s.holder.stderr()
    });
    assert_eq!(r.versions, ["v1", "v2", "v3", "v2", "v4"]);
    let st = s.status();
    assert_eq!(
        st["sockets"][0]["queued"], 0,
        "nothing waits unserved: {st}"
    );
}

/// Steering belongs to live takers, in the orders the test above does not
/// take: the newer container reloads, then the older one, each taking the
/// users; then the newer one goes while the older one has them, and the
/// older one reloads alone. Nothing fails, and nothing waits in a socket
/// nobody serves.
#[test]
fn two_takers_reloading_in_turn_lose_nothing_when_the_newer_goes() {
    let s = Scene::new(&[]);
    let first = s.app(1);
    let load = Load::paced(s.port);
    std::fs::write(s.dir.join("version"), "v2").unwrap();
    let (mut second, control) = s.second_app();
    second.wait_for_log("users steered to this container", SECS_20);
    wait_version(s.port, "v2", &second, SECS_20);
    let reload = |version: &str, via: Option<&std::path::Path>, app: &Cutover| {
        std::fs::write(s.dir.join("version"), version).unwrap();
        let (code, out, err) = match via {
            Some(socket) => run_cutover(
                &s.dir,
                &["reload", "--wait", "--socket", socket.to_str().unwrap()],
            ),
            None => client(&s.dir, &["reload", "--wait"]),
        };
        assert_eq!(code, 0, "{version}: {out}{err}\n{}", app.stderr());
        wait_version(s.port, version, app, SECS_20);
    };
    reload("v3", Some(&control), &second);
    reload("v4", None, &first);
    reload("v5", Some(&control), &second);
    reload("v6", None, &first);
    sleep(Duration::from_millis(300));
    second.signal(libc::SIGTERM);
    second.wait(SECS_20);
    assert_stays(
        "the older one keeps the users",
        Duration::from_millis(300),
        || served_version(s.port).is_ok_and(|v| v == "v6"),
    );
    reload("v7", None, &first);
    sleep(Duration::from_millis(300));
    let r = load.finish();
    assert_no_failed("holder: two takers reload in turn", &r, 0, || {
        s.holder.stderr()
    });
    assert_eq!(r.versions, ["v1", "v2", "v3", "v4", "v5", "v6", "v7"]);
    let st = s.status();
    assert_eq!(
        st["sockets"][0]["queued"], 0,
        "nothing waits unserved: {st}"
    );
}

/// A taker killed while it serves, as `docker rm -f` kills a new container
/// that already had the users (issue 18: a playbook's rescue after a failed
/// health check): its lease goes with its connection, users go back to the
/// container that stays, and nothing is left waiting in a socket nobody
/// serves (before leases, requests hung until a reload by hand).
#[test]
fn a_taker_killed_while_serving_leaves_users_with_the_one_that_stays() {
    let s = Scene::new(&[]);
    let first = s.app(1);
    let load = Load::paced(s.port);
    std::fs::write(s.dir.join("version"), "v2").unwrap();
    let (second, _) = s.second_app();
    second.wait_for_log("users steered to this container", SECS_20);
    wait_version(s.port, "v2", &second, SECS_20);
    sleep(Duration::from_millis(300));
    // Everything of the second container at once, no grace: its cutover
    // (the taker, whose connection to the holder closes) and its app.
    let cutover = second.pid();
    crate::fixture::procs::kill_tree(cutover);
    crate::fixture::procs::signal(cutover, libc::SIGKILL);
    wait_version(s.port, "v1", &first, SECS_20);
    sleep(Duration::from_millis(500));
    let r = load.finish();
    eprintln!(
        "holder: a serving taker killed: {} requests, failed: {:?}",
        r.requests(),
        r.failed
    );
    // The one request the killed instance may have had in hand is lost
    // (no supervisor can move it): it fails, or its answer is cut off before
    // the body (read as an empty version). None may hang or be refused.
    let cut_off = r.versions.iter().filter(|v| v.is_empty()).count();
    assert!(
        r.failed.len() + cut_off <= 1,
        "{:?} {:?}\n{}",
        r.failed,
        r.versions,
        s.holder.stderr()
    );
    assert!(
        r.failed
            .iter()
            // A read that timed out (EAGAIN after 10 s) is a connection
            // left hanging in the killed one's socket, what this test is for.
            .all(|e| !e.contains("os error 11")
                && !e.contains("timed out")
                && !e.contains("refused")),
        "{:?}",
        r.failed
    );
    let answered: Vec<&String> = r.versions.iter().filter(|v| !v.is_empty()).collect();
    assert_eq!(answered, ["v1", "v2", "v1"], "back to the one that stays");
    let st = s.status();
    assert_eq!(
        st["sockets"][0]["queued"], 0,
        "nothing waits unserved: {st}"
    );
}

/// An app started before its holder (compose may do that) waits for it;
/// meanwhile `cutover status` answers, and a stop is not held up.
#[test]
fn an_app_waiting_for_its_holder_answers_and_stops_at_once() {
    let scene = Scene::new(&[]);
    // Pointed at a holder that is not there (yet).
    let absent = scene.dir.join("later/sockets");
    let toml = scene.app_config("control.sock", "").replace(
        scene.holder_socket.to_str().unwrap(),
        absent.to_str().unwrap(),
    );
    let cfg = scene.dir.write("app.toml", &toml);
    let mut app = Cutover::start(
        Mode::Subreaper,
        &scene.dir,
        &["run", "-c", cfg.to_str().unwrap()],
    );
    app.wait_for_log("waiting for the socket holder", SECS_20);
    wait_for_control(&scene.dir);
    let st = status(&scene.dir);
    assert_eq!(st["programs"].as_array().map(Vec::len), Some(0), "{st}");
    let asked = std::time::Instant::now();
    app.signal(libc::SIGTERM);
    assert_eq!(app.wait(SECS_20), 128 + libc::SIGTERM, "{}", app.stderr());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
}
