//! sd_notify for one instance: a datagram socket of its own, passed as
//! NOTIFY_SOCKET, so a READY=1 that arrives there can only come from that
//! instance. This is what lets the overlap strategy tell the new instance's
//! readiness apart from the old one still serving on the same port.

use std::io;
use std::path::{Path, PathBuf};

use tokio::net::UnixDatagram;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::debug;

pub struct NotifySocket {
    path: PathBuf,
    ready: watch::Receiver<bool>,
    reader: JoinHandle<()>,
}

impl NotifySocket {
    /// Binds `dir/notify-<tag>.sock` and starts reading from it.
    pub fn bind(dir: &Path, tag: &str) -> io::Result<NotifySocket> {
        let path = dir.join(format!("notify-{tag}.sock"));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        // The program may run as another user; it must be able to send.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
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
    }
}
