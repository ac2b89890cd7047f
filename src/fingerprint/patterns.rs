//! Which files a fingerprint covers: the default patterns, and globs
//! compiled with the matching rules of `crate::fingerprint` (`*`, `?` and
//! `[...]` never match `/`; `**` matches directories), plus how deep a walk
//! must go for any of them to match.

use std::path::Path;
use std::sync::OnceLock;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use super::FingerprintError;

/// The dependency files of the common ecosystems, used when the config has
/// no `[dependencies] files`.
pub const DEFAULT_PATTERNS: &[&str] = &[
    "requirements*.txt",
    "poetry.lock",
    "Pipfile.lock",
    "package-lock.json",
    "yarn.lock",
    "Gemfile.lock",
    "go.sum",
    "Cargo.lock",
    "Dockerfile",
];

/// Why a pattern is refused; its text is the reason, ready for a config
/// problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty pattern")]
    Empty,
    #[error("patterns are relative to the release: remove the leading `/`")]
    Absolute,
    #[error("patterns are relative to the release: no `.` or `..` components")]
    DotComponent,
    /// Not a glob (an unclosed class, a bad escape, ...).
    #[error("{0}")]
    Glob(globset::ErrorKind),
}

/// Checks one pattern and compiles it with the matching rules above.
pub fn compile_pattern(pattern: &str) -> Result<Glob, PatternError> {
    if pattern.trim().is_empty() {
        return Err(PatternError::Empty);
    }
    if pattern.starts_with('/') {
        return Err(PatternError::Absolute);
    }
    if pattern.split('/').any(|c| c == "." || c == "..") {
        return Err(PatternError::DotComponent);
    }
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| PatternError::Glob(e.kind().clone()))
}

/// A compiled set of patterns. Equal when the pattern texts are equal.
#[derive(Debug, Clone)]
pub struct Patterns {
    patterns: Vec<String>,
    /// Compiled by `new`; for the defaults, on first use (see `default`).
    set: OnceLock<GlobSet>,
    /// How many path components a match can have; `None` for `**` or classes.
    pub(super) max_depth: Option<usize>,
}

impl Patterns {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Patterns, FingerprintError> {
        let patterns: Vec<String> = patterns.iter().map(|p| p.as_ref().to_string()).collect();
        let set = compile_set(&patterns)?;
        Ok(Patterns {
            max_depth: max_depth(&patterns),
            patterns,
            set: OnceLock::from(set),
        })
    }

    /// The pattern texts, as configured.
    pub fn as_strings(&self) -> &[String] {
        &self.patterns
    }

    pub(super) fn is_match(&self, relative: &Path) -> bool {
        self.set
            .get_or_init(|| compile_set(&self.patterns).expect("the default patterns are valid"))
            .is_match(relative)
    }
}

fn compile_set(patterns: &[String]) -> Result<GlobSet, FingerprintError> {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        let glob = compile_pattern(p).map_err(|reason| FingerprintError::Pattern {
            pattern: p.clone(),
            reason: reason.to_string(),
        })?;
        builder.add(glob);
    }
    builder.build().map_err(|e| FingerprintError::Pattern {
        pattern: patterns.join(", "),
        reason: e.to_string(),
    })
}

fn max_depth(patterns: &[String]) -> Option<usize> {
    let mut max_depth = Some(0);
    for p in patterns {
        // Only a literal `/` matches `/` (literal_separator), except
        // through `**` or a class such as `[/]`.
        let depth = (!p.contains("**") && !p.contains('[')).then(|| p.matches('/').count() + 1);
        max_depth = max_depth.zip(depth).map(|(a, b)| a.max(b));
    }
    max_depth
}

impl Default for Patterns {
    /// [`DEFAULT_PATTERNS`], compiled on first use: every config has them
    /// unless it names its own, but only a deploy matches files against
    /// them, and compiling a glob set runs (and so keeps resident) about
    /// 0.5 MB of regex compiler code in every `cutover run`.
    fn default() -> Self {
        let patterns: Vec<String> = DEFAULT_PATTERNS.iter().map(|p| p.to_string()).collect();
        Patterns {
            max_depth: max_depth(&patterns),
            patterns,
            set: OnceLock::new(),
        }
    }
}

impl PartialEq for Patterns {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl Eq for Patterns {}
