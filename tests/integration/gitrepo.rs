//! Git remotes for the source tests. The repositories themselves ([`Repo`],
//! [`git`]) and `git daemon` come from the shared fixture (tests/fixture/git.rs);
//! here is what only the tests need: one [`Server`] type over a daemon or the
//! smart-HTTP test app `apps/git_http.py`, which tests stop and restart.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::fixture::git::Daemon;
pub use crate::fixture::git::{Repo, git};
use crate::fixture::procs::Group;
use crate::helpers::{TestDir, app, wait_for};

/// A network remote on loopback; dropping it kills the server and whatever
/// it forked (CGI children, daemon workers).
pub struct Server {
    proc: Group,
    pub url: String,
}

impl Server {
    /// `git daemon` serving `base` (read-only) at git://127.0.0.1:PORT/.
    pub fn daemon(base: &Path) -> Server {
        Server::from_daemon(Daemon::start(base))
    }

    /// `git daemon` on a given port, e.g. to bring a stopped remote back at
    /// the same URL.
    pub fn daemon_on(base: &Path, port: u16) -> Server {
        Server::from_daemon(Daemon::on(base, port))
    }

    fn from_daemon(d: Daemon) -> Server {
        Server {
            url: d.url(),
            proc: d.group,
        }
    }

    /// Smart HTTP via `apps/git_http.py` serving the bare repos under `base`,
    /// with Basic auth when `auth` is given, on a free port.
    pub fn http(dir: &TestDir, base: &Path, auth: Option<(&str, &str)>) -> Server {
        Server::http_on(dir, base, auth, 0)
    }

    /// `apps/git_http.py` on a given port (0: any free one; see `http`).
    pub fn http_on(dir: &TestDir, base: &Path, auth: Option<(&str, &str)>, port: u16) -> Server {
        let ready = dir.join("git-http.ready");
        let _ = std::fs::remove_file(&ready);
        let mut cmd = Command::new("python3");
        cmd.arg(app("git_http.py"))
            .args(["--root", base.to_str().unwrap()])
            .args(["--port", &port.to_string()])
            .args(["--ready-file", ready.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("git-http.stderr")).unwrap());
        if let Some((user, password)) = auth {
            cmd.args(["--user", user, "--password", password]);
        }
        let proc = Group::spawn(&mut cmd);
        let url = wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(&ready)
                .ok()
                .filter(|s| !s.trim().is_empty())
        })
        .expect("git_http.py never became ready");
        Server {
            proc,
            url: url.trim().to_string(),
        }
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .expect("a port in the server URL")
    }

    /// Stops the server and every process it started (`git daemon` forks a
    /// worker per connection, which killing the daemon alone leaves running).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.proc.kill();
    }
}
