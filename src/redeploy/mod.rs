//! `[redeploy]`: how cutover gets a new image when a release's dependency
//! files differ from the ones baked into the image, so that hot-loading the
//! release would run code against the wrong dependencies.
//!
//! A [`Redeployer`] runs the one configured action for a [`Redeploy`]
//! request: a command (`command`), an HTTP POST (`webhook`), a new image and
//! container through the Docker Engine API (`docker`), or a graceful exit
//! with a code (`exit`, which only returns [`RedeployOutcome::Exit`]: stopping
//! is the supervisor's job). Each action runs once per call; retrying a
//! failure with [`RetryBackoff`], and never looping on the same sha faster
//! than that, is the caller's job.

mod command;
pub(crate) mod deployer;
mod docker;
mod post;

pub use deployer::{DeployReply, DeployRequest};
pub use docker::{ReplacerArgs, run_replacer};

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{RedeployAction, RedeployConfig};
use crate::process::exit::ExitStatus;
use crate::process::reaper::Reaper;

/// One release that needs a new image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeploy {
    /// The commit, full hex.
    pub sha: String,
    /// The ref it came from ("main", "refs/heads/main"; may be empty).
    pub git_ref: String,
    /// Dependency files that differ from the image's, relative to the release.
    pub changed_files: Vec<String>,
    /// The release's directory (the docker build context; the command's cwd).
    pub release_dir: PathBuf,
}

impl Redeploy {
    /// The first 12 hex digits: image tags and container names.
    pub fn short_sha(&self) -> &str {
        let end = self
            .sha
            .char_indices()
            .nth(12)
            .map_or(self.sha.len(), |(i, _)| i);
        &self.sha[..end]
    }
}

/// What a successful redeploy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeployOutcome {
    /// `command` exited 0.
    CommandSucceeded,
    /// `webhook` answered 2xx.
    WebhookAccepted { status: u16 },
    /// `docker`: the new container runs (healthy) under `name`, and the old
    /// one was stopped. When the old one is the container cutover runs in,
    /// cutover receives SIGTERM during that stop and usually never sees
    /// this value.
    DockerReplaced {
        container_id: String,
        name: String,
        image: String,
        /// With a health-gated replace: from the old container's stop to
        /// the new one's health.
        gap: Option<Duration>,
    },
    /// `docker`, health-gated replace of the container cutover runs in: the
    /// replacer container is about to stop it (cutover's SIGTERM), start
    /// the new one and roll back if that is not healthy. Its log and exit
    /// code have the result.
    DockerReplacing { replacer: String, image: String },
    /// `deployer`: what the deployer did (it stops this container when it
    /// replaces it, so this is seen by `cutover redeploy` run elsewhere).
    Deployed(String),
    /// `exit`: stop the programs gracefully and exit with this code.
    Exit(u8),
}

impl fmt::Display for RedeployOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedeployOutcome::CommandSucceeded => f.write_str("redeploy command succeeded"),
            RedeployOutcome::WebhookAccepted { status } => {
                write!(f, "redeploy webhook accepted ({status})")
            }
            RedeployOutcome::DockerReplaced {
                container_id,
                name,
                image,
                gap,
            } => {
                write!(
                    f,
                    "replaced by container {name} ({}) running {image}",
                    &container_id[..container_id.len().min(12)]
                )?;
                match gap {
                    Some(gap) => write!(f, " after a gap of {} ms", gap.as_millis()),
                    None => Ok(()),
                }
            }
            RedeployOutcome::DockerReplacing { replacer, image } => write!(
                f,
                "replacing: container stopping for a health-gated replace to {image} \
                 (`docker logs {replacer}` has the result)"
            ),
            RedeployOutcome::Deployed(what) => write!(f, "deployer: {what}"),
            RedeployOutcome::Exit(code) => write!(f, "exiting with {code} for a redeploy"),
        }
    }
}

/// Why a redeploy failed. The messages are meant for `cutover status` and
/// the log; none contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum RedeployError {
    #[error("redeploy command could not start: {0}")]
    CommandStart(String),
    #[error("redeploy command failed: {0}")]
    CommandFailed(ExitStatus),
    #[error("redeploy command did not finish within {}", humantime::format_duration(*.0))]
    CommandTimeout(Duration),
    #[error("redeploy webhook {url}: {message}")]
    Webhook { url: String, message: String },
    #[error("redeploy webhook {url} answered {status}{}", body_excerpt(.body))]
    WebhookStatus {
        url: String,
        status: u16,
        body: String,
    },
    #[error("docker engine at {socket}: {message}")]
    DockerConnect { socket: String, message: String },
    #[error("docker: {step}: {message}")]
    Docker { step: String, message: String },
    #[error("docker: building {image} failed: {reason}")]
    Build { image: String, reason: String },
    #[error(
        "docker: the new container {name} {reason}; it was removed and the old one keeps serving"
    )]
    NewContainer { name: String, reason: String },
    #[error(
        "docker: health-gated replace rolled back: the new container {name} {reason}; it was \
         removed and the old one serves again after a gap of {gap_ms} ms"
    )]
    RolledBack {
        name: String,
        reason: String,
        gap_ms: u128,
    },
    /// This container already runs the image a redeploy built for this
    /// commit, and that image still does not fit it: building again would
    /// make the same image, whose container would do the same, without end.
    #[error(
        "docker: the image built for {sha} ({image}) does not carry a baseline for {sha}: bake \
         it with `cutover fingerprint --write` in the Dockerfile after the dependencies are \
         installed; not building again for this commit"
    )]
    ImageDoesNotFit { sha: String, image: String },
    /// The deployer refused or failed; its own words.
    #[error("deployer at {socket}: {message}")]
    Deployer {
        socket: String,
        message: String,
        is_final: bool,
    },
    /// Another container is being started for the same commit.
    #[error(
        "docker: a redeploy for {sha} is already under way (container {name} is {state}); \
         not starting a second one"
    )]
    AlreadyUnderWay {
        sha: String,
        name: String,
        state: String,
    },
}

