//! Starting one program instance: everything between "we want a process" and
//! "exec succeeded".
//!
//! All allocation and lookup happens before `fork`; the child only makes
//! async-signal-safe calls (setpgid, dup2, chdir, set*id, sigaction,
//! sigprocmask, execve, write, _exit), because cutover is multi-threaded and
//! any lock held by another thread at fork time stays locked in the child.
//! That is also why cutover does its own fork/exec instead of using
//! `std::process::Command`: `LISTEN_PID` must be the child's own pid, which
//! only the child knows.
//!
//! The child's environment is built here too, before fork: cutover's own
//! (or only `pass_env` of it), never the secrets the config reads nor
//! cutover's own LISTEN_*/NOTIFY_SOCKET, then the configured `env`, then
//! what cutover sets for this child (`crate::config::ChildEnv`).
//!
//! Exec failures travel back over a close-on-exec pipe, so "command not
//! found" is reported with its reason instead of a bare exit status.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use nix::unistd::{ForkResult, Pid};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::child::{ChildSetup, FIRST_LISTEN_FD, Stage, UserIds};
pub use super::env::ChildEnv;
use super::env::{DEFAULT_PATH, build_env};
use super::user::RunAs;

/// A socket handed to the program as fd 3, 4, ... (the systemd protocol).
pub struct PassedFd<'a> {
    pub name: &'a str,
    pub fd: BorrowedFd<'a>,
}

/// What to start and how.
pub struct LaunchSpec<'a> {
    pub command: &'a [String],
    pub workdir: Option<&'a Path>,
    /// What the child inherits of cutover's environment (never the
    /// secrets) and sets over it.
    pub env: &'a ChildEnv,
    /// Variables cutover adds last (NOTIFY_SOCKET, CUTOVER_*).
    pub extra_env: &'a [(String, String)],
    pub user: Option<&'a RunAs>,
    pub listen: &'a [PassedFd<'a>],
    /// Give the program's process group the terminal's foreground.
    pub foreground_tty: bool,
    /// Where stdout and stderr go instead of cutover's own (hooks' output is
    /// read and logged line by line).
    pub output: Option<BorrowedFd<'a>>,
    /// The child's stdin and, apart from stdout, its stderr: the pipes of a
    /// helper cutover talks to (the ssh client of a git fetch).
    pub input: Option<BorrowedFd<'a>>,
    pub errors: Option<BorrowedFd<'a>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("command `{program}` not found in PATH ({path})")]
    NotFound { program: String, path: String },
    #[error("`{}` is not executable: {source}", .path.display())]
    NotExecutable { path: PathBuf, source: Errno },
    #[error("cannot start `{}`: {source}", .path.display())]
    Exec { path: PathBuf, source: Errno },
    #[error("cannot enter workdir `{}`: {source}", .path.display())]
    Workdir { path: PathBuf, source: Errno },
    #[error("cannot switch to user `{user}`: {source}")]
    User { user: String, source: Errno },
    #[error("cannot pass listening sockets: {0}")]
    Fds(Errno),
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("cannot fork: {0}")]
    Fork(Errno),
}

impl SpawnError {
    /// The exit status a shell would give for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            SpawnError::NotFound { .. } => 127,
            SpawnError::Exec { source, .. } if *source == Errno::ENOENT => 127,
            _ => 126,
        }
    }
}

/// A forked child whose exec has not been confirmed yet.
pub struct Forked {
    pub pid: Pid,
    status_pipe: OwnedFd,
    failure: FailureContext,
}

struct FailureContext {
    path: PathBuf,
    workdir: Option<PathBuf>,
    user: Option<String>,
}

