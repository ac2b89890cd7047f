//! Held listening sockets: bound once by cutover at start and handed to every
//! program instance as fd 3, 4, ... with LISTEN_FDS (the systemd protocol).
//!
//! Because cutover keeps them open for its whole life, a connection that
//! arrives while no instance is accepting (a restart, a crash, the moment of
//! an overlap) waits in the kernel's backlog instead of being refused.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use socket2::{Domain, SockAddr, Socket, Type};
use tracing::info;

use crate::config::{ListenAddress, ListenConfig};

#[derive(Debug)]
pub struct HeldSocket {
    pub name: String,
    fd: OwnedFd,
    programs: Option<Vec<String>>,
}

impl HeldSocket {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether `program` receives this socket.
    pub fn is_for(&self, program: &str) -> bool {
        self.programs
            .as_ref()
            .is_none_or(|p| p.iter().any(|n| n == program))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} (listen `{name}`): {source}")]
pub struct ListenError {
    name: String,
    address: ListenAddress,
    source: io::Error,
}

/// Binds every configured socket; the first failure is returned with the
/// address it concerns.
pub fn bind_all(configs: &[ListenConfig]) -> Result<Vec<HeldSocket>, ListenError> {
    configs
        .iter()
        .map(|c| {
            let fd = bind(c).map_err(|source| ListenError {
                name: c.name.clone(),
                address: c.address.clone(),
                source,
            })?;
            info!(name = %c.name, address = %c.address, "holding listening socket");
            Ok(HeldSocket {
                name: c.name.clone(),
                fd,
                programs: c.programs.clone(),
            })
        })
        .collect()
}

fn bind(config: &ListenConfig) -> io::Result<OwnedFd> {
    // socket2 creates sockets close-on-exec; spawn dup2s them into place.
    let socket = match &config.address {
        ListenAddress::Tcp(addr) => {
            let s = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            if config.reuse_port {
                s.set_reuse_port(true)?;
            }
            s.bind(&SockAddr::from(*addr))?;
            s
        }
        ListenAddress::Unix(path) => {
            remove_stale_unix_socket(path)?;
            let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            s.bind(&SockAddr::unix(path)?)?;
            s
        }
    };
    socket.listen(config.backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
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
