//! Validation of `[redeploy]`: what cutover does when a release's dependency
//! files differ from the image's, so hot reload is unsafe. Exactly one action
//! (`command`, `webhook`, `docker` or `exit`); the webhook secret is read
//! here, so a missing one is a config error before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use super::docker_redeploy::docker_action;
use super::problems::{Problems, Segment};
use super::raw::RawRedeploy;
use super::values::{child, parse_duration, secret};
use super::{ChildEnv, RedeployAction, RedeployConfig, WebhookTarget};
use crate::process::user::resolve_user;

const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// A deployer builds an image and gates the new container on its health
/// before it answers (or before this container is stopped): minutes, but a
/// hung engine must not keep the redeploy "running" for ever.
const DEFAULT_DEPLOYER_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(300);

pub(super) fn redeploy(raw: RawRedeploy, p: &mut Problems) -> Option<RedeployConfig> {
    let path = [Segment::Key("redeploy".into())];
    let before = p.list.len();
    check_one_action(&path, &raw, p);
    if raw.user.is_some() && raw.command.is_none() {
        p.add(&child(&path, "user"), "only with `command`");
    }
    let timeout = action_timeout(&path, &raw, p);
    if raw.webhook.is_none() {
        for key in ["webhook_secret_env", "webhook_secret_file"] {
            let set = match key {
                "webhook_secret_env" => raw.webhook_secret_env.is_some(),
                _ => raw.webhook_secret_file.is_some(),
            };
            if set {
                p.add(&child(&path, key), "only with `webhook`");
            }
        }
    }
    let retry_max = match raw.retry_max {
        None => Some(DEFAULT_RETRY_MAX),
        Some(t) => p
            .check(&child(&path, "retry_max"), parse_duration(&t))
            .filter(|d| {
                let ok = *d >= Duration::from_secs(1);
                if !ok {
                    p.add(&child(&path, "retry_max"), "must be at least 1s");
                }
                ok
            }),
    };

    let action = if let Some(command) = raw.command {
        command_action(&path, command, raw.user, timeout, p)
    } else if let Some(url) = raw.webhook {
        if let Err(e) = check_url(&url) {
            p.add(&child(&path, "webhook"), e);
        }
        let secret = secret(
            &path,
            "webhook_secret",
            raw.webhook_secret_env,
            raw.webhook_secret_file,
            p,
        );
        Some(RedeployAction::Webhook(WebhookTarget {
            url,
            secret,
            timeout: timeout.unwrap_or(DEFAULT_WEBHOOK_TIMEOUT),
        }))
    } else if let Some(docker) = raw.docker {
        docker_action(&child(&path, "docker"), docker, p).map(RedeployAction::Docker)
    } else if let Some(socket) = raw.deployer {
        deployer_action(&path, socket, timeout, p)
    } else if let Some(code) = raw.exit {
        exit_action(&path, code, p)
    } else {
        None
    };
    if p.list.len() > before {
        return None;
    }
    Some(RedeployConfig {
        action: action?,
        retry_max: retry_max?,
    })
}

