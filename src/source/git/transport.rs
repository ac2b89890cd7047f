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
//! (credentials, CA file, proxy, deploy key) reach it through a session (`session`)
//! that the fetching thread holds while it calls libgit2, which runs the
//! transport on that same thread. The transport leaves its typed failure in
//! the session, so the caller reports "the server refused the credentials
//! (HTTP 401)" instead of libgit2's flattened text.

use std::sync::{Arc, Once};

use git2::transport::{Transport, register};

use super::error::TransportError;
use super::session::{Settings, current, run};
use super::smart_http::HttpSubtransport;
use super::ssh::SshSubtransport;

/// Runs `work` (libgit2 calls) with `settings` for the transports it
/// opens; returns its result and the transport's failure, if any.
pub fn with_session<T>(
    settings: &Arc<Settings>,
    work: impl FnOnce() -> T,
) -> (T, Option<TransportError>) {
    register_once();
    run(settings, work)
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
