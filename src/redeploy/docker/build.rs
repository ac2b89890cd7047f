//! Step 2 of the docker redeploy: the release directory as a tar context,
//! built into `<image>:<short sha>` labelled with its Dockerfile's digest
//! and its commit, with the build log's tail on failure.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::Path;
use std::time::Instant;

use bollard::Docker;
use bollard::models::BuildInfo;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures_util::{Stream, StreamExt};
use tracing::{debug, info, warn};

use crate::config::DockerRedeploy;
use crate::redeploy::{Redeploy, RedeployError};

use super::dockerfile::DOCKERFILE_LABEL;
use super::{TAIL_LINES, api_message};

/// The commit an image was built for. A container of that image that finds
/// the same commit still needing an image must not build it again: that is
/// how a Dockerfile that forgets the baseline would redeploy without end.
pub(super) const COMMIT_LABEL: &str = "cutover.commit";

pub(super) async fn build(
    docker: &Docker,
    cfg: &DockerRedeploy,
    request: &Redeploy,
    tag: &str,
    dockerfile_digest: &str,
) -> Result<(), RedeployError> {
    let fail = |reason: String| RedeployError::Build {
        image: tag.to_string(),
        reason,
    };
    let context = pack_context(cfg, &request.release_dir)
        .await
        .map_err(fail)?;
    let args: HashMap<String, String> = cfg.build_args.iter().cloned().collect();
    // The next redeploy's baseline for `allow_dockerfile_change`, and the
    // commit this image is for.
    let labels = HashMap::from([
        (DOCKERFILE_LABEL, dockerfile_digest),
        (COMMIT_LABEL, request.sha.as_str()),
    ]);
    let mut options = BuildImageOptionsBuilder::new()
        .dockerfile(&cfg.dockerfile)
        .t(tag)
        .rm(true)
        .forcerm(true)
        .buildargs(&args)
        .labels(&labels);
    if let Some(network) = &cfg.build_network {
        options = options.networkmode(network);
    }
    let options = options.build();
    let started = Instant::now();
    let stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    let (error, log) = follow_build(stream).await;
    if let Some(message) = error {
        let log = if log.is_empty() {
            String::new()
        } else {
            format!("\n{log}")
        };
        return Err(fail(format!("{message}{log}")));
    }
    docker
        .inspect_image(tag)
        .await
        .map_err(|e| fail(format!("{}\n{log}", api_message(&e))))?;
    info!(image = %tag, seconds = started.elapsed().as_secs_f64(), "redeploy: image built");
    Ok(())
}

/// The release as a build context, off the runtime's threads; else why not.
async fn pack_context(cfg: &DockerRedeploy, release: &Path) -> Result<Vec<u8>, String> {
    let dir = release.to_path_buf();
    if !dir.join(&cfg.dockerfile).is_file() {
        return Err(format!(
            "no {} in the release {}",
            cfg.dockerfile,
            dir.display()
        ));
    }
    if dir.join(".dockerignore").exists() {
        warn!("redeploy: .dockerignore is not applied; the whole release is the build context");
    }
    tokio::task::spawn_blocking(move || tar_context(&dir))
        .await
        .map_err(|e| format!("packing the context: {e}"))?
        .map_err(|e| format!("packing the context: {e}"))
}

/// Reads the build's progress to its end: the error that ended it, if one
/// did, and the last [`TAIL_LINES`] lines of its log (each also logged at
/// debug).
async fn follow_build(
    mut stream: impl Stream<Item = Result<BuildInfo, bollard::errors::Error>> + Unpin,
) -> (Option<String>, String) {
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut remember = |line: &str| {
        let line = line.trim_end();
        if line.is_empty() {
            return;
        }
        debug!("build: {line}");
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_string());
    };
    let mut error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                for line in info.stream.as_deref().unwrap_or_default().lines() {
                    remember(line);
                }
                if let Some(message) = info.error_detail.and_then(|d| d.message) {
                    error = Some(message);
                }
            }
            Err(e) => {
                error = Some(api_message(&e));
                break;
            }
        }
    }
    let log = tail.iter().cloned().collect::<Vec<_>>().join("\n");
    (error, log)
}

/// The release directory as an uncompressed tar; symlinks stay symlinks.
pub(super) fn tar_context(dir: &Path) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    builder.into_inner()
}
