//! The subcommands that do one job and exit, outside a running cutover:
//! `check`, `fingerprint`, `redeploy`, `hold` and `status --holder`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{EXIT_CONFIG, config_failure, runtime};
use crate::config::Config;

pub(super) fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path, None) {
        Ok(config) => {
            let names: Vec<&str> = config.programs.iter().map(|p| p.name.as_str()).collect();
            println!("{}: ok ({})", path.display(), names.join(", "));
            ExitCode::SUCCESS
        }
        Err(e) => config_failure(&e),
    }
}

pub(super) fn fingerprint(dir: &Path, write: Option<&Path>, config: Option<&Path>) -> ExitCode {
    let patterns = match config.map(Config::load_dependencies) {
        None => crate::fingerprint::Patterns::default(),
        Some(Ok(deps)) => deps.patterns,
        Some(Err(e)) => return config_failure(&e),
    };
    let fp = match crate::fingerprint::Fingerprint::compute(dir, &patterns) {
        Ok(fp) => fp,
        Err(e) => {
            eprintln!("cutover: {e}");
            return ExitCode::FAILURE;
        }
    };
    if fp.files.is_empty() {
        eprintln!(
            "cutover: no file in {} matches {}",
            dir.display(),
            patterns.as_strings().join(", ")
        );
    }
    if let Some(file) = write {
        if let Err(e) = fp.write(file) {
            eprintln!("cutover: {e}");
            return ExitCode::FAILURE;
        }
        eprintln!("cutover: wrote {}", file.display());
    }
    // `sha256sum` format after the digest line.
    println!("{}", fp.digest);
    for (path, digest) in &fp.files {
        println!("{digest}  {path}");
    }
    ExitCode::SUCCESS
}

/// `cutover redeploy`: the `[redeploy]` action once, outside the supervisor.
pub(super) fn redeploy(
    path: &Path,
    dir: Option<PathBuf>,
    sha: Option<String>,
    git_ref: String,
    changed_files: Vec<String>,
) -> ExitCode {
    use crate::redeploy::{Redeploy, RedeployOutcome, Redeployer};
    let config = match Config::load(path, None) {
        Ok(c) => c,
        Err(e) => return config_failure(&e),
    };
    let Some(redeploy) = config.redeploy else {
        eprintln!("cutover: {}: no [redeploy] section", path.display());
        return ExitCode::from(EXIT_CONFIG);
    };
    let dir = dir.unwrap_or_else(|| match &config.source {
        Some(source) => source.root.join("current"),
        None => PathBuf::from("."),
    });
    let release_dir = match dir.canonicalize() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cutover: release directory {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    let sha = sha.or_else(|| {
        let name = release_dir.file_name()?.to_str()?;
        let is_sha = (7..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_hexdigit());
        is_sha.then(|| name.to_string())
    });
    let Some(sha) = sha else {
        eprintln!(
            "cutover: {} is not named by a commit id: give --sha",
            release_dir.display()
        );
        return ExitCode::FAILURE;
    };
    let request = Redeploy {
        sha,
        git_ref,
        changed_files,
        release_dir,
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let reaper = crate::process::reaper::Reaper::start().map_err(|e| format!("reaper: {e}"))?;
        Redeployer::new(redeploy, reaper)
            .run(&request)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(RedeployOutcome::Exit(code)) => {
            println!(
                "[redeploy] exit = {code}: a running cutover stops gracefully and exits {code}"
            );
            ExitCode::SUCCESS
        }
        Ok(outcome) => {
            println!("{outcome}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cutover: redeploy failed: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(super) fn hold(
    listen: Vec<String>,
    at: PathBuf,
    allow_uids: Vec<u32>,
    allow_gids: Vec<u32>,
    backlog: u32,
    http: Option<(std::net::SocketAddr, bool)>,
) -> ExitCode {
    let listen = match crate::holder::parse_listen(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cutover hold: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let config = crate::holder::HoldConfig {
        listen,
        socket: at,
        allow_uids,
        allow_gids,
        backlog,
        http,
    };
    super::run_to_end("cutover hold", crate::holder::run(config))
}

pub(super) fn holder_status(path: &std::path::Path, json: bool) -> ExitCode {
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(crate::holder::status(path)) {
        Ok(status) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&status).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(status) => {
            print!("{}", crate::holder::render(&status));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cutover: {e}");
            ExitCode::FAILURE
        }
    }
}
