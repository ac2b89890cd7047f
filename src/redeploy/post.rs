//! `[redeploy] webhook`: one POST of a JSON body to a URL (http:// or
//! https://, verified against the system store like git remotes: see `tls`), signed like a
//! GitHub delivery when a secret is configured.
//!
//! Body: `{"event": "redeploy", "sha": ..., "ref": ..., "changed_files": [...],
//! "host": <this host's name, the short container id in Docker>}`. Header
//! `X-Cutover-Signature-256: sha256=<hex HMAC-SHA256 of the body>` when
//! `webhook_secret_env`/`webhook_secret_file` is set. Any 2xx is success;
//! anything else, a connection failure or the timeout is an error (retries
//! are the caller's). The URL is shown (logs, status, errors) without its
//! userinfo and query values, which may hold a token.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use super::{Redeploy, RedeployError, RedeployOutcome};
use crate::config::WebhookTarget;
use crate::redact::UrlRedactor;

/// The signature header (`sha256=<hex>`).
pub const SIGNATURE_HEADER: &str = "X-Cutover-Signature-256";
/// Response bytes kept for an error message.
const BODY_LIMIT: usize = 4096;

#[derive(Serialize)]
struct Body<'a> {
    event: &'static str,
    sha: &'a str,
    #[serde(rename = "ref")]
    git_ref: &'a str,
    changed_files: &'a [String],
    host: &'a str,
}

/// The JSON body POSTed for `request`, as sent by `host`.
pub fn webhook_body(request: &Redeploy, host: &str) -> Vec<u8> {
    let body = Body {
        event: "redeploy",
        sha: &request.sha,
        git_ref: &request.git_ref,
        changed_files: &request.changed_files,
        host,
    };
    serde_json::to_vec(&body).expect("plain strings serialize")
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub(super) async fn post(
    target: &WebhookTarget,
    request: &Redeploy,
) -> Result<RedeployOutcome, RedeployError> {
    // A token in the URL's query or userinfo never reaches a log line,
    // the status or an error; nor does it when an answer echoes it.
    let redactor = UrlRedactor::new(&target.url);
    let url = redactor.shown().to_string();
    let fail = |message: String| RedeployError::Webhook {
        url: url.clone(),
        message: redactor.redact(&message),
    };
    let body = webhook_body(request, &hostname());
    let mut builder = Request::post(target.url.as_str())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, concat!("cutover/", env!("CARGO_PKG_VERSION")))
        .header("X-Cutover-Event", "redeploy");
    if let Some(secret) = &target.secret {
        builder = builder.header(
            SIGNATURE_HEADER,
            crate::webhook::sign_sha256(secret.0.as_bytes(), &body),
        );
    }
    let req = builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| fail(e.to_string()))?;
    // The same trust as git's: the system store (SSL_CERT_FILE/DIR), else
    // the built-in roots.
    let tls = crate::tls::client_config(None).map_err(|e| fail(e.to_string()))?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    tracing::info!(url = %url, sha = %request.sha, "redeploy: POST to the webhook");
    let exchange = async {
        let response = client
            .request(req)
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        let status = response.status();
        // Read (a bounded part of) the answer: it explains a refusal.
        let text = match Limited::new(response.into_body(), BODY_LIMIT)
            .collect()
            .await
        {
            Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
            Err(_) => String::new(),
        };
        Ok::<_, RedeployError>((status, text))
    };
    let (status, text) = tokio::time::timeout(target.timeout, exchange)
        .await
        .map_err(|_| {
            fail(format!(
                "no answer within {}",
                humantime::format_duration(target.timeout)
            ))
        })??;
    if status.is_success() {
        tracing::info!(url = %url, status = status.as_u16(), "redeploy webhook accepted");
        Ok(RedeployOutcome::WebhookAccepted {
            status: status.as_u16(),
        })
    } else {
        Err(RedeployError::WebhookStatus {
            url: url.clone(),
            status: status.as_u16(),
            body: redactor.redact(&text),
        })
    }
}

/// "client error (Connect): tcp connect error: Connection refused" rather
/// than just the outermost "client error (Connect)".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_fields() {
        let request = Redeploy {
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            git_ref: "refs/heads/main".into(),
            changed_files: vec!["requirements.txt".into(), "Dockerfile".into()],
            release_dir: "/srv/releases/x".into(),
        };
        let body = webhook_body(&request, "3f2a1b");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "event": "redeploy",
                "sha": "0123456789abcdef0123456789abcdef01234567",
                "ref": "refs/heads/main",
                "changed_files": ["requirements.txt", "Dockerfile"],
                "host": "3f2a1b",
            })
        );
    }

    #[test]
    fn signature_matches_githubs_scheme() {
        // GitHub's documented test vector: secret and body below.
        let signature =
            crate::webhook::sign_sha256(b"It's a Secret to Everybody", b"Hello, World!");
        assert_eq!(
            signature,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
