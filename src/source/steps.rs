//! The slow steps of a deploy, each on a blocking thread or a child
//! process so the runtime thread (reaping, signals, probes) never waits for
//! git, the disk or a hook: fetching, writing a release, running hooks,
//! pruning. Each publishes its phase as it starts.

use std::time::Instant;

use tracing::{info, warn};

use super::progress::Phase;
use super::{Source, SourceError, git, open_cache, writing};
use crate::hooks::{HookError, HookKind, Hooks};
use crate::sha::Sha;

impl Source {
    pub(super) async fn fetch(
        &self,
        wanted: &str,
        current: Option<Sha>,
    ) -> Result<Sha, SourceError> {
        self.publisher.phase(Phase::Fetching);
        let remote = self.remote.clone();
        let cache = self.volume.cache();
        let wanted = wanted.to_string();
        tokio::task::spawn_blocking(move || -> Result<Sha, SourceError> {
            let mut repo = open_cache(&cache)?;
            let (name, oid) = remote.resolve(&repo, &wanted)?;
            if current.as_ref().is_some_and(|c| c.oid() == oid) {
                return Ok(Sha::from(oid));
            }
            // The commit alone proves nothing: a fetch or copy killed half
            // way may have left it without all of its tree. Then the remote
            // will not send what the cache claims to have, so the cache
            // starts afresh.
            if repo.find_commit(oid).is_ok() {
                if git::complete(&repo, oid, remote.max_tree()) {
                    return Ok(Sha::from(oid));
                }
                warn!(sha = %oid, "the cache holds the commit but not all of its tree; fetching it again into a new cache");
                drop(repo);
                git::discard_cache(&cache)?;
                repo = open_cache(&cache)?;
            }
            Ok(Sha::from(remote.fetch(&repo, &name, oid)?))
        })
        .await?
    }

    /// Throws the cache away after a read from it failed, so that the next
    /// fetch takes the commit again (on a blocking thread: it may be large).
    pub(super) async fn discard_cache(&self) {
        let cache = self.volume.cache();
        match tokio::task::spawn_blocking(move || git::discard_cache(&cache)).await {
            Ok(Ok(())) => warn!("discarded the cache after a read error; fetching again"),
            Ok(Err(e)) => warn!(error = %e, "cannot discard the cache"),
            Err(e) => warn!(error = %e, "cannot discard the cache"),
        }
    }

    pub(super) async fn write_release(&self, sha: &Sha) -> Result<(), SourceError> {
        let volume = self.volume.clone();
        let target = sha.clone();
        let started = Instant::now();
        let limits = self.config.limits;
        let written = tokio::task::spawn_blocking(move || {
            if volume.has_release(&target) {
                return Ok(None);
            }
            let _writing = writing::begin(&volume, &target)?;
            super::tree::materialise(&volume, &volume.cache(), target.oid(), &limits).map(Some)
        })
        .await??;
        if let Some(written) = written {
            info!(%sha, files = written.files, bytes = written.bytes, ms = started.elapsed().as_millis() as u64, "release written");
        }
        Ok(())
    }

    pub(super) async fn run_hooks(
        &self,
        kind: HookKind,
        sha: &Sha,
        previous: Option<&Sha>,
    ) -> Result<(), HookError> {
        let commands = match kind {
            HookKind::BeforeCutover => &self.hooks.before_cutover,
            HookKind::AfterCutover => &self.hooks.after_cutover,
        };
        if commands.is_empty() {
            return Ok(());
        }
        let dir = self.volume.release(sha);
        let extra_env = vec![
            ("CUTOVER_RELEASE_DIR".to_string(), dir.display().to_string()),
            ("CUTOVER_SHA".to_string(), sha.to_string()),
            (
                "CUTOVER_PREVIOUS_SHA".to_string(),
                previous.map(Sha::to_string).unwrap_or_default(),
            ),
        ];
        let publisher = &self.publisher;
        let started = move |name: &str, command: &[String]| {
            publisher.phase(Phase::Hook {
                kind,
                name: name.to_string(),
                command: command.to_vec(),
            });
        };
        Hooks {
            kind,
            commands,
            dir: &dir,
            // The hooked program's user and environment (`[hooks] program`).
            env: &self.hooks.env,
            extra_env,
            user: self.hooks.user.as_ref(),
            timeout: self.hooks.timeout,
            reaper: &self.reaper,
            started: &started,
        }
        .run()
        .await
    }

    /// Removes releases beyond `keep` on a blocking thread. The source is
    /// the one owner of that decision: never `current`, the previous good
    /// release, nor one an image is (or may again be) built from.
    pub(super) async fn prune(&self) {
        self.publisher.phase(Phase::Pruning);
        let mut protect: Vec<Sha> = self.volume.current_sha().into_iter().collect();
        protect.extend(self.state.previous.clone());
        protect.extend(self.images.in_use());
        let volume = self.volume.clone();
        let keep = self.config.keep as usize;
        match tokio::task::spawn_blocking(move || volume.prune(keep, &protect)).await {
            Ok(gone) => {
                for sha in gone {
                    info!(%sha, "removed old release");
                }
            }
            Err(e) => warn!(error = %e, "pruning old releases failed"),
        }
    }
}
