//! Push access is not host root: a commit whose dependencies run code at
//! image build time (what `pip install -r requirements.txt` does for any
//! package a requirements file names) plants `/etc/ld.so.preload` in the
//! image. Every process of the new container then runs the commit's code
//! first, cutover as PID 1 included. The payload records who it runs as
//! and which engine sockets it can reach, on the code volume.
//!
//! With `[redeploy] docker` in the app container (the socket kept, the
//! default), the payload runs as root with the engine's socket: root on
//! the host. With `[redeploy] deployer`, the socket lives in a
//! `cutover deployer` container whose image no commit builds, and the new
//! app container runs as the deployer's numeric user with no socket, no
//! added capabilities, no `--privileged`, no engine variable: even when the
//! first container was started with all of those.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{SHA, SHORT, Scene, dockerfile_digest, image};
use crate::containers::dockercli::{docker, inspect, text};
use crate::fixture::prelude::*;

/// The commit's build-time code, as a preloaded library: on load, it writes
/// `/srv/app/evidence/<pid>` with its uid, effective capabilities,
/// `DOCKER_HOST` and whether each engine socket path accepts a connection.
const PAYLOAD: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

static const char *reach(const char *path) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) return "no";
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok ? "OPEN" : "no";
}

__attribute__((constructor)) static void payload(void) {
    char path[128];
    snprintf(path, sizeof path, "/srv/app/evidence/%d", (int)getpid());
    FILE *f = fopen(path, "w");
    if (!f) return;
    char comm[64] = "", line[256], cap[64] = "?";
    FILE *c = fopen("/proc/self/comm", "r");
    if (c) { if (fgets(comm, sizeof comm, c)) comm[strcspn(comm, "\n")] = 0; fclose(c); }
    FILE *s = fopen("/proc/self/status", "r");
    while (s && fgets(line, sizeof line, s))
        if (!strncmp(line, "CapEff:", 7)) sscanf(line + 7, "%63s", cap);
    if (s) fclose(s);
    const char *host = getenv("DOCKER_HOST");
    fprintf(f, "comm=%s uid=%d euid=%d capeff=%s docker_host=%s", comm, (int)getuid(),
            (int)geteuid(), cap, host ? host : "");
    const char *socks[] = {"/var/run/docker.sock", "/run/docker.sock",
                           "/host/var/run/docker.sock", NULL};
    for (int i = 0; socks[i]; i++) fprintf(f, " %s=%s", socks[i], reach(socks[i]));
    fprintf(f, "\n");
    fclose(f);
}
"#;

/// The app repository's Dockerfile, unchanged by the commit (so the
/// Dockerfile check passes): it installs the release's dependencies as
/// root, as dockerfiles/Dockerfile does with pip.
fn dockerfile() -> String {
    format!(
        "FROM {}\nCOPY . /srv/release\nRUN sh /srv/release/install-deps\n",
        image()
    )
}

/// The code volume: `releases/<SHA>` with the commit that changes the
/// dependencies, and a world-writable `evidence/`.
fn code_volume(dir: &TestDir) {
    std::fs::create_dir_all(dir.join("cfg")).unwrap();
    let release = dir.join(&format!("srv/releases/{SHA}"));
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(release.join("Dockerfile"), dockerfile()).unwrap();
    std::fs::write(release.join("requirements.txt"), "evil-package==1.0\n").unwrap();
    // What a package's setup.py can do at build time, as root.
    std::fs::write(
        release.join("install-deps"),
        "cp /srv/release/payload.so /usr/local/lib/payload.so\n\
         echo /usr/local/lib/payload.so > /etc/ld.so.preload\n",
    )
    .unwrap();
    let source = dir.join("payload.c");
    std::fs::write(&source, PAYLOAD).unwrap();
    let cc = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(release.join("payload.so"))
        .arg(&source)
        .output()
        .expect("cc");
    assert!(
        cc.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let evidence = dir.join("srv/evidence");
    std::fs::create_dir_all(&evidence).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&evidence, std::fs::Permissions::from_mode(0o777)).unwrap();
}