/// Forks and execs `spec`. Register the pid with the reaper, then `confirm`.
pub fn fork_exec(spec: &LaunchSpec) -> Result<Forked, SpawnError> {
    let env = build_env(std::env::vars_os(), spec.env, spec.user, spec.extra_env);
    let path = resolve_program(&spec.command[0], &env, spec.workdir)?;
    let prepared = Prepared::new(spec, &path, env)?;

    let (read_end, pipe_write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SpawnError::Fork)?;
    let fds = ChildFds::raise(spec, &pipe_write_end)?;

    let argv_ptrs = null_terminated(prepared.argv.iter().map(|a| a.as_ptr()));
    let mut env_bufs = prepared.env;
    // Derived from one mutable pass so the child may write the LISTEN_PID digits.
    let env_ptrs: Vec<*mut u8> = env_bufs.iter_mut().map(|b| b.as_mut_ptr()).collect();
    let listen_pid_ptr = prepared
        .listen_pid_slot
        // SAFETY: the slot buffer is LISTEN_PID_PREFIX + 20 digits + NUL long.
        .map(|i| unsafe { env_ptrs[i].add(LISTEN_PID_PREFIX.len()) });
    let envp_ptrs = null_terminated(env_ptrs.iter().map(|&p| p.cast_const().cast()));
    let rtmax = libc::SIGRTMAX();

    let old_mask = block_all_signals()?;
    // SAFETY: the child branch only calls async-signal-safe functions on memory
    // prepared above and never returns (it execs or _exits).
    let forked = unsafe { nix::unistd::fork() };
    match forked {
        Ok(ForkResult::Child) => {
            let child = ChildSetup {
                status_fd: fds.status.as_raw_fd(),
                source_fds: &fds.source_fds,
                output: fds.output.as_ref().map(|o| o.as_raw_fd()),
                input: fds.input.as_ref().map(|i| i.as_raw_fd()),
                errors: fds.errors.as_ref().map(|e| e.as_raw_fd()),
                listen_pid: listen_pid_ptr,
                workdir: prepared.workdir.as_ref().map(|w| w.as_ptr()),
                user: prepared.user.as_ref(),
                foreground_tty: spec.foreground_tty,
                rtmax,
                path: prepared.path.as_ptr(),
                argv: argv_ptrs.as_ptr(),
                envp: envp_ptrs.as_ptr(),
            };
            // SAFETY: we are the freshly forked child; see ChildSetup::exec.
            unsafe { child.exec() }
        }
        Ok(ForkResult::Parent { child }) => {
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
            // Also set the group from this side so a signal sent right after
            // fork_exec returns reaches the group even if the child has not run yet.
            let _ = nix::unistd::setpgid(child, child);
            drop(fds.status);
            Ok(Forked {
                pid: child,
                status_pipe: read_end,
                failure: FailureContext {
                    path,
                    workdir: spec.workdir.map(Path::to_path_buf),
                    user: spec.user.map(|u| u.name.clone()),
                },
            })
        }
        Err(e) => {
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
            Err(SpawnError::Fork(e))
        }
    }
}

impl Forked {
    /// Waits until the child has exec'd (the status pipe closes empty) or
    /// reports why it could not.
    pub async fn confirm(self) -> Result<Pid, SpawnError> {
        nix::fcntl::fcntl(
            &self.status_pipe,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(SpawnError::Fork)?;
        // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open and the
        // same for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(self.status_pipe, Interest::READABLE) }
            .map_err(|e| SpawnError::Fork(io_errno(&e.into_parts().1)))?;
        let mut buf = [0u8; 5];
        let mut filled = 0;
        loop {
            let mut guard = fd
                .readable()
                .await
                .map_err(|e| SpawnError::Fork(io_errno(&e)))?;
            match nix::unistd::read(guard.get_inner(), &mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        break;
                    }
                }
                Err(Errno::EAGAIN) => guard.clear_ready(),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(SpawnError::Fork(e)),
            }
        }
        self.failure.outcome(self.pid, &buf[..filled])
    }

    /// [`Forked::confirm`] for a blocking thread (a git transport's ssh
    /// child): the exec outcome arrives within microseconds.
    pub fn confirm_blocking(self) -> Result<Pid, SpawnError> {
        let mut buf = [0u8; 5];
        let mut filled = 0;
        while filled < buf.len() {
            match nix::unistd::read(&self.status_pipe, &mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(SpawnError::Fork(e)),
            }
        }
        self.failure.outcome(self.pid, &buf[..filled])
    }
}

impl FailureContext {
    /// What the status pipe said: nothing (exec succeeded) or the stage and errno.
    fn outcome(self, pid: Pid, buf: &[u8]) -> Result<Pid, SpawnError> {
        if buf.len() < 5 {
            return Ok(pid);
        }
        let errno = Errno::from_raw(i32::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]));
        let f = self;
        Err(match buf[0] {
            x if x == Stage::Fds as u8 => SpawnError::Fds(errno),
            x if x == Stage::Workdir as u8 => SpawnError::Workdir {
                path: f.workdir.unwrap_or_default(),
                source: errno,
            },
            x if x == Stage::User as u8 => SpawnError::User {
                user: f.user.unwrap_or_default(),
                source: errno,
            },
            _ if errno == Errno::EACCES => SpawnError::NotExecutable {
                path: f.path,
                source: errno,
            },
            _ => SpawnError::Exec {
                path: f.path,
                source: errno,
            },
        })
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

/// Block every signal so that nothing runs cutover's handlers in the child
/// before it resets them; the parent restores the returned mask right after
/// fork.
fn block_all_signals() -> Result<SigSet, SpawnError> {
    let mut old_mask = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old_mask),
    )
    .map_err(SpawnError::Fork)?;
    Ok(old_mask)
}

/// The fds the child dup2s from, duplicated before fork.
struct ChildFds {
    /// The write end of the exec status pipe.
    status: OwnedFd,
    /// Open until fork_exec returns, so that `source_fds` stay valid.
    _sources: Vec<OwnedFd>,
    /// The listening sockets, in the order they become fd 3, 4, ...
    source_fds: Vec<RawFd>,
    output: Option<OwnedFd>,
    input: Option<OwnedFd>,
    errors: Option<OwnedFd>,
}

