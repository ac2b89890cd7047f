//! Processes as the kernel sees them: forking and exec'ing a child
//! (`spawn`), the one owner of `waitpid` (`reaper`), exit statuses (`exit`),
//! process groups (`group`), signals turned into messages (`signals`) and
//! the users programs run as (`user`). Nothing here knows what a program,
//! a release or a reload is.

mod child;
pub(crate) mod env;
pub(crate) mod exit;
pub(crate) mod group;
pub(crate) mod reaper;
pub(crate) mod signals;
pub(crate) mod spawn;
pub(crate) mod user;
