//! End to end: the app image built from dockerfiles/Dockerfile (cutover as
//! ENTRYPOINT, real gunicorn in /opt/venv, the baked dependency baseline) on
//! a real Docker engine, one test per user story of the README:
//! the 10-second deploy from a host volume, `git push` to a private https
//! forge deploys (the compose git example's own config, token and CA as
//! secrets, the forge's webhook), automatic rollback of a broken commit, a
//! dependency change (docker redeploy, or exit 75), and `docker stop`.
//!
//! Needs `scripts/build-test-image` (scripts/test runs it; it exports DOCKER
//! and CUTOVER_APP_IMAGE); enabled with `--features container-tests`.
//! Containers use `--network host`, so every test takes free ports and
//! writes its own config (mounted at /cfg, named by CUTOVER_CONFIG). Every
//! container, image and temp dir a test makes is removed when its `Scene`
//! drops, and every docker client call is killed if it hangs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::containers::dockercli::{docker, docker_build, inspect, text};
use crate::fixture::forge::{Cert, HttpsForge};
use crate::fixture::git::{Repo, git};
use crate::fixture::prelude::*;
use crate::source::deploys::{github_signature, http_post, push_body};

fn app_image() -> String {
    std::env::var("CUTOVER_APP_IMAGE").unwrap_or_else(|_| "cutover-app-test:latest".to_string())
}

/// What the image installed: a release with the same file needs no new image.
const REQUIREMENTS: &str = include_str!("../../../examples/gunicorn/requirements.txt");
const EXAMPLE_APP: &str = include_str!("../../../examples/gunicorn/app/app.py");
/// The example app (examples/gunicorn/app/app.py) with another VERSION.
pub(crate) fn app_py(version: &str) -> String {
    assert!(
        EXAMPLE_APP.contains("VERSION = \"v1\"\n"),
        "VERSION line not found"
    );
    EXAMPLE_APP.replace("VERSION = \"v1\"", &format!("VERSION = \"{version}\""))
}

/// GETs `/` from the example app every 5 ms (about 200 requests a second
/// at most, for at most 300 s) from a second thread, counting failures and
/// the versions in the order served.
fn probe(port: u16) -> Load {
    Load::spawn(
        move || example_version(port),
        Duration::from_millis(5),
        60_000,
        Duration::from_secs(300),
    )
}

fn wait_version(port: u16, want: &str, timeout: Duration, scene: &Scene) -> Duration {
    let started = Instant::now();
    wait_for(timeout, || {
        (example_version(port).ok()? == want).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "never served {want} (now: {:?})\n{}",
            example_version(port),
            scene.all_logs()
        )
    });
    started.elapsed()
}

/// Everything one test made, removed when dropped: its temp dir, the
/// containers whose name starts with `name`, and the images of `repository`.
struct Scene {
    dir: TestDir,
    name: String,
    repository: String,
    port: u16,
    control: u16,
}

impl Scene {
    fn new(tag: &str) -> Scene {
        let id = format!("{}-{tag}", std::process::id());
        let dir = TestDir::new();
        std::fs::create_dir_all(dir.join("cfg")).unwrap();
        std::fs::create_dir_all(dir.join("srv")).unwrap();
        let (port, control) = (free_port(), free_port());
        Scene {
            dir,
            name: format!("cutover-e2e-{id}"),
            repository: format!("cutover-e2e-{id}"),
            port,
            control,
        }
    }

    /// The code volume on the host, /srv/app in the container.
    fn srv(&self) -> PathBuf {
        self.dir.join("srv")
    }

    /// `[[listen]]`, `[app]` (gunicorn with the image's config), `[ready]`
    /// and `[control]` for this scene's ports, then `extra`.
    fn config(&self, app_extra: &str, extra: &str) -> String {
        ConfigToml::new()
            .listen("http", self.port, "reuse_port = false")
            .app(
                &[
                    "/opt/venv/bin/gunicorn",
                    "--config",
                    "/etc/cutover/gunicorn.conf.py",
                    "--workers",
                    "2",
                    "app:app",
                ],
                &format!(
                    "stop_timeout = \"10s\"\nforward_to = \"main\"\nreload_strategy = \"overlap\"\n{app_extra}"
                ),
            )
            .section("ready", "notify = true\ntimeout = \"30s\"")
            .control("/run/cutover.sock", self.control, "")
            .raw(extra)
            .to_string()
    }

