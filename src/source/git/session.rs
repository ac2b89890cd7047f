//! The settings of the fetch running on this thread, for the transports
//! libgit2 builds from a URL alone (`transport`), and where a transport
//! leaves the typed reason it failed.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::error::TransportError;
use crate::process::reaper::Reaper;
use crate::redact::UrlRedactor;

/// What cutover says it is to git servers.
pub const USER_AGENT: &str = concat!("git/2.0 (cutover ", env!("CARGO_PKG_VERSION"), ")");

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
pub(super) fn run<T>(
    settings: &Arc<Settings>,
    work: impl FnOnce() -> T,
) -> (T, Option<TransportError>) {
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

pub(super) fn current() -> Result<Arc<Shared>, git2::Error> {
    CURRENT
        .with(|c| c.borrow().clone())
        .ok_or_else(|| git2::Error::from_str("cutover's git transports run only inside a fetch"))
}
