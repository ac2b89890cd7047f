//! git over ssh through the system's OpenSSH client, as git itself does:
//! `ssh … host "git-upload-pack '/org/app.git'"` in a short-lived child,
//! the protocol over its stdin and stdout.
//!
//! OpenSSH does what a deploy key needs and what a second implementation
//! would get wrong: ed25519 and RSA keys, hashed and `[host]:port`
//! known_hosts entries, host key checks before anything is sent. The child
//! is started by cutover's own fork/exec and reaped by cutover's one reaper
//! (never `Child::wait`), with an environment of PATH and HOME only, so no
//! secret of cutover's reaches it; the key travels as a path.
//!
//! ssh's stderr (verbose, for the host key's fingerprint) is read by a
//! thread and turned into one clear reason when the child fails: an
//! unknown or changed host key with its fingerprint, a refused key, a
//! repository that does not exist, a server that is down.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::error::TransportError;
use super::session::{Shared, SshSettings};
use crate::config::ChildEnv;
use crate::config::remote_url::{RemoteUrl, SshTarget, shell_quote};
use crate::process::exit::ExitStatus;
use crate::process::reaper::ExitWatch;
use crate::process::spawn::{LaunchSpec, fork_exec};

/// How long ssh may take to exit once its output has ended.
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// Lines of ssh's own (non-debug) stderr kept for the error.
const KEPT_LINES: usize = 40;

pub struct SshSubtransport {
    shared: Arc<Shared>,
}

impl SshSubtransport {
    pub fn new(shared: Arc<Shared>) -> SshSubtransport {
        SshSubtransport { shared }
    }
}

