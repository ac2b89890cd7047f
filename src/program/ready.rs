//! Readiness: when an instance counts as ready to serve.
//!
//! Checks run in this order, all within `timeout`: READY=1 on the instance's
//! own NOTIFY_SOCKET (when `notify`), surviving `grace`, then the http, tcp
//! and command checks polled every `interval` until all pass. The caller
//! races the check against the instance's exit, so a crash fails at once.
//! An instance that users do not reach yet (the new one of an overlap) is
//! probed through routes to its own sockets, so the http and tcp checks
//! speak for it alone. After a reload, a `Watchdog` keeps asking the same
//! checks for a while, to catch an instance whose main process lives on
//! while it no longer serves.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout_at};

use crate::config::{ChildEnv, HttpTarget, ReadyConfig, RunAs};
use crate::process::exit::ExitStatus;
use crate::process::group::signal_group;
use crate::process::reaper::Reaper;
use crate::process::spawn::{LaunchSpec, SpawnError, fork_exec};
use crate::sockets::handoff::ProbeRoute;

/// Longest a single probe attempt may take before it counts as failed.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(5);

/// Failed checks in a row after which a watched instance counts as lost:
/// one failure may be a slow moment, three a second apart are not.
const LOST_AFTER: u32 = 3;
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// `[ready] grace` where an old instance may answer the probe too, or where
/// there is no check but surviving it.
const DEFAULT_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("no READY=1 on NOTIFY_SOCKET within {}", humantime::format_duration(*.timeout))]
    NoNotify { timeout: Duration },
    #[error("not ready within {}: {last}", humantime::format_duration(*.timeout))]
    Timeout { timeout: Duration, last: String },
    #[error("readiness check stopped")]
    Aborted,
    #[error("stopped passing its readiness check: {last}")]
    Lost { last: String },
}

/// Why one attempt of the checks failed: the `last` of [`NotReady`].
#[derive(Debug, thiserror::Error)]
pub enum CheckFailed {
    #[error("GET {url}: no answer")]
    NoAnswer { url: String },
    #[error("GET {url}: {error}")]
    Http { url: String, error: std::io::Error },
    #[error("GET {url}: no HTTP status in the answer")]
    NoStatus { url: String },
    #[error("GET {url}: status {status}")]
    Status { url: String, status: u16 },
    #[error("connect {addr}: timed out")]
    ConnectTimedOut { addr: String },
    #[error("connect {addr}: {error}")]
    Connect { addr: String, error: std::io::Error },
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("check command {0}")]
    CommandFailed(ExitStatus),
    #[error("check command: exit status lost")]
    CommandExitLost,
    #[error(
        "check command still running after {}",
        humantime::format_duration(ATTEMPT_LIMIT)
    )]
    CommandHung,
}

/// Everything a readiness check needs about the instance it checks.
pub struct Probe {
    pub config: ReadyConfig,
    pub pid: Pid,
    pub notify: Option<watch::Receiver<bool>>,
    pub reaper: Reaper,
    pub workdir: Option<PathBuf>,
    pub user: Option<RunAs>,
    /// The program's environment (never the secrets cutover reads).
    pub env: ChildEnv,
    /// How to reach this instance alone, while users reach another.
    pub routes: Vec<ProbeRoute>,
    /// Users reach this instance (a first start, a `restart`): no other
    /// instance of the program can answer on its sockets.
    pub alone: bool,
}

/// A running readiness check; dropping it stops the check.
pub struct ReadyCheck(JoinHandle<Result<Duration, NotReady>>);

impl ReadyCheck {
    pub fn start(probe: Probe) -> ReadyCheck {
        ReadyCheck(tokio::spawn(probe.run()))
    }
}

impl Future for ReadyCheck {
    type Output = Result<Duration, NotReady>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(NotReady::Aborted)))
    }
}

