//! Secrets in URLs and TLS: a token written into `[source] repo` (as the
//! user name, or with a dummy password) or configured with `token_env` never
//! shows in `cutover status` (JSON or text), `history.jsonl` or the log; and
//! `insecure_ignore_host_key` (ssh known_hosts) does not make an https
//! remote's self-signed certificate acceptable, so the token is never sent to
//! a server that could not prove who it is.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::fixture::prelude::*;
use crate::fixture::procs::Group;

const ENV_TOKEN: &str = "envtok-SECRET-5e2b7c91d4";

/// Waits until the source reports an error; returns the source status.
fn wait_source_error(dir: &TestDir, c: &Cutover) -> Value {
    wait_for(SECS_20, || (client(dir, &["status"]).0 == 0).then_some(()))
        .unwrap_or_else(|| panic!("the control socket never answered\n{}", c.stderr()));
    wait_for(SECS_20, || {
        let s = status(dir)["source"].clone();
        s["last_error"].is_string().then_some(s)
    })
    .unwrap_or_else(|| panic!("no source error reported\n{}", c.stderr()))
}

/// Everything cutover shows: status as JSON and text, the history, the log.
fn everything_shown(dir: &TestDir, root: &Path, c: &Cutover) -> String {
    let (_, text, _) = client(dir, &["status"]);
    format!(
        "{}\n{text}\n{}\n{}",
        status(dir),
        std::fs::read_to_string(root.join("history.jsonl")).unwrap_or_default(),
        c.stderr()
    )
}

/// The first deploy from a remote that cannot be reached: cutover retries,
/// and status, history and log name the remote without the token.
#[test]
fn a_token_in_the_remote_url_never_shows() {
    for (userinfo, token) in [
        (
            "ghp_USERtoken0123456789abcdef",
            "ghp_USERtoken0123456789abcdef",
        ),
        (
            "ghp_OAUTHtoken0123456789abcd:x-oauth-basic",
            "ghp_OAUTHtoken0123456789abcd",
        ),
    ] {
        let dir = TestDir::new();
        let root = dir.join("srv");
        // Nothing listens there: the fetch fails, and says so in status.
        let closed = free_port();
        let url = format!("https://{userinfo}@127.0.0.1:{closed}/org/app.git");
        let toml = ConfigToml::deploying(
            free_port(),
            &url,
            &root,
            "token_env = \"CUTOVER_TEST_TOKEN\"",
        )
        .to_string();
        let cfg = dir.write("cutover.toml", &toml);
        let c = Cutover::start_with(
            Mode::Subreaper,
            &dir,
            &["run", "-c", cfg.to_str().unwrap()],
            &[("CUTOVER_TEST_TOKEN", ENV_TOKEN)],
        );
        let src = wait_source_error(&dir, &c);
        assert_eq!(
            src["repo"],
            format!("https://***@127.0.0.1:{closed}/org/app.git"),
            "{src}"
        );
        let error = src["last_error"].as_str().unwrap();
        assert!(
            error.contains(&format!("https://***@127.0.0.1:{closed}/org/app.git")),
            "the error names the remote: {error}"
        );
        // A retry or two, so that their log lines are in as well.
        c.wait_for_log("retry_in=2s", SECS_20);
        let shown = everything_shown(&dir, &root, &c);
        for secret in [token, ENV_TOKEN, "x-oauth-basic"] {
            assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
        }
    }
}

/// A TLS server on loopback with a self-signed certificate that logs every
/// request it gets (line and headers) to `log`.
fn self_signed_server(dir: &TestDir, log: &Path) -> (Group, u16) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
        .args(["-subj", "/CN=127.0.0.1", "-days", "1"])
        .args(["-keyout", key.to_str().unwrap()])
        .args(["-out", cert.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl req failed");
    let ready = dir.join("tls.ready");
    let script = r#"
import http.server, ssl, sys
cert, key, log, ready = sys.argv[1:5]
out = open(log, "a", buffering=1)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        out.write("REQUEST %s %s\n%s\n" % (self.command, self.path, self.headers))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="git"')
        self.send_header("Content-Length", "0")
        self.end_headers()
    do_POST = do_GET

    def log_message(self, *args):
        pass

class Server(http.server.HTTPServer):
    def get_request(self):
        out.write("CONNECTION\n")
        return super().get_request()

    def handle_error(self, request, address):
        out.write("ERROR %s\n" % (sys.exc_info()[1],))

server = Server(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
with open(ready + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os
os.rename(ready + ".tmp", ready)
server.serve_forever()
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script])
        .args([&cert, &key, log, &ready])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("tls.stderr")).unwrap());
    let group = Group::spawn(&mut cmd);
    let port = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&ready).ok()?.trim().parse().ok()
    })
    .expect("the TLS server never became ready");
    (group, port)
}

/// An https remote with a self-signed certificate is refused before any
/// request, and neither the token in the URL nor the one from `token_env`
/// ever reaches it; `insecure_ignore_host_key` (ssh known_hosts) cannot
/// change that: on an https remote it is a config error.
#[test]
fn tls_certificates_are_always_verified() {
    let dir = TestDir::new();
    let root = dir.join("srv");
    let log = dir.join("tls-requests.log");
    std::fs::write(&log, "").unwrap();
    let (server, port) = self_signed_server(&dir, &log);
    let token = "ghp_TLStoken0123456789abcdef";
    let url = format!("https://{token}:x-oauth-basic@127.0.0.1:{port}/org/app.git");
    let toml = ConfigToml::deploying(
        free_port(),
        &url,
        &root,
        "token_env = \"CUTOVER_TEST_TOKEN\"",
    )
    .to_string();
    let insecure = toml.replace("[source]\n", "[source]\ninsecure_ignore_host_key = true\n");
    let cfg = dir.write("insecure.toml", &insecure);
    let (code, _, stderr) = run_cutover(&dir, &["check", "-c", cfg.to_str().unwrap()]);
    assert_ne!(code, 0, "insecure_ignore_host_key on https must be refused");
    assert!(
        stderr.contains("insecure_ignore_host_key") && stderr.contains("ssh remotes only"),
        "{stderr}"
    );
    let cfg = dir.write("cutover.toml", &toml);
    let c = Cutover::start_with(
        Mode::Subreaper,
        &dir,
        &["run", "-c", cfg.to_str().unwrap()],
        &[("CUTOVER_TEST_TOKEN", ENV_TOKEN)],
    );
    let src = wait_source_error(&dir, &c);
    let error = src["last_error"].as_str().unwrap().to_lowercase();
    assert!(
        error.contains("tls verification failed")
            && error.contains("trusted")
            && error.contains(&format!("127.0.0.1:{port}")),
        "refused for its certificate, naming the host: {error}"
    );
    // The retries are refused as well.
    c.wait_for_log("retry_in=2s", SECS_20);
    assert!(
        src["current"].is_null(),
        "nothing was deployed from there: {src}"
    );
    let requests = std::fs::read_to_string(&log).unwrap();
    assert!(
        !requests.contains("REQUEST"),
        "a request went over the unverified connection:\n{requests}"
    );
    for secret in [token, ENV_TOKEN] {
        assert!(!requests.contains(secret), "{secret} was sent:\n{requests}");
    }
    let shown = everything_shown(&dir, &root, &c);
    for secret in [token, ENV_TOKEN, "x-oauth-basic"] {
        assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
    }
    drop(server);
}
