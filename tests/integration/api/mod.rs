//! The control socket and the HTTP endpoint against clients that misbehave or flood them (src/api).

pub(crate) mod hostile;
pub(crate) mod idle_flood;