impl Drop for ReadyCheck {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A readiness watch after a reload; resolves only when the instance is
/// lost, and dropping it stops the watch.
pub struct Watchdog(JoinHandle<NotReady>);

impl Watchdog {
    pub fn start(probe: Probe, window: Duration) -> Watchdog {
        Watchdog(tokio::spawn(probe.watch(window)))
    }
}

impl Future for Watchdog {
    type Output = NotReady;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(NotReady::Aborted))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Probe {
    /// Asks the checks every second for `window`; returns when they failed
    /// [`LOST_AFTER`] times in a row, never if they did not.
    async fn watch(self, window: Duration) -> NotReady {
        let end = Instant::now() + window;
        let mut failures = 0;
        while Instant::now() < end {
            sleep(WATCH_EVERY.max(self.config.interval)).await;
            match self.check_once(Instant::now() + ATTEMPT_LIMIT).await {
                Ok(()) => failures = 0,
                Err(last) => {
                    failures += 1;
                    if failures >= LOST_AFTER {
                        return NotReady::Lost {
                            last: last.to_string(),
                        };
                    }
                }
            }
        }
        std::future::pending().await
    }

    /// `[ready] grace`, or its default: none where the check speaks for this
    /// instance alone (its own READY=1; no other instance running; http/tcp
    /// probes that all reach its own socket and no command), 1 s where an
    /// old instance may answer, and 1 s without any check (surviving it is
    /// the check).
    fn grace(&self) -> Duration {
        self.config.grace.unwrap_or_else(|| {
            let c = &self.config;
            let checked = c.notify || c.http.is_some() || c.tcp.is_some() || c.command.is_some();
            if !checked {
                // Surviving the grace is the only check there is: a release
                // that crashes at start still fails its reload.
                return DEFAULT_GRACE;
            }
            if self.alone {
                return Duration::ZERO;
            }
            let exact_probes = !self.routes.is_empty()
                && self.config.command.is_none()
                && self
                    .config
                    .http
                    .iter()
                    .map(|h| h.authority.as_str())
                    .chain(self.config.tcp.as_deref())
                    .all(|target| {
                        target
                            .rsplit_once(':')
                            .and_then(|(_, port)| port.parse::<u16>().ok())
                            .is_some_and(|port| self.routes.iter().any(|r| r.port() == port))
                    });
            if self.config.notify || exact_probes {
                Duration::ZERO
            } else {
                DEFAULT_GRACE
            }
        })
    }

    /// Waits until ready; the time it took.
    pub async fn run(mut self) -> Result<Duration, NotReady> {
        let started = Instant::now();
        let timeout = self.config.timeout;
        let deadline = started + timeout;
        if let Some(mut ready) = self.notify.take() {
            let waited = timeout_at(deadline, ready.wait_for(|r| *r)).await;
            if !matches!(waited, Ok(Ok(_))) {
                return Err(NotReady::NoNotify { timeout });
            }
        }
        let mut last = String::from("the instance did not survive its grace period");
        let checks = async {
            sleep(self.grace()).await;
            loop {
                match self.check_once(deadline).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::debug!(pid = self.pid.as_raw(), error = %e, "not ready yet");
                        last = e.to_string();
                    }
                }
                sleep(self.config.interval).await;
            }
        };
        match timeout_at(deadline, checks).await {
            Ok(()) => Ok(started.elapsed()),
            Err(_) => Err(NotReady::Timeout { timeout, last }),
        }
    }

    async fn check_once(&self, deadline: Instant) -> Result<(), CheckFailed> {
        let attempt_deadline = deadline.min(Instant::now() + ATTEMPT_LIMIT);
        if let Some(target) = &self.config.http {
            timeout_at(attempt_deadline, http_get(target, &self.routes))
                .await
                .map_err(|_| CheckFailed::NoAnswer { url: target.url() })??;
        }
        if let Some(addr) = &self.config.tcp {
            timeout_at(attempt_deadline, connect(addr, &self.routes))
                .await
                .map_err(|_| CheckFailed::ConnectTimedOut { addr: addr.clone() })?
                .map_err(|error| CheckFailed::Connect {
                    addr: addr.clone(),
                    error,
                })?;
        }
        if let Some(command) = &self.config.command {
            self.run_command(command, attempt_deadline).await?;
        }
        Ok(())
    }

    /// Runs the check command through cutover's own spawn and reaper (never
    /// a second waitpid), with the instance's pid in CUTOVER_PID.
    async fn run_command(&self, command: &[String], deadline: Instant) -> Result<(), CheckFailed> {
        let extra = [("CUTOVER_PID".to_string(), self.pid.to_string())];
        let spec = LaunchSpec {
            command,
            workdir: self.workdir.as_deref(),
            env: &self.env,
            extra_env: &extra,
            user: self.user.as_ref(),
            listen: &[],
            foreground_tty: false,
            output: None,
            input: None,
            errors: None,
        };
        let forked_at = std::time::Instant::now();
        let forked = fork_exec(&spec)?;
        let mut exit = self.reaper.watch(forked.pid, forked_at);
        let pid = forked.confirm().await?;
        match timeout_at(deadline, &mut exit).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(CheckFailed::CommandFailed(status)),
            Ok(Err(_)) => Err(CheckFailed::CommandExitLost),
            Err(_) => {
                signal_group(pid, Signal::SIGKILL);
                let _ = exit.await;
                Err(CheckFailed::CommandHung)
            }
        }
    }
}

/// Connects to `authority` (host:port), through the route that reaches it
/// when there is one.
async fn connect(authority: &str, routes: &[ProbeRoute]) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host(authority).await? {
        let attempt = match routes.iter().find(|r| r.serves(addr)) {
            Some(route) => route.connect(addr).await,
            None => TcpStream::connect(addr).await,
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the name resolves to no address")))
}

/// One plain HTTP/1.1 GET; Ok for a 2xx status.
pub async fn http_get(target: &HttpTarget, routes: &[ProbeRoute]) -> Result<(), CheckFailed> {
    let url = target.url();
    let mut stream =
        connect(&target.authority, routes)
            .await
            .map_err(|error| CheckFailed::Http {
                url: url.clone(),
                error,
            })?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: cutover\r\nConnection: close\r\n\r\n",
        target.path, target.authority
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|error| CheckFailed::Http {
            url: url.clone(),
            error,
        })?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|error| CheckFailed::Http {
                url: url.clone(),
                error,
            })?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| CheckFailed::NoStatus { url: url.clone() })?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(CheckFailed::Status { url, status })
    }
}
