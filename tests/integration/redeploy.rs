//! `[redeploy]` command and webhook: how cutover asks for a new image.
