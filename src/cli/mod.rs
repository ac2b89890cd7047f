//! The command line: parses arguments, runs the subcommand, and maps every
//! outcome to an exit code. Exit codes follow sysexits where one fits
//! (78 = configuration error).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod oneshot;

use crate::api::control::{self, Details, Request, Response};
use crate::config::{Config, ConfigError};
use crate::logging::{self, LogFormat};
use oneshot::{check, fingerprint, hold, holder_status, redeploy};

/// Exit code for an invalid configuration (EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;
/// Exit code when cutover itself cannot work (EX_SOFTWARE).
pub const EXIT_INTERNAL: u8 = 70;

#[derive(Debug, Parser)]
#[command(
    name = "cutover",
    version,
    about = "A PID-1 supervisor that hot-reloads code in containers",
    propagate_version = true
)]
struct Cli {
    /// Log format for cutover's own messages (stderr).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Control socket; beats the config's `[control] socket` (default:
    /// /run/cutover.sock).
    #[arg(long, global = true, env = "CUTOVER_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run as supervisor (the container's ENTRYPOINT).
    Run {
        /// Config file (TOML).
        #[arg(short, long, env = "CUTOVER_CONFIG")]
        config: Option<PathBuf>,
        /// Program to run; replaces [app].command. Without a config, cutover
        /// runs just this, like tini.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Validate a config: exit 0, or print every problem and exit 78.
    Check {
        /// Config file (TOML).
        #[arg(short, long, env = "CUTOVER_CONFIG")]
        config: PathBuf,
    },
    /// Ask the running cutover to reload the programs.
    Reload {
        /// Return when the reload finished; exit non-zero with the reason if it failed.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        config: ClientConfig,
    },
    /// Fetch from git and cut over now: to the configured ref, or to REF/SHA.
    Deploy {
        /// A branch, tag or commit id; default: `[source] ref`.
        #[arg(value_name = "REF|SHA")]
        target: Option<String>,
        /// Return when the deploy finished; exit non-zero with the reason if
        /// it failed, was refused or was rolled back.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        config: ClientConfig,
    },
    /// Switch back to the previous good release (or a kept one) and reload.
    Rollback {
        /// A kept release (full or abbreviated sha); default: the previous good one.
        #[arg(long, value_name = "SHA")]
        to: Option<String>,
        /// Return when the rollback finished; exit non-zero if it failed.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        config: ClientConfig,
    },
    /// Show programs, pids, states and the last reload of the running cutover.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
        /// Ask the `cutover hold` at PATH instead: what it holds, who took it.
        #[arg(long, value_name = "PATH")]
        holder: Option<PathBuf>,
        #[command(flatten)]
        config: ClientConfig,
    },
    /// Hold listening sockets for app containers: bind them once and hand
    /// them to the cutover of any container that asks (socket activation
    /// across containers). Runs until SIGTERM.
    Hold {
        /// A socket to hold, as NAME=ADDRESS (repeatable): http=0.0.0.0:8000.
        #[arg(short, long = "listen", value_name = "NAME=ADDRESS", required = true)]
        listen: Vec<String>,
        /// The unix socket app containers ask at (a shared volume).
        #[arg(long, value_name = "PATH", default_value = "/run/cutover/sockets")]
        at: PathBuf,
        /// A user id that may take the sockets (repeatable); default: the holder's.
        #[arg(long = "allow-uid", value_name = "UID")]
        allow_uid: Vec<u32>,
        /// A group id that may take the sockets (repeatable); the socket file
        /// becomes 0660 with the first.
        #[arg(long = "allow-gid", value_name = "GID")]
        allow_gid: Vec<u32>,
        #[arg(long, default_value_t = 1024)]
        backlog: u32,
        /// Serve /healthz on this address (e.g. 0.0.0.0:9091).
        #[arg(long, value_name = "ADDRESS")]
        http: Option<std::net::SocketAddr>,
        /// Also serve /status there: who took what (hostnames, pids, uids),
        /// which the unix socket otherwise tells only to trusted peers.
        #[arg(long, requires = "http")]
        http_status: bool,
    },
    /// Build and replace app containers on their behalf, holding the engine's
    /// socket so that they need none: the trusted side of `[redeploy]
    /// deployer`, in a container whose image no commit builds. Runs until
    /// SIGTERM.
    Deployer {
        /// Its file, with a `[deployer]` section and nothing else.
        #[arg(
            short,
            long,
            value_name = "FILE",
            default_value = "/etc/cutover/deployer.toml"
        )]
        config: PathBuf,
        /// The container to replace, instead of the file's `container` (so a
        /// compose file can pass `${APP_CONTAINER}`).
        #[arg(long, value_name = "NAME")]
        container: Option<String>,
    },
    /// Print (or write as the image's baseline) the digest of a release's
    /// dependency files and the files that went into it.
    Fingerprint {
        /// The release directory.
        #[arg(value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Write the fingerprint to FILE (the `[dependencies] baseline` cutover
        /// compares releases with), atomically.
        #[arg(long, value_name = "FILE")]
        write: Option<PathBuf>,
        /// Config file whose `[dependencies] files` to use (only that section
        /// is read); default: the built-in patterns.
        #[arg(short, long, env = "CUTOVER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the configured `[redeploy]` action once, now: build and replace
    /// the container, call the webhook or run the command for a release.
    Redeploy {
        /// Config file (TOML) with a `[redeploy]` section.
        #[arg(short, long, env = "CUTOVER_CONFIG")]
        config: PathBuf,
        /// The release directory; default: `[source] root`/current, else `.`.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The commit; default: the release directory's name if it is a commit id.
        #[arg(long, value_name = "SHA")]
        sha: Option<String>,
        /// The ref the commit came from (CUTOVER_REF, the webhook's `ref`).
        #[arg(long = "ref", value_name = "REF", default_value = "")]
        git_ref: String,
        /// A dependency file that changed (repeatable).
        #[arg(long = "changed", value_name = "FILE")]
        changed: Vec<String>,
    },
    /// The health-gated replace's one-shot replacer container (internal):
    /// stop OLD, start NEW, roll back unless it becomes healthy.
    #[command(hide = true)]
    Replace {
        #[arg(long, default_value = "/var/run/docker.sock")]
        engine: PathBuf,
        #[arg(long)]
        old: String,
        #[arg(long)]
        new: String,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
        health_timeout: std::time::Duration,
    },
}

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    logging::init(cli.log_format);
    let socket = cli.socket;
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config, command } => run(config, command, socket),
        Command::Reload { wait, config } => client(socket, config, |s| reload(s, wait)),
        Command::Deploy {
            target,
            wait,
            config,
        } => client(socket, config, |s| {
            deploy(s, &Request::Deploy { target, wait })
        }),
        Command::Rollback { to, wait, config } => client(socket, config, |s| {
            deploy(s, &Request::Rollback { to, wait })
        }),
        Command::Status {
            json,
            holder: Some(holder),
            ..
        } => holder_status(&holder, json),
        Command::Status { json, config, .. } => client(socket, config, |s| status(s, json)),
        Command::Hold {
            listen,
            at,
            allow_uid,
            allow_gid,
            backlog,
            http,
            http_status,
        } => hold(
            listen,
            at,
            allow_uid,
            allow_gid,
            backlog,
            http.map(|address| (address, http_status)),
        ),
        Command::Deployer { config, container } => deployer(&config, container),
        Command::Fingerprint { dir, write, config } => {
            fingerprint(&dir, write.as_deref(), config.as_deref())
        }
        Command::Redeploy {
            config,
            dir,
            sha,
            git_ref,
            changed,
        } => redeploy(&config, dir, sha, git_ref, changed),
        Command::Replace {
            engine,
            old,
            new,
            health_timeout,
        } => replace(&crate::redeploy::ReplacerArgs {
            engine,
            old,
            new,
            health_timeout,
        }),
    }
}

