//! Values every config section parses the same way: where a key sits (for
//! error messages), durations, scalars passed on as strings, and secrets
//! read from an environment variable or a file. One place, so a duration or
//! a secret means the same in `[source]`, `[redeploy]` and `[ready]`.

use std::time::Duration;

use super::Secret;
use super::problems::{Problems, Segment};

pub(super) fn key(k: &str) -> Segment {
    Segment::Key(k.to_string())
}

/// The path of key `k` inside the table at `path`.
pub(super) fn child(path: &[Segment], k: &str) -> Vec<Segment> {
    let mut p = path.to_vec();
    p.push(key(k));
    p
}

/// Parses "250ms", "10s", "2m", "1h 30m".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration `{text}` ({e}); write it like \"250ms\", \"10s\" or \"2m\"")
    })
}

/// A TOML string, number or boolean as the string a program would get
/// (env values, build args); tables and arrays are errors.
pub(super) fn scalar_string(value: toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "expected a string, number or boolean, found {}",
            other.type_str()
        )),
    }
}

/// Whether `name` can be an environment variable's name.
pub(super) fn env_name_ok(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && !name.contains('\0')
}

/// An `env = { KEY = value }` table (programs, `[hooks] env`) at `path`.
pub(super) fn env_table(
    path: &[Segment],
    table: std::collections::BTreeMap<String, toml::Value>,
    p: &mut Problems,
) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for (k, v) in table {
        let at = child(path, &k);
        if !env_name_ok(&k) {
            p.add(&at, "environment names must be non-empty without `=`");
            continue;
        }
        if let Some(value) = p.check(&at, scalar_string(v)) {
            env.push((k, value));
        }
    }
    env
}

/// Reads `<name>_env` or `<name>_file`; an empty or missing value is a problem.
pub(super) fn secret(
    path: &[Segment],
    name: &str,
    env: Option<String>,
    file: Option<String>,
    p: &mut Problems,
) -> Option<Secret> {
    match (env, file) {
        (Some(_), Some(_)) => {
            p.add(
                &child(path, &format!("{name}_env")),
                format!("set {name}_env or {name}_file, not both"),
            );
            None
        }
        (Some(var), None) => match std::env::var(&var) {
            Ok(v) if !v.trim().is_empty() => Some(Secret(v.trim().to_string())),
            _ => {
                p.add(
                    &child(path, &format!("{name}_env")),
                    format!("environment variable `{var}` is not set"),
                );
                None
            }
        },
        (None, Some(f)) => match std::fs::read_to_string(&f) {
            Ok(v) if !v.trim().is_empty() => Some(Secret(v.trim().to_string())),
            Ok(_) => {
                p.add(
                    &child(path, &format!("{name}_file")),
                    format!("`{f}` is empty"),
                );
                None
            }
            Err(e) => {
                p.add(
                    &child(path, &format!("{name}_file")),
                    format!("cannot read `{f}`: {e}"),
                );
                None
            }
        },
        (None, None) => None,
    }
}
