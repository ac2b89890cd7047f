//! The optional HTTP endpoint (`[control] http`): /healthz for Kubernetes
//! probes, /status as JSON, /metrics in Prometheus text format.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::control::Inventory;

/// Binds `address`; done before any program starts so a taken port is
/// reported without starting anything.
pub async fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(address).await?;
    info!(%address, "HTTP endpoint: /healthz /status /metrics");
    Ok(listener)
}

/// Serves until the task is aborted.
pub fn serve(listener: TcpListener, inventory: Inventory) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let inventory = inventory.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| route(req, inventory.clone()));
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
) -> Result<Response<Full<Bytes>>, Infallible> {
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
            "not found: try /healthz, /status or /metrics\n".into(),
        ),
    })
}
