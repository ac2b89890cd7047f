//! Starting and stopping one instance of a program: where it runs, what it
//! inherits (held sockets, its own NOTIFY_SOCKET), its readiness check, and
//! the graceful stop of its whole process group.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{info, warn};

use super::state::ProgramState;
use super::stderr::StderrTail;
use super::{Flow, Program, now};
use crate::process::exit::ExitStatus;
use crate::process::group::{group_alive, signal_group, wait_group_empty};
use crate::process::reaper::ExitWatch;
use crate::process::spawn::{LaunchSpec, SpawnError, fork_exec};
use crate::program::notify::NotifySocket;
use crate::program::ready::{NotReady, Probe, ReadyCheck, Watchdog};
use crate::sockets::handoff::Generation;

/// How long to wait for a group to vanish after SIGKILL before moving on
/// (a process in uninterruptible sleep can outlive it).
const AFTER_KILL: Duration = Duration::from_secs(5);

/// Where an instance starts.
pub(super) enum Dir {
    /// The configured workdir with symlinks resolved now, so `current`
    /// flipped to a new release is picked up.
    Resolve,
    /// A directory that is known to work.
    Pinned(PathBuf),
}

/// The leader's exit, remembered once seen (a oneshot can be read once).
pub(super) struct ExitSlot {
    watch: ExitWatch,
    status: Option<ExitStatus>,
}

impl ExitSlot {
    pub fn new(watch: ExitWatch) -> Self {
        ExitSlot {
            watch,
            status: None,
        }
    }

    pub async fn wait(&mut self) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        // The reaper never drops a watch while running; 255 marks the impossible.
        let s = (&mut self.watch).await.unwrap_or(ExitStatus::Exited(255));
        self.status = Some(s);
        s
    }

    pub fn seen(&self) -> Option<ExitStatus> {
        self.status
    }
}

/// A running process of the program: the group leader cutover forked.
pub(super) struct Instance {
    pub pid: Pid,
    pub exit: ExitSlot,
    /// The resolved directory it started in.
    pub dir: Option<PathBuf>,
    pub started_at: SystemTime,
    /// Kept open for the instance's life; removed on drop.
    pub notify: Option<NotifySocket>,
    /// The readiness check in progress, if any.
    pub ready: Option<ReadyCheck>,
    /// After a reload: its readiness, checked again for a while.
    pub watchdog: Option<Watchdog>,
    /// Which of the program's per-instance sockets it took.
    pub generation: Generation,
    /// Started with no other instance of the program running (a first
    /// start, a restart): nothing else can answer its readiness check.
    pub alone: bool,
    /// Its stderr, relayed, with the last line kept (see `stderr`).
    pub stderr: Option<StderrTail>,
}

impl Instance {
    /// Waits until what it wrote to stderr reached cutover's (see
    /// `StderrTail::relayed`); at once without a relay.
    pub async fn output_relayed(&mut self) {
        if let Some(tail) = self.stderr.as_mut() {
            tail.relayed().await;
        }
    }

    /// The last lines it wrote to stderr, for an error that says why it
    /// died (None without a relay, or if it wrote nothing).
    pub async fn last_words(&mut self) -> Option<String> {
        self.stderr.as_mut()?.last_lines().await
    }
}

/// Awaits the watchdog's verdict if there is one; never resolves otherwise.
pub(super) async fn unready_of(watchdog: &mut Option<Watchdog>) -> NotReady {
    match watchdog {
        Some(w) => w.await,
        None => std::future::pending().await,
    }
}

/// Awaits the check if there is one; never resolves otherwise.
pub(super) async fn ready_of(check: &mut Option<ReadyCheck>) -> Result<Duration, NotReady> {
    match check {
        Some(c) => c.await,
        None => std::future::pending().await,
    }
}

