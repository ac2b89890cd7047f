//! What `cutover status` shows (src/status).

pub(crate) mod status_escapes;
