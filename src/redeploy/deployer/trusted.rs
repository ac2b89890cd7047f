//! `cutover deployer`: the trusted side of a docker redeploy.
//!
//! With `[redeploy] docker`, the engine's socket sits in the app container,
//! whose next image the commit being deployed builds: whoever can push is
//! root on the host. The deployer moves the socket out. It runs in a
//! container of its own, from an image the operator chose and no commit
//! builds, with the engine's socket and the code volume; the app containers
//! have neither the socket nor any say in what the deployer does. They ask,
//! over a unix socket on a shared volume (peer-checked, like the holder's),
//! for one thing: build release `<name>` of the deployer's `releases`
//! directory and replace the configured container with it. Everything else
//! (which container, the Dockerfile policy, what the new container may
//! have, its user) comes from the deployer's own file (`[deployer]`).
//!
//! A request is one message, its answer another, on the holder's wire
//! (SOCK_SEQPACKET, JSON). One redeploy at a time: a request while one runs
//! is refused, not queued. When the replaced container is the asker, its
//! cutover is stopped (SIGTERM) before the answer; that is the intended end.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::config::DeployerConfig;
use crate::redeploy::{DeployReply, DeployRequest, Redeploy};
use crate::sockets::wire::{Conn, Listener, discard};

/// Longest `changed_files` list and entry a request may carry.
const MAX_CHANGED: usize = 10_000;
const MAX_TEXT: usize = 4096;
/// A peer that connects and says nothing is dropped after this.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DeployerError {
    #[error("cannot create the socket {}: {source}", .path.display())]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot handle signals: {0}")]
    Signals(std::io::Error),
}

struct Shared {
    config: DeployerConfig,
    /// Held while a redeploy runs: one at a time.
    busy: Mutex<()>,
}

/// Serves requests until SIGTERM or SIGINT; the exit code.
pub async fn run(config: DeployerConfig) -> Result<i32, DeployerError> {
    if !config.releases.is_dir() {
        warn!(releases = %config.releases.display(), "the releases directory is not there (yet): mount the code volume");
    }
    let owner = config
        .docker
        .confine
        .as_ref()
        .and_then(|c| c.user.split_once(':'))
        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
    // The confined user (the new containers') must reach it; root in the
    // first container does anyway. Everyone else is refused twice: by the
    // mode and by the peer check.
    let listener = Listener::bind(
        &config.socket,
        0o600,
        owner.map(|(u, _)| u),
        owner.map(|(_, g)| g),
    )
    .map_err(|source| DeployerError::Socket {
        path: config.socket.clone(),
        source,
    })?;
    info!(
        socket = %config.socket.display(),
        releases = %config.releases.display(),
        container = config.docker.container.as_deref().unwrap_or_default(),
        uids = ?config.allow_uids,
        "deployer waiting for requests"
    );
    let socket = config.socket.clone();
    let shared = Arc::new(Shared {
        config,
        busy: Mutex::new(()),
    });
    let mut terminate = signal(SignalKind::terminate()).map_err(DeployerError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DeployerError::Signals)?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => { tokio::spawn(serve(conn, shared.clone())); }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    info!("deployer stopping");
    let _ = std::fs::remove_file(&socket);
    Ok(0)
}

async fn serve(conn: Conn, shared: Arc<Shared>) {
    let reply = answer(&conn, &shared).await;
    match &reply {
        DeployReply::Done(what) => info!(outcome = %what, "redeploy done"),
        DeployReply::Failed { message, .. } => {
            warn!(error = %message, "redeploy refused or failed")
        }
    }
    // The asker may be the container just stopped: nobody to tell then.
    let _ = conn.send(&reply, &[]).await;
}