impl SmartSubtransport for SshSubtransport {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        if action != Service::UploadPackLs {
            // libgit2 reuses the stream of UploadPackLs for UploadPack.
            return Err(git2::Error::from_str(
                "cutover fetches only; it never pushes",
            ));
        }
        let target = match RemoteUrl::parse(url) {
            Ok(RemoteUrl::Ssh(target)) => target,
            Ok(_) => return Err(git2::Error::from_str("not an ssh URL")),
            Err(why) => return Err(git2::Error::from_str(&why)),
        };
        match SshStream::start(self.shared.clone(), target) {
            Ok(stream) => Ok(Box::new(stream)),
            Err(e) => {
                let text = e.to_string();
                self.shared.fail(e);
                Err(git2::Error::from_str(&text))
            }
        }
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

/// The options that make ssh safe to run unattended as PID 1's helper.
pub fn arguments(target: &SshTarget, settings: &SshSettings, home: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = vec!["ssh".into(), "-v".into(), "-T".into(), "-x".into()];
    let mut option = |o: String| {
        args.push("-o".into());
        args.push(o);
    };
    for fixed in [
        "BatchMode=yes",
        "PasswordAuthentication=no",
        "KbdInteractiveAuthentication=no",
        "IdentityAgent=none",
        "ForwardAgent=no",
        "ClearAllForwardings=yes",
        "PermitLocalCommand=no",
        "ControlMaster=no",
        "ControlPath=none",
        "UpdateHostKeys=no",
        "ConnectTimeout=30",
        "ServerAliveInterval=15",
        "ServerAliveCountMax=4",
    ] {
        option(fixed.to_string());
    }
    if settings.insecure_ignore_host_key {
        option("StrictHostKeyChecking=no".into());
        option("UserKnownHostsFile=/dev/null".into());
        option("GlobalKnownHostsFile=/dev/null".into());
    } else {
        option("StrictHostKeyChecking=yes".into());
        let (user_file, global) = known_hosts_files(settings, home);
        option(format!("UserKnownHostsFile={}", user_file.display()));
        option(format!("GlobalKnownHostsFile={global}"));
    }
    if let Some(key) = &settings.key {
        option("IdentitiesOnly=yes".into());
        option(format!("IdentityFile={}", key.display()));
    }
    // ssh reads ~/.ssh/config from the passwd entry; a container's user is
    // often known by HOME alone (an arbitrary uid): read it from there.
    if let Some(config) = home
        .map(|h| PathBuf::from(h).join(".ssh/config"))
        .filter(|c| c.is_file())
    {
        args.push("-F".into());
        args.push(config.display().to_string());
    }
    if let Some(port) = target.port {
        args.push("-p".into());
        args.push(port.to_string());
    }
    args.push("-l".into());
    args.push(target.user.clone().unwrap_or_else(|| "git".into()));
    args.push("--".into());
    args.push(target.host.clone());
    args.push(format!("git-upload-pack {}", shell_quote(&target.path)));
    args
}

/// `known_hosts`, else `$HOME/.ssh/known_hosts` then the system's file.
fn known_hosts_files(settings: &SshSettings, home: Option<&str>) -> (PathBuf, String) {
    match &settings.known_hosts {
        Some(file) => (file.clone(), "none".into()),
        None => (
            PathBuf::from(home.unwrap_or("/root")).join(".ssh/known_hosts"),
            "/etc/ssh/ssh_known_hosts".into(),
        ),
    }
}

struct SshStream {
    shared: Arc<Shared>,
    target: SshTarget,
    pid: Pid,
    exit: Option<ExitWatch>,
    status: Option<ExitStatus>,
    stdin: Option<File>,
    stdout: File,
    stderr: Option<JoinHandle<Stderr>>,
}

impl SshStream {
    fn start(shared: Arc<Shared>, target: SshTarget) -> Result<SshStream, TransportError> {
        let settings = &shared.settings.ssh;
        let host = shown_host(&target);
        let fail = |why: String| TransportError::Ssh {
            host: host.clone(),
            why,
        };
        let reaper = settings
            .reaper
            .clone()
            .ok_or_else(|| fail("no reaper to wait for the ssh client".into()))?;
        let home = std::env::var("HOME").ok();
        let command = arguments(&target, settings, home.as_deref());
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| fail(format!("cannot make a pipe: {e}")))
        };
        let (in_read, in_write) = pipe()?;
        let (out_read, out_write) = pipe()?;
        let (err_read, err_write) = pipe()?;
        let env = ChildEnv {
            clear: true,
            pass: vec!["PATH".into(), "HOME".into()],
            ..ChildEnv::default()
        };
        let spec = LaunchSpec {
            command: &command,
            workdir: None,
            env: &env,
            extra_env: &[],
            user: None,
            listen: &[],
            foreground_tty: false,
            output: Some(out_write.as_fd()),
            input: Some(in_read.as_fd()),
            errors: Some(err_write.as_fd()),
        };
        let forked_at = Instant::now();
        let forked = fork_exec(&spec).map_err(|e| fail(not_installed(&e.to_string())))?;
        let pid = forked.pid;
        let exit = reaper.watch(pid, forked_at);
        // Our copies of the child's ends must go, or EOF never comes.
        drop((in_read, out_write, err_write));
        forked
            .confirm_blocking()
            .map_err(|e| fail(not_installed(&e.to_string())))?;
        let stderr = std::thread::Builder::new()
            .name("ssh-stderr".into())
            .spawn(move || Stderr::read(err_read))
            .map_err(|e| fail(format!("cannot start a thread: {e}")))?;
        Ok(SshStream {
            shared,
            target,
            pid,
            exit: Some(exit),
            status: None,
            stdin: Some(File::from(in_write)),
            stdout: File::from(out_read),
            stderr: Some(stderr),
        })
    }

    /// The child's exit, waited for at most [`EXIT_WAIT`].
    fn wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            let mut exit = self.exit.take()?;
            let deadline = Instant::now() + EXIT_WAIT;
            loop {
                match exit.try_recv() {
                    Ok(status) => {
                        self.status = Some(status);
                        break;
                    }
                    Err(tokio::sync::oneshot::error::TryRecvError::Closed) => break,
                    Err(_) if Instant::now() >= deadline => {
                        self.exit = Some(exit);
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        self.status
    }

    /// Why ssh failed, from its exit and what it said.
    fn failure(&mut self) -> Option<TransportError> {
        let status = self.wait()?;
        if status.success() {
            return None;
        }
        let said = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let settings = &self.shared.settings.ssh;
        let home = std::env::var("HOME").ok();
        let (known_hosts, _) = known_hosts_files(settings, home.as_deref());
        Some(TransportError::Ssh {
            host: shown_host(&self.target),
            why: said.explain(&self.target, settings.key.as_ref(), &known_hosts, status),
        })
    }
}

impl Read for SshStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.stdout.read(buf) {
            Ok(0) => match self.failure() {
                Some(e) => Err(self.shared.fail(e)),
                None => Ok(0),
            },
            Ok(n) => Ok(n),
            Err(e) => Err(e),
        }
    }
}

impl Write for SshStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))?;
        match stdin.write(data) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => match self.failure() {
                Some(failure) => Err(self.shared.fail(failure)),
                None => Err(e),
            },
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SshStream {
    fn drop(&mut self) {
        // Closing stdin ends a healthy conversation; a stuck one is ended.
        self.stdin.take();
        if self.status.is_none() && self.exit.as_mut().is_some_and(|e| e.try_recv().is_err()) {
            let _ = killpg(self.pid, Signal::SIGTERM);
        }
    }
}

fn shown_host(target: &SshTarget) -> String {
    match target.port {
        Some(port) => format!("[{}]:{port}", target.host),
        None => target.host.clone(),
    }
}

fn not_installed(spawn_error: &str) -> String {
    if spawn_error.contains("not found") {
        format!(
            "{spawn_error}: ssh remotes need the OpenSSH client (Debian: apt-get install openssh-client)"
        )
    } else {
        spawn_error.to_string()
    }
}

/// What ssh wrote to stderr that explains a failure.
#[derive(Default)]
struct Stderr {
    /// "ssh-ed25519 SHA256:…", from the verbose line ssh prints on connecting.
    host_key: Option<String>,
    /// Its own messages (not debug lines), the last [`KEPT_LINES`].
    lines: Vec<String>,
}

