//! The task that asks for a new image when a release changes dependencies.
//!
//! It runs beside the source actor, not inside it: a docker build takes
//! minutes, and polls, webhooks and rollbacks must not wait for it. It owns
//! the `[redeploy]` action, takes the newest release that needs an image
//! (a newer one replaces an older one still waiting), retries failures with
//! backoff and never runs twice for the same sha faster than that. `exit`
//! asks the supervisor to stop the programs and exit with the code.
//!
//! It also owns the record of that exit (`.cutover/exited-for.json` in the
//! volume): an orchestrator that only restarts the container (docker's
//! `--restart`, compose's `restart:`) starts the same image, which would ask
//! for the same exit again at once, in a loop serving nothing. While the
//! record holds (same commit, same image), the task does not exit again and
//! says it waits for a new image; another commit, or another image, ends it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::RedeployRequired;
use super::release::{ExitedFor, Volume};
use crate::clock::timestamp;
use crate::redeploy::{Redeploy, RedeployOutcome, Redeployer, RetryBackoff};
use crate::sha::Sha;

/// Where the redeploy of the newest release that needs an image stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageState {
    /// No `[redeploy]` configured, or nothing asked for yet.
    #[default]
    None,
    Running,
    /// `docker` health-gated replace: the replacer is stopping this
    /// container; its log has the result.
    Replacing,
    Done,
    /// Failed; retried with backoff.
    Failed,
    /// `exit` already ran for this commit with this image: no exit again
    /// until a new image (or another commit that needs one) arrives.
    WaitingForImage,
}

impl std::fmt::Display for ImageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageState::None => "none",
            ImageState::Running => "running",
            ImageState::Replacing => "replacing",
            ImageState::Done => "done",
            ImageState::Failed => "failed",
            ImageState::WaitingForImage => "waiting-for-image",
        })
    }
}

/// What `cutover status` shows of the last redeploy request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageStatus {
    /// The sha a new image is asked for.
    pub sha: Option<String>,
    pub state: ImageState,
    pub attempts: u32,
    pub last_result: Option<String>,
    pub last_attempt: Option<String>,
    pub retry_in_seconds: Option<f64>,
    /// The earlier exit that holds for `sha` with this image, while
    /// `state` is `waiting-for-image`.
    #[serde(default)]
    pub exited_for: Option<ExitedFor>,
}

/// One release that needs an image, with the image it cannot run on.
#[derive(Debug, Clone)]
struct Request {
    sha: Sha,
    /// The identity of the running image (see [`ExitedFor::image`]).
    image: String,
    redeploy: Redeploy,
}

/// The handle the source actor keeps; the one record of which release
/// waits for an image.
pub struct ImageRequests {
    latest: watch::Sender<Option<Request>>,
    status: watch::Receiver<ImageStatus>,
    configured: bool,
    /// The newest release that needs an image, until one that fits is
    /// served; the deploy pipeline does not ask twice for it.
    pending: Option<RedeployRequired>,
}

impl ImageRequests {
    /// Starts the task when `[redeploy]` is configured; `exit` receives the
    /// code of an `exit = N` action, whose record goes to `volume`;
    /// `exited` is the record an earlier run left there.
    pub fn start(
        redeployer: Option<Redeployer>,
        exit: mpsc::UnboundedSender<u8>,
        volume: Volume,
        exited: Option<ExitedFor>,
    ) -> Self {
        let (latest, requests) = watch::channel(None);
        let (status_tx, status) = watch::channel(ImageStatus::default());
        let configured = redeployer.is_some();
        if let Some(redeployer) = redeployer {
            let task = Task {
                redeployer,
                status: status_tx,
                exit,
                volume,
                exited,
            };
            tokio::spawn(task.run(requests));
        }
        ImageRequests {
            latest,
            status,
            configured,
            pending: None,
        }
    }

    /// The release waiting for a new image, if any.
    pub fn pending(&self) -> Option<RedeployRequired> {
        self.pending.clone()
    }

    /// The release waiting for a new image, if `sha` is it.
    pub fn pending_for(&self, sha: &Sha) -> Option<&RedeployRequired> {
        self.pending.as_ref().filter(|p| &p.sha == sha)
    }

    /// Releases an image is, or may again be, built from: not to be pruned.
    pub fn in_use(&self) -> Vec<Sha> {
        let building = self
            .status
            .borrow()
            .sha
            .as_deref()
            .and_then(|s| Sha::parse(s).ok());
        let pending = self.pending.as_ref().map(|p| p.sha.clone());
        building.into_iter().chain(pending).collect()
    }

