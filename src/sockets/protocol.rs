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

/// The holder's answer: what it grants, or why not.
///
/// On the wire it is the flat object every cutover version reads and
/// writes, `ok` and `error` beside the payload (see `ReplyOnWire`): a holder
/// and its takers may run different versions during an image upgrade.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    Ok(Granted),
    Err { error: String },
}

/// What a successful reply carries; `sockets` describe the descriptors
/// attached.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Granted {
    pub sockets: Vec<Offered>,
    pub holder: Option<HolderInfo>,
    pub status: Option<HolderStatus>,
    /// The member id of a `Fresh` socket; the member users went to on `Leave`.
    pub member: Option<u64>,
}

impl Reply {
    pub fn failure(why: impl std::fmt::Display) -> Reply {
        Reply::Err {
            error: why.to_string(),
        }
    }
}

/// `Reply` as every version has sent it: one object whose `ok` and
/// `error` could disagree. Private: only `Reply`'s serde goes through it.
#[derive(Serialize, Deserialize)]
struct ReplyOnWire<'a> {
    ok: bool,
    #[serde(default)]
    error: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    sockets: std::borrow::Cow<'a, [Offered]>,
    #[serde(default)]
    holder: Option<std::borrow::Cow<'a, HolderInfo>>,
    #[serde(default)]
    status: Option<std::borrow::Cow<'a, HolderStatus>>,
    #[serde(default)]
    member: Option<u64>,
}

