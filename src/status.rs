//! The status model: what `cutover status`, /status, /healthz and /metrics
//! report. Plain data, assembled from the snapshots the actors publish (the
//! programs, the reload coordinator, the source, the supervisor); nothing
//! here asks an actor anything. `report` renders it as text or Prometheus
//! exposition, serde as JSON.

use serde::{Deserialize, Serialize};

/// What the supervisor as a whole is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SupervisorPhase {
    Starting,
    /// No release in the volume yet: fetching the first, then its hooks.
    WaitingForFirstRelease,
    Running,
    Stopping,
}

/// How a program takes new code (`[reload] strategy`, without parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    Signal,
    Restart,
    Overlap,
    None,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadRecord {
    pub id: u64,
    pub trigger: String,
    pub started_at: String,
    /// Trigger seen to reload finished.
    pub duration_ms: f64,
    pub ok: bool,
    pub error: Option<String>,
    pub programs: Vec<ProgramReload>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadStats {
    pub in_progress: bool,
    pub pending: bool,
    pub triggers: u64,
    pub reloads: u64,
    pub failures: u64,
    pub last: Option<ReloadRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: f64,
    pub state: SupervisorPhase,
    pub programs: Vec<ProgramStatus>,
    pub reload: ReloadStats,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::source::SourceStatus>,
}

impl Status {
    /// Healthy when every program has an instance that passed readiness.
    pub fn health(&self) -> Result<(), String> {
        if self.state == SupervisorPhase::WaitingForFirstRelease {
            let step = self
                .source
                .as_ref()
                .and_then(|s| s.deploying.as_ref())
                .map(|d| format!(" ({} for {:.0} s)", d.phase, d.phase_seconds))
                .unwrap_or_default();
            return Err(format!("waiting for the first release{step}"));
        }
        let bad: Vec<String> = self
            .programs
            .iter()
            .filter(|p| !matches!(p.state, ProgramState::Running | ProgramState::Reloading))
            .map(|p| format!("{} is {}", p.name, p.state.as_str()))
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join(", "))
        }
    }
}