impl Program {
    /// Starts an instance on `generation`'s sockets; `alone` when no other
    /// instance of the program runs beside it.
    pub(super) async fn launch(
        &mut self,
        dir_choice: &Dir,
        generation: Generation,
        alone: bool,
    ) -> Result<Instance, SpawnError> {
        self.launched += 1;
        let dir = match dir_choice {
            Dir::Pinned(p) => Some(p.clone()),
            Dir::Resolve => self
                .config
                .workdir
                .as_ref()
                .map(|w| std::fs::canonicalize(w).unwrap_or_else(|_| w.clone())),
        };
        let notify = self.notify_socket();
        let extra_env = self.extra_env(dir_choice, notify.as_ref());
        let passed = self.sockets.passed(generation);
        let relay = self.stderr_relay();
        let spec = LaunchSpec {
            command: &self.config.command,
            workdir: dir.as_deref(),
            env: &self.config.env,
            extra_env: &extra_env,
            user: self.config.user.as_ref(),
            listen: &passed,
            foreground_tty: self.context.foreground_tty,
            output: None,
            input: None,
            errors: relay.as_ref().map(|(_, write)| write.as_fd()),
        };
        let forked_at = Instant::now();
        let forked = fork_exec(&spec)?;
        // The child has its copy; ours would keep the pipe from ever ending.
        let stderr = relay.map(|(tail, _write)| tail);
        let exit = self.context.reaper.watch(forked.pid, forked_at);
        let pid = forked.confirm().await?;
        info!(
            program = %self.config.name,
            %pid,
            dir = %dir.as_deref().map(|d| d.display().to_string()).unwrap_or_default(),
            "started"
        );
        let mut instance = Instance {
            pid,
            exit: ExitSlot::new(exit),
            dir,
            started_at: now(),
            notify,
            ready: None,
            watchdog: None,
            generation,
            alone,
            stderr,
        };
        self.check_readiness(&mut instance, true);
        Ok(instance)
    }

    /// The instance's own NOTIFY_SOCKET, with `[ready] notify`; when it
    /// cannot be created, the instance starts without one, with a warning.
    fn notify_socket(&self) -> Option<NotifySocket> {
        if !self.config.ready.notify {
            return None;
        }
        let tag = format!("{}-{}", self.config.name, self.launched);
        let owner = self.config.user.as_ref().map(|u| (u.uid, u.gid));
        match NotifySocket::bind(&self.context.runtime_dir, &tag, owner) {
            Ok(n) => Some(n),
            Err(e) => {
                warn!(program = %self.config.name, error = %e, "cannot create NOTIFY_SOCKET");
                None
            }
        }
    }

    /// What cutover adds to the instance's environment.
    fn extra_env(&self, dir_choice: &Dir, notify: Option<&NotifySocket>) -> Vec<(String, String)> {
        let mut extra_env = vec![("CUTOVER_PROGRAM".to_string(), self.config.name.clone())];
        // PWD names the directory as configured (the `current` symlink) when
        // it resolves to where the instance starts; apps that honour PWD, as
        // gunicorn does, then follow the symlink on their own reloads.
        let pwd = match dir_choice {
            Dir::Resolve => self.config.workdir.clone(),
            Dir::Pinned(p) => Some(p.clone()),
        };
        if let Some(pwd) = pwd {
            extra_env.push(("PWD".to_string(), pwd.display().to_string()));
        }
        if let Some(n) = notify {
            extra_env.push(("NOTIFY_SOCKET".to_string(), n.path().display().to_string()));
        }
        extra_env
    }

    /// A pipe for the instance's stderr, relayed so its last lines can
    /// explain its death; none where it writes to a terminal.
    fn stderr_relay(&self) -> Option<(StderrTail, OwnedFd)> {
        if !StderrTail::wanted(self.context.foreground_tty) {
            return None;
        }
        match StderrTail::start() {
            Ok(relay) => Some(relay),
            Err(e) => {
                warn!(program = %self.config.name, error = %e, "cannot relay the instance's stderr; it writes to cutover's directly");
                None
            }
        }
    }

    /// (Re)starts the readiness check of `instance`. sd_notify only counts
    /// for a fresh instance: a program reloaded by signal does not repeat it.
    /// An instance that users do not reach yet is probed through its own
    /// sockets, so that the old instance cannot answer for it.
    pub(super) fn check_readiness(&self, instance: &mut Instance, fresh: bool) {
        if !fresh {
            // Reloaded by signal: its old workers may answer for the new ones.
            instance.alone = false;
        }
        let notify = instance
            .notify
            .as_ref()
            .filter(|_| fresh)
            .map(NotifySocket::ready);
        instance.ready = Some(ReadyCheck::start(self.probe(instance, notify)));
    }

