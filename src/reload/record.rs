//! What the reload coordinator publishes: each reload as it ended
//! (`ReloadRecord`) and its counters (`ReloadStats`).

use serde::{Deserialize, Serialize};

use crate::program::state::ProgramReload;

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
