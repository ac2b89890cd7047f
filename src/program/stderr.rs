//! An instance's stderr, relayed to cutover's own as it comes, with its
//! last lines kept: a new instance that dies before it is ready then says
//! why in the reload error (`the new instance exited with status 3 before
//! it was ready: RuntimeError: DATABASE_URL is not set`), in `cutover
//! status` and in a playbook's output, instead of only in `docker logs`.
//! Several lines, because servers often end with their own words after the
//! app's (gunicorn: `Worker failed to boot.` four lines below the
//! exception).
//!
//! Only where the relay changes nothing a user sees: not when cutover's own
//! stderr is a terminal (programs would lose their colours and line
//! buffering), and not with `foreground_tty`. Whole lines are written, so
//! a program's lines and cutover's own log lines do not cut into each other.
//!
//! The relay runs on a thread of its own per instance, never on the
//! runtime: a chatty program whose log reader (Docker's logging driver) is
//! slow blocks that thread's writes, never a probe, `cutover status`, the
//! reaper or signal forwarding.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::sync::watch;

/// The longest line an error carries.
const LAST_LINE_MAX: usize = 300;
/// How many of the last non-empty lines an error carries.
const LAST_LINES: usize = 8;
/// A line longer than this is written out unfinished.
const LINE_MAX: usize = 64 * 1024;
/// How long a reader waits for the relay to reach the end of the output
/// after the instance exited (its last words may still be in the pipe).
const SETTLE: Duration = Duration::from_millis(200);

/// What the relay saw so far.
#[derive(Debug, Clone, Default)]
struct Seen {
    last_lines: std::collections::VecDeque<String>,
    /// The pipe reached its end: every process holding it exited.
    closed: bool,
}

/// The reading end of an instance's stderr relay.
pub(super) struct StderrTail {
    seen: watch::Receiver<Seen>,
}

impl StderrTail {
    /// Whether instances get a relayed stderr in this process.
    pub fn wanted(foreground_tty: bool) -> bool {
        !foreground_tty && !std::io::stderr().is_terminal()
    }

    /// A pipe for the child's stderr and the task that relays it; the
    /// returned descriptor is the child's end (close it once forked).
    pub fn start() -> std::io::Result<(StderrTail, OwnedFd)> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (tx, seen) = watch::channel(Seen::default());
        std::thread::Builder::new()
            .name("stderr-relay".into())
            .stack_size(64 * 1024)
            .spawn(move || relay(std::fs::File::from(read), tx))?;
        Ok((StderrTail { seen }, write))
    }

    /// The last non-empty lines the instance wrote to stderr, joined by
    /// ` | `, once the relay read all of it (or after a moment, if some
    /// process still holds it).
    pub async fn last_lines(&mut self) -> Option<String> {
        let _ = tokio::time::timeout(SETTLE, self.seen.wait_for(|s| s.closed)).await;
        let seen = self.seen.borrow();
        let lines: Vec<&str> = seen.last_lines.iter().map(String::as_str).collect();
        (!lines.is_empty()).then(|| lines.join(" | "))
    }
}

/// Blocking: copies the pipe to cutover's stderr until every writer is gone.
fn relay(mut reader: std::fs::File, seen: watch::Sender<Seen>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        pending.extend_from_slice(&chunk[..n]);
        let complete = match pending.iter().rposition(|&b| b == b'\n') {
            Some(end) => end + 1,
            None if pending.len() >= LINE_MAX => pending.len(),
            None => continue,
        };
        write_out(&pending[..complete]);
        note_last_lines(&seen, &pending[..complete]);
        pending.drain(..complete);
    }
    if !pending.is_empty() {
        write_out(&pending);
        note_last_lines(&seen, &pending);
    }
    seen.send_modify(|s| s.closed = true);
}

/// To cutover's own stderr, as it is.
fn write_out(bytes: &[u8]) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(bytes);
    let _ = err.flush();
}

fn note_last_lines(seen: &watch::Sender<Seen>, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let new: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.chars().take(LAST_LINE_MAX).collect())
        .collect();
    if new.is_empty() {
        return;
    }
    seen.send_modify(|s| {
        for line in new.into_iter().rev().take(LAST_LINES).rev() {
            if s.last_lines.len() == LAST_LINES {
                s.last_lines.pop_front();
            }
            s.last_lines.push_back(line);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_lines_are_kept_once_the_writer_is_gone() {
        let (mut tail, write) = StderrTail::start().unwrap();
        let mut file = std::fs::File::from(write);
        file.write_all(b"Traceback (most recent call last):\n  File \"app.py\", line 1\n")
            .unwrap();
        file.write_all(b"RuntimeError: DATABASE_URL is not set\n\n  \n")
            .unwrap();
        drop(file);
        assert_eq!(
            tail.last_lines().await.as_deref(),
            Some(
                "Traceback (most recent call last): | File \"app.py\", line 1 | \
                 RuntimeError: DATABASE_URL is not set"
            )
        );
        let (mut tail, write) = StderrTail::start().unwrap();
        let mut file = std::fs::File::from(write);
        for i in 0..20 {
            file.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(file);
        let kept = tail.last_lines().await.unwrap();
        assert!(kept.starts_with("line 12 | line 13"), "{kept}");
        assert!(kept.ends_with("| line 19"), "{kept}");
    }

    #[tokio::test]
    async fn an_unfinished_last_line_counts_and_long_lines_are_cut() {
        let (mut tail, write) = StderrTail::start().unwrap();
        let mut file = std::fs::File::from(write);
        file.write_all(format!("{}\nno newline at the end", "x".repeat(1000)).as_bytes())
            .unwrap();
        drop(file);
        let kept = tail.last_lines().await.unwrap();
        assert!(kept.ends_with(" | no newline at the end"), "{kept}");
        assert_eq!(kept.len(), LAST_LINE_MAX + " | no newline at the end".len());
        let (mut tail, write) = StderrTail::start().unwrap();
        let mut file = std::fs::File::from(write);
        file.write_all("é".repeat(1000).as_bytes()).unwrap();
        drop(file);
        assert_eq!(
            tail.last_lines().await.map(|l| l.chars().count()),
            Some(LAST_LINE_MAX)
        );
    }
}
