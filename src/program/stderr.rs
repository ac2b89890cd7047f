//! An instance's stderr, relayed to cutover's own as it comes, with its
//! last lines kept: a new instance that dies before it is ready then says
//! why in the reload error (`the new instance exited with status 3 before
//! it was ready: RuntimeError: DATABASE_URL is not set`), in `cutover
//! status` and in a playbook's output, instead of only in `docker logs`.
//! Several lines, because servers often end with their own words after the
//! app's (gunicorn: `Worker failed to boot.` four lines below the
//! exception), and, when the app's own exception scrolled out of those,
//! that exception's line first: a server can print a whole traceback of its
//! own after the app's (gunicorn, when it halts while reaping a worker).
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
    /// How many non-empty lines were seen in all.
    count: u64,
    /// The latest line that reads like the cause of a crash, and its
    /// number: the latest, as a traceback's last line is the one raised
    /// (Python prints a chained exception's root first), and an exception
    /// logged and survived long before is not why the instance died.
    cause: Option<(u64, String)>,
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

    /// Returns once the relay wrote out all the instance's output (every
    /// writer gone and the pipe read to its end), or after a moment if some
    /// process still holds it: an instance that exited is only over once its
    /// last words reached cutover's stderr, or cutover, exiting with it as
    /// PID 1, would drop them.
    pub async fn relayed(&mut self) {
        let _ = tokio::time::timeout(SETTLE, self.seen.wait_for(|s| s.closed)).await;
    }

    /// The last non-empty lines the instance wrote to stderr, joined by
    /// ` | `, once the relay read all of it (or after a moment, if some
    /// process still holds it).
    pub async fn last_lines(&mut self) -> Option<String> {
        self.relayed().await;
        let seen = self.seen.borrow();
        let mut lines: Vec<&str> = Vec::with_capacity(LAST_LINES + 2);
        let first_kept = seen.count - seen.last_lines.len() as u64;
        if let Some((_, cause)) = seen.cause.as_ref().filter(|(n, _)| *n < first_kept) {
            lines.push(cause);
            lines.push("…");
        }
        lines.extend(seen.last_lines.iter().map(String::as_str));
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
    let new: Vec<(bool, String)> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            (
                reads_like_a_cause(l),
                l.trim().chars().take(LAST_LINE_MAX).collect(),
            )
        })
        .collect();
    if new.is_empty() {
        return;
    }
    seen.send_modify(|s| {
        let skipped = new.len().saturating_sub(LAST_LINES);
        for (i, (cause, line)) in new.into_iter().enumerate() {
            let number = s.count;
            s.count += 1;
            if cause {
                s.cause = Some((number, line.clone()));
            }
            if i < skipped {
                continue;
            }
            if s.last_lines.len() == LAST_LINES {
                s.last_lines.pop_front();
            }
            s.last_lines.push_back(line);
        }
    });
}

