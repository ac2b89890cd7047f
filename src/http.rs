//! The optional HTTP endpoint (`[control] http`): /healthz for Kubernetes
//! probes, /status as JSON, /metrics in Prometheus text format, and
//! POST /webhook for forge push deliveries when a `[source]` is configured
//! (also served alone on `[source] webhook`). Signatures are checked by
//! `webhook` before the body is parsed; this module only maps outcomes to
//! HTTP statuses.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::control::Inventory;
use crate::webhook::{self, Delivery, WebhookError};

/// Forges send at most a few hundred KiB for a push; anything larger is
/// refused before it is read into memory.
const WEBHOOK_MAX_BODY: usize = 4 << 20;

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
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let inventory = inventory.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| route(req, inventory.clone(), routes));
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(error = %e, "HTTP connection ended");
                }
            });
        }
    })
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
    let status = inventory.status().await;
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
    let headers = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let body = match Limited::new(req.into_body(), WEBHOOK_MAX_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return text(StatusCode::PAYLOAD_TOO_LARGE, format!("body not read: {e}"));
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
            source.deploy(&format!("webhook ({})", push.forge));
            text(StatusCode::ACCEPTED, "deploy queued".into())
        }
    }
}
