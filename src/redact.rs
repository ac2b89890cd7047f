//! Secrets out of everything shown: URLs with their userinfo, query values
//! and fragments cut (`redact_url`), and free text (an error, a response
//! body) cleaned of a URL's secrets and of tokens (`UrlRedactor`).
//!
//! Its own module because every part that talks to a URL a user wrote needs
//! it: the git transports, the config's messages, the redeploy webhook.

/// What replaces a secret in anything shown.
const REDACTED: &str = "***";
/// A user name or query value at least this long is taken for a token and
/// also removed from free text; shorter ones ("git", "deploy", "page=2") are
/// removed only where the URL itself appears, so that messages stay readable.
const TOKEN_LIKE: usize = 8;

/// `scheme://[userinfo@]host[:port][/path][?query][#fragment]`, cut at its
/// parts. `None` for what is not such a URL: a path, `git@host:org/app.git`.
struct UrlParts<'a> {
    scheme: &'a str,
    userinfo: Option<&'a str>,
    host: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    fragment: Option<&'a str>,
}

fn url_parts(url: &str) -> Option<UrlParts<'_>> {
    let (scheme, rest) = url.split_once("://")?;
    let is_scheme = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !is_scheme {
        return None;
    }
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    Some(UrlParts {
        scheme,
        userinfo,
        host,
        path,
        query,
        fragment,
    })
}

/// `https://user:pa%40ss@host/x` -> (Some("user"), Some("pa@ss")): the
/// credentials a URL carries, percent-decoded as a client sends them.
pub fn url_userinfo(url: &str) -> (Option<String>, Option<String>) {
    let Some(userinfo) = url_parts(url).and_then(|p| p.userinfo) else {
        return (None, None);
    };
    let decoded = |part: &str| percent_decoded(part).unwrap_or_else(|| part.to_string());
    match userinfo.split_once(':') {
        Some((u, p)) => (Some(decoded(u)), Some(decoded(p))),
        None => (Some(decoded(userinfo)), None),
    }
}

/// The URL without its `userinfo@`, to connect to once the credentials
/// are taken out of it.
pub fn without_userinfo(url: &str) -> String {
    match url_parts(url) {
        Some(p) if p.userinfo.is_some() => {
            let at = url.find("://").map_or(0, |i| i + 3);
            let host_at = at + p.userinfo.map_or(0, |u| u.len() + 1);
            format!("{}{}", &url[..at], &url[host_at..])
        }
        _ => url.to_string(),
    }
}

/// A path segment that is a credential, not a name: webhook URLs carry
/// their token in the path (Slack's `/services/T…/B…/<24 characters>`,
/// Discord's `/api/webhooks/<id>/<68 characters>`). Long, of URL-safe
/// token characters, and mixing digits with upper- and lower-case letters
/// (or 32 hex digits and more), which names of repositories, organisations
/// and endpoints do not.
fn is_token_segment(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let token_chars = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if !token_chars {
        return false;
    }
    let has = |f: fn(&u8) -> bool| bytes.iter().any(f);
    let mixed = bytes.len() >= 20
        && has(u8::is_ascii_digit)
        && has(u8::is_ascii_uppercase)
        && has(u8::is_ascii_lowercase);
    let hex = bytes.len() >= 32 && bytes.iter().all(u8::is_ascii_hexdigit);
    mixed || hex
}

/// The URL as it may be shown: the whole userinfo (a token may be the user
/// name: `https://TOKEN@host`, `https://TOKEN:x-oauth-basic@host`), every
/// path segment that is a token ([`is_token_segment`]), every query value
/// and the fragment become `***`; scheme, host, port and the rest of the
/// path stay. Anything that is not a `scheme://` URL is returned as it is.
pub fn redact_url(url: &str) -> String {
    let Some(p) = url_parts(url) else {
        return url.to_string();
    };
    let mut out = format!("{}://", p.scheme);
    if p.userinfo.is_some() {
        out.push_str(REDACTED);
        out.push('@');
    }
    out.push_str(p.host);
    let path: Vec<&str> = p
        .path
        .split('/')
        .map(|segment| {
            if is_token_segment(segment) {
                REDACTED
            } else {
                segment
            }
        })
        .collect();
    out.push_str(&path.join("/"));
    if let Some(query) = p.query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, "")) => format!("{key}="),
                Some((key, _)) => format!("{key}={REDACTED}"),
                // `?TOKEN`: a bare value is a value too.
                None if pair.is_empty() => String::new(),
                None => REDACTED.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    if let Some(fragment) = p.fragment {
        out.push('#');
        if !fragment.is_empty() {
            out.push_str(REDACTED);
        }
    }
    out
}

