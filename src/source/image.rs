//! The task that asks for a new image when a release changes dependencies.
//!
//! It runs beside the source actor, not inside it: a docker build takes
//! minutes, and polls, webhooks and rollbacks must not wait for it. It owns
//! the `[redeploy]` action, takes the newest release that needs an image
//! (a newer one replaces an older one still waiting), retries failures with
//! backoff and never runs twice for the same sha faster than that. `exit`
//! asks the supervisor to stop the programs and exit with the code.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::RedeployRequired;
use crate::clock::timestamp;
use crate::redeploy::{Redeploy, RedeployOutcome, Redeployer};
use crate::sha::Sha;

/// Where the redeploy of the newest release that needs an image stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageState {
    /// No `[redeploy]` configured, or nothing asked for yet.
    #[default]
    None,
    Running,
    Done,
    /// Failed; retried with backoff.
    Failed,
}

impl std::fmt::Display for ImageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageState::None => "none",
            ImageState::Running => "running",
            ImageState::Done => "done",
            ImageState::Failed => "failed",
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
}

/// The handle the source actor keeps; the one record of which release
/// waits for an image.
pub struct ImageRequests {
    latest: watch::Sender<Option<Redeploy>>,
    status: watch::Receiver<ImageStatus>,
    configured: bool,
    /// The newest release that needs an image, until one that fits is
    /// served; the deploy pipeline does not ask twice for it.
    pending: Option<RedeployRequired>,
}

impl ImageRequests {
    /// Starts the task when `[redeploy]` is configured; `exit` receives the
    /// code of an `exit = N` action.
    pub fn start(redeployer: Option<Redeployer>, exit: mpsc::UnboundedSender<u8>) -> Self {
        let (latest, requests) = watch::channel(None);
        let (status_tx, status) = watch::channel(ImageStatus::default());
        let configured = redeployer.is_some();
        if let Some(redeployer) = redeployer {
            tokio::spawn(run(redeployer, requests, status_tx, exit));
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

    /// Asks for an image for `request`; a no-op when it is already asked for.
    pub fn request(&mut self, required: RedeployRequired, request: Redeploy) {
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

async fn run(
    redeployer: Redeployer,
    mut requests: watch::Receiver<Option<Redeploy>>,
    status: watch::Sender<ImageStatus>,
    exit: mpsc::UnboundedSender<u8>,
) {
    let mut backoff = redeployer.backoff();
    let mut newer: Option<Redeploy> = None;
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
        backoff.reset();
        let mut attempts = 0;
        loop {
            attempts += 1;
            status.send_modify(|s| {
                s.sha = Some(request.sha.clone());
                s.state = ImageState::Running;
                s.attempts = attempts;
                s.last_attempt = Some(timestamp(std::time::SystemTime::now()));
                s.retry_in_seconds = None;
            });
            match redeployer.run(&request).await {
                Ok(RedeployOutcome::Exit(code)) => {
                    info!(sha = %request.sha, code, "exiting so that the orchestrator starts a new image");
                    status.send_modify(|s| {
                        s.state = ImageState::Done;
                        s.last_result = Some(format!("exiting with {code}"));
                    });
                    let _ = exit.send(code);
                    return;
                }
                Ok(outcome) => {
                    info!(sha = %request.sha, %outcome, "redeploy done");
                    status.send_modify(|s| {
                        s.state = ImageState::Done;
                        s.last_result = Some(outcome.to_string());
                    });
                    break;
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
                    if wait_or_newer(&mut requests, delay).await {
                        newer = requests.borrow_and_update().clone();
                        break;
                    }
                }
            }
        }
    }
}

/// Sleeps `delay`; true when a newer request arrived first.
async fn wait_or_newer(requests: &mut watch::Receiver<Option<Redeploy>>, delay: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        changed = requests.changed() => changed.is_ok(),
    }
}
