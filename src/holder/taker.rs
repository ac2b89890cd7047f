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

use super::group_owner::{Answer, Op};
use super::refusal::{GroupError, NoSuchSocket};
use crate::api::accept::Slot;
use crate::clock::timestamp;
use crate::sockets::protocol::{
    Granted, HeldStatus, HolderInfo, HolderStatus, Offered, Reply, Request, Taker,
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

/// Serves one connection: a taker's lease, or a status request, until the
/// peer goes (or is refused, or evicted while it says nothing).
pub(super) async fn serve(conn: Conn, id: u64, shared: Arc<Shared>, slot: Slot) {
    let Some(peer) = admitted(&conn, &shared).await else {
        return;
    };
    // Held while a request is answered, and for good once the peer took
    // sockets: a lease is never evicted.
    let mut busy = None;
    let mut leased = false;
    loop {
        if !leased {
            busy = None;
        }
        let Some(received) = next_message(&conn, leased, &slot).await else {
            break;
        };
        busy.get_or_insert_with(|| slot.busy());
        let Some(request) = readable(&conn, received).await else {
            break;
        };
        leased |= matches!(request, Request::Take { .. });
        if answer(&conn, id, &peer, &shared, request).await.is_err() {
            break;
        }
    }
    let _ = shared.groups.send(Op::Gone(id));
    let _ = shared.events.send(Event::Gone(id));
}

/// The peer's credentials if the policy admits it; a refused peer is told
/// why, and None.
async fn admitted(conn: &Conn, shared: &Shared) -> Option<UnixCredentials> {
    let peer = match conn.peer() {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "cannot read a peer's credentials; closing");
            return None;
        }
    };
    if shared.policy.admits(&peer) {
        return Some(peer);
    }
    let why = shared.policy.refusal(&peer);
    warn!(
        pid = peer.pid(),
        uid = peer.uid(),
        gid = peer.gid(),
        "{why}"
    );
    let _ = shared.events.send(Event::Refused);
    let _ = conn.send(&Reply::failure(why), &[]).await;
    // Read its request before closing: closing on unread data would reset
    // the connection before the peer has read why.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn.recv::<Request>()).await;
    None
}

type Received = std::io::Result<Option<(Request, Vec<OwnedFd>)>>;

/// The peer's next message; None when it is time to close: a peer gets a
/// few seconds for each request and may be evicted while it sends none,
/// but a taker keeps its connection (its lease) idle as long as it likes.
async fn next_message(conn: &Conn, leased: bool, slot: &Slot) -> Option<Received> {
    let next = conn.recv::<Request>();
    if leased {
        return Some(next.await);
    }
    tokio::select! {
        r = tokio::time::timeout(FIRST_REQUEST, next) => r.ok(),
        () = slot.evicted() => None,
    }
}

/// The request received, or None (the peer is gone, or told what is wrong
/// with what it sent: the connection then closes).
async fn readable(conn: &Conn, received: Received) -> Option<Request> {
    match received {
        Ok(Some((request, fds))) if fds.is_empty() => Some(request),
        Ok(Some((_, fds))) => {
            crate::sockets::wire::discard(fds);
            let _ = conn
                .send(&Reply::failure("requests carry no descriptors"), &[])
                .await;
            None
        }
        Ok(None) => None,
        Err(e) => {
            let _ = conn
                .send(&Reply::failure(format!("bad request: {e}")), &[])
                .await;
            None
        }
    }
}

/// Answers one request; an error is the connection's end.
async fn answer(
    conn: &Conn,
    id: u64,
    peer: &UnixCredentials,
    shared: &Shared,
    request: Request,
) -> std::io::Result<()> {
    match request {
        Request::Take { names, who, fresh } => {
            take(conn, id, peer, shared, names, who, fresh).await
        }
        Request::Status => conn.send(&status(shared), &[]).await,
        Request::Fresh { name } => fresh_socket(conn, id, shared, name).await,
        Request::Steer {
            name,
            users,
            probe,
            probe_from,
        } => {
            let probe = probe.map(|(port, member)| {
                let from = steer::ProbeFrom {
                    port,
                    address: probe_from,
                };
                (from, member)
            });
            conn.send(&steered(id, shared, name, users, probe).await, &[])
                .await
        }
        Request::Leave { name } => conn.send(&left(id, shared, name).await, &[]).await,
        Request::Retire { name, member } => {
            conn.send(&retired(id, shared, name, member).await, &[])
                .await
        }
    }
}