/// Removes a URL's secrets from free text (an error message, a response
/// body): the URL itself becomes its [`redact_url`] form, and its userinfo,
/// password, token-like user name, query values and fragment (also
/// percent-decoded) become `***` wherever else they appear.
#[derive(Clone)]
pub struct UrlRedactor {
    shown: String,
    /// (what, by what), longest first so that no secret is left half replaced.
    replacements: Vec<(String, String)>,
}

impl UrlRedactor {
    pub fn new(url: &str) -> UrlRedactor {
        let shown = redact_url(url);
        let mut r = UrlRedactor {
            shown: shown.clone(),
            replacements: Vec::new(),
        };
        r.add(url, &shown);
        let Some(p) = url_parts(url) else {
            return r;
        };
        if let Some(info) = p.userinfo {
            // The URL may appear in another form (another path, a trailing
            // slash): its `userinfo@` still goes.
            r.add(&format!("{info}@"), &format!("{REDACTED}@"));
            let (user, password) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            if let Some(password) = password {
                r.add_secret(password);
            }
            if user.len() >= TOKEN_LIKE {
                r.add_secret(user);
            }
        }
        for segment in p.path.split('/').filter(|s| is_token_segment(s)) {
            r.add_secret(segment);
        }
        let values = p
            .query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .map(|pair| pair.split_once('=').map_or(pair, |(_, v)| v))
            .chain(p.fragment);
        for value in values {
            if value.len() >= TOKEN_LIKE {
                r.add_secret(value);
            }
        }
        r
    }

    /// The URL as it may be shown.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Also removes `secret` (a token from `token_env`, say), as written and
    /// percent-decoded.
    pub fn add_secret(&mut self, secret: &str) {
        self.add(secret, REDACTED);
        if let Some(decoded) = percent_decoded(secret) {
            self.add(&decoded, REDACTED);
        }
    }

    /// Also removes the secrets of another URL (a proxy's credentials).
    pub fn add_url(&mut self, url: &str) {
        for (what, by) in UrlRedactor::new(url).replacements {
            self.add(&what, &by);
        }
    }

    fn add(&mut self, what: &str, by: &str) {
        if what.is_empty() || what == by {
            return;
        }
        self.replacements.push((what.to_string(), by.to_string()));
        self.replacements
            .sort_by_key(|(what, _)| std::cmp::Reverse(what.len()));
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (what, by) in &self.replacements {
            if out.contains(what.as_str()) {
                out = out.replace(what.as_str(), by);
            }
        }
        out
    }
}

