//! Clients that misbehave: HTTP clients that never finish their request
//! head, webhooks that announce a body and never send it, garbage and
//! silence on the control socket. Each test checks that cutover cuts them off
//! within its timeouts plus a generous margin, keeps its connections (and so
//! its file descriptors) bounded, and goes on answering `/healthz` and
//! `cutover status` without disturbing the supervised program.
//!
//! Also `cutover status -c FILE`, which finds the socket in the config.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::fixture::git::Repo;
use crate::fixture::prelude::*;

/// cutover's header read timeout and control-socket read timeout (5 s),
/// plus a margin for a busy machine.
const CUT_OFF_WITHIN: Duration = Duration::from_secs(5 + 15);

/// Connections one HTTP listener keeps open (`http::MAX_CONNECTIONS`).
const HTTP_MAX_CONNECTIONS: usize = 256;

/// Starts cutover on `toml`; waits for its control socket and its program.
fn start(dir: &TestDir, toml: &str, env: &[(&str, &str)]) -> (Cutover, i32) {
    let cfg = dir.write("cutover.toml", toml);
    let c = Cutover::start_with(
        Mode::Subreaper,
        dir,
        &["run", "-c", cfg.to_str().unwrap()],
        env,
    );
    wait_for_control(dir);
    let program = wait_for(SECS_20, || {
        c.descendants()
            .into_iter()
            .find(|p| p.name == "sleep")
            .map(|p| p.pid)
    })
    .expect("the program never started");
    (c, program)
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits until the peer closes `s` (EOF or reset), reading and discarding
/// whatever it sends first; the bytes read, or why it did not close.
fn closed_by_peer(
    s: &mut impl Read,
    set_timeout: impl Fn(Duration),
    deadline: Instant,
) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        set_timeout(left.max(Duration::from_millis(10)));
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A read with a timeout fails with EINTR after a stop and
            // continue of this process (signal(7)): not the peer's doing.
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                return Ok(got);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!(
                    "still open after the deadline; got {:?}",
                    String::from_utf8_lossy(&got)
                ));
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

fn tcp_closed_by_peer(s: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, String> {
    let t = s.try_clone().unwrap();
    closed_by_peer(s, |d| t.set_read_timeout(Some(d)).unwrap(), deadline)
}

fn unix_closed_by_peer(s: &mut UnixStream, deadline: Instant) -> Result<Vec<u8>, String> {
    let t = s.try_clone().unwrap();
    closed_by_peer(s, |d| t.set_read_timeout(Some(d)).unwrap(), deadline)
}

#[test]
fn slow_header_clients_are_cut_off_while_probes_and_status_answer() {
    let dir = TestDir::new();
    let port = free_port();
    let (c, program) = start(
        &dir,
        &ConfigToml::new()
            .app(&["sleep", "1000"], "")
            .control("", port, "")
            .to_string(),
        &[],
    );
    wait_for(SECS_20, || http_get(port, "/healthz").ok()).expect("/healthz never answered");
    let cutover = c.pid();
    let fds_before = open_fds(cutover);

    let mut slow: Vec<TcpStream> = (0..300)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("connect #{i}: {e}"));
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    let attacked = Instant::now();

    // Never more connections than the limit, however many clients come.
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(open_fds(cutover));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        most <= fds_before + HTTP_MAX_CONNECTIONS + 16,
        "cutover held {most} fds (before: {fds_before}) with 300 slow clients"
    );

    // Meanwhile the probe and the control socket answer.
    assert_eq!(
        http_get(port, "/healthz").as_deref(),
        Ok("ok\n"),
        "/healthz during the attack\n--- stderr ---\n{}",
        c.stderr()
    );
    let (code, out, err) = client(&dir, &["status"]);
    assert_eq!(code, 0, "status during the attack: {out}{err}");

    // Every slow client is cut off: by the header timeout, or earlier to
    // make room for newer connections.
    let deadline = attacked + CUT_OFF_WITHIN;
    for (i, s) in slow.iter_mut().enumerate() {
        if let Err(e) = tcp_closed_by_peer(s, deadline) {
            panic!("slow client #{i}: {e}");
        }
    }
    drop(slow);
    wait_for(SECS_20, || {
        (open_fds(cutover) <= fds_before + 2).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "fds not released: {} (before: {fds_before})",
            open_fds(cutover)
        )
    });

    assert!(alive(program), "the program died");
    let still = c
        .descendants()
        .into_iter()
        .find(|p| p.name == "sleep")
        .map(|p| p.pid);
    assert_eq!(still, Some(program), "the program was restarted");
    assert_eq!(http_get(port, "/healthz").as_deref(), Ok("ok\n"));
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let dir = TestDir::new();
    let port = free_port();
    let (_c, _) = start(
        &dir,
        &ConfigToml::new()
            .app(&["sleep", "1000"], "")
            .control("", port, "")
            .to_string(),
        &[],
    );
    wait_for(SECS_20, || http_get(port, "/healthz").ok()).expect("/healthz never answered");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answered = tcp_closed_by_peer(&mut s, Instant::now() + CUT_OFF_WITHIN)
        .expect("an idle keep-alive connection stayed open");
    let answered = String::from_utf8_lossy(&answered);
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert!(answered.ends_with("ok\n"), "{answered}");
}

