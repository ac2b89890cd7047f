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
//! nothing left to drop, so nothing depends on the kernel moving a retired
//! socket's queue (net.ipv4.tcp_migrate_req, off by default).
//!
//! This cutover's groups hold at most two of its sockets, the serving
//! generation's and the next one's (`group`), so a retired socket's slot
//! can only be taken by the one that stays. A socket taken `from` a holder
//! is in the holder's group, steered by the holder, where no member ever
//! leaves (holder/groups.rs); until the first instance is ready there,
//! users stay where they were, and when this cutover stops they go to
//! another container's instance first, if one serves.

use std::io;
use std::sync::Arc;

use tracing::{info, warn};

pub(crate) use super::port_group::Generation;
use super::port_group::Group;
pub(crate) use super::probe::ProbeRoute;
use crate::process::spawn::PassedFd;
use crate::sockets::held::HeldSocket;

/// One program's sockets, in the order of `[[listen]]` (fd 3, 4, ...).
pub(crate) struct ProgramSockets {
    entries: Vec<Entry>,
    latest: Generation,
    /// Where user traffic goes.
    users: Generation,
    /// A holder's group has not been steered to this program yet.
    users_elsewhere: bool,
}

enum Entry {
    Shared(Arc<HeldSocket>),
    Own(Group),
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
                let name = socket.name.clone();
                let holder = socket.holder.clone();
                let group = Group::new(name, socket.into_fd(), address, backlog, holder);
                entries[*only].push(Entry::Own(group));
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
        .map(|entries| {
            let users_elsewhere = entries
                .iter()
                .any(|e| matches!(e, Entry::Own(g) if g.held()));
            ProgramSockets {
                entries,
                latest: Generation(0),
                users: Generation(0),
                users_elsewhere,
            }
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

    /// Whether users are not steered to this program yet (a holder's group,
    /// before its first instance is ready).
    pub fn users_elsewhere(&self) -> bool {
        self.users_elsewhere
    }

    fn groups(&self) -> impl Iterator<Item = &Group> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Own(g) => Some(g),
            Entry::Shared(_) => None,
        })
    }

    fn groups_mut(&mut self) -> impl Iterator<Item = &mut Group> {
        self.entries.iter_mut().filter_map(|e| match e {
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

    /// A restarted holder: its groups are new ones, users wait in its
    /// backlog until an instance of this program is ready there.
    pub fn replace_holder(&mut self, link: &crate::sockets::link::HolderLink) -> bool {
        let mut replaced = false;
        for group in self.groups_mut() {
            replaced |= group.replace_holder(link);
        }
        if replaced {
            self.users_elsewhere = true;
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
                    .find(|m| m.generation == generation)
                    .map(|m| PassedFd {
                        name: &g.name,
                        fd: std::os::fd::AsFd::as_fd(&m.fd),
                    }),
            })
            .collect()
    }

    /// Binds a socket of a new generation in every group. Nothing reaches it
    /// until it is steered to.
    pub async fn add_generation(&mut self) -> io::Result<Generation> {
        let next = Generation(self.latest.0 + 1);
        if self.groups().any(|g| g.members.len() > 1) {
            // One hand-off at a time: a third socket would mean one was never
            // retired, and users could be steered to a socket nobody serves.
            return Err(io::Error::other("the previous hand-off has not finished"));
        }
        let mut added = Vec::new();
        let mut failed = None;
        for group in self.groups_mut() {
            match group.add(next).await {
                Ok(()) => added.push(group.name.clone()),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            // None of the new generation's sockets may stay behind.
            for group in self.groups_mut() {
                group.retire(next).await;
            }
            return Err(e);
        }
        self.latest = next;
        Ok(next)
    }

    /// Sends every new connection to `generation`'s sockets.
    pub async fn steer_to(&mut self, generation: Generation) {
        self.users = generation;
        self.users_elsewhere = false;
        for group in self.groups() {
            group.steer_to(generation).await;
        }
    }

    /// This cutover is stopping: users of a holder's groups go to another
    /// live taker if one serves; whether any did.
    pub async fn leave(&mut self) -> bool {
        let mut moved = false;
        for group in self.groups() {
            moved |= group.leave().await;
        }
        if moved {
            self.users_elsewhere = true;
        }
        moved
    }

    /// For readiness probes of `probe` while users stay on `users` (or,
    /// for a holder's group, wherever the holder sends them).
    pub fn probe_routes(&self, users: Generation, probe: Generation) -> Vec<ProbeRoute> {
        self.groups()
            .filter_map(|g| g.probe_route(users, probe))
            .collect()
    }

    /// Connections waiting in `generation`'s accept queues.
    pub fn queued(&self, generation: Generation) -> u32 {
        self.groups()
            .flat_map(|g| g.members.iter().filter(|m| m.generation == generation))
            .map(|m| crate::sockets::steer::queued(std::os::fd::AsFd::as_fd(&m.fd)).unwrap_or(0))
            .sum()
    }

    /// Takes `generation`'s sockets out of their groups once no instance of
    /// it runs. Their queued connections move to the sockets that remain,
    /// when the kernel migrates them; they are reset otherwise.
    pub async fn retire(&mut self, generation: Generation) {
        let mut queued = 0;
        for group in self.groups_mut() {
            queued += group.retire(generation).await;
        }
        // Indexes moved: the program must name the users' socket by its new
        // index before another socket joins, or that one would get them.
        if !self.users_elsewhere {
            self.steer_to(self.users).await;
        }
        if queued > 0 {
            if crate::sockets::steer::migrates_queued() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ListenAddress, ListenConfig};
    use std::net::{SocketAddr, TcpListener, TcpStream};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn one_program_socket(runtime: &tokio::runtime::Runtime) -> (ProgramSockets, SocketAddr) {
        let config = ListenConfig {
            name: "http".into(),
            address: ListenAddress::Tcp("127.0.0.1:0".parse().unwrap()),
            backlog: 16,
            reuse_port: false,
            programs: None,
            per_instance: true,
        };
        let (held, _) = runtime
            .block_on(crate::sockets::held::bind_all(&[config]))
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
        let rt = runtime();
        let (mut sockets, address) = one_program_socket(&rt);
        let mut serving = ProgramSockets::first();
        for _ in 0..4 {
            let next = rt.block_on(sockets.add_generation()).unwrap();
            // A new socket gets nothing until it is steered to.
            for _ in 0..5 {
                assert_eq!(taker(&sockets, &[serving, next], address), serving);
            }
            assert!(
                rt.block_on(sockets.add_generation()).is_err(),
                "one hand-off at a time"
            );
            rt.block_on(sockets.steer_to(next));
            for _ in 0..5 {
                assert_eq!(taker(&sockets, &[serving, next], address), next);
            }
            rt.block_on(sockets.retire(serving));
            serving = next;
        }
        assert!(sockets.passed(serving).len() == 1);
    }
}
