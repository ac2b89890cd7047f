//! Holder flood benchmark: prints figures, asserts nothing about time.
//!
//! Does `cutover hold` still answer its health check and its takers while
//! peers flood it? A holder runs with `--http` on loopback; two probes run
//! for the whole bench, each started every 20 ms whether or not the
//! previous one was answered (open loop), each on a fresh connection:
//!
//! - `GET /healthz` on `--http` (2 s client timeout);
//! - a status request on the holder's unix socket, as a taker sends it
//!   (`{"op":"status"}` on SOCK_SEQPACKET, 2 s timeout).
//!
//! Phases: idle (3 s), then a flood (5 s) of 1,000 idle TCP connections to
//! `--http` and 300 idle connections to the unix socket that never send a
//! request (re-opened as the holder cuts them), then idle again (3 s). For
//! each phase and probe: answered, failed, p50 / p99 / max latency.
//!
//! Run with `cargo bench --bench holder` (about 15 s). Traffic goes to
//! 127.0.0.1 and a unix socket in a temporary directory only; everything it
//! starts is stopped at the end, on panic and on Ctrl-C.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use support::procs::Group;
use support::{TempDir, free_port, install_cleanup, loadavg, machine, max, ms, p50, p99, sleep};

const EVERY: Duration = Duration::from_millis(20);
const TIMEOUT: Duration = Duration::from_secs(2);
const HTTP_FLOOD: usize = 1_000;
const UNIX_FLOOD: usize = 300;

/// (phase, probe, latency ms or None for a failure)
type Samples = Arc<Mutex<Vec<(&'static str, &'static str, Option<f64>)>>>;

fn main() {
    install_cleanup();
    println!("cutover holder flood benchmark ({})", support::fixture::BIN);
    println!("machine: {}", machine());
    let dir = TempDir::new("cutover-bench-holder");
    let (port, http) = (free_port(), free_port());
    let at = dir.path().join("sockets");
    let log = std::fs::File::create(dir.path().join("holder.log")).unwrap();
    let _holder = Group::spawn_logged(
        Command::new(support::fixture::BIN)
            .arg("hold")
            .args(["--listen", &format!("http=127.0.0.1:{port}")])
            .arg("--at")
            .arg(&at)
            .args(["--http", &format!("127.0.0.1:{http}")]),
        log,
    );
    assert!(
        support::fixture::ports::wait_listening(http, Duration::from_secs(10)),
        "the holder never listened"
    );
    let samples: Samples = Arc::default();
    let phase = Arc::new(Mutex::new("idle"));
    let stop = Arc::new(AtomicBool::new(false));
    let probes = [
        spawn_probe("healthz", samples.clone(), phase.clone(), stop.clone(), {
            move || healthz(http)
        }),
        spawn_probe("status", samples.clone(), phase.clone(), stop.clone(), {
            let at = at.clone();
            move || status(&at)
        }),
    ];
    sleep(Duration::from_secs(3));
    *phase.lock().unwrap() = "flood";
    let flooding = Arc::new(AtomicBool::new(true));
    let flood = {
        let (at, flooding) = (at.clone(), flooding.clone());
        std::thread::spawn(move || flood(http, &at, &flooding))
    };
    sleep(Duration::from_secs(5));
    flooding.store(false, Ordering::SeqCst);
    let held = flood.join().unwrap();
    *phase.lock().unwrap() = "after";
    sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    for p in probes {
        let _ = p.join();
    }
    println!(
        "flood: {} idle TCP connections to --http and {} idle unix connections held at most (re-opened as cut)",
        held.0, held.1
    );
    report(&samples.lock().unwrap());
    println!("load average now {}", loadavg());
}

fn spawn_probe(
    name: &'static str,
    samples: Samples,
    phase: Arc<Mutex<&'static str>>,
    stop: Arc<AtomicBool>,
    probe: impl Fn() -> bool + Send + Sync + 'static,
) -> std::thread::JoinHandle<()> {
    let probe = Arc::new(probe);
    std::thread::spawn(move || {
        let mut next = Instant::now();
        let mut running = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let (samples, probe) = (samples.clone(), probe.clone());
            let now_phase = *phase.lock().unwrap();
            running.push(std::thread::spawn(move || {
                let started = Instant::now();
                let ok = probe();
                let latency = ok.then(|| ms(started.elapsed()));
                samples.lock().unwrap().push((now_phase, name, latency));
            }));
            next += EVERY;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        for r in running {
            let _ = r.join();
        }
    })
}

