//! Children in process groups of their own, and stopping a process tree.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{GROUPS, sleep};

/// (pid, ppid, pgid) of every process.
fn processes() -> Vec<(i32, i32, i32)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ..."; comm may hold spaces and parens.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if let (Some(Ok(ppid)), Some(Ok(pgid))) =
            (f.get(1).map(|v| v.parse()), f.get(2).map(|v| v.parse()))
        {
            out.push((pid, ppid, pgid));
        }
    }
    out
}

/// The process `root` and all its descendants: pid -> pgid.
fn tree(root: i32) -> HashMap<i32, i32> {
    let procs = processes();
    let mut found = HashMap::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &(pid, ppid, pgid) in &procs {
            if (pid == p || ppid == p) && !found.contains_key(&pid) {
                found.insert(pid, pgid);
                if pid != p {
                    todo.push(pid);
                }
            }
        }
    }
    found
}

/// SIGTERM to the group led by `pid`, then waits for its leader to exit
/// (cutover stops its programs itself); whatever of the tree is left after
/// `grace` gets SIGKILL. Never touches the bench's own process group.
pub(super) fn stop_tree(pid: i32, grace: Duration) {
    let before = tree(pid);
    // SAFETY: kill(2) and waitpid(2) on a group/child this bench started.
    unsafe { libc::kill(-pid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    let mut reaped = false;
    while Instant::now() < deadline {
        let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        if r == pid || r < 0 {
            reaped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Stragglers: processes of the old tree still alive in the same groups.
    let own = unsafe { libc::getpgrp() };
    let groups: HashSet<i32> = before.values().copied().filter(|&g| g != own).collect();
    let left: Vec<i32> = processes()
        .into_iter()
        .filter(|(p, _, g)| before.contains_key(p) && groups.contains(g) && *p != pid)
        .map(|(p, _, _)| p)
        .collect();
    for p in &left {
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    if !reaped {
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
}

/// Kills processes still in the (now leaderless) group `pgid`.
fn stop_leftovers(pgid: i32) {
    let own = unsafe { libc::getpgrp() };
    if pgid == own {
        return;
    }
    if processes().iter().any(|&(_, _, g)| g == pgid) {
        // SAFETY: the group this bench created for the child; members remain.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// A child started in a process group of its own, stopped (with everything
/// it started) when dropped.
pub struct Group {
    child: Option<Child>,
    pid: i32,
}

impl Group {
    pub fn spawn(cmd: &mut Command) -> Group {
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        let pid = child.id() as i32;
        GROUPS.lock().unwrap().push(pid);
        Group {
            child: Some(child),
            pid,
        }
    }

    /// [`Group::spawn`] with stdin from /dev/null, stdout and stderr into
    /// `log`, and none of the socket-activation variables the bench itself
    /// may have been given.
    pub fn spawn_logged(cmd: &mut Command, log: File) -> Group {
        Group::spawn(
            cmd.env_remove("NOTIFY_SOCKET")
                .env_remove("LISTEN_FDS")
                .env_remove("LISTEN_PID")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
    }

    /// Takes the group off the cleanup list; whether it was still on it.
    fn forget(&self) -> bool {
        let mut g = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
        let known = g.contains(&self.pid);
        g.retain(|&p| p != self.pid);
        known
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGTERM to the leader only (like `kill $PID`).
    pub fn terminate_leader(&self) {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
    }

    /// Waits for the leader to exit on its own; kills the tree after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                self.forget();
                // Processes left behind by the leader, if any.
                stop_leftovers(self.pid);
                self.child = None;
                return;
            }
            sleep(Duration::from_millis(2));
        }
        self.stop(Duration::from_secs(5));
    }

    /// SIGTERM to the group, SIGKILL to what is left of the tree after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.forget() {
            stop_tree(self.pid, grace);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.try_wait();
        }
    }

    /// Waits up to `timeout` for the child to exit; its stdout and stderr.
    pub fn wait_output(&mut self, timeout: Duration) -> String {
        let mut child = self.child.take().expect("already waited");
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(o) = stdout.as_mut() {
                let _ = o.read_to_string(&mut s);
            }
            if let Some(e) = stderr.as_mut() {
                let _ = e.read_to_string(&mut s);
            }
            s
        });
        let deadline = Instant::now() + timeout;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                self.child = Some(child);
                self.stop(Duration::from_secs(2));
                return "(killed: did not finish in time)".into();
            }
            sleep(Duration::from_millis(20));
        }
        self.forget();
        reader.join().unwrap_or_default()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}
