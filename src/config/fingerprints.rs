//! Validation of `[dependencies]`: the files whose fingerprint decides
//! between a hot reload and a new image. Every pattern is compiled here with
//! the same rules `crate::fingerprint` matches with, so a bad glob is a
//! config error naming `dependencies.files[i]` before anything starts.

use std::path::PathBuf;

use super::problems::{Problems, Segment};
use super::raw::RawDependencies;
use super::values::child;
use super::{DEFAULT_DEPENDENCIES_BASELINE, DependenciesConfig};
use crate::fingerprint::{Patterns, compile_pattern};

/// The defaults stand in for anything absent or invalid; callers see the
/// problems and do not use the result then.
pub(super) fn dependencies(raw: Option<RawDependencies>, p: &mut Problems) -> DependenciesConfig {
    let mut config = DependenciesConfig::default();
    let Some(raw) = raw else {
        return config;
    };
    let path = [Segment::Key("dependencies".into())];
    if let Some(files) = raw.files {
        let at = child(&path, "files");
        if files.is_empty() {
            p.add(
                &at,
                "list at least one pattern, or remove the key for the defaults",
            );
        }
        let before = p.list.len();
        for (i, pattern) in files.iter().enumerate() {
            if let Err(reason) = compile_pattern(pattern) {
                let item = [at.clone(), vec![Segment::Index(i)]].concat();
                p.add(&item, format!("invalid pattern `{pattern}`: {reason}"));
            }
        }
        if p.list.len() == before && !files.is_empty() {
            match Patterns::new(&files) {
                Ok(patterns) => config.patterns = patterns,
                Err(e) => p.add(&at, e.to_string()),
            }
        }
    }
    if let Some(baseline) = raw.baseline {
        let file = PathBuf::from(&baseline);
        if file.is_relative() || file.file_name().is_none() {
            p.add(
                &child(&path, "baseline"),
                format!(
                    "`{baseline}` is not an absolute file path (like \"{DEFAULT_DEPENDENCIES_BASELINE}\")"
                ),
            );
        } else {
            config.baseline = file;
        }
    }
    config
}
