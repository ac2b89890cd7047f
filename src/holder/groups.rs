//! The holder's SO_REUSEPORT groups, for takers whose sockets are per
//! instance: one task owns them, binds a fresh member for a taker's next
//! instance (in the holder's network namespace, where the published port
//! lives), steers new connections among the members and retires them.
//!
//! Member `HOLDERS` of each group is the holder's own socket, which parks
//! connections while no taker serves; once users go to a taker, anything
//! left in it is handed over (`unpark`, also swept twice a second, since
//! the kernel's fallback may put a connection there while members change). Indexes follow the kernel's order: a
//! member joins at the end, a leaving one's slot is taken by the last. A
//! member leaves by `shutdown(SHUT_RD)`, which takes it out of the group at
//! once whoever else still holds it, and moves its queue to the others
//! (net.ipv4.tcp_migrate_req).

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{Backlog, Shutdown, listen, shutdown};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::Offered;
use crate::listen::bind_tcp;
use crate::steer::{self, Route};

type Reply<T> = oneshot::Sender<Result<T, String>>;

pub(super) enum Op {
    Fresh {
        lease: u64,
        name: String,
        reply: Reply<(Offered, OwnedFd, u64)>,
    },
    Steer {
        name: String,
        users: Option<u64>,
        probe: Option<(u16, u64)>,
        reply: Reply<()>,
    },
    Retire {
        lease: u64,
        name: String,
        member: u64,
        reply: Reply<()>,
    },
    /// A taker is gone: its members leave.
    Gone(u64),
}

/// The member id of the holder's own socket in every group.
const HOLDERS: u64 = 0;

/// How often the groups are swept for connections parked by a race.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

struct Member {
    id: u64,
    fd: OwnedFd,
    /// None for the holder's own socket.
    lease: Option<u64>,
}

struct Group {
    name: String,
    address: SocketAddr,
    backlog: u32,
    members: Vec<Member>,
    /// The member user traffic goes to.
    users: u64,
}

/// Starts the owner of the groups; `sockets` are the holder's own (name,
/// address, backlog, a descriptor of the socket).
pub(super) fn start(sockets: Vec<(String, SocketAddr, u32, OwnedFd)>) -> mpsc::UnboundedSender<Op> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut groups: Vec<Group> = sockets
        .into_iter()
        .map(|(name, address, backlog, fd)| Group {
            name,
            address,
            backlog,
            members: vec![Member {
                id: HOLDERS,
                fd,
                lease: None,
            }],
            users: HOLDERS,
        })
        .collect();
    tokio::spawn(async move {
        let mut next_id = HOLDERS + 1;
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            let op = tokio::select! {
                op = rx.recv() => match op {
                    Some(op) => op,
                    None => return,
                },
                _ = sweep.tick() => {
                    for g in &mut groups {
                        g.unpark();
                    }
                    continue;
                }
            };
            match op {
                Op::Fresh { lease, name, reply } => {
                    let result = find(&mut groups, &name).and_then(|g| {
                        let fd = bind_tcp(g.address, g.backlog, true)
                            .map_err(|e| format!("cannot bind {}: {e}", g.address))?;
                        let theirs = fd.try_clone().map_err(|e| e.to_string())?;
                        let id = next_id;
                        next_id += 1;
                        g.members.push(Member {
                            id,
                            fd,
                            lease: Some(lease),
                        });
                        info!(listen = %g.name, member = id, "bound a socket for a taker's instance");
                        Ok((
                            Offered {
                                name: g.name.clone(),
                                address: g.address,
                            },
                            theirs,
                            id,
                        ))
                    });
                    let _ = reply.send(result);
                }
                Op::Steer {
                    name,
                    users,
                    probe,
                    reply,
                } => {
                    let result = find(&mut groups, &name).and_then(|g| g.steer(users, probe));
                    let _ = reply.send(result);
                }
                Op::Retire {
                    lease,
                    name,
                    member,
                    reply,
                } => {
                    let result = find(&mut groups, &name).and_then(|g| {
                        match g.members.iter().find(|m| m.id == member) {
                            Some(m) if m.lease == Some(lease) => {
                                g.retire(member);
                                Ok(())
                            }
                            _ => Err(format!("no socket {member} of yours in `{}`", g.name)),
                        }
                    });
                    let _ = reply.send(result);
                }
                Op::Gone(lease) => {
                    for g in &mut groups {
                        let theirs: Vec<u64> = g
                            .members
                            .iter()
                            .filter(|m| m.lease == Some(lease))
                            .map(|m| m.id)
                            .collect();
                        for id in theirs {
                            g.retire(id);
                        }
                    }
                }
            }
        }
    });
    tx
}