/// A client subcommand: `ask` the running cutover at its control socket.
fn client(
    socket: Option<PathBuf>,
    config: ClientConfig,
    ask: impl FnOnce(&Path) -> ExitCode,
) -> ExitCode {
    match control_socket(socket, config) {
        Ok(socket) => ask(&socket),
        Err(code) => code,
    }
}

/// `cutover deployer`: runs until SIGTERM.
fn deployer(config: &Path, container: Option<String>) -> ExitCode {
    match Config::load_deployer(config, container) {
        Ok(deployer) => run_to_end(
            "cutover deployer",
            crate::redeploy::deployer::trusted::run(deployer),
        ),
        Err(e) => config_failure(&e),
    }
}

/// `cutover replace` (internal): the replacer container's one job; its
/// outcome on stdout, for the cutover that started it.
fn replace(args: &crate::redeploy::ReplacerArgs) -> ExitCode {
    match runtime() {
        Ok(rt) => {
            let (code, result) = rt.block_on(crate::redeploy::run_replacer(args));
            println!("{result}");
            ExitCode::from(code)
        }
        Err(code) => code,
    }
}

/// `-c FILE` of the client subcommands.
#[derive(Debug, clap::Args)]
struct ClientConfig {
    /// Config file of the running cutover, to find its control socket
    /// (`[control] socket`; only that section is read).
    #[arg(short, long, env = "CUTOVER_CONFIG")]
    config: Option<PathBuf>,
}

