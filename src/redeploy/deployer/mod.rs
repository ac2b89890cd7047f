//! `[redeploy] deployer`: the app side of `cutover deployer`. This container
//! has no engine socket; it names the release to the deployer, which alone
//! decides how it is built and what the new container may have, and waits
//! for the answer (or for its own SIGTERM, when the deployer replaces it).

pub(crate) mod trusted;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::info;

use super::{Redeploy, RedeployError, RedeployOutcome};
use crate::sockets::wire::{Conn, discard};

/// What an app's cutover asks.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// A directory name in the deployer's `releases` (never a path).
    pub release: String,
    pub sha: String,
    pub git_ref: String,
    pub changed_files: Vec<String>,
}

/// The deployer's answer: one or the other, never both.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployReply {
    /// What it did.
    Done(String),
    /// Why not; `is_final` when asking again for this commit would fail the
    /// same way.
    Failed { message: String, is_final: bool },
}

/// Turns a reply into the app side's result.
fn outcome(reply: DeployReply, socket: &Path) -> Result<String, RedeployError> {
    match reply {
        DeployReply::Done(what) => Ok(what),
        DeployReply::Failed { message, is_final } => Err(RedeployError::Deployer {
            socket: socket.display().to_string(),
            message,
            is_final,
        }),
    }
}

pub(super) async fn ask(
    socket: &Path,
    timeout: Duration,
    request: &Redeploy,
) -> Result<RedeployOutcome, RedeployError> {
    let fail = |message: String| RedeployError::Deployer {
        socket: socket.display().to_string(),
        message,
        is_final: false,
    };
    // The deployer sees the volume at its own path: it gets the release's
    // name, `current` resolved, and finds it in its own releases directory.
    let dir = request.release_dir.clone();
    let resolved = tokio::task::spawn_blocking(move || std::fs::canonicalize(&dir))
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(format!("{}: {e}", request.release_dir.display())))?;
    let release = resolved
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| fail(format!("{} names no release", resolved.display())))?
        .to_string();
    let conn = Conn::connect(socket).map_err(|e| {
        fail(format!(
            "cannot reach it: {e} (is the deployer container up, with this path on a shared volume?)"
        ))
    })?;
    let message = DeployRequest {
        release,
        sha: request.sha.clone(),
        git_ref: request.git_ref.clone(),
        changed_files: request.changed_files.clone(),
    };
    conn.send(&message, &[])
        .await
        .map_err(|e| fail(format!("cannot send the request: {e}")))?;
    info!(release = %message.release, sha = %message.sha, "redeploy: asked the deployer; it builds and replaces this container");
    let answer = tokio::time::timeout(timeout, conn.recv::<DeployReply>())
        .await
        .map_err(|_| {
            fail(format!(
                "no answer within {} (`[redeploy] timeout`): is its engine hung?",
                humantime::format_duration(timeout)
            ))
        })?;
    match answer {
        Ok(Some((reply, fds))) => {
            discard(fds);
            outcome(reply, socket).map(RedeployOutcome::Deployed)
        }
        Ok(None) => Err(fail("it went away before answering".into())),
        Err(e) => Err(fail(format!("unreadable answer: {e}"))),
    }
}
