//! Code from the forges users have, over https with a token: the real
//! `cutover` against nginx + git-http-backend over TLS with basic auth and
//! tinyproxy (tests/fixture/forge.rs), as GitHub or GitLab serve a private
//! repository. First release, poll and webhook deploys, shallow fetches,
//! refusals that say what is wrong and cost nothing, TLS trust (system
//! store, SSL_CERT_FILE/SSL_CERT_DIR, ca_file, bad certificates) and
//! proxies. The ssh side is in forges_ssh.rs; both share [`Site`].

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::fixture::forge::{Cert, HttpsForge, Pki, Proxy};
use crate::fixture::git::{Repo, git};
use crate::fixture::prelude::*;
use crate::source::deploys::{files_containing, github_signature, history, http_post, push_body};

/// A test directory, an app repository whose `main` serves v1, the volume
/// and the app's port: what every forge test starts from.
pub(crate) struct Site {
    pub dir: TestDir,
    pub repo: Repo,
    pub root: PathBuf,
    pub port: u16,
    pub v1: String,
}

impl Site {
    pub fn new() -> Site {
        let dir = TestDir::new();
        let repo = Repo::new(&dir);
        let v1 = repo.commit("v1", &[("version", "v1")]);
        Site {
            root: dir.join("srv"),
            port: free_port(),
            dir,
            repo,
            v1,
        }
    }

    /// Commits `version` and pushes it to the forge's copy `bare`.
    pub fn release_to(&self, bare: &Path, version: &str) -> String {
        let sha = self.repo.commit(version, &[("version", version)]);
        git(
            &self.repo.work,
            &["push", "-q", "-f", bare.to_str().unwrap(), "main"],
        );
        sha
    }

