//! One per-instance socket's SO_REUSEPORT group, as this cutover sees it:
//! bound and steered here, or, for a socket taken `from` a holder, bound
//! and steered by the holder in its network namespace (this cutover asks;
//! the holder knows every member, other app containers' included).
//!
//! Local indexes follow the kernel's bookkeeping: a socket joins at the
//! end, and a leaving one's slot is taken by the last. A socket leaves by
//! `shutdown(SHUT_RD)`, which takes it out of the group at once even if a
//! straggling process of its instance still has it open.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{Shutdown, shutdown};
use tracing::warn;

use super::probe::{ProbeRoute, Way};
use super::protocol::Request;
use crate::sockets::held::bind_tcp;
use crate::sockets::link::HolderLink;
use crate::sockets::steer::{self, Route};
use crate::sockets::take::fresh;

/// The instances started on the same per-instance sockets: the first, and
/// one more for each reload that starts a new instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Generation(pub(super) u64);

pub(super) struct Member {
    pub generation: Generation,
    pub fd: OwnedFd,
    /// Its id at the holder, and which run of the holder, for a holder's group.
    holder_id: Option<(u64, String)>,
}

pub(super) struct Group {
    pub name: String,
    address: SocketAddr,
    backlog: u32,
    pub members: Vec<Member>,
    /// The holder that owns the group; None when it is this cutover's.
    holder: Option<HolderLink>,
}

/// Why new connections could not be steered to a generation's socket.
#[derive(Debug, thiserror::Error)]
enum SteerError {
    #[error(transparent)]
    Local(io::Error),
    #[error(transparent)]
    Holder(crate::sockets::link::LinkError),
    #[error("a holder's socket without its id")]
    NoMemberId { generation: Generation },
}

impl Group {
    /// A group that starts with the socket of the first generation.
    pub fn new(
        name: String,
        fd: OwnedFd,
        address: SocketAddr,
        backlog: u32,
        holder: Option<(HolderLink, u64)>,
    ) -> Group {
        let (holder, holder_id) = match holder {
            Some((link, id)) => {
                let instance = link.holder.instance.clone();
                (Some(link), Some((id, instance)))
            }
            None => (None, None),
        };
        Group {
            name,
            address,
            backlog,
            members: vec![Member {
                generation: Generation(0),
                fd,
                holder_id,
            }],
            holder,
        }
    }

    /// A restarted holder at the same path: the next sockets come from it.
    pub fn replace_holder(&mut self, link: &HolderLink) -> bool {
        match &mut self.holder {
            Some(old) if old.path == link.path => {
                *old = link.clone();
                true
            }
            _ => false,
        }
    }

    /// Whether the holder decides where users go (until the first steer,
    /// they stay where they were: the holder's backlog, or another app).
    pub fn held(&self) -> bool {
        self.holder.is_some()
    }

    fn member(&self, generation: Generation) -> Option<(usize, &Member)> {
        self.members
            .iter()
            .enumerate()
            .find(|(_, m)| m.generation == generation)
    }

    /// Binds (or has the holder bind) a socket for `generation`; nothing
    /// reaches it until it is steered to.
    pub async fn add(&mut self, generation: Generation) -> io::Result<()> {
        let (fd, holder_id) = match &self.holder {
            None => {
                let fd = bind_tcp(self.address, self.backlog, true).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot bind a new socket on {}: {e}", self.address),
                    )
                })?;
                (fd, None)
            }
            Some(link) => {
                let (_, fd, id) = fresh(link, &self.name).await.map_err(|why| {
                    io::Error::other(format!("the holder gave no new socket: {why}"))
                })?;
                (fd, Some((id, link.holder.instance.clone())))
            }
        };
        self.members.push(Member {
            generation,
            fd,
            holder_id,
        });
        Ok(())
    }

    /// Every new connection to `generation`'s socket.
    pub async fn steer_to(&self, generation: Generation) {
        let Some((index, member)) = self.member(generation) else {
            return;
        };
        let result = match (&self.holder, member.holder_id.as_ref().map(|(id, _)| *id)) {
            (None, _) => steer::attach(
                self.members[0].fd.as_fd(),
                Route {
                    users: index as u32,
                    probe: None,
                },
            )
            .map_err(SteerError::Local),
            (Some(link), Some(id)) => link
                .request(Request::Steer {
                    name: self.name.clone(),
                    users: Some(id),
                    probe: None,
                    probe_from: None,
                })
                .await
                .map(|_| ())
                .map_err(SteerError::Holder),
            (Some(_), None) => Err(SteerError::NoMemberId { generation }),
        };
        if let Err(e) = result {
            warn!(listen = %self.name, error = %e, "cannot steer new connections");
        }
    }

    /// This cutover is about to stop: the holder sends users to another
    /// live taker if one serves. Whether they went, so that what this
    /// instance has queued is to be drained before it stops.
    pub async fn leave(&self) -> bool {
        let Some(link) = &self.holder else {
            return false;
        };
        match link
            .request(Request::Leave {
                name: self.name.clone(),
            })
            .await
        {
            Ok((granted, _)) => granted.member.is_some_and(|users| {
                !self
                    .members
                    .iter()
                    .any(|m| m.holder_id.as_ref().is_some_and(|(id, _)| *id == users))
            }),
            Err(e) => {
                warn!(listen = %self.name, error = %e, "the holder did not take users over");
                false
            }
        }
    }

    /// How probes reach `probe`'s socket while users stay on `users`'s.
    pub fn probe_route(&self, users: Generation, probe: Generation) -> Option<ProbeRoute> {
        let (probe_index, probe_member) = self.member(probe)?;
        let way = match &self.holder {
            None => Way::Local {
                users: self.member(users)?.0 as u32,
                probe: probe_index as u32,
                group: self.members[0].fd.try_clone().ok()?,
            },
            Some(link) => Way::Holder {
                link: link.clone(),
                name: self.name.clone(),
                member: probe_member.holder_id.as_ref()?.0,
            },
        };
        Some(ProbeRoute::new(self.address, way))
    }

    /// `generation`'s socket leaves the group; what it had queued moves to
    /// the others. Returns how many that was.
    pub async fn retire(&mut self, generation: Generation) -> u32 {
        let Some((index, _)) = self.member(generation) else {
            return 0;
        };
        let gone = self.members.swap_remove(index);
        let queued = steer::queued(gone.fd.as_fd()).unwrap_or(0);
        match (&self.holder, &gone.holder_id) {
            // A socket of an earlier run of the holder is gone with it.
            (Some(link), Some((_, run))) if *run != link.holder.instance => {}
            (Some(link), Some((id, _))) => {
                let id = *id;
                drop(gone);
                if let Err(e) = link
                    .request(Request::Retire {
                        name: self.name.clone(),
                        member: id,
                    })
                    .await
                {
                    warn!(listen = %self.name, error = %e, "the holder did not retire a socket");
                }
            }
            _ => {
                let _ = shutdown(gone.fd.as_raw_fd(), Shutdown::Read);
            }
        }
        queued
    }
}
