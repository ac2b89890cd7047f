//! Redeploy benchmark (`[redeploy] docker`): how long a dependency change
//! takes from `git push` to a new container serving the new code, against
//! the image build alone. Prints figures; fails only when a request failed
//! or the redeploy did not happen.
//!
//! Per round, on a real Docker engine with the app image of
//! dockerfiles/Dockerfile (`CUTOVER_APP_IMAGE`, default
//! cutover-app-test:latest from scripts/build-test-image):
//! 1. a container runs the example gunicorn app from a bare repository on
//!    the host (`[source] repo = "/repo.git"`, pushes are watched), with the
//!    engine's socket and `[redeploy] docker` (the release's own Dockerfile:
//!    the app image + its requirements, installed offline, and the baseline);
//! 2. a probe loop GETs `/` every 5 ms (a fresh connection each) and counts
//!    failures;
//! 3. a commit that changes requirements.txt and the app's version is
//!    pushed. Measured from the start of `git push`: the first answer of the
//!    new version (the new container serves: it shares the port with
//!    SO_REUSEPORT while the old one still serves), and the moment the old
//!    container has stopped (hand-over done, after the engine-side settle
//!    time of 5 s without a HEALTHCHECK);
//! 4. the same `docker build` of that release run by hand (`--no-cache`,
//!    legacy builder, `--network host`): the build time alone.
//!
//! Three setups, ROUNDS rounds each:
//! - `host`: `--network host`, `[[listen]] reuse_port` (the new container
//!   binds the same port beside the old one);
//! - `holder`: a user-defined bridge network, a `cutover hold` container
//!   publishing the port with `-p`, the app container (no network) taking
//!   the socket from it (`[[listen]] from`): side by side on one socket;
//! - `no holder`: the same bridge network, the app container publishing the
//!   port itself: a health-gated replace (stop old, start new), with a gap.
//!
//! Target: push -> new container serving <= build + 5 s, no failed request
//! (except `no holder`, whose gap is measured).
//! Run with `cargo bench --bench redeploy` (about a minute) after
//! `scripts/build-test-image`; without a Docker engine it says so and exits 0.
//! Containers, images and temp dirs it makes are removed at the end and on
//! panic.

use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use support::fixture::git::Repo;
use support::fixture::load::Load;
use support::http::{get_root, word};
use support::{TempDir, free_port, install_cleanup, machine, ms, p50, sleep};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const ROUNDS: usize = 2;

/// Where the port lives; see the module doc.
#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Host,
    Holder,
    NoHolder,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Host => "host + reuse_port",
            Setup::Holder => "bridge + holder",
            Setup::NoHolder => "bridge, -p, no holder",
        }
    }
}
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// Bounds of the probe loop, far beyond a round (REDEPLOY_TIMEOUT and two
/// minutes of waiting for the containers).
const PROBE_MAX: usize = 150_000;
const PROBE_TIME: Duration = Duration::from_secs(600);
const REDEPLOY_TIMEOUT: Duration = Duration::from_secs(300);

/// Containers and images made here, removed at the end and on panic.
static MADE: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());

fn docker_client() -> String {
    std::env::var("DOCKER").unwrap_or_else(|_| "docker".to_string())
}

fn docker(args: &[&str]) -> Output {
    Command::new(docker_client())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the docker client")
}

fn ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn inspect(what: &str, format: &str) -> Option<String> {
    let out = docker(&["inspect", "-f", format, what]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn remove_made() {
    let made = std::mem::take(&mut *MADE.lock().unwrap_or_else(|e| e.into_inner()));
    for (kind, name) in made.iter().rev() {
        match *kind {
            "containers" => {
                let filter = format!("name=^/{name}");
                let out = docker(&["ps", "-aq", "--filter", &filter]);
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = docker(&["rm", "-f", "-v", id]);
                }
            }
            "networks" => {
                let _ = docker(&["network", "rm", name]);
            }
            _ => {
                let out = docker(&["images", "-q", name]);
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = docker(&["rmi", "-f", id]);
                }
            }
        }
    }
}

/// "hello from v2 pid ..." -> "v2", with the benches' short timeouts.
fn version(port: u16) -> Result<String, String> {
    get_root(port).map(|b| word(&b, 2))
}

struct Round {
    to_new: Duration,
    to_handover: Duration,
    cutover_build: Option<f64>,
    build: Duration,
    requests: usize,
    failed: Vec<String>,
}