    /// Starts cutover on `[source] repo = url` plus `source_extra`.
    pub fn start(
        &self,
        url: &str,
        source_extra: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Cutover {
        let cfg = self.dir.write(
            "cutover.toml",
            &ConfigToml::deploying(self.port, url, &self.root, source_extra)
                .raw(extra)
                .to_string(),
        );
        Cutover::start_with(
            Mode::Subreaper,
            &self.dir,
            &["run", "-c", cfg.to_str().unwrap()],
            env,
        )
    }

    pub fn wait_version(&self, c: &Cutover, version: &str) {
        wait_version(self.port, version, c, SECS_20);
    }

    /// The source's status once `last_error` holds `needle`.
    pub fn wait_error(&self, c: &Cutover, needle: &str) -> Value {
        wait_for(SECS_20, || {
            let (code, _, _) = client(&self.dir, &["status"]);
            if code != 0 {
                return None;
            }
            let src = status(&self.dir)["source"].clone();
            src["last_error"].as_str()?.contains(needle).then_some(src)
        })
        .unwrap_or_else(|| {
            let src = if client(&self.dir, &["status"]).0 == 0 {
                status(&self.dir)["source"].clone()
            } else {
                Value::Null
            };
            panic!(
                "no error with `{needle}`: {src}\n--- stderr ---\n{}",
                c.stderr()
            )
        })
    }

    /// Everything cutover shows: status (JSON and text), history, log.
    pub fn shown(&self, c: &Cutover) -> String {
        let (_, text, _) = client(&self.dir, &["status"]);
        let (_, json, _) = client(&self.dir, &["status", "--json"]);
        format!(
            "{json}\n{text}\n{}\n{}",
            std::fs::read_to_string(self.root.join("history.jsonl")).unwrap_or_default(),
            c.stderr()
        )
    }
}

/// What a forge's admin does to a token: revoke it by accepting another.
trait Rotate {
    fn set_token(&self, token: &str);
}

impl Rotate for HttpsForge {
    /// nginx reads its htpasswd at every request: the change is immediate.
    fn set_token(&self, token: &str) {
        let out = Command::new("openssl")
            .args(["passwd", "-apr1", token])
            .output()
            .unwrap();
        assert!(out.status.success());
        let hash = String::from_utf8(out.stdout).unwrap();
        let line = format!("{}:{}\n", self.username, hash.trim());
        std::fs::write(self.dir.join("htpasswd"), line).unwrap();
    }
}

/// `[source]` keys for the forge's token, from the environment.
fn token_keys(forge: &HttpsForge) -> String {
    format!(
        "username = \"{}\"\ntoken_env = \"FORGE_TOKEN\"\nca_file = \"{}\"",
        forge.username,
        forge.ca_file.display()
    )
}

/// A forge serving the site's repository as `app.git`.
fn forge_for(site: &Site, cert: Cert) -> (HttpsForge, PathBuf) {
    let forge = HttpsForge::start(site.dir.path(), cert);
    let bare = forge.publish(&site.repo.work, "app.git");
    (forge, bare)
}

#[test]
fn a_token_deploys_the_first_release_then_pushes_by_poll_and_by_webhook() {
    let site = Site::new();
    let (forge, bare) = forge_for(&site, Cert::Good);
    let (http, hook) = (free_port(), free_port());
    let secret = "forge webhook secret";
    let c = site.start(
        &forge.url("app.git"),
        &format!(
            "{}\npoll = \"300ms\"\nwebhook = \"127.0.0.1:{hook}\"\nwebhook_secret_env = \"HOOK_SECRET\"",
            token_keys(&forge)
        ),
        &format!("[control]\nhttp = \"127.0.0.1:{http}\""),
        &[("FORGE_TOKEN", &forge.token), ("HOOK_SECRET", secret)],
    );
    site.wait_version(&c, "v1");
    assert_eq!(current_sha(&site.root).as_deref(), Some(site.v1.as_str()));

    site.release_to(&bare, "v2");
    site.wait_version(&c, "v2");

    // The webhook: a push the poll would find later anyway, so the poll is
    // slowed down first by a restart with a long interval.
    drop(c);
    let c = site.start(
        &forge.url("app.git"),
        &format!(
            "{}\npoll = \"1h\"\nwebhook = \"127.0.0.1:{hook}\"\nwebhook_secret_env = \"HOOK_SECRET\"",
            token_keys(&forge)
        ),
        &format!("[control]\nhttp = \"127.0.0.1:{http}\""),
        &[("FORGE_TOKEN", &forge.token), ("HOOK_SECRET", secret)],
    );
    site.wait_version(&c, "v2");
    wait_for_control(&site.dir);
    wait_settled(&site.dir);
    let v3 = site.release_to(&bare, "v3");
    let body = push_body("refs/heads/main", &v3);
    let signature = github_signature(secret, &body);
    let headers = [
        ("X-GitHub-Event", "push"),
        ("X-Hub-Signature-256", signature.as_str()),
    ];
    let (code, answer) = http_post(hook, "/webhook", &headers, &body);
    assert_eq!(code, 202, "{answer}");
    site.wait_version(&c, "v3");
    // The record follows the old instance's drain and stop.
    wait_for(SECS_20, || {
        let h = history(&site.root);
        (h.last()?["sha"] == v3.as_str()).then_some(())
    })
    .unwrap_or_else(|| panic!("no record of v3: {:?}", history(&site.root)));
    let h = history(&site.root);
    assert_eq!(h.last().unwrap()["trigger"], "webhook (GitHub)", "{h:?}");

    let log = forge.access_log();
    assert!(
        log.contains("\"GET /git/app.git/info/refs?service=git-upload-pack HTTP/1.1\" 200"),
        "{log}"
    );
    assert!(
        log.contains("\"POST /git/app.git/git-upload-pack HTTP/1.1\" 200"),
        "{log}"
    );
    assert!(
        !log.contains("\" 401 "),
        "every request carried the token:\n{log}"
    );
    assert!(!site.shown(&c).contains(&forge.token));
}

#[test]
fn depth_one_fetches_shallow_over_smart_http() {
    let site = Site::new();
    for v in ["v2", "v3", "v4"] {
        site.repo.commit(v, &[("version", v)]);
    }
    let (forge, _bare) = forge_for(&site, Cert::Good);
    let c = site.start(
        &forge.url("app.git"),
        &format!("{}\ndepth = 1", token_keys(&forge)),
        "",
        &[("FORGE_TOKEN", &forge.token)],
    );
    site.wait_version(&c, "v4");
    let cache = site.root.join(".cutover/cache.git");
    assert!(cache.join("shallow").is_file(), "the cache is not shallow");
    let count = git(&cache, &["rev-list", "--count", "refs/cutover/fetched"]);
    assert_eq!(count.trim(), "1", "only the deployed commit came over");
}

/// A token the forge stops accepting (revoked, expired): one clear line in
/// the log, status and history; retried with backoff; the serving release
/// keeps serving; once the token works again the push is deployed.
#[test]
fn a_refused_token_says_so_everywhere_and_replaces_nothing() {
    let site = Site::new();
    let (forge, bare) = forge_for(&site, Cert::Good);
    let c = site.start(
        &forge.url("app.git"),
        &format!("{}\npoll = \"200ms\"", token_keys(&forge)),
        "",
        &[("FORGE_TOKEN", &forge.token)],
    );
    site.wait_version(&c, "v1");
    forge.set_token("ghs_the_token_was_rotated_0123456789");
    site.release_to(&bare, "v2");
    let src = site.wait_error(&c, "refused the credentials (HTTP 401)");
    let error = src["last_error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("https://127.0.0.1:{}/git/app.git: ", forge.port)),
        "{error}"
    );
    c.wait_for_log("refused the credentials (HTTP 401)", SECS_20);
    c.wait_for_log("retry_in=2s", SECS_20);
    let h = history(&site.root);
    assert!(
        h.iter()
            .any(|r| r["error"].as_str().is_some_and(|e| e.contains("HTTP 401"))),
        "{h:?}"
    );
    assert_eq!(served_version(site.port).unwrap(), "v1");
    assert_eq!(current_sha(&site.root).as_deref(), Some(site.v1.as_str()));
    assert!(!site.shown(&c).contains(&forge.token));

    forge.set_token(&forge.token);
    site.wait_version(&c, "v2");
}

#[test]
fn missing_credentials_a_missing_ref_a_missing_repository_and_a_dead_server_each_say_so() {
    let site = Site::new();
    let (mut forge, _bare) = forge_for(&site, Cert::Good);
    let ca = format!("ca_file = \"{}\"", forge.ca_file.display());
    let cases = [
        (
            forge.url("app.git"),
            ca.clone(),
            "asks for credentials (HTTP 401) and none are configured",
        ),
        (
            forge.url("nothing-here.git"),
            token_keys(&forge),
            "no repository there (HTTP 404)",
        ),
        (
            forge.url("app.git"),
            format!("{}\nref = \"no-such-branch\"", token_keys(&forge)),
            "ref `no-such-branch` not found",
        ),
    ];
    for (url, keys, words) in cases {
        let toml = ConfigToml::deploying(site.port, &url, &site.root, &keys).to_string();
        // The case that names its own ref replaces `main`.
        let toml = if keys.contains("ref =") {
            toml.replace("ref = \"main\"\n", "")
        } else {
            toml
        };
        let cfg = site.dir.write("cutover.toml", &toml);
        let c = Cutover::start_with(
            Mode::Subreaper,
            &site.dir,
            &["run", "-c", cfg.to_str().unwrap()],
            &[("FORGE_TOKEN", &forge.token)],
        );
        let src = site.wait_error(&c, words);
        assert!(src["current"].is_null(), "{src}");
    }
    forge.stop();
    let c = site.start(
        &forge.url("app.git"),
        &token_keys(&forge),
        "",
        &[("FORGE_TOKEN", &forge.token)],
    );
    let src = site.wait_error(&c, "connection refused (is the server down?)");
    let error = src["last_error"].as_str().unwrap();
    assert!(
        error.contains(&format!("127.0.0.1:{}", forge.port)),
        "{error}"
    );
}

/// The private CA is trusted through `ca_file`, `SSL_CERT_FILE` or
/// `SSL_CERT_DIR`, as git and curl trust it; without any of them the system
/// store alone does not know it. Certificates for another name, expired or
/// from an untrusted CA are refused with words that name the host.
#[test]
fn tls_trust_comes_from_the_system_store_the_environment_or_ca_file() {
    let site = Site::new();
    let pki = Pki::new(&site.dir.join("pki"));
    let forge = HttpsForge::start_with(site.dir.path(), &pki, Cert::Good);
    forge.publish(&site.repo.work, "app.git");
    let token = format!(
        "username = \"{}\"\ntoken_env = \"FORGE_TOKEN\"",
        forge.username
    );
    let served = |keys: &str, env: &[(&str, &str)]| {
        let mut all = vec![("FORGE_TOKEN", forge.token.as_str())];
        all.extend_from_slice(env);
        let _ = std::fs::remove_dir_all(&site.root);
        let c = site.start(&forge.url("app.git"), keys, "", &all);
        site.wait_version(&c, "v1");
    };
    let ca = pki.ca_cert.to_str().unwrap();
    served(&format!("{token}\nca_file = \"{ca}\""), &[]);
    served(&token, &[("SSL_CERT_FILE", ca)]);
    let hashed = site.dir.join("certs");
    std::fs::create_dir_all(&hashed).unwrap();
    std::fs::copy(&pki.ca_cert, hashed.join("forge-ca.pem")).unwrap();
    let rehash = Command::new("openssl")
        .arg("rehash")
        .arg(&hashed)
        .status()
        .unwrap();
    assert!(rehash.success());
    served(&token, &[("SSL_CERT_DIR", hashed.to_str().unwrap())]);

    let _ = std::fs::remove_dir_all(&site.root);
    let c = site.start(
        &forge.url("app.git"),
        &token,
        "",
        &[("FORGE_TOKEN", &forge.token)],
    );
    site.wait_error(&c, "not trusted");
    drop(c);

    for (cert, words) in [
        (Cert::WrongName, "is for another name"),
        (Cert::Expired, "has expired"),
        (Cert::UntrustedCa, "not trusted"),
    ] {
        let bad = HttpsForge::start_with(site.dir.path(), &pki, cert);
        bad.publish(&site.repo.work, "app.git");
        let _ = std::fs::remove_dir_all(&site.root);
        let c = site.start(
            &bad.url("app.git"),
            &format!("{token}\nca_file = \"{ca}\""),
            "",
            &[("FORGE_TOKEN", &bad.token)],
        );
        let src = site.wait_error(&c, words);
        let error = src["last_error"].as_str().unwrap();
        assert!(
            error.contains(&format!("127.0.0.1:{}", bad.port)),
            "{error}"
        );
        assert!(
            !bad.access_log().contains("GET"),
            "a request went out:\n{}",
            bad.access_log()
        );
    }
}

/// HTTPS_PROXY with credentials: the fetch goes through the proxy's CONNECT
/// tunnel; wrong proxy credentials are named as the proxy's refusal; the
/// proxy's password shows nowhere and reaches no child; NO_PROXY bypasses it.
#[test]
fn fetches_go_through_https_proxy_unless_no_proxy_says_otherwise() {
    let site = Site::new();
    let (forge, _bare) = forge_for(&site, Cert::Good);
    let proxy = Proxy::start(site.dir.path(), true);
    let url = proxy.url();
    let c = site.start(
        &forge.url("app.git"),
        &token_keys(&forge),
        "",
        &[("FORGE_TOKEN", &forge.token), ("HTTPS_PROXY", &url)],
    );
    site.wait_version(&c, "v1");
    let log = proxy.log();
    assert!(
        log.contains(&format!("127.0.0.1:{}", forge.port)),
        "the proxy saw no CONNECT:\n{log}"
    );
    // Programs never inherit the proxy's credentials.
    for p in c.descendants() {
        let environ = std::fs::read(format!("/proc/{}/environ", p.pid)).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&environ).contains(&proxy.password),
            "pid {} inherited the proxy password",
            p.pid
        );
    }
    drop(c);

    let wrong = proxy.url_with_password("not-the-password");
    let _ = std::fs::remove_dir_all(&site.root);
    let c = site.start(
        &forge.url("app.git"),
        &token_keys(&forge),
        "",
        &[("FORGE_TOKEN", &forge.token), ("HTTPS_PROXY", &wrong)],
    );
    // tinyproxy says 401 where the standard says 407: both are refusals.
    let src = site.wait_error(&c, "the proxy refused the credentials (HTTP 40");
    let error = src["last_error"].as_str().unwrap();
    // The proxy is named without its credentials.
    assert!(
        error.contains(&format!("proxy http://127.0.0.1:{}", proxy.port)),
        "{error}"
    );
    let shown = site.shown(&c);
    assert!(
        !shown.contains("not-the-password") && !shown.contains(&forge.token),
        "{shown}"
    );
    drop(c);

    let _ = std::fs::remove_dir_all(&site.root);
    let c = site.start(
        &forge.url("app.git"),
        &token_keys(&forge),
        "",
        &[
            ("FORGE_TOKEN", &forge.token),
            ("HTTPS_PROXY", &wrong),
            ("NO_PROXY", "localhost,127.0.0.1"),
        ],
    );
    site.wait_version(&c, "v1");
    assert_eq!(
        files_containing(&site.root, &proxy.password),
        Vec::<PathBuf>::new(),
        "the proxy password is on the volume"
    );
}

/// Nothing secret is kept on the volume: the cache repository's config
/// and files hold neither the token nor the URL's credentials.
#[test]
fn the_token_is_kept_nowhere_on_the_volume() {
    let site = Site::new();
    let (forge, bare) = forge_for(&site, Cert::Good);
    let c = site.start(
        &forge.url_with_token("app.git"),
        &format!(
            "ca_file = \"{}\"\npoll = \"200ms\"",
            forge.ca_file.display()
        ),
        "",
        &[],
    );
    site.wait_version(&c, "v1");
    site.release_to(&bare, "v2");
    site.wait_version(&c, "v2");
    assert_eq!(
        files_containing(&site.root, &forge.token),
        Vec::<PathBuf>::new()
    );
    assert!(!site.shown(&c).contains(&forge.token));
}
