//! What a program actor publishes: its state and counters (`ProgramStatus`)
//! and each program's part of a reload (`ProgramReload`), as `cutover
//! status`, /status and /metrics show them (`crate::status` gathers them).

use serde::{Deserialize, Serialize};

/// How a program takes new code (`[reload] strategy`, without parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    Signal,
    Restart,
    Overlap,
    None,
}

impl From<crate::config::ReloadStrategy> for Strategy {
    /// The strategy without its parameters, as status reports it.
    fn from(strategy: crate::config::ReloadStrategy) -> Strategy {
        use crate::config::ReloadStrategy as R;
        match strategy {
            R::Signal(_) => Strategy::Signal,
            R::Restart => Strategy::Restart,
            R::Overlap => Strategy::Overlap,
            R::None => Strategy::None,
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Strategy::Signal => "signal",
            Strategy::Restart => "restart",
            Strategy::Overlap => "overlap",
            Strategy::None => "none",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProgramState {
    Starting,
    Running,
    /// Started, but its readiness check failed.
    Unready,
    Reloading,
    BackingOff,
    /// Not started yet: its workdir does not exist (no release deployed).
    WaitingForRelease,
    Stopping,
    Stopped,
}

impl ProgramState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProgramState::Starting => "starting",
            ProgramState::Running => "running",
            ProgramState::Unready => "unready",
            ProgramState::Reloading => "reloading",
            ProgramState::BackingOff => "backing-off",
            ProgramState::WaitingForRelease => "waiting-for-release",
            ProgramState::Stopping => "stopping",
            ProgramState::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramStatus {
    pub name: String,
    pub state: ProgramState,
    pub pid: Option<i32>,
    pub strategy: Strategy,
    /// The directory the running instance was started in (symlinks resolved).
    pub release: Option<String>,
    pub started_at: Option<String>,
    pub restarts: u64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub last_exit: Option<String>,
}

/// One program's part of a reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramReload {
    pub program: String,
    pub strategy: Strategy,
    pub ok: bool,
    pub error: Option<String>,
    pub pid: Option<i32>,
    pub release: Option<String>,
    /// Command received to reload action started (cutover's own latency).
    pub action_ms: f64,
    /// Action started to readiness seen.
    pub ready_ms: f64,
    /// Readiness seen to cutover done (old instance told to stop; cutover's own latency).
    pub cutover_ms: f64,
    /// `restart`: how long the old instance took to exit gracefully (the app's time).
    #[serde(default)]
    pub old_stop_ms: f64,
    /// Between taking users off the old instance and its stop signal.
    #[serde(default)]
    pub drain_ms: f64,
}