/// Exactly one of `command`, `webhook`, `docker`, `deployer` and `exit`:
/// with two, which one the user meant is a guess.
fn check_one_action(path: &[Segment], raw: &RawRedeploy, p: &mut Problems) {
    let given: Vec<&str> = [
        ("command", raw.command.is_some()),
        ("webhook", raw.webhook.is_some()),
        ("docker", raw.docker.is_some()),
        ("deployer", raw.deployer.is_some()),
        ("exit", raw.exit.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    match given.as_slice() {
        [] => p.add(
            path,
            "give one action: command = [...], webhook = \"https://...\", \
             docker = { ... }, deployer = \"/run/cutover/deployer/deployer.sock\" or exit = 75",
        ),
        [_] => {}
        several => p.add(
            &child(path, several[1]),
            format!(
                "give exactly one action, not {}",
                several
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        ),
    }
}

/// `timeout`, which only a command, a webhook or a deployer's answer can
/// run out of.
fn action_timeout(path: &[Segment], raw: &RawRedeploy, p: &mut Problems) -> Option<Duration> {
    let uses_timeout = raw.command.is_some() || raw.webhook.is_some() || raw.deployer.is_some();
    if raw.timeout.is_some() && !uses_timeout {
        p.add(
            &child(path, "timeout"),
            "only for command, webhook and deployer (docker has health_timeout)",
        );
    }
    raw.timeout
        .as_deref()
        .and_then(|t| p.check(&child(path, "timeout"), parse_duration(t)))
}

/// `command = [...]`, with its `user` resolved now.
fn command_action(
    path: &[Segment],
    command: Vec<String>,
    user: Option<String>,
    timeout: Option<Duration>,
    p: &mut Problems,
) -> Option<RedeployAction> {
    if command.first().is_none_or(|c| c.trim().is_empty()) {
        p.add(
            &child(path, "command"),
            "empty command: give the program and its arguments",
        );
    }
    Some(RedeployAction::Command {
        command,
        timeout: timeout.unwrap_or(DEFAULT_COMMAND_TIMEOUT),
        // Default (the hooked program's user) and the secrets to
        // withhold are filled in once the programs are known.
        user: user.and_then(|u| p.check(&child(path, "user"), resolve_user(&u))),
        env: ChildEnv::default(),
    })
}

/// `deployer = "/path/to/deployer.sock"`.
fn deployer_action(
    path: &[Segment],
    socket: String,
    timeout: Option<Duration>,
    p: &mut Problems,
) -> Option<RedeployAction> {
    let socket = PathBuf::from(socket);
    if socket.is_relative() {
        p.add(
            &child(path, "deployer"),
            format!(
                "`{}` is not an absolute path to a `cutover deployer` socket",
                socket.display()
            ),
        );
    }
    Some(RedeployAction::Deployer {
        socket,
        timeout: timeout.unwrap_or(DEFAULT_DEPLOYER_TIMEOUT),
    })
}

/// `exit = CODE`: 0 would tell the orchestrator that all is well.
fn exit_action(path: &[Segment], code: i64, p: &mut Problems) -> Option<RedeployAction> {
    match u8::try_from(code) {
        Ok(c) if c > 0 => Some(RedeployAction::Exit(c)),
        _ => {
            p.add(
                &child(path, "exit"),
                format!("exit code {code} is not within 1..=255 (75 is EX_TEMPFAIL)"),
            );
            None
        }
    }
}

/// `http://` or `https://` with a host.
fn check_url(url: &str) -> Result<(), String> {
    // Config errors reach the log: never with a token from the URL.
    let shown = crate::redact::redact_url(url);
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("`{shown}` is not an http:// or https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(format!(
            "`{shown}` needs a host (and no user:password@; use webhook_secret_env to sign)"
        ));
    }
    url.parse::<hyper::Uri>()
        .map(|_| ())
        .map_err(|e| format!("`{shown}` is not a valid URL: {e}"))
}

#[cfg(test)]
mod tests {
    use super::super::docker_redeploy::DEFAULT_DOCKER_SOCKET;
    use super::super::{Config, ConfigError, DockerPin, DockerRedeploy};
    use super::*;

    fn parse(redeploy: &str) -> Result<Config, Vec<(String, String)>> {
        let text = format!("[app]\ncommand = [\"true\"]\n\n[redeploy]\n{redeploy}\n");
        Config::parse(&text, "t.toml", None).map_err(|e| match e {
            ConfigError::Invalid { problems, .. } => {
                problems.into_iter().map(|p| (p.path, p.message)).collect()
            }
            other => panic!("{other}"),
        })
    }

    fn action(redeploy: &str) -> RedeployAction {
        parse(redeploy).unwrap().redeploy.unwrap().action
    }

    fn problems(redeploy: &str) -> Vec<(String, String)> {
        parse(redeploy).unwrap_err()
    }

    #[test]
    fn absent_means_none() {
        let c = Config::parse("[app]\ncommand = [\"true\"]\n", "t", None).unwrap();
        assert_eq!(c.redeploy, None);
    }

    #[test]
    fn each_action() {
        assert_eq!(
            action("command = [\"ci-build\", \"--now\"]\ntimeout = \"1m\""),
            RedeployAction::Command {
                command: vec!["ci-build".into(), "--now".into()],
                timeout: Duration::from_secs(60),
                user: None,
                env: ChildEnv::default(),
            }
        );
        assert_eq!(
            action("webhook = \"http://127.0.0.1:9/hook\""),
            RedeployAction::Webhook(WebhookTarget {
                url: "http://127.0.0.1:9/hook".into(),
                secret: None,
                timeout: DEFAULT_WEBHOOK_TIMEOUT
            })
        );
        assert_eq!(action("exit = 75"), RedeployAction::Exit(75));
        let docker = action(
            "docker = { build_args = { PY = \"3.12\", N = 2 }, image = \"acme/app\", \
             health_timeout = \"90s\", build_network = \"host\" }",
        );
        assert_eq!(
            docker,
            RedeployAction::Docker(DockerRedeploy {
                socket: PathBuf::from(DEFAULT_DOCKER_SOCKET),
                dockerfile: "Dockerfile".into(),
                build_args: vec![("N".into(), "2".into()), ("PY".into(), "3.12".into())],
                image: Some("acme/app".into()),
                container: None,
                health_timeout: Duration::from_secs(90),
                build_network: Some("host".into()),
                pin: vec![],
                allow_dockerfile_change: false,
                keep_docker_socket: true,
                confine: None,
            })
        );
        let RedeployAction::Docker(hardened) = action(
            "docker = { pin = [\"cmd\", \"user\", \"entrypoint\"], \
             allow_dockerfile_change = true, keep_docker_socket = false }",
        ) else {
            panic!("not docker")
        };
        assert_eq!(
            hardened.pin,
            [DockerPin::Cmd, DockerPin::User, DockerPin::Entrypoint]
        );
        assert!(hardened.allow_dockerfile_change);
        assert!(!hardened.keep_docker_socket);
        let c = parse("exit = 75\nretry_max = \"10m\"").unwrap().redeploy;
        assert_eq!(c.unwrap().retry_max, Duration::from_secs(600));
    }

    #[test]
    fn webhook_secret_is_read_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cret\n").unwrap();
        let a = action(&format!(
            "webhook = \"https://ci.example/hook\"\nwebhook_secret_file = \"{}\"",
            file.display()
        ));
        let RedeployAction::Webhook(w) = a else {
            panic!("{a:?}")
        };
        assert_eq!(w.secret.map(|s| s.0).as_deref(), Some("s3cret"));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let found = problems(
            "webhook = \"ftp://x\"\nexit = 300\ntimeout = \"soon\"\nretry_max = \"1ms\"\n\
             webhook_secret_env = \"CUTOVER_TEST_NO_SUCH_VAR\"",
        );
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        for want in [
            "redeploy.exit",
            "redeploy.timeout",
            "redeploy.retry_max",
            "redeploy.webhook",
            "redeploy.webhook_secret_env",
        ] {
            assert!(paths.contains(&want), "{want} missing in {found:?}");
        }
        assert!(
            found
                .iter()
                .any(|(_, m)| m.contains("exactly one action, not `webhook` and `exit`")),
            "{found:?}"
        );
    }

    #[test]
    fn bad_docker_settings() {
        let found = problems(
            "docker = { socket = \"docker.sock\", dockerfile = \"../Dockerfile\", \
             image = \"Acme/App:v1\", build_args = { X = [1] }, health_timeout = \"x\", \
             build_network = \"\" }",
        );
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "redeploy.docker.socket",
                "redeploy.docker.dockerfile",
                "redeploy.docker.build_args.X",
                "redeploy.docker.image",
                "redeploy.docker.build_network",
                "redeploy.docker.health_timeout",
            ],
            "{found:?}"
        );
        let found = problems(
            "docker = { pin = [\"user\", \"workdir\", \"user\"], keep_docker_socket = \"no\" }",
        );
        assert_eq!(found.len(), 1, "a type error stops at the first: {found:?}");
        assert_eq!(
            found[0].0, "redeploy.docker.keep_docker_socket",
            "{found:?}"
        );
        let found = problems("docker = { pin = [\"user\", \"workdir\", \"user\"] }");
        assert_eq!(
            found,
            [
                (
                    "redeploy.docker.pin[1]".to_string(),
                    "`workdir` cannot be pinned: give \"user\", \"entrypoint\" or \"cmd\""
                        .to_string()
                ),
                (
                    "redeploy.docker.pin".to_string(),
                    "`user` is listed twice".to_string()
                ),
            ]
        );
        let found = problems("docker = { colour = \"blue\" }");
        assert_eq!(found[0].0, "redeploy.docker.colour", "{found:?}");
    }

    #[test]
    fn no_action_or_misplaced_keys() {
        let found = problems("retry_max = \"1m\"");
        assert!(found[0].1.contains("give one action"), "{found:?}");
        let found = problems("exit = 75\ntimeout = \"1m\"\nwebhook_secret_file = \"/x\"");
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["redeploy.timeout", "redeploy.webhook_secret_file"],
            "{found:?}"
        );
        let found = problems("command = []");
        assert_eq!(found[0].0, "redeploy.command", "{found:?}");
    }
}