/// `a%2Fb` -> `a/b`; `None` when there is nothing to decode.
fn percent_decoded(text: &str) -> Option<String> {
    if !text.contains('%') {
        return None;
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().filter(|d| d != text)
}

/// Control characters (C0 with ESC, DEL, C1) and the bidirectional overrides
/// that reorder what a terminal shows, as Rust-style escapes: `\x1b`, `\n`,
/// `\u{202e}`. Everything else, including non-ASCII text, stays as it is.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let bidi = |c: char| matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(|c| c.is_control() || bidi(c)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ =
                    std::fmt::Write::write_fmt(&mut out, format_args!("\\x{:02x}", u32::from(c)));
            }
            c if bidi(c) => {
                let _ =
                    std::fmt::Write::write_fmt(&mut out, format_args!("\\u{{{:x}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_out_of_the_url_decoded() {
        let url = "https://x-access-token:gh%40p_1@git.example:8443/org/app.git";
        assert_eq!(
            url_userinfo(url),
            (Some("x-access-token".into()), Some("gh@p_1".into()))
        );
        assert_eq!(
            without_userinfo(url),
            "https://git.example:8443/org/app.git"
        );
        assert_eq!(without_userinfo("https://h/x"), "https://h/x");
    }

    #[test]
    fn userinfo_never_shows() {
        let cases = [
            // A token as the user name, with and without a dummy password.
            (
                "https://ghp_0123456789abcdef@github.com/org/app.git",
                "https://***@github.com/org/app.git",
            ),
            (
                "https://ghp_0123456789abcdef:x-oauth-basic@github.com/org/app.git",
                "https://***@github.com/org/app.git",
            ),
            (
                "https://deploy:s3cret@git.example.com:8443/org/app.git",
                "https://***@git.example.com:8443/org/app.git",
            ),
            (
                "ssh://git@git.example.com:2222/org/app.git",
                "ssh://***@git.example.com:2222/org/app.git",
            ),
            // scp-like ssh and paths are not URLs: nothing secret in them.
            ("git@github.com:org/app.git", "git@github.com:org/app.git"),
            ("/srv/repo.git", "/srv/repo.git"),
            ("file:///srv/repo.git", "file:///srv/repo.git"),
            (
                "https://git.example.com/org/app.git",
                "https://git.example.com/org/app.git",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn query_values_and_fragments_never_show() {
        let cases = [
            // Every query value, whatever its key; empty ones stay empty.
            (
                "https://ci.example.com/hook?token=abc&x=1&sig=&signature=zz",
                "https://ci.example.com/hook?token=***&x=***&sig=&signature=***",
            ),
            (
                "http://ci.example.com/hook?SECRETVALUE",
                "http://ci.example.com/hook?***",
            ),
            (
                "https://ci.example.com/hook?access_token=t#frag",
                "https://ci.example.com/hook?access_token=***#***",
            ),
            (
                "https://ci.example.com/hook#",
                "https://ci.example.com/hook#",
            ),
            (
                "https://ci.example.com?key=k",
                "https://ci.example.com?key=***",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn tokens_in_webhook_paths_never_show() {
        let path_cases = [
            (
                "https://hooks.slack.com/services/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",
                "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/***",
            ),
            (
                "https://discord.com/api/webhooks/112233445566778899/Zx9_Yw8-Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe9Dc8Ba7zY6xW5vU4tS3rQ2pO1nM0lK9jI8hG7f",
                "https://discord.com/api/webhooks/112233445566778899/***",
            ),
            (
                "https://ci.example.com/hooks/0123456789abcdef0123456789abcdef",
                "https://ci.example.com/hooks/***",
            ),
            // Names stay, long ones and ones with digits too.
            (
                "https://github.com/acme-corp/payment-service-2024-v2.git",
                "https://github.com/acme-corp/payment-service-2024-v2.git",
            ),
            (
                "https://gitlab.example.com/Group42/MyApp.git",
                "https://gitlab.example.com/Group42/MyApp.git",
            ),
        ];
        for (url, shown) in path_cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        let slack = "https://hooks.slack.com/services/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";
        let text = "POST failed: 404 for aB3dE6gH9jK2mN5pQ8sT1vW4 at https://hooks.slack.com/x";
        let redacted = UrlRedactor::new(slack).redact(text);
        assert!(!redacted.contains("aB3dE6gH9jK2mN5pQ8sT1vW4"), "{redacted}");
    }

    #[test]
    fn url_userinfo_splits_user_and_password() {
        assert_eq!(
            url_userinfo("https://tok@host/x"),
            (Some("tok".to_string()), None)
        );
        assert_eq!(
            url_userinfo("https://u:p@host?q=a@b"),
            (Some("u".to_string()), Some("p".to_string()))
        );
        assert_eq!(url_userinfo("git@host:org/app.git"), (None, None));
    }

    #[test]
    fn secrets_leave_free_text() {
        let url = "https://ghp_0123456789abcdef:x-oauth-basic@github.com/org/app.git";
        let r = UrlRedactor::new(url);
        let text = format!(
            "{url}: failed; retrying https://ghp_0123456789abcdef:x-oauth-basic@github.com/org/other \
             as ghp_0123456789abcdef"
        );
        let out = r.redact(&text);
        assert!(!out.contains("ghp_"), "{out}");
        assert!(!out.contains("x-oauth-basic"), "{out}");
        assert!(
            out.starts_with("https://***@github.com/org/app.git: failed"),
            "{out}"
        );
        assert!(out.contains("https://***@github.com/org/other"), "{out}");

        // Short, conventional user names stay readable outside the URL.
        let r = UrlRedactor::new("https://git@host/x.git");
        assert_eq!(
            r.redact("git says: https://git@host/x.git"),
            "git says: https://***@host/x.git"
        );

        let mut r = UrlRedactor::new("https://ci.example.com/hook?token=0123456789&page=2");
        r.add_secret("tok%2Fen-from-env");
        let out = r.redact(
            "bad token 0123456789 on page=2 (tok/en-from-env, tok%2Fen-from-env) \
             https://ci.example.com/hook?token=0123456789&page=2",
        );
        assert_eq!(
            out,
            "bad token *** on page=2 (***, ***) https://ci.example.com/hook?token=***&page=***"
        );
    }
}
