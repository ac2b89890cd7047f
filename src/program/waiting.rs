//! Waiting without an instance: for a first release whose workdir does not
//! exist yet, and for a restart's backoff. Commands are answered meanwhile,
//! and a reload cuts the wait short.

use std::time::Duration;

use tokio::time::sleep;
use tracing::info;

use super::instance::Instance;
use super::reload_request::ReloadRequest;
use super::state::ProgramState;
use super::{Flow, Program};

/// How often a program waiting for its first release looks for its workdir.
const WORKDIR_POLL: Duration = Duration::from_millis(250);

impl Program {
    /// Whether `instance` was started in the directory the workdir names
    /// now (`current` resolved, off the runtime thread).
    pub(super) async fn runs_current(&self, instance: &Instance) -> bool {
        let (Some(workdir), Some(dir)) = (self.config.workdir.clone(), instance.dir.clone()) else {
            return false;
        };
        tokio::task::spawn_blocking(move || std::fs::canonicalize(workdir).ok())
            .await
            .ok()
            .flatten()
            .is_some_and(|now| now == dir)
    }

    /// Before the first start: a workdir that does not exist yet is a
    /// release still to come (a host that deploys into an empty volume, the
    /// first run of a playbook), so the program waits for it instead of
    /// failing to start in a loop. Commands are answered meanwhile; a reload
    /// (the touch after the first checkout) starts it at once. None when
    /// stopped meanwhile, else the reload to answer once started.
    pub(super) async fn wait_for_workdir(&mut self) -> Option<Option<ReloadRequest>> {
        let Some(workdir) = self.config.workdir.clone() else {
            return Some(None);
        };
        // Off the runtime thread: a volume may be slow.
        let look = |what: fn(&std::path::Path) -> bool| {
            let workdir = workdir.clone();
            async move {
                tokio::task::spawn_blocking(move || what(&workdir))
                    .await
                    .unwrap_or(false)
            }
        };
        // Follows symlinks: a `current` that points at nothing is no release.
        let exists = || look(std::path::Path::exists);
        if exists().await || !look(awaits_release).await {
            // There, or wrong (its directory is missing too): launching says so.
            return Some(None);
        }
        info!(
            program = %self.config.name,
            workdir = %workdir.display(),
            "waiting for the first release: the workdir does not exist yet; the program \
             starts once it does (or on a reload)"
        );
        self.set_state(ProgramState::WaitingForRelease);
        loop {
            tokio::select! {
                () = sleep(WORKDIR_POLL) => {
                    if exists().await {
                        self.first_release_starting = true;
                        return Some(None);
                    }
                }
                command = self.commands.recv(), if !self.commands.is_closed() => {
                    match self.answer(command, &[]) {
                        None => {}
                        Some(Flow::Stop { .. }) => return None,
                        Some(Flow::Reload(request)) if exists().await => {
                            return Some(Some(request));
                        }
                        Some(Flow::Reload(request)) => {
                            self.update(|s| s.reload_failures += 1);
                            request.refuse(
                                &self.config,
                                "no release yet: the workdir does not exist",
                            );
                        }
                    }
                }
            }
        }
    }

    /// Sleeps out the restart delay. None if told to stop meanwhile; a reload
    /// request cuts the delay short (it should start the new code now).
    pub(super) async fn wait_backoff(&mut self, delay: Duration) -> Option<Option<ReloadRequest>> {
        let wake = sleep(delay);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                _ = &mut wake => return Some(None),
                command = self.commands.recv(), if !self.commands.is_closed() => {
                    match self.answer(command, &[]) {
                        None => {}
                        Some(Flow::Stop { .. }) => return None,
                        Some(Flow::Reload(request)) => return Some(Some(request)),
                    }
                }
            }
        }
    }
}

/// A missing `workdir` that a release will fill: a symlink that points at
/// nothing yet, or a name in a directory that exists (the mounted volume
/// before its first checkout). One whose directory is missing too is a
/// mistake in the config, which fails to start at once.
fn awaits_release(workdir: &std::path::Path) -> bool {
    let dangling = std::fs::symlink_metadata(workdir).is_ok_and(|m| m.file_type().is_symlink());
    dangling || workdir.parent().is_some_and(std::path::Path::is_dir)
}
