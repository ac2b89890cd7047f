//! Code from a forge over ssh with a deploy key: the real `cutover` against
//! OpenSSH's sshd with git-shell as the forced command (as forges run it),
//! through the system's ssh client. Key types, known_hosts forms (plain,
//! hashed, `[host]:port`, the default in HOME), both URL spellings, host
//! keys that are unknown or changed (refused before anything is sent),
//! refused keys, what the ssh child is given, and config errors.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::fixture::forge::SshForge;
use crate::fixture::prelude::*;
use crate::source::forges::Site;

/// `[source]` keys for a deploy key and a known_hosts file.
fn key_keys(key: &Path, known_hosts: &Path) -> String {
    format!(
        "ssh_key = \"{}\"\nknown_hosts = \"{}\"",
        key.display(),
        known_hosts.display()
    )
}

#[test]
fn deploy_keys_of_both_types_and_both_known_hosts_forms_deploy() {
    let site = Site::new();
    let forge = SshForge::start(site.dir.path());
    let bare = forge.publish(&site.repo.work, "app.git");
    let c = site.start(
        &forge.url("app.git"),
        &format!(
            "{}\npoll = \"300ms\"",
            key_keys(forge.ed25519_key(), forge.known_hosts())
        ),
        "",
        &[],
    );
    site.wait_version(&c, "v1");
    site.release_to(&bare, "v2");
    site.wait_version(&c, "v2");
    drop(c);

    let _ = std::fs::remove_dir_all(&site.root);
    let c = site.start(
        &forge.url("app.git"),
        &key_keys(forge.rsa_key(), forge.known_hosts_hashed()),
        "",
        &[],
    );
    site.wait_version(&c, "v2");
    let log = forge.log();
    assert!(log.contains("Accepted publickey"), "{log}");
}

/// `git@host:org/app.git`, with the port from `~/.ssh/config` in HOME, and
/// known_hosts from its default place, `~/.ssh/known_hosts`.
#[test]
fn scp_like_urls_and_the_default_known_hosts_in_home_work() {
    let site = Site::new();
    let forge = SshForge::start(site.dir.path());
    forge.publish(&site.repo.work, "app.git");
    let home = site.dir.join("home");
    let url = forge.scp_like_url(&home, "app.git");
    forge.install_in_home(&home);
    assert!(!url.contains("://"), "{url}");
    let c = site.start(
        &url,
        &format!("ssh_key = \"{}\"", forge.ed25519_key().display()),
        "",
        &[("HOME", home.to_str().unwrap())],
    );
    site.wait_version(&c, "v1");
}

#[test]
fn an_unknown_host_key_is_refused_before_anything_is_sent_and_named() {
    let site = Site::new();
    let forge = SshForge::start(site.dir.path());
    forge.publish(&site.repo.work, "app.git");
    // The server's key, but listed for another port: this host is unknown.
    let other = site.dir.write(
        "known_hosts_other",
        &format!("[127.0.0.1]:1 {}\n", forge.host_key_pub.trim()),
    );
    let c = site.start(
        &forge.url("app.git"),
        &key_keys(forge.ed25519_key(), &other),
        "",
        &[],
    );
    let src = site.wait_error(&c, "unknown host key");
    let error = src["last_error"].as_str().unwrap();
    assert!(
        error.contains(&format!("[127.0.0.1]:{}", forge.port))
            && error.contains(&forge.fingerprint()),
        "names the host and the fingerprint: {error}"
    );
    assert!(src["current"].is_null(), "{src}");
    assert!(
        !forge.log().contains("publickey"),
        "the key was offered to an unverified server:\n{}",
        forge.log()
    );
}

#[test]
fn a_changed_host_key_is_refused_and_named() {
    let site = Site::new();
    let forge = SshForge::start(site.dir.path());
    forge.publish(&site.repo.work, "app.git");
    let c = site.start(
        &forge.url("app.git"),
        &key_keys(forge.ed25519_key(), forge.known_hosts_wrong()),
        "",
        &[],
    );
    let src = site.wait_error(&c, "the host key changed");
    let error = src["last_error"].as_str().unwrap();
    assert!(error.contains(&forge.fingerprint()), "{error}");
    assert!(!forge.log().contains("publickey"), "{}", forge.log());
}

#[test]
fn a_refused_key_and_a_missing_repository_are_named() {
    let site = Site::new();
    let forge = SshForge::start(site.dir.path());
    forge.publish(&site.repo.work, "app.git");
    let c = site.start(
        &forge.url("app.git"),
        &key_keys(forge.unauthorized_key(), forge.known_hosts()),
        "",
        &[],
    );
    let src = site.wait_error(&c, "the server refused the deploy key");
    assert!(src["current"].is_null(), "{src}");
    drop(c);
    let c = site.start(
        &forge.url("nothing-here.git"),
        &key_keys(forge.ed25519_key(), forge.known_hosts()),
        "",
        &[],
    );
    site.wait_error(&c, "no repository at");
}