fn round(n: usize, image: &str, setup: Setup) -> Round {
    let tmp = TempDir::new("cutover-bench-redeploy");
    let dir = tmp.path();
    let id = format!("cutover-bench-redeploy-{}-{n}", std::process::id());
    MADE.lock().unwrap().push(("images", id.clone()));
    MADE.lock().unwrap().push(("containers", id.clone()));
    if setup != Setup::Host {
        ok(&["network", "create", &id]);
        MADE.lock().unwrap().push(("networks", id.clone()));
    }
    let port = free_port();
    let example = std::fs::read_to_string(format!("{REPO}/examples/gunicorn/app/app.py")).unwrap();
    let requirements =
        std::fs::read_to_string(format!("{REPO}/examples/gunicorn/requirements.txt")).unwrap();
    let dockerfile = format!(
        "FROM {image}\n\
         COPY requirements.txt /build/deps/requirements.txt\n\
         RUN /opt/venv/bin/pip install --no-index --no-input --disable-pip-version-check \
         -r /build/deps/requirements.txt \
         && cutover fingerprint /build/deps --write /etc/cutover/dependencies\n"
    );

    // The repository: v1 with the image's requirements.
    std::fs::create_dir_all(dir.join("srv")).unwrap();
    std::fs::create_dir_all(dir.join("cfg")).unwrap();
    let repo = Repo::new(dir);
    repo.commit(
        "v1",
        &[
            ("app.py", &example),
            ("requirements.txt", &requirements),
            ("Dockerfile", &dockerfile),
        ],
    );
    repo.push();

    let listen = match setup {
        Setup::Host => format!("address = \"127.0.0.1:{port}\"\nreuse_port = true"),
        Setup::Holder => "from = \"unix:/run/cutover/sockets\"".to_string(),
        Setup::NoHolder => "address = \"0.0.0.0:8000\"".to_string(),
    };
    let config = format!(
        "[[listen]]\nname = \"http\"\n{listen}\n\n\
         [app]\ncommand = [\"/opt/venv/bin/gunicorn\", \"--config\", \"/etc/cutover/gunicorn.conf.py\", \
         \"--workers\", \"2\", \"app:app\"]\nstop_timeout = \"10s\"\nforward_to = \"main\"\n\
         reload_strategy = \"overlap\"\n\n\
         [ready]\nnotify = true\ntimeout = \"30s\"\n\n\
         [source]\nrepo = \"/repo.git\"\nref = \"main\"\nroot = \"/srv/app\"\n\n\
         [dependencies]\nfiles = [\"requirements.txt\"]\n\n\
         [redeploy]\ndocker = {{ image = \"{id}\", build_network = \"host\", health_timeout = \"2m\" }}\n"
    );
    std::fs::write(dir.join("cfg/cutover.toml"), config).unwrap();
    let v = |p: &str, c: &str| format!("{}:{c}", dir.join(p).display());
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let publish = format!("127.0.0.1:{port}:8000");
    let sockets = v("run", "/run/cutover");
    if setup == Setup::Holder {
        let holder = format!("{id}-holder");
        MADE.lock().unwrap().push(("containers", holder.clone()));
        ok(&[
            "run",
            "-d",
            "--name",
            &holder,
            "--network",
            &id,
            "-p",
            &publish,
            "--sysctl",
            "net.ipv4.tcp_migrate_req=1",
            "-v",
            &sockets,
            "--entrypoint",
            "cutover",
            image,
            "hold",
            "--listen",
            "http=0.0.0.0:8000",
            "--at",
            "/run/cutover/sockets",
        ]);
    }
    let mut args: Vec<&str> = vec!["run", "-d"];
    match setup {
        Setup::Host => args.extend(["--network", "host"]),
        Setup::Holder => args.extend(["--network", "none", "-v", &sockets]),
        Setup::NoHolder => args.extend(["--network", &id, "-p", &publish]),
    }
    let srv = v("srv", "/srv/app");
    let cfg = v("cfg", "/cfg:ro");
    let repo_mount = v("remote.git", "/repo.git");
    args.extend([
        "--name",
        &id,
        "-e",
        "CUTOVER_CONFIG=/cfg/cutover.toml",
        "-v",
        &srv,
        "-v",
        &cfg,
        "-v",
        &repo_mount,
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        image,
    ]);
    let old_id = ok(&args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while version(port).as_deref() != Ok("v1") {
        assert!(
            Instant::now() < deadline,
            "v1 never served: {}",
            ok(&["logs", &id])
        );
        sleep(Duration::from_millis(20));
    }

    let load = Load::spawn(move || version(port), PROBE_EVERY, PROBE_MAX, PROBE_TIME);
    sleep(Duration::from_millis(300));

    // The dependency change.
    let sha = repo.commit(
        "v2 with new requirements",
        &[
            (
                "app.py",
                &example.replace("VERSION = \"v1\"", "VERSION = \"v2\""),
            ),
            (
                "requirements.txt",
                &format!("{requirements}# bench: a dependency change\n"),
            ),
        ],
    );
    let pushed = Instant::now();
    repo.push();
    let stopped_at = loop {
        if inspect(&old_id, "{{.State.Running}}").as_deref() == Some("false") {
            break Instant::now();
        }
        assert!(
            pushed.elapsed() < REDEPLOY_TIMEOUT,
            "the old container was never replaced: {}",
            ok(&["logs", &old_id])
        );
        sleep(Duration::from_millis(20));
    };
    // The new container under the old name serves v2.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let new_id = inspect(&id, "{{.Id}}").unwrap_or_default();
        if new_id != old_id && !new_id.is_empty() && version(port).as_deref() == Ok("v2") {
            break;
        }
        assert!(Instant::now() < deadline, "no new container serving v2");
        sleep(Duration::from_millis(20));
    }
    sleep(Duration::from_millis(500));
    let probed = load.finish();
    let first_new = probed.first_served("v2").expect("v2 was never served");
    // cutover logs to stderr, which `docker logs` passes on as its own stderr
    let logs = docker(&["logs", &old_id]);
    let old_logs = String::from_utf8_lossy(&logs.stderr).into_owned();
    // "redeploy: image built image=... seconds=1.23"
    let cutover_build = old_logs
        .lines()
        .find(|l| l.contains("redeploy: image built"))
        .and_then(|l| l.split("seconds=").nth(1))
        .and_then(|s| s.split_whitespace().next()?.parse().ok());

    // The build alone: the same release, the same Dockerfile, by hand.
    let context = dir.join("context");
    std::fs::create_dir_all(&context).unwrap();
    let archive = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "git -C {} archive {sha} | tar -x -C {}",
            repo.remote.display(),
            context.display()
        ))
        .status()
        .unwrap();
    assert!(archive.success());
    let tag = format!("{id}:by-hand");
    let t0 = Instant::now();
    let out = Command::new(docker_client())
        .env("DOCKER_BUILDKIT", "0")
        .args([
            "build",
            "-q",
            "--no-cache",
            "--force-rm",
            "--network",
            "host",
        ])
        .args(["-t", &tag])
        .arg(&context)
        .output()
        .unwrap();
    let build = t0.elapsed();
    assert!(
        out.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    remove_made();
    Round {
        to_new: first_new.duration_since(pushed),
        to_handover: stopped_at.duration_since(pushed),
        cutover_build,
        build,
        requests: probed.requests(),
        failed: probed.failed,
    }
}

