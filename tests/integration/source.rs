//! Code delivery from git: deploys by push, poll, webhook and command;
//! hooks; rollback; history.