impl RedeployError {
    /// A failure that another attempt for the same commit from the same
    /// image would only repeat: the caller waits for a newer commit instead
    /// of retrying.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RedeployError::ImageDoesNotFit { .. } | RedeployError::Deployer { is_final: true, .. }
        )
    }
}

fn body_excerpt(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return String::new();
    }
    let cut: String = body.chars().take(200).collect();
    // {:?} so a response cannot forge log lines.
    format!(": {cut:?}")
}

/// Runs the configured `[redeploy]` action.
#[derive(Debug, Clone)]
pub struct Redeployer {
    config: RedeployConfig,
    reaper: Reaper,
}

impl Redeployer {
    /// `reaper` is the process's one reaper: `command` is spawned and reaped
    /// through it like every other child.
    pub fn new(config: RedeployConfig, reaper: Reaper) -> Redeployer {
        Redeployer { config, reaper }
    }

    /// A fresh backoff for retrying failures: 1 s, doubling, up to `retry_max`.
    pub fn backoff(&self) -> RetryBackoff {
        RetryBackoff::new(self.config.retry_max)
    }

    /// The code of an `exit = N` action, None for the others.
    pub fn exit_code(&self) -> Option<u8> {
        match self.config.action {
            RedeployAction::Exit(code) => Some(code),
            _ => None,
        }
    }

    /// Runs the action once for `request`.
    pub async fn run(&self, request: &Redeploy) -> Result<RedeployOutcome, RedeployError> {
        tracing::info!(
            sha = %request.sha,
            changed = ?request.changed_files,
            "redeploy: dependencies changed, running the [redeploy] action"
        );
        match &self.config.action {
            RedeployAction::Command {
                command,
                timeout,
                user,
                env,
            } => {
                let spec = command::CommandSpec {
                    command,
                    timeout: *timeout,
                    user: user.as_ref(),
                    env,
                };
                command::run(&spec, request, &self.reaper).await
            }
            RedeployAction::Webhook(target) => post::post(target, request).await,
            RedeployAction::Docker(docker) => docker::replace(docker, request).await,
            RedeployAction::Deployer { socket, timeout } => {
                deployer::ask(socket, *timeout, request).await
            }
            RedeployAction::Exit(code) => Ok(RedeployOutcome::Exit(*code)),
        }
    }
}

/// `[redeploy] docker`'s build and replace, for `cutover deployer`.
pub(crate) async fn replace_container(
    cfg: &crate::config::DockerRedeploy,
    request: &Redeploy,
) -> Result<RedeployOutcome, RedeployError> {
    docker::replace(cfg, request).await
}

/// Delays between retries of a failed redeploy: 1 s, 2 s, 4 s, ... capped at
/// `max`.
#[derive(Debug, Clone)]
pub struct RetryBackoff {
    next: Duration,
    max: Duration,
}

impl RetryBackoff {
    pub const INITIAL: Duration = Duration::from_secs(1);

    pub fn new(max: Duration) -> RetryBackoff {
        RetryBackoff {
            next: Self::INITIAL.min(max),
            max,
        }
    }

    /// The delay before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Back to 1 s, after a success or for a different sha.
    pub fn reset(&mut self) {
        self.next = Self::INITIAL.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let mut b = RetryBackoff::new(Duration::from_secs(5));
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn short_sha() {
        let r = Redeploy {
            sha: "0123456789abcdef0123".into(),
            git_ref: String::new(),
            changed_files: vec![],
            release_dir: PathBuf::new(),
        };
        assert_eq!(r.short_sha(), "0123456789ab");
    }

    #[test]
    fn status_body_is_quoted_and_cut() {
        let e = RedeployError::WebhookStatus {
            url: "http://ci/hook".into(),
            status: 500,
            body: format!("boom\n{}", "x".repeat(500)),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("redeploy webhook http://ci/hook answered 500: \"boom\\n"),
            "{text}"
        );
        assert!(text.len() < 300, "{text}");
    }
}
