//! The status model: what `cutover status`, /status, /healthz and /metrics
//! report. Plain data, assembled from the snapshots the actors publish (the
//! programs, the reload coordinator, the source, the supervisor); nothing
//! here asks an actor anything. `report` renders it as text or Prometheus
//! exposition, serde as JSON.

pub(crate) mod report;

use serde::{Deserialize, Serialize};

pub use crate::program::state::{ProgramState, ProgramStatus};
pub use crate::reload::record::{ReloadRecord, ReloadStats};

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
    pub fn health(&self) -> Result<(), Unhealthy> {
        if self.state == SupervisorPhase::WaitingForFirstRelease {
            let step = self
                .source
                .as_ref()
                .and_then(|s| s.deploying.as_ref())
                .map(|d| format!(" ({} for {:.0} s)", d.phase, d.phase_seconds))
                .unwrap_or_default();
            return Err(Unhealthy::WaitingForFirstRelease { step });
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
            Err(Unhealthy::ProgramsNotReady(bad))
        }
    }
}

/// Why /healthz answers 503; its text follows "unhealthy: ".
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    /// `step` is empty, or " (<phase> for <n> s)" while a deploy runs.
    #[error("waiting for the first release{step}")]
    WaitingForFirstRelease { step: String },
    /// One "<name> is <state>" per program without a ready instance.
    #[error("{}", .0.join(", "))]
    ProgramsNotReady(Vec<String>),
}