/// New connections of `name`'s group to the taker's member `users`, and
/// its probe's to the member it names (or none).
async fn steered(
    id: u64,
    shared: &Shared,
    name: String,
    users: Option<u64>,
    probe: Option<(steer::ProbeFrom, u64)>,
) -> Reply {
    let done = ask_groups(shared, |reply| Op::Steer {
        lease: id,
        name,
        users,
        probe,
        reply,
    })
    .await;
    replied(done.map(|()| Granted::default()))
}

/// The taker's instance is done with `member` of `name`'s group: it
/// stays in the group, idle.
async fn retired(id: u64, shared: &Shared, name: String, member: u64) -> Reply {
    let done = ask_groups(shared, |reply| Op::Retire {
        lease: id,
        name,
        member,
        reply,
    })
    .await;
    replied(done.map(|()| Granted::default()))
}

/// The taker is about to stop: the member users of `name` went to, if
/// another live taker serves them.
async fn left(id: u64, shared: &Shared, name: String) -> Reply {
    let users_went_to = ask_groups(shared, |reply| Op::Leave {
        lease: id,
        name,
        reply,
    })
    .await;
    replied(users_went_to.map(|member| Granted {
        member,
        ..Granted::default()
    }))
}

/// What the holder holds and who took it, with the accept queues now.
fn status(shared: &Shared) -> Reply {
    let mut status = shared.published.borrow().clone();
    status.sockets = queued_now(&shared.held);
    Reply::Ok(Granted {
        holder: Some(shared.info.clone()),
        status: Some(status),
        ..Granted::default()
    })
}

/// A per-instance socket for the taker's next instance, attached.
async fn fresh_socket(conn: &Conn, id: u64, shared: &Shared, name: String) -> std::io::Result<()> {
    let given = ask_groups(shared, |reply| Op::Fresh {
        lease: id,
        name,
        reply,
    })
    .await;
    match given {
        Ok((offered, fd, member)) => {
            let reply = Reply::Ok(Granted {
                sockets: vec![offered],
                member: Some(member),
                ..Granted::default()
            });
            conn.send(&reply, &[fd.as_fd()]).await
        }
        Err(why) => conn.send(&Reply::failure(why), &[]).await,
    }
}

/// Sends the owner of the groups the op `ask` makes of a reply channel,
/// and waits for its answer.
async fn ask_groups<T>(
    shared: &Shared,
    ask: impl FnOnce(Answer<T>) -> Op,
) -> Result<T, GroupError> {
    let (reply, answer) = oneshot::channel();
    // Sent to a stopped owner, the op is dropped with its reply channel:
    // the answer below then says the holder is stopping.
    let _ = shared.groups.send(ask(reply));
    answer.await.unwrap_or(Err(GroupError::Stopping))
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
        Err(why) => return conn.send(&Reply::failure(why), &[]).await,
    };
    let shown: Vec<String> = names.iter().chain(&fresh).cloned().collect();
    let reply = Reply::Ok(Granted {
        sockets: picked
            .iter()
            .map(|h| Offered {
                name: h.name.clone(),
                address: h.address,
            })
            .collect(),
        holder: Some(shared.info.clone()),
        ..Granted::default()
    });
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

/// The reply to a request about a group: granted, or why not.
fn replied(result: Result<Granted, GroupError>) -> Reply {
    match result {
        Ok(granted) => Reply::Ok(granted),
        Err(why) => Reply::failure(why),
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

pub(super) fn pick<'a>(held: &'a [Held], names: &[String]) -> Result<Vec<&'a Held>, NoSuchSocket> {
    names
        .iter()
        .map(|n| {
            held.iter()
                .find(|h| &h.name == n)
                .ok_or_else(|| NoSuchSocket {
                    name: n.clone(),
                    held: held.iter().map(|h| h.name.clone()).collect(),
                })
        })
        .collect()
}
