//! `cutover hold` in containers, as users run it: on a user-defined bridge
//! network, the holder publishing the port with `-p`, app containers taking
//! the socket over a shared volume, under load from the host through
//! Docker's userland proxy. Needs what container.rs needs.

use std::time::{Duration, Instant};

use crate::containers::dockercli::{docker, inspect, text};
use crate::fixture::git::Repo;
use crate::fixture::prelude::*;

const IMAGE: &str = "cutover-test:latest";

/// A network, a holder and the app containers of one test; all removed
/// when dropped.
struct Stage {
    dir: TestDir,
    tag: String,
    network: String,
    port: u16,
    containers: Vec<String>,
    images: Vec<String>,
}

impl Stage {
    fn new(tag: &str) -> Stage {
        let tag = format!("cutover-hold-{}-{tag}", std::process::id());
        let out = docker(&["network", "create", &tag]);
        assert!(out.status.success(), "network create: {}", text(&out));
        let dir = TestDir::new();
        std::fs::create_dir_all(dir.join("run")).unwrap();
        std::fs::create_dir_all(dir.join("app")).unwrap();
        std::fs::write(dir.join("app/version"), "v1").unwrap();
        ConfigToml::new()
            .listen_from("http", "unix:/run/cutover/sockets", "")
            .app(
                &["python3", "/apps/fdserver.py"],
                "workdir = \"/app\"\nstop_timeout = \"5s\"\nreload_strategy = \"overlap\"",
            )
            .section("ready", "notify = true\ntimeout = \"20s\"")
            .write_to(&dir.join("app.toml"));
        Stage {
            dir,
            network: tag.clone(),
            tag,
            port: free_port(),
            containers: Vec::new(),
            images: Vec::new(),
        }
    }

    fn run(&mut self, name: &str, args: &[&str]) -> String {
        let name = format!("{}-{name}", self.tag);
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend_from_slice(args);
        let out = docker(&all);
        assert!(out.status.success(), "docker run {name}: {}", text(&out));
        self.containers.push(name.clone());
        name
    }

    /// The holder: publishes the port, holds the socket, shares /run/cutover;
    /// net.ipv4.tcp_migrate_req at the kernel's default (0), as a plain
    /// `docker run` or a pod has it.
    fn holder(&mut self) -> String {
        self.holder_with_migrate(0)
    }

    fn holder_with_migrate(&mut self, migrate: u8) -> String {
        let sysctl = format!("net.ipv4.tcp_migrate_req={migrate}");
        let publish = format!("127.0.0.1:{}:8000", self.port);
        let run = format!("{}:/run/cutover", self.dir.join("run").display());
        let network = self.network.clone();
        let name = self.run(
            "holder",
            &[
                "--network",
                &network,
                "-p",
                &publish,
                "--sysctl",
                &sysctl,
                "--restart",
                "unless-stopped",
                "-v",
                &run,
                "--entrypoint",
                "cutover",
                IMAGE,
                "hold",
                "--listen",
                "http=0.0.0.0:8000",
                "--at",
                "/run/cutover/sockets",
            ],
        );
        wait_for(SECS_20, || {
            logs(&name).contains("waiting for takers").then_some(())
        })
        .unwrap_or_else(|| panic!("the holder never came up: {}", logs(&name)));
        name
    }

    /// An app container: no network of its own, its socket from the holder.
    fn app(&mut self, n: usize) -> String {
        let run = format!("{}:/run/cutover", self.dir.join("run").display());
        let cfg = format!(
            "{}:/cfg/cutover.toml:ro",
            self.dir.join("app.toml").display()
        );
        let app = format!("{}:/app", self.dir.join("app").display());
        let server = format!(
            "{}:/apps/fdserver.py:ro",
            crate::fixture::prelude::app("fdserver.py")
        );
        self.run(
            &format!("app{n}"),
            &[
                "--network",
                "none",
                "-v",
                &run,
                "-v",
                &cfg,
                "-v",
                &app,
                "-v",
                &server,
                "-e",
                "CUTOVER_CONFIG=/cfg/cutover.toml",
                IMAGE,
            ],
        )
    }

    fn serves(&self, version: &str, timeout: Duration) {
        let port = self.port;
        wait_for(timeout, || {
            (served_version(port).ok()? == version).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "never served {version}\n{}",
                self.containers
                    .iter()
                    .map(|c| format!("--- {c}\n{}", logs(c)))
                    .collect::<String>()
            )
        });
    }

    fn load(&self) -> Load {
        let port = self.port;
        Load::spawn(
            move || served_version(port),
            Duration::from_millis(5),
            20_000,
            Duration::from_secs(120),
        )
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        let _ = docker(&["network", "rm", &self.network]);
        for image in &self.images {
            let _ = docker(&["rmi", "-f", image]);
        }
    }
}

