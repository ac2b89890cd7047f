//! Process signals in, messages out.
//!
//! The handlers (tokio's) only wake a task; each wake becomes a `Incoming`
//! message for the supervisor, which decides what it means. SIGCHLD is not
//! here: it belongs to the reaper.

use std::io;

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// A signal cutover received, as the supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// SIGTERM, SIGINT or SIGQUIT: stop everything gracefully.
    Shutdown(Signal),
    /// SIGHUP: reserved for reload.
    Hangup,
    /// Anything else worth passing on to the programs unchanged.
    Forward(Signal),
}

const SHUTDOWN: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];

/// Signals passed through to every program's process group. The synchronous
/// ones (SEGV, BUS, FPE, ILL, TRAP, ABRT, SYS) are cutover's own business,
/// and STOP/KILL cannot be caught.
const FORWARDED: [Signal; 14] = [
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGALRM,
    Signal::SIGCONT,
    Signal::SIGPWR,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGIO,
    Signal::SIGURG,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
];

/// Installs the handlers and returns the stream of messages.
pub fn listen() -> io::Result<mpsc::UnboundedReceiver<Incoming>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let routes = SHUTDOWN
        .iter()
        .map(|&s| (s, Incoming::Shutdown(s)))
        .chain(std::iter::once((Signal::SIGHUP, Incoming::Hangup)))
        .chain(FORWARDED.iter().map(|&s| (s, Incoming::Forward(s))));
    for (sig, message) in routes {
        let mut stream = signal(SignalKind::from_raw(sig as i32))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(message).is_err() {
                    break;
                }
            }
        });
    }
    Ok(rx)
}

/// A signal name or number that names no signal; the text is the config
/// problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("unknown signal number {0}")]
    Number(i32),
    /// As written.
    #[error("unknown signal `{0}`; write it like \"SIGTERM\" or \"SIGQUIT\"")]
    Name(String),
}

/// Parses "SIGTERM", "TERM", "term" or "15".
pub fn parse_signal(text: &str) -> Result<Signal, SignalError> {
    let trimmed = text.trim();
    if let Ok(n) = trimmed.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| SignalError::Number(n));
    }
    let upper = trimmed.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| SignalError::Name(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signal_spellings() {
        assert_eq!(parse_signal("SIGTERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("quit"), Ok(Signal::SIGQUIT));
        assert_eq!(parse_signal(" 9 "), Ok(Signal::SIGKILL));
        let err = parse_signal("SIGNOPE").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown signal `SIGNOPE`; write it like \"SIGTERM\" or \"SIGQUIT\""
        );
        assert_eq!(
            parse_signal("999").unwrap_err().to_string(),
            "unknown signal number 999"
        );
        assert!(parse_signal("999").is_err());
    }
}
