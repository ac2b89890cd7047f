//! `[redeploy] docker`: cutover builds a new image and replaces its own
//! container through a real Docker engine.
//!
//! Needs what container.rs needs (`scripts/setup-docker`, then
//! `scripts/build-test-image`, DOCKER exported). The container under test
//! runs cutover-test:latest with the engine's socket and a host directory
//! holding its config and a release (a Dockerfile `FROM cutover-test:latest`
//! plus a marker file); `docker exec ... cutover redeploy` triggers the
//! action the deploy pipeline will trigger on a dependency change.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::containers::dockercli::{docker, inspect, text};
use crate::fixture::prelude::*;

/// The engine's socket in a `cutover deployer`, not in the app container.
mod deployer;
/// Health-gated replace, for a container that publishes host ports.
mod replace;
/// A new image that still does not fit its commit.
mod storm;

const SHA: &str = "feedc0de0123456789abcdef0123456789abcdef";
const SHORT: &str = "feedc0de0123";

/// The image under test (scripts/build-test-image exports it).
fn image() -> String {
    std::env::var("CUTOVER_TEST_IMAGE").unwrap_or_else(|_| "cutover-test:latest".to_string())
}

/// `sha256:<hex>`: the `cutover.dockerfile` label of an image built from it.
fn dockerfile_digest(text: &str) -> String {
    use sha2::Digest;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    )
}

/// A changed Dockerfile is refused unless allowed: the tests that build a
/// Dockerfile unknown to the running image allow it.
const ALLOW_CHANGE: &str = "allow_dockerfile_change = true";

/// Everything one test made, removed when dropped: containers whose name
/// starts with `name`, and the images of `repository`.
struct Scene {
    dir: TestDir,
    name: String,
    repository: String,
    /// Other containers the test made.
    others: Vec<String>,
    /// `docker run --network`.
    network: String,
    /// The app: a `sh -c` script.
    app: String,
}

impl Scene {
    fn new(tag: &str) -> Scene {
        let id = format!("{}-{tag}", std::process::id());
        Scene {
            dir: TestDir::new(),
            name: format!("cutover-redeploy-{id}"),
            repository: format!("cutover-redeploy-test-{id}"),
            others: Vec::new(),
            network: "host".to_string(),
            app: "trap 'echo graceful stop; exit 0' TERM; echo app ready; sleep 1000 & wait"
                .to_string(),
        }
    }

    /// Writes the config and a release with `dockerfile`, starts the
    /// container; Dockerfile changes allowed.
    fn start(&self, dockerfile: &str) {
        self.start_with(dockerfile, ALLOW_CHANGE, &[]);
    }

    /// Also `options` in `docker = { ... }` and `run_args` for `docker run`.
    fn start_with(&self, dockerfile: &str, options: &str, run_args: &[&str]) {
        let app = &self.app;
        let options = if options.is_empty() {
            String::new()
        } else {
            format!(", {options}")
        };
        ConfigToml::new()
            .app(&["sh", "-c", app], "")
            .section(
                "redeploy",
                &format!(
                    "docker = {{ image = \"{}\", health_timeout = \"60s\", \
                     build_args = {{ GREETING = \"hi\" }}{options} }}",
                    self.repository
                ),
            )
            .write(&self.dir);
        let release = self.dir.join(&format!("releases/{SHA}"));
        std::fs::create_dir_all(&release).unwrap();
        std::fs::write(release.join("Dockerfile"), dockerfile).unwrap();
        std::fs::write(release.join("marker"), format!("release {SHA}\n")).unwrap();
        let volume = format!("{}:/cfg", self.dir.path().display());
        let image = image();
        let mut args = vec![
            "run",
            "-d",
            "--network",
            &self.network,
            "--name",
            &self.name,
            "--restart",
            "unless-stopped",
            "-e",
            "CUTOVER_CONFIG=/cfg/cutover.toml",
            "-e",
            "APP_MODE=redeploy-test",
            "-l",
            "cutover.test=redeploy",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            &volume,
        ];
        args.extend_from_slice(run_args);
        args.push(&image);
        let out = docker(&args);
        assert!(out.status.success(), "docker run failed: {}", text(&out));
        wait_for(SECS_20, || {
            self.logs(&self.name).contains("app ready").then_some(())
        })
        .unwrap_or_else(|| panic!("app never ready: {}", self.logs(&self.name)));
    }

    fn logs(&self, container: &str) -> String {
        text(&docker(&["logs", container]))
    }

