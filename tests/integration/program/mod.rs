//! One supervised program: restarts, the first release, real app servers and examples (src/program).

pub(crate) mod django;
pub(crate) mod first_release;
pub(crate) mod gunicorn;
pub(crate) mod restart;
pub(crate) mod servers;
