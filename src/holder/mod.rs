//! `cutover hold`: systemd socket activation across containers.
//!
//! A tiny long-lived cutover binds the published ports once and hands the
//! listening sockets to the cutover of any app container that asks, over a
//! unix socket on a shared volume (SCM_RIGHTS). The ports then outlive every
//! app container: while none is there (a `docker compose up -d` recreating
//! it, a crash), connections wait in the holder's backlog instead of being
//! refused, and two app containers can serve the same port side by side.
//!
//! Who may take the sockets is checked twice: the socket file's mode (0600,
//! or 0660 with `--allow-gid`) and the peer's credentials (SO_PEERCRED),
//! with a clear refusal on both sides. Each taker keeps its connection open:
//! the holder lists who holds what, and sees a container go away.
//!
//! `server` is the holder, `taker` one taker's connection, `members` its
//! per-instance groups (owned by `group_owner`), `refusal` why a request
//! is turned down, `endpoint` its /healthz and /status, `rescue` what a
//! gone taker left queued. The
//! messages and the app side are `crate::sockets` (`protocol`, `take`).

mod endpoint;
mod group_owner;
mod members;
mod refusal;
mod rescue;
mod server;
mod taker;

use std::net::SocketAddr;

pub(crate) use crate::sockets::protocol::{HeldStatus, HolderStatus};
pub(crate) use crate::sockets::take::status;
pub(crate) use server::{HoldConfig, run};

/// A `--listen` value `cutover hold` cannot use.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ListenArgError {
    #[error("--listen {value}: write NAME=ADDRESS, e.g. http=0.0.0.0:8000")]
    NoName { value: String },
    #[error("--listen {value}: each socket needs a name of its own")]
    NameTaken { value: String },
    #[error("--listen {value}: `{address}` is not an IP:PORT address")]
    NotAnAddress { value: String, address: String },
}

/// `--listen NAME=ADDRESS` values of `cutover hold`.
pub(crate) fn parse_listen(values: &[String]) -> Result<Vec<(String, SocketAddr)>, ListenArgError> {
    let mut out: Vec<(String, SocketAddr)> = Vec::new();
    for value in values {
        let (name, address) = value
            .split_once('=')
            .ok_or_else(|| ListenArgError::NoName {
                value: value.clone(),
            })?;
        if name.is_empty() || out.iter().any(|(n, _)| n == name) {
            return Err(ListenArgError::NameTaken {
                value: value.clone(),
            });
        }
        let address = address.parse().map_err(|_| ListenArgError::NotAnAddress {
            value: value.clone(),
            address: address.to_string(),
        })?;
        out.push((name.to_string(), address));
    }
    Ok(out)
}

/// The text of `cutover status --holder`.
pub(crate) fn render(status: &HolderStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if let Some(h) = &status.holder {
        let _ = writeln!(
            out,
            "holder pid {} since {} (instance {})",
            h.pid, h.started_at, h.instance
        );
    }
    for s in &status.sockets {
        let _ = writeln!(out, "  {} {} ({} queued)", s.name, s.address, s.queued);
    }
    if status.takers.is_empty() {
        let _ = writeln!(out, "no taker now");
    }
    for t in &status.takers {
        let who = crate::redact::escape_controls(&t.who);
        let _ = writeln!(
            out,
            "taken by {who} (pid {} uid {} gid {}) since {}: {}",
            t.pid,
            t.uid,
            t.gid,
            t.since,
            t.names.join(", ")
        );
    }
    let _ = writeln!(out, "refused peers: {}", status.refused);
    out
}
