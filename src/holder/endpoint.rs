//! The holder's HTTP endpoint (`cutover hold --http ADDR`): `/healthz` for a
//! container healthcheck or a Kubernetes probe, and with `--http-status`,
//! `/status` with what it holds and who took it (hostnames, pids, uids: on
//! the unix socket only trusted peers see that, so here it is opt-in).
//!
//! Read-only and small on purpose: answers come from the registry's
//! published snapshot, never from a connection task, and connections are
//! admitted as cutover's own listeners admit them (`crate::api::accept`): a
//! bounded number, the oldest idle one evicted for a newcomer, a few
//! seconds for the request line. A flood of silent clients cannot make
//! `/healthz` unanswerable.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::HolderStatus;
use crate::api::accept::{AcceptBackoff, Slot, Slots, next_admitted};

const MAX_OPEN: usize = 64;
const READ_TIMEOUT: Duration = Duration::from_secs(3);
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n";

type Queued = Arc<dyn Fn() -> Vec<super::HeldStatus> + Send + Sync>;

/// Serves until the task is dropped; `status` is the registry's snapshot,
/// `queued` fills in the accept queues at the time of asking.
pub(super) async fn serve(
    listener: TcpListener,
    status: watch::Receiver<HolderStatus>,
    queued: Queued,
    with_status: bool,
) {
    let slots = Slots::new(MAX_OPEN);
    let mut backoff = AcceptBackoff::new("holder http");
    loop {
        let (stream, slot) = next_admitted(
            || async { listener.accept().await.map(|(s, _)| s) },
            &slots,
            &mut backoff,
            BUSY,
        )
        .await;
        let status = status.clone();
        let queued = queued.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = slot.evicted() => {}
                _ = tokio::time::timeout(READ_TIMEOUT, answer(stream, &slot, status, queued, with_status)) => {}
            }
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    slot: &Slot,
    status: watch::Receiver<HolderStatus>,
    queued: Queued,
    with_status: bool,
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
    let _busy = slot.busy();
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
        "/status" if with_status => (
            "200 OK",
            "application/json",
            serde_json::to_string(&snapshot).unwrap_or_default() + "\n",
        ),
        "/status" => (
            "404 Not Found",
            "text/plain",
            "not served here: start the holder with --http-status, or ask the unix socket (cutover status --holder PATH)\n".to_string(),
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
