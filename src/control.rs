//! The control socket: `cutover reload`, `cutover status` and friends talk to
//! the running supervisor over a unix socket (default /run/cutover.sock,
//! mode 0600), one JSON request and one JSON response per connection.
//!
//! The server side lives in the supervisor; the client side is what the CLI
//! subcommands call, typically through `docker exec NAME cutover reload`.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::config::Secret;
use crate::program::ProgramHandle;
use crate::reload::ReloadQueue;
use crate::source::{DeployRecord, SourceHandle};
use crate::status::{ReloadRecord, Status};

/// Requests are small; anything longer is not ours.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Reload {
        #[serde(default)]
        wait: bool,
    },
    Status,
    /// Fetch and cut over now: the configured ref, or `target` (ref or sha).
    Deploy {
        #[serde(default)]
        target: Option<String>,
        #[serde(default)]
        wait: bool,
    },
    /// Back to the previous good release, or to `to` (a kept sha).
    Rollback {
        #[serde(default)]
        to: Option<String>,
        #[serde(default)]
        wait: bool,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployRecord>,
}

impl Response {
    fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(message.into()),
            ..Response::default()
        }
    }
}

/// Gathers a `Status` from the actors; shared by the socket and HTTP servers.
#[derive(Clone)]
pub struct Inventory {
    pub programs: Vec<ProgramHandle>,
    pub queue: ReloadQueue,
    pub source: Option<SourceHandle>,
    pub webhook_secret: Option<Secret>,
    /// The configured `[source] ref`, for matching webhook pushes.
    pub git_ref: Option<String>,
    pub started: Instant,
}

impl Inventory {
    pub async fn status(&self) -> Status {
        let mut programs = Vec::new();
        for p in &self.programs {
            if let Some(s) = p.status().await {
                programs.push(s);
            }
        }
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            programs,
            reload: self.queue.stats().await,
            source: match &self.source {
                Some(s) => s.status().await,
                None => None,
            },
        }
    }

    async fn answer(&self, request: Request) -> Response {
        match request {
            Request::Status => Response {
                ok: true,
                status: Some(self.status().await),
                ..Response::default()
            },
            Request::Reload { wait: false } => {
                self.queue.trigger("control socket");
                Response {
                    ok: true,
                    ..Response::default()
                }
            }
            Request::Reload { wait: true } => {
                match self.queue.trigger_and_wait("control socket").await {
                    Some(record) => Response {
                        ok: record.ok,
                        error: record.error.clone(),
                        reload: Some(record),
                        ..Response::default()
                    },
                    None => Response::error("cutover is shutting down"),
                }
            }
            Request::Deploy { target, wait } => match &self.source {
                None => Response::error("no [source] configured: this cutover does not fetch code"),
                Some(source) => deploy_response(wait, source.deploy_by_hand(target, wait).await),
            },
            Request::Rollback { to, wait } => match &self.source {
                None => Response::error("no [source] configured: nothing to roll back"),
                Some(source) => deploy_response(wait, source.rollback(to, wait).await),
            },
        }
    }
}

/// The answer to `deploy` and `rollback`: queued, or the record waited for.
fn deploy_response(waited: bool, record: Option<DeployRecord>) -> Response {
    match record {
        Some(record) => Response {
            ok: record.succeeded(),
            error: record.error.clone(),
            deploy: Some(record),
            ..Response::default()
        },
        None if !waited => Response {
            ok: true,
            ..Response::default()
        },
        None => Response::error("cutover is shutting down"),
    }
}

/// A bound control socket; the file is removed on drop.
pub struct ControlServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` with mode 0600 and serves requests.
pub fn serve(path: &Path, inventory: Inventory) -> io::Result<ControlServer> {
    if StdUnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another cutover is already listening there; give this one its own with --socket",
        ));
    }
    // Bind under a temporary name, restrict it, then move it into place, so
    // the socket is never reachable with looser permissions.
    let staging = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging)?;
    std::fs::set_permissions(
        &staging,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    std::fs::rename(&staging, path)?;
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let inventory = inventory.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(stream, inventory).await {
                            debug!(error = %e, "control connection ended");
                        }
                    });
                }
                Err(e) => warn!(error = %e, "control socket accept failed"),
            }
        }
    });
    Ok(ControlServer {
        path: path.to_path_buf(),
        task,
    })
}

async fn handle(stream: UnixStream, inventory: Inventory) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = AsyncBufReader::new(read).take(MAX_REQUEST as u64);
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(line.trim()) {
        Ok(request) => inventory.answer(request).await,
        Err(e) => Response::error(format!("malformed request: {e}")),
    };
    let mut body = serde_json::to_vec(&response).map_err(io::Error::other)?;
    body.push(b'\n');
    write.write_all(&body).await
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no cutover is running at {} ({source}); is the path right? (--socket, CUTOVER_SOCKET)", .path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("talking to cutover at {}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("cutover at {} answered something unreadable: {source}", .path.display())]
    Malformed {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Sends one request to the running cutover and returns its answer.
pub fn request(path: &Path, request: &Request) -> Result<Response, ClientError> {
    let io_err = |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = StdUnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let mut body = serde_json::to_vec(request).expect("requests serialize");
    body.push(b'\n');
    stream.write_all(&body).map_err(io_err)?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(io_err)?;
    serde_json::from_str(&line).map_err(|source| ClientError::Malformed {
        path: path.to_path_buf(),
        source,
    })
}
