//! A check of a known_hosts file when the config loads, so that a typo or
//! a pasted half line is a config error naming the line, not an "unknown
//! host key" at the first fetch. OpenSSH itself does the matching, hashed
//! entries and `[host]:port` included; this only reads the format:
//! `[@marker] patterns keytype base64-key [comment]`.

use base64::Engine;

/// The key types OpenSSH writes into known_hosts.
const KEY_TYPES: [&str; 10] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-ed25519-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
];

/// How many entries `text` has; the error names the first bad line.
pub fn check(text: &str) -> Result<usize, String> {
    let mut entries = 0;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        check_line(line).map_err(|why| format!("line {}: {why}", i + 1))?;
        entries += 1;
    }
    if entries == 0 {
        return Err("has no host key entries (get them with ssh-keyscan)".into());
    }
    Ok(entries)
}

fn check_line(line: &str) -> Result<(), String> {
    let mut fields = line.split_whitespace().peekable();
    if fields
        .peek()
        .is_some_and(|f| *f == "@cert-authority" || *f == "@revoked")
    {
        fields.next();
    }
    let hosts = fields.next().ok_or("no host")?;
    if let Some(hashed) = hosts.strip_prefix("|1|") {
        let (salt, hash) = hashed
            .split_once('|')
            .ok_or("a hashed host needs |1|salt|hash")?;
        if decode(salt).is_none() || decode(hash).is_none() {
            return Err("the hashed host is not base64".into());
        }
    }
    let kind = fields
        .next()
        .ok_or("no key type after the host (expected e.g. `host ssh-ed25519 AAAA…`)")?;
    if !KEY_TYPES.contains(&kind) {
        return Err(format!("`{kind}` is not an ssh key type"));
    }
    let key = fields.next().ok_or("no key after the key type")?;
    let blob = decode(key).ok_or("the key is not base64")?;
    // The blob starts with its own type, length-prefixed: a key pasted
    // under another type's name is caught here.
    let named = blob
        .get(4..)
        .zip(blob.get(..4))
        .and_then(|(rest, len)| {
            let n = u32::from_be_bytes(len.try_into().ok()?) as usize;
            rest.get(..n)
        })
        .map(String::from_utf8_lossy);
    match named {
        Some(inner) if inner == kind => Ok(()),
        Some(inner) => Err(format!("the key is a `{inner}` key, not `{kind}`")),
        None => Err("the key is truncated".into()),
    }
}

fn decode(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn plain_hashed_and_port_entries_pass() {
        let text = format!(
            "# forge\n[127.0.0.1]:2222 ssh-ed25519 {ED25519}\n\
             |1|F1E1KeoE/eEWhi10WpGv4OdiO6Y=|3988QV0VE8wmZL7suNrYQLITLCg= ssh-ed25519 {ED25519} c\n\
             github.com,140.82.112.3 ssh-ed25519 {ED25519}\n"
        );
        assert_eq!(check(&text), Ok(3));
    }

    #[test]
    fn bad_lines_are_named() {
        let err = check(&format!("ok ssh-ed25519 {ED25519}\nhost ssh-ed25519\n")).unwrap_err();
        assert!(err.starts_with("line 2: no key"), "{err}");
        let err = check(&format!("host ssh-rsa {ED25519}\n")).unwrap_err();
        assert!(
            err.contains("is a `ssh-ed25519` key, not `ssh-rsa`"),
            "{err}"
        );
        assert!(
            check("host ssh-ed25519 !!!\n")
                .unwrap_err()
                .contains("base64")
        );
        assert!(check("# nothing\n").is_err());
        assert!(
            check("host nonsense AAAA\n")
                .unwrap_err()
                .contains("not an ssh key type")
        );
    }
}
