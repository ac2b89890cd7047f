//! The holder's SO_REUSEPORT groups, for takers whose sockets are per
//! instance: one task owns them (`group_owner`), gives a taker's next
//! instance a member (bound in the holder's network namespace, where the
//! published port lives), and steers new connections among the members.
//!
//! No member ever leaves a group. The kernel would otherwise swap the last
//! member into the leaving one's slot, and for a moment a steering index
//! would name another socket or none (then the kernel picks one by hash,
//! maybe an unready instance's); and without net.ipv4.tcp_migrate_req
//! (off by default, and rarely allowed in a pod) whatever waited in the
//! leaving socket would be reset. Instead:
//! - a member a taker is done with stays, idle: nothing is steered to it,
//!   and the next instance that needs a socket gets it again;
//! - the member users go to belongs to a live taker, the one that steered
//!   them there last (a lease per connection); when that taker goes, users
//!   go to the member another live taker steered them to last;
//! - when no live taker serves, users wait in the member they were last
//!   steered to (at first, the holder's own socket), and the next instance
//!   that asks for a socket is given that very socket, queue and all: the
//!   parked connections are served without moving anywhere;
//! - when a taker goes while another serves, what its members still hold
//!   is accepted by the holder and relayed to the serving one (`rescue`).
//!
//! Probe routes are one per taker, so that two takers probing at once never
//! wipe each other's route.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use tracing::{info, warn};

use super::refusal::GroupError;
use super::rescue;
use crate::sockets::held::bind_tcp;
use crate::sockets::protocol::Offered;
use crate::sockets::steer::{self, ProbeFrom};

/// The member id of the holder's own socket in every group.
pub(super) const HOLDERS: u64 = 0;
/// Members of one group at most: idle ones are given out again, so only a
/// taker asking without end for sockets it never gives back reaches this.
const MEMBERS_MAX: usize = 64;

struct Member {
    id: u64,
    fd: OwnedFd,
    /// The taker whose instance has it; None while idle (or parked).
    lease: Option<u64>,
    /// The holder accepts from it until then (see `rescue`): not given out.
    rescued_until: Option<std::time::Instant>,
}

pub(super) struct Group {
    pub(super) name: String,
    address: SocketAddr,
    backlog: u32,
    /// Sockets of others before the holder's own in the kernel's order
    /// (an earlier holder's, on one host): indexes start after them.
    offset: u32,
    /// In the kernel's order: members only ever join, at the end.
    members: Vec<Member>,
    /// The member user traffic goes to.
    users: u64,
    /// (lease, member) each taker last steered users to, latest last.
    serving: Vec<(u64, u64)>,
    /// (lease, what only the prober has, member): each taker's probe in flight.
    probes: Vec<(u64, ProbeFrom, u64)>,
}

impl Group {
    /// A group whose only member is the holder's own socket, where users go.
    pub(super) fn new(
        name: String,
        address: SocketAddr,
        backlog: u32,
        fd: OwnedFd,
        offset: u32,
    ) -> Group {
        Group {
            name,
            address,
            backlog,
            offset,
            members: vec![Member {
                id: HOLDERS,
                fd,
                lease: None,
                rescued_until: None,
            }],
            users: HOLDERS,
            serving: Vec::new(),
            probes: Vec::new(),
        }
    }

    fn index(&self, member: u64) -> Option<u32> {
        self.members
            .iter()
            .position(|m| m.id == member)
            .map(|i| self.offset + i as u32)
    }

