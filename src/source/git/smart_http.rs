//! git's smart-http protocol as a libgit2 subtransport, on hyper: `GET
//! info/refs?service=git-upload-pack` for the refs, then one `POST
//! git-upload-pack` per negotiation round, the pack streamed back as
//! libgit2 reads it.
//!
//! libgit2 calls this synchronously on the fetching (blocking) thread, so
//! each subtransport drives its own small current-thread runtime there;
//! the runtime thread of cutover never waits on the network. Credentials
//! go out as basic auth, to the remote's own host only: a redirect to
//! another host loses them, and https never follows a redirect to http.
//! Fetch only: cutover never pushes.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;

use super::connect::{self, Endpoint, TlsOnce};
use super::error::{TransportError, detail};
use super::session::{Shared, USER_AGENT};
use crate::redact::without_userinfo;

/// Forges look at the agent: GitHub serves smart http to `git/` agents.
/// A server silent for this long mid-transfer is taken for dead.
const STALL: Duration = Duration::from_secs(120);
/// git's own limit (`http.followRedirects = initial`) is the first request.
const MAX_REDIRECTS: usize = 5;
/// How much of a refusal's body is read for its explanation.
const DETAIL_MAX: usize = 4096;

pub struct HttpSubtransport {
    shared: Arc<Shared>,
    /// Where the repository turned out to be, after redirects of the first
    /// request; later requests go there directly.
    base: Arc<Mutex<Option<String>>>,
    runtime: Mutex<Option<Arc<tokio::runtime::Runtime>>>,
    tls: Arc<TlsOnce>,
}

impl HttpSubtransport {
    pub fn new(shared: Arc<Shared>) -> HttpSubtransport {
        HttpSubtransport {
            shared,
            base: Arc::new(Mutex::new(None)),
            runtime: Mutex::new(None),
            tls: Arc::default(),
        }
    }

    fn runtime(&self) -> io::Result<Arc<tokio::runtime::Runtime>> {
        let mut slot = self.runtime.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rt) = &*slot {
            return Ok(rt.clone());
        }
        let rt = Arc::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()?,
        );
        *slot = Some(rt.clone());
        Ok(rt)
    }
}

impl SmartSubtransport for HttpSubtransport {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        let (method, suffix) = match action {
            Service::UploadPackLs => (Method::GET, "/info/refs?service=git-upload-pack"),
            Service::UploadPack => (Method::POST, "/git-upload-pack"),
            Service::ReceivePackLs | Service::ReceivePack => {
                return Err(git2::Error::from_str(
                    "cutover fetches only; it never pushes",
                ));
            }
        };
        let given = without_userinfo(url).trim_end_matches('/').to_string();
        let base = self
            .base
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| given.clone());
        let runtime = self
            .runtime()
            .map_err(|e| git2::Error::from_str(&format!("cannot start the http client: {e}")))?;
        Ok(Box::new(HttpStream {
            shared: self.shared.clone(),
            runtime,
            base_slot: self.base.clone(),
            tls: self.tls.clone(),
            origin_host: Uri::try_from(given.as_str())
                .ok()
                .and_then(|u| u.host().map(str::to_string)),
            base,
            method,
            suffix,
            sent: Vec::new(),
            body: None,
            chunk: Bytes::new(),
            done: false,
        }))
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

struct HttpStream {
    shared: Arc<Shared>,
    runtime: Arc<tokio::runtime::Runtime>,
    tls: Arc<TlsOnce>,
    base_slot: Arc<Mutex<Option<String>>>,
    /// The configured remote's host: the only one credentials go to.
    origin_host: Option<String>,
    base: String,
    method: Method,
    suffix: &'static str,
    /// What libgit2 wrote: the POST body, sent on the first read.
    sent: Vec<u8>,
    body: Option<Incoming>,
    chunk: Bytes,
    done: bool,
}

impl Write for HttpStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.sent.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for HttpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.body.is_none() && !self.done {
            let response = self.runtime.clone().block_on(self.exchange());
            match response {
                Ok(body) => self.body = Some(body),
                Err(e) => return Err(self.shared.fail(e)),
            }
        }
        loop {
            if !self.chunk.is_empty() {
                let n = buf.len().min(self.chunk.len());
                buf[..n].copy_from_slice(&self.chunk.split_to(n));
                return Ok(n);
            }
            let Some(body) = self.body.as_mut() else {
                return Ok(0);
            };
            if self.done {
                return Ok(0);
            }
            let next = self
                .runtime
                .block_on(async { tokio::time::timeout(STALL, body.frame()).await });
            match next {
                Err(_) => {
                    let address = self.address();
                    return Err(self.shared.fail(TransportError::Timeout {
                        address,
                        secs: STALL.as_secs(),
                    }));
                }
                Ok(None) => self.done = true,
                Ok(Some(Err(e))) => {
                    let address = self.address();
                    return Err(self.shared.fail(TransportError::Io {
                        address,
                        message: format!("the transfer broke off: {e}"),
                    }));
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.chunk = data;
                    }
                }
            }
        }
    }
}

impl HttpStream {
    fn address(&self) -> String {
        Uri::try_from(self.base.as_str())
            .ok()
            .and_then(|u| Endpoint::of(&u))
            .map_or_else(|| self.shown(), |e| e.address())
    }

    fn shown(&self) -> String {
        self.shared.settings.redactor.shown().to_string()
    }

