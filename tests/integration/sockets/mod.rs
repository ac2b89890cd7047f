//! Listening sockets: held, handed off per instance, taken from a holder (src/sockets, src/holder).

#[cfg(feature = "container-tests")]
pub(crate) mod compose_holder;
pub(crate) mod handoff;
pub(crate) mod holder;
#[cfg(feature = "container-tests")]
pub(crate) mod holder_docker;
pub(crate) mod holder_hostile;
