//! Steering inside a SO_REUSEPORT group: which of the group's listening
//! sockets a new connection lands on, and how many connections wait in one
//! socket's accept queue.
//!
//! The kernel hands each new connection (its SYN) to one socket of the group.
//! A classic BPF program attached to the group chooses it by index, in the
//! order the sockets joined the group. cutover uses that to send all user
//! traffic to one instance's socket while its own readiness probes, which
//! connect from a source port it chose, reach another: the check then speaks
//! for the new instance alone. Classic BPF needs no privilege, unlike an eBPF
//! sockarray, so this works as any user and in any container.
//!
//! When the program returns an index the group does not have, the kernel
//! falls back to its hash; callers keep the group at two sockets at most so
//! that the fallback can only pick the one that remains.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use libc::sock_filter;

/// Not in the libc crate for glibc targets; the value is the same on every
/// Linux architecture (asm-generic/socket.h).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Where new connections go: every one to the socket at `users`, except a
/// probe's, which goes to the socket at its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    pub users: u32,
    pub probe: Option<(ProbeFrom, u32)>,
}

/// What only the prober has: its local port, and the local address it
/// bound. A client elsewhere may choose its source port (Docker's DNAT
/// keeps it), never a source address of this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeFrom {
    pub port: u16,
    pub address: Option<IpAddr>,
}

/// Attaches `route` to the group `socket` belongs to, replacing any program
/// the group had.
pub(crate) fn attach(socket: BorrowedFd<'_>, route: Route) -> io::Result<()> {
    let probes: Vec<(ProbeFrom, u32)> = route.probe.into_iter().collect();
    attach_routes(socket, route.users, &probes)
}

/// Every new connection to index `users`, except those from the local
/// ports of `probes`, which go to their index: one route per prober, so
/// that probes of several instances (of several takers of a holder) never
/// wipe each other's.
pub(crate) fn attach_routes(
    socket: BorrowedFd<'_>,
    users: u32,
    probes: &[(ProbeFrom, u32)],
) -> io::Result<()> {
    let mut filter = program(users, probes);
    let fprog = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `filter`, which lives until the call returns;
    // the kernel copies the program and keeps no pointer to it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn stmt(code: u32, k: i64) -> sock_filter {
    jump(code, 0, 0, k)
}

fn jump(code: u32, jt: u8, jf: u8, k: i64) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        // Negative offsets (SKF_NET_OFF, SKF_AD_OFF) are meant as u32 bit patterns.
        k: k as u32,
    }
}

/// The program for `users` and `probes`. The kernel runs it with the
/// packet's data past the TCP header, so the IP header is read relative to
/// the network header (SKF_NET_OFF): the source address at 12 (IPv4) or 8
/// (IPv6), the source port after the header (IHL * 4 for IPv4, 40 for IPv6:
/// a SYN carries no extension headers in practice). A v4 SYN may reach a
/// dual-stack socket too, hence the protocol test.
fn program(users: u32, probes: &[(ProbeFrom, u32)]) -> Vec<sock_filter> {
    use libc::{
        BPF_ABS, BPF_H, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, SKF_AD_OFF, SKF_AD_PROTOCOL,
    };
    let users = stmt(BPF_RET | BPF_K, users.into());
    if probes.is_empty() {
        return vec![users];
    }
    let v4 = family_section(probes, false, users);
    let v6 = family_section(probes, true, users);
    let mut code = vec![
        // A = skb->protocol; IPv6 on to the v6 section after the v4 one.
        stmt(
            BPF_LD | BPF_H | BPF_ABS,
            i64::from(SKF_AD_OFF + SKF_AD_PROTOCOL),
        ),
        jump(
            BPF_JMP | BPF_JEQ | BPF_K,
            u8::try_from(v4.len()).unwrap_or(u8::MAX),
            0,
            i64::from(libc::ETH_P_IPV6),
        ),
    ];
    code.extend(v4);
    code.extend(v6);
    code
}