fn logs(container: &str) -> String {
    text(&docker(&["logs", container]))
}

/// What `docker compose up -d` does when the app's image or config changed:
/// stop and remove the old container, create and start a new one. The
/// holder owns the published port, so connections wait in its backlog;
/// with net.ipv4.tcp_migrate_req off (the default) and on.
#[test]
fn an_app_container_recreated_as_compose_does_refuses_no_connection() {
    for migrate in [0, 1] {
        recreated_app_refuses_no_connection(migrate);
    }
}

fn recreated_app_refuses_no_connection(migrate: u8) {
    let mut stage = Stage::new(&format!("recreate{migrate}"));
    stage.holder_with_migrate(migrate);
    let first = stage.app(1);
    stage.serves("v1", Duration::from_secs(60));
    let load = stage.load();
    std::thread::sleep(Duration::from_millis(500));
    let stopped = Instant::now();
    let out = docker(&["stop", &first]);
    assert!(out.status.success(), "{}", text(&out));
    let _ = docker(&["rm", &first]);
    let second = stage.app(2);
    wait_for(Duration::from_secs(30), || {
        logs(&second).contains(" ready ").then_some(())
    })
    .unwrap_or_else(|| panic!("the new app never got ready\n{}", logs(&second)));
    let back = stopped.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let r = load.finish();
    assert_no_failed(
        &format!(
            "holder_docker recreate (tcp_migrate_req={migrate}), the app replaced within {} ms",
            back.as_millis()
        ),
        &r,
        51,
        String::new,
    );
}

