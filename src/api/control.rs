//! The control socket: `cutover reload`, `cutover status` and friends talk to
//! the running supervisor over a unix socket (default /run/cutover.sock,
//! mode 0600), one JSON request and one JSON response per connection.
//!
//! The server side lives in the supervisor; the client side is what the CLI
//! subcommands call, typically through `docker exec NAME cutover reload`.
//!
//! The server shares the supervisor's thread with the reaper and the
//! programs, so no client may hold it up: the request line must arrive
//! within `READ_TIMEOUT`, anything unreadable is answered with an error and
//! the connection closed, and at most `MAX_CONNECTIONS` are open at once.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tracing::debug;

use crate::api::accept::{AcceptBackoff, Slot, Slots, next_admitted};
pub use crate::api::control_response::{Details, Response};
use crate::config::Secret;
use crate::reload::ReloadQueue;
use crate::reload::trigger::Trigger;
use crate::source::{DeployRecord, SourceHandle};
use crate::status::Status;
use tokio::sync::watch;

/// Requests are small; anything longer is not ours.
const MAX_REQUEST: usize = 64 * 1024;

/// The request line must arrive within this after connecting; the client
/// sends it at once.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A client that does not take its answer within this is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections open at once. A `--wait` request holds its connection until
/// the reload or deploy is done, so this is also how many can wait.
pub const MAX_CONNECTIONS: usize = 64;

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

/// What the supervisor publishes for the endpoints: its phase, and the
/// programs once they run.
#[derive(Clone, Debug)]
pub struct Published {
    pub phase: crate::status::SupervisorPhase,
    pub programs: Vec<crate::program::ProgramHandle>,
}

/// Reads a `Status` from what the actors published, and passes requests
/// that change something on to them; shared by the socket and HTTP servers.
/// Never waits for a busy actor to answer a question.
#[derive(Clone)]
pub struct Inventory {
    pub supervisor: watch::Receiver<Published>,
    pub queue: ReloadQueue,
    pub source: Option<SourceHandle>,
    pub webhook_secret: Option<Secret>,
    /// The configured `[source] ref`, for matching webhook pushes.
    pub git_ref: Option<String>,
    pub started: Instant,
}

impl Inventory {
    pub fn status(&self) -> Status {
        let supervisor = self.supervisor.borrow().clone();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            state: supervisor.phase,
            programs: supervisor.programs.iter().map(|p| p.status()).collect(),
            reload: self.queue.stats(),
            source: self.source.as_ref().map(SourceHandle::status),
        }
    }

    /// What a request that changes something waits behind, if anything: the
    /// answer says so rather than leaving the client guessing.
    fn queued_behind(&self) -> Option<String> {
        let source = self.source.as_ref()?.status();
        let d = source.deploying?;
        Some(format!("queued behind the {}", d.describe()))
    }

    async fn answer(&self, request: Request) -> Response {
        match request {
            Request::Status => Response::Done(Details {
                status: Some(self.status()),
                ..Details::default()
            }),
            Request::Reload { wait: false } => {
                let stats = self.queue.stats();
                self.queue.trigger(Trigger::ControlSocket);
                Response::Done(Details {
                    queued: stats
                        .in_progress
                        .then(|| "queued behind the reload in progress".to_string()),
                    ..Details::default()
                })
            }
            Request::Reload { wait: true } => {
                match self.queue.trigger_and_wait(Trigger::ControlSocket).await {
                    Some(record) => Response::judged(
                        record.ok,
                        record.error.clone(),
                        Details {
                            reload: Some(record),
                            ..Details::default()
                        },
                    ),
                    None => Response::error("cutover is shutting down"),
                }
            }
            Request::Deploy { target, wait } => match &self.source {
                None => Response::error("no [source] configured: this cutover does not fetch code"),
                Some(source) => {
                    let queued = self.queued_behind();
                    let record = source.deploy_by_hand(target, wait).await;
                    deploy_response(wait, record, queued)
                }
            },
            Request::Rollback { to, wait } => match &self.source {
                None => Response::error("no [source] configured: nothing to roll back"),
                Some(source) => {
                    let queued = self.queued_behind();
                    let record = source.rollback(to, wait).await;
                    deploy_response(wait, record, queued)
                }
            },
        }
    }
}

