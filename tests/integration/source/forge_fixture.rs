//! The forge fixtures (tests/fixture/forge.rs) proven with the system's git
//! CLI as the client, so that a failing transport test of cutover's points
//! at cutover, not at a server that never worked.

use std::path::Path;
use std::process::Output;

use crate::fixture::forge::{Cert, HttpsForge, Pki, Proxy, SshForge};
use crate::fixture::git::Repo;
use crate::fixture::git::git_command;
use crate::fixture::prelude::TestDir;

/// Variables of the machine's that would change where git and ssh go.
const AMBIENT: [&str; 12] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "SSH_AUTH_SOCK",
    "GIT_SSL_CAINFO",
];

/// The system's git in `dir` (also its HOME, unless `env` names one), with
/// `env` and nothing of the machine's proxies, agent or CA settings.
fn git_client(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = git_command(dir, args);
    for var in AMBIENT {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run git")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_ok(out: &Output) -> String {
    assert!(out.status.success(), "git failed: {}", stderr(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn assert_fails(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "git succeeded but should not have");
    assert!(
        err.contains(needle),
        "git's stderr lacks {needle:?}:\n{err}"
    );
}

/// A work tree with one commit; its sha.
fn source(dir: &TestDir) -> (Repo, String) {
    let repo = Repo::new(dir.join("src"));
    let sha = repo.commit("first", &[("version", "1")]);
    (repo, sha)
}

fn ssh_command(key: &Path, known_hosts: &Path) -> String {
    format!(
        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} \
         -o StrictHostKeyChecking=yes -o BatchMode=yes",
        key.display(),
        known_hosts.display()
    )
}

#[test]
fn https_token_lists_refs_and_clones_shallow() {
    let dir = TestDir::new();
    let (repo, sha) = source(&dir);
    let forge = HttpsForge::start(dir.path(), Cert::Good);
    forge.publish(&repo.work, "app.git");
    let ca = forge.ca_file.to_str().unwrap();
    let url = forge.url_with_token("app.git");
    let env = [("GIT_SSL_CAINFO", ca)];

    let refs = assert_ok(&git_client(dir.path(), &env, &["ls-remote", &url]));
    assert!(refs.contains(&format!("{sha}\trefs/heads/main")), "{refs}");
    assert_ok(&git_client(
        dir.path(),
        &env,
        &["clone", "-q", "--depth", "1", &url, "clone"],
    ));
    assert_eq!(
        std::fs::read_to_string(dir.join("clone/version")).unwrap(),
        "1"
    );
    // partial clone: the forge honours filters as GitHub does
    let args = ["clone", "-q", "--filter=blob:none", &url, "partial"];
    assert_ok(&git_client(dir.path(), &env, &args));

    let log = forge.access_log();
    assert!(
        log.contains("\"POST /git/app.git/git-upload-pack HTTP/1.1\" 200"),
        "{log}"
    );
}

#[test]
fn https_wrong_or_missing_token_is_refused_with_401() {
    let dir = TestDir::new();
    let (repo, _) = source(&dir);
    let forge = HttpsForge::start(dir.path(), Cert::Good);
    forge.publish(&repo.work, "app.git");
    let env = [("GIT_SSL_CAINFO", forge.ca_file.to_str().unwrap())];

    let wrong = forge
        .url("app.git")
        .replace("https://", "https://x-access-token:nope@");
    let out = git_client(dir.path(), &env, &["ls-remote", &wrong]);
    assert_fails(&out, "Authentication failed");
    let out = git_client(dir.path(), &env, &["ls-remote", &forge.url("app.git")]);
    assert_fails(&out, "could not read Username");
    let log = forge.access_log();
    assert!(
        log.contains("\"GET /git/app.git/info/refs?service=git-upload-pack HTTP/1.1\" 401"),
        "{log}"
    );
    assert!(!log.contains("\" 200 "), "{log}");
}

#[test]
fn https_bad_certificates_fail_gits_tls_check() {
    let dir = TestDir::new();
    let (repo, _) = source(&dir);
    let pki = Pki::new(&dir.join("pki"));
    let ca = pki.ca_cert.to_str().unwrap();
    for cert in [Cert::WrongName, Cert::Expired, Cert::UntrustedCa] {
        let forge = HttpsForge::start_with(dir.path(), &pki, cert);
        forge.publish(&repo.work, "app.git");
        let out = git_client(
            dir.path(),
            &[("GIT_SSL_CAINFO", ca)],
            &["ls-remote", &forge.url_with_token("app.git")],
        );
        let err = stderr(&out);
        assert!(!out.status.success(), "{cert:?}: git trusted the server");
        let why = match cert {
            Cert::WrongName => "does not match target host name",
            _ => "server certificate verification failed",
        };
        assert!(err.contains(why), "{cert:?}: {err}");
        // no request got past the handshake
        assert_eq!(forge.access_log(), "", "{cert:?}");
    }
}

#[test]
fn https_forge_stops_and_restarts_on_its_port() {
    let dir = TestDir::new();
    let (repo, sha) = source(&dir);
    let mut forge = HttpsForge::start(dir.path(), Cert::Good);
    forge.publish(&repo.work, "app.git");
    let ca = forge.ca_file.to_str().unwrap().to_string();
    let env = [("GIT_SSL_CAINFO", ca.as_str())];
    let url = forge.url_with_token("app.git");

    forge.stop();
    assert!(!crate::fixture::ports::listening(forge.port));
    assert_fails(
        &git_client(dir.path(), &env, &["ls-remote", &url]),
        "Failed to connect",
    );
    forge.restart();
    let refs = assert_ok(&git_client(dir.path(), &env, &["ls-remote", &url]));
    assert!(refs.contains(&sha), "{refs}");
}

#[test]
fn ssh_deploy_keys_list_refs_with_plain_and_hashed_known_hosts() {
    let dir = TestDir::new();
    let (repo, sha) = source(&dir);
    let forge = SshForge::start(dir.path());
    forge.publish(&repo.work, "app.git");
    let url = forge.url("app.git");
    for (key, known) in [
        (forge.ed25519_key(), forge.known_hosts()),
        (forge.rsa_key(), forge.known_hosts()),
        (forge.ed25519_key(), forge.known_hosts_hashed()),
    ] {
        let ssh = ssh_command(key, known);
        let refs = assert_ok(&git_client(
            dir.path(),
            &[("GIT_SSH_COMMAND", &ssh)],
            &["ls-remote", &url],
        ));
        assert!(refs.contains(&format!("{sha}\trefs/heads/main")), "{refs}");
    }
    assert!(
        std::fs::read_to_string(forge.known_hosts_hashed())
            .unwrap()
            .starts_with("|1|")
    );
    // the fingerprint is the one the client sees
    let ssh = format!(
        "{} -v",
        ssh_command(forge.ed25519_key(), forge.known_hosts())
    );
    let out = git_client(
        dir.path(),
        &[("GIT_SSH_COMMAND", &ssh)],
        &["ls-remote", &url],
    );
    assert_ok(&out);
    let fp = forge.fingerprint();
    assert!(fp.starts_with("SHA256:"), "{fp}");
    assert!(
        stderr(&out).contains(&format!("Server host key: ssh-ed25519 {fp}")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ssh_forced_command_allows_only_git() {
    let dir = TestDir::new();
    let forge = SshForge::start(dir.path());
    let out = std::process::Command::new("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(forge.ed25519_key())
        .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o"])
        .arg(format!(
            "UserKnownHostsFile={}",
            forge.known_hosts().display()
        ))
        .args([
            "-p",
            &forge.port.to_string(),
            &format!("{}@127.0.0.1", forge.user),
            "id",
        ])
        .env_remove("SSH_AUTH_SOCK")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unrecognized command"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ssh_refuses_an_unauthorized_key_and_a_changed_host_key() {
    let dir = TestDir::new();
    let (repo, _) = source(&dir);
    let forge = SshForge::start(dir.path());
    forge.publish(&repo.work, "app.git");
    let url = forge.url("app.git");

    let ssh = ssh_command(forge.unauthorized_key(), forge.known_hosts());
    let out = git_client(
        dir.path(),
        &[("GIT_SSH_COMMAND", &ssh)],
        &["ls-remote", &url],
    );
    assert_fails(&out, "Permission denied (publickey)");

    let ssh = ssh_command(forge.ed25519_key(), forge.known_hosts_wrong());
    let out = git_client(
        dir.path(),
        &[("GIT_SSH_COMMAND", &ssh)],
        &["ls-remote", &url],
    );
    assert_fails(&out, "REMOTE HOST IDENTIFICATION HAS CHANGED");
    assert_fails(&out, "Host key verification failed");
}

#[test]
fn ssh_scp_like_url_through_the_homes_ssh_config() {
    let dir = TestDir::new();
    let (repo, sha) = source(&dir);
    let forge = SshForge::start(dir.path());
    forge.publish(&repo.work, "app.git");
    let home = dir.join("home");
    let url = forge.scp_like_url(&home, "app.git");
    assert!(url.starts_with(&format!("{}@forge:/", forge.user)), "{url}");
    // OpenSSH's ssh finds ~/.ssh through the passwd entry, not $HOME: the
    // config the fixture wrote is named, as a client honouring HOME finds it
    let config = home.join(".ssh/config");
    let ssh = ssh_command(forge.ed25519_key(), forge.known_hosts())
        .replace("-F /dev/null", &format!("-F {}", config.display()));
    let env = [("HOME", home.to_str().unwrap()), ("GIT_SSH_COMMAND", &ssh)];
    let refs = assert_ok(&git_client(dir.path(), &env, &["ls-remote", &url]));
    assert!(refs.contains(&sha), "{refs}");
}

#[test]
fn proxy_tunnels_https_to_the_forge() {
    let dir = TestDir::new();
    let (repo, sha) = source(&dir);
    let forge = HttpsForge::start(dir.path(), Cert::Good);
    forge.publish(&repo.work, "app.git");
    let url = forge.url_with_token("app.git");
    let ca = forge.ca_file.to_str().unwrap();
    for auth in [true, false] {
        let proxy = Proxy::start(dir.path(), auth);
        let env = [("GIT_SSL_CAINFO", ca), ("HTTPS_PROXY", &proxy.url())];
        let refs = assert_ok(&git_client(dir.path(), &env, &["ls-remote", &url]));
        assert!(refs.contains(&sha), "{refs}");
        let log = proxy.log();
        assert!(
            log.contains(&format!("CONNECT 127.0.0.1:{}", forge.port)),
            "{log}"
        );
    }
}

/// tinyproxy (1.11) answers a CONNECT without credentials with 407, but
/// one with wrong credentials with 401 (reqs.c): both are refusals by the
/// proxy, and the forge never sees the request.
#[test]
fn proxy_refuses_missing_or_wrong_credentials() {
    let dir = TestDir::new();
    let (repo, _) = source(&dir);
    let forge = HttpsForge::start(dir.path(), Cert::Good);
    forge.publish(&repo.work, "app.git");
    let proxy = Proxy::start(dir.path(), true);
    let url = forge.url_with_token("app.git");
    let ca = forge.ca_file.to_str().unwrap();
    for (proxy_url, refusal) in [
        (
            format!("http://127.0.0.1:{}", proxy.port),
            "CONNECT tunnel failed, response 407",
        ),
        (
            proxy.url_with_password("wrong"),
            "CONNECT tunnel failed, response 401",
        ),
    ] {
        let env = [("GIT_SSL_CAINFO", ca), ("HTTPS_PROXY", proxy_url.as_str())];
        assert_fails(&git_client(dir.path(), &env, &["ls-remote", &url]), refusal);
    }
    let log = proxy.log();
    assert!(
        log.contains(&format!("CONNECT 127.0.0.1:{}", forge.port)),
        "{log}"
    );
    assert!(!log.contains("Established connection"), "{log}");
    assert_eq!(forge.access_log(), "", "the forge saw a request");
}