/// Where the running cutover listens: --socket or CUTOVER_SOCKET, else the
/// config's `[control] socket`, else the default. A config that cannot be
/// read is an error (exit 78), not a silent fall back to the default.
fn control_socket(socket: Option<PathBuf>, client: ClientConfig) -> Result<PathBuf, ExitCode> {
    if let Some(socket) = socket {
        return Ok(socket);
    }
    match client.config.as_deref().map(Config::load_control) {
        None => Ok(crate::config::default_control_socket()),
        Some(Ok(control)) => Ok(control.socket),
        Some(Err(e)) => Err(config_failure(&e)),
    }
}

fn ask(socket: &Path, request: &Request) -> Result<Response, ExitCode> {
    control::request(socket, request).map_err(|e| {
        eprintln!("cutover: {e}");
        ExitCode::FAILURE
    })
}

fn reload(socket: &Path, wait: bool) -> ExitCode {
    let response = match ask(socket, &Request::Reload { wait }) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match response {
        Response::Done(Details {
            reload: None,
            queued,
            ..
        }) => println!("reload {}", queued.as_deref().unwrap_or("queued")),
        Response::Done(Details {
            reload: Some(record),
            ..
        }) => println!(
            "reload #{} done in {:.0} ms ({})",
            record.id, record.duration_ms, record.trigger
        ),
        Response::Failed { error, .. } => {
            eprintln!(
                "cutover: reload failed: {}",
                error.as_deref().unwrap_or("unknown reason")
            );
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// `deploy` and `rollback`: both answer with a history record when waited for.
fn deploy(socket: &Path, request: &Request) -> ExitCode {
    let response = match ask(socket, request) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let what = match request {
        Request::Rollback { .. } => "rollback",
        _ => "deploy",
    };
    match response {
        Response::Done(Details {
            deploy: None,
            queued,
            ..
        }) => println!("{what} {}", queued.as_deref().unwrap_or("queued")),
        Response::Done(Details {
            deploy: Some(record),
            ..
        }) => println!(
            "{} {} in {:.0} ms ({})",
            record.outcome,
            record.sha.as_ref().map_or("-", |s| s.as_str()),
            record.duration_ms,
            record.trigger
        ),
        Response::Failed { error, details } => {
            let outcome = details
                .deploy
                .as_ref()
                .map_or_else(|| "failed".to_string(), |r| r.outcome.to_string());
            eprintln!(
                "cutover: {what} {outcome}: {}",
                error.as_deref().unwrap_or("unknown reason")
            );
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn status(socket: &Path, json: bool) -> ExitCode {
    let response = match ask(socket, &Request::Status) {
        Ok(r) => r,
        Err(code) => return code,
    };
    // A status is shown whenever one came, as it always was.
    let (details, error) = match response {
        Response::Done(details) => (details, None),
        Response::Failed { error, details } => (details, error),
    };
    let Some(status) = details.status else {
        eprintln!(
            "cutover: {}",
            error.as_deref().unwrap_or("no status in the answer")
        );
        return ExitCode::FAILURE;
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
    } else {
        print!("{}", status.render_text());
    }
    ExitCode::SUCCESS
}

fn run(path: Option<PathBuf>, command: Vec<String>, socket: Option<PathBuf>) -> ExitCode {
    let command = (!command.is_empty()).then_some(command);
    let config = match (path, command) {
        (Some(path), command) => Config::load(&path, command),
        (None, Some(command)) => Config::for_command(command),
        (None, None) => {
            eprintln!(
                "cutover: nothing to run: pass -c FILE, set CUTOVER_CONFIG, \
                 or give a command after `--`"
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut config = match config {
        Ok(c) => c,
        Err(e) => return config_failure(&e),
    };
    if let Some(socket) = socket {
        config.control.socket = socket;
    }
    run_to_end("cutover", crate::supervisor::run(config))
}

/// Runs a long-lived mode (the supervisor, the holder) to its end: the exit
/// code it gives, or EXIT_INTERNAL with its error.
fn run_to_end<E: std::fmt::Display>(
    what: &str,
    work: impl std::future::Future<Output = Result<i32, E>>,
) -> ExitCode {
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    // Parsing and validation are over and never run again; see `memory`.
    crate::memory::drop_startup_code();
    match runtime.block_on(work) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("{what}: {e}");
            ExitCode::from(EXIT_INTERNAL)
        }
    }
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("cutover: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// One thread is enough: cutover's work is waiting on children and sockets.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cutover: cannot start the async runtime: {e}");
            ExitCode::from(EXIT_INTERNAL)
        })
}