/// The answer to `deploy` and `rollback`: queued, or the record waited for.
fn deploy_response(waited: bool, record: Option<DeployRecord>, queued: Option<String>) -> Response {
    match record {
        Some(record) => Response::judged(
            record.succeeded(),
            record.error.clone(),
            Details {
                deploy: Some(record),
                queued,
                ..Details::default()
            },
        ),
        None if !waited => Response::Done(Details {
            queued,
            ..Details::default()
        }),
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
    // Bind inside a private 0700 directory beside it, restrict the socket,
    // then move it into place: no one else can connect to it in between,
    // whatever the umask (which is process-wide, so not ours to change).
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let private =
        nix::unistd::mkdtemp(&parent.join(".cutover-sock-XXXXXX")).map_err(io::Error::from)?;
    let staging = private.join("control.sock");
    let bound = UnixListener::bind(&staging).and_then(|listener| {
        std::fs::set_permissions(
            &staging,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        std::fs::rename(&staging, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_dir_all(&private);
    let listener = bound?;
    let task = tokio::spawn(accept_loop(listener, inventory));
    Ok(ControlServer {
        path: path.to_path_buf(),
        task,
    })
}

async fn accept_loop(listener: UnixListener, inventory: Inventory) {
    let slots = Slots::new(MAX_CONNECTIONS);
    let mut backoff = AcceptBackoff::new("control socket");
    let busy = answer_bytes(&Response::error(format!(
        "cutover is busy: {MAX_CONNECTIONS} control requests are in progress; try again"
    )));
    loop {
        let accept = || async { listener.accept().await.map(|(stream, _)| stream) };
        let (stream, slot) = next_admitted(accept, &slots, &mut backoff, &busy).await;
        let inventory = inventory.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, inventory, Arc::new(slot)).await {
                debug!(error = %e, "control connection ended");
            }
        });
    }
}

/// One request, one answer, then the connection is closed.
async fn handle(stream: UnixStream, inventory: Inventory, slot: Arc<Slot>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let request = tokio::select! {
        read = tokio::time::timeout(READ_TIMEOUT, read_request(read)) => match read {
            Ok(request) => request,
            Err(_) => Err(MalformedRequest::Incomplete(READ_TIMEOUT)),
        },
        () = slot.evicted() => Err(MalformedRequest::Evicted),
    };
    let response = match request {
        Ok(request) => {
            let _busy = slot.busy();
            inventory.answer(request).await
        }
        Err(why) => {
            debug!(error = %why, "malformed control request");
            Response::error(format!("malformed request: {why}"))
        }
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&answer_bytes(&response))).await {
        Ok(written) => written,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client did not take its answer",
        )),
    }
}

/// Why a connection's request went unanswered; the client reads it after
/// "malformed request: ".
#[derive(Debug, thiserror::Error)]
enum MalformedRequest {
    #[error("reading it failed: {0}")]
    Read(io::Error),
    #[error("no newline within {} KiB; send one JSON object per line", .limit / 1024)]
    TooLong { limit: usize },
    #[error("not UTF-8: {0}")]
    NotUtf8(std::str::Utf8Error),
    #[error("empty; send one JSON object and a newline")]
    Empty,
    /// serde's own words: where in the line, and what it expected.
    #[error(transparent)]
    Json(serde_json::Error),
    #[error("no complete request line within {0:?}")]
    Incomplete(Duration),
    #[error("closed unanswered to make room for newer connections")]
    Evicted,
}

/// Reads one request: a JSON object on one line of UTF-8.
async fn read_request(read: OwnedReadHalf) -> Result<Request, MalformedRequest> {
    let mut line = Vec::new();
    let mut reader = AsyncBufReader::new(read).take(MAX_REQUEST as u64);
    reader
        .read_until(b'\n', &mut line)
        .await
        .map_err(MalformedRequest::Read)?;
    if line.last() != Some(&b'\n') && line.len() >= MAX_REQUEST {
        return Err(MalformedRequest::TooLong { limit: MAX_REQUEST });
    }
    let text = std::str::from_utf8(&line).map_err(MalformedRequest::NotUtf8)?;
    let text = text.trim();
    if text.is_empty() {
        return Err(MalformedRequest::Empty);
    }
    serde_json::from_str(text).map_err(MalformedRequest::Json)
}

fn answer_bytes(response: &Response) -> Vec<u8> {
    // A panic here would take PID 1 down (panic = "abort"); an answer that
    // cannot be serialized is reported as such instead.
    let mut body = serde_json::to_vec(response).unwrap_or_else(|e| {
        let error = Response::error(format!("cutover could not encode its answer: {e}"));
        serde_json::to_vec(&error).unwrap_or_default()
    });
    body.push(b'\n');
    body
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no cutover is running at {} ({source}); is the path right? (--socket, CUTOVER_SOCKET, or -c FILE for its [control] socket)", .path.display())]
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
