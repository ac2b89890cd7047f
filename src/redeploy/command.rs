//! `[redeploy] command`: runs a command (for example a curl that starts a CI
//! image build) in the release directory, through cutover's own spawn and
//! the one reaper, with its output logged line by line (`crate::hooks`).
//!
//! It runs as `[redeploy] user`, else as the hooked program's user (a
//! command that anyone with push access can influence is never run as root
//! without a warning), in cutover's environment minus the secrets the config
//! reads, plus:
//! - `CUTOVER_SHA`: the commit, full hex;
//! - `CUTOVER_REF`: the ref it came from (may be empty);
//! - `CUTOVER_CHANGED_FILES`: the dependency files that differ from the
//!   image's, one per line, each percent-encoded ([`encode_path`]): a file
//!   name is chosen by whoever pushes, and a newline in it must not forge a
//!   second entry;
//! - `CUTOVER_RELEASE_DIR`: the release directory (also the working directory).

use std::time::Duration;

use tracing::warn;

use super::{Redeploy, RedeployError, RedeployOutcome};
use crate::config::{ChildEnv, RunAs};
use crate::hooks::{HookError, LoggedCommand, run_logged};
use crate::process::reaper::Reaper;

/// `name` with `%`, `\`, every control character, and every byte outside
/// printable ASCII written as `%XX` (upper-case hex of each UTF-8 byte), so
/// the encoded name has no newline and decodes (`urllib.parse.unquote`,
/// `printf '%b'` after `s/%/\\x/g`) to exactly the original: `printf '%b'`
/// reads a backslash as an escape (`\n` a newline, `\c` the end of
/// output), so none may reach it unencoded. Spaces and the rest of
/// printable ASCII stay as they are.
pub(super) fn encode_path(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if b == b'%' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// The variables the command receives, in order.
pub(super) fn environment(request: &Redeploy) -> Vec<(String, String)> {
    let changed: Vec<String> = request
        .changed_files
        .iter()
        .map(|f| encode_path(f))
        .collect();
    vec![
        ("CUTOVER_SHA".into(), request.sha.clone()),
        ("CUTOVER_REF".into(), request.git_ref.clone()),
        ("CUTOVER_CHANGED_FILES".into(), changed.join("\n")),
        (
            "CUTOVER_RELEASE_DIR".into(),
            request.release_dir.display().to_string(),
        ),
    ]
}

/// How to run the command: what, for how long, as whom, with what.
pub(super) struct CommandSpec<'a> {
    pub command: &'a [String],
    pub timeout: Duration,
    pub user: Option<&'a RunAs>,
    pub env: &'a ChildEnv,
}

pub(super) async fn run(
    spec: &CommandSpec<'_>,
    request: &Redeploy,
    reaper: &Reaper,
) -> Result<RedeployOutcome, RedeployError> {
    if spec.user.is_none() && nix::unistd::geteuid().is_root() {
        warn!(
            sha = %request.sha,
            "the redeploy command runs as root: neither [redeploy] user nor the hooked program's user is set"
        );
    }
    let extra_env = environment(request);
    let result = run_logged(&LoggedCommand {
        what: "redeploy command",
        name: "redeploy",
        command: spec.command,
        dir: &request.release_dir,
        env: spec.env,
        extra_env: &extra_env,
        user: spec.user,
        timeout: spec.timeout,
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

    #[test]
    fn a_newline_in_a_name_cannot_forge_an_entry() {
        assert_eq!(
            encode_path("requirements.txt\nevil"),
            "requirements.txt%0Aevil"
        );
        assert_eq!(encode_path("100%.lock"), "100%25.lock");
        assert_eq!(encode_path("a\tb\x7f\x1b[31m"), "a%09b%7F%1B[31m");
        assert_eq!(encode_path("café/go.sum"), "caf%C3%A9/go.sum");
        assert_eq!(encode_path("my deps/poetry.lock"), "my deps/poetry.lock");
        assert_eq!(
            encode_path("requirements\\nfoo.txt"),
            "requirements%5Cnfoo.txt"
        );
    }

    /// The README's bash decoder gives back every name exactly, one line
    /// each: a backslash in a name is no escape to `printf '%b'`.
    #[test]
    fn the_readme_bash_decoder_round_trips() {
        let names = [
            "requirements\\nfoo.txt",
            "a\\cb.lock",
            "x\\\\y\\x41.txt",
            "100%.lock",
            "line\nbreak.txt",
            "café/go.sum",
        ];
        let request = Redeploy {
            sha: "abc".into(),
            git_ref: String::new(),
            changed_files: names.iter().map(|n| n.to_string()).collect(),
            release_dir: "/".into(),
        };
        let changed = environment(&request)[2].1.clone();
        let out = std::process::Command::new("bash")
            .args([
                "-c",
                r#"while IFS= read -r line; do printf '%b' "${line//%/\\x}"; printf '\0'; done <<< "$CUTOVER_CHANGED_FILES""#,
            ])
            .env("CUTOVER_CHANGED_FILES", changed)
            .output()
            .unwrap();
        let decoded: Vec<String> = out
            .stdout
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        assert_eq!(decoded, names);
    }
}
