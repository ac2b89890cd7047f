//! cutover as the ENTRYPOINT of a real container on a real Docker engine.
//!
//! Needs `scripts/setup-docker` and `scripts/build-test-image` to have run
//! (scripts/test does both, and exports DOCKER, the client to use);
//! enabled with `--features container-tests`.

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::containers::dockercli::{docker as run, inspect, text};
use crate::fixture::forge::SshForge;
use crate::fixture::git::{Repo, git};
use crate::fixture::prelude::*;

const IMAGE: &str = "cutover-test:latest";

/// A container that is removed (with everything in it) when dropped.
struct Container {
    name: String,
}

impl Container {
    /// `cutover run -- COMMAND` (no config) with `extra` docker arguments.
    fn start(extra: &[&str], command: &[&str]) -> Container {
        let mut tail = vec!["--"];
        tail.extend_from_slice(command);
        Container::run(extra, &tail)
    }

    /// `cutover run ARGS` with `extra` docker arguments.
    fn run(extra: &[&str], cutover_args: &[&str]) -> Container {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "cutover-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut args = vec!["run", "-d", "--network", "host", "--name", &name];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.extend_from_slice(cutover_args);
        let out = run(&args);
        assert!(out.status.success(), "docker run failed: {}", text(&out));
        Container { name }
    }

    fn exec(&self, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", &self.name];
        args.extend_from_slice(cmd);
        run(&args)
    }