/// One line per process the payload ran in; waits until PID 1's is there.
fn evidence(dir: &Path) -> Vec<String> {
    wait_for(Duration::from_secs(30), || {
        let lines: Vec<String> = std::fs::read_dir(dir.join("srv/evidence"))
            .ok()?
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .map(|l| l.trim().to_string())
            .collect();
        lines
            .iter()
            .any(|l| l.starts_with("comm=cutover "))
            .then_some(lines)
    })
    .unwrap_or_else(|| panic!("the payload never ran in the new container's cutover"))
}

/// The app container: root, an added capability, no seccomp, the host's
/// /var/run (with the engine's socket in it) and DOCKER_HOST: all that an
/// operator may have given the first container, none of which a container
/// the deployer starts may keep.
fn run_app(scene: &Scene, config: &str, extra: &[&str]) {
    scene.dir.write("cfg/cutover.toml", config);
    let cfg = format!("{}:/cfg:ro", scene.dir.join("cfg").display());
    let srv = format!("{}:/srv/app", scene.dir.join("srv").display());
    let label = format!("cutover.dockerfile={}", dockerfile_digest(&dockerfile()));
    let image = image();
    let mut args = vec![
        "run",
        "-d",
        "--network",
        "host",
        "--name",
        &scene.name,
        "-l",
        &label,
        "-e",
        "CUTOVER_CONFIG=/cfg/cutover.toml",
        "-v",
        &cfg,
        "-v",
        &srv,
    ];
    args.extend_from_slice(extra);
    args.push(&image);
    let run = docker(&args);
    assert!(run.status.success(), "docker run: {}", text(&run));
    wait_for(SECS_20, || {
        scene.logs(&scene.name).contains("app ready").then_some(())
    })
    .unwrap_or_else(|| panic!("app never ready: {}", scene.logs(&scene.name)));
}

/// `cutover redeploy` for the commit, in `container`.
fn ask_redeploy(container: &str) -> std::process::Output {
    docker(&[
        "exec",
        container,
        "cutover",
        "redeploy",
        "--dir",
        &format!("/srv/app/releases/{SHA}"),
        "--changed",
        "requirements.txt",
    ])
}

/// Waits until a container of the new image runs under the app's name.
fn wait_for_new_image(scene: &Scene, trigger: &std::process::Output) {
    let new_image = format!("{}:{SHORT}", scene.repository);
    wait_for(Duration::from_secs(120), || {
        (inspect(&scene.name, "{{.Config.Image}} {{.State.Running}}")?
            == format!("{new_image} true"))
        .then_some(())
    })
    .unwrap_or_else(|| panic!("no new container: {}", text(trigger)));
}

