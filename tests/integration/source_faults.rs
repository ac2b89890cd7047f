//! Code delivery from git when things go wrong: unreachable remotes, bad
//! credentials, interrupted fetches, damaged volumes, broken releases.
