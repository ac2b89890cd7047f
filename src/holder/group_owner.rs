//! The one task that owns the holder's per-instance groups (`members`):
//! taker connections send it an `Op` and wait for its answer, so that no
//! two requests ever change a group at once. Kept apart from `members`,
//! which is what a group does with each request.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::members::{Group, HOLDERS};
use super::refusal::{GroupError, NoSuchSocket};
use crate::sockets::protocol::Offered;
use crate::sockets::steer::ProbeFrom;

/// Where the owner of the groups answers an `Op`.
pub(super) type Answer<T> = oneshot::Sender<Result<T, GroupError>>;

pub(super) enum Op {
    Fresh {
        lease: u64,
        name: String,
        reply: Answer<(Offered, OwnedFd, u64)>,
    },
    Steer {
        lease: u64,
        name: String,
        users: Option<u64>,
        probe: Option<(ProbeFrom, u64)>,
        reply: Answer<()>,
    },
    Retire {
        lease: u64,
        name: String,
        member: u64,
        reply: Answer<()>,
    },
    /// A taker is about to stop: users move to another live taker's
    /// member, if one serves (that member), else stay (None).
    Leave {
        lease: u64,
        name: String,
        reply: Answer<Option<u64>>,
    },
    /// A taker is gone: its members are idle, and users move to another
    /// live taker's, if there is one.
    Gone(u64),
}

/// A socket of the holder's own, that a group starts with.
pub(super) struct GroupSocket {
    pub name: String,
    pub address: SocketAddr,
    pub backlog: u32,
    /// A descriptor of the socket of its own.
    pub fd: OwnedFd,
    /// Sockets of others before it in the kernel's group.
    pub offset: u32,
}

/// Starts the owner of the groups, one for each of the holder's sockets.
pub(super) fn start(sockets: Vec<GroupSocket>) -> mpsc::UnboundedSender<Op> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut groups: Vec<Group> = sockets
        .into_iter()
        .map(|s| Group::new(s.name, s.address, s.backlog, s.fd, s.offset))
        .collect();
    // A program from the start: a member that joins later gets nothing
    // by the kernel's hash before it is steered to.
    for g in &groups {
        if let Err(e) = g.attach() {
            warn!(error = %e, "cannot steer; members would share traffic by hash");
        }
    }
    tokio::spawn(async move {
        let mut next_id = HOLDERS + 1;
        while let Some(op) = rx.recv().await {
            apply(&mut groups, op, &mut next_id);
        }
    });
    tx
}

/// Carries out one request; its answer goes back on the op's own channel
/// (a taker gone meanwhile is no concern here).
fn apply(groups: &mut [Group], op: Op, next_id: &mut u64) {
    match op {
        Op::Fresh { lease, name, reply } => {
            let _ = reply.send(find(groups, &name).and_then(|g| g.fresh(lease, next_id)));
        }
        Op::Steer {
            lease,
            name,
            users,
            probe,
            reply,
        } => {
            let _ = reply.send(find(groups, &name).and_then(|g| g.steer(lease, users, probe)));
        }
        Op::Retire {
            lease,
            name,
            member,
            reply,
        } => {
            let _ = reply.send(find(groups, &name).and_then(|g| g.retire(lease, member)));
        }
        Op::Leave { lease, name, reply } => {
            let _ = reply.send(find(groups, &name).map(|g| g.leave(lease)));
        }
        Op::Gone(lease) => {
            for g in groups {
                g.gone(lease);
            }
        }
    }
}

fn find<'a>(groups: &'a mut [Group], name: &str) -> Result<&'a mut Group, GroupError> {
    let held: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
    groups.iter_mut().find(|g| g.name == name).ok_or_else(|| {
        NoSuchSocket {
            name: name.to_string(),
            held,
        }
        .into()
    })
}
