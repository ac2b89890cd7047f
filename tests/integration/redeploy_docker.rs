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

use crate::dockercli::{docker, inspect, text};
use crate::helpers::*;

const IMAGE: &str = "cutover-test:latest";
const SHA: &str = "feedc0de0123456789abcdef0123456789abcdef";
const SHORT: &str = "feedc0de0123";

/// Everything one test made, removed when dropped: containers whose name
/// starts with `name`, and the images of `repository`.
struct Scene {
    dir: TestDir,
    name: String,
    repository: String,
}

impl Scene {
    fn new(tag: &str) -> Scene {
        let id = format!("{}-{tag}", std::process::id());
        Scene {
            dir: TestDir::new(),
            name: format!("cutover-redeploy-{id}"),
            repository: format!("cutover-redeploy-test-{id}"),
        }
    }

    /// Writes the config and a release with `dockerfile`, starts the container.
    fn start(&self, dockerfile: &str) {
        let app = "trap 'echo graceful stop; exit 0' TERM; echo app ready; sleep 1000 & wait";
        self.dir.write(
            "cutover.toml",
            &format!(
                "[app]\ncommand = [\"sh\", \"-c\", \"{app}\"]\n\n\
                 [redeploy]\ndocker = {{ image = \"{}\", health_timeout = \"60s\", \
                 build_args = {{ GREETING = \"hi\" }} }}\n",
                self.repository
            ),
        );
        let release = self.dir.join(&format!("releases/{SHA}"));
        std::fs::create_dir_all(&release).unwrap();
        std::fs::write(release.join("Dockerfile"), dockerfile).unwrap();
        std::fs::write(release.join("marker"), format!("release {SHA}\n")).unwrap();
        let volume = format!("{}:/cfg", self.dir.path().display());
        let out = docker(&[
            "run",
            "-d",
            "--network",
            "host",
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
            IMAGE,
        ]);
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
        for c in self.containers() {
            let _ = docker(&["rm", "-f", &c]);
        }
        let _ = docker(&["rmi", "-f", &format!("{}:{SHORT}", self.repository)]);
    }
}

#[test]
fn docker_redeploy_replaces_this_container_with_a_new_image() {
    let scene = Scene::new("ok");
    scene.start(&format!(
        "FROM {IMAGE}\nARG GREETING\nCOPY marker /srv/marker\nLABEL greeting=$GREETING\n"
    ));
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
    scene.start(&format!("FROM {IMAGE}\nCOPY no-such-file /srv/\n"));
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
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        inspect(&scene.name, "{{.Id}} {{.State.Running}}"),
        Some(format!("{old_id} true"))
    );
    assert_eq!(scene.containers(), std::slice::from_ref(&scene.name));
    assert!(!scene.logs(&scene.name).contains("graceful stop"));
}

#[test]
fn new_container_that_exits_is_removed_and_the_old_one_keeps_serving() {
    let scene = Scene::new("crash");
    // The new image's entrypoint exits at once.
    scene.start(&format!(
        "FROM {IMAGE}\nENTRYPOINT [\"sh\", \"-c\", \"echo boot failed; exit 3\"]\n"
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