impl Serialize for Reply {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use std::borrow::Cow::Borrowed;
        // Every field, null or empty when unused, as earlier versions wrote.
        let wire = match self {
            Reply::Ok(granted) => ReplyOnWire {
                ok: true,
                error: None,
                sockets: Borrowed(&granted.sockets),
                holder: granted.holder.as_ref().map(Borrowed),
                status: granted.status.as_ref().map(Borrowed),
                member: granted.member,
            },
            Reply::Err { error } => ReplyOnWire {
                ok: false,
                error: Some(Borrowed(error)),
                sockets: Borrowed(&[]),
                holder: None,
                status: None,
                member: None,
            },
        };
        wire.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Reply {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Reply, D::Error> {
        let wire = ReplyOnWire::deserialize(deserializer)?;
        Ok(match (wire.ok, wire.error) {
            // `ok` with an `error` is no answer a holder gives, but the wire
            // can say it: it is taken as the error, so that nothing is used
            // that the holder may not have meant to grant.
            (_, Some(error)) => Reply::Err {
                error: error.into_owned(),
            },
            // A refusal without a reason: earlier versions read it as an
            // empty one.
            (false, None) => Reply::Err {
                error: String::new(),
            },
            (true, None) => Reply::Ok(Granted {
                sockets: wire.sockets.into_owned(),
                holder: wire.holder.map(std::borrow::Cow::into_owned),
                status: wire.status.map(std::borrow::Cow::into_owned),
                member: wire.member,
            }),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HolderStatus {
    pub holder: Option<HolderInfo>,
    pub sockets: Vec<HeldStatus>,
    pub takers: Vec<Taker>,
    /// Peers refused since the holder started.
    pub refused: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldStatus {
    pub name: String,
    pub address: SocketAddr,
    /// Connections waiting in its accept queue now.
    pub queued: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Taker {
    pub who: String,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub names: Vec<String>,
    pub since: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Reply` as versions before the enum declared it, verbatim: what a
    /// holder or taker of such a version writes and reads.
    #[derive(Debug, Default, Serialize, Deserialize)]
    struct PreviousReply {
        ok: bool,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        sockets: Vec<Offered>,
        #[serde(default)]
        holder: Option<HolderInfo>,
        #[serde(default)]
        status: Option<HolderStatus>,
        #[serde(default)]
        member: Option<u64>,
    }

    fn offered() -> Offered {
        Offered {
            name: "http".into(),
            address: "127.0.0.1:8000".parse().unwrap(),
        }
    }

    fn holder() -> HolderInfo {
        HolderInfo {
            pid: 7,
            instance: "7-1f".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn replies_are_written_in_the_previous_shape() {
        let granted = Reply::Ok(Granted {
            sockets: vec![offered()],
            holder: Some(holder()),
            member: Some(3),
            ..Granted::default()
        });
        assert_eq!(
            serde_json::to_string(&granted).unwrap(),
            r#"{"ok":true,"error":null,"sockets":[{"name":"http","address":"127.0.0.1:8000"}],"holder":{"pid":7,"instance":"7-1f","started_at":"2026-01-01T00:00:00Z"},"status":null,"member":3}"#
        );
        let refused = Reply::failure("no");
        assert_eq!(
            serde_json::to_string(&refused).unwrap(),
            r#"{"ok":false,"error":"no","sockets":[],"holder":null,"status":null,"member":null}"#
        );
        // Byte for byte what the previous struct wrote for the same answers.
        let previous = PreviousReply {
            ok: true,
            sockets: vec![offered()],
            holder: Some(holder()),
            member: Some(3),
            ..PreviousReply::default()
        };
        assert_eq!(
            serde_json::to_string(&granted).unwrap(),
            serde_json::to_string(&previous).unwrap()
        );
        let previous = PreviousReply {
            ok: false,
            error: Some("no".into()),
            ..PreviousReply::default()
        };
        assert_eq!(
            serde_json::to_string(&refused).unwrap(),
            serde_json::to_string(&previous).unwrap()
        );
        // And the previous version reads them back as it meant them.
        let read: PreviousReply =
            serde_json::from_str(&serde_json::to_string(&granted).unwrap()).unwrap();
        assert!(read.ok && read.error.is_none());
        assert_eq!(read.member, Some(3));
        assert_eq!(read.holder, Some(holder()));
        let read: PreviousReply =
            serde_json::from_str(&serde_json::to_string(&refused).unwrap()).unwrap();
        assert!(!read.ok);
        assert_eq!(read.error.as_deref(), Some("no"));
    }

    #[test]
    fn replies_of_the_previous_shape_are_read() {
        let status = HolderStatus {
            holder: Some(holder()),
            refused: 2,
            ..HolderStatus::default()
        };
        let previous = PreviousReply {
            ok: true,
            holder: Some(holder()),
            status: Some(status.clone()),
            ..PreviousReply::default()
        };
        let read: Reply = serde_json::from_str(&serde_json::to_string(&previous).unwrap()).unwrap();
        assert_eq!(
            read,
            Reply::Ok(Granted {
                holder: Some(holder()),
                status: Some(status),
                ..Granted::default()
            })
        );
        let read: Reply = serde_json::from_str(
            r#"{"ok":false,"error":"the holder has no socket named `https` (it holds [\"http\"])","sockets":[],"holder":null,"status":null,"member":null}"#,
        )
        .unwrap();
        assert_eq!(
            read,
            Reply::failure("the holder has no socket named `https` (it holds [\"http\"])")
        );
        // Fields left out are defaults, as the previous struct had them.
        let read: Reply = serde_json::from_str(r#"{"ok":true,"member":4}"#).unwrap();
        assert_eq!(
            read,
            Reply::Ok(Granted {
                member: Some(4),
                ..Granted::default()
            })
        );
        let read: Reply = serde_json::from_str(r#"{"ok":false}"#).unwrap();
        assert_eq!(read, Reply::failure(""));
        assert!(
            serde_json::from_str::<Reply>(r#"{"error":"no"}"#).is_err(),
            "`ok` is required"
        );
    }

    /// `ok` and an `error` at once: the error wins, the rest is dropped.
    #[test]
    fn a_reply_both_ok_and_failed_is_a_failure() {
        let read: Reply = serde_json::from_str(
            r#"{"ok":true,"error":"half done","sockets":[{"name":"http","address":"127.0.0.1:8000"}],"member":1}"#,
        )
        .unwrap();
        assert_eq!(read, Reply::failure("half done"));
    }
}