/// A restarted holder container has a new network namespace: the old
/// sockets get nothing any more. The app's cutover takes the new ones and
/// reloads onto them; the app container itself is not restarted.
#[test]
fn a_restarted_holder_container_is_taken_up_without_restarting_the_app() {
    let mut stage = Stage::new("restart");
    let holder = stage.holder();
    let app = stage.app(1);
    stage.serves("v1", Duration::from_secs(60));
    let started = inspect(&app, "{{.State.StartedAt}}").unwrap();
    let load = stage.load();
    std::thread::sleep(Duration::from_millis(500));
    let restarted = Instant::now();
    let out = docker(&["restart", "-t", "5", &holder]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for(Duration::from_secs(30), || {
        logs(&app)
            .contains("took the new holder's sockets")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the app never took the new sockets\n{}", logs(&app)));
    stage.serves("v1", Duration::from_secs(30));
    let serving_again = restarted.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let r = load.finish();
    eprintln!(
        "holder_docker holder restart: serving again {} ms after `docker restart`; {} of {} requests failed meanwhile",
        serving_again.as_millis(),
        r.failed.len(),
        r.requests()
    );
    assert_eq!(
        inspect(&app, "{{.State.StartedAt}}").unwrap(),
        started,
        "the app container was not restarted"
    );
    assert_eq!(inspect(&app, "{{.RestartCount}}").unwrap(), "0");
    let out = docker(&["exec", &app, "cutover", "status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(
        st["reload"]["last"]["trigger"], "new sockets from a restarted holder",
        "{st}"
    );
    // Once it took the new sockets, nothing fails.
    let after = stage.load();
    std::thread::sleep(Duration::from_secs(2));
    let r = after.finish();
    assert_no_failed("holder_docker: after the new sockets", &r, 0, String::new);
}

/// Another user than the holder's cannot take its sockets, and is told so.
#[test]
fn an_app_container_of_another_user_is_refused() {
    let mut stage = Stage::new("uid");
    let holder = stage.holder();
    let run = format!("{}:/run/cutover", stage.dir.join("run").display());
    let cfg = format!(
        "{}:/cfg/cutover.toml:ro",
        stage.dir.join("app.toml").display()
    );
    let as_nobody = || {
        docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            "65534:65534",
            "-v",
            &run,
            "-v",
            &cfg,
            "-e",
            "CUTOVER_CONFIG=/cfg/cutover.toml",
            IMAGE,
        ])
    };
    let out = as_nobody();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("permission denied on the holder's socket"),
        "{said}"
    );
    // With the file opened to everyone, the holder's own check refuses it.
    let out = docker(&["exec", &holder, "chmod", "666", "/run/cutover/sockets"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = as_nobody();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("refused by the holder: uid 65534 gid 65534"),
        "{said}"
    );
    assert!(
        logs(&holder).contains("refused by the holder: uid 65534"),
        "{}",
        logs(&holder)
    );
}

/// A pushed dependency change, `[redeploy] docker` with the holder: the app
/// container publishes nothing, so the new container (its image built from
/// the release, the baseline baked in) starts beside the old one on the
/// holder's socket, takes users once it serves the new release, and the old
/// one stops. Nothing fails.
#[test]
fn a_pushed_dependency_change_is_redeployed_through_the_holder_without_a_failure() {
    let mut stage = Stage::new("redeploy");
    stage.holder();
    let repository = format!("{}-img", stage.tag);
    let repo = Repo::new(&stage.dir);
    let dockerfile = format!(
        "FROM {IMAGE}\nCOPY requirements.txt /build/requirements.txt\n\
         RUN cutover fingerprint /build --write /etc/cutover/dependencies\n"
    );
    repo.commit(
        "v1",
        &[
            ("version", "v1"),
            ("requirements.txt", "flask==3.0\n"),
            ("Dockerfile", &dockerfile),
        ],
    );
    repo.push();
    std::fs::create_dir_all(stage.dir.join("srv")).unwrap();
    std::fs::write(
        stage.dir.join("app.toml"),
        format!(
            "[[listen]]\nname = \"http\"\nfrom = \"unix:/run/cutover/sockets\"\n\n\
             [app]\ncommand = [\"python3\", \"/apps/fdserver.py\"]\nstop_timeout = \"5s\"\n\
             reload_strategy = \"overlap\"\n\n\
             [ready]\nnotify = true\ntimeout = \"30s\"\n\n\
             [source]\nrepo = \"/repo.git\"\nroot = \"/srv/app\"\npoll = \"1s\"\n\n\
             [dependencies]\nfiles = [\"requirements.txt\"]\n\n\
             [redeploy]\ndocker = {{ image = \"{repository}\", health_timeout = \"60s\", \
             allow_dockerfile_change = true }}\n"
        ),
    )
    .unwrap();
    let run = format!("{}:/run/cutover", stage.dir.join("run").display());
    let cfg = format!(
        "{}:/cfg/cutover.toml:ro",
        stage.dir.join("app.toml").display()
    );
    let srv = format!("{}:/srv/app", stage.dir.join("srv").display());
    let remote = format!("{}:/repo.git", repo.remote.display());
    let server = format!(
        "{}:/apps/fdserver.py:ro",
        crate::fixture::prelude::app("fdserver.py")
    );
    let name = stage.run(
        "app",
        &[
            "--network",
            "none",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            &run,
            "-v",
            &cfg,
            "-v",
            &srv,
            "-v",
            &remote,
            "-v",
            &server,
            "-e",
            "CUTOVER_CONFIG=/cfg/cutover.toml",
            IMAGE,
        ],
    );
    stage.serves("v1", Duration::from_secs(60));
    let old_id = inspect(&name, "{{.Id}}").unwrap();
    let load = stage.load();
    std::thread::sleep(Duration::from_millis(500));
    let pushed = Instant::now();
    let sha = repo.commit(
        "v2 with new requirements",
        &[("version", "v2"), ("requirements.txt", "flask==3.1\n")],
    );
    repo.push();
    stage.serves("v2", Duration::from_secs(120));
    let serving = pushed.elapsed();
    wait_for(Duration::from_secs(60), || {
        inspect(&old_id, "{{.State.Running}}").filter(|s| s == "false")
    })
    .unwrap_or_else(|| panic!("the old container still runs\n{}", logs(&old_id)));
    let stopped = pushed.elapsed();
    stage
        .containers
        .push(format!("{name}-replaced-{}", &old_id[..12]));
    std::thread::sleep(Duration::from_secs(1));
    let r = load.finish();
    let new_image = format!("{repository}:{}", &sha[..12]);
    stage.images.push(new_image.clone());
    assert_no_failed(
        &format!(
            "holder_docker redeploy: push -> v2 served {} ms, old container stopped {} ms",
            serving.as_millis(),
            stopped.as_millis()
        ),
        &r,
        0,
        || logs(&old_id),
    );
    assert_eq!(r.versions, ["v1", "v2"]);
    assert_eq!(
        inspect(&name, "{{.Config.Image}}").as_deref(),
        Some(new_image.as_str()),
        "the container named after the app runs the new image"
    );
    assert_eq!(
        inspect(&name, "{{.State.Running}}").as_deref(),
        Some("true")
    );
}