impl ChildFds {
    /// Every fd the child touches must sit above the range it dup2s into.
    fn raise(spec: &LaunchSpec, status: &OwnedFd) -> Result<ChildFds, SpawnError> {
        let floor = FIRST_LISTEN_FD + spec.listen.len() as RawFd;
        let status = dup_above(status.as_raw_fd(), floor).map_err(SpawnError::Fds)?;
        let sources = spec
            .listen
            .iter()
            .map(|p| dup_above(p.fd.as_raw_fd(), floor))
            .collect::<Result<Vec<_>, _>>()
            .map_err(SpawnError::Fds)?;
        let source_fds: Vec<RawFd> = sources.iter().map(|f| f.as_raw_fd()).collect();
        let above = |fd: Option<BorrowedFd>| {
            fd.map(|fd| dup_above(fd.as_raw_fd(), floor))
                .transpose()
                .map_err(SpawnError::Fds)
        };
        Ok(ChildFds {
            status,
            _sources: sources,
            source_fds,
            output: above(spec.output)?,
            input: above(spec.input)?,
            errors: above(spec.errors)?,
        })
    }
}

/// Owned C strings for the child; built before fork.
struct Prepared {
    path: CString,
    argv: Vec<CString>,
    /// `KEY=VALUE\0` buffers; the LISTEN_PID one has room for the digits.
    env: Vec<Vec<u8>>,
    listen_pid_slot: Option<usize>,
    workdir: Option<CString>,
    user: Option<UserIds>,
}

impl Prepared {
    fn new(
        spec: &LaunchSpec,
        path: &Path,
        env: Vec<(OsString, OsString)>,
    ) -> Result<Self, SpawnError> {
        let cstr = |bytes: &[u8], what| CString::new(bytes).map_err(|_| SpawnError::Nul { what });
        let argv = spec
            .command
            .iter()
            .map(|a| cstr(a.as_bytes(), "an argument"))
            .collect::<Result<_, _>>()?;
        let mut env_bufs: Vec<Vec<u8>> = env
            .into_iter()
            .map(|(k, v)| {
                let mut b = k.into_vec();
                b.push(b'=');
                b.extend_from_slice(v.as_bytes());
                b
            })
            .collect();
        let mut listen_pid_slot = None;
        if !spec.listen.is_empty() {
            let names: Vec<&str> = spec.listen.iter().map(|p| p.name).collect();
            env_bufs.push(format!("LISTEN_FDS={}", spec.listen.len()).into_bytes());
            env_bufs.push(format!("LISTEN_FDNAMES={}", names.join(":")).into_bytes());
            let mut slot = LISTEN_PID_PREFIX.to_vec();
            slot.extend_from_slice(&[b'0'; 20]);
            listen_pid_slot = Some(env_bufs.len());
            env_bufs.push(slot);
        }
        for b in &mut env_bufs {
            if b.contains(&0) {
                return Err(SpawnError::Nul {
                    what: "an environment variable",
                });
            }
            b.push(0);
        }
        Ok(Prepared {
            path: cstr(path.as_os_str().as_bytes(), "the command")?,
            argv,
            env: env_bufs,
            listen_pid_slot,
            workdir: spec
                .workdir
                .map(|w| cstr(w.as_os_str().as_bytes(), "the workdir"))
                .transpose()?,
            user: spec.user.map(|u| UserIds {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
                groups: u.groups.iter().map(|g| g.as_raw()).collect(),
            }),
        })
    }
}

/// Looks `program` up in the PATH the child will have, before forking.
pub(super) fn resolve_program(
    program: &str,
    env: &[(OsString, OsString)],
    workdir: Option<&Path>,
) -> Result<PathBuf, SpawnError> {
    if program.contains('/') {
        // Relative paths are resolved by execve after the child's chdir.
        return Ok(PathBuf::from(program));
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.to_string_lossy().into_owned())
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    let mut not_executable = None;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let mut candidate = PathBuf::from(dir).join(program);
        if let (true, Some(w)) = (candidate.is_relative(), workdir) {
            candidate = w.join(candidate);
        }
        match std::fs::metadata(&candidate) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(candidate),
            Ok(m) if m.is_file() => not_executable = not_executable.or(Some(candidate)),
            _ => {}
        }
    }
    match not_executable {
        Some(path) => Err(SpawnError::NotExecutable {
            path,
            source: Errno::EACCES,
        }),
        None => Err(SpawnError::NotFound {
            program: program.to_string(),
            path: path_var,
        }),
    }
}

/// A close-on-exec duplicate of `fd` numbered at least `floor`.
fn dup_above(fd: RawFd, floor: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a valid fd returns a new fd we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
    if new < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `new` was just returned by fcntl and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn null_terminated<T>(items: impl Iterator<Item = *const T>) -> Vec<*const T> {
    items.chain(std::iter::once(std::ptr::null())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_through_path_and_reports_missing() {
        let env = vec![(OsString::from("PATH"), OsString::from("/nonexistent:/bin"))];
        assert_eq!(
            resolve_program("sh", &env, None).unwrap(),
            PathBuf::from("/bin/sh")
        );
        let err = resolve_program("no-such-cmd-xyz", &env, None).unwrap_err();
        assert_eq!(err.exit_code(), 127);
        assert!(err.to_string().contains("no-such-cmd-xyz"));
    }
}