fn find<'a>(groups: &'a mut [Group], name: &str) -> Result<&'a mut Group, String> {
    let have: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
    groups
        .iter_mut()
        .find(|g| g.name == name)
        .ok_or_else(|| format!("the holder has no socket named `{name}` (it holds {have:?})"))
}

impl Group {
    fn index(&self, member: u64) -> Option<u32> {
        self.members
            .iter()
            .position(|m| m.id == member)
            .map(|i| i as u32)
    }

    fn steer(&mut self, users: Option<u64>, probe: Option<(u16, u64)>) -> Result<(), String> {
        if let Some(users) = users {
            if self.index(users).is_none() {
                return Err(format!("no socket {users} in `{}`", self.name));
            }
            self.users = users;
            self.unpark();
        }
        let probe = match probe {
            Some((port, member)) => Some((
                port,
                self.index(member)
                    .ok_or_else(|| format!("no socket {member} in `{}`", self.name))?,
            )),
            None => None,
        };
        self.attach(probe)
    }

    fn attach(&self, probe: Option<(u16, u32)>) -> Result<(), String> {
        let users = self.index(self.users).unwrap_or(0);
        steer::attach(self.members[0].fd.as_fd(), Route { users, probe })
            .map_err(|e| format!("cannot steer `{}`: {e}", self.name))
    }

    /// Takes `member` out of the group; users that went to it go to the
    /// holder's own socket until a taker steers them again.
    fn retire(&mut self, member: u64) {
        let Some(i) = self.index(member) else { return };
        let gone = self.members.swap_remove(i as usize);
        let queued = steer::queued(gone.fd.as_fd()).unwrap_or(0);
        let _ = shutdown(gone.fd.as_raw_fd(), Shutdown::Read);
        if self.users == member {
            self.users = HOLDERS;
        }
        if let Err(e) = self.attach(None) {
            warn!(error = %e, "after retiring a socket");
        }
        info!(listen = %self.name, member, queued, "retired a taker's socket");
        // Between the shutdown and the new program, the old one named an
        // index past the end, and the kernel's fallback may have parked a
        // connection in the holder's socket.
        self.unpark();
    }

    /// When users go to a taker's socket, nothing may wait in the holder's
    /// own: what does (parked while nobody served, or by a fallback of the
    /// kernel while members changed) moves to the group's other sockets
    /// (shutdown migrates it), and the socket listens again, last in the
    /// group. The program is set for the group without it first, so that
    /// no connection follows a stale index into it meanwhile.
    fn unpark(&mut self) {
        if self.users == HOLDERS {
            return;
        }
        let Some(i) = self.index(HOLDERS) else { return };
        let i = i as usize;
        if steer::queued(self.members[i].fd.as_fd()).unwrap_or(0) == 0 {
            return;
        }
        let _ = shutdown(self.members[i].fd.as_raw_fd(), Shutdown::Read);
        let holder = self.members.swap_remove(i);
        if let Err(e) = self.attach(None) {
            warn!(error = %e, "while handing parked connections over");
        }
        let backlog =
            Backlog::new(self.backlog.min(i32::MAX as u32) as i32).unwrap_or(Backlog::MAXCONN);
        if let Err(e) = listen(&holder.fd, backlog) {
            warn!(listen = %self.name, error = %e, "cannot listen again on the holder's socket");
        }
        self.members.push(holder);
        if let Err(e) = self.attach(None) {
            warn!(error = %e, "after handing parked connections over");
        }
        info!(listen = %self.name, "handed the connections parked in the holder's socket over");
    }
}
