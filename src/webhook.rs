//! Git push webhooks: proving a delivery came from the forge, then reading
//! which ref moved and to what.
//!
//! GitHub and Gitea (and Gogs and Forgejo, which share Gitea's format) sign
//! the body with HMAC-SHA256; GitLab sends the shared secret itself. Either
//! way the check happens before the body is parsed, so nothing an
//! unauthenticated sender writes reaches serde. This module knows nothing of
//! HTTP: the server hands over headers and body and maps the result to a
//! status (`NotAPush` is a polite 202, signature errors a 401).

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// One webhook request as received. Header names may be in any case.
#[derive(Debug, Clone)]
pub struct Delivery<'a> {
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
}

impl Delivery<'_> {
    fn header(&self, names: &[&str]) -> Option<&str> {
        header(&self.headers, names)
    }
}

/// The value of the first of `names` present, compared case-insensitively.
fn header<'h>(headers: &'h [(String, String)], names: &[&str]) -> Option<&'h str> {
    let value_of = |name: &&str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name));
    names
        .iter()
        .find_map(value_of)
        .map(|(_, value)| value.as_str())
}

/// Which forge sent the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    GitHub,
    GitLab,
    /// Also Gogs and Forgejo.
    Gitea,
}

impl fmt::Display for Forge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A verified push: `git_ref` moved to `after`, or was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub forge: Forge,
    /// Full ref name, e.g. "refs/heads/main" or "refs/tags/v1.2".
    pub git_ref: String,
    /// The new commit, lowercase hex; `None` when the ref was deleted.
    pub after: Option<String>,
    pub deleted: bool,
}

/// Why a delivery was refused. No message contains the secret or the
/// signature received, so all are safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "not a webhook from a known forge: no GitHub, Gitea, Gogs, Forgejo or GitLab event header"
    )]
    UnknownForge,
    #[error("webhook carries no signature or token, but a secret is configured")]
    MissingSignature,
    #[error("webhook signature or token does not match the configured secret")]
    BadSignature,
    #[error("webhook event `{event}` is not a push; ignored")]
    NotAPush { event: String },
    #[error("malformed push payload: {0}")]
    Malformed(String),
}

// Gitea's own headers are looked for first: it also sends X-GitHub-Event
// (and, recently, X-Hub-Signature-256) for compatibility.
const GITEA_EVENT: &[&str] = &["x-gitea-event", "x-forgejo-event", "x-gogs-event"];
const GITEA_SIGNATURE: &[&str] = &[
    "x-gitea-signature",
    "x-forgejo-signature",
    "x-gogs-signature",
];

/// Checks the delivery against `secret`, then reads the push from it.
///
/// An empty `secret` means none is configured and nothing is checked: anyone
/// who can reach the endpoint can then trigger a deploy. Whether that is
/// allowed is the caller's decision, not this module's.
pub fn verify_and_parse(delivery: &Delivery, secret: &[u8]) -> Result<Push, WebhookError> {
    let (forge, event) = identify(&delivery.headers)?;
    if !secret.is_empty() {
        verify(forge, delivery, secret)?;
    }
    // Checked only after the signature, so a stranger cannot tell a ping
    // (202) from a refusal (401) and learns nothing about the hook.
    let is_push = match forge {
        Forge::GitHub | Forge::Gitea => event == "push",
        Forge::GitLab => event == "Push Hook" || event == "Tag Push Hook",
    };
    if !is_push {
        return Err(WebhookError::NotAPush {
            event: event.to_owned(),
        });
    }
    parse_push(forge, delivery.body)
}

/// The checks that need only the headers: a known forge and, when a secret
/// is configured, the header that carries its signature or token. The server
/// runs them before reading the body, so a sender without credentials is
/// refused without making cutover buffer (up to megabytes of) body.
/// `verify_and_parse` repeats them; this only answers sooner.
pub fn check_headers(headers: &[(String, String)], secret: &[u8]) -> Result<Forge, WebhookError> {
    let (forge, _) = identify(headers)?;
    if !secret.is_empty() && header(headers, signature_header(forge)).is_none() {
        return Err(WebhookError::MissingSignature);
    }
    Ok(forge)
}

/// The forge and event named by the headers.
fn identify(headers: &[(String, String)]) -> Result<(Forge, &str), WebhookError> {
    if let Some(event) = header(headers, GITEA_EVENT) {
        Ok((Forge::Gitea, event))
    } else if let Some(event) = header(headers, &["x-github-event"]) {
        Ok((Forge::GitHub, event))
    } else if let Some(event) = header(headers, &["x-gitlab-event"]) {
        Ok((Forge::GitLab, event))
    } else {
        Err(WebhookError::UnknownForge)
    }
}