    /// Watches the readiness of an instance a reload brought up, for
    /// `watch_after_reload`; resolves only if it stops passing.
    pub(super) fn watch_readiness(&self, instance: &mut Instance) {
        let window = self.context.watch_after_reload;
        instance.watchdog = (!window.is_zero() && self.config.ready.polls())
            .then(|| Watchdog::start(self.probe(instance, None), window));
    }

    fn probe(
        &self,
        instance: &Instance,
        notify: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Probe {
        // Users reach another instance: this one's own, or (a holder's
        // group before the first steer) another container's or nobody.
        let reached =
            instance.generation == self.serving_generation && !self.sockets.users_elsewhere();
        let routes = if reached {
            Vec::new()
        } else {
            self.sockets
                .probe_routes(self.serving_generation, instance.generation)
        };
        Probe {
            config: self.config.ready.clone(),
            pid: instance.pid,
            notify,
            reaper: self.context.reaper.clone(),
            workdir: instance.dir.clone(),
            user: self.config.user.clone(),
            env: self.config.env.clone(),
            routes,
            alone: instance.alone && reached,
        }
    }

    /// Graceful stop of the whole group: stop_signal, then SIGKILL once
    /// stop_timeout has passed. Returns the group leader's status.
    pub(super) async fn stop(&mut self, mut instance: Instance, kill_now: bool) -> ExitStatus {
        let pgid = instance.pid;
        let name = self.config.name.clone();
        let timeout = self.config.stop_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let previous_state = self.stats.state;
        self.set_state(ProgramState::Stopping);
        instance.ready = None;
        instance.watchdog = None;
        let mut status = instance.exit.seen();
        if !kill_now && status.is_none() {
            info!(program = %name, pid = %pgid, signal = %self.config.stop_signal, "stopping");
            signal_group(pgid, self.config.stop_signal);
            loop {
                tokio::select! {
                    s = instance.exit.wait(), if status.is_none() => status = Some(s),
                    // Wait for the rest of the group too, up to the same deadline.
                    _ = wait_group_empty(pgid, deadline), if status.is_some() => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    command = self.commands.recv(), if !self.commands.is_closed() => {
                        match self.answer(command, &[&instance]) {
                            Some(Flow::Stop { kill: true }) => break,
                            Some(Flow::Reload(request)) => request.refuse(&self.config, "the program is stopping"),
                            _ => {}
                        }
                    }
                }
            }
        }
        if status.is_none() || group_alive(pgid) {
            if !kill_now {
                warn!(
                    program = %name,
                    pid = %pgid,
                    timeout = %humantime::format_duration(timeout),
                    "did not stop in time; sending SIGKILL to the process group"
                );
            }
            signal_group(pgid, Signal::SIGKILL);
            if status.is_none() {
                status = Some(instance.exit.wait().await);
            }
            wait_group_empty(pgid, tokio::time::Instant::now() + AFTER_KILL).await;
        }
        let status = status.expect("set above");
        instance.output_relayed().await;
        info!(program = %name, pid = %pgid, %status, "stopped");
        self.update(|s| s.state = previous_state);
        status
    }

    /// After the leader ended on its own, stop what it left in its group so a
    /// restart never runs beside the previous generation.
    pub(super) async fn clear_leftovers(&mut self, pgid: Pid) {
        if !group_alive(pgid) {
            return;
        }
        warn!(program = %self.config.name, %pgid, "the program left processes behind; stopping them");
        signal_group(pgid, self.config.stop_signal);
        let deadline = tokio::time::Instant::now() + self.config.stop_timeout;
        if !wait_group_empty(pgid, deadline).await {
            signal_group(pgid, Signal::SIGKILL);
            wait_group_empty(pgid, tokio::time::Instant::now() + AFTER_KILL).await;
        }
    }
}