/// One family's comparisons: each probe's port, then its address word by
/// word, a mismatch skipping to the next probe; at the end, `users`.
fn family_section(probes: &[(ProbeFrom, u32)], v6: bool, users: sock_filter) -> Vec<sock_filter> {
    use libc::{
        BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_LSH,
        BPF_MISC, BPF_RET, BPF_TAX, BPF_W, SKF_NET_OFF,
    };
    let net = i64::from(SKF_NET_OFF);
    let mut code = Vec::new();
    if !v6 {
        // X = IPv4 header length (IHL * 4)
        code.push(stmt(BPF_LD | BPF_B | BPF_ABS, net));
        code.push(stmt(BPF_ALU | BPF_AND | BPF_K, 0xf));
        code.push(stmt(BPF_ALU | BPF_LSH | BPF_K, 2));
        code.push(stmt(BPF_MISC | BPF_TAX, 0));
    }
    for &(from, index) in probes {
        let words: Vec<(i64, u32)> = match (from.address, v6) {
            (Some(IpAddr::V4(ip)), false) => vec![(12, u32::from(ip))],
            (Some(IpAddr::V6(ip)), true) => ip
                .octets()
                .chunks(4)
                .enumerate()
                .map(|(i, w)| {
                    (
                        8 + 4 * i as i64,
                        u32::from_be_bytes([w[0], w[1], w[2], w[3]]),
                    )
                })
                .collect(),
            // A probe of the other family never matches here.
            (Some(_), _) => continue,
            (None, _) => Vec::new(),
        };
        let mut block = vec![if v6 {
            stmt(BPF_LD | BPF_H | BPF_ABS, net + 40)
        } else {
            stmt(BPF_LD | BPF_H | BPF_IND, net)
        }];
        block.push(jump(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, from.port.into()));
        for (offset, word) in words {
            block.push(stmt(BPF_LD | BPF_W | BPF_ABS, net + offset));
            block.push(jump(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, word.into()));
        }
        block.push(stmt(BPF_RET | BPF_K, index.into()));
        // Every comparison's "no" skips the rest of the block.
        let len = block.len();
        for (i, insn) in block.iter_mut().enumerate() {
            if insn.code == (BPF_JMP | BPF_JEQ | BPF_K) as u16 {
                insn.jf = u8::try_from(len - i - 1).unwrap_or(u8::MAX);
            }
        }
        code.extend(block);
    }
    code.push(users);
    code
}

/// Whether some other socket listens on `address` already (another
/// process, another container on the host network): a probe bind without
/// SO_REUSEPORT fails then. Call it before binding one's own.
pub(crate) fn others_listen(address: SocketAddr) -> bool {
    if address.port() == 0 {
        return false;
    }
    let Ok(probe) = Socket::new(Domain::for_address(address), Type::STREAM, None) else {
        return false;
    };
    // SO_REUSEADDR: connections in TIME_WAIT do not count, listeners do.
    let _ = probe.set_reuse_address(true);
    matches!(probe.bind(&address.into()), Err(e) if e.kind() == io::ErrorKind::AddrInUse)
}

/// How many members of a group [`own_index`] tries.
const GROUP_MAX: u32 = 64;
/// How long a test connection may take to reach an accept queue.
const LANDING: Duration = Duration::from_millis(100);