    /// Writes the config to /cfg/cutover.toml and runs the app image with
    /// the code volume, the config and `extra` docker arguments.
    fn start(&self, config: &str, extra: &[&str]) -> String {
        self.start_image(config, extra, &app_image())
    }

    /// [`Scene::start`] with another image.
    fn start_image(&self, config: &str, extra: &[&str], image: &str) -> String {
        std::fs::write(self.dir.join("cfg/cutover.toml"), config).unwrap();
        let srv = format!("{}:/srv/app", self.srv().display());
        let cfg = format!("{}:/cfg:ro", self.dir.join("cfg").display());
        let mut args = vec![
            "run",
            "-d",
            "--network",
            "host",
            "--name",
            &self.name,
            "-e",
            "CUTOVER_CONFIG=/cfg/cutover.toml",
            "-v",
            &srv,
            "-v",
            &cfg,
        ];
        args.extend_from_slice(extra);
        args.push(image);
        let out = docker(&args);
        assert!(out.status.success(), "docker run failed: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn logs(&self, container: &str) -> String {
        text(&docker(&["logs", container]))
    }

    /// The logs of every container of this scene, for failure messages.
    fn all_logs(&self) -> String {
        self.containers()
            .iter()
            .map(|c| format!("--- docker logs {c} ---\n{}", self.logs(c)))
            .collect()
    }

    fn containers(&self) -> Vec<String> {
        let filter = format!("name=^/{}", self.name);
        let out = docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `cutover status --json` from inside the container.
    fn status(&self) -> Value {
        let out = docker(&["exec", &self.name, "cutover", "status", "--json"]);
        assert!(
            out.status.success(),
            "status: {}\n{}",
            text(&out),
            self.all_logs()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn wait_exit(&self, container: &str, timeout: Duration) -> i32 {
        let state = wait_for(timeout, || {
            inspect(container, "{{.State.Running}} {{.State.ExitCode}}")
                .filter(|s| s.starts_with("false "))
        })
        .unwrap_or_else(|| panic!("{container} still running\n{}", self.all_logs()));
        state["false ".len()..].parse().unwrap()
    }

    /// A bare repository in the temp dir (mounted as /repo.git) with a
    /// first commit: the example app at `v1` and the image's requirements.
    fn repo(&self, extra: &[(&str, &str)]) -> (Repo, String) {
        let repo = Repo::new(&self.dir);
        let app = app_py("v1");
        let mut files = vec![("app.py", app.as_str()), ("requirements.txt", REQUIREMENTS)];
        files.extend_from_slice(extra);
        repo.commit("v1", &files);
        repo.push();
        let sha = repo.head();
        (repo, sha)
    }

    fn repo_mount(&self, repo: &Repo) -> String {
        format!("{}:/repo.git", repo.remote.display())
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for c in self.containers() {
            let _ = docker(&["rm", "-f", "-v", &c]);
        }
        let out = docker(&["images", "-q", &self.repository]);
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = docker(&["rmi", "-f", id.trim()]);
        }
    }
}

/// `[source]` on the bare repository mounted at /repo.git (a path: cutover
/// watches its refs, so a push deploys at once), dependency files as a
/// release ships them.
const SOURCE: &str = "[source]\nrepo = \"/repo.git\"\nref = \"main\"\nroot = \"/srv/app\"\n\n\
                      [rollback]\nwindow = \"10s\"\n\n\
                      [dependencies]\nfiles = [\"requirements.txt\"]\n";

/// Writes releases/<name>/app.py on the host volume.
fn add_release(srv: &Path, name: &str, version: &str) {
    let dir = srv.join("releases").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.py"), app_py(version)).unwrap();
    std::fs::write(dir.join("requirements.txt"), REQUIREMENTS).unwrap();
}

/// Points `current` at releases/<name> with a RELATIVE link renamed over the
/// old one, as a host (whose path is not /srv/app) must.
fn switch(srv: &Path, name: &str) {
    let tmp = srv.join("current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("releases/{name}"), &tmp).unwrap();
    std::fs::rename(&tmp, srv.join("current")).unwrap();
}

/// Story 1: code on a host volume; the host writes a release, flips
/// `current` and touches the reload file: the new code is served within
/// 2 s, and no request of a steady load fails.
#[test]
fn host_volume_touch_deploys_in_under_two_seconds_without_a_failed_request() {
    let scene = Scene::new("touch");
    let srv = scene.srv();
    add_release(&srv, "v1", "v1");
    switch(&srv, "v1");
    let config = scene.config(
        "workdir = \"/srv/app/current\"\n",
        "[reload]\ntouch = [\"/srv/app/reload\"]\n",
    );
    scene.start(&config, &[]);
    wait_version(scene.port, "v1", Duration::from_secs(60), &scene);

    let load = probe(scene.port);
    std::thread::sleep(Duration::from_millis(500));
    add_release(&srv, "v2", "v2");
    switch(&srv, "v2");
    std::fs::write(srv.join("reload"), "").unwrap();
    let took = wait_version(scene.port, "v2", Duration::from_secs(20), &scene);
    std::thread::sleep(Duration::from_millis(500));
    let result = load.finish();
    assert_no_failed(
        &format!("e2e touch deploy: v2 served {took:?} after the touch"),
        &result,
        21,
        || scene.all_logs(),
    );
    assert_eq!(result.versions, ["v1", "v2"]);
    assert!(took < Duration::from_secs(2), "v2 served after {took:?}");
    // And it stays: the old gunicorn is gone.
    for _ in 0..10 {
        assert_eq!(example_version(scene.port).as_deref(), Ok("v2"));
    }
}

/// The compose git example's config (examples/gunicorn/cutover-git.toml, as
/// examples/compose/docker-compose.git.yml mounts it) for this scene: its
/// ports, its repository on `forge`, and its commented `token_file` and
/// `ca_file` lines switched on as they are written, for the secrets that
/// [`Scene::forge_secrets`] mounts where those lines look.
fn compose_git_config(scene: &Scene, forge: &HttpsForge) -> String {
    let edit = |text: String, from: &str, to: &str| {
        assert!(text.contains(from), "{from:?} not found in\n{text}");
        text.replace(from, to)
    };
    let toml = include_str!("../../../examples/gunicorn/cutover-git.toml").to_string();
    let toml = edit(
        toml,
        "address = \"0.0.0.0:8000\"",
        &format!("address = \"127.0.0.1:{}\"", scene.port),
    );
    let toml = edit(
        toml,
        "http = \"0.0.0.0:9090\"",
        &format!("http = \"127.0.0.1:{}\"", scene.control),
    );
    let toml = edit(
        toml,
        "https://git.example.com/org/app.git",
        &forge.url("app.git"),
    );
    let toml = edit(
        toml,
        "# token_file = \"/run/secrets/git_token\"",
        "token_file = \"/run/secrets/git_token\"",
    );
    edit(
        toml,
        "# ca_file = \"/etc/cutover/forge-ca.pem\"",
        "ca_file = \"/etc/cutover/forge-ca.pem\"",
    )
}

impl Scene {
    /// `docker run` arguments for the forge's token (a secret file, as
    /// compose mounts one) and its CA, where the example's lines name them.
    fn forge_secrets(&self, forge: &HttpsForge) -> Vec<String> {
        let token = self.dir.write("git_token", &format!("{}\n", forge.token));
        vec![
            "-v".into(),
            format!("{}:/run/secrets/git_token:ro", token.display()),
            "-v".into(),
            format!("{}:/etc/cutover/forge-ca.pem:ro", forge.ca_file.display()),
        ]
    }

    /// Waits until the checks cutover makes at start are over (`last_check`
    /// has stopped moving), so that a push after it is deployed by its
    /// webhook alone.
    fn wait_settled(&self) {
        crate::fixture::cleanup::wait_steady(
            Duration::from_secs(30),
            Duration::from_millis(300),
            || Some(self.status()["source"]["last_check"].as_str()?.to_string()),
        )
        .unwrap_or_else(|| panic!("the source never settled\n{}", self.all_logs()));
    }
}

/// Story 2: `git push` to a private repository on an https forge, which
/// sends its signed push webhook; the container, running the compose git
/// example's config with the token and the forge's CA as secret files,
/// serves the new commit and is the same container, never restarted.
#[test]
fn git_push_deploys_without_restarting_the_container() {
    let scene = Scene::new("push");
    let (repo, v1) = scene.repo(&[]);
    let forge = HttpsForge::start(scene.dir.path(), Cert::Good);
    let bare = forge.publish(&repo.work, "app.git");
    let secret = "the forge's webhook secret";
    let env = format!("WEBHOOK_SECRET={secret}");
    let mut extra = vec!["-e".to_string(), env];
    extra.extend(scene.forge_secrets(&forge));
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let id = scene.start(&compose_git_config(&scene, &forge), &extra);
    wait_version(scene.port, "v1", Duration::from_secs(60), &scene);
    scene.wait_settled();
    let before = inspect(&scene.name, "{{.State.StartedAt}} {{.RestartCount}}").unwrap();

    let load = probe(scene.port);
    std::thread::sleep(Duration::from_millis(300));
    let pushed = Instant::now();
    let app = app_py("v2");
    let v2 = repo.commit("v2", &[("app.py", app.as_str())]);
    git(
        &repo.work,
        &["push", "-q", "-f", bare.to_str().unwrap(), "main"],
    );
    let body = push_body("refs/heads/main", &v2);
    let signature = github_signature(secret, &body);
    let headers = [
        ("X-GitHub-Event", "push"),
        ("X-Hub-Signature-256", signature.as_str()),
    ];
    let (code, answer) = http_post(scene.control, "/webhook", &headers, &body);
    assert_eq!(code, 202, "{answer}\n{}", scene.all_logs());
    let took = wait_version(scene.port, "v2", Duration::from_secs(30), &scene);
    let push_took = pushed.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let result = load.finish();
    eprintln!(
        "e2e git push: v2 served {push_took:?} after the push started ({took:?} after the webhook)"
    );
    assert_no_failed("e2e git push", &result, 21, || scene.all_logs());

    // The deploy is recorded once the reload is over: after the old
    // instance's drain and graceful stop, which follow the new code serving.
    let st = wait_for(Duration::from_secs(30), || {
        let st = scene.status();
        st["source"]["history"]
            .as_array()?
            .iter()
            .any(|h| h["outcome"] == "deployed" && h["sha"] == v2.as_str())
            .then_some(st)
    })
    .unwrap_or_else(|| panic!("no deploy of {v2} in the history: {}", scene.status()));
    assert_eq!(st["source"]["current"], v2.as_str(), "{st}");
    assert_eq!(st["source"]["previous"], v1.as_str(), "{st}");
    let record = st["source"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["sha"] == v2.as_str())
        .unwrap();
    assert_eq!(record["trigger"], "webhook (GitHub)", "{st}");
    // Same container, same start, no restart.
    assert_eq!(
        inspect(&scene.name, "{{.Id}}").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        inspect(&scene.name, "{{.State.StartedAt}} {{.RestartCount}}").unwrap(),
        before
    );
    assert!(before.ends_with(" 0"), "{before}");
    assert_eq!(
        inspect(&scene.name, "{{.State.Running}}").as_deref(),
        Some("true")
    );
    // Both commits came from the forge, every request with the token, and
    // the token shows nowhere.
    let access = forge.access_log();
    assert!(
        access.contains("\"POST /git/app.git/git-upload-pack HTTP/1.1\" 200"),
        "{access}"
    );
    assert!(!access.contains("\" 401 "), "{access}");
    let shown = format!("{st}{}", scene.all_logs());
    assert!(!shown.contains(&forge.token), "the token was shown");
}

/// Story 3: a commit whose app fails to import is rolled back: the old
/// code keeps serving without a failed request, and status says so.
#[test]
fn a_broken_commit_is_rolled_back_and_the_old_code_keeps_serving() {
    let scene = Scene::new("broken");
    let (repo, v1) = scene.repo(&[]);
    let mount = scene.repo_mount(&repo);
    scene.start(&scene.config("", SOURCE), &["-v", &mount]);
    wait_version(scene.port, "v1", Duration::from_secs(60), &scene);

    let load = probe(scene.port);
    std::thread::sleep(Duration::from_millis(300));
    let broken = format!("raise RuntimeError('broken release')\n{}", app_py("v2"));
    let bad = repo.commit("v2 broken", &[("app.py", broken.as_str())]);
    repo.push();
    let record = wait_for(Duration::from_secs(60), || {
        let st = scene.status();
        st["source"]["history"]
            .as_array()?
            .iter()
            .find(|h| h["outcome"] == "rolled-back" && h["sha"] == bad.as_str())
            .cloned()
    })
    .unwrap_or_else(|| panic!("no rolled-back record\n{}", scene.all_logs()));
    std::thread::sleep(Duration::from_millis(300));
    let result = load.finish();
    assert_no_failed("e2e rollback", &result, 21, || scene.all_logs());
    assert_eq!(result.versions, ["v1"], "only v1 was served");

    let st = scene.status();
    assert_eq!(st["source"]["current"], v1.as_str(), "{st}");
    assert!(
        st["source"]["bad"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b == bad.as_str()),
        "{st}"
    );
    assert_eq!(example_version(scene.port).as_deref(), Ok("v1"));
    let logs = scene.logs(&scene.name);
    assert!(logs.contains("broken release"), "the import error: {logs}");
    eprintln!("e2e broken commit: {record}");
}

/// The release's own Dockerfile for a dependency change: the current app
/// image with the release's requirements (already satisfied: no network
/// needed) and their baseline baked in.
fn release_dockerfile() -> String {
    format!(
        "FROM {}\n\
         COPY requirements.txt /build/deps/requirements.txt\n\
         RUN /opt/venv/bin/pip install --no-index --no-input --disable-pip-version-check \
         -r /build/deps/requirements.txt \
         && cutover fingerprint /build/deps --write /etc/cutover/dependencies\n",
        app_image()
    )
}

/// Issue 4: an app repository with its own Dockerfile (examples/ansible/
/// app/Dockerfile), built with the commit's files as the context, bakes the
/// baseline over those files: with the default dependency patterns, which
/// include `Dockerfile`, a code-only commit matches it and is hot-reloaded
/// in the same container. (A baseline over requirements.txt alone would
/// differ by the Dockerfile, and `[redeploy] exit = 75` would stop it.)
#[test]
fn a_code_only_commit_to_a_repository_with_its_own_dockerfile_is_hot_reloaded() {
    let scene = Scene::new("own-dockerfile");
    let (repo, v1) = scene.repo(&[
        (
            "gunicorn.conf.py",
            include_str!("../../../examples/gunicorn/gunicorn.conf.py"),
        ),
        (
            "Dockerfile",
            include_str!("../../../examples/ansible/app/Dockerfile"),
        ),
        (
            ".dockerignore",
            include_str!("../../../examples/ansible/app/.dockerignore"),
        ),
    ]);
    let image = format!("{}:{v1}", scene.repository);
    let mut build = crate::containers::ansible::build_args();
    build.extend(["--tag".to_string(), image.clone()]);
    build.push(repo.work.display().to_string());
    let build: Vec<&str> = build.iter().map(String::as_str).collect();
    let out = docker_build(&build);
    assert!(out.status.success(), "docker build: {}", text(&out));

    let source = SOURCE.replace("[dependencies]\nfiles = [\"requirements.txt\"]\n", "");
    assert!(!source.contains("[dependencies]"), "{source}");
    let config = scene.config("", &format!("{source}\n[redeploy]\nexit = 75\n"));
    let mount = scene.repo_mount(&repo);
    let id = scene.start_image(&config, &["-v", &mount], &image);
    wait_version(scene.port, "v1", Duration::from_secs(60), &scene);
    scene.wait_settled();

    let load = probe(scene.port);
    std::thread::sleep(Duration::from_millis(300));
    let app = app_py("v2");
    let v2 = repo.commit("v2: code only", &[("app.py", app.as_str())]);
    repo.push();
    wait_version(scene.port, "v2", Duration::from_secs(30), &scene);
    std::thread::sleep(Duration::from_millis(300));
    assert_no_failed("e2e after the rollback", &load.finish(), 21, || {
        scene.all_logs()
    });
    let st = wait_for(Duration::from_secs(30), || {
        let st = scene.status();
        (st["source"]["current"] == v2.as_str()).then_some(st)
    })
    .unwrap_or_else(|| panic!("{v2} never current: {}", scene.status()));
    assert!(
        st["source"]["dependencies"]["redeploy_required"].is_null(),
        "{st}"
    );
    assert_eq!(
        inspect(&scene.name, "{{.Id}}").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        inspect(&scene.name, "{{.State.Running}} {{.RestartCount}}").as_deref(),
        Some("true 0")
    );
}

/// Story 4a: a commit that changes requirements.txt is not hot-loaded; with
/// `[redeploy] docker` cutover builds a new image from the release and a new
/// container replaces this one, serving the new code. The old one serves
/// until then (both hold the port with SO_REUSEPORT meanwhile).
#[test]
fn a_dependency_change_is_redeployed_as_a_new_container_by_docker() {
    let scene = Scene::new("redeploy");
    let dockerfile = release_dockerfile();
    let (repo, _v1) = scene.repo(&[("Dockerfile", dockerfile.as_str())]);
    let mount = scene.repo_mount(&repo);
    let extra = format!(
        "{SOURCE}\n[redeploy]\ndocker = {{ image = \"{}\", build_network = \"host\", \
         health_timeout = \"60s\" }}\n",
        scene.repository
    );
    // Both containers run for a moment on the host network: the app port is
    // shared with SO_REUSEPORT, and the control endpoint is the unix socket
    // only (a second cutover could not bind its http address).
    let config = scene
        .config("", &extra)
        .replace("reuse_port = false", "reuse_port = true")
        .replace(&format!("http = \"127.0.0.1:{}\"\n", scene.control), "");
    assert!(!config.contains("http = "), "{config}");
    let old_id = scene.start(
        &config,
        &[
            "-v",
            &mount,
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
        ],
    );
    wait_version(scene.port, "v1", Duration::from_secs(60), &scene);

    let load = probe(scene.port);
    std::thread::sleep(Duration::from_millis(300));
    let pushed = Instant::now();
    let app = app_py("v2");
    let requirements = format!("{REQUIREMENTS}# e2e: a dependency change\n");
    let v2 = repo.commit(
        "v2 with new requirements",
        &[
            ("app.py", app.as_str()),
            ("requirements.txt", &requirements),
        ],
    );
    repo.push();

    // The old container says why it does not hot-load, and keeps serving v1.
    let st = wait_for(Duration::from_secs(30), || {
        let st = scene.status();
        (st["source"]["dependencies"]["redeploy_required"]["sha"] == v2.as_str()).then_some(st)
    })
    .unwrap_or_else(|| panic!("no redeploy-required\n{}", scene.all_logs()));
    assert_eq!(
        st["source"]["dependencies"]["redeploy_required"]["changed_files"],
        serde_json::json!(["requirements.txt"]),
        "{st}"
    );
    // A new container under the old name serves v2.
    wait_for(Duration::from_secs(180), || {
        let id = inspect(&scene.name, "{{.Id}}")?;
        (id != old_id && example_version(scene.port).ok()? == "v2").then_some(())
    })
    .unwrap_or_else(|| panic!("no new container serving v2\n{}", scene.all_logs()));
    let took = pushed.elapsed();
    // ... and the old one is stopped, gracefully.
    assert_eq!(scene.wait_exit(&old_id, Duration::from_secs(60)), 0);
    std::thread::sleep(Duration::from_millis(500));
    let result = load.finish();
    assert_no_failed(
        &format!("e2e docker redeploy: new container serving v2 {took:?} after the push"),
        &result,
        21,
        || scene.all_logs(),
    );
    for _ in 0..10 {
        assert_eq!(example_version(scene.port).as_deref(), Ok("v2"));
    }
    let new_image = inspect(&scene.name, "{{.Config.Image}}").unwrap();
    assert_eq!(new_image, format!("{}:{}", scene.repository, &v2[..12]));
    let old_logs = scene.logs(&old_id);
    assert!(
        old_logs.contains("Handling signal: term"),
        "gunicorn stopped gracefully: {old_logs}"
    );
    let st = scene.status();
    assert_eq!(st["source"]["current"], v2.as_str(), "{st}");
    assert!(
        st["source"]["dependencies"]["redeploy_required"].is_null(),
        "{st}"
    );
}

/// Story 4b: with `[redeploy] exit = 75` the container stops gracefully and
/// exits 75 for the orchestrator, having never served the new code.
#[test]
fn a_dependency_change_with_exit_75_stops_the_container_with_75() {
    let scene = Scene::new("exit");
    let (repo, _v1) = scene.repo(&[]);
    let mount = scene.repo_mount(&repo);
    let extra = format!("{SOURCE}\n[redeploy]\nexit = 75\n");
    scene.start(&scene.config("", &extra), &["-v", &mount]);
    wait_version(scene.port, "v1", Duration::from_secs(60), &scene);

    let load = probe(scene.port);
    let app = app_py("v2");
    let requirements = format!("{REQUIREMENTS}# e2e: a dependency change\n");
    repo.commit(
        "v2 with new requirements",
        &[
            ("app.py", app.as_str()),
            ("requirements.txt", &requirements),
        ],
    );
    repo.push();
    assert_eq!(
        scene.wait_exit(&scene.name, Duration::from_secs(60)),
        75,
        "{}",
        scene.all_logs()
    );
    let result = load.finish();
    assert_eq!(result.versions, ["v1"], "v2 was never hot-loaded");
    let logs = scene.logs(&scene.name);
    assert!(logs.contains("Handling signal: term"), "graceful: {logs}");
}

/// Story 5: `docker stop` stops gunicorn gracefully (its SIGTERM handling
/// runs), the container exits with gunicorn's own status (0), well within
/// cutover's stop_timeout.
#[test]
fn docker_stop_is_graceful_with_gunicorn() {
    let scene = Scene::new("stop");
    let srv = scene.srv();
    add_release(&srv, "v1", "v1");
    switch(&srv, "v1");
    scene.start(
        &scene.config("workdir = \"/srv/app/current\"\n", ""),
        &["--stop-timeout", "30"],
    );
    wait_version(scene.port, "v1", Duration::from_secs(60), &scene);
    let asked = Instant::now();
    let out = docker(&["stop", &scene.name]);
    assert!(out.status.success(), "{}", text(&out));
    let took = asked.elapsed();
    assert_eq!(scene.wait_exit(&scene.name, Duration::from_secs(5)), 0);
    let logs = scene.logs(&scene.name);
    assert!(logs.contains("Handling signal: term"), "{logs}");
    assert!(logs.contains("Shutting down: Master"), "{logs}");
    assert_eq!(
        inspect(&scene.name, "{{.State.OOMKilled}}").as_deref(),
        Some("false")
    );
    // cutover's stop_timeout is 10 s, docker's 30 s: neither was needed.
    assert!(took < Duration::from_secs(10), "docker stop took {took:?}");
    eprintln!("e2e docker stop: {took:?}");
}
