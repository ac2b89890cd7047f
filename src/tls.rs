//! TLS client settings for everything cutover fetches or calls over https:
//! git remotes and redeploy webhooks.
//!
//! Trust comes from the system store, found as OpenSSL, curl and git find
//! it (`SSL_CERT_FILE` and `SSL_CERT_DIR` replace the default locations),
//! plus an optional private CA file (`[source] ca_file`). A slim image with
//! no store at all falls back to the Mozilla roots built into the binary,
//! so that GitHub and GitLab work there too. Verification is never skipped:
//! no setting turns it off.
//!
//! The store is read for each connection that needs it, not kept: a poll
//! every few seconds costs a few milliseconds, and an idle cutover holds no
//! certificates in memory (PID 1's resident size is a product goal).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{CertificateError, ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("ca_file `{}`: {message}", .path.display())]
    CaFile { path: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Reads the certificates of a PEM file; an error when it holds none.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let error = |message: String| TlsSetupError::CaFile {
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(pem_error(&e)))?;
    if certs.is_empty() {
        return Err(error(
            "holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("not a PEM certificate file ({other:?})"),
    }
}

/// The roots to verify servers against: the system store (or the built-in
/// roots where there is none) and `extra_ca`.
pub fn roots(extra_ca: Option<&Path>) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        let pointed = std::env::var_os("SSL_CERT_FILE").or(std::env::var_os("SSL_CERT_DIR"));
        if pointed.is_some() {
            // The user named a store: an empty or unreadable one must not
            // silently widen trust to the built-in roots.
            tracing::warn!(errors = ?native.errors, "SSL_CERT_FILE/SSL_CERT_DIR hold no usable certificate");
        } else {
            tracing::debug!("no system certificate store; using the built-in Mozilla roots");
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
    }
    if let Some(path) = extra_ca {
        for cert in read_ca_file(path)? {
            roots.add(cert).map_err(|e| TlsSetupError::CaFile {
                path: path.to_path_buf(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
    }
    Ok(roots)
}

/// A client config that verifies every server against [`roots`].
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(extra_ca)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Why a handshake with `host` failed, in words a user can act on; `None`
/// when `error` is no TLS error.
pub fn explain(error: &(dyn std::error::Error + 'static), host: &str) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(describe(tls, host));
        }
        // An io::Error's source() skips the error it wraps: look inside.
        cause = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner),
            None => e.source(),
        };
    }
    None
}

fn describe(error: &rustls::Error, host: &str) -> String {
    let why = match error {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("the certificate {host} presented is for another name")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the certificate {host} presented has expired")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("the certificate {host} presented is not valid yet (check the clock)")
            }
            CertificateError::UnknownIssuer => format!(
                "the certificate {host} presented is signed by a CA that is not trusted \
                 (add it with `ca_file`, or point SSL_CERT_FILE at a bundle that has it)"
            ),
            CertificateError::Revoked => format!("the certificate {host} presented is revoked"),
            CertificateError::Other(other)
                if format!("{other:?}").contains("CaUsedAsEndEntity") =>
            {
                format!(
                    "the certificate {host} presented is self-signed, which is never trusted \
                     (serve one signed by a CA, and add that CA with `ca_file`)"
                )
            }
            other => format!("the certificate {host} presented is invalid: {other:?}"),
        },
        other => format!("TLS with {host} failed: {other}"),
    };
    format!("TLS verification failed: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = read_ca_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("ca.pem") && err.contains("no certificate"),
            "{err}"
        );
        let missing = read_ca_file(&dir.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("missing.pem"), "{missing}");
    }

    #[test]
    fn certificate_errors_name_the_host() {
        let err = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let text = explain(&err, "git.example:443").unwrap();
        assert!(
            text.contains("git.example:443") && text.contains("not trusted"),
            "{text}"
        );
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::Expired),
        );
        assert!(explain(&io, "h").unwrap().contains("expired"));
        assert!(explain(&std::io::Error::other("plain"), "h").is_none());
    }
}