fn signature_header(forge: Forge) -> &'static [&'static str] {
    match forge {
        Forge::GitHub => &["x-hub-signature-256"],
        Forge::Gitea => GITEA_SIGNATURE,
        Forge::GitLab => &["x-gitlab-token"],
    }
}

fn verify(forge: Forge, delivery: &Delivery, secret: &[u8]) -> Result<(), WebhookError> {
    let value = delivery
        .header(signature_header(forge))
        .ok_or(WebhookError::MissingSignature)?;
    let hex_mac = match forge {
        // No prefix is a bad signature, not a missing one: the sender did
        // sign, just not in the form GitHub uses.
        Forge::GitHub => value
            .trim()
            .strip_prefix("sha256=")
            .ok_or(WebhookError::BadSignature)?,
        Forge::Gitea => value.trim(),
        Forge::GitLab if token_matches(secret, value.as_bytes()) => return Ok(()),
        Forge::GitLab => return Err(WebhookError::BadSignature),
    };
    // Decoding the received hex may take variable time, but that is the
    // sender's own value; only the comparison with ours must not.
    let received = hex::decode(hex_mac).map_err(|_| WebhookError::BadSignature)?;
    keyed(secret)
        .chain_update(delivery.body)
        .verify_slice(&received)
        .map_err(|_| WebhookError::BadSignature)
}

/// `sha256=<hex HMAC-SHA256 of body under secret>`: the form GitHub signs
/// deliveries with, and cutover its own `[redeploy] webhook` requests.
pub fn sign_sha256(secret: &[u8], body: &[u8]) -> String {
    let mac = keyed(secret).chain_update(body).finalize().into_bytes();
    format!("sha256={}", hex::encode(mac))
}

fn keyed(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length")
}

/// GitLab sends the secret itself. `==` stops at the first differing byte,
/// so response times would tell an attacker how much of a guess is right and
/// the token could be recovered byte by byte. Instead both sides are MACed
/// under the secret and the tags compared with `verify_slice`, which is
/// constant time; the fixed-size tags also hide the secret's length.
fn token_matches(secret: &[u8], received: &[u8]) -> bool {
    let expected = keyed(secret).chain_update(secret).finalize().into_bytes();
    keyed(secret)
        .chain_update(received)
        .verify_slice(&expected)
        .is_ok()
}

/// The few fields needed from a push payload; its hundreds of other keys
/// are skipped.
#[derive(Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    after: Option<String>,
    /// GitHub and Gitea only; GitLab marks a deletion by an all-zero `after`.
    #[serde(default)]
    deleted: bool,
}

fn parse_push(forge: Forge, body: &[u8]) -> Result<Push, WebhookError> {
    let payload: PushPayload =
        serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
    // Values are quoted with {:?} so a payload cannot forge log lines.
    if !payload.git_ref.starts_with("refs/") {
        let message = format!("`ref` {:?} is not a full ref name", payload.git_ref);
        return Err(WebhookError::Malformed(message));
    }
    let after = match payload.after {
        // 40 hex digits in SHA-1 repositories, 64 in SHA-256 ones.
        Some(sha) if matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(sha.to_ascii_lowercase())
        }
        Some(sha) => {
            return Err(WebhookError::Malformed(format!(
                "`after` {sha:?} is not a commit id"
            )));
        }
        None => None,
    };
    let zeroed = after
        .as_deref()
        .is_some_and(|sha| sha.bytes().all(|b| b == b'0'));
    let deleted = payload.deleted || zeroed;
    Ok(Push {
        forge,
        git_ref: payload.git_ref,
        after: if deleted { None } else { after },
        deleted,
    })
}

/// Does a push to `pushed` (a full ref) concern the `configured` ref?
///
/// A full name ("refs/heads/main") must match exactly. A short one is tried
/// the way git would: "main" matches refs/heads/main and refs/tags/main,
/// "tags/v1.2" matches refs/tags/v1.2. If a branch and a tag share a short
/// name both count; the fetch that follows resolves which one is deployed.
pub fn ref_matches(configured: &str, pushed: &str) -> bool {
    match (
        configured.starts_with("refs/"),
        pushed.strip_prefix("refs/"),
    ) {
        _ if configured.is_empty() => false,
        (false, Some(rest)) => {
            rest == configured
                || rest.strip_prefix("heads/") == Some(configured)
                || rest.strip_prefix("tags/") == Some(configured)
        }
        _ => configured == pushed,
    }
}

