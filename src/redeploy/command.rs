//! `[redeploy] command`: runs a command (for example a curl that starts a CI
//! image build) in the release directory, through cutover's own spawn and
//! the one reaper, with its output logged line by line (`crate::hooks`).
//!
//! Its environment is cutover's, plus:
//! - `CUTOVER_SHA`: the commit, full hex;
//! - `CUTOVER_REF`: the ref it came from (may be empty);
//! - `CUTOVER_CHANGED_FILES`: the dependency files that differ from the
//!   image's, one per line (newline-separated, so names with spaces survive;
//!   `for f in $CUTOVER_CHANGED_FILES` in sh splits on both);
//! - `CUTOVER_RELEASE_DIR`: the release directory (also the working directory).

use std::time::Duration;

use super::{Redeploy, RedeployError, RedeployOutcome};
use crate::hooks::{HookError, LoggedCommand, run_logged};
use crate::reaper::Reaper;

/// The variables the command receives, in order.
pub(super) fn environment(request: &Redeploy) -> Vec<(String, String)> {
    vec![
        ("CUTOVER_SHA".into(), request.sha.clone()),
        ("CUTOVER_REF".into(), request.git_ref.clone()),
        (
            "CUTOVER_CHANGED_FILES".into(),
            request.changed_files.join("\n"),
        ),
        (
            "CUTOVER_RELEASE_DIR".into(),
            request.release_dir.display().to_string(),
        ),
    ]
}

pub(super) async fn run(
    command: &[String],
    timeout: Duration,
    request: &Redeploy,
    reaper: &Reaper,
) -> Result<RedeployOutcome, RedeployError> {
    let env = environment(request);
    let result = run_logged(&LoggedCommand {
        what: "redeploy command",
        name: "redeploy",
        command,
        dir: &request.release_dir,
        env: &env,
        user: None,
        timeout,
        reaper,
    })
    .await;
    match result {
        Ok(()) => Ok(RedeployOutcome::CommandSucceeded),
        Err(HookError::Start { message, .. }) => Err(RedeployError::CommandStart(message)),
        Err(HookError::Failed { status, .. }) => Err(RedeployError::CommandFailed(status)),
        Err(HookError::Timeout { timeout, .. }) => Err(RedeployError::CommandTimeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_files_are_one_per_line() {
        let request = Redeploy {
            sha: "abc".into(),
            git_ref: "main".into(),
            changed_files: vec!["requirements.txt".into(), "my deps/poetry.lock".into()],
            release_dir: "/srv/releases/abc".into(),
        };
        let env = environment(&request);
        assert_eq!(
            env[2],
            (
                "CUTOVER_CHANGED_FILES".to_string(),
                "requirements.txt\nmy deps/poetry.lock".to_string()
            )
        );
        assert_eq!(env[0].1, "abc");
        assert_eq!(env[1].1, "main");
    }
}
