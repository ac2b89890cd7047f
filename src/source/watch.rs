//! Waiting helpers of the source actor: the poll timer, program events for
//! the rollback window, and the watch on a local bare repository's refs that
//! turns a `git push` into a deploy without polling.

use std::path::Path;

use tokio::sync::broadcast;
use tracing::info;

use super::SourceHandle;
use crate::program::ProgramEvent;

pub(super) async fn tick(poll: &mut Option<tokio::time::Interval>) {
    match poll {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

pub(super) async fn next_event(
    events: &mut Option<broadcast::Receiver<ProgramEvent>>,
) -> Option<ProgramEvent> {
    match events {
        Some(rx) => match rx.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(_)) => None,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// A bare repository on this machine (`[source] repo` is a path): watch its
/// refs so a `git push` into it deploys without polling.
pub(super) fn git_push_watcher(
    repo: &str,
    handle: SourceHandle,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let path = Path::new(repo.strip_prefix("file://").unwrap_or(repo));
    if !path.is_absolute() || !path.join("refs").is_dir() {
        return None;
    }
    let refs = path.join("refs");
    let packed = path.join("packed-refs");
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let relevant = event.paths.iter().any(|p| {
            (p.starts_with(&refs) || p == &packed) && p.extension().is_none_or(|e| e != "lock")
        });
        if relevant {
            handle.deploy(crate::reload::trigger::Trigger::Push);
        }
    })
    .ok()?;
    watcher
        .watch(&path.join("refs"), RecursiveMode::Recursive)
        .ok()?;
    watcher.watch(path, RecursiveMode::NonRecursive).ok()?;
    info!(repo = %path.display(), "watching the repository for pushes");
    Some(watcher)
}
