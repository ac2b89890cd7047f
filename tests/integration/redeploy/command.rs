//! `[redeploy]` command and webhook: how cutover asks for a new image.
//!
//! The deploy pipeline does not call `[redeploy]` yet, so these drive the
//! action through `cutover redeploy`, which runs it once for a release.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use crate::fixture::config::quote;
use crate::fixture::prelude::*;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// A release directory named by its commit, like `[source]` makes them.
fn release(dir: &TestDir) -> String {
    let path = dir.join(&format!("releases/{SHA}"));
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(path.join("requirements.txt"), "flask==3.0\n").unwrap();
    path.to_str().unwrap().to_string()
}

fn redeploy(
    dir: &TestDir,
    cfg: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let rel = release(dir);
    let mut args = vec![
        "redeploy",
        "-c",
        cfg.to_str().unwrap(),
        "--dir",
        &rel,
        "--ref",
        "refs/heads/main",
    ];
    args.extend_from_slice(extra);
    let mut c = Cutover::start_with(Mode::Subreaper, dir, &args, env);
    let code = c.wait(SECS_20);
    (code, c.stdout(), c.stderr())
}

#[test]
fn command_gets_the_sha_ref_and_changed_files() {
    let dir = TestDir::new();
    let out = dir.join("env.out");
    let script = dir.write(
        "report.sh",
        &format!(
            "printf 'SHA=%s\\nREF=%s\\nFILES=%s\\nDIR=%s\\nPWD=%s\\n' \
             \"$CUTOVER_SHA\" \"$CUTOVER_REF\" \"$CUTOVER_CHANGED_FILES\" \
             \"$CUTOVER_RELEASE_DIR\" \"$(pwd)\" > {}\n\
             echo hello from the command\n",
            out.display()
        ),
    );
    let cfg = ConfigToml::new()
        .app(&["true"], "")
        .section(
            "redeploy",
            &format!("command = [\"sh\", \"{}\"]", script.display()),
        )
        .write(&dir);
    let (code, stdout, stderr) = redeploy(
        &dir,
        &cfg,
        &[
            "--changed",
            "requirements.txt",
            "--changed",
            "my deps/poetry.lock",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("redeploy command succeeded"), "{stdout}");
    // Its output is logged under its name.
    assert!(
        stderr.contains("redeploy: hello from the command"),
        "{stderr}"
    );
    let env = std::fs::read_to_string(&out).unwrap();
    let rel = dir
        .path()
        .join(format!("releases/{SHA}"))
        .canonicalize()
        .unwrap();
    let rel = rel.display();
    assert_eq!(
        env,
        format!(
            "SHA={SHA}\nREF=refs/heads/main\n\
             FILES=requirements.txt\nmy deps/poetry.lock\nDIR={rel}\nPWD={rel}\n"
        )
    );
}

#[test]
fn failing_or_slow_command_is_an_error() {
    let dir = TestDir::new();
    let cfg = ConfigToml::new()
        .app(&["true"], "")
        .section("redeploy", "command = [\"sh\", \"-c\", \"exit 3\"]")
        .write(&dir);
    let (code, _, stderr) = redeploy(&dir, &cfg, &[], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("redeploy failed: redeploy command failed: exit"),
        "{stderr}"
    );
    let cfg = ConfigToml::new()
        .app(&["true"], "")
        .section(
            "redeploy",
            "command = [\"sleep\", \"30\"]\ntimeout = \"300ms\"",
        )
        .write(&dir);
    let (code, _, stderr) = redeploy(&dir, &cfg, &[], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("did not finish within 300ms"), "{stderr}");
}

/// `[redeploy] deployer` waits for the deployer's answer at most `timeout`:
/// a deployer whose engine hangs (here: one that takes the request and
/// never answers) fails the redeploy with a reason, instead of keeping it
/// "running" for ever. And `timeout` is refused where nothing can use it.
#[test]
fn a_deployer_that_never_answers_fails_the_redeploy_after_its_timeout() {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, accept, bind, listen, socket,
    };
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let dir = TestDir::new();
    let path = dir.join("deployer.sock");
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(listener.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
    listen(&listener, Backlog::new(4).unwrap()).unwrap();
    let (taken, asked) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let fd = accept(listener.as_raw_fd()).unwrap();
        // SAFETY: accept returned a new descriptor that nothing else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut request = vec![0u8; 64 * 1024];
        let n = nix::unistd::read(&conn, &mut request).unwrap();
        taken
            .send(String::from_utf8_lossy(&request[..n]).into_owned())
            .unwrap();
        // Silent from here on, the connection held open.
        std::thread::sleep(Duration::from_secs(30));
        drop(conn);
    });
    let cfg = ConfigToml::new()
        .app(&["true"], "")
        .section(
            "redeploy",
            &format!(
                "deployer = {}\ntimeout = \"500ms\"",
                quote(path.to_str().unwrap())
            ),
        )
        .write(&dir);
    let (code, _, stderr) = redeploy(&dir, &cfg, &[], &[]);
    assert_eq!(code, 1, "{stderr}");
    let request = asked.recv_timeout(SECS_20).expect("the deployer was asked");
    assert!(request.contains(SHA), "{request}");
    assert!(
        stderr.contains("no answer within 500ms (`[redeploy] timeout`)"),
        "{stderr}"
    );

    let cfg = dir.write(
        "exit.toml",
        "[app]\ncommand = [\"true\"]\n[redeploy]\nexit = 75\ntimeout = \"1s\"\n",
    );
    let (code, _, err) = run_cutover(&dir, &["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("only for command, webhook and deployer"),
        "{err}"
    );
}