#[test]
fn unsigned_webhook_is_refused_before_its_body() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    repo.commit("v1", &[("version", "v1")]);
    repo.push();
    let hook = free_port();
    let toml = format!(
        "[app]\ncommand = [\"sleep\", \"1000\"]\n\n[source]\nrepo = \"{}\"\nref = \"main\"\n\
         root = \"{}\"\nwebhook = \"127.0.0.1:{hook}\"\nwebhook_secret_env = \"TEST_WEBHOOK_SECRET\"\n",
        repo.remote.display(),
        dir.join("srv").display(),
    );
    let (c, program) = start(&dir, &toml, &[("TEST_WEBHOOK_SECRET", "s3cret")]);
    wait_for(SECS_20, || TcpStream::connect(("127.0.0.1", hook)).ok())
        .expect("the webhook listener never came up");

    // Announces a megabyte and sends none of it: no signature means 401 at
    // once, without waiting for (or buffering) the body.
    let head = |extra: &str| {
        format!(
            "POST /webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n{extra}\
             Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
        )
    };
    let mut s = TcpStream::connect(("127.0.0.1", hook)).unwrap();
    s.write_all(head("").as_bytes()).unwrap();
    let answer = tcp_closed_by_peer(&mut s, Instant::now() + CUT_OFF_WITHIN)
        .expect("no answer to an unsigned webhook without its body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("no signature"), "{answer}");

    // Signed but the body never comes: refused once the body timeout
    // (10 s) passes, not held forever.
    let mut s = TcpStream::connect(("127.0.0.1", hook)).unwrap();
    s.write_all(head("X-Hub-Signature-256: sha256=00\r\n").as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10 + 15);
    let answer = tcp_closed_by_peer(&mut s, deadline)
        .expect("a signed webhook without its body was held open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    let (code, out, err) = client(&dir, &["status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(alive(program), "the program died\n{}", c.stderr());
}

/// Sends `bytes` on a fresh control connection; what cutover answered
/// before closing it.
fn control_exchange(dir: &TestDir, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(Cutover::socket(dir)).unwrap();
    s.write_all(bytes).unwrap();
    let answer = unix_closed_by_peer(&mut s, Instant::now() + CUT_OFF_WITHIN)
        .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(bytes)));
    String::from_utf8(answer).unwrap()
}

