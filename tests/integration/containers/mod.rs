//! cutover in real containers on a real Docker engine (feature `container-tests`).

pub(crate) mod ansible;
pub(crate) mod container;
pub(crate) mod dockercli;
pub(crate) mod e2e;
