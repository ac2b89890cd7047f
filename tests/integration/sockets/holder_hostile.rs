//! Peers the holder cannot trust to behave: nothing they send or leave
//! idle can freeze it or keep it from answering. Descriptors a request
//! carries are refused and closed off the runtime thread (a socket with
//! SO_LINGER and unsent data blocks its close); `--http` admits connections
//! as cutover's own listeners do, and shows who took what only with
//! `--http-status`.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::fixture::prelude::*;
use crate::fixture::procs::Group;
use crate::sockets::holder::Scene;

#[test]
fn status_over_http_is_opt_in_and_healthz_outlives_a_flood_of_idle_clients() {
    let http = free_port();
    let address = format!("127.0.0.1:{http}");
    let _s = Scene::new(&["--http", &address]);
    let refused = http_get(http, "/status").unwrap_err();
    assert!(refused.contains("404"), "{refused}");
    let idle: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", http)).ok())
        .collect();
    assert!(idle.len() > 100, "the flood connected: {}", idle.len());
    assert_eq!(
        http_get(http, "/healthz").as_deref(),
        Ok("holding 1 socket(s) for 0 taker(s)\n")
    );
    drop(idle);
}

/// Sends a status request with a connected TCP socket attached whose last
/// close would block for 30 s (SO_LINGER, a full send buffer, a peer that
/// never reads), closes its own copy (the one in flight is not the last),
/// says "sent", then prints the holder's answer and keeps the sink alive.
const LINGERING_PEER: &str = r#"
import json, socket, struct, sys, time
holder = sys.argv[1]
sink = socket.socket(); sink.bind(("127.0.0.1", 0)); sink.listen(1)
c = socket.create_connection(sink.getsockname())
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 30))
c.setblocking(False)
try:
    while True:
        c.send(b"x" * 65536)
except BlockingIOError:
    pass
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(holder)
socket.send_fds(s, [json.dumps({"op": "status"}).encode()], [c.fileno()])
c.close()
print("sent", flush=True)
print(s.recv(65536).decode(), flush=True)
time.sleep(40)
"#;

#[test]
fn descriptors_in_a_request_are_refused_without_stalling_the_holder() {
    let s = Scene::new(&[]);
    let answer = s.dir.join("peer.out");
    let read = || std::fs::read_to_string(&answer).unwrap_or_default();
    // Stopped, the holder receives the descriptor only once the peer's own
    // copy is closed: the holder's is then the last, whose close lingers.
    s.holder.signal(libc::SIGSTOP);
    let mut cmd = Command::new("python3");
    cmd.args(["-c", LINGERING_PEER])
        .arg(&s.holder_socket)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&answer).unwrap())
        .stderr(Stdio::inherit());
    let _peer = Group::spawn(&mut cmd);
    let sent = wait_for(SECS_20, || read().contains("sent").then_some(()));
    s.holder.signal(libc::SIGCONT);
    sent.expect("the peer never sent its request");
    let said = wait_for(SECS_20, || {
        let text = read();
        text.contains("error").then_some(text)
    })
    .unwrap_or_else(|| panic!("the peer got no answer: {}", read()));
    assert!(said.contains("requests carry no descriptors"), "{said}");
    // Another peer is answered at once while that close lingers (30 s).
    let asked = Instant::now();
    let (code, out, err) = run_cutover(
        &s.dir,
        &["status", "--holder", s.holder_socket.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "status waited {:?} behind a lingering close",
        asked.elapsed()
    );
}

/// Peers that connect and say nothing fill no more than the holder's cap,
/// and give their places up to newcomers: a taker's status request is
/// answered while 300 of them wait.
#[test]
fn silent_peers_on_the_unix_socket_make_room_for_requests() {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    use std::os::fd::AsRawFd;
    let s = Scene::new(&[]);
    let silent: Vec<_> = (0..300)
        .filter_map(|_| {
            let fd = socket(
                AddressFamily::Unix,
                SockType::SeqPacket,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .ok()?;
            connect(fd.as_raw_fd(), &UnixAddr::new(&s.holder_socket).ok()?).ok()?;
            Some(fd)
        })
        .collect();
    assert_eq!(silent.len(), 300);
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let (code, out, err) = run_cutover(
        &s.dir,
        &["status", "--holder", s.holder_socket.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}\n{}", s.holder.stderr());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    drop(silent);
}
