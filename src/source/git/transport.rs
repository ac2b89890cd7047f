//! cutover's own network transports for libgit2, registered once for
//! `http://`, `https://` and `ssh://` (which libgit2 also picks for the
//! scp-like `user@host:path`).
//!
//! libgit2 is linked without TLS and without libssh2: PID 1 carries no
//! OpenSSL and no second TLS stack. https goes through hyper and rustls,
//! which the binary has anyway (`http`, `connect`); ssh goes through the
//! system's OpenSSH client in a short-lived child, as git itself does
//! (`ssh`). Neither costs memory while cutover idles.
//!
//! libgit2 builds a transport from a URL alone, so the settings of a fetch
//! (credentials, CA file, proxy, deploy key) reach it through a [`Session`]
//! that the fetching thread holds while it calls libgit2, which runs the
//! transport on that same thread. The transport leaves its typed failure in
//! the session, so the caller reports "the server refused the credentials
//! (HTTP 401)" instead of libgit2's flattened text.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once};

use git2::transport::{Transport, register};

use super::error::TransportError;
use super::http::HttpSubtransport;
use super::ssh::SshSubtransport;
use crate::reaper::Reaper;
use crate::redact::UrlRedactor;

/// Everything a transport needs to reach one remote.
pub struct Settings {
    /// Basic-auth user and password (token) for http(s).
    pub username: Option<String>,
    pub password: Option<String>,
    /// A private CA added to the system store (`[source] ca_file`).
    pub ca_file: Option<PathBuf>,
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`, as curl reads them.
    pub proxy: hyper_util::client::proxy::matcher::Matcher,
    pub ssh: SshSettings,
    /// Removes the URL's, the token's and the proxy's secrets from text.
    pub redactor: UrlRedactor,
}

pub struct SshSettings {
    pub key: Option<PathBuf>,
    /// `None`: `~/.ssh/known_hosts`, then `/etc/ssh/ssh_known_hosts`.
    pub known_hosts: Option<PathBuf>,
    pub insecure_ignore_host_key: bool,
    /// Whom to ask for the exit of the ssh child: cutover's one reaper.
    pub reaper: Option<Reaper>,
}

/// The settings of the fetch running on this thread, and where its
/// transport leaves the reason it failed.
pub struct Shared {
    pub settings: Arc<Settings>,
    failure: Mutex<Option<TransportError>>,
}

impl Shared {
    /// Keeps the first failure: later ones are consequences of it.
    pub fn fail(&self, error: TransportError) -> std::io::Error {
        let text = error.to_string();
        let mut slot = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(error);
        std::io::Error::other(text)
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Shared>>> = const { RefCell::new(None) };
}

/// Runs `work` (libgit2 calls) with `settings` for the transports it
/// opens; returns its result and the transport's failure, if any.
pub fn with_session<T>(
    settings: &Arc<Settings>,
    work: impl FnOnce() -> T,
) -> (T, Option<TransportError>) {
    register_once();
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        failure: Mutex::new(None),
    });
    let previous = CURRENT.with(|c| c.borrow_mut().replace(shared.clone()));
    let result = work();
    CURRENT.with(|c| *c.borrow_mut() = previous);
    let failure = shared
        .failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    (result, failure)
}

fn current() -> Result<Arc<Shared>, git2::Error> {
    CURRENT
        .with(|c| c.borrow().clone())
        .ok_or_else(|| git2::Error::from_str("cutover's git transports run only inside a fetch"))
}

fn register_once() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        for scheme in ["http", "https"] {
            // SAFETY: `register` must not race with libgit2 creating
            // transports; the Once makes this the first thing any thread
            // does before cutover's first remote operation, and every
            // remote operation goes through `with_session`.
            let done = unsafe {
                register(scheme, |remote| {
                    let shared = current()?;
                    Transport::smart(remote, true, HttpSubtransport::new(shared))
                })
            };
            if let Err(e) = done {
                tracing::error!(scheme, error = %e, "cannot register the git transport");
            }
        }
        // SAFETY: as above.
        let done = unsafe {
            register("ssh", |remote| {
                let shared = current()?;
                // ssh is one conversation over one process: not rpc.
                Transport::smart(remote, false, SshSubtransport::new(shared))
            })
        };
        if let Err(e) = done {
            tracing::error!(error = %e, "cannot register the ssh git transport");
        }
    });
}