fn assert_malformed(answer: &str, detail: &str) {
    let v: serde_json::Value =
        serde_json::from_str(answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"));
    assert_eq!(v["ok"], false, "{answer}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("malformed request: ") && error.contains(detail),
        "{error:?} should mention {detail:?}"
    );
}

#[test]
fn malformed_control_requests_get_an_error_and_are_closed() {
    let dir = TestDir::new();
    let (c, program) = start(&dir, "[app]\ncommand = [\"sleep\", \"1000\"]\n", &[]);
    assert_malformed(&control_exchange(&dir, b"hello there\n"), "expected value");
    assert_malformed(
        &control_exchange(&dir, b"{\"command\":\"explode\"}\n"),
        "unknown variant",
    );
    assert_malformed(&control_exchange(&dir, b"\xff\xfe{}\n"), "not UTF-8");
    assert_malformed(&control_exchange(&dir, &[b' '; 70 * 1024]), "no newline");
    // Half a request, then nothing: cut off by the read timeout.
    assert_malformed(
        &control_exchange(&dir, b"{\"command\":"),
        "no complete request line",
    );

    let (code, out, err) = client(&dir, &["status"]);
    assert_eq!(code, 0, "{out}{err}");
    let still = c
        .descendants()
        .into_iter()
        .find(|p| p.name == "sleep")
        .map(|p| p.pid);
    assert_eq!(still, Some(program), "the program was disturbed");
}

#[test]
fn silent_control_clients_are_cut_off() {
    let dir = TestDir::new();
    let (c, program) = start(&dir, "[app]\ncommand = [\"sleep\", \"1000\"]\n", &[]);
    let cutover = c.pid();
    let fds_before = open_fds(cutover);
    // More than the control socket keeps open (64), all silent.
    let mut silent: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(Cutover::socket(&dir)).unwrap())
        .collect();
    let connected = Instant::now();
    let (code, out, err) = client(&dir, &["status"]);
    assert_eq!(code, 0, "status beside 100 silent clients: {out}{err}");
    for (i, s) in silent.iter_mut().enumerate() {
        let answer = unix_closed_by_peer(s, connected + CUT_OFF_WITHIN)
            .unwrap_or_else(|e| panic!("silent client #{i}: {e}"));
        assert_malformed(&String::from_utf8(answer).unwrap(), "");
    }
    drop(silent);
    wait_for(SECS_20, || {
        (open_fds(cutover) <= fds_before + 2).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "fds not released: {} (before: {fds_before})",
            open_fds(cutover)
        )
    });
    assert!(alive(program));
    assert_eq!(client(&dir, &["status"]).0, 0);
}

/// `cutover ARGS` in `dir` with neither CUTOVER_SOCKET nor CUTOVER_CONFIG
/// set, plus `env`: (exit code, stdout, stderr).
fn bare_client(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("CUTOVER_SOCKET")
        .env_remove("CUTOVER_CONFIG")
        .env("CUTOVER_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn clients_find_the_socket_in_the_config() {
    let dir = TestDir::new();
    let socket = dir.join("from-config.sock");
    let toml = format!(
        "[app]\ncommand = [\"sleep\", \"1000\"]\n\n[control]\nsocket = \"{}\"\n",
        socket.display()
    );
    let cfg = dir.write("cutover.toml", &toml);
    // The supervisor is given the same socket explicitly, since the test
    // helpers set CUTOVER_SOCKET for it.
    let _c = Cutover::start(
        Mode::Subreaper,
        &dir,
        &[
            "--socket",
            socket.to_str().unwrap(),
            "run",
            "-c",
            cfg.to_str().unwrap(),
        ],
    );
    let path = dir.path();
    wait_for(SECS_20, || {
        (bare_client(path, &["status", "-c", "cutover.toml"], &[]).0 == 0).then_some(())
    })
    .expect("`cutover status -c cutover.toml` never reached the running cutover");
    let (code, out, err) =
        bare_client(path, &["status", "--json", "--config", "cutover.toml"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&out).is_ok(),
        "{out}"
    );
    let (code, _, err) = bare_client(path, &["reload", "-c", "cutover.toml"], &[]);
    assert_eq!(code, 0, "{err}");
    // CUTOVER_CONFIG works as for `run`.
    let (code, _, err) = bare_client(path, &["status"], &[("CUTOVER_CONFIG", "cutover.toml")]);
    assert_eq!(code, 0, "{err}");
    // --socket (and CUTOVER_SOCKET) beat the config.
    let (code, _, err) = bare_client(
        path,
        &["status", "-c", "cutover.toml", "--socket", "elsewhere.sock"],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("elsewhere.sock"), "{err}");
    let (code, _, err) = bare_client(
        path,
        &["status", "-c", "cutover.toml"],
        &[("CUTOVER_SOCKET", "elsewhere.sock")],
    );
    assert_eq!(code, 1, "{err}");
    // Only [control] is read: a program with an unknown user is no matter.
    let unusable = format!(
        "[app]\ncommand = [\"sleep\", \"1000\"]\nuser = \"no-such-user-here\"\n\n\
         [control]\nsocket = \"{}\"\n",
        socket.display()
    );
    dir.write("other.toml", &unusable);
    let (code, _, err) = bare_client(path, &["status", "-c", "other.toml"], &[]);
    assert_eq!(code, 0, "{err}");
    // A broken [control] or a missing file is a configuration error.
    dir.write("broken.toml", "[control]\nsockett = \"x.sock\"\n");
    let (code, _, err) = bare_client(path, &["status", "-c", "broken.toml"], &[]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("sockett"), "{err}");
    let (code, _, err) = bare_client(path, &["deploy", "-c", "missing.toml"], &[]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("missing.toml"), "{err}");
}
