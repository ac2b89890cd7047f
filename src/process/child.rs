//! The child's side of a fork, up to exec: only async-signal-safe calls on
//! memory prepared before the fork (another thread of the parent may have
//! held the allocator's lock at fork time). A failure is reported to the
//! parent through the status pipe as the stage and errno.

use std::os::fd::RawFd;

/// The program's first listening socket: the systemd protocol's fd 3.
pub(super) const FIRST_LISTEN_FD: RawFd = 3;

/// Which step in the child failed, sent through the status pipe with errno.
#[repr(u8)]
#[derive(Clone, Copy)]
pub(super) enum Stage {
    Fds = 1,
    Workdir = 2,
    User = 3,
    Exec = 4,
}

pub(super) struct UserIds {
    pub(super) uid: libc::uid_t,
    pub(super) gid: libc::gid_t,
    pub(super) groups: Vec<libc::gid_t>,
}

/// Raw pointers into memory prepared before fork; used only in the child.
pub(super) struct ChildSetup<'a> {
    pub(super) status_fd: RawFd,
    pub(super) source_fds: &'a [RawFd],
    pub(super) output: Option<RawFd>,
    pub(super) input: Option<RawFd>,
    pub(super) errors: Option<RawFd>,
    pub(super) listen_pid: Option<*mut u8>,
    pub(super) workdir: Option<*const libc::c_char>,
    pub(super) user: Option<&'a UserIds>,
    pub(super) foreground_tty: bool,
    pub(super) rtmax: libc::c_int,
    pub(super) path: *const libc::c_char,
    pub(super) argv: *const *const libc::c_char,
    pub(super) envp: *const *const libc::c_char,
}

impl ChildSetup<'_> {
    /// # Safety
    /// Call only in the child right after fork. Uses async-signal-safe calls only.
    pub(super) unsafe fn exec(&self) -> ! {
        // SAFETY: (the whole body) plain syscalls on fds and pointers that
        // stay valid in the child's copy of the parent's memory; no
        // allocation, no locks.
        unsafe {
            libc::setpgid(0, 0);
            if self.foreground_tty {
                // All signals are blocked, so SIGTTOU cannot stop us here.
                libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpgrp());
            }
            for (i, &src) in self.source_fds.iter().enumerate() {
                // dup2 clears close-on-exec on the target: exactly these survive exec.
                if libc::dup2(src, FIRST_LISTEN_FD + i as RawFd) < 0 {
                    self.fail(Stage::Fds);
                }
            }
            if let Some(out) = self.output
                && (libc::dup2(out, libc::STDOUT_FILENO) < 0
                    || libc::dup2(out, libc::STDERR_FILENO) < 0)
            {
                self.fail(Stage::Fds);
            }
            if let Some(input) = self.input
                && libc::dup2(input, libc::STDIN_FILENO) < 0
            {
                self.fail(Stage::Fds);
            }
            if let Some(errors) = self.errors
                && libc::dup2(errors, libc::STDERR_FILENO) < 0
            {
                self.fail(Stage::Fds);
            }
            if let Some(slot) = self.listen_pid {
                write_decimal(slot, libc::getpid() as u64);
            }
            if let Some(dir) = self.workdir
                && libc::chdir(dir) < 0
            {
                self.fail(Stage::Workdir);
            }
            if let Some(user) = self.user
                && (libc::setgroups(user.groups.len(), user.groups.as_ptr()) < 0
                    || libc::setgid(user.gid) < 0
                    || libc::setuid(user.uid) < 0)
            {
                self.fail(Stage::User);
            }
            // The raw syscall, because glibc's sigaction refuses the two
            // signals it reserves (32, 33), which may still arrive ignored.
            // All zeroes is SIG_DFL with no flags and an empty mask in the
            // kernel's layout, whatever the architecture orders its fields.
            let default = [0u64; 4];
            for sig in 1..=self.rtmax {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::syscall(
                        libc::SYS_rt_sigaction,
                        sig,
                        default.as_ptr(),
                        std::ptr::null_mut::<u64>(),
                        8usize,
                    );
                }
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::execve(self.path, self.argv, self.envp);
            self.fail(Stage::Exec)
        }
    }

    /// Reports the failed stage and errno to the parent and exits.
    ///
    /// # Safety
    /// Call only in the child after fork, like `exec`: async-signal-safe.
    unsafe fn fail(&self, stage: Stage) -> ! {
        // SAFETY: errno location, write and _exit are async-signal-safe.
        unsafe {
            let errno = (*libc::__errno_location()).to_ne_bytes();
            let msg = [stage as u8, errno[0], errno[1], errno[2], errno[3]];
            libc::write(self.status_fd, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    }
}

/// Writes `n` as NUL-terminated decimal into a 21-byte slot.
///
/// # Safety
/// `slot` must point to at least 21 writable bytes.
unsafe fn write_decimal(slot: *mut u8, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        // SAFETY: len <= 20 and the caller guarantees 21 bytes.
        unsafe { *slot.add(i) = digits[len - 1 - i] };
    }
    // SAFETY: as above; index len <= 20.
    unsafe { *slot.add(len) = 0 };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_slot_is_nul_terminated() {
        let mut slot = [b'x'; 21];
        // SAFETY: slot has 21 bytes.
        unsafe { write_decimal(slot.as_mut_ptr(), 4194304) };
        assert_eq!(&slot[..8], b"4194304\0");
    }
}