/// Whether a line of output names what made a program fail, in the words
/// of the common runtimes: `RuntimeError: …` and `java.lang.FooException:
/// …` (Python, Node, the JVM), `…: message (RuntimeError)` (Ruby), a Rust
/// or Go panic. Only unindented lines: a stack frame quoting code is not a
/// cause, and log lines that merely say "error" are not either.
fn reads_like_a_cause(line: &str) -> bool {
    if line.starts_with(char::is_whitespace) {
        return false;
    }
    let line = line.trim_end();
    let is_error_name = |name: &str| {
        (name.ends_with("Error") || name.ends_with("Exception"))
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$')
    };
    let python_like = line
        .split_once(": ")
        .is_some_and(|(name, _)| is_error_name(name));
    let ruby_like = line.ends_with(')')
        && line
            .rsplit_once(" (")
            .is_some_and(|(_, name)| is_error_name(name.trim_end_matches(')')));
    let panic = line.starts_with("panic: ")
        || (line.starts_with("thread '") && line.contains("' panicked at "));
    python_like || ruby_like || panic
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
    async fn the_apps_exception_is_kept_when_the_servers_own_traceback_follows() {
        // What gunicorn printed in CI: the app's exception, then the
        // arbiter's own traceback when it halted while reaping the worker.
        let output = "[2026-12-02 14:21:27 +0000] [9] [ERROR] Exception in worker process
Traceback (most recent call last):
  File \"/srv/app/current/app.py\", line 1, in <module>
    raise RuntimeError(\"broken release\")
RuntimeError: broken release
[2026-12-02 14:21:27 +0000] [9] [INFO] Worker exiting (pid: 9)
Traceback (most recent call last):
  File \"arbiter.py\", line 405, in halt
    self.stop()
  File \"arbiter.py\", line 485, in stop
    self.reap_workers()
  File \"arbiter.py\", line 683, in reap_workers
    raise HaltServer(reason, self.WORKER_BOOT_ERROR)
gunicorn.errors.HaltServer: <HaltServer 'Worker failed to boot.' 3>
";
        let (mut tail, write) = StderrTail::start().unwrap();
        let mut file = std::fs::File::from(write);
        // In two writes, as a pipe may deliver it.
        let (first, second) = output.split_at(output.find("[INFO]").unwrap());
        file.write_all(first.as_bytes()).unwrap();
        file.write_all(second.as_bytes()).unwrap();
        drop(file);
        let kept = tail.last_lines().await.unwrap();
        assert!(
            kept.starts_with("RuntimeError: broken release | … | "),
            "{kept}"
        );
        assert!(
            kept.ends_with("<HaltServer 'Worker failed to boot.' 3>"),
            "{kept}"
        );
        assert_eq!(kept.matches(" | ").count(), LAST_LINES + 1, "{kept}");
    }

    /// Node 20 and Puma 5.6 (Debian) as they die on a release that raises at
    /// load: the error line, then more than 8 lines of frames and footer.
    #[tokio::test]
    async fn node_and_pumas_errors_are_kept_above_their_stack_frames() {
        let node = "/srv/app/current/server.js:1
throw new Error(\"broken release\");
^

Error: broken release
    at Object.<anonymous> (/srv/app/current/server.js:1:7)
    at Module._compile (node:internal/modules/cjs/loader:1521:14)
    at Module._extensions..js (node:internal/modules/cjs/loader:1623:10)
    at Module.load (node:internal/modules/cjs/loader:1266:32)
    at Module._load (node:internal/modules/cjs/loader:1091:12)
    at Function.executeUserEntryPoint [as runMain] (node:internal/modules/run_main:164:12)
    at node:internal/main/run_main_module:28:49

Node.js v20.20.2
";
        let mut puma = String::from(
            "Puma starting in single mode...
* Puma version: 5.6.5 (ruby 3.1.2-p20) (\"Birdie's Version\")
! Unable to load application: RuntimeError: broken release
config.ru:1:in `block in <main>': broken release (RuntimeError)
",
        );
        for frame in 0..8 {
            puma.push_str(&format!(
                "\tfrom /usr/lib/ruby/puma/runner.rb:{frame}:in `run'\n"
            ));
        }
        for (output, cause) in [
            (node, "Error: broken release"),
            (
                puma.as_str(),
                "config.ru:1:in `block in <main>': broken release (RuntimeError)",
            ),
        ] {
            let (mut tail, write) = StderrTail::start().unwrap();
            std::fs::File::from(write)
                .write_all(output.as_bytes())
                .unwrap();
            let kept = tail.last_lines().await.unwrap();
            assert!(kept.starts_with(&format!("{cause} | … | ")), "{kept}");
        }
    }

    #[tokio::test]
    async fn the_latest_cause_is_the_one_kept() {
        let (mut tail, write) = StderrTail::start().unwrap();
        let mut file = std::fs::File::from(write);
        file.write_all(b"KeyError: 'DATABASE_URL'\n").unwrap();
        file.write_all(b"During handling of the above exception, another exception occurred:\n")
            .unwrap();
        file.write_all(b"RuntimeError: set DATABASE_URL\n").unwrap();
        for i in 0..8 {
            file.write_all(format!("  frame {i}\n").as_bytes()).unwrap();
        }
        drop(file);
        let kept = tail.last_lines().await.unwrap();
        assert!(
            kept.starts_with("RuntimeError: set DATABASE_URL | … | frame 0"),
            "{kept}"
        );
    }

    #[test]
    fn causes_are_told_from_log_lines_and_stack_frames() {
        for cause in [
            "RuntimeError: broken release",
            "ModuleNotFoundError: No module named 'flask'",
            "Error: Cannot find module 'express'",
            "java.lang.IllegalStateException: no config",
            "app.rb:1:in `<main>': broken release (RuntimeError)",
            "thread 'main' panicked at src/main.rs:2:5:",
            "panic: runtime error: index out of range",
        ] {
            assert!(reads_like_a_cause(cause), "{cause}");
        }
        for other in [
            "[2026-12-02 14:21:27 +0000] [9] [ERROR] Exception in worker process",
            "    raise RuntimeError(\"broken release\")",
            "  File \"app.py\", line 1, in <module>",
            "Traceback (most recent call last):",
            "error: something (not a name)",
            "gunicorn.errors.HaltServer: <HaltServer 'Worker failed to boot.' 3>",
        ] {
            assert!(!reads_like_a_cause(other), "{other}");
        }
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