impl Stderr {
    fn read(pipe: OwnedFd) -> Stderr {
        let mut said = Stderr::default();
        for line in BufReader::new(File::from(pipe))
            .split(b'\n')
            .map_while(Result::ok)
        {
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            if let Some(key) = line.split_once("Server host key: ").map(|(_, k)| k) {
                said.host_key = Some(key.to_string());
            } else if !line.starts_with("debug")
                && !line.starts_with("OpenSSH_")
                && !line.trim().is_empty()
            {
                if said.lines.len() == KEPT_LINES {
                    said.lines.remove(0);
                }
                said.lines
                    .push(line.chars().filter(|c| !c.is_control()).collect());
            }
        }
        said
    }

    fn has(&self, text: &str) -> bool {
        self.lines.iter().any(|l| l.contains(text))
    }

    fn explain(
        &self,
        target: &SshTarget,
        key: Option<&PathBuf>,
        known_hosts: &std::path::Path,
        status: ExitStatus,
    ) -> String {
        let host_key = self.host_key.as_deref().unwrap_or("of unknown type");
        let scan = match target.port {
            Some(port) => format!("ssh-keyscan -p {port} {}", target.host),
            None => format!("ssh-keyscan {}", target.host),
        };
        if self.has("REMOTE HOST IDENTIFICATION HAS CHANGED") {
            return format!(
                "the host key changed: the server presented {host_key}, which known_hosts ({}) does not list for it; refusing before sending anything (if the key really changed, replace its line)",
                known_hosts.display()
            );
        }
        if self.has("Host key verification failed") {
            return format!(
                "unknown host key {host_key}: known_hosts ({}) has no entry for this host; refusing before sending anything (check the fingerprint, then add the line `{scan}` prints)",
                known_hosts.display()
            );
        }
        if self.has("Permission denied") {
            let key = key.map_or("no ssh_key set".to_string(), |k| {
                format!("`{}`", k.display())
            });
            return format!(
                "the server refused the deploy key ({key}) for user `{}`: add its public half to the repository as a deploy key",
                target.user.as_deref().unwrap_or("git")
            );
        }
        if self.has("UNPROTECTED PRIVATE KEY FILE") || self.has("bad permissions") {
            return "ssh refuses the key file: it is readable by other users (chmod 600; on Kubernetes, defaultMode: 0400)".into();
        }
        if self.has("Connection refused") {
            return "connection refused (is the server down?)".into();
        }
        if let Some(line) = self.lines.iter().find(|l| {
            l.contains("Could not resolve hostname")
                || l.contains("timed out")
                || l.contains("No route to host")
        }) {
            return line.clone();
        }
        if let Some(line) = self.lines.iter().rev().find(|l| {
            l.contains("not a git repository")
                || l.contains("does not appear to be a git repository")
                || l.contains("not found")
                || l.contains("does not exist")
        }) {
            return format!("no repository at `{}`: {line}", target.path);
        }
        match self.lines.last() {
            Some(line) => format!("ssh {status}: {line}"),
            None => format!("ssh {status}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(port: Option<u16>) -> SshTarget {
        SshTarget {
            user: Some("git".into()),
            host: "forge.example".into(),
            port,
            path: "/org/it's.git".into(),
        }
    }

    fn settings(insecure: bool, known_hosts: Option<&str>) -> SshSettings {
        SshSettings {
            key: Some(PathBuf::from("/run/secrets/deploy_key")),
            known_hosts: known_hosts.map(PathBuf::from),
            insecure_ignore_host_key: insecure,
            reaper: None,
        }
    }

    #[test]
    fn host_keys_are_checked_strictly_unless_ssh_is_told_otherwise() {
        let args = arguments(&target(Some(2222)), &settings(false, Some("/etc/kh")), None);
        let text = args.join(" ");
        for wanted in [
            "-o BatchMode=yes",
            "-o StrictHostKeyChecking=yes",
            "-o UserKnownHostsFile=/etc/kh",
            "-o GlobalKnownHostsFile=none",
            "-o IdentitiesOnly=yes",
            "-o IdentityFile=/run/secrets/deploy_key",
            "-p 2222 -l git -- forge.example",
        ] {
            assert!(text.contains(wanted), "{wanted}: {text}");
        }
        assert_eq!(args.last().unwrap(), r"git-upload-pack '/org/it'\''s.git'");

        let defaults =
            arguments(&target(None), &settings(false, None), Some("/home/app")).join(" ");
        assert!(
            defaults.contains("UserKnownHostsFile=/home/app/.ssh/known_hosts"),
            "{defaults}"
        );
        assert!(
            defaults.contains("GlobalKnownHostsFile=/etc/ssh/ssh_known_hosts"),
            "{defaults}"
        );
        assert!(!defaults.contains("-p "), "{defaults}");

        let insecure = arguments(&target(None), &settings(true, None), None).join(" ");
        assert!(insecure.contains("StrictHostKeyChecking=no"), "{insecure}");
        assert!(
            !insecure.contains("StrictHostKeyChecking=yes"),
            "{insecure}"
        );
    }
}
