//! Config errors: every problem found in one file, each with the key path,
//! the line and column it stands on, and what is wrong.
//!
//! Locating a key by path (rather than carrying spans through every struct)
//! lets the serde structs stay plain while errors still point at the line.

use std::path::PathBuf;

use toml::de::{DeTable, DeValue};

/// One thing wrong with a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path such as `program[1].stop_timeout`; empty for the whole file.
    pub path: String,
    /// 1-based line and column, when the key could be found in the text.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

/// All the problems of one config file. Nothing is started when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render(.origin, .problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

fn render(origin: &str, problems: &[Problem]) -> String {
    let mut out = format!(
        "{origin}: {} problem{} found",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str("\n  ");
        out.push_str(origin);
        if let Some((line, col)) = p.location {
            out.push_str(&format!(":{line}:{col}"));
        }
        out.push_str(": ");
        if !p.path.is_empty() {
            out.push_str(&p.path);
            out.push_str(": ");
        }
        out.push_str(&p.message);
    }
    out
}

/// A step in a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

pub fn path_string(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Finds where a key path stands in the source text.
pub struct Locator<'a> {
    text: &'a str,
    root: Option<toml::Spanned<DeTable<'a>>>,
}

impl<'a> Locator<'a> {
    pub fn new(text: &'a str) -> Self {
        Locator {
            text,
            root: DeTable::parse(text).ok(),
        }
    }

    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    /// The position of the key (for a table entry) or value (for an array item).
    pub fn locate(&self, path: &[Segment]) -> Option<(usize, usize)> {
        let root = self.root.as_ref()?;
        let mut table: &DeTable = root.get_ref();
        let mut value: Option<&DeValue> = None;
        let mut offset = None;
        for seg in path {
            match seg {
                Segment::Key(key) => {
                    let table_here = match value {
                        None => table,
                        Some(v) => v.as_table()?,
                    };
                    let (k, v) = table_here.iter().find(|(k, _)| k.get_ref() == key)?;
                    offset = Some(k.span().start);
                    value = Some(v.get_ref());
                    if let Some(t) = v.get_ref().as_table() {
                        table = t;
                    }
                }
                Segment::Index(i) => {
                    let item = value?.as_array()?.get(*i)?;
                    offset = Some(item.span().start);
                    value = Some(item.get_ref());
                }
            }
        }
        offset.map(|o| self.line_col(o))
    }
}

/// Collects problems while validating, locating each one.
pub struct Problems<'a> {
    locator: &'a Locator<'a>,
    pub list: Vec<Problem>,
}

impl<'a> Problems<'a> {
    pub fn new(locator: &'a Locator<'a>) -> Self {
        Problems {
            locator,
            list: Vec::new(),
        }
    }

    pub fn add(&mut self, path: &[Segment], message: impl Into<String>) {
        self.list.push(Problem {
            path: path_string(path),
            location: self.locator.locate(path),
            message: message.into(),
        });
    }

    /// Records the error of `result` under `path` and passes the value on.
    /// The error's Display text is the problem's message.
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        path: &[Segment],
        result: Result<T, E>,
    ) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.add(path, e.to_string());
                None
            }
        }
    }
}
