//! Held listening sockets: bound once by cutover at start and handed to every
//! program instance as fd 3, 4, ... with LISTEN_FDS (the systemd protocol).
//!
//! Because cutover keeps them open for its whole life, a connection that
//! arrives while no instance is accepting (a restart, a crash, the moment of
//! an overlap) waits in the kernel's backlog instead of being refused.
//! A per-instance socket is bound here as the first of its SO_REUSEPORT
//! group; `handoff` binds the others as instances come and go.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Once;

use socket2::{Domain, SockAddr, Socket, Type};
use tracing::{info, warn};

use crate::sockets::link::HolderLink;
use crate::sockets::steer::{self, Route};
use crate::sockets::take::{WAIT_FOR_HOLDER, fresh, take};

use crate::config::{ListenAddress, ListenConfig};

#[derive(Debug)]
pub struct HeldSocket {
    pub name: String,
    fd: OwnedFd,
    programs: Option<Vec<String>>,
    /// Where to bind the next instances' sockets, when they get their own.
    per_instance: Option<(SocketAddr, u32)>,
    /// A per-instance socket bound by a holder: the link to ask it for the
    /// next ones, and this one's member id there.
    pub holder: Option<(HolderLink, u64)>,
}

impl HeldSocket {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A socket taken from a holder: always shared by the instances.
    pub fn taken(name: String, fd: OwnedFd, programs: Option<Vec<String>>) -> HeldSocket {
        HeldSocket {
            name,
            fd,
            programs,
            per_instance: None,
            holder: None,
        }
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    pub fn per_instance(&self) -> Option<(SocketAddr, u32)> {
        self.per_instance
    }

    /// Whether `program` receives this socket.
    pub fn is_for(&self, program: &str) -> bool {
        self.programs
            .as_ref()
            .is_none_or(|p| p.iter().any(|n| n == program))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {address} (listen `{name}`): {source}")]
    Bind {
        name: String,
        address: ListenAddress,
        source: io::Error,
    },
    #[error("listen `{name}`: {source}")]
    Take {
        name: String,
        source: crate::sockets::take::TakeError,
    },
}

/// Binds every configured socket, and takes those `from` a holder; the
/// first failure is returned with the socket it concerns. The leases keep
/// the holders' connections open for as long as cutover runs.
pub async fn bind_all(
    configs: &[ListenConfig],
) -> Result<(Vec<HeldSocket>, Vec<(HolderLink, Vec<String>)>), ListenError> {
    let mut held: Vec<Option<HeldSocket>> = Vec::with_capacity(configs.len());
    let mut from: BTreeMap<&Path, Vec<usize>> = BTreeMap::new();
    for (i, c) in configs.iter().enumerate() {
        match &c.address {
            ListenAddress::Holder(path) => {
                from.entry(path.as_path()).or_default().push(i);
                held.push(None);
            }
            _ => held.push(Some(bind_one(c)?)),
        }
    }
    let mut leases = Vec::new();
    for (path, indexes) in from {
        // Shared sockets are the holder's own; per-instance ones are bound
        // for this cutover in the holder's network namespace.
        let (own, shared): (Vec<usize>, Vec<usize>) =
            indexes.iter().partition(|&&i| configs[i].per_instance);
        let names: Vec<String> = shared.iter().map(|&i| configs[i].name.clone()).collect();
        let taken_err = |source| ListenError::Take {
            name: indexes
                .iter()
                .map(|&i| configs[i].name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            source,
        };
        let fresh_names: Vec<String> = own.iter().map(|&i| configs[i].name.clone()).collect();
        let (link, taken) = take(path, &names, &fresh_names, WAIT_FOR_HOLDER)
            .await
            .map_err(taken_err)?;
        for (&i, (offered, fd)) in shared.iter().zip(taken) {
            info!(name = %offered.name, address = %offered.address, holder = %path.display(), "holding listening socket");
            held[i] = Some(HeldSocket::taken(
                configs[i].name.clone(),
                fd,
                configs[i].programs.clone(),
            ));
        }
        for &i in &own {
            let c = &configs[i];
            let (offered, fd, member) =
                fresh(&link, &c.name)
                    .await
                    .map_err(|source| ListenError::Take {
                        name: c.name.clone(),
                        source: crate::sockets::take::TakeError::Fresh {
                            path: path.to_path_buf(),
                            source,
                        },
                    })?;
            info!(name = %offered.name, address = %offered.address, holder = %path.display(), per_instance = true, "holding listening socket");
            held[i] = Some(HeldSocket {
                name: c.name.clone(),
                fd,
                programs: c.programs.clone(),
                per_instance: Some((offered.address, c.backlog)),
                holder: Some((link.clone(), member)),
            });
        }
        leases.push((link, names));
    }
    Ok((held.into_iter().flatten().collect(), leases))
}

fn bind_one(c: &ListenConfig) -> Result<HeldSocket, ListenError> {
    let fd = bind(c).map_err(|source| ListenError::Bind {
        name: c.name.clone(),
        address: c.address.clone(),
        source,
    })?;
    let per_instance = match &c.address {
        // The address bound, port included: the next sockets must join
        // this one's group even when the config said port 0.
        ListenAddress::Tcp(addr) if c.per_instance && can_steer(&c.name, &fd) => {
            Some((bound_address(&fd).unwrap_or(*addr), c.backlog))
        }
        _ => None,
    };
    info!(name = %c.name, address = %c.address, per_instance = per_instance.is_some(), "holding listening socket");
    Ok(HeldSocket {
        name: c.name.clone(),
        fd,
        programs: c.programs.clone(),
        per_instance,
        holder: None,
    })
}

fn bind(config: &ListenConfig) -> io::Result<OwnedFd> {
    match &config.address {
        ListenAddress::Tcp(addr)
            if config.per_instance && !config.reuse_port && steer::others_listen(*addr) =>
        {
            // SO_REUSEPORT would join their group and steer their traffic:
            // their probes answered by this app, this app's by theirs.
            Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process listens there already (another container on the host network?); \
                 a per-instance socket would join its group and steer its traffic: stop it, \
                 take the port from a holder (`from`), or set `reuse_port = true` to share the port with it on purpose",
            ))
        }
        ListenAddress::Tcp(addr) => bind_tcp(
            *addr,
            config.backlog,
            config.reuse_port || config.per_instance,
        ),
        ListenAddress::Holder(_) => Err(io::Error::other("taken from the holder, not bound")),
        ListenAddress::Unix(path) => {
            remove_stale_unix_socket(path)?;
            let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            s.bind(&SockAddr::unix(path)?)?;
            s.listen(backlog(config.backlog))?;
            Ok(s.into())
        }
    }
}

/// A listening TCP socket; with `reuse_port`, one more of its group.
pub(crate) fn bind_tcp(
    addr: SocketAddr,
    backlog_len: u32,
    reuse_port: bool,
) -> io::Result<OwnedFd> {
    // socket2 creates sockets close-on-exec; spawn dup2s them into place.
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.bind(&SockAddr::from(addr))?;
    s.listen(backlog(backlog_len))?;
    Ok(s.into())
}

fn bound_address(fd: &OwnedFd) -> Option<SocketAddr> {
    socket2::SockRef::from(fd).local_addr().ok()?.as_socket()
}

fn backlog(configured: u32) -> i32 {
    configured.min(i32::MAX as u32) as i32
}

/// Whether the kernel takes a steering program on this socket's group; if
/// not, its instances share it as before, and the log says so.
fn can_steer(name: &str, fd: &OwnedFd) -> bool {
    let route = Route {
        users: 0,
        probe: None,
    };
    match steer::attach(fd.as_fd(), route) {
        Ok(()) => {
            static CHECKED: Once = Once::new();
            CHECKED.call_once(|| {
                if !steer::migrates_queued() {
                    info!("net.ipv4.tcp_migrate_req is off (the default): reloads do not need it; only an old instance that stops taking connections before its accept queue is empty (cutover waits drain + stop_timeout) leaves them to be reset");
                }
            });
            true
        }
        Err(e) => {
            warn!(listen = %name, error = %e, "cannot attach a steering program; instances share one socket, so an old instance may drop connections it accepted when it stops");
            false
        }
    }
}

/// A socket file left by an earlier run would make bind fail; anything that
/// is not a socket is left alone and reported by bind.
fn remove_stale_unix_socket(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        _ => Ok(()),
    }
}
