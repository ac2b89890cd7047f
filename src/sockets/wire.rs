//! The wire between `cutover hold` and the cutovers that take its sockets
//! (and between `cutover deployer` and the cutovers that ask it): a unix
//! SOCK_SEQPACKET socket, one JSON object per message, listening sockets
//! attached with SCM_RIGHTS.
//!
//! SEQPACKET keeps message boundaries, so a message and the descriptors sent
//! with it always arrive together, and a peer that goes away is seen as the
//! end of the stream: the holder knows when a container that took sockets
//! is gone.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr, UnixCredentials, sockopt,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Longest message either side sends (a status with many sockets fits).
const MAX_MESSAGE: usize = 64 * 1024;
/// Most descriptors one message carries.
const MAX_FDS: usize = 32;

fn new_socket() -> io::Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?)
}

/// Registers `fd` with the runtime's reactor.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open descriptor that it alone closes, and
    // its as_raw_fd() never changes: it stays the same open file for the
    // AsyncFd's whole life, as `register` requires.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// One side of a conversation.
pub(crate) struct Conn {
    fd: AsyncFd<OwnedFd>,
}

impl Conn {
    /// Connects to the holder at `path` (a unix connect is immediate).
    pub fn connect(path: &Path) -> io::Result<Conn> {
        let fd = new_socket()?;
        let addr = UnixAddr::new(path)?;
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {}
            // Non-blocking: a full backlog says so; wait like a blocking connect.
            Err(nix::errno::Errno::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the holder's backlog is full",
                ));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Conn { fd: register(fd)? })
    }

    fn accepted(fd: OwnedFd) -> io::Result<Conn> {
        Ok(Conn { fd: register(fd)? })
    }

    /// Who is at the other end, as the kernel saw it at connect.
    pub fn peer(&self) -> io::Result<UnixCredentials> {
        Ok(socket::getsockopt(
            self.fd.get_ref(),
            sockopt::PeerCredentials,
        )?)
    }

    pub async fn send<T: Serialize>(&self, message: &T, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let body = serde_json::to_vec(message).map_err(io::Error::other)?;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                let rights = [ControlMessage::ScmRights(&raw)];
                let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
                socket::sendmsg::<()>(
                    fd.as_raw_fd(),
                    &[IoSlice::new(&body)],
                    cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            })
            .await
            .map(|_| ())
    }

    /// The next message and the descriptors that came with it; None when
    /// the other side is gone. The buffer exists only once a message is
    /// there: an idle connection (a taker's lease) costs no memory.
    pub async fn recv<T: DeserializeOwned>(&self) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
        let (body, len, fds) = loop {
            let mut ready = self.fd.readable().await?;
            let mut body = vec![0u8; MAX_MESSAGE];
            match ready.try_io(|fd| receive(fd.get_ref(), &mut body)) {
                Ok(received) => {
                    let (len, fds) = received?;
                    break (body, len, fds);
                }
                Err(_would_block) => continue,
            }
        };
        if len == 0 {
            return Ok(None);
        }
        let message = serde_json::from_slice(&body[..len])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Some((message, fds)))
    }
}

fn receive(fd: &OwnedFd, body: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(body)];
    let msg = socket::recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: the kernel just installed these descriptors in this
            // process for us; nothing else owns them.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) || msg.flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a message or its descriptors were cut off",
        ));
    }
    Ok((msg.bytes, fds))
}

/// Whether `fd` is what the wire may carry: a listening TCP socket. Any
/// other descriptor a peer sends (a pipe, a connected socket with data to
/// linger over) is refused unused.
pub(crate) fn is_listening_tcp(fd: &OwnedFd) -> bool {
    let listening = socket::getsockopt(fd, sockopt::AcceptConn).unwrap_or(false);
    let stream = socket::getsockopt(fd, sockopt::SockType).is_ok_and(|t| t == SockType::Stream);
    use socket::SockaddrLike;
    let inet = socket::getsockname::<socket::SockaddrStorage>(fd.as_raw_fd())
        .ok()
        .and_then(|a| a.family())
        .is_some_and(|f| matches!(f, AddressFamily::Inet | AddressFamily::Inet6));
    listening && stream && inet
}

/// Closes descriptors a peer should not have sent on a blocking thread: a
/// socket with SO_LINGER and unsent data blocks its close.
pub(crate) fn discard(fds: Vec<OwnedFd>) {
    if !fds.is_empty() {
        tokio::task::spawn_blocking(move || drop(fds));
    }
}

/// The holder's end: where containers connect.
pub(crate) struct Listener {
    fd: AsyncFd<OwnedFd>,
}

impl Listener {
    /// Binds `path` (replacing a stale socket file), with `mode` and, when
    /// given, owner `uid` and group `gid`, before it accepts anyone.
    pub fn bind(
        path: &Path,
        mode: u32,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> io::Result<Listener> {
        use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
        if let Ok(meta) = std::fs::symlink_metadata(path)
            && meta.file_type().is_socket()
        {
            std::fs::remove_file(path)?;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let fd = new_socket()?;
        // Bound under a temporary name and renamed into place once its mode
        // is right: nobody can connect while it is wider open. The temporary
        // name is in a directory of the holder's own that nobody else can
        // write (0700, created here), so the mode and group are set on the
        // socket just bound, never on a symlink another container of the
        // shared volume put in its place.
        let dir = path.parent().unwrap_or(Path::new("."));
        let private = dir.join(format!(
            ".staging-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&private)?;
        let staged = (|| -> io::Result<()> {
            let staging = private.join("socket");
            socket::bind(fd.as_raw_fd(), &UnixAddr::new(&staging)?)?;
            std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))?;
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&staging, uid, gid)?;
            }
            std::fs::rename(&staging, path)
        })();
        let _ = std::fs::remove_dir(&private);
        staged?;
        socket::listen(&fd, Backlog::new(64).map_err(io::Error::from)?)?;
        Ok(Listener { fd: register(fd)? })
    }

    pub async fn accept(&self) -> io::Result<Conn> {
        let fd = self
            .fd
            .async_io(Interest::READABLE, |fd| {
                let raw = socket::accept4(
                    fd.as_raw_fd(),
                    SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                )?;
                // SAFETY: accept4 returned a new descriptor that only we own.
                Ok(unsafe { OwnedFd::from_raw_fd(raw) })
            })
            .await?;
        Conn::accepted(fd)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    use super::*;

    /// A symlink planted where the socket goes is replaced, never followed:
    /// the file it points at keeps its mode, and no staging is left behind.
    #[tokio::test]
    async fn binding_follows_no_symlink_in_the_shared_directory() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "secret").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.path().join("sockets").join("holder.sock");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();

        let _listener = Listener::bind(&path, 0o660, None, None).unwrap();

        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        let victim_mode = std::fs::metadata(&victim).unwrap().permissions().mode();
        assert_eq!(victim_mode & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["holder.sock"]);
    }
}