    /// A release that fits the image is served: nothing waits any more, and
    /// a redeploy not yet started for an older release is called off.
    pub fn withdraw(&mut self) {
        if self.pending.take().is_some() {
            self.latest.send_replace(None);
        }
    }

    /// Asks for an image for `request`, to replace the image known as
    /// `image`; a no-op when it is already asked for.
    pub fn request(&mut self, required: RedeployRequired, redeploy: Redeploy, image: String) {
        let request = Request {
            sha: required.sha.clone(),
            image,
            redeploy,
        };
        self.pending = Some(required);
        if !self.configured {
            warn!(sha = %request.sha, "no [redeploy] configured: rebuild and redeploy the image yourself");
            return;
        }
        self.latest.send_if_modified(|slot| {
            let same = slot.as_ref().is_some_and(|r| r.sha == request.sha);
            if !same {
                *slot = Some(request);
            }
            !same
        });
    }

    pub fn status(&self) -> ImageStatus {
        self.status.borrow().clone()
    }

    /// For readers: the task publishes as it goes, not when the source does.
    pub fn watch(&self) -> watch::Receiver<ImageStatus> {
        self.status.clone()
    }
}

/// The redeploy task's own state.
struct Task {
    redeployer: Redeployer,
    status: watch::Sender<ImageStatus>,
    exit: mpsc::UnboundedSender<u8>,
    volume: Volume,
    /// The last exit asked for, from this run or an earlier one.
    exited: Option<ExitedFor>,
}

/// Where one request's attempts ended.
enum Settled {
    /// Done or failed for good: wait for the next request.
    Next,
    /// A newer request came during a retry's wait (none if it was withdrawn).
    Newer(Option<Request>),
    /// This container exits or is replaced: the task ends.
    Ended,
}

impl Task {
    async fn run(self, mut requests: watch::Receiver<Option<Request>>) {
        let mut backoff = self.redeployer.backoff();
        let mut newer: Option<Request> = None;
        loop {
            let request = match newer.take() {
                Some(r) => r,
                None => {
                    if requests.changed().await.is_err() {
                        return;
                    }
                    match requests.borrow_and_update().clone() {
                        Some(r) => r,
                        None => continue,
                    }
                }
            };
            if self.redeployer.exit_code().is_some()
                && let Some(before) = self
                    .exited
                    .as_ref()
                    .filter(|e| e.holds(&request.sha, &request.image))
            {
                refuse_exit_again(&self.status, &request, before);
                continue;
            }
            backoff.reset();
            match self.attempt(&request, &mut backoff, &mut requests).await {
                Settled::Next => {}
                Settled::Newer(request) => newer = request,
                Settled::Ended => return,
            }
        }
    }

    /// Runs the redeploy for `request` until it succeeds, fails for good,
    /// or a newer request replaces it while waiting to retry.
    async fn attempt(
        &self,
        request: &Request,
        backoff: &mut RetryBackoff,
        requests: &mut watch::Receiver<Option<Request>>,
    ) -> Settled {
        let status = &self.status;
        let mut attempts = 0;
        loop {
            attempts += 1;
            status.send_modify(|s| {
                s.sha = Some(request.sha.to_string());
                s.state = ImageState::Running;
                s.attempts = attempts;
                s.last_attempt = Some(timestamp(std::time::SystemTime::now()));
                s.retry_in_seconds = None;
                s.exited_for = None;
            });
            match self.redeployer.run(&request.redeploy).await {
                Ok(outcome) => return self.succeeded(request, outcome).await,
                Err(e) if e.is_final() => {
                    error!(sha = %request.sha, error = %e, "redeploy failed for good; the old release keeps serving until a newer commit");
                    status.send_modify(|s| {
                        s.state = ImageState::Failed;
                        s.last_result = Some(e.to_string());
                        s.retry_in_seconds = None;
                    });
                    return Settled::Next;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    error!(sha = %request.sha, error = %e, retry_in = %humantime::format_duration(delay), "redeploy failed; the old release keeps serving");
                    status.send_modify(|s| {
                        s.state = ImageState::Failed;
                        s.last_result = Some(e.to_string());
                        s.retry_in_seconds = Some(delay.as_secs_f64());
                    });
                    // A newer release that needs an image replaces this one.
                    if wait_or_newer(requests, delay).await {
                        return Settled::Newer(requests.borrow_and_update().clone());
                    }
                }
            }
        }
    }

