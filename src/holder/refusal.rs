//! Why the holder turns down a taker's request about its sockets, with what
//! each refusal concerns (the group, the lease, the member). A refusal
//! reaches the taker as its text, in the reply's `error`: the texts are
//! those takers have always shown (and tests look for).

use std::net::SocketAddr;

/// A name the holder holds no socket of.
#[derive(Debug, thiserror::Error)]
#[error("the holder has no socket named `{name}` (it holds {held:?})")]
pub(super) struct NoSuchSocket {
    pub name: String,
    /// The names it does hold.
    pub held: Vec<String>,
}

/// Why a request about a per-instance group (`Fresh`, `Steer`, `Retire`,
/// `Leave`) failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum GroupError {
    #[error(transparent)]
    NoSuchSocket(#[from] NoSuchSocket),
    #[error("no socket {member} of yours in `{group}`")]
    NotLeased {
        group: String,
        member: u64,
        lease: u64,
    },
    /// Per-instance sockets in a group that sockets of others share.
    #[error(
        "{address} is shared with sockets of another holder still held by takers (one network namespace): per-instance sockets need a group of the holder's own; restart those takers, or run the holder in a network namespace of its own"
    )]
    SharedWithOthers { group: String, address: SocketAddr },
    #[error("`{group}` has {max} sockets in use already")]
    Full { group: String, max: usize },
    #[error("cannot bind {address}: {source}")]
    Bind {
        group: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    /// The holder's descriptor of the member could not be duplicated for
    /// the taker; the text is the system's alone, as it always was.
    #[error("{source}")]
    Duplicate {
        group: String,
        member: u64,
        source: std::io::Error,
    },
    #[error("cannot steer `{group}`: {source}")]
    Steer {
        group: String,
        source: std::io::Error,
    },
    /// The task that owns the groups is gone: the holder is on its way out.
    #[error("the holder is stopping")]
    Stopping,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takers show these texts, and tests look for them: they are the ones
    /// the holder sent when they were formatted strings.
    #[test]
    fn refusals_read_as_they_always_did() {
        let missing = GroupError::from(NoSuchSocket {
            name: "https".into(),
            held: vec!["http".into()],
        });
        assert_eq!(
            missing.to_string(),
            "the holder has no socket named `https` (it holds [\"http\"])"
        );
        let not_leased = GroupError::NotLeased {
            group: "http".into(),
            member: 3,
            lease: 7,
        };
        assert_eq!(not_leased.to_string(), "no socket 3 of yours in `http`");
        let full = GroupError::Full {
            group: "http".into(),
            max: 64,
        };
        assert_eq!(full.to_string(), "`http` has 64 sockets in use already");
        assert_eq!(GroupError::Stopping.to_string(), "the holder is stopping");
    }
}
