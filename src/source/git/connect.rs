//! One connection to a git server for the smart-http transport: TCP,
//! through the proxy the environment names (a CONNECT tunnel for https,
//! absolute-form requests for plain http, as curl does), then TLS verified
//! against [`crate::tls`] for https.
//!
//! Each failure is told apart here, where it is known: the proxy refused,
//! the server is down, the certificate is for another name.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::Uri;
use hyper::header::HeaderValue;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::TransportError;
use super::session::{Settings, USER_AGENT};
use crate::redact::redact_url;
use crate::tls::TlsSetupError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// curl's default port for a proxy URL without one.
const PROXY_DEFAULT_PORT: u16 = 1080;
/// A proxy's answer to CONNECT is a few lines; more is not a proxy.
const CONNECT_REPLY_MAX: usize = 16 * 1024;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where a request goes, taken from its URL.
pub struct Endpoint {
    pub tls: bool,
    /// Without IPv6 brackets: what TCP and TLS name.
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn of(uri: &Uri) -> Option<Endpoint> {
        let tls = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        Some(Endpoint {
            tls,
            host: host.to_string(),
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        })
    }

    /// `host:port`, as errors name it.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

pub struct Connection {
    pub io: Box<dyn Io>,
    /// Plain http through a proxy: requests name the whole URL and carry
    /// the proxy's credentials.
    pub via_proxy: Option<Option<HeaderValue>>,
}

/// The TLS client settings of one remote operation (an ls-remote, a
/// fetch): the system store and `ca_file` are read from disk at its first
/// https connection, not at each of its requests.
#[derive(Default)]
pub struct TlsOnce(OnceLock<Arc<ClientConfig>>);

impl TlsOnce {
    fn config(&self, ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsSetupError> {
        if let Some(config) = self.0.get() {
            return Ok(config.clone());
        }
        let config = crate::tls::client_config(ca_file)?;
        Ok(self.0.get_or_init(|| config).clone())
    }
}

pub async fn open(
    endpoint: &Endpoint,
    uri: &Uri,
    settings: &Settings,
    tls: &TlsOnce,
) -> Result<Connection, TransportError> {
    let Some(proxy) = settings.proxy.intercept(uri) else {
        let tcp = tcp(&endpoint.host, endpoint.port, &endpoint.address()).await?;
        return finish(endpoint, tcp, settings, tls).await;
    };
    let shown = redact_url(&proxy.uri().to_string());
    let proxy_error = |why: String| TransportError::Proxy {
        proxy: shown.clone(),
        why,
    };
    if proxy.uri().scheme_str() != Some("http") {
        return Err(proxy_error(
            "only http:// proxy URLs are supported (the tunnel itself carries TLS)".into(),
        ));
    }
    let Some(proxy_endpoint) = Endpoint::of(proxy.uri()).map(|mut e| {
        e.port = proxy.uri().port_u16().unwrap_or(PROXY_DEFAULT_PORT);
        e
    }) else {
        return Err(proxy_error("the proxy URL names no host".into()));
    };
    let auth = proxy.basic_auth().cloned();
    let mut tcp = tcp(
        &proxy_endpoint.host,
        proxy_endpoint.port,
        &proxy_endpoint.address(),
    )
    .await
    .map_err(|e| proxy_error(e.to_string()))?;
    if !endpoint.tls {
        return Ok(Connection {
            io: Box::new(tcp),
            via_proxy: Some(auth),
        });
    }
    tunnel(&mut tcp, endpoint, auth.as_ref())
        .await
        .map_err(|e| proxy_error(e.to_string()))?;
    finish(endpoint, tcp, settings, tls).await
}

async fn tcp(host: &str, port: u16, address: &str) -> Result<TcpStream, TransportError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port))).await {
        Err(_) => Err(TransportError::Timeout {
            address: address.to_string(),
            secs: CONNECT_TIMEOUT.as_secs(),
        }),
        Ok(Err(e)) => Err(TransportError::connect(address, &e)),
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
    }
}