/// With `insecure_ignore_host_key` and no known_hosts anywhere, the server's
/// key is taken as it comes (ssh only; https is always verified).
#[test]
fn insecure_ignore_host_key_takes_any_host_key() {
    let site = Site::new();
    let forge = SshForge::start(site.dir.path());
    forge.publish(&site.repo.work, "app.git");
    let empty_home = site.dir.join("empty-home");
    std::fs::create_dir_all(&empty_home).unwrap();
    let c = site.start(
        &forge.url("app.git"),
        &format!(
            "ssh_key = \"{}\"\ninsecure_ignore_host_key = true",
            forge.ed25519_key().display()
        ),
        "",
        &[("HOME", empty_home.to_str().unwrap())],
    );
    site.wait_version(&c, "v1");
}

/// The ssh child gets PATH and HOME, the key as a path: never the token,
/// a proxy's credentials or the key's content, in its argv or environment.
#[test]
fn the_ssh_client_is_given_no_secret() {
    let site = Site::new();
    let forge = SshForge::start(site.dir.path());
    forge.publish(&site.repo.work, "app.git");
    let bin = site.dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let record = site.dir.join("ssh-calls");
    let wrapper = bin.join("ssh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n{{ echo ARGV \"$@\"; env | sed 's/^/ENV /'; }} >> {}\nexec /usr/bin/ssh \"$@\"\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let token = "ghp_token_never_for_ssh_0123456789";
    let c = site.start(
        &forge.url("app.git"),
        &format!(
            "{}\ntoken_env = \"FORGE_TOKEN\"",
            key_keys(forge.ed25519_key(), forge.known_hosts())
        ),
        "",
        &[
            ("PATH", &path),
            ("FORGE_TOKEN", token),
            ("HTTPS_PROXY", "http://user:proxy-password-xyz@127.0.0.1:9"),
        ],
    );
    site.wait_version(&c, "v1");
    let calls = std::fs::read_to_string(&record).unwrap();
    let key = std::fs::read_to_string(forge.ed25519_key()).unwrap();
    let key_body = key.lines().nth(1).unwrap();
    for secret in [token, "proxy-password-xyz", key_body] {
        assert!(
            !calls.contains(secret),
            "the ssh child got a secret:\n{calls}"
        );
    }
    let names: Vec<&str> = calls
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| !["PWD", "SHLVL", "_"].contains(k))
        .collect();
    assert!(
        names.iter().all(|n| *n == "PATH" || *n == "HOME"),
        "{names:?}"
    );
}

/// Every problem of a forge config is named by its key, all at once.
#[test]
fn bad_forge_settings_are_config_errors_naming_the_key() {
    let site = Site::new();
    let forge = SshForge::start(site.dir.path());
    let public = site
        .dir
        .write("deploy.pub", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA x\n");
    let bad_hosts = site.dir.write("known_hosts", "127.0.0.1 ssh-ed25519\n");
    let toml = ConfigToml::deploying(
        site.port,
        &forge.url("app.git"),
        &site.root,
        &format!(
            "{}\nca_file = \"/nonexistent/ca.pem\"",
            key_keys(&public, &bad_hosts)
        ),
    )
    .to_string();
    let (code, err) = check_config(&site.dir, &toml);
    assert_ne!(code, 0, "accepted:\n{toml}");
    for words in [
        "source.ssh_key",
        "is a public key",
        "source.known_hosts",
        "line 1: no key after the key type",
        "source.ca_file",
        "/nonexistent/ca.pem",
    ] {
        assert!(err.contains(words), "`{words}` missing:\n{err}");
    }

    let open = site.dir.join("open_key");
    std::fs::copy(forge.ed25519_key(), &open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let not_pem = site.dir.write("ca.pem", "hello\n");
    let toml = ConfigToml::deploying(
        site.port,
        "ftp://git.example/app.git",
        &site.root,
        &format!(
            "ssh_key = \"{}\"\nca_file = \"{}\"",
            open.display(),
            not_pem.display()
        ),
    )
    .to_string();
    let (code, err) = check_config(&site.dir, &toml);
    assert_ne!(code, 0, "accepted:\n{toml}");
    for words in [
        "unsupported URL scheme `ftp://`",
        "readable by other users",
        "no certificate",
    ] {
        assert!(err.contains(words), "`{words}` missing:\n{err}");
    }
}
