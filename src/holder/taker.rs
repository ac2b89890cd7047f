//! One taker's connection to the holder: who it is (checked against the
//! `Policy`), what it asks (`serve`: take, fresh sockets, steer, retire,
//! leave, status), and what the holder answers; the state all connections
//! share (`Shared`).

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::SystemTime;

use nix::sys::socket::UnixCredentials;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::members::Op;
use crate::api::accept::Slot;
use crate::clock::timestamp;
use crate::sockets::protocol::{
    HeldStatus, HolderInfo, HolderStatus, Offered, Reply, Request, Taker,
};
use crate::sockets::steer;
use crate::sockets::wire::Conn;

/// How long a new connection may take to send its first request.
const FIRST_REQUEST: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) struct Held {
    pub(super) name: String,
    pub(super) address: SocketAddr,
    pub(super) fd: OwnedFd,
    /// Sockets of others before the holder's in its group (see `joined`).
    pub(super) offset: u32,
}

/// What a connection task needs besides its connection.
pub(super) struct Shared {
    pub(super) held: Arc<Vec<Held>>,
    pub(super) policy: Policy,
    pub(super) events: mpsc::UnboundedSender<Event>,
    pub(super) groups: mpsc::UnboundedSender<Op>,
    pub(super) published: watch::Receiver<HolderStatus>,
    pub(super) info: HolderInfo,
}

pub(super) enum Event {
    Took(u64, Taker),
    Gone(u64),
    Refused,
}

pub(super) struct Policy {
    pub(super) uids: Vec<u32>,
    pub(super) gids: Vec<u32>,
}

impl Policy {
    pub(super) fn admits(&self, peer: &UnixCredentials) -> bool {
        self.uids.contains(&peer.uid()) || self.gids.contains(&peer.gid())
    }

    pub(super) fn refusal(&self, peer: &UnixCredentials) -> String {
        format!(
            "refused by the holder: uid {} gid {} may not take its sockets (allowed: uids {:?}, gids {:?}; see `cutover hold --allow-uid/--allow-gid`)",
            peer.uid(),
            peer.gid(),
            self.uids,
            self.gids
        )
    }
}

