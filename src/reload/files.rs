//! Filesystem triggers: touch files (what an Ansible or SSH task pokes after
//! a `git pull` on the host) and, in dev mode, watched source files.
//!
//! inotify watches the touch file's directory, so the file may appear later
//! and may be replaced atomically. One `touch` produces several events
//! (open, attrib, close-write); events for the same file within `SAME_TOUCH`
//! count as one trigger.
//!
//! The dev-mode watch stays inside its tree: symlinked directories are not
//! descended into, and an event whose directory resolves outside the tree
//! (a link to /etc, to the volume) is ignored, so code in the release cannot
//! make cutover watch or react to files elsewhere.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tracing::{debug, info};

use crate::config::ReloadConfig;
use crate::reload::ReloadQueue;
use crate::reload::trigger::Trigger;

/// Events closer than this on one file are one touch.
const SAME_TOUCH: Duration = Duration::from_millis(20);

/// Keeps the watches alive; dropping it stops them.
pub struct Triggers {
    _watchers: Vec<RecommendedWatcher>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {}: {source}", .path.display())]
pub struct WatchError {
    path: PathBuf,
    source: notify::Error,
}

pub fn start(
    config: &ReloadConfig,
    default_root: &Path,
    queue: &ReloadQueue,
) -> Result<Triggers, WatchError> {
    let mut watchers = Vec::new();
    if !config.touch.is_empty() {
        watchers.push(touch_watcher(&config.touch, queue.clone())?);
    }
    if !config.watch.is_empty() {
        let root = config.watch_root.as_deref().unwrap_or(default_root);
        watchers.push(source_watcher(root, &config.watch, queue.clone())?);
    }
    Ok(Triggers {
        _watchers: watchers,
    })
}

fn counts_as_touch(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Modify(
                ModifyKind::Data(_)
                    | ModifyKind::Metadata(_)
                    | ModifyKind::Name(RenameMode::To | RenameMode::Both | RenameMode::Any)
                    | ModifyKind::Any
            )
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

fn touch_watcher(files: &[PathBuf], queue: ReloadQueue) -> Result<RecommendedWatcher, WatchError> {
    let wanted: Vec<PathBuf> = files.to_vec();
    let mut last: HashMap<PathBuf, Instant> = HashMap::new();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !counts_as_touch(&event.kind) {
            return;
        }
        for path in &event.paths {
            if !wanted.iter().any(|w| w == path) {
                continue;
            }
            let now = Instant::now();
            // Measured from the last trigger sent, not the last event, so a
            // steady stream of touches still sends one every SAME_TOUCH.
            let repeat = last
                .get(path)
                .is_some_and(|t| now.duration_since(*t) < SAME_TOUCH);
            if !repeat {
                last.insert(path.clone(), now);
                queue.trigger(Trigger::Touch(path.clone()));
            }
        }
    })
    .map_err(|source| WatchError {
        path: files[0].clone(),
        source,
    })?;
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError {
                path: dir.to_path_buf(),
                source,
            })?;
        info!(dir = %dir.display(), "watching for touch files");
    }
    Ok(watcher)
}

/// Dev mode: any change to a file matching one of `patterns` under `root`.
fn source_watcher(
    root: &Path,
    patterns: &[String],
    queue: ReloadQueue,
) -> Result<RecommendedWatcher, WatchError> {
    let mut builder = globset::GlobSetBuilder::new();
    for p in patterns {
        // Validated with the config.
        if let Ok(glob) = globset::Glob::new(p) {
            builder.add(glob);
        }
    }
    let set = builder
        .build()
        .unwrap_or_else(|_| globset::GlobSet::empty());
    let root_owned = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let base = root_owned.clone();
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let relevant = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_))
        );
        if !relevant {
            return;
        }
        for path in &event.paths {
            let Ok(rel) = path.strip_prefix(&base) else {
                continue;
            };
            if rel.components().any(|c| c.as_os_str() == ".git") || !set.is_match(rel) {
                continue;
            }
            if !really_under(&base, path) {
                debug!(path = %rel.display(), "change outside the watched tree (through a symlink) ignored");
                continue;
            }
            debug!(path = %rel.display(), "watched file changed");
            queue.trigger(Trigger::Watch(rel.to_path_buf()));
            break;
        }
    };
    // notify follows symlinked directories by default, which would put
    // inotify watches on whatever a link in the release points to (/etc, the
    // whole volume): changes there must neither be watched nor reload.
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut watcher = RecommendedWatcher::new(handler, config).map_err(|source| WatchError {
        path: root.to_path_buf(),
        source,
    })?;
    watcher
        .watch(&root_owned, RecursiveMode::Recursive)
        .map_err(|source| WatchError {
            path: root_owned.clone(),
            source,
        })?;
    info!(root = %root_owned.display(), patterns = ?patterns, "watching source files (dev mode)");
    Ok(watcher)
}

/// Whether `path` (reported under `base`) is inside `base` once its
/// directory's symlinks are resolved: a link in the tree may lead out of it
/// even with notify told not to follow links (a directory linked in later).
/// The file itself may be gone (a removal) or be a link (a change to the
/// link is a change in the tree), so only its directory is resolved.
fn really_under(base: &Path, path: &Path) -> bool {
    let Some(dir) = path.parent() else {
        return false;
    };
    std::fs::canonicalize(dir).is_ok_and(|dir| dir.starts_with(base))
}
