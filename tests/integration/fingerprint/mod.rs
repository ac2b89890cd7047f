//! `cutover fingerprint`, the dependency digest (src/fingerprint).

pub(crate) mod digest;
