//! The listening sockets of one program, and how traffic is handed from an
//! old instance to a new one.
//!
//! A shared socket is the same for every instance: simple, but an old
//! instance that stops takes whatever it accepted and had not read yet with
//! it (uvicorn closes such connections), and a readiness probe may be
//! answered by either instance. A per-instance socket is one SO_REUSEPORT
//! group in which each generation of instances gets a socket of its own.
//! cutover then steers (see `steer`): user traffic to the serving generation,
//! its probes to the one starting; at the cutover it sends users to the new
//! socket, waits until the old socket's accept queue is empty and the drain
//! period is over, and only then sends the stop signal. The old instance has
//! nothing left to drop. Whatever still sits in a retired socket when it
//! closes moves to the new one (net.ipv4.tcp_migrate_req).
//!
//! The group holds at most two sockets, the serving generation's and the
//! next one's. Indexes follow the kernel's own bookkeeping: a socket joins
//! at the end, and a leaving one's slot is taken by the last.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use tokio::net::{TcpSocket, TcpStream};
use tracing::{info, warn};

use crate::listen::{HeldSocket, bind_tcp};
use crate::spawn::PassedFd;
use crate::steer::{self, Route};

/// The instances started on the same per-instance sockets: the first, and
/// one more for each reload that starts a new instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Generation(u64);

/// One program's sockets, in the order of `[[listen]]` (fd 3, 4, ...).
pub(crate) struct ProgramSockets {
    entries: Vec<Entry>,
    latest: Generation,
    /// Where user traffic goes.
    users: Generation,
}

enum Entry {
    Shared(Arc<HeldSocket>),
    Own(Group),
}

/// A per-instance socket's group.
struct Group {
    name: String,
    address: SocketAddr,
    backlog: u32,
    /// In the order the sockets joined the kernel's group: an index here is
    /// an index for the steering program.
    members: Vec<(Generation, OwnedFd)>,
}

impl Group {
    /// A group that starts with the socket bound at start.
    fn new(held: HeldSocket, address: SocketAddr, backlog: u32) -> Group {
        Group {
            name: held.name.clone(),
            address,
            backlog,
            members: vec![(Generation(0), held.into_fd())],
        }
    }

    fn index(&self, generation: Generation) -> Option<u32> {
        self.members
            .iter()
            .position(|(g, _)| *g == generation)
            .map(|i| i as u32)
    }

    fn steer(&self, route: Route) {
        if let Some((_, fd)) = self.members.first()
            && let Err(e) = steer::attach(fd.as_fd(), route)
        {
            warn!(listen = %self.name, error = %e, "cannot steer new connections");
        }
    }
}

/// Gives each program the sockets `[[listen]]` names for it: a shared
/// socket to each of them, a per-instance socket to its one program.
/// Returned in the order of `programs`.
pub(crate) fn distribute(held: Vec<HeldSocket>, programs: &[&str]) -> Vec<ProgramSockets> {
    let mut entries: Vec<Vec<Entry>> = programs.iter().map(|_| Vec::new()).collect();
    for socket in held {
        let takers: Vec<usize> = (0..programs.len())
            .filter(|&i| socket.is_for(programs[i]))
            .collect();
        match (socket.per_instance(), takers.as_slice()) {
            (Some((address, backlog)), [only]) => {
                entries[*only].push(Entry::Own(Group::new(socket, address, backlog)));
            }
            _ => {
                let shared = Arc::new(socket);
                for &i in &takers {
                    entries[i].push(Entry::Shared(shared.clone()));
                }
            }
        }
    }
    entries
        .into_iter()
        .map(|entries| ProgramSockets {
            entries,
            latest: Generation(0),
            users: Generation(0),
        })
        .collect()
}

impl ProgramSockets {
    /// The generation of the instances started first.
    pub fn first() -> Generation {
        Generation(0)
    }

