//! The holder's HTTP endpoint (`cutover hold --http ADDR`): `/healthz` for a
//! container healthcheck or a Kubernetes probe, `/status` with what it holds
//! and who took it, as JSON.
//!
//! Read-only and small on purpose: each connection gets one request line
//! within a few seconds, at most 32 are open at once, and answers come from
//! the registry's published snapshot, never from a connection task.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::warn;

use super::HolderStatus;

const MAX_OPEN: usize = 32;
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves until the task is dropped; `status` is the registry's snapshot,
/// `queued` fills in the accept queues at the time of asking.
pub(super) async fn serve(
    listener: TcpListener,
    status: watch::Receiver<HolderStatus>,
    queued: Arc<dyn Fn() -> Vec<super::HeldStatus> + Send + Sync>,
) {
    let open = Arc::new(Semaphore::new(MAX_OPEN));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "holder http: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over the limit: close at once rather than queue behind slow clients.
        let Ok(permit) = open.clone().try_acquire_owned() else {
            continue;
        };
        let status = status.clone();
        let queued = queued.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(READ_TIMEOUT, answer(stream, status, queued)).await;
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    status: watch::Receiver<HolderStatus>,
    queued: Arc<dyn Fn() -> Vec<super::HeldStatus> + Send + Sync>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let mut snapshot = status.borrow().clone();
    snapshot.sockets = queued();
    let (code, kind, body) = match path {
        "/healthz" => (
            "200 OK",
            "text/plain",
            format!(
                "holding {} socket(s) for {} taker(s)\n",
                snapshot.sockets.len(),
                snapshot.takers.len()
            ),
        ),
        "/status" => (
            "200 OK",
            "application/json",
            serde_json::to_string(&snapshot).unwrap_or_default() + "\n",
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let reply = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}
