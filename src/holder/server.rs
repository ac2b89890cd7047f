//! The holder: binds the listening sockets once, admits the peers it is told
//! to trust, hands the sockets over and keeps the list of who took them.
//!
//! Every connection is a task; the list of takers is owned by one registry
//! task that publishes it on a `watch` channel, so a status request never
//! waits for another connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::group_owner::GroupSocket;
use super::taker::{Event, Held, Policy, Shared, queued_now, serve};
use crate::api::accept::{Full, Slot, Slots};
use crate::clock::timestamp;
use crate::sockets::held::bind_tcp;
use crate::sockets::protocol::{HeldStatus, HolderInfo, HolderStatus, Reply, Taker};
use crate::sockets::steer;
use crate::sockets::wire::Listener;

/// Connections to the unix socket at once: one per app container (its
/// lease), and status requests; a silent one makes room for a newcomer.
const MAX_PEERS: usize = 256;

/// `cutover hold`'s settings (from its command line).
#[derive(Debug, Clone)]
pub struct HoldConfig {
    /// Name and address of each socket to hold.
    pub listen: Vec<(String, SocketAddr)>,
    /// Where takers connect.
    pub socket: PathBuf,
    /// Peers allowed by user id; the holder's own user when both lists are empty.
    pub allow_uids: Vec<u32>,
    /// Peers allowed by group id; the socket file is then 0660 with the first.
    pub allow_gids: Vec<u32>,
    pub backlog: u32,
    /// `/healthz` over HTTP, and `/status` too when the flag is set.
    pub http: Option<(SocketAddr, bool)>,
}

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("cannot listen on {address} (`{name}`): {source}")]
    Listen {
        name: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the takers' socket {}: {source}", .path.display())]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot handle signals: {0}")]
    Signals(std::io::Error),
    #[error("cannot listen for HTTP on {address}: {source}")]
    Http {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Runs until SIGTERM or SIGINT; the exit code.
pub async fn run(config: HoldConfig) -> Result<i32, HoldError> {
    let held = bind_held(&config).await?;
    let groups = super::group_owner::start(group_sockets(&held, config.backlog)?);
    let held = Arc::new(held);
    let listener = bind_takers_socket(&config)?;
    let policy = policy(&config);
    let info = HolderInfo {
        pid: std::process::id(),
        instance: instance_id(),
        started_at: timestamp(SystemTime::now()),
    };
    let (events, published) = registry(info.clone());
    let _http = match config.http {
        Some((address, with_status)) => {
            Some(serve_http(address, with_status, &held, &published).await?)
        }
        None => None,
    };
    info!(socket = %config.socket.display(), uids = ?policy.uids, gids = ?policy.gids, "waiting for takers");
    let shared = Arc::new(Shared {
        held,
        policy,
        events,
        groups,
        published,
        info,
    });
    let mut terminate = signal(SignalKind::terminate()).map_err(HoldError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(HoldError::Signals)?;
    tokio::select! {
        () = accept_takers(&listener, &shared) => {}
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    info!("stopping; the sockets close with the holder");
    let _ = std::fs::remove_file(&config.socket);
    drop(listener);
    Ok(0)
}

/// Binds every `--listen` socket, joining the group of any socket already
/// listening on its address.
async fn bind_held(config: &HoldConfig) -> Result<Vec<Held>, HoldError> {
    let mut held = Vec::new();
    for (name, address) in &config.listen {
        let others = steer::others_listen(*address);
        // SO_REUSEPORT: the app containers' own sockets join the same group.
        let fd = bind_tcp(*address, config.backlog, true).map_err(|source| HoldError::Listen {
            name: name.clone(),
            address: *address,
            source,
        })?;
        let offset = if others {
            joined(name, *address, &fd).await
        } else {
            0
        };
        let address = socket2::SockRef::from(&fd)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(*address);
        info!(%name, %address, "holding listening socket");
        held.push(Held {
            name: name.clone(),
            address,
            fd,
            offset,
        });
    }
    Ok(held)
}

/// What the owner of the per-instance groups starts each group with: the
/// held socket (a descriptor of its own) and where it stands in its group.
fn group_sockets(held: &[Held], backlog: u32) -> Result<Vec<GroupSocket>, HoldError> {
    held.iter()
        .map(|h| {
            let fd = h.fd.try_clone().map_err(|source| HoldError::Listen {
                name: h.name.clone(),
                address: h.address,
                source,
            })?;
            Ok(GroupSocket {
                name: h.name.clone(),
                address: h.address,
                backlog,
                fd,
                offset: h.offset,
            })
        })
        .collect()
}

/// The unix socket takers connect to: 0600, or 0660 with the first
/// `--allow-gid` as its group.
fn bind_takers_socket(config: &HoldConfig) -> Result<Listener, HoldError> {
    let mode = if config.allow_gids.is_empty() {
        0o600
    } else {
        0o660
    };
    Listener::bind(
        &config.socket,
        mode,
        None,
        config.allow_gids.first().copied(),
    )
    .map_err(|source| HoldError::Socket {
        path: config.socket.clone(),
        source,
    })
}

/// Who may take the sockets: the holder's own user when nobody is named.
fn policy(config: &HoldConfig) -> Policy {
    let mut allowed_uids = config.allow_uids.clone();
    if allowed_uids.is_empty() && config.allow_gids.is_empty() {
        allowed_uids.push(nix::unistd::geteuid().as_raw());
    }
    Policy {
        uids: allowed_uids,
        gids: config.allow_gids.clone(),
    }
}

/// `/healthz` (and `/status` `with_status`) at `address`, until dropped.
async fn serve_http(
    address: SocketAddr,
    with_status: bool,
    held: &Arc<Vec<Held>>,
    published: &watch::Receiver<HolderStatus>,
) -> Result<AbortOnDrop, HoldError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| HoldError::Http { address, source })?;
    info!(%address, "serving /healthz and /status");
    let held = held.clone();
    let queued: Arc<dyn Fn() -> Vec<HeldStatus> + Send + Sync> =
        Arc::new(move || queued_now(&held));
    Ok(AbortOnDrop(tokio::spawn(super::endpoint::serve(
        listener,
        published.clone(),
        queued,
        with_status,
    ))))
}

/// Serves every connection in a task of its own, as long as there is room.
async fn accept_takers(listener: &Listener, shared: &Arc<Shared>) {
    let mut next_id = 0u64;
    let slots = Slots::new(MAX_PEERS);
    loop {
        match listener.accept().await {
            Ok(conn) => {
                let Some(slot) = admit(&slots).await else {
                    warn!(
                        limit = MAX_PEERS,
                        "every connection to the holder is a taker's or busy; refusing one"
                    );
                    let full = Reply::failure(format!(
                        "the holder serves {MAX_PEERS} connections at most"
                    ));
                    let _ = conn.send(&full, &[]).await;
                    continue;
                };
                next_id += 1;
                tokio::spawn(serve(conn, next_id, shared.clone(), slot));
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// The holder's socket joined listening sockets already there: on one
/// host, those of an earlier run of the holder, which its takers still
/// hold. New connections come to the holder's socket from now on, and wait
/// there for a taker, while the old ones drain. Returns the holder's index
/// in the group.
async fn joined(name: &str, address: SocketAddr, fd: &OwnedFd) -> u32 {
    let Ok(probe) = fd.try_clone() else { return 0 };
    let found = tokio::task::spawn_blocking(move || steer::own_index(probe.as_fd(), address)).await;
    match found {
        Ok(Ok(Some(index))) => {
            warn!(%name, %address, others = index, "other sockets listen on this address already (an earlier holder's, still held by its takers?): new connections come to this holder's socket; per-instance sockets are refused until they are gone");
            index
        }
        Ok(Ok(None)) | Err(_) => {
            warn!(%name, %address, "other sockets listen on this address already, and this holder's place among them cannot be found: connections are shared with them by the kernel's hash");
            0
        }
        Ok(Err(e)) => {
            warn!(%name, %address, error = %e, "other sockets listen on this address already; cannot steer among them");
            0
        }
    }
}

/// A per-start id, so that a taker can tell a restarted holder from the
/// one it took its sockets from.
fn instance_id() -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}-{:x}", std::process::id(), now.as_nanos())
}

/// The one owner of the takers' list.
fn registry(info: HolderInfo) -> (mpsc::UnboundedSender<Event>, watch::Receiver<HolderStatus>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (publish, published) = watch::channel(HolderStatus {
        holder: Some(info),
        ..HolderStatus::default()
    });
    tokio::spawn(async move {
        let mut takers: BTreeMap<u64, Taker> = BTreeMap::new();
        while let Some(event) = rx.recv().await {
            match event {
                Event::Took(id, taker) => {
                    takers.insert(id, taker);
                }
                Event::Gone(id) => {
                    if let Some(t) = takers.remove(&id) {
                        info!(who = %t.who, pid = t.pid, "a taker is gone");
                    }
                }
                Event::Refused => publish.send_modify(|s| s.refused += 1),
            }
            publish.send_modify(|s| s.takers = takers.values().cloned().collect());
        }
    });
    (tx, published)
}

/// A slot for a new peer: when all are taken, the oldest one that has sent
/// nothing yet (or is between status requests) makes room; a taker's lease
/// never does.
async fn admit(slots: &Slots) -> Option<Slot> {
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match slots.admit() {
            Ok(slot) => return Some(slot),
            Err(Full::Evicting(released)) if tokio::time::Instant::now() < until => {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_millis(10), released.notified())
                        .await;
            }
            Err(_) => return None,
        }
    }
}

/// Stops the task it holds when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