/// The index `socket` has in its group, in the kernel's order, where other
/// processes' sockets joined first: found by steering everything to each
/// index in turn and connecting, until a connection lands in `socket`'s
/// accept queue. Other members' users are steered to other members for a
/// moment (never to a socket outside the group); what lands in `socket`
/// waits for its first taker, the test connection included (closed, so an
/// app reads end-of-file). Blocks for up to ~100 ms per member before it.
pub(crate) fn own_index(socket: BorrowedFd<'_>, address: SocketAddr) -> io::Result<Option<u32>> {
    let target = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), address.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), address.port())
        }
        _ => address,
    };
    for k in 0..GROUP_MAX {
        let before = queued(socket)?;
        attach_routes(socket, k, &[])?;
        let client = std::net::TcpStream::connect_timeout(&target, LANDING)?;
        let deadline = Instant::now() + LANDING;
        let mut landed = false;
        while !landed && Instant::now() < deadline {
            landed = queued(socket)? > before;
            if !landed {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(client);
        if landed {
            return Ok(Some(k));
        }
    }
    Ok(None)
}

/// Connections in `socket`'s accept queue: complete, not yet accepted.
pub(crate) fn queued(socket: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: tcp_info is plain data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes of `len` bytes; the
    // kernel writes at most that much.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // For a listening socket the kernel reports its accept queue here.
    Ok(info.tcpi_unacked)
}

/// Whether the kernel moves an old listener's queued connections to another
/// socket of its group when it closes (net.ipv4.tcp_migrate_req, also for
/// IPv6). Without it they are reset, so cutover waits for the queue to empty.
pub(crate) fn migrates_queued() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::Duration;

    use socket2::{Domain, Socket, Type};

    fn member(addr: SocketAddr) -> TcpListener {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(16).unwrap();
        s.set_nonblocking(true).unwrap();
        s.into()
    }

    fn connect_from(local: Option<SocketAddr>, to: SocketAddr) -> TcpStream {
        let s = Socket::new(Domain::for_address(to), Type::STREAM, None).unwrap();
        if let Some(local) = local {
            s.bind(&local.into()).unwrap();
        }
        s.connect(&to.into()).unwrap();
        s.into()
    }

    /// Which of `sockets` took the one connection made.
    fn taker(sockets: &[&TcpListener]) -> usize {
        for _ in 0..200 {
            for (i, s) in sockets.iter().enumerate() {
                if s.accept().is_ok() {
                    return i;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no socket accepted the connection");
    }

    fn steers(host: &str) {
        let first = member(format!("{host}:0").parse().unwrap());
        let addr = first.local_addr().unwrap();
        let second = member(addr);
        let both = [&first, &second];
        for users in [1u32, 0] {
            let probe_socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
            let mut local = addr;
            local.set_port(0);
            probe_socket.bind(&local.into()).unwrap();
            let port = probe_socket
                .local_addr()
                .unwrap()
                .as_socket()
                .unwrap()
                .port();
            let from = ProbeFrom {
                port,
                address: Some(addr.ip()),
            };
            let route = Route {
                users,
                probe: Some((from, 1 - users)),
            };
            attach(first.as_fd(), route).unwrap();
            for _ in 0..8 {
                let _c = connect_from(None, addr);
                assert_eq!(taker(&both), users as usize, "user traffic, {host}");
            }
            if addr.is_ipv4() {
                // The probe's port from another address is a user's.
                let other: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
                let _c = connect_from(Some(other), addr);
                assert_eq!(taker(&both), users as usize, "same port, other address");
            }
            probe_socket.connect(&addr.into()).unwrap();
            assert_eq!(taker(&both), 1 - users as usize, "the probe, {host}");
        }
    }

    #[test]
    fn probes_and_users_reach_the_sockets_they_are_steered_to() {
        steers("127.0.0.1");
        if TcpListener::bind("[::1]:0").is_ok() {
            steers("[::1]");
        }
    }

    #[test]
    fn the_accept_queue_is_counted() {
        let listener = member("127.0.0.1:0".parse().unwrap());
        let addr = listener.local_addr().unwrap();
        assert_eq!(queued(listener.as_fd()).unwrap(), 0);
        let _a = connect_from(None, addr);
        let _b = connect_from(None, addr);
        // The handshakes complete in the kernel: wait for them, never a fixed time.
        let mut count = 0;
        for _ in 0..1000 {
            count = queued(listener.as_fd()).unwrap();
            if count == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(count, 2);
        let _ = listener.accept().unwrap();
        assert_eq!(queued(listener.as_fd()).unwrap(), 1);
    }
}
