//! `[redeploy] docker`: cutover builds a new image and replaces its own
//! container through a real Docker engine.