    /// Whether any socket is per-instance (otherwise reloads need no steering).
    pub fn steered(&self) -> bool {
        self.groups().next().is_some()
    }

    fn groups(&self) -> impl Iterator<Item = &Group> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Own(g) => Some(g),
            Entry::Shared(_) => None,
        })
    }

    /// Puts `new` in place of the shared sockets of the same names; whether
    /// any was this program's.
    pub fn replace_shared(&mut self, new: &[Arc<HeldSocket>]) -> bool {
        let mut replaced = false;
        for entry in &mut self.entries {
            if let Entry::Shared(old) = entry
                && let Some(socket) = new.iter().find(|n| n.name == old.name)
            {
                *old = socket.clone();
                replaced = true;
            }
        }
        replaced
    }

    /// The fds an instance of `generation` receives, in config order.
    pub fn passed(&self, generation: Generation) -> Vec<PassedFd<'_>> {
        self.entries
            .iter()
            .filter_map(|e| match e {
                Entry::Shared(s) => Some(PassedFd {
                    name: &s.name,
                    fd: s.fd(),
                }),
                Entry::Own(g) => g
                    .members
                    .iter()
                    .find(|(m, _)| *m == generation)
                    .map(|(_, fd)| PassedFd {
                        name: &g.name,
                        fd: fd.as_fd(),
                    }),
            })
            .collect()
    }

    /// Binds a socket of a new generation in every group. Nothing reaches it
    /// until it is steered to: the group's program still names the old index.
    pub fn add_generation(&mut self) -> io::Result<Generation> {
        let next = Generation(self.latest.0 + 1);
        if self.groups().any(|g| g.members.len() > 1) {
            // One hand-off at a time: a third socket would mean one was never
            // retired, and users could be steered to a socket nobody serves.
            return Err(io::Error::other("the previous hand-off has not finished"));
        }
        let mut bound = Vec::new();
        for group in self.groups() {
            match bind_tcp(group.address, group.backlog, true) {
                Ok(fd) => bound.push(fd),
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot bind a new socket on {}: {e}", group.address),
                    ));
                }
            }
        }
        let mut bound = bound.into_iter();
        for entry in &mut self.entries {
            if let Entry::Own(group) = entry {
                let fd = bound.next().expect("one socket per group");
                group.members.push((next, fd));
            }
        }
        self.latest = next;
        Ok(next)
    }

    /// Sends every new connection to `generation`'s sockets.
    pub fn steer_to(&mut self, generation: Generation) {
        self.users = generation;
        for group in self.groups() {
            if let Some(users) = group.index(generation) {
                group.steer(Route { users, probe: None });
            }
        }
    }

    /// For readiness probes of `probe` while users stay on `users`.
    pub fn probe_routes(&self, users: Generation, probe: Generation) -> Vec<ProbeRoute> {
        self.groups()
            .filter_map(|g| {
                Some(ProbeRoute {
                    address: g.address,
                    users: g.index(users)?,
                    probe: g.index(probe)?,
                    group: g.members.first()?.1.try_clone().ok()?,
                })
            })
            .collect()
    }

    /// Connections waiting in `generation`'s accept queues.
    pub fn queued(&self, generation: Generation) -> u32 {
        self.groups()
            .flat_map(|g| g.members.iter().filter(|(m, _)| *m == generation))
            .map(|(_, fd)| steer::queued(fd.as_fd()).unwrap_or(0))
            .sum()
    }

    /// Closes `generation`'s sockets once no instance of it runs. Their
    /// queued connections move to the socket that remains, when the kernel
    /// migrates them; they are reset otherwise.
    pub fn retire(&mut self, generation: Generation) {
        let queued = self.queued(generation);
        for entry in &mut self.entries {
            if let Entry::Own(group) = entry
                && let Some(i) = group.index(generation)
            {
                // The kernel fills the hole with its last socket.
                group.members.swap_remove(i as usize);
            }
        }
        // Indexes moved: the program must name the users' socket by its new
        // index before another socket joins, or that one would get them.
        self.steer_to(self.users);
        if queued > 0 {
            if steer::migrates_queued() {
                info!(
                    queued,
                    "moved connections left in a retired socket to the serving one"
                );
            } else {
                warn!(
                    queued,
                    "connections left in a retired socket were reset (net.ipv4.tcp_migrate_req is off)"
                );
            }
        }
    }
}

