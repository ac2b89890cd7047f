//! Real git repositories for the source tests: a work tree where commits are
//! made with the machine's `git`, and a bare remote it pushes to (a plain
//! path, or served on loopback by `git daemon` or `apps/git_http.py`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::{TestDir, app, free_port, wait_for};

/// Runs git in `dir`; panics with git's stderr on failure, returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed in {}:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A work tree `work/` and a bare `remote.git/` in the test dir.
pub struct Repo {
    pub work: PathBuf,
    pub remote: PathBuf,
}

impl Repo {
    /// An empty repository on branch `main` with a bare remote `origin`.
    pub fn new(dir: &TestDir) -> Repo {
        let work = dir.join("work");
        let remote = dir.join("remote.git");
        std::fs::create_dir_all(&work).unwrap();
        git(
            dir.path(),
            &["init", "-q", "--bare", "-b", "main", "remote.git"],
        );
        git(&work, &["init", "-q", "-b", "main"]);
        git(
            &work,
            &["remote", "add", "origin", remote.to_str().unwrap()],
        );
        Repo { work, remote }
    }

    /// Writes `files` (path, content), commits them and returns the sha.
    pub fn commit(&self, message: &str, files: &[(&str, &str)]) -> String {
        for (path, content) in files {
            let p = self.work.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        self.head()
    }

    pub fn head(&self) -> String {
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Pushes `main` (forced, so tests can move it backwards) to the bare remote.
    pub fn push(&self) {
        self.push_ref("main");
    }

    pub fn push_ref(&self, refspec: &str) {
        git(&self.work, &["push", "-q", "-f", "origin", refspec]);
    }

    /// Commits and pushes the `version` file that `apps/fdserver.py` serves.
    pub fn release(&self, version: &str) -> String {
        let sha = self.commit(version, &[("version", version)]);
        self.push();
        sha
    }
}

/// A network remote on loopback; dropping it stops the server.
pub struct Server {
    child: Child,
    pub url: String,
}

impl Server {
    /// `git daemon` serving `dir` (read-only) at git://127.0.0.1:PORT/.
    pub fn daemon(base: &Path) -> Server {
        Server::daemon_on(base, free_port())
    }

    /// Smart HTTP via `apps/git_http.py` serving the bare repos under `base`,
    /// with Basic auth when `auth` is given, on a free port.
    pub fn http(dir: &TestDir, base: &Path, auth: Option<(&str, &str)>) -> Server {
        Server::http_on(dir, base, auth, 0)
    }
}

impl Server {
    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .expect("a port in the server URL")
    }

    /// Stops the server and every process it started (`git daemon` runs
    /// `git-daemon` as a child, which a plain kill of `git` leaves running).
    pub fn stop(self) {
        drop(self);
    }

    /// `git daemon` on a given port, e.g. to bring a stopped remote back at
    /// the same URL. Runs `git-daemon` itself, so dropping it stops it.
    pub fn daemon_on(base: &Path, port: u16) -> Server {
        let exec_path = git(base, &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args([
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
                base.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start git daemon");
        let server = Server {
            child,
            url: format!("git://127.0.0.1:{port}"),
        };
        wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        })
        .expect("git daemon never listened");
        server
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
        let child = cmd.spawn().expect("start git_http.py");
        let url = wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(&ready)
                .ok()
                .filter(|s| !s.trim().is_empty())
        })
        .expect("git_http.py never became ready");
        Server {
            child,
            url: url.trim().to_string(),
        }
    }
}

impl Drop for Server {
    /// Kills the server and whatever it forked (CGI children, daemon workers).
    fn drop(&mut self) {
        for p in crate::helpers::descendants_of(self.child.id() as i32) {
            // SAFETY: kill(2) on a process this test started.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
