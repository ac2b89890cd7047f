//! A full git commit id, checked once where it enters cutover (the remote's
//! answer, the volume's `current`, the state file, a command's argument), so
//! the deploy pipeline never handles a string that merely looks like one.

use std::fmt;

use serde::{Deserialize, Serialize};

/// 40 lowercase hex digits (SHA-1) or 64 (SHA-256 repositories).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a full commit id (40 or 64 hex digits)")]
pub struct NotASha(pub String);

impl Sha {
    pub fn parse(text: &str) -> Result<Sha, NotASha> {
        let full = matches!(text.len(), 40 | 64)
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if full {
            Ok(Sha(text.to_string()))
        } else {
            Err(NotASha(text.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits, as logs and reports show it.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }

    pub fn oid(&self) -> git2::Oid {
        git2::Oid::from_str(&self.0).expect("a Sha is valid hex")
    }
}

impl From<git2::Oid> for Sha {
    fn from(oid: git2::Oid) -> Sha {
        Sha(oid.to_string())
    }
}

impl TryFrom<String> for Sha {
    type Error = NotASha;
    fn try_from(text: String) -> Result<Sha, NotASha> {
        Sha::parse(&text)
    }
}

impl From<Sha> for String {
    fn from(sha: Sha) -> String {
        sha.0
    }
}

impl fmt::Display for Sha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl AsRef<std::path::Path> for Sha {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl PartialEq<str> for Sha {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_lowercase_ids_pass() {
        let full = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(Sha::parse(full).unwrap().short(), "0123456789ab");
        assert!(Sha::parse(&full[..12]).is_err());
        assert!(Sha::parse(&full.to_uppercase()).is_err());
        assert!(Sha::parse("../../etc/passwd0123456789abcdef01234567").is_err());
        assert!(serde_json::from_str::<Sha>("\"nope\"").is_err());
    }
}