    /// `docker exec <old> cutover redeploy`; when it succeeds the container
    /// it runs in is stopped under it, so its own exit status says little.
    fn redeploy(&self) -> Output {
        docker(&[
            "exec",
            &self.name,
            "cutover",
            "redeploy",
            "--dir",
            &format!("/cfg/releases/{SHA}"),
            "--changed",
            "requirements.txt",
        ])
    }

    /// For a second: the same container runs, nothing new stands beside
    /// it, and it was never asked to stop.
    fn assert_untouched(&self, old_id: &str) {
        assert_stays(
            "the old container runs alone, untouched",
            Duration::from_secs(1),
            || {
                inspect(&self.name, "{{.Id}} {{.State.Running}}") == Some(format!("{old_id} true"))
                    && self.containers() == std::slice::from_ref(&self.name)
                    && !self.logs(&self.name).contains("graceful stop")
            },
        );
    }

    fn containers(&self) -> Vec<String> {
        let filter = format!("name=^/{}", self.name);
        let out = docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for c in &self.others {
            let _ = docker(&["rm", "-f", c]);
        }
        // Rounds: a container that redeploys itself may have started
        // another meanwhile (the storm this suite guards against).
        for _ in 0..10 {
            let left = self.containers();
            if left.is_empty() {
                break;
            }
            let mut args = vec!["rm", "-f"];
            args.extend(left.iter().map(String::as_str));
            let _ = docker(&args);
        }
        let _ = docker(&["rmi", "-f", &format!("{}:{SHORT}", self.repository)]);
    }
}

#[test]
fn docker_redeploy_replaces_this_container_with_a_new_image() {
    let scene = Scene::new("ok");
    // The running image was built from this very Dockerfile (so says its
    // label): unchanged, so built although changes are not allowed.
    let dockerfile = format!(
        "FROM {}\nARG GREETING\nCOPY marker /srv/marker\nLABEL greeting=$GREETING\n",
        image()
    );
    let label = format!("cutover.dockerfile={}", dockerfile_digest(&dockerfile));
    scene.start_with(&dockerfile, "", &["-l", &label]);
    let old_id = inspect(&scene.name, "{{.Id}}").unwrap();
    let started = Instant::now();
    let exec = scene.redeploy();
    let new_image = format!("{}:{SHORT}", scene.repository);
    let parked = format!("{}-replaced-{}", scene.name, &old_id[..12]);

    // The old container was stopped gracefully: the app got its SIGTERM.
    let old_state = wait_for(Duration::from_secs(60), || {
        inspect(&old_id, "{{.State.Running}} {{.State.ExitCode}} {{.Name}}")
            .filter(|s| s.starts_with("false"))
    })
    .unwrap_or_else(|| panic!("old container still running\n{}", text(&exec)));
    let took = started.elapsed();
    assert_eq!(old_state, format!("false 0 /{parked}"), "{}", text(&exec));
    let old_logs = scene.logs(&old_id);
    assert!(old_logs.contains("graceful stop"), "{old_logs}");
    // The trigger's own log (the exec ends with the container it runs in).
    let trigger = text(&exec);
    assert!(trigger.contains("redeploy: image built"), "{trigger}");
    assert!(trigger.contains("the new container is ready"), "{trigger}");
    assert_eq!(
        inspect(&old_id, "{{.HostConfig.RestartPolicy.Name}}").as_deref(),
        Some("no"),
        "a stopped predecessor must not come back with the daemon"
    );

    // A new container under the old name runs the new image, with the old
    // configuration.
    let new = |format: &str| inspect(&scene.name, format).unwrap_or_default();
    assert_ne!(new("{{.Id}}"), old_id);
    assert_eq!(new("{{.State.Running}}"), "true", "{}", text(&exec));
    assert_eq!(new("{{.Config.Image}}"), new_image);
    assert_eq!(
        inspect(&new_image, "{{index .Config.Labels \"greeting\"}}").as_deref(),
        Some("hi"),
        "build args reach the build"
    );
    let env = new("{{json .Config.Env}}");
    assert!(env.contains("\"APP_MODE=redeploy-test\""), "{env}");
    assert!(
        env.contains("\"CUTOVER_CONFIG=/cfg/cutover.toml\""),
        "{env}"
    );
    assert_eq!(new("{{index .Config.Labels \"cutover.test\"}}"), "redeploy");
    assert_eq!(
        new("{{index .Config.Labels \"cutover.dockerfile\"}}"),
        dockerfile_digest(&dockerfile),
        "the new image says what it was built from"
    );
    let mounts = new("{{range .Mounts}}{{.Destination}} {{end}}");
    assert!(
        mounts.contains("/cfg") && mounts.contains("/var/run/docker.sock"),
        "{mounts}"
    );
    assert_eq!(new("{{.HostConfig.NetworkMode}}"), "host");
    assert_eq!(new("{{.HostConfig.RestartPolicy.Name}}"), "unless-stopped");
    let marker = docker(&["exec", &scene.name, "cat", "/srv/marker"]);
    assert_eq!(text(&marker).trim(), format!("release {SHA}"));
    let pid1 = docker(&["exec", &scene.name, "cat", "/proc/1/comm"]);
    assert_eq!(text(&pid1).trim(), "cutover");
    assert!(
        scene.logs(&scene.name).contains("app ready"),
        "{}",
        scene.logs(&scene.name)
    );
    eprintln!("docker redeploy: old container stopped {took:?} after the trigger");
}