    /// Publishes what a redeploy that worked did; exits when it asks to.
    async fn succeeded(&self, request: &Request, outcome: RedeployOutcome) -> Settled {
        let status = &self.status;
        match outcome {
            RedeployOutcome::Exit(code) => {
                record_exit(&self.volume, request, code).await;
                info!(sha = %request.sha, code, "exiting so that the orchestrator starts a new image");
                status.send_modify(|s| {
                    s.state = ImageState::Done;
                    s.last_result = Some(format!("exiting with {code}"));
                });
                let _ = self.exit.send(code);
                Settled::Ended
            }
            outcome @ RedeployOutcome::DockerReplacing { .. } => {
                // The replacer stops this container next: nothing more to do.
                info!(sha = %request.sha, %outcome, "redeploy handed to the replacer");
                status.send_modify(|s| {
                    s.state = ImageState::Replacing;
                    s.last_result = Some(outcome.to_string());
                });
                Settled::Ended
            }
            outcome => {
                info!(sha = %request.sha, %outcome, "redeploy done");
                status.send_modify(|s| {
                    s.state = ImageState::Done;
                    s.last_result = Some(outcome.to_string());
                });
                Settled::Next
            }
        }
    }
}

/// The same image restarted after its exit for this commit: exiting again
/// would only have the orchestrator restart it again. Said once per request,
/// which the source sends once per commit.
fn refuse_exit_again(status: &watch::Sender<ImageStatus>, request: &Request, before: &ExitedFor) {
    warn!(sha = %request.sha, code = before.code, at = %before.time, image = %request.image, "already exited for this commit with this image; not exiting again (the orchestrator restarted the same image); waiting for a new image");
    let note = format!(
        "already exited with {} for {} at {} with this image ({}); waiting for a new image",
        before.code, request.sha, before.time, request.image
    );
    status.send_modify(|s| {
        s.sha = Some(request.sha.to_string());
        s.state = ImageState::WaitingForImage;
        s.attempts = 0;
        s.last_result = Some(note);
        s.last_attempt = None;
        s.retry_in_seconds = None;
        s.exited_for = Some(before.clone());
    });
}

/// Writes the record of this exit to the volume before asking for it, off
/// the runtime thread. Without it a restart of the same image exits again:
/// said loudly, but the exit still happens, since a new image is needed.
async fn record_exit(volume: &Volume, request: &Request, code: u8) {
    let record = ExitedFor {
        sha: request.sha.clone(),
        image: request.image.clone(),
        code,
        time: timestamp(std::time::SystemTime::now()),
    };
    let volume = volume.clone();
    let saved = tokio::task::spawn_blocking(move || volume.save_exited_for(&record)).await;
    let error = match saved {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    error!(sha = %request.sha, error = %error, "cannot record the exit in the volume; a restart of the same image will exit again for this commit");
}

/// Sleeps `delay`; true when a newer request arrived first.
async fn wait_or_newer(requests: &mut watch::Receiver<Option<Request>>, delay: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        changed = requests.changed() => changed.is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(c: char) -> Sha {
        Sha::parse(&c.to_string().repeat(40)).unwrap()
    }

    /// The record survives in the volume, and holds only for the same
    /// commit on the same image.
    #[test]
    fn the_exit_record_round_trips_and_holds_for_the_same_commit_and_image() {
        let dir = tempfile::tempdir().unwrap();
        let volume = Volume {
            root: dir.path().to_path_buf(),
        };
        volume.prepare().unwrap();
        assert_eq!(volume.load_exited_for(), None);
        let record = ExitedFor {
            sha: sha('a'),
            image: "sha256:1".into(),
            code: 75,
            time: "2026-01-01T00:00:00Z".into(),
        };
        volume.save_exited_for(&record).unwrap();
        let loaded = volume.load_exited_for().unwrap();
        assert_eq!(loaded, record);
        assert!(loaded.holds(&sha('a'), "sha256:1"));
        assert!(!loaded.holds(&sha('b'), "sha256:1"), "another commit");
        assert!(!loaded.holds(&sha('a'), "sha256:2"), "another image");

        std::fs::write(dir.path().join(".cutover/exited-for.json"), "{").unwrap();
        assert_eq!(
            volume.load_exited_for(),
            None,
            "a corrupt record is ignored"
        );
    }
}
