//! Every listening socket a program serves on, wherever it comes from:
//! bound here (`held`) or taken from a `cutover hold` container over its
//! unix socket (`take`, `link`, `wire`, `protocol`); one per instance and
//! steered among the instances by a BPF program (`steer`, `port_group`,
//! `handoff`); probes that reach exactly the instance they check
//! (`probe`). The holder's own side is `crate::holder`.

pub(crate) mod handoff;
pub(crate) mod held;
pub(crate) mod link;
pub(crate) mod port_group;
pub(crate) mod probe;
pub(crate) mod protocol;
pub(crate) mod steer;
pub(crate) mod take;
pub(crate) mod wire;