/// How a readiness probe reaches the instance it checks, and only it.
pub(crate) struct ProbeRoute {
    address: SocketAddr,
    users: u32,
    probe: u32,
    /// A socket of the group, to attach the steering program through.
    group: OwnedFd,
}

impl ProbeRoute {
    /// Whether a probe of `target` reaches this group.
    pub fn serves(&self, target: SocketAddr) -> bool {
        target.port() == self.address.port()
            && (self.address.ip().is_unspecified() || self.address.ip() == target.ip())
    }

    /// Connects to `target` from a port this route steers to the instance
    /// under probe; user traffic stays where it was.
    pub async fn connect(&self, target: SocketAddr) -> io::Result<TcpStream> {
        let (socket, any) = match target {
            SocketAddr::V4(_) => (TcpSocket::new_v4()?, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            SocketAddr::V6(_) => (TcpSocket::new_v6()?, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        };
        // Port 0: the kernel picks the port at bind, before any SYN leaves.
        socket.bind(SocketAddr::new(any, 0))?;
        let port = socket.local_addr()?.port();
        steer::attach(
            self.group.as_fd(),
            Route {
                users: self.users,
                probe: Some((port, self.probe)),
            },
        )?;
        let connected = socket.connect(target).await;
        // The SYN has been steered; once the probe's socket closes its port may
        // be any client's, which must not follow it to the probed instance.
        steer::attach(
            self.group.as_fd(),
            Route {
                users: self.users,
                probe: None,
            },
        )?;
        connected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ListenAddress, ListenConfig};
    use std::net::{TcpListener, TcpStream};

    fn one_program_socket() -> (ProgramSockets, SocketAddr) {
        let config = ListenConfig {
            name: "http".into(),
            address: ListenAddress::Tcp("127.0.0.1:0".parse().unwrap()),
            backlog: 16,
            reuse_port: false,
            programs: None,
            per_instance: true,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (held, _) = runtime
            .block_on(crate::listen::bind_all(&[config]))
            .unwrap();
        let (address, _) = held[0].per_instance().expect("steerable here");
        let sockets = distribute(held, &["web"]).pop().unwrap();
        (sockets, address)
    }

    /// Which generation's socket takes a new connection.
    fn taker(
        sockets: &ProgramSockets,
        generations: &[Generation],
        address: SocketAddr,
    ) -> Generation {
        let _client = TcpStream::connect(address).unwrap();
        for _ in 0..200 {
            for g in generations {
                if sockets.queued(*g) > 0 {
                    let fd = sockets.passed(*g)[0].fd.try_clone_to_owned().unwrap();
                    let listener = TcpListener::from(fd);
                    listener.accept().unwrap();
                    return *g;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("no socket took the connection");
    }

    #[test]
    fn users_follow_the_steering_through_generations() {
        let (mut sockets, address) = one_program_socket();
        let mut serving = ProgramSockets::first();
        for _ in 0..4 {
            let next = sockets.add_generation().unwrap();
            // A new socket gets nothing until it is steered to.
            for _ in 0..5 {
                assert_eq!(taker(&sockets, &[serving, next], address), serving);
            }
            assert!(sockets.add_generation().is_err(), "one hand-off at a time");
            sockets.steer_to(next);
            for _ in 0..5 {
                assert_eq!(taker(&sockets, &[serving, next], address), next);
            }
            sockets.retire(serving);
            serving = next;
        }
        assert!(sockets.passed(serving).len() == 1);
    }
}
