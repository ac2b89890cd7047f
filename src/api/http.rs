//! The optional HTTP endpoint (`[control] http`): /healthz for Kubernetes
//! probes, /status as JSON, /metrics in Prometheus text format, and
//! POST /webhook for forge push deliveries when a `[source]` is configured
//! (also served alone on `[source] webhook`). Signatures are checked by
//! `webhook` before the body is parsed; this module only maps outcomes to
//! HTTP statuses.
//!
//! Both listeners may face clients that never finish: a request head must
//! arrive within `HEADER_READ_TIMEOUT` (which also ends idle keep-alive
//! connections), a webhook body within `WEBHOOK_BODY_TIMEOUT`, and each
//! listener holds at most `MAX_CONNECTIONS` connections (`accept::Slots`).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::api::accept::{AcceptBackoff, Slots, next_admitted};
use crate::api::control::Inventory;
use crate::webhook::{self, Delivery, WebhookError};

/// Forges send at most a few hundred KiB for a push; anything larger is
/// refused before it is read into memory.
const WEBHOOK_MAX_BODY: usize = 4 << 20;

/// A request head (or, between requests, the next one) must arrive within
/// this; a probe or a forge sends its head at once.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A webhook body must arrive within this. Forges give up after ~10 s.
pub const WEBHOOK_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections open at once per listener. With the default soft limit of
/// 1024 file descriptors this leaves room for the control socket, the held
/// listening sockets and the programs' pipes.
pub const MAX_CONNECTIONS: usize = 256;

/// Sent to a connection refused because every slot is answering a request.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Binds `address`; done before any program starts so a taken port is
/// reported without starting anything.
pub async fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(address).await?;
    info!(%address, "HTTP endpoint: /healthz /status /metrics");
    Ok(listener)
}

/// Which routes a listener answers: `[control] http` serves all of them;
/// `[source] webhook`, often exposed to the internet, only POST /webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    All,
    WebhookOnly,
}

/// Serves until the task is aborted.
pub fn serve(
    listener: TcpListener,
    inventory: Inventory,
    routes: Routes,
) -> tokio::task::JoinHandle<()> {
    let name = match routes {
        Routes::All => "HTTP endpoint",
        Routes::WebhookOnly => "webhook endpoint",
    };
    tokio::spawn(async move {
        let slots = Slots::new(MAX_CONNECTIONS);
        let mut backoff = AcceptBackoff::new(name);
        loop {
            let accept = || async { listener.accept().await.map(|(stream, _)| stream) };
            let (stream, slot) = next_admitted(accept, &slots, &mut backoff, BUSY).await;
            tokio::spawn(connection(
                stream,
                Arc::new(slot),
                inventory.clone(),
                routes,
            ));
        }
    })
}

/// Serves one connection until the client closes it, a timeout ends it, or
/// its slot is needed for a newer one.
async fn connection(
    stream: TcpStream,
    slot: Arc<crate::api::accept::Slot>,
    inventory: Inventory,
    routes: Routes,
) {
    let in_service = slot.clone();
    let service = service_fn(move |req| {
        let busy = in_service.busy();
        let inventory = inventory.clone();
        async move {
            let response = route(req, inventory, routes).await;
            drop(busy);
            response
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = served => {
            if let Err(e) = result {
                debug!(error = %e, timeout = e.is_timeout(), "HTTP connection ended");
            }
        }
        () = slot.evicted() => debug!("idle HTTP connection closed to make room for a new one"),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

async fn route(
    req: Request<Incoming>,
    inventory: Inventory,
    routes: Routes,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/webhook" {
        return Ok(push(req, &inventory).await);
    }
    if routes == Routes::WebhookOnly {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: this listener serves only POST /webhook\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ));
    }
    let status = inventory.status();
    Ok(match req.uri().path() {
        "/healthz" => match status.health() {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("unhealthy: {why}\n"),
            ),
        },
        "/status" => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&status).unwrap_or_default(),
        ),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            status.render_prometheus(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz, /status, /metrics or POST /webhook\n".into(),
        ),
    })
}

/// POST /webhook: verify, match the ref, queue a deploy. Answers before the
/// deploy runs (forges time out after ~10 s); the outcome is in the history.
async fn push(req: Request<Incoming>, inventory: &Inventory) -> Response<Full<Bytes>> {
    let text = |status, body: String| reply(status, "text/plain", body + "\n");
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST only".into());
    }
    let (Some(source), Some(secret), Some(git_ref)) = (
        &inventory.source,
        &inventory.webhook_secret,
        &inventory.git_ref,
    ) else {
        return text(
            StatusCode::NOT_FOUND,
            "webhook disabled: needs [source] with webhook_secret_env or webhook_secret_file"
                .into(),
        );
    };
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    // Before the body is read, so an unsigned sender costs no buffering.
    if let Err(e) = webhook::check_headers(&headers, secret.0.as_bytes()) {
        warn!(error = %e, "webhook refused before its body was read");
        let status = match e {
            WebhookError::MissingSignature => StatusCode::UNAUTHORIZED,
            _ => StatusCode::BAD_REQUEST,
        };
        return text(status, e.to_string());
    }
    let read = Limited::new(req.into_body(), WEBHOOK_MAX_BODY).collect();
    let body = match tokio::time::timeout(WEBHOOK_BODY_TIMEOUT, read).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) => {
            return text(StatusCode::PAYLOAD_TOO_LARGE, format!("body not read: {e}"));
        }
        Err(_) => {
            let why = format!("body not read within {WEBHOOK_BODY_TIMEOUT:?}");
            warn!(error = %why, "webhook refused");
            return text(StatusCode::REQUEST_TIMEOUT, why);
        }
    };
    let delivery = Delivery {
        headers,
        body: &body,
    };
    match webhook::verify_and_parse(&delivery, secret.0.as_bytes()) {
        Err(e @ (WebhookError::MissingSignature | WebhookError::BadSignature)) => {
            warn!(error = %e, "webhook refused");
            text(StatusCode::UNAUTHORIZED, e.to_string())
        }
        Err(e @ WebhookError::NotAPush { .. }) => text(StatusCode::ACCEPTED, e.to_string()),
        Err(e) => {
            warn!(error = %e, "webhook refused");
            text(StatusCode::BAD_REQUEST, e.to_string())
        }
        Ok(push) if !webhook::ref_matches(git_ref, &push.git_ref) => text(
            StatusCode::ACCEPTED,
            format!(
                "push to {:?} ignored: cutover follows {git_ref:?}",
                push.git_ref
            ),
        ),
        Ok(push) => {
            info!(forge = %push.forge, git_ref = %push.git_ref, after = ?push.after, "webhook push");
            // The configured ref is fetched, not `after`: the remote is the
            // truth, and a delayed delivery must not move current backwards.
            source.deploy(crate::reload::trigger::Trigger::Webhook(push.forge));
            text(StatusCode::ACCEPTED, "deploy queued".into())
        }
    }
}
