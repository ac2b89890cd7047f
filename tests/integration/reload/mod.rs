//! Reloads: triggers, strategies and their failures (`hot`), and the dev-mode watch (src/reload).

pub(crate) mod hot;
pub(crate) mod watch_symlinks;