fn main() {
    install_cleanup();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        remove_made();
        default(info);
    }));
    let client = docker_client();
    let engine = Command::new(&client)
        .args([
            "version",
            "-f",
            "{{.Server.Version}} (API {{.Server.APIVersion}})",
        ])
        .output();
    let engine = match engine {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        _ => {
            println!(
                "redeploy benchmark skipped: no Docker engine answers `{client} version` \
                 (run scripts/setup-docker, or set DOCKER to the client)"
            );
            return;
        }
    };
    let image =
        std::env::var("CUTOVER_APP_IMAGE").unwrap_or_else(|_| "cutover-app-test:latest".into());
    if inspect(&image, "{{.Id}}").is_none() {
        println!(
            "redeploy benchmark skipped: no image {image} (run scripts/build-test-image first)"
        );
        return;
    }
    println!("cutover redeploy benchmark: [redeploy] docker on engine {engine}, image {image}");
    println!("machine: {}", machine());
    println!();
    println!(
        "{:<22} | {:>5} | {:>19} | {:>19} | {:>11} | {:>13} | {:>10} | {:>12}",
        "setup",
        "round",
        "push -> new serving",
        "push -> old stopped",
        "build alone",
        "difference",
        "cutover's",
        "failed"
    );
    println!(
        "{:<22} | {:>5} | {:>19} | {:>19} | {:>11} | {:>13} | {:>10} | {:>12}",
        "", "", "ms", "ms", "ms", "serving-build", "build ms", "requests"
    );
    let mut zero_loss_failed = 0;
    let mut summaries = Vec::new();
    for setup in [Setup::Host, Setup::Holder, Setup::NoHolder] {
        let mut rows = Vec::new();
        for n in 0..ROUNDS {
            let r = round(n, &image, setup);
            println!(
                "{:<22} | {:>5} | {:>19.0} | {:>19.0} | {:>11.0} | {:>13.0} | {:>10} | {:>12}",
                setup.name(),
                n + 1,
                ms(r.to_new),
                ms(r.to_handover),
                ms(r.build),
                ms(r.to_new) - ms(r.build),
                r.cutover_build
                    .map(|s| format!("{:.0}", s * 1000.0))
                    .unwrap_or_else(|| "?".into()),
                format!("{}/{}", r.failed.len(), r.requests)
            );
            if let Some(first) = r.failed.first() {
                println!("  first failure: {first}");
            }
            rows.push(r);
        }
        let col = |f: &dyn Fn(&Round) -> f64| p50(&rows.iter().map(f).collect::<Vec<_>>());
        let failed: usize = rows.iter().map(|r| r.failed.len()).sum();
        let requests: usize = rows.iter().map(|r| r.requests).sum();
        if setup != Setup::NoHolder {
            zero_loss_failed += failed;
        }
        summaries.push(format!(
            "{}: push -> new serving {:.0} ms, build alone {:.0} ms, push -> old stopped {:.0} ms, {failed} of {requests} requests failed",
            setup.name(),
            col(&|r| ms(r.to_new)),
            col(&|r| ms(r.build)),
            col(&|r| ms(r.to_handover)),
        ));
    }
    println!();
    println!(
        "medians (a GET / every {} ms, a fresh connection each):",
        PROBE_EVERY.as_millis()
    );
    for line in &summaries {
        println!("  {line}");
    }
    remove_made();
    assert_eq!(
        zero_loss_failed, 0,
        "requests failed during a side-by-side redeploy"
    );
}