#[test]
fn failed_build_leaves_the_old_container_serving() {
    let scene = Scene::new("bad");
    scene.start(&format!("FROM {}\nCOPY no-such-file /srv/\n", image()));
    let old_id = inspect(&scene.name, "{{.Id}}").unwrap();
    let exec = scene.redeploy();
    let output = text(&exec);
    assert_eq!(exec.status.code(), Some(1), "{output}");
    assert!(
        output.contains(&format!(
            "redeploy failed: docker: building {}:{SHORT} failed",
            scene.repository
        )),
        "{output}"
    );
    assert!(output.contains("no-such-file"), "the reason: {output}");
    // Nothing changed: same container, running, and nothing new beside it.
    scene.assert_untouched(&old_id);
}

#[test]
fn new_container_that_exits_is_removed_and_the_old_one_keeps_serving() {
    let scene = Scene::new("crash");
    // The new image's entrypoint exits at once.
    scene.start(&format!(
        "FROM {}\nENTRYPOINT [\"sh\", \"-c\", \"echo boot failed; exit 3\"]\n",
        image()
    ));
    let old_id = inspect(&scene.name, "{{.Id}}").unwrap();
    let exec = scene.redeploy();
    let output = text(&exec);
    assert_eq!(exec.status.code(), Some(1), "{output}");
    assert!(
        output.contains(&format!("the new container {}-{SHORT} stopped", scene.name)),
        "{output}"
    );
    assert!(output.contains("exit code 3"), "{output}");
    assert!(output.contains("boot failed"), "its log tail: {output}");
    assert_eq!(
        inspect(&scene.name, "{{.Id}} {{.State.Running}}"),
        Some(format!("{old_id} true"))
    );
    assert_eq!(scene.containers(), std::slice::from_ref(&scene.name));
}

#[test]
fn a_changed_dockerfile_is_refused_unless_allowed() {
    let scene = Scene::new("changed");
    let built_from = format!("FROM {}\n", image());
    let label = format!("cutover.dockerfile={}", dockerfile_digest(&built_from));
    // The commit's Dockerfile would make the image run as another user.
    let changed = format!("FROM {}\nUSER nobody\n", image());
    scene.start_with(&changed, "", &["-l", &label]);
    let old_id = inspect(&scene.name, "{{.Id}}").unwrap();
    let exec = scene.redeploy();
    let output = text(&exec);
    assert_eq!(exec.status.code(), Some(1), "{output}");
    assert!(
        output.contains(&format!(
            "redeploy failed: docker: check the Dockerfile: the release's Dockerfile ({}) \
             differs from the one the running image was built from (label \
             cutover.dockerfile={})",
            dockerfile_digest(&changed),
            dockerfile_digest(&built_from)
        )),
        "{output}"
    );
    assert!(
        output.contains("allow_dockerfile_change = true"),
        "{output}"
    );
    // Nothing was built, nothing replaced.
    let built = docker(&["image", "inspect", &format!("{}:{SHORT}", scene.repository)]);
    assert!(!built.status.success(), "an image was built");
    scene.assert_untouched(&old_id);
}