    fn member(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    fn leased_to(&self, id: u64, lease: u64) -> Result<(), GroupError> {
        match self.member(id) {
            Some(m) if m.lease == Some(lease) => Ok(()),
            _ => Err(GroupError::NotLeased {
                group: self.name.clone(),
                member: id,
                lease,
            }),
        }
    }

    /// A socket for `lease`'s next instance: the parked one users wait in
    /// when no live taker has it, else an idle one, else a new one.
    pub(super) fn fresh(
        &mut self,
        lease: u64,
        next_id: &mut u64,
    ) -> Result<(Offered, OwnedFd, u64), GroupError> {
        if self.offset > 0 {
            // Others' sockets may leave the group, and the kernel would then
            // move its members: their indexes could not be known.
            return Err(GroupError::SharedWithOthers {
                group: self.name.clone(),
                address: self.address,
            });
        }
        let parked = self
            .member(self.users)
            .filter(|m| m.lease.is_none())
            .map(|m| m.id);
        let idle = || {
            self.members
                .iter()
                .find(|m| {
                    m.lease.is_none()
                        && m.id != self.users
                        && !self.probes.iter().any(|(_, _, p)| *p == m.id)
                        && m.rescued_until
                            .is_none_or(|t| t <= std::time::Instant::now())
                })
                .map(|m| m.id)
        };
        let id = match parked.or_else(idle) {
            Some(id) => id,
            None if self.members.len() >= MEMBERS_MAX => {
                return Err(GroupError::Full {
                    group: self.name.clone(),
                    max: MEMBERS_MAX,
                });
            }
            None => self.join_new(next_id)?,
        };
        let member = self
            .members
            .iter_mut()
            .find(|m| m.id == id)
            .expect("chosen above");
        member.lease = Some(lease);
        let theirs = member
            .fd
            .try_clone()
            .map_err(|source| GroupError::Duplicate {
                group: self.name.clone(),
                member: id,
                source,
            })?;
        if Some(id) == parked {
            let queued = steer::queued(member.fd.as_fd()).unwrap_or(0);
            info!(listen = %self.name, member = id, queued, "gave a taker's instance the socket users wait in");
        } else {
            info!(listen = %self.name, member = id, "gave a taker's instance a socket");
        }
        Ok((
            Offered {
                name: self.name.clone(),
                address: self.address,
            },
            theirs,
            id,
        ))
    }

    /// A new member, idle, bound at the end of the group.
    fn join_new(&mut self, next_id: &mut u64) -> Result<u64, GroupError> {
        let fd = bind_tcp(self.address, self.backlog, true).map_err(|source| GroupError::Bind {
            group: self.name.clone(),
            address: self.address,
            source,
        })?;
        let id = *next_id;
        *next_id += 1;
        self.members.push(Member {
            id,
            fd,
            lease: None,
            rescued_until: None,
        });
        Ok(id)
    }

    pub(super) fn steer(
        &mut self,
        lease: u64,
        users: Option<u64>,
        probe: Option<(ProbeFrom, u64)>,
    ) -> Result<(), GroupError> {
        if let Some(users) = users {
            self.leased_to(users, lease)?;
            if self.users != users {
                info!(listen = %self.name, member = users, "users steered to a taker's socket");
            }
            self.users = users;
            self.serving.retain(|(l, _)| *l != lease);
            self.serving.push((lease, users));
        }
        // Each steer names this taker's probe as it is now: set or cleared.
        if let Some((_, member)) = probe {
            self.leased_to(member, lease)?;
        }
        self.probes.retain(|(l, _, _)| *l != lease);
        if let Some((from, member)) = probe {
            self.probes.push((lease, from, member));
        }
        self.attach()
    }

    pub(super) fn attach(&self) -> Result<(), GroupError> {
        let users = self.index(self.users).unwrap_or(0);
        let probes: Vec<(ProbeFrom, u32)> = self
            .probes
            .iter()
            .filter_map(|(_, from, member)| Some((*from, self.index(*member)?)))
            .collect();
        steer::attach_routes(self.members[0].fd.as_fd(), users, &probes).map_err(|source| {
            GroupError::Steer {
                group: self.name.clone(),
                source,
            }
        })
    }

    /// `lease`'s instance is done with `member`: it stays in the group,
    /// idle, for the next instance that needs a socket.
    pub(super) fn retire(&mut self, lease: u64, member: u64) -> Result<(), GroupError> {
        self.leased_to(member, lease)?;
        self.release(member);
        if let Err(e) = self.attach() {
            warn!(error = %e, "after a taker gave a socket back");
        }
        Ok(())
    }

    fn release(&mut self, member: u64) {
        if let Some(m) = self.members.iter_mut().find(|m| m.id == member) {
            m.lease = None;
            let queued = steer::queued(m.fd.as_fd()).unwrap_or(0);
            info!(listen = %self.name, member, queued, "a taker gave a socket back; it stays, idle");
        }
        self.probes.retain(|(_, _, m)| *m != member);
        self.serving.retain(|(_, m)| *m != member);
    }

    /// Users of `lease` go to the member another live taker steered them
    /// to last, if any; which one that is.
    fn hand_users_over(&mut self, lease: u64) -> Option<u64> {
        let mine = self.member(self.users).and_then(|m| m.lease) == Some(lease);
        if !mine {
            return self.member(self.users).map(|m| m.id);
        }
        let &(_, member) = self.serving.iter().rev().find(|(l, _)| *l != lease)?;
        self.users = member;
        info!(listen = %self.name, member, "users go to another live taker's socket");
        if let Err(e) = self.attach() {
            warn!(error = %e, "while handing users over");
        }
        Some(member)
    }

    /// A taker about to stop: its users go elsewhere if another serves.
    pub(super) fn leave(&mut self, lease: u64) -> Option<u64> {
        self.serving.retain(|(l, _)| *l != lease);
        self.hand_users_over(lease)
    }

    /// A taker is gone. Users it was served go to the member another live
    /// taker steered them to last; with none, they wait where they are.
    pub(super) fn gone(&mut self, lease: u64) {
        let theirs: Vec<u64> = self
            .members
            .iter()
            .filter(|m| m.lease == Some(lease))
            .map(|m| m.id)
            .collect();
        if theirs.is_empty() {
            return;
        }
        self.serving.retain(|(l, _)| *l != lease);
        if theirs.contains(&self.users) && self.hand_users_over(lease).is_none() {
            info!(listen = %self.name, member = self.users, "a taker is gone: users wait in its socket for the next instance");
        }
        for id in &theirs {
            self.release(*id);
        }
        self.probes.retain(|(l, _, _)| *l != lease);
        if let Err(e) = self.attach() {
            warn!(error = %e, "after a taker went away");
        }
        for id in theirs {
            self.rescue(id);
        }
    }

    /// What `member` still holds goes to the member users go to now, unless
    /// that is this very one (users wait in it for the next instance).
    fn rescue(&mut self, member: u64) {
        if member == self.users {
            return;
        }
        let (name, address) = (self.name.clone(), self.address);
        let Some(m) = self.members.iter_mut().find(|m| m.id == member) else {
            return;
        };
        match m.fd.try_clone() {
            Ok(fd) => {
                m.rescued_until = Some(std::time::Instant::now() + rescue::WINDOW);
                rescue::start(name, member, fd, address);
            }
            Err(e) => {
                warn!(listen = %name, member, error = %e, "cannot take the connections left in a gone taker's socket")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn group() -> Group {
        let fd = bind_tcp("127.0.0.1:0".parse().unwrap(), 16, true).unwrap();
        let address = TcpListener::from(fd.try_clone().unwrap())
            .local_addr()
            .unwrap();
        let g = Group::new("http".into(), address, 16, fd, 0);
        g.attach().unwrap();
        g
    }

    /// Which member's queue a connection from `from` (or anywhere) lands in.
    fn lands(g: &Group, from: Option<SocketAddr>) -> u64 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Some(from) = from {
            s.bind(&from.into()).unwrap();
        }
        s.connect(&g.address.into()).unwrap();
        let _client: TcpStream = s.into();
        for _ in 0..200 {
            for m in &g.members {
                if steer::queued(m.fd.as_fd()).unwrap_or(0) > 0 {
                    let listener = TcpListener::from(m.fd.try_clone().unwrap());
                    listener.accept().unwrap();
                    return m.id;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        panic!("no member took the connection");
    }

    // A runtime: a gone taker's members are rescued by a task.
    #[tokio::test]
    async fn members_stay_users_follow_live_takers_and_parked_sockets_are_handed_on() {
        let mut g = group();
        let mut next = 1;
        // The first instance gets the holder's own socket, where users wait.
        let (_, _, a0) = g.fresh(1, &mut next).unwrap();
        assert_eq!(a0, HOLDERS);
        g.steer(1, Some(a0), None).unwrap();
        // A second taker beside it gets a socket of its own.
        let (_, _, b0) = g.fresh(2, &mut next).unwrap();
        assert_ne!(b0, a0);
        // Both probe at once: neither route wipes the other.
        let pa = SocketAddr::from(([127, 0, 0, 1], 20_001));
        let pb = SocketAddr::from(([127, 0, 0, 1], 20_002));
        let from = |a: SocketAddr| ProbeFrom {
            port: a.port(),
            address: Some(a.ip()),
        };
        g.steer(1, None, Some((from(pa), a0))).unwrap();
        g.steer(2, None, Some((from(pb), b0))).unwrap();
        assert_eq!(lands(&g, Some(pb)), b0);
        assert_eq!(lands(&g, None), a0, "users stay until b0 is steered to");
        // A taker may steer only to its own sockets.
        assert!(g.steer(2, Some(a0), None).is_err());
        g.steer(2, Some(b0), None).unwrap();
        assert_eq!(lands(&g, None), b0);
        // The first reloads: its new instance gets a new socket, takes
        // users, and its old one stays in the group, idle.
        let (_, _, a1) = g.fresh(1, &mut next).unwrap();
        g.steer(1, Some(a1), None).unwrap();
        g.retire(1, a0).unwrap();
        assert_eq!(g.members.len(), 3, "no member ever leaves");
        assert_eq!(lands(&g, None), a1);
        // It stops: users go to the other live taker, not to a dead socket.
        assert_eq!(g.leave(1), Some(b0));
        assert_eq!(lands(&g, None), b0);
        g.gone(1);
        // The idle socket is given out again.
        let (_, _, b1) = g.fresh(2, &mut next).unwrap();
        assert!(b1 == a0 || b1 == a1, "reused, not bound anew");
        assert_eq!(g.members.len(), 3);
        // The last taker goes: users wait in its socket, and the next
        // instance gets that very socket, queue and all.
        g.gone(2);
        assert_eq!(g.users, b0);
        let _waiting = TcpStream::connect(g.address).unwrap();
        let (_, _, c0) = g.fresh(3, &mut next).unwrap();
        assert_eq!(c0, b0);
    }
}