async fn answer(conn: &Conn, shared: &Shared) -> DeployReply {
    let refuse = |message: String| DeployReply::Failed {
        message,
        is_final: false,
    };
    let peer = match conn.peer() {
        Ok(p) => p,
        Err(e) => return refuse(format!("cannot tell who asks: {e}")),
    };
    if !shared.config.allow_uids.contains(&peer.uid()) {
        return refuse(format!(
            "refused by the deployer: uid {} may not ask (allowed: {:?}, [deployer] allow_uids)",
            peer.uid(),
            shared.config.allow_uids
        ));
    }
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, conn.recv::<DeployRequest>()).await {
        Ok(Ok(Some((request, fds)))) => {
            discard(fds);
            request
        }
        Ok(Ok(None)) => return refuse("no request".into()),
        Ok(Err(e)) => return refuse(format!("unreadable request: {e}")),
        Err(_) => return refuse(format!("no request within {REQUEST_TIMEOUT:?}")),
    };
    let redeploy = match checked(&request, &shared.config.releases) {
        Ok(r) => r,
        Err(e) => return refuse(format!("refused by the deployer: {e}")),
    };
    let Ok(_one_at_a_time) = shared.busy.try_lock() else {
        return refuse("the deployer is already running a redeploy; ask again later".into());
    };
    info!(
        uid = peer.uid(), release = %request.release, sha = %redeploy.sha,
        changed = ?redeploy.changed_files, "redeploy requested"
    );
    match crate::redeploy::replace_container(&shared.config.docker, &redeploy).await {
        Ok(outcome) => DeployReply::Done(outcome.to_string()),
        Err(e) => DeployReply::Failed {
            is_final: e.is_final(),
            message: e.to_string(),
        },
    }
}

/// Why a request names no release the deployer builds.
#[derive(Debug, thiserror::Error)]
enum NotARelease {
    #[error("{release:?} is not the name of a release directory")]
    NotAName { release: String },
    #[error("{sha:?} is not a commit id")]
    NotACommit { sha: String },
    #[error("release {release} is not commit {sha}")]
    OtherCommit { release: String, sha: String },
    /// More files than `MAX_CHANGED`, or a file name or ref over `MAX_TEXT`.
    #[error("the changed files' list is too long")]
    TooMuchText { files: usize },
    #[error("{} is not a directory", .dir.display())]
    NotADirectory { dir: PathBuf },
    #[error("{}: {source}", .dir.display())]
    Unreadable {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// The request as a redeploy of a release in `releases`, or why not: a
/// plain name of a real directory there (no path, no symlink), and the
/// commit it is named after when it is named after one.
fn checked(request: &DeployRequest, releases: &Path) -> Result<Redeploy, NotARelease> {
    let name = request.release.as_str();
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && name.len() <= 255
        && !name.chars().any(char::is_control);
    if !plain {
        return Err(NotARelease::NotAName {
            release: name.to_string(),
        });
    }
    if !is_commit_id(&request.sha) {
        return Err(NotARelease::NotACommit {
            sha: request.sha.clone(),
        });
    }
    if is_commit_id(name) && name != request.sha {
        return Err(NotARelease::OtherCommit {
            release: name.to_string(),
            sha: request.sha.clone(),
        });
    }
    let texts = request.changed_files.iter().chain([&request.git_ref]);
    if request.changed_files.len() > MAX_CHANGED || texts.into_iter().any(|t| t.len() > MAX_TEXT) {
        return Err(NotARelease::TooMuchText {
            files: request.changed_files.len(),
        });
    }
    let dir = releases.join(name);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(NotARelease::NotADirectory { dir }),
        Err(source) => return Err(NotARelease::Unreadable { dir, source }),
    }
    Ok(Redeploy {
        sha: request.sha.clone(),
        git_ref: request.git_ref.clone(),
        changed_files: request.changed_files.clone(),
        release_dir: dir,
    })
}

/// Full lowercase hex of SHA-1 or SHA-256.
fn is_commit_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn request(release: &str, sha: &str) -> DeployRequest {
        DeployRequest {
            release: release.into(),
            sha: sha.into(),
            git_ref: "main".into(),
            changed_files: vec!["requirements.txt".into()],
        }
    }

    #[test]
    fn requests_name_a_real_release_directory_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(SHA)).unwrap();
        std::fs::create_dir(dir.path().join("v2")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("linked")).unwrap();
        let ok = checked(&request(SHA, SHA), dir.path()).unwrap();
        assert_eq!(ok.release_dir, dir.path().join(SHA));
        assert!(checked(&request("v2", SHA), dir.path()).is_ok());
        for (release, sha, why) in [
            ("../etc", SHA, "not the name"),
            ("..", SHA, "not the name"),
            ("", SHA, "not the name"),
            ("linked", SHA, "not a directory"),
            ("missing", SHA, "No such file"),
            (SHA, "main", "not a commit id"),
            (
                SHA,
                "1111111111111111111111111111111111111111",
                "is not commit",
            ),
        ] {
            let err = checked(&request(release, sha), dir.path())
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{release} {sha}: {err}");
        }
    }
}