/// One captured request.
struct Captured {
    head: String,
    body: Vec<u8>,
}

impl Captured {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Serves one request on 127.0.0.1 with `status`, then hands it over.
fn one_shot_server(status: &'static str) -> (u16, std::thread::JoinHandle<Captured>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let thread = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        let mut captured = Captured {
            head,
            body: Vec::new(),
        };
        let length: usize = captured
            .header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        captured.body = vec![0; length];
        reader.read_exact(&mut captured.body).unwrap();
        let answer = "no thanks";
        write!(
            reader.get_mut(),
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        )
        .unwrap();
        captured
    });
    (port, thread)
}

#[test]
fn webhook_posts_a_signed_json_body() {
    let dir = TestDir::new();
    let (port, server) = one_shot_server("202 Accepted");
    let cfg = ConfigToml::new()
        .app(&["true"], "")
        .section(
            "redeploy",
            &format!(
                "webhook = \"http://127.0.0.1:{port}/hooks/redeploy\"\n\
             webhook_secret_env = \"TEST_REDEPLOY_SECRET\""
            ),
        )
        .write(&dir);
    let (code, stdout, stderr) = redeploy(
        &dir,
        &cfg,
        &["--changed", "requirements.txt"],
        &[("TEST_REDEPLOY_SECRET", "s3cret")],
    );
    let request = server.join().unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("webhook accepted (202)"), "{stdout}");
    assert!(
        request.head.starts_with("POST /hooks/redeploy HTTP/1.1"),
        "{}",
        request.head
    );
    assert_eq!(
        request.header("content-type").as_deref(),
        Some("application/json")
    );
    let json: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    let host = nix::unistd::gethostname().unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "event": "redeploy",
            "sha": SHA,
            "ref": "refs/heads/main",
            "changed_files": ["requirements.txt"],
            "host": host.to_str().unwrap(),
        })
    );
    assert_eq!(
        request.header("x-cutover-signature-256"),
        Some(cutover::webhook::sign_sha256(b"s3cret", &request.body)),
        "{}",
        request.head
    );
}

#[test]
fn webhook_error_status_fails_with_the_status() {
    let dir = TestDir::new();
    let (port, server) = one_shot_server("500 Internal Server Error");
    let cfg = ConfigToml::new()
        .app(&["true"], "")
        .section(
            "redeploy",
            &format!("webhook = \"http://127.0.0.1:{port}/\""),
        )
        .write(&dir);
    let (code, _, stderr) = redeploy(&dir, &cfg, &[], &[]);
    let request = server.join().unwrap();
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "redeploy webhook http://127.0.0.1:{port}/ answered 500: \"no thanks\""
        )),
        "{stderr}"
    );
    assert_eq!(request.header("x-cutover-signature-256"), None);
}

#[test]
fn webhook_nobody_listening_is_an_error() {
    let dir = TestDir::new();
    let port = free_port();
    let cfg = ConfigToml::new()
        .app(&["true"], "")
        .section(
            "redeploy",
            &format!("webhook = \"http://127.0.0.1:{port}/\"\ntimeout = \"5s\""),
        )
        .write(&dir);
    let (code, _, stderr) = redeploy(&dir, &cfg, &[], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
}

#[test]
fn exit_action_and_config_problems() {
    let dir = TestDir::new();
    let cfg = ConfigToml::new()
        .app(&["true"], "")
        .section("redeploy", "exit = 75")
        .write(&dir);
    let (code, stdout, stderr) = redeploy(&dir, &cfg, &[], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("exits 75"), "{stdout}");
    let cfg = ConfigToml::new()
        .app(&["true"], "")
        .section("redeploy", "exit = 75\ncommand = [\"true\"]")
        .write(&dir);
    let (code, _, stderr) = redeploy(&dir, &cfg, &[], &[]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("redeploy.exit: give exactly one action"),
        "{stderr}"
    );
}