    /// Sends the request (following redirects of a GET) and checks the
    /// answer; the body that follows is the protocol's.
    async fn exchange(&mut self) -> Result<Incoming, TransportError> {
        let mut base = self.base.clone();
        for _ in 0..=MAX_REDIRECTS {
            let url = format!("{base}{}", self.suffix);
            let response = self.send(&url).await?;
            let status = response.status();
            if status.is_redirection() && self.method == Method::GET {
                base = self.redirected(&url, &response)?;
                continue;
            }
            if status.is_success() {
                self.check_type(&response)?;
                if base != self.base {
                    *self.base_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(base.clone());
                    self.base = base;
                }
                return Ok(response.into_body());
            }
            return Err(self.refusal(status, response).await);
        }
        Err(TransportError::NotGit {
            why: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    async fn send(&self, url: &str) -> Result<Response<Incoming>, TransportError> {
        let uri = Uri::try_from(url).map_err(|e| TransportError::NotGit {
            why: format!("not a URL: {e}"),
        })?;
        let endpoint = Endpoint::of(&uri).ok_or_else(|| TransportError::NotGit {
            why: "not an http or https URL".into(),
        })?;
        let settings = &self.shared.settings;
        let connection = connect::open(&endpoint, &uri, settings, &self.tls).await?;
        let address = endpoint.address();
        let io_error = |e: hyper::Error| TransportError::Io {
            address: address.clone(),
            message: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(connection.io))
            .await
            .map_err(io_error)?;
        tokio::spawn(conn);
        let target = match &connection.via_proxy {
            Some(_) => uri.to_string(),
            None => uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
        };
        let host = uri.authority().map_or("", |a| a.as_str()).to_string();
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(target)
            .header(header::HOST, host)
            .header(header::USER_AGENT, USER_AGENT);
        if self.method == Method::POST {
            request = request
                .header(
                    header::CONTENT_TYPE,
                    "application/x-git-upload-pack-request",
                )
                .header(header::ACCEPT, "application/x-git-upload-pack-result");
        }
        if let Some(Some(auth)) = &connection.via_proxy {
            request = request.header(header::PROXY_AUTHORIZATION, auth.clone());
        }
        if let Some(auth) = self.authorization(&endpoint) {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let request = request
            .body(Full::new(Bytes::from(self.sent.clone())))
            .map_err(|e| TransportError::Io {
                address: address.clone(),
                message: e.to_string(),
            })?;
        match tokio::time::timeout(STALL, sender.send_request(request)).await {
            Err(_) => Err(TransportError::Timeout {
                address,
                secs: STALL.as_secs(),
            }),
            Ok(result) => result.map_err(io_error),
        }
    }

    /// Basic auth for the remote's own host, when credentials are set.
    fn authorization(&self, endpoint: &Endpoint) -> Option<HeaderValue> {
        let settings = &self.shared.settings;
        let password = settings.password.as_deref()?;
        let own_host = self
            .origin_host
            .as_deref()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'));
        if own_host != Some(endpoint.host.as_str()) {
            return None;
        }
        let user = settings.username.as_deref().unwrap_or("x-access-token");
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// The new base of a redirect of `url`; never from https to http.
    fn redirected(
        &self,
        url: &str,
        response: &Response<Incoming>,
    ) -> Result<String, TransportError> {
        let not_git = |why: String| TransportError::NotGit { why };
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| not_git("a redirect without a Location".into()))?;
        let next = if location.starts_with('/') {
            let uri = Uri::try_from(url).map_err(|e| not_git(e.to_string()))?;
            format!(
                "{}://{}{location}",
                uri.scheme_str().unwrap_or("https"),
                uri.authority().map_or("", |a| a.as_str())
            )
        } else {
            location.to_string()
        };
        if url.starts_with("https://") && !next.starts_with("https://") {
            return Err(not_git(format!(
                "redirected from https to `{}`; refusing to leave TLS",
                crate::redact::redact_url(&next)
            )));
        }
        let base = next
            .split_once(self.suffix)
            .map(|(b, _)| b.to_string())
            .ok_or_else(|| {
                not_git(format!(
                    "redirected to `{}`, which is no repository URL",
                    crate::redact::redact_url(&next)
                ))
            })?;
        Ok(base)
    }

    /// A login page or a dumb server answers 200 too: only git's content
    /// type proves a git server.
    fn check_type(&self, response: &Response<Incoming>) -> Result<(), TransportError> {
        let expected = match self.method {
            Method::GET => "application/x-git-upload-pack-advertisement",
            _ => "application/x-git-upload-pack-result",
        };
        let got = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        if got.split(';').next().map(str::trim) == Some(expected) {
            return Ok(());
        }
        Err(TransportError::NotGit {
            why: format!(
                "the answer is `{}`, not git's smart http (is the URL a repository?)",
                got.chars().take(80).collect::<String>()
            ),
        })
    }

    async fn refusal(&self, status: StatusCode, response: Response<Incoming>) -> TransportError {
        let body = http_body_util::Limited::new(response.into_body(), DETAIL_MAX);
        let text = match tokio::time::timeout(Duration::from_secs(5), body.collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            _ => Bytes::new(),
        };
        let detail = self.shared.settings.redactor.redact(&detail(&text));
        let has_credentials = self.shared.settings.password.is_some();
        match status.as_u16() {
            401 if !has_credentials => TransportError::CredentialsNeeded,
            status @ (401 | 403) => TransportError::CredentialsRefused { status, detail },
            404 => TransportError::NoRepository,
            status => TransportError::Status { status, detail },
        }
    }
}
