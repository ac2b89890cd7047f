//! sd_notify for one instance: a datagram socket of its own, passed as
//! NOTIFY_SOCKET, so a READY=1 that arrives there can only come from that
//! instance. This is what lets the overlap strategy tell the new instance's
//! readiness apart from the old one still serving on the same port.
//!
//! Only the instance may send there: the socket sits in a directory of its
//! own, created mode 0700 and handed to the instance's user *before* the
//! socket is bound in it, so there is no moment in which another local user
//! can reach the socket (a bind followed by a chmod would leave one). The
//! socket itself is then 0600 and owned by that user as well.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};
use tokio::net::UnixDatagram;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::debug;

pub struct NotifySocket {
    dir: PathBuf,
    path: PathBuf,
    ready: watch::Receiver<bool>,
    reader: JoinHandle<()>,
}

impl NotifySocket {
    /// Binds `dir/notify-<tag>/notify.sock`, private to `owner` (the
    /// instance's uid and gid; cutover's own when `None`), and starts
    /// reading from it.
    pub fn bind(dir: &Path, tag: &str, owner: Option<(Uid, Gid)>) -> io::Result<NotifySocket> {
        let private = dir.join(format!("notify-{tag}"));
        // Left over by an earlier cutover in the same runtime dir: start clean.
        let _ = std::fs::remove_dir_all(&private);
        std::fs::DirBuilder::new().mode(0o700).create(&private)?;
        // The umask may have taken more than 0700 leaves; the program must
        // still enter it.
        std::fs::set_permissions(&private, PermissionsExt::from_mode(0o700))?;
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(&private, Some(uid), Some(gid)).map_err(io::Error::from)?;
        }
        let path = private.join("notify.sock");
        let socket = UnixDatagram::bind(&path)?;
        std::fs::set_permissions(&path, PermissionsExt::from_mode(0o600))?;
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(&path, Some(uid), Some(gid)).map_err(io::Error::from)?;
        }
        let (tx, ready) = watch::channel(false);
        let tag = tag.to_string();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]);
                for line in text.lines() {
                    debug!(instance = %tag, message = %line, "sd_notify");
                    if line == "READY=1" {
                        let _ = tx.send(true);
                    }
                }
            }
        });
        Ok(NotifySocket {
            dir: private,
            path,
            ready,
            reader,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A receiver that turns true once READY=1 arrived.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.reader.abort();
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}