#[cfg(test)]
mod tests {
    use super::WebhookError::*;
    use super::*;

    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const TOKEN: &str = "It's a Secret to Everybody";
    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn check(headers: &[(&str, &str)], body: &[u8], secret: &[u8]) -> Result<Push, WebhookError> {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        verify_and_parse(&Delivery { headers, body }, secret)
    }

    fn mac_hex(secret: &[u8], body: &[u8]) -> String {
        hex::encode(keyed(secret).chain_update(body).finalize().into_bytes())
    }

    fn github(event: &str, body: &[u8], signature: &str) -> Result<Push, WebhookError> {
        let headers = [
            ("X-GitHub-Event", event),
            ("x-hub-signature-256", signature),
        ];
        check(&headers, body, SECRET)
    }

    fn signed(body: &[u8]) -> String {
        format!("sha256={}", mac_hex(SECRET, body))
    }

    fn gitlab(event: &str, body: &[u8], token: &str) -> Result<Push, WebhookError> {
        let headers = [("X-Gitlab-Event", event), ("X-Gitlab-Token", token)];
        check(&headers, body, SECRET)
    }

    fn body(git_ref: &str, after: &str, deleted: bool) -> Vec<u8> {
        let json = serde_json::json!({"ref": git_ref, "before": SHA, "after": after,
            "deleted": deleted, "repository": {"full_name": "acme/app"}});
        json.to_string().into_bytes()
    }

    #[test]
    fn github_signatures() {
        let main = body("refs/heads/main", SHA, false);
        let push = github("push", &main, &signed(&main)).unwrap();
        let git_ref = "refs/heads/main".to_owned();
        let after = Some(SHA.to_owned());
        assert_eq!(
            push,
            Push {
                forge: Forge::GitHub,
                git_ref,
                after,
                deleted: false
            }
        );

        let wrong_secret = format!("sha256={}", mac_hex(b"not the secret", &main));
        let tampered = body("refs/heads/evil", SHA, false);
        assert_eq!(github("push", &main, &wrong_secret), Err(BadSignature));
        assert_eq!(github("push", &tampered, &signed(&main)), Err(BadSignature));
        assert_eq!(
            github("push", &main, &mac_hex(SECRET, &main)),
            Err(BadSignature)
        );
        assert_eq!(github("push", &main, "sha256=zz"), Err(BadSignature));
    }

    #[test]
    fn missing_signature_is_refused_only_when_a_secret_is_set() {
        let main = body("refs/heads/main", SHA, false);
        // The legacy SHA-1 header does not count.
        let headers = [("X-GitHub-Event", "push"), ("X-Hub-Signature", "sha1=00")];
        assert_eq!(check(&headers, &main, SECRET), Err(MissingSignature));
        assert!(check(&headers, &main, b"").is_ok());
        let headers = [("X-Gitlab-Event", "Push Hook")];
        assert_eq!(check(&headers, &main, SECRET), Err(MissingSignature));
        let headers = [("Content-Type", "application/json")];
        assert_eq!(check(&headers, &main, SECRET), Err(UnknownForge));
    }

