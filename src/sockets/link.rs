//! The app side's one connection to a holder, as an actor: requests from
//! the program actors (a fresh socket, steering, retiring) go through it one
//! at a time, and it notices when the holder goes away.
//!
//! The connection is the lease: the holder lists it as a taker while it
//! lives and, when it ends (the container is gone), retires every socket
//! bound for it.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use tokio::sync::{mpsc, oneshot, watch};

use super::protocol::{Granted, HolderInfo, Reply, Request};
use super::wire::Conn;

/// A reply and the descriptors that came with it, or why none came.
type Answer = Result<(Reply, Vec<OwnedFd>), LinkError>;

/// Why one exchange with the holder brought no readable reply.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("it sent a descriptor that is not a listening TCP socket")]
    NotListening,
    #[error("it closed the connection")]
    Closed,
    /// Sending, receiving, or reading the reply failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Why a request over the lease got no grant.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("the holder is gone")]
    Gone,
    #[error("the holder did not answer within {0:?}")]
    Silent(std::time::Duration),
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    /// The holder's own words.
    #[error("{0}")]
    Refused(String),
}

/// Longest a request to the holder may take.
const REQUEST_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A cloneable handle on the connection to one holder.
#[derive(Clone, Debug)]
pub(crate) struct HolderLink {
    requests: mpsc::UnboundedSender<(Request, oneshot::Sender<Answer>)>,
    closed: watch::Receiver<bool>,
    pub path: PathBuf,
    pub holder: HolderInfo,
}

impl HolderLink {
    pub(super) fn start(conn: Conn, path: &Path, holder: HolderInfo) -> HolderLink {
        let (requests, mut incoming) =
            mpsc::unbounded_channel::<(Request, oneshot::Sender<Answer>)>();
        let (closed_tx, closed) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    request = incoming.recv() => {
                        let Some((request, reply)) = request else { return };
                        let answer = exchange(&conn, &request).await.map_err(LinkError::from);
                        let gone = answer.is_err();
                        let _ = reply.send(answer);
                        if gone {
                            break;
                        }
                    }
                    // The holder sends nothing unasked: anything here is its end.
                    _ = conn.recv::<Reply>() => break,
                }
            }
            let _ = closed_tx.send(true);
            // Later requests learn it at once.
            while let Some((_, reply)) = incoming.recv().await {
                let _ = reply.send(Err(LinkError::Gone));
            }
        });
        HolderLink {
            requests,
            closed,
            path: path.to_path_buf(),
            holder,
        }
    }

    /// Asks the holder; what it granted and the descriptors that came
    /// with it.
    pub async fn request(&self, request: Request) -> Result<(Granted, Vec<OwnedFd>), LinkError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((request, reply))
            .map_err(|_| LinkError::Gone)?;
        // A holder that stops answering must not hold a program's actor
        // (its reload, its stop) forever: its requests are quick.
        let (reply, fds) = tokio::time::timeout(REQUEST_LIMIT, answer)
            .await
            .map_err(|_| LinkError::Silent(REQUEST_LIMIT))?
            .map_err(|_| LinkError::Gone)??;
        match reply {
            Reply::Ok(granted) => Ok((granted, fds)),
            Reply::Err { error } => Err(LinkError::Refused(error)),
        }
    }

    /// Resolves when the holder has gone away.
    pub async fn closed(&self) {
        let mut closed = self.closed.clone();
        let _ = closed.wait_for(|c| *c).await;
    }
}

/// Sends `request` and reads the answer. A holder that refuses a peer says
/// why first thing and closes, so the sending may fail while the answer
/// waits to be read: the answer wins.
pub(super) async fn exchange(
    conn: &Conn,
    request: &Request,
) -> Result<(Reply, Vec<OwnedFd>), ExchangeError> {
    let sent = conn.send(request, &[]).await;
    match conn.recv::<Reply>().await {
        Ok(Some((_, fds))) if !fds.iter().all(super::wire::is_listening_tcp) => {
            crate::sockets::wire::discard(fds);
            Err(ExchangeError::NotListening)
        }
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => Err(match sent {
            Err(e) => ExchangeError::Io(e),
            Ok(()) => ExchangeError::Closed,
        }),
        Err(e) => Err(ExchangeError::Io(e)),
    }
}
