//! A new image when dependencies change: the command, the webhook, docker (src/redeploy).

pub(crate) mod command;
#[cfg(feature = "container-tests")]
pub(crate) mod redeploy_docker;