    #[test]
    fn headers_alone_tell_a_missing_signature() {
        let owned = |h: &[(&str, &str)]| -> Vec<(String, String)> {
            h.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let github = owned(&[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", "x")]);
        assert_eq!(check_headers(&github, SECRET), Ok(Forge::GitHub));
        // Gitea also sends X-Hub-Signature-256, but its own header is the one checked.
        let gitea = owned(&[("X-Gitea-Event", "push"), ("X-Hub-Signature-256", "x")]);
        assert_eq!(check_headers(&gitea, SECRET), Err(MissingSignature));
        assert_eq!(check_headers(&gitea, b""), Ok(Forge::Gitea));
        let forgejo = owned(&[("X-Forgejo-Event", "push"), ("X-Forgejo-Signature", "x")]);
        assert_eq!(check_headers(&forgejo, SECRET), Ok(Forge::Gitea));
        let gitlab = owned(&[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "t")]);
        assert_eq!(check_headers(&gitlab, SECRET), Ok(Forge::GitLab));
        let unsigned = owned(&[("X-Gitlab-Event", "Push Hook")]);
        assert_eq!(check_headers(&unsigned, SECRET), Err(MissingSignature));
        assert_eq!(check_headers(&owned(&[]), SECRET), Err(UnknownForge));
    }

    #[test]
    fn ping_is_not_a_push_but_is_still_verified() {
        let ping = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
        let event = "ping".to_owned();
        assert_eq!(github("ping", ping, &signed(ping)), Err(NotAPush { event }));
        assert_eq!(github("ping", ping, "sha256=00"), Err(BadSignature));
    }

    #[test]
    fn valid_signature_on_malformed_body_is_malformed() {
        // GitHub's documented example vector, on a body that is not JSON.
        let mac = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let hello = github("push", b"Hello, World!", &format!("sha256={mac}"));
        assert!(matches!(hello, Err(Malformed(_))), "{hello:?}");
        let (bad_after, short_ref) = (
            body("refs/heads/main", "zz", false),
            body("main", SHA, false),
        );
        for payload in [bad_after, short_ref] {
            let result = github("push", &payload, &signed(&payload));
            assert!(matches!(result, Err(Malformed(_))), "{result:?}");
        }
    }

    #[test]
    fn gitea_gogs_and_forgejo_signatures() {
        let main = body("refs/heads/main", SHA, false);
        let mac = mac_hex(SECRET, &main);
        for forge in ["Gitea", "Gogs", "Forgejo"] {
            let (event, signature) = (format!("X-{forge}-Event"), format!("X-{forge}-Signature"));
            // Gitea also sends X-GitHub-Event; its own header must win.
            let headers = [
                ("X-GitHub-Event", "push"),
                (&event, "push"),
                (&signature, &mac),
            ];
            let push = check(&headers, &main, SECRET).unwrap();
            assert_eq!(
                (push.forge, push.after.as_deref()),
                (Forge::Gitea, Some(SHA))
            );
        }
        let forged = mac_hex(b"attacker", &main);
        let headers = [
            ("X-Gitea-Event", "push"),
            ("X-Gitea-Signature", forged.as_str()),
        ];
        let refused = check(&headers, &main, SECRET).unwrap_err();
        let message = refused.to_string();
        assert_eq!(refused, BadSignature);
        assert!(
            !message.contains(&forged) && !message.contains(TOKEN),
            "{message}"
        );
    }

    #[test]
    fn gitlab_token_must_match_in_full() {
        let main = body("refs/heads/main", SHA, false);
        assert_eq!(
            gitlab("Push Hook", &main, TOKEN).unwrap().forge,
            Forge::GitLab
        );
        for wrong in [&TOKEN[1..], &format!("{TOKEN}!"), ""] {
            assert_eq!(gitlab("Push Hook", &main, wrong), Err(BadSignature));
        }
    }

    #[test]
    fn branch_deletions_and_tag_pushes() {
        let zeros = "0".repeat(40);
        let deletion = body("refs/heads/old", &zeros, true);
        let gone = github("push", &deletion, &signed(&deletion));
        assert_eq!(gone.map(|p| (p.deleted, p.after)), Ok((true, None)));
        // GitLab sends no `deleted`, only zeros.
        let deletion = format!(r#"{{"ref":"refs/heads/old","after":"{zeros}"}}"#);
        let gone = gitlab("Push Hook", deletion.as_bytes(), TOKEN);
        assert_eq!(gone.map(|p| (p.deleted, p.after)), Ok((true, None)));
        let tag = gitlab("Tag Push Hook", &body("refs/tags/v1.2", SHA, false), TOKEN).unwrap();
        assert_eq!(
            (tag.git_ref.as_str(), tag.after.as_deref()),
            ("refs/tags/v1.2", Some(SHA))
        );
    }

    #[test]
    fn refs_match_by_full_or_short_name() {
        for (configured, pushed, expected) in [
            ("main", "refs/heads/main", true),
            ("refs/heads/main", "refs/heads/main", true),
            ("heads/main", "refs/heads/main", true),
            ("v1.2", "refs/tags/v1.2", true),
            ("refs/tags/v1.2", "refs/tags/v1.2", true),
            ("main", "refs/heads/mainline", false),
            ("main", "refs/heads/feature/main", false),
            ("refs/heads/main", "refs/tags/main", false),
            ("v1.2", "refs/tags/v1.20", false),
            ("", "refs/heads/main", false),
        ] {
            assert_eq!(
                ref_matches(configured, pushed),
                expected,
                "{configured} vs {pushed}"
            );
        }
    }
}
