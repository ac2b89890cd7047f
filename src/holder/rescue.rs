//! Connections left in a member socket whose taker is gone while users are
//! served by another live taker: nobody would ever accept them (the member
//! is idle until some instance asks for a socket), so the clients would
//! hang. The holder accepts them itself, for a short window, and relays
//! each to the group's address, which steers it to the member users go to
//! now: a SIGKILLed container (`docker rm -f` after a failed health check)
//! strands nothing. Those few connections reach the app from the holder's
//! own address instead of the client's.
//!
//! Only a member users no longer go to is rescued, and only for
//! [`WINDOW`]: the kernel stops steering SYNs to it at once, so what it
//! holds is what was queued, plus what was in flight. The group does not
//! give the member out again until the window is over, so a new instance's
//! probe can never be taken here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

/// How long the holder accepts from a gone taker's member.
pub(super) const WINDOW: Duration = Duration::from_millis(300);
/// A relayed connection's whole life at most.
const RELAY_MAX: Duration = Duration::from_secs(300);

/// Accepts what `member` (a duplicate of its descriptor) holds for
/// [`WINDOW`] and relays each connection to `address`.
pub(super) fn start(listen: String, member: u64, fd: OwnedFd, address: SocketAddr) {
    let socket = std::net::TcpListener::from(fd);
    let listener = match socket
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(socket))
    {
        Ok(l) => l,
        Err(e) => {
            warn!(%listen, member, error = %e, "cannot take the connections left in a gone taker's socket");
            return;
        }
    };
    let target = reachable(address);
    tokio::spawn(async move {
        let mut relayed = 0_u32;
        let deadline = tokio::time::Instant::now() + WINDOW;
        while let Ok(Ok((client, from))) =
            tokio::time::timeout_at(deadline, listener.accept()).await
        {
            relayed += 1;
            debug!(%listen, member, %from, "relaying a connection left in a gone taker's socket");
            tokio::spawn(relay(client, target));
        }
        if relayed > 0 {
            info!(%listen, member, relayed, "connections left in a gone taker's socket were relayed to the socket users go to now");
        }
    });
}

async fn relay(mut client: TcpStream, target: SocketAddr) {
    let Ok(Ok(mut upstream)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target)).await
    else {
        return; // the client sees its connection closed
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let _ = tokio::time::timeout(
        RELAY_MAX,
        tokio::io::copy_bidirectional(&mut client, &mut upstream),
    )
    .await;
}

/// The group's address as the holder can connect to it: a wildcard bind
/// is reached on the loopback address of its family.
fn reachable(address: SocketAddr) -> SocketAddr {
    let ip = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, address.port())
}
