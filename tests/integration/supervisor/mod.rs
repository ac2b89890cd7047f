//! `cutover run` as a whole: the command line, and never blocking (src/supervisor, src/cli).

pub(crate) mod cli;
pub(crate) mod responsive;
