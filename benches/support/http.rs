//! HTTP/1.1 on loopback, one fresh connection per request, and polling a
//! server until it serves what a bench waits for.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::procs::Group;
use super::sleep;

/// One request to 127.0.0.1:`port` on a fresh connection: (status code, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("truncated answer")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {}", head.lines().next().unwrap_or("")))?;
    Ok((code, body.to_string()))
}

/// `GET /`: the body of a 200, or why not.
pub fn get_root(port: u16) -> Result<String, String> {
    match http(port, "GET", "/", &[], b"")? {
        (200, body) => Ok(body),
        (code, body) => Err(format!("{code} {body}")),
    }
}

/// Polls `GET /` every 20 ms until a 200 answer's body passes `want`. Fails
/// with the last answer after `timeout`, or as soon as `server` exited.
pub fn wait_served(
    port: u16,
    timeout: Duration,
    server: &mut Group,
    want: impl Fn(&str) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(status) = server.exited() {
            return Err(format!("the server exited ({status})"));
        }
        match get_root(port) {
            Ok(body) if want(&body) => return Ok(()),
            Ok(body) => last = format!("200 {body}"),
            Err(e) => last = e,
        }
        sleep(Duration::from_millis(20));
    }
    Err(format!("timed out; last answer: {last}"))
}

/// Polls `GET /` every `every` until a 200 answer's body passes `want`, for
/// at most `timeout` after `since`: (the time since `since` when it did, the
/// probes that failed meanwhile: no answer or not a 200).
pub fn poll_get(
    port: u16,
    since: Instant,
    timeout: Duration,
    every: Duration,
    want: impl Fn(&str) -> bool,
) -> (Option<Duration>, u32) {
    let mut errors = 0;
    while since.elapsed() < timeout {
        match get_root(port) {
            Ok(body) if want(&body) => return (Some(since.elapsed()), errors),
            Ok(_) => {}
            Err(_) => errors += 1,
        }
        sleep(every);
    }
    (None, errors)
}