pub(super) async fn serve(conn: Conn, id: u64, shared: Arc<Shared>, slot: Slot) {
    let peer = match conn.peer() {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "cannot read a peer's credentials; closing");
            return;
        }
    };
    if !shared.policy.admits(&peer) {
        let why = shared.policy.refusal(&peer);
        warn!(
            pid = peer.pid(),
            uid = peer.uid(),
            gid = peer.gid(),
            "{why}"
        );
        let _ = shared.events.send(Event::Refused);
        let _ = conn.send(&failure(why), &[]).await;
        // Read its request before closing: closing on unread data would reset
        // the connection before the peer has read why.
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(2), conn.recv::<Request>()).await;
        return;
    }
    // Held while a request is answered, and for good once the peer took
    // sockets: a lease is never evicted.
    let mut busy = None;
    let mut leased = false;
    loop {
        if !leased {
            busy = None;
        }
        let next = conn.recv::<Request>();
        // A peer gets a few seconds for each request and may be evicted
        // while it sends none; a taker keeps its connection (its lease)
        // idle as long as it likes.
        let received = if leased {
            next.await
        } else {
            tokio::select! {
                r = tokio::time::timeout(FIRST_REQUEST, next) => match r {
                    Ok(r) => r,
                    Err(_) => break,
                },
                () = slot.evicted() => break,
            }
        };
        busy.get_or_insert_with(|| slot.busy());
        let request = match received {
            Ok(Some((request, fds))) if fds.is_empty() => request,
            Ok(Some((_, fds))) => {
                crate::sockets::wire::discard(fds);
                let _ = conn
                    .send(&failure("requests carry no descriptors".into()), &[])
                    .await;
                break;
            }
            Ok(None) => break,
            Err(e) => {
                let _ = conn.send(&failure(format!("bad request: {e}")), &[]).await;
                break;
            }
        };
        let sent = match request {
            Request::Take { names, who, fresh } => {
                leased = true;
                take(&conn, id, &peer, &shared, names, who, fresh).await
            }
            Request::Status => {
                let mut status = shared.published.borrow().clone();
                status.sockets = queued_now(&shared.held);
                let reply = Reply {
                    ok: true,
                    holder: Some(shared.info.clone()),
                    status: Some(status),
                    ..Reply::default()
                };
                conn.send(&reply, &[]).await
            }
            Request::Fresh { name } => {
                let (reply, answer) = oneshot::channel();
                let _ = shared.groups.send(Op::Fresh {
                    lease: id,
                    name,
                    reply,
                });
                match answer
                    .await
                    .unwrap_or_else(|_| Err("the holder is stopping".into()))
                {
                    Ok((offered, fd, member)) => {
                        let reply = Reply {
                            ok: true,
                            sockets: vec![offered],
                            member: Some(member),
                            ..Reply::default()
                        };
                        conn.send(&reply, &[fd.as_fd()]).await
                    }
                    Err(why) => conn.send(&failure(why), &[]).await,
                }
            }
            Request::Steer {
                name,
                users,
                probe,
                probe_from,
            } => {
                let (reply, answer) = oneshot::channel();
                let _ = shared.groups.send(Op::Steer {
                    lease: id,
                    name,
                    users,
                    probe: probe.map(|(port, member)| {
                        (
                            steer::ProbeFrom {
                                port,
                                address: probe_from,
                            },
                            member,
                        )
                    }),
                    reply,
                });
                conn.send(&done(answer.await), &[]).await
            }
            Request::Leave { name } => {
                let (reply, answer) = oneshot::channel();
                let _ = shared.groups.send(Op::Leave {
                    lease: id,
                    name,
                    reply,
                });
                let reply = match answer.await {
                    Ok(Ok(member)) => Reply {
                        ok: true,
                        member,
                        ..Reply::default()
                    },
                    Ok(Err(why)) => failure(why),
                    Err(_) => failure("the holder is stopping".into()),
                };
                conn.send(&reply, &[]).await
            }
            Request::Retire { name, member } => {
                let (reply, answer) = oneshot::channel();
                let _ = shared.groups.send(Op::Retire {
                    lease: id,
                    name,
                    member,
                    reply,
                });
                conn.send(&done(answer.await), &[]).await
            }
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = shared.groups.send(Op::Gone(id));
    let _ = shared.events.send(Event::Gone(id));
}

pub(super) async fn take(
    conn: &Conn,
    id: u64,
    peer: &UnixCredentials,
    shared: &Shared,
    names: Vec<String>,
    who: String,
    fresh: Vec<String>,
) -> std::io::Result<()> {
    let picked = match pick(
        &shared.held,
        &names.iter().chain(&fresh).cloned().collect::<Vec<_>>(),
    ) {
        Ok(p) => p.into_iter().take(names.len()).collect::<Vec<_>>(),
        Err(why) => return conn.send(&failure(why), &[]).await,
    };
    let shown: Vec<String> = names.iter().chain(&fresh).cloned().collect();
    let reply = Reply {
        ok: true,
        sockets: picked
            .iter()
            .map(|h| Offered {
                name: h.name.clone(),
                address: h.address,
            })
            .collect(),
        holder: Some(shared.info.clone()),
        ..Reply::default()
    };
    let fds: Vec<_> = picked.iter().map(|h| h.fd.as_fd()).collect();
    conn.send(&reply, &fds).await?;
    info!(%who, pid = peer.pid(), uid = peer.uid(), sockets = ?shown, "handed over");
    let _ = shared.events.send(Event::Took(
        id,
        Taker {
            who,
            pid: peer.pid(),
            uid: peer.uid(),
            gid: peer.gid(),
            names: shown,
            since: timestamp(SystemTime::now()),
        },
    ));
    Ok(())
}

pub(super) fn done(answer: Result<Result<(), String>, oneshot::error::RecvError>) -> Reply {
    match answer {
        Ok(Ok(())) => Reply {
            ok: true,
            ..Reply::default()
        },
        Ok(Err(why)) => failure(why),
        Err(_) => failure("the holder is stopping".into()),
    }
}

/// The sockets held, with their accept queues now.
pub(super) fn queued_now(held: &[Held]) -> Vec<HeldStatus> {
    held.iter()
        .map(|h| HeldStatus {
            name: h.name.clone(),
            address: h.address,
            queued: steer::queued(h.fd.as_fd()).unwrap_or(0),
        })
        .collect()
}

pub(super) fn pick<'a>(held: &'a [Held], names: &[String]) -> Result<Vec<&'a Held>, String> {
    names
        .iter()
        .map(|n| {
            held.iter().find(|h| &h.name == n).ok_or_else(|| {
                let have: Vec<&str> = held.iter().map(|h| h.name.as_str()).collect();
                format!("the holder has no socket named `{n}` (it holds {have:?})")
            })
        })
        .collect()
}

pub(super) fn failure(why: String) -> Reply {
    Reply {
        ok: false,
        error: Some(why),
        ..Reply::default()
    }
}