/// The finding: a commit's `Dockerfile -> ../<served>/Dockerfile`, with a
/// directory `<served>/` of its own. On cutover's disk the link reaches the
/// served release's Dockerfile, so the check passed; the builder resolves
/// it inside the build context and built the commit's file. Now refused,
/// nothing built.
#[test]
fn a_dockerfile_symlinked_to_the_served_one_is_refused() {
    let scene = Scene::new("symlink");
    let good = format!("FROM {}\n", image());
    scene.start_with(&good, "", &[]);
    let served = "served";
    std::fs::create_dir_all(scene.dir.join(&format!("releases/{served}"))).unwrap();
    scene
        .dir
        .write(&format!("releases/{served}/Dockerfile"), &good);
    std::os::unix::fs::symlink(format!("releases/{served}"), scene.dir.join("current")).unwrap();
    let release = scene.dir.join(&format!("releases/{SHA}"));
    std::fs::remove_file(release.join("Dockerfile")).unwrap();
    std::fs::create_dir_all(release.join(served)).unwrap();
    let evil = format!("FROM {}\nRUN touch /pwned\n", image());
    std::fs::write(release.join(served).join("Dockerfile"), evil).unwrap();
    std::os::unix::fs::symlink(
        format!("../{served}/Dockerfile"),
        release.join("Dockerfile"),
    )
    .unwrap();
    let exec = scene.redeploy();
    let output = text(&exec);
    assert_eq!(exec.status.code(), Some(1), "{output}");
    assert!(
        output.contains("the release's Dockerfile is reached through a symlink")
            && output.contains("../served/Dockerfile"),
        "{output}"
    );
    let built = docker(&["image", "inspect", &format!("{}:{SHORT}", scene.repository)]);
    assert!(!built.status.success(), "an image was built");
    assert_eq!(scene.containers(), std::slice::from_ref(&scene.name));
}

#[test]
fn pinned_user_entrypoint_and_cmd_and_no_docker_socket() {
    let scene = Scene::new("pin");
    // The commit's Dockerfile tries to take over what runs, and as whom.
    scene.start_with(
        &format!(
            "FROM {}\nUSER nobody\n\
             ENTRYPOINT [\"sh\", \"-c\", \"echo hijacked; sleep 1000\"]\n\
             CMD [\"hijacked-cmd\"]\n",
            image()
        ),
        &format!(
            "{ALLOW_CHANGE}, pin = [\"user\", \"entrypoint\", \"cmd\"], \
             keep_docker_socket = false"
        ),
        // Other ways to the engine than the socket's own bind: the
        // directory that holds it, and a variable naming it.
        &[
            "-v",
            "/var/run:/host/var/run",
            "-e",
            "DOCKER_HOST=unix:///host/var/run/docker.sock",
        ],
    );
    let old_id = inspect(&scene.name, "{{.Id}}").unwrap();
    let run = "{{json .Config.Entrypoint}} {{json .Config.Cmd}}";
    let old_run = inspect(&old_id, run).unwrap();
    let exec = scene.redeploy();
    wait_for(Duration::from_secs(60), || {
        inspect(&old_id, "{{.State.Running}}").filter(|s| s == "false")
    })
    .unwrap_or_else(|| panic!("old container still running\n{}", text(&exec)));
    let new = |format: &str| inspect(&scene.name, format).unwrap_or_default();
    assert_ne!(new("{{.Id}}"), old_id, "{}", text(&exec));
    assert_eq!(new("{{.State.Running}}"), "true", "{}", text(&exec));
    // No cmd is `null` on the old container, `[]` on one that pins it.
    assert_eq!(
        new(run).replace("null", "[]"),
        old_run.replace("null", "[]"),
        "the old entrypoint and cmd"
    );
    assert_eq!(new("{{.Config.User}}"), "0:0", "the old user (root)");
    let pid1 = docker(&["exec", &scene.name, "cat", "/proc/1/comm"]);
    assert_eq!(text(&pid1).trim(), "cutover");
    let uid = docker(&["exec", &scene.name, "sh", "-c", "id -u; stat -c %u /proc/1"]);
    assert_eq!(
        text(&uid).split_whitespace().collect::<Vec<_>>(),
        ["0", "0"]
    );
    let logs = scene.logs(&scene.name);
    assert!(
        logs.contains("app ready") && !logs.contains("hijacked"),
        "{logs}"
    );
    // The new container has no Docker socket, the rest of its mounts.
    let mounts = new("{{range .Mounts}}{{.Source}}:{{.Destination}} {{end}}");
    assert!(mounts.contains(":/cfg"), "{mounts}");
    assert!(!mounts.contains("docker.sock"), "{mounts}");
    assert!(!mounts.contains("/host/var/run"), "{mounts}");
    let sock = docker(&["exec", &scene.name, "test", "-e", "/var/run/docker.sock"]);
    assert_eq!(sock.status.code(), Some(1), "the socket is still there");
    let sock = docker(&[
        "exec",
        &scene.name,
        "test",
        "-e",
        "/host/var/run/docker.sock",
    ]);
    assert_eq!(
        sock.status.code(),
        Some(1),
        "the socket's directory is still there"
    );
    let env = new("{{json .Config.Env}}");
    assert!(!env.contains("DOCKER_HOST"), "{env}");
    assert!(
        env.contains("APP_MODE=redeploy-test"),
        "the rest of the env: {env}"
    );
}

