//! How a readiness probe reaches the instance it checks, and only it: the
//! probe connects from a local port it chose, and the group's steering
//! program sends that port to the probed instance's socket while users stay
//! where they are. Set here for this cutover's own groups, by the holder
//! for a holder's.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};

use tokio::net::{TcpSocket, TcpStream};

use super::protocol::Request;
use crate::sockets::link::HolderLink;
use crate::sockets::steer::{self, ProbeFrom, Route};

pub(crate) struct ProbeRoute {
    address: SocketAddr,
    way: Way,
}

pub(super) enum Way {
    /// Indexes in this cutover's group, and a socket of it to attach through.
    Local {
        users: u32,
        probe: u32,
        group: OwnedFd,
    },
    /// The holder's group `name`, its member `member`.
    Holder {
        link: HolderLink,
        name: String,
        member: u64,
    },
}

/// The local address a probe of `target` comes from: the target itself
/// when it is one of this host's (a probe of 127.0.0.1 from 127.0.0.1),
/// loopback for a wildcard.
fn source_for(target: IpAddr) -> IpAddr {
    match target {
        IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(ip) if ip.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    }
}

impl ProbeRoute {
    pub(super) fn new(address: SocketAddr, way: Way) -> ProbeRoute {
        ProbeRoute { address, way }
    }

    /// The port of the group's address.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Whether a probe of `target` reaches this group.
    pub fn serves(&self, target: SocketAddr) -> bool {
        target.port() == self.address.port()
            && (self.address.ip().is_unspecified() || self.address.ip() == target.ip())
    }

    /// Connects to `target` from a port this route steers to the instance
    /// under probe; user traffic stays where it was.
    pub async fn connect(&self, target: SocketAddr) -> io::Result<TcpStream> {
        let socket = match target {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        // From the target's own address (a local one, as the group's is): a
        // source address no client elsewhere can have. Port 0: the kernel
        // picks the port at bind, before any SYN leaves.
        socket.bind(SocketAddr::new(source_for(target.ip()), 0))?;
        let local = socket.local_addr()?;
        self.steer(Some(ProbeFrom {
            port: local.port(),
            address: Some(local.ip()),
        }))
        .await?;
        let connected = socket.connect(target).await;
        // The SYN has been steered; once the probe's socket closes its port may
        // be any client's, which must not follow it to the probed instance.
        self.steer(None).await?;
        connected
    }

    async fn steer(&self, from: Option<ProbeFrom>) -> io::Result<()> {
        match &self.way {
            Way::Local {
                users,
                probe,
                group,
            } => steer::attach(
                group.as_fd(),
                Route {
                    users: *users,
                    probe: from.map(|f| (f, *probe)),
                },
            ),
            Way::Holder { link, name, member } => link
                .request(Request::Steer {
                    name: name.clone(),
                    users: None,
                    probe: from.map(|f| (f.port, *member)),
                    probe_from: from.and_then(|f| f.address),
                })
                .await
                .map(|_| ())
                .map_err(io::Error::other),
        }
    }
}
