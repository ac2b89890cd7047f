//! Times as cutover reports them: RFC 3339 wall-clock stamps and
//! milliseconds as floats, the same in logs, status and history.

use std::time::{Duration, SystemTime};

pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Milliseconds as a float, for reports.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
