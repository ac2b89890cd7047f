//! The app side: `[[listen]] from = "unix:/run/cutover/sockets"` takes the
//! named sockets from a holder at start, and `cutover status --holder` asks
//! one what it holds.
//!
//! The connection a cutover took its sockets over stays open (the lease):
//! the holder lists it as a taker while it lives, and sees it go with the
//! container.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, warn};

use super::link::{ExchangeError, HolderLink, LinkError, exchange};
use super::protocol::{Granted, HolderStatus, Offered, Reply, Request};
use super::wire::Conn;

/// How long a starting cutover waits for the holder (compose may start the
/// app container first).
pub(crate) const WAIT_FOR_HOLDER: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("no holder answers at {}: {source}", .path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("permission denied on the holder's socket {}: it is 0600 for the holder's own user, or 0660 for the first group of `cutover hold --allow-gid`", .path.display())]
    Denied { path: PathBuf },
    /// `why` is the holder's own words.
    #[error("the holder at {} refused: {why}", .path.display())]
    Refused { path: PathBuf, why: String },
    #[error("the holder at {} refused: {source}", .path.display())]
    Fresh { path: PathBuf, source: FreshError },
    #[error("the holder at {} answered badly: {source}", .path.display())]
    Protocol { path: PathBuf, source: BadAnswer },
}

/// What is wrong with a holder's answer to `Take` or `Status`.
#[derive(Debug, thiserror::Error)]
pub enum BadAnswer {
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("asked for {asked} sockets, got {descriptors} descriptors")]
    Count { asked: usize, descriptors: usize },
    #[error("it did not say who it is")]
    Anonymous,
    #[error("no status in the answer")]
    NoStatus,
}

/// Why a per-instance socket of `name` did not come.
#[derive(Debug, thiserror::Error)]
pub enum FreshError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the holder's answer lacks the socket")]
    Incomplete { name: String },
}

/// Takes `names` from the holder at `path`, in that order; waits up to
/// `wait` for the holder to appear.
pub(crate) async fn take(
    path: &Path,
    names: &[String],
    fresh: &[String],
    wait: Duration,
) -> Result<(HolderLink, Vec<(Offered, OwnedFd)>), TakeError> {
    let conn = connect_waiting(path, wait).await?;
    let protocol = |source: BadAnswer| TakeError::Protocol {
        path: path.to_path_buf(),
        source,
    };
    let who = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let request = Request::Take {
        names: names.to_vec(),
        who,
        fresh: fresh.to_vec(),
    };
    let (reply, fds) = exchange(&conn, &request)
        .await
        .map_err(|e| protocol(e.into()))?;
    let reply = granted(reply, path)?;
    if fds.len() != names.len() || reply.sockets.len() != names.len() {
        return Err(protocol(BadAnswer::Count {
            asked: names.len(),
            descriptors: fds.len(),
        }));
    }
    let holder = reply.holder.ok_or_else(|| protocol(BadAnswer::Anonymous))?;
    info!(holder = %path.display(), instance = %holder.instance, sockets = ?names, "took listening sockets from the holder");
    Ok((
        HolderLink::start(conn, path, holder),
        reply.sockets.into_iter().zip(fds).collect(),
    ))
}

async fn connect_waiting(path: &Path, wait: Duration) -> Result<Conn, TakeError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut said = false;
    loop {
        match Conn::connect(path) {
            Ok(conn) => return Ok(conn),
            Err(e)
                if tokio::time::Instant::now() < deadline
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound
                            | std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::WouldBlock
                    ) =>
            {
                if !said {
                    warn!(holder = %path.display(), error = %e, "waiting for the socket holder");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(TakeError::Denied {
                    path: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(TakeError::Connect {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// A fresh per-instance socket of `name` from the holder: what it is, the
/// descriptor, and its member id there.
pub(crate) async fn fresh(
    link: &HolderLink,
    name: &str,
) -> Result<(Offered, OwnedFd, u64), FreshError> {
    let (reply, mut fds) = link
        .request(Request::Fresh {
            name: name.to_string(),
        })
        .await?;
    match (reply.sockets.into_iter().next(), fds.pop(), reply.member) {
        (Some(offered), Some(fd), Some(member)) => Ok((offered, fd, member)),
        _ => Err(FreshError::Incomplete {
            name: name.to_string(),
        }),
    }
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct HolderStatusError(#[from] TakeError);

/// What the holder at `path` holds and who took it.
pub(crate) async fn status(path: &Path) -> Result<HolderStatus, HolderStatusError> {
    let conn = Conn::connect(path).map_err(|source| TakeError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let protocol = |source: BadAnswer| TakeError::Protocol {
        path: path.to_path_buf(),
        source,
    };
    let (reply, _) = exchange(&conn, &Request::Status)
        .await
        .map_err(|e| protocol(e.into()))?;
    granted(reply, path)?
        .status
        .ok_or_else(|| protocol(BadAnswer::NoStatus).into())
}

/// What the holder at `path` granted, or its refusal.
fn granted(reply: Reply, path: &Path) -> Result<Granted, TakeError> {
    match reply {
        Reply::Ok(granted) => Ok(granted),
        Reply::Err { error } => Err(TakeError::Refused {
            path: path.to_path_buf(),
            why: error,
        }),
    }
}
