//! The messages between `cutover hold` and the cutovers that take its
//! sockets, as JSON on `wire`: what a taker asks, what the holder answers,
//! and what `cutover status --holder` shows.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// What a cutover asks the holder.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum Request {
    /// The listening sockets named, attached in that order. The connection
    /// stays open for as long as the sockets are used.
    Take {
        names: Vec<String>,
        /// Shown in the holder's status: the taker's hostname.
        who: String,
        /// Sockets it will ask `Fresh` ones of (per instance), for the status.
        #[serde(default)]
        fresh: Vec<String>,
    },
    Status,
    /// A listening socket in the group of `name` for this taker's next
    /// instance, in the holder's network namespace: the one users wait in
    /// if no live taker serves them, else an idle one, else a new one.
    Fresh {
        name: String,
    },
    /// New connections of `name`'s group to member `users` (None: where
    /// they go now), and those from local port `probe.0` to member `probe.1`.
    Steer {
        name: String,
        users: Option<u64>,
        probe: Option<(u16, u64)>,
        /// The probe's local address: with the port, what only it has.
        #[serde(default)]
        probe_from: Option<std::net::IpAddr>,
    },
    /// This taker is done with member `member` of `name`'s group: it stays
    /// in the group, idle, for the next instance that needs a socket.
    Retire {
        name: String,
        member: u64,
    },
    /// This taker is about to stop: users of `name` go to another live
    /// taker's socket if one serves (`member` of the reply names it), so
    /// that this one can drain what it has queued first.
    Leave {
        name: String,
    },
}

/// The holder's answer; `sockets` describe the descriptors attached.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Reply {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub sockets: Vec<Offered>,
    #[serde(default)]
    pub holder: Option<HolderInfo>,
    #[serde(default)]
    pub status: Option<HolderStatus>,
    /// The member id of a `Fresh` socket; the member users went to on `Leave`.
    #[serde(default)]
    pub member: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Offered {
    pub name: String,
    pub address: SocketAddr,
}

/// Which holder answered: a restarted holder (a new network namespace, new
/// sockets) has another `instance`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HolderInfo {
    pub pid: u32,
    pub instance: String,
    pub started_at: String,
}

/// `cutover status --holder`: what the holder holds and who took it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HolderStatus {
    pub holder: Option<HolderInfo>,
    pub sockets: Vec<HeldStatus>,
    pub takers: Vec<Taker>,
    /// Peers refused since the holder started.
    pub refused: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldStatus {
    pub name: String,
    pub address: SocketAddr,
    /// Connections waiting in its accept queue now.
    pub queued: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Taker {
    pub who: String,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub names: Vec<String>,
    pub since: String,
}