#[test]
fn a_deployer_gives_a_commits_build_time_code_no_socket_and_no_root() {
    let mut scene = Scene::new("deployer");
    code_volume(&scene.dir);
    let deployer = format!("{}-trusted", scene.repository);
    scene.others.push(deployer.clone());
    // The deployer's file: what the new container may have is decided here.
    scene.dir.write(
        "cfg/deployer.toml",
        &format!(
            "[deployer]\nsocket = \"/run/deployer/deployer.sock\"\n\
             releases = \"/srv/app/releases\"\ncontainer = \"{}\"\nuser = \"1000:1000\"\n\
             docker = {{ image = \"{}\", health_timeout = \"60s\" }}\n",
            scene.name, scene.repository
        ),
    );
    std::fs::create_dir_all(scene.dir.join("run")).unwrap();
    let cfg = format!("{}:/cfg:ro", scene.dir.join("cfg").display());
    let srv = format!("{}:/srv/app", scene.dir.join("srv").display());
    let run = format!("{}:/run/deployer", scene.dir.join("run").display());
    let started = docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &deployer,
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        &cfg,
        "-v",
        &srv,
        "-v",
        &run,
        "--entrypoint",
        "cutover",
        &image(),
        "deployer",
        "--config",
        "/cfg/deployer.toml",
    ]);
    assert!(started.status.success(), "{}", text(&started));
    wait_for(SECS_20, || {
        scene
            .logs(&deployer)
            .contains("deployer waiting for requests")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("deployer never up: {}", scene.logs(&deployer)));

    run_app(
        &scene,
        &format!(
            "[app]\ncommand = [\"sh\", \"-c\", \"{}\"]\n\n\
             [redeploy]\ndeployer = \"/run/deployer/deployer.sock\"\n",
            scene.app
        ),
        &[
            // (--privileged cannot start on every engine, this one's
            // included; confine's unit test covers it.)
            "--cap-add",
            "SYS_ADMIN",
            "--security-opt",
            "seccomp=unconfined",
            "--group-add",
            "0",
            "-v",
            &run,
            "-v",
            "/var/run:/host/var/run",
            "-e",
            "DOCKER_HOST=unix:///host/var/run/docker.sock",
        ],
    );
    let old_id = inspect(&scene.name, "{{.Id}}").unwrap();
    let trigger = ask_redeploy(&scene.name);
    wait_for_new_image(&scene, &trigger);
    let deployer_log = scene.logs(&deployer);
    assert!(
        deployer_log.contains("redeploy requested"),
        "{deployer_log}"
    );
    assert_ne!(inspect(&scene.name, "{{.Id}}").unwrap(), old_id);
    let old_state = wait_for(Duration::from_secs(60), || {
        inspect(&old_id, "{{.State.Running}} {{.State.ExitCode}}")
            .filter(|s| s.starts_with("false"))
    });
    assert_eq!(
        old_state.as_deref(),
        Some("false 0"),
        "the old one stops gracefully"
    );
    assert!(scene.logs(&old_id).contains("graceful stop"));

    // The payload ran, in every process of the new container, and got
    // nothing of what the first container had.
    let lines = evidence(scene.dir.path());
    for line in &lines {
        assert!(line.contains(" uid=1000 euid=1000 "), "{line}");
        assert!(line.contains(" capeff=0000000000000000 "), "{line}");
        assert!(line.contains(" docker_host= "), "{line}");
        assert!(
            !line.contains("OPEN"),
            "an engine socket is reachable: {line}"
        );
    }
    let new = |format: &str| inspect(&scene.name, format).unwrap_or_default();
    assert_eq!(new("{{.Config.User}}"), "1000:1000");
    assert_eq!(new("{{.HostConfig.Privileged}}"), "false");
    assert_eq!(new("{{json .HostConfig.CapAdd}}"), "null");
    assert_eq!(new("{{json .HostConfig.GroupAdd}}"), "null");
    let security = new("{{json .HostConfig.SecurityOpt}}");
    assert!(!security.contains("unconfined"), "{security}");
    let mounts = new("{{range .Mounts}}{{.Destination}} {{end}}");
    assert!(!mounts.contains("/host/var/run"), "{mounts}");
    assert!(mounts.contains("/run/deployer"), "{mounts}");
    assert!(!new("{{json .Config.Env}}").contains("DOCKER_HOST"));

    // cutover runs as uid 1000 there: its control socket moved to /tmp,
    // where `docker exec` clients (the same user) find it.
    let status = docker(&["exec", &scene.name, "cutover", "status", "--json"]);
    assert!(status.status.success(), "{}", text(&status));

    // The new container (uid 1000) still reaches the deployer, which will
    // not build the same commit again for the image built for it.
    let again = ask_redeploy(&scene.name);
    let said = text(&again);
    assert_eq!(again.status.code(), Some(1), "{said}");
    assert!(
        said.contains("does not carry a baseline for"),
        "the storm guard answers through the deployer too: {said}"
    );
    eprintln!("payload in the new container: {lines:?}");
}

/// The single-container mode, as docs/security.md says: the
/// same commit gets root and the engine's socket. Kept as a test so the
/// table in docs/security.md stays true.
#[test]
fn docker_mode_with_the_socket_kept_gives_the_commit_root_and_the_engine() {
    let scene = Scene::new("socket-kept");
    code_volume(&scene.dir);
    run_app(
        &scene,
        &format!(
            "[app]\ncommand = [\"sh\", \"-c\", \"{}\"]\n\n\
             [redeploy]\ndocker = {{ image = \"{}\", health_timeout = \"60s\" }}\n",
            scene.app, scene.repository
        ),
        &["-v", "/var/run/docker.sock:/var/run/docker.sock"],
    );
    let trigger = ask_redeploy(&scene.name);
    wait_for_new_image(&scene, &trigger);
    let lines = evidence(scene.dir.path());
    let pid1 = lines
        .iter()
        .find(|l| l.starts_with("comm=cutover "))
        .unwrap();
    assert!(pid1.contains(" uid=0 "), "{pid1}");
    assert!(pid1.contains("/var/run/docker.sock=OPEN"), "{pid1}");
}