    fn wait_exit(&self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            let out = run(&[
                "inspect",
                "-f",
                "{{.State.Running}} {{.State.ExitCode}}",
                &self.name,
            ]);
            let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if let Some(code) = t.strip_prefix("false ") {
                return code.parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "container still running: {t}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        text(&run(&["logs", &self.name]))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run(&["rm", "-f", &self.name]);
    }
}

#[test]
fn cutover_is_pid_1_in_the_container() {
    let c = Container::start(&[], &["sleep", "1000"]);
    let found = wait_for(SECS_20, || {
        let out = c.exec(&["cat", "/proc/1/comm"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    assert_eq!(found.as_deref(), Some("cutover"), "{}", c.logs());
}

#[test]
fn docker_stop_is_graceful_and_keeps_the_exit_code() {
    let c = Container::start(
        &[],
        &[
            "sh",
            "-c",
            "trap 'echo graceful; exit 42' TERM; echo ready; sleep 1000 & wait",
        ],
    );
    wait_for(SECS_20, || c.logs().contains("ready").then_some(())).expect("app ready");
    let asked = Instant::now();
    let out = run(&["stop", "-t", "15", &c.name]);
    assert!(out.status.success(), "{}", text(&out));
    let took = asked.elapsed();
    assert_eq!(c.wait_exit(SECS_20), 42, "{}", c.logs());
    assert!(c.logs().contains("graceful"));
    // Well before docker's own 15 s SIGKILL.
    assert!(took < Duration::from_secs(5), "docker stop took {took:?}");
}

#[test]
fn orphans_are_reaped_in_the_container() {
    // The app orphans 50 processes, waits for them to end, and exits with
    // the number of zombies it can see.
    let script = "for i in $(seq 50); do (sleep 0.2 &); done; sleep 1.5; \
                  exit $(grep -c '^[0-9]* ([^)]*) Z' /proc/[0-9]*/stat | grep -vc ':0$')";
    let c = Container::start(&["-e", "CUTOVER_LOG=debug"], &["sh", "-c", script]);
    assert_eq!(c.wait_exit(SECS_20), 0, "zombies were left\n{}", c.logs());
    let reaped = c.logs().matches("reaped unwatched process").count();
    assert!(
        reaped >= 50,
        "only {reaped} orphans reaped by cutover\n{}",
        c.logs()
    );
}

/// `[redeploy] exit = 75` under `docker run --restart unless-stopped`: docker
/// restarts the same image, which must not exit again for the same commit
/// (before, it did so in a loop, serving nothing). One exit, one restart;
/// the release that fits (v1) is served before and after; status says a
/// redeploy is required and that it waits for a new image.
#[test]
fn exit_75_under_restart_unless_stopped_restarts_once_and_keeps_serving() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    repo.commit(
        "v1",
        &[("version", "v1"), ("requirements.txt", "flask==3.0\n")],
    );
    repo.push();
    // The image's baked baseline (made from v1), mounted where cutover
    // looks for it: the same file on every restart, as in the same image.
    std::fs::create_dir_all(dir.join("baked")).unwrap();
    let (code, _, err) = run_cutover(
        &dir,
        &[
            "fingerprint",
            repo.work.to_str().unwrap(),
            "--write",
            dir.join("baked/dependencies").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    std::fs::create_dir_all(dir.join("cfg")).unwrap();
    std::fs::create_dir_all(dir.join("srv")).unwrap();
    let port = free_port();
    std::fs::write(
        dir.join("cfg/cutover.toml"),
        format!(
            "[[listen]]\naddress = \"127.0.0.1:{port}\"\n\n\
             [app]\ncommand = [\"python3\", \"/apps/fdserver.py\"]\nstop_timeout = \"5s\"\n\n\
             [ready]\nhttp = \"http://127.0.0.1:{port}/healthz\"\ngrace = \"100ms\"\n\n\
             [control]\nsocket = \"/run/cutover.sock\"\n\n\
             [source]\nrepo = \"/repo.git\"\nroot = \"/srv/app\"\npoll = \"1s\"\n\n\
             [dependencies]\nfiles = [\"requirements.txt\"]\n\n\
             [redeploy]\nexit = 75\n"
        ),
    )
    .unwrap();
    let mounts = [
        format!("{}:/repo.git", repo.remote.display()),
        format!("{}:/srv/app", dir.join("srv").display()),
        format!("{}:/cfg:ro", dir.join("cfg").display()),
        format!("{}:/etc/cutover:ro", dir.join("baked").display()),
        format!("{}:/apps/fdserver.py:ro", app("fdserver.py")),
    ];
    let mut extra = vec![
        "--restart",
        "unless-stopped",
        "-e",
        "CUTOVER_CONFIG=/cfg/cutover.toml",
    ];
    for m in &mounts {
        extra.extend(["-v", m.as_str()]);
    }
    let c = Container::run(&extra, &[]);
    wait_for(Duration::from_secs(60), || {
        (served_version(port).ok()? == "v1").then_some(())
    })
    .unwrap_or_else(|| panic!("v1 never served\n{}", c.logs()));

    let load = Load::spawn(
        move || served_version(port),
        Duration::from_millis(20),
        10_000,
        Duration::from_secs(60),
    );
    let x = repo.commit(
        "v2 with new requirements",
        &[("version", "v2"), ("requirements.txt", "flask==3.1\n")],
    );
    repo.push();
    let restarts = || {
        inspect(&c.name, "{{.RestartCount}}")
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    };
    // The exit for v2, and docker's restart of the same image.
    wait_for(SECS_20, || (restarts() >= 1).then_some(()))
        .unwrap_or_else(|| panic!("cutover never exited for v2\n{}", c.logs()));
    let watched = Instant::now();
    let mut most = 0;
    while watched.elapsed() < Duration::from_secs(15) {
        most = most.max(restarts());
        std::thread::sleep(Duration::from_millis(200));
    }
    let result = load.finish();
    assert!(most <= 1, "restarted {most} times in 15 s\n{}", c.logs());
    assert_eq!(
        result.versions,
        ["v1"],
        "only v1 was ever served: {result:?}"
    );
    assert_eq!(served_version(port).as_deref(), Ok("v1"));
    // Unanswered probes: only while the one restart ran.
    let probes = result.ok + result.failed.len();
    eprintln!(
        "exit 75 under --restart: {most} restart(s) in 15 s, {} of {probes} probes unanswered",
        result.failed.len()
    );
    assert!(
        result.failed.len() * 10 < probes,
        "{} of {probes} probes failed: {:?}",
        result.failed.len(),
        result.failed.first()
    );

    let out = c.exec(&["cutover", "status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let src = &status["source"];
    assert_eq!(
        src["dependencies"]["redeploy_required"]["sha"],
        x.as_str(),
        "{src}"
    );
    assert_eq!(src["redeploy"]["state"], "waiting-for-image", "{src}");
    assert_eq!(src["redeploy"]["exited_for"]["sha"], x.as_str(), "{src}");
    let out = c.exec(&["cutover", "status"]);
    let shown = text(&out);
    assert!(shown.contains(&format!("redeploy-required {x}")), "{shown}");
    assert!(shown.contains("waiting for a new image"), "{shown}");
    let logs = c.logs();
    assert_eq!(
        logs.matches("cutover exiting for a redeploy").count(),
        1,
        "{logs}"
    );
    assert!(logs.contains("not exiting again"), "{logs}");
}

/// The image has what an ssh remote needs (dockerfiles/Dockerfile's system
/// stage): cutover in the container fetches from an ssh forge with a deploy
/// key and a known_hosts file mounted as secrets, through the image's own
/// OpenSSH client, and deploys the next push. The image has the system CA
/// store for https remotes too.
#[test]
fn an_ssh_remote_deploys_through_the_image_s_openssh_client() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    repo.commit("v1", &[("version", "v1")]);
    let forge = SshForge::start(dir.path());
    let bare = forge.publish(&repo.work, "app.git");
    std::fs::create_dir_all(dir.join("cfg")).unwrap();
    std::fs::create_dir_all(dir.join("srv")).unwrap();
    let port = free_port();
    std::fs::write(
        dir.join("cfg/cutover.toml"),
        format!(
            "[[listen]]\naddress = \"127.0.0.1:{port}\"\n\n\
             [app]\ncommand = [\"python3\", \"/apps/fdserver.py\"]\nstop_timeout = \"5s\"\n\n\
             [ready]\nhttp = \"http://127.0.0.1:{port}/healthz\"\ngrace = \"100ms\"\n\n\
             [control]\nsocket = \"/run/cutover.sock\"\n\n\
             [source]\nrepo = \"{url}\"\nroot = \"/srv/app\"\npoll = \"500ms\"\n\
             ssh_key = \"/run/secrets/deploy_key\"\nknown_hosts = \"/etc/cutover/known_hosts\"\n",
            url = forge.url("app.git"),
        ),
    )
    .unwrap();
    let mounts = [
        format!(
            "{}:/run/secrets/deploy_key:ro",
            forge.ed25519_key().display()
        ),
        format!(
            "{}:/etc/cutover/known_hosts:ro",
            forge.known_hosts().display()
        ),
        format!("{}:/srv/app", dir.join("srv").display()),
        format!("{}:/cfg:ro", dir.join("cfg").display()),
        format!("{}:/apps/fdserver.py:ro", app("fdserver.py")),
    ];
    let mut extra = vec!["-e", "CUTOVER_CONFIG=/cfg/cutover.toml"];
    for m in &mounts {
        extra.extend(["-v", m.as_str()]);
    }
    let c = Container::run(&extra, &[]);
    let serves = |version: &str| {
        wait_for(Duration::from_secs(60), || {
            (served_version(port).ok()? == version).then_some(())
        })
        .unwrap_or_else(|| panic!("{version} never served\n{}", c.logs()))
    };
    serves("v1");
    let v2 = repo.commit("v2", &[("version", "v2")]);
    git(
        &repo.work,
        &["push", "-q", "-f", bare.to_str().unwrap(), "main"],
    );
    serves("v2");
    let log = forge.log();
    assert!(log.contains("Accepted publickey"), "{log}");

    let out = c.exec(&["ssh", "-V"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("OpenSSH"), "{}", text(&out));
    let out = c.exec(&["test", "-s", "/etc/ssl/certs/ca-certificates.crt"]);
    assert!(out.status.success(), "no system CA store in the image");
    let out = c.exec(&["cutover", "status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["source"]["current"], v2.as_str(), "{status}");
}