fn healthz(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), TIMEOUT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(TIMEOUT));
    if s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    s.read_to_string(&mut answer).is_ok() && answer.starts_with("HTTP/1.1 200")
}

/// A status request as a taker sends it: one SEQPACKET message.
fn status(at: &Path) -> bool {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr, connect, recv, send, socket,
    };
    let Ok(fd) = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    let Ok(addr) = UnixAddr::new(at) else {
        return false;
    };
    use std::os::fd::AsRawFd;
    if connect(fd.as_raw_fd(), &addr).is_err() {
        return false;
    }
    let timeout = nix::sys::time::TimeVal::new(TIMEOUT.as_secs() as i64, 0);
    let _ = nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &timeout);
    if send(fd.as_raw_fd(), br#"{"op":"status"}"#, MsgFlags::empty()).is_err() {
        return false;
    }
    let mut buf = vec![0u8; 64 * 1024];
    matches!(recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()), Ok(n) if n > 0 && buf[..n].starts_with(b"{\"ok\":true"))
}

/// Holds idle connections until `flooding` ends; the most held of each kind.
fn flood(http: u16, at: &Path, flooding: &AtomicBool) -> (usize, usize) {
    let mut tcp: Vec<TcpStream> = Vec::new();
    let mut unix: Vec<UnixStream> = Vec::new();
    let mut most = (0, 0);
    while flooding.load(Ordering::SeqCst) {
        while tcp.len() < HTTP_FLOOD {
            match TcpStream::connect(("127.0.0.1", http)) {
                Ok(s) => tcp.push(s),
                Err(_) => break,
            }
        }
        // The holder cuts a silent peer after 5 s: open new ones.
        unix.retain(|s| {
            let mut b = [0u8; 1];
            s.set_nonblocking(true).ok();
            !matches!((&*s).read(&mut b), Ok(0))
        });
        while unix.len() < UNIX_FLOOD {
            match seqpacket(at) {
                Some(s) => unix.push(s),
                None => break,
            }
        }
        most = (most.0.max(tcp.len()), most.1.max(unix.len()));
        tcp.retain(|s| {
            let mut b = [0u8; 1];
            s.set_nonblocking(true).ok();
            !matches!((&*s).read(&mut b), Ok(0))
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    most
}

fn seqpacket(at: &Path) -> Option<UnixStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    connect(fd.as_raw_fd(), &UnixAddr::new(at).ok()?).ok()?;
    // A UnixStream only to hold and poll the descriptor.
    Some(UnixStream::from(fd))
}

fn report(samples: &[(&str, &str, Option<f64>)]) {
    println!();
    println!(
        "{:<8} | {:<8} | {:>8} | {:>6} | {:>21}",
        "phase", "probe", "answered", "failed", "p50 / p99 / max ms"
    );
    println!("{}", "-".repeat(64));
    for phase in ["idle", "flood", "after"] {
        for probe in ["healthz", "status"] {
            let of: Vec<&Option<f64>> = samples
                .iter()
                .filter(|(ph, pr, _)| *ph == phase && *pr == probe)
                .map(|(_, _, l)| l)
                .collect();
            let ok: Vec<f64> = of.iter().filter_map(|l| **l).collect();
            let failed = of.len() - ok.len();
            println!(
                "{phase:<8} | {probe:<8} | {:>8} | {failed:>6} | {:>21}",
                ok.len(),
                format!("{:.1} / {:.1} / {:.1}", p50(&ok), p99(&ok), max(&ok))
            );
        }
    }
    println!(
        "probes every {} ms each, open loop, a fresh connection each, {} s timeout; failed = refused, cut, timed out or a wrong answer",
        EVERY.as_millis(),
        TIMEOUT.as_secs()
    );
}