/// TLS over `tcp` for https; plain http goes as it is.
async fn finish(
    endpoint: &Endpoint,
    tcp: TcpStream,
    settings: &Settings,
    tls: &TlsOnce,
) -> Result<Connection, TransportError> {
    let address = endpoint.address();
    if !endpoint.tls {
        return Ok(Connection {
            io: Box::new(tcp),
            via_proxy: None,
        });
    }
    let config = tls
        .config(settings.ca_file.as_deref())
        .map_err(|e| TransportError::Tls {
            address: address.clone(),
            why: e.to_string(),
        })?;
    let name = ServerName::try_from(endpoint.host.clone()).map_err(|_| TransportError::Tls {
        address: address.clone(),
        why: format!("`{}` is not a valid server name", endpoint.host),
    })?;
    let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
        Err(_) => Err(TransportError::Timeout {
            address,
            secs: CONNECT_TIMEOUT.as_secs(),
        }),
        Ok(Err(e)) => Err(match crate::tls::explain(&e, &address) {
            Some(why) => TransportError::Tls { address, why },
            None => TransportError::Io {
                address,
                message: format!("TLS handshake: {e}"),
            },
        }),
        Ok(Ok(tls)) => Ok(Connection {
            io: Box::new(tls),
            via_proxy: None,
        }),
    }
}

/// Asks the proxy for a tunnel to `endpoint`; the error is the reason.
async fn tunnel(
    tcp: &mut TcpStream,
    endpoint: &Endpoint,
    auth: Option<&HeaderValue>,
) -> Result<(), TunnelRefused> {
    let target = endpoint.address();
    let mut request = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: {}\r\n",
        USER_AGENT
    )
    .into_bytes();
    if let Some(auth) = auth {
        request.extend_from_slice(b"Proxy-Authorization: ");
        request.extend_from_slice(auth.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    let exchange = async {
        tcp.write_all(&request).await?;
        // Byte by byte: whatever follows the reply's head is the server's.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") && head.len() < CONNECT_REPLY_MAX {
            let byte = tcp.read_u8().await?;
            head.push(byte);
        }
        Ok::<_, std::io::Error>(head)
    };
    let head = match tokio::time::timeout(CONNECT_TIMEOUT, exchange).await {
        Err(_) => return Err(TunnelRefused::NoAnswer { target }),
        Ok(Err(error)) => return Err(TunnelRefused::Io { target, error }),
        Ok(Ok(head)) => head,
    };
    let status_line = String::from_utf8_lossy(&head);
    let status_line = status_line.lines().next().unwrap_or_default();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(200..=299) => Ok(()),
        // 407 by the standard; some proxies (tinyproxy) answer 401.
        Some(code @ (401 | 407)) if auth.is_some() => {
            Err(TunnelRefused::CredentialsRefused { code })
        }
        Some(401 | 407) => Err(TunnelRefused::CredentialsWanted),
        Some(code) => {
            let reason: String = status_line
                .splitn(3, ' ')
                .nth(2)
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_control())
                .take(100)
                .collect();
            Err(TunnelRefused::Status {
                target,
                code,
                reason: reason.trim_end().to_string(),
            })
        }
        None => Err(TunnelRefused::NotHttp { target }),
    }
}

/// Why the proxy gave no tunnel; shown after the proxy's (redacted) URL.
#[derive(Debug, thiserror::Error)]
enum TunnelRefused {
    #[error("no answer to CONNECT {target}")]
    NoAnswer { target: String },
    #[error("CONNECT {target}: {error}")]
    Io {
        target: String,
        error: std::io::Error,
    },
    #[error("the proxy refused the credentials (HTTP {code})")]
    CredentialsRefused { code: u16 },
    #[error(
        "the proxy asks for credentials (HTTP 401 or 407); put them in the proxy URL: http://user:password@proxy:port"
    )]
    CredentialsWanted,
    /// `reason` is the status line's own words, if any, without trailing
    /// blanks.
    #[error("CONNECT {target} answered HTTP {code}{}", spaced(.reason))]
    Status {
        target: String,
        code: u16,
        reason: String,
    },
    #[error("CONNECT {target}: not an HTTP answer")]
    NotHttp { target: String },
}

/// `words` after a space, or nothing when there are none.
fn spaced(words: &str) -> String {
    if words.is_empty() {
        String::new()
    } else {
        format!(" {words}")
    }
}
