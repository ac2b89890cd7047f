//! Why a remote could not be read, in words that tell a user what to fix:
//! each cause a forge or the network can give has its own variant, so that
//! a wrong token, a missing repository, a server that is down, a TLS
//! certificate and an ssh host key never read alike. Every text here is
//! built from redacted parts only; the remote's URL is put before it by
//! `GitError::Transport`.

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(
        "the server refused the credentials (HTTP {status}){detail}; check token_env/token_file and username"
    )]
    CredentialsRefused { status: u16, detail: String },
    #[error(
        "the server asks for credentials (HTTP 401) and none are configured; set token_env or token_file"
    )]
    CredentialsNeeded,
    #[error("no repository there (HTTP 404)")]
    NoRepository,
    #[error("the server answered HTTP {status}{detail}")]
    Status { status: u16, detail: String },
    #[error("not a git server: {why}")]
    NotGit { why: String },
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    /// `why` names the host: the certificate it presented is the subject.
    #[error("{why}")]
    Tls { address: String, why: String },
    #[error("proxy {proxy}: {why}")]
    Proxy { proxy: String, why: String },
    #[error("{address}: no answer for {secs} s; giving up")]
    Timeout { address: String, secs: u64 },
    #[error("{address}: {message}")]
    Io { address: String, message: String },
    #[error("ssh {host}: {why}")]
    Ssh { host: String, why: String },
}

impl TransportError {
    /// A connection failure in words: refused means nothing listens.
    pub fn connect(address: &str, error: &std::io::Error) -> TransportError {
        use std::io::ErrorKind::*;
        let reason = match error.kind() {
            ConnectionRefused => "connection refused (is the server down?)".to_string(),
            TimedOut => "timed out".to_string(),
            HostUnreachable | NetworkUnreachable => format!("unreachable ({error})"),
            _ => error.to_string(),
        };
        TransportError::Connect {
            address: address.to_string(),
            reason,
        }
    }
}

/// The first line of a refusal's body (forges explain 403s there), short
/// and free of control characters, as ": text"; empty when there is none.
pub fn detail(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    match line {
        Some(l) => {
            let clean: String = l.chars().filter(|c| !c.is_control()).take(200).collect();
            format!(": {clean}")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_and_a_dead_server_read_differently() {
        let refused = TransportError::CredentialsRefused {
            status: 401,
            detail: String::new(),
        };
        assert!(
            refused
                .to_string()
                .contains("refused the credentials (HTTP 401)")
        );
        let down = TransportError::connect(
            "git.example:443",
            &std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        assert_eq!(
            down.to_string(),
            "cannot connect to git.example:443: connection refused (is the server down?)"
        );
    }

    #[test]
    fn details_are_one_clean_line() {
        assert_eq!(
            detail(b"\n  Write access not granted.\x1b[31m\nmore"),
            ": Write access not granted.[31m"
        );
        assert_eq!(detail(b"   \n"), "");
    }
}