#[test]
fn earlier_predecessors_are_matched_by_exact_name() {
    let mut scene = Scene::new("dot");
    // A `.` in the name: as a regex it also matches `x`.
    scene.name = format!("cutover-redeploy-{}.dot", std::process::id());
    let ours = format!("{}-replaced-0123456789ab", scene.name);
    let theirs = format!(
        "cutover-redeploy-{}xdot-replaced-0123456789ab",
        std::process::id()
    );
    scene.others = vec![ours.clone(), theirs.clone()];
    for name in [&ours, &theirs] {
        let out = docker(&["create", "--name", name, &image(), "--", "true"]);
        assert!(out.status.success(), "docker create: {}", text(&out));
    }
    scene.start(&format!("FROM {}\n", image()));
    let old_id = inspect(&scene.name, "{{.Id}}").unwrap();
    let exec = scene.redeploy();
    wait_for(Duration::from_secs(60), || {
        inspect(&old_id, "{{.State.Running}}").filter(|s| s == "false")
    })
    .unwrap_or_else(|| panic!("old container still running\n{}", text(&exec)));
    assert_eq!(
        inspect(&scene.name, "{{.State.Running}}").as_deref(),
        Some("true"),
        "{}",
        text(&exec)
    );
    assert_eq!(
        inspect(&ours, "{{.Name}}"),
        None,
        "our predecessor is removed"
    );
    assert_eq!(
        inspect(&theirs, "{{.Name}}"),
        Some(format!("/{theirs}")),
        "another container's predecessor is kept\n{}",
        text(&exec)
    );
}

/// Through the deploy pipeline: a pushed commit that changes the Dockerfile
/// is a dependency change, and the docker redeploy refuses it against the
/// served release's Dockerfile (the target container's image has no
/// `cutover.dockerfile` label); status says why, the old release serves.
#[test]
fn a_pushed_dockerfile_change_is_refused_and_status_says_why() {
    use crate::fixture::git::Repo;

    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    let v1 = repo.commit("v1", &[("version", "v1"), ("Dockerfile", "FROM scratch\n")]);
    repo.push();
    // The container a redeploy would replace: it only has to exist.
    let mut scene = Scene::new("pipeline");
    scene.others.push(scene.name.clone());
    let out = docker(&["create", "--name", &scene.name, &image(), "--", "true"]);
    assert!(out.status.success(), "docker create: {}", text(&out));
    let config = format!(
        "[app]\ncommand = [\"sleep\", \"1000\"]\n\n\
         [source]\nrepo = \"{}\"\nroot = \"{}\"\n\n\
         [dependencies]\nbaseline = \"{}\"\n\n\
         [redeploy]\ndocker = {{ container = \"{}\", image = \"{}\" }}\n",
        repo.remote.display(),
        dir.join("srv").display(),
        dir.join("no-baseline").display(),
        scene.name,
        scene.repository,
    );
    let cutover = Cutover::run_config(Mode::Subreaper, &dir, &config);
    wait_for_control(&dir);
    let source = || status(&dir)["source"].clone();
    wait_for(SECS_20, || {
        (source()["current"] == v1.as_str()).then_some(())
    })
    .unwrap_or_else(|| panic!("v1 never served\n{}", cutover.stderr()));

    let v2 = repo.commit(
        "v2",
        &[
            ("version", "v2"),
            ("Dockerfile", "FROM scratch\nUSER root\n"),
        ],
    );
    repo.push();
    let src = wait_for(Duration::from_secs(30), || {
        let src = source();
        (src["redeploy"]["state"] == "failed").then_some(src)
    })
    .unwrap_or_else(|| panic!("never refused: {}\n{}", source(), cutover.stderr()));
    let why = src["redeploy"]["last_result"].as_str().unwrap_or_default();
    assert!(
        why.contains("docker: check the Dockerfile: the release's Dockerfile")
            && why.contains("differs from the served release's")
            && why.contains("allow_dockerfile_change"),
        "{src}"
    );
    assert_eq!(src["redeploy"]["sha"], v2.as_str(), "{src}");
    assert_eq!(src["current"], v1.as_str(), "{src}");
    // Nothing built, the container untouched.
    let built = docker(&[
        "image",
        "inspect",
        &format!("{}:{}", scene.repository, &v2[..12]),
    ]);
    assert!(!built.status.success(), "an image was built");
    assert_eq!(
        inspect(&scene.name, "{{.Name}}"),
        Some(format!("/{}", scene.name))
    );
}
