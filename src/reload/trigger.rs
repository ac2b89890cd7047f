//! What set a reload, deploy or rollback in motion, with its details.
//!
//! Triggers travel as this enum from where they arise (a touch file, a push,
//! a crash) to the actor that acts on them, so a decision never depends on
//! the wording of a message. They become text only on record: in the
//! history, the reload report and the logs.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::sha::Sha;
use crate::webhook::Forge;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The first release, fetched before any program runs.
    FirstStart,
    /// The look at the remote when the source actor starts.
    Start,
    Poll,
    /// A retry after a failed fetch, with backoff.
    Retry,
    /// A push into a watched local bare repository.
    Push,
    /// Automatic triggers that arrived during a deploy, as one.
    Coalesced,
    Webhook(Forge),
    /// `cutover deploy`.
    DeployCommand,
    /// `cutover rollback`.
    RollbackCommand,
    /// A program ended within the rollback window after a deploy.
    Crash {
        program: String,
        status: String,
        window: Duration,
    },
    /// The rollback of a deploy whose reload failed.
    AfterFailedDeploy(Box<Trigger>),
    /// A touch file changed.
    Touch(PathBuf),
    /// A watched file changed (dev mode).
    Watch(PathBuf),
    Signal(Signal),
    /// `cutover reload`.
    ControlSocket,
    /// The programs take up a release that was just switched to.
    Deployed(Sha),
    /// The programs go back to a release that was rolled back to.
    RolledBack(Sha),
    /// A restarted socket holder's new sockets.
    HolderReplaced,
}

impl Trigger {
    /// Asked for by a person: may go where automatic triggers hold back.
    pub fn by_hand(&self) -> bool {
        matches!(self, Trigger::DeployCommand | Trigger::RollbackCommand)
    }

    /// Sets a rollback in motion rather than a deploy.
    pub fn rolls_back(&self) -> bool {
        matches!(
            self,
            Trigger::RollbackCommand | Trigger::Crash { .. } | Trigger::AfterFailedDeploy(_)
        )
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::FirstStart => f.write_str("first start"),
            Trigger::Start => f.write_str("start"),
            Trigger::Poll => f.write_str("poll"),
            Trigger::Retry => f.write_str("retry"),
            Trigger::Push => f.write_str("push"),
            Trigger::Coalesced => f.write_str("push (coalesced)"),
            Trigger::Webhook(forge) => write!(f, "webhook ({forge})"),
            Trigger::DeployCommand => f.write_str("deploy command"),
            Trigger::RollbackCommand => f.write_str("rollback command"),
            Trigger::Crash {
                program,
                status,
                window,
            } => write!(
                f,
                "rollback: {program} {status} within {}",
                humantime::format_duration(*window)
            ),
            Trigger::AfterFailedDeploy(deploy) => write!(f, "rollback after {deploy}"),
            Trigger::Touch(path) => write!(f, "touch {}", path.display()),
            Trigger::Watch(path) => write!(f, "watch {}", path.display()),
            Trigger::Signal(signal) => f.write_str(signal.as_str()),
            Trigger::ControlSocket => f.write_str("control socket"),
            Trigger::Deployed(sha) => write!(f, "deploy {}", sha.short()),
            Trigger::RolledBack(sha) => write!(f, "rollback {}", sha.short()),
            Trigger::HolderReplaced => f.write_str("new sockets from a restarted holder"),
        }
    }
}
