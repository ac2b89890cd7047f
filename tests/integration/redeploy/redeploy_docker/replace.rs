//! Health-gated replace: the container under test publishes its app's port
//! on the host (`-p 127.0.0.1:PORT:8000`, on a user-defined bridge), so the
//! new container cannot start beside it. The replacer container stops it,
//! starts the new one and rolls back if that is not healthy. A prober sends
//! a request every 20 ms meanwhile, to measure the gap a client sees and
//! how its connections fail during it.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{SHA, SHORT, Scene, image};
use crate::containers::dockercli::{docker, inspect, text};
use crate::fixture::git::Repo;
use crate::fixture::prelude::*;

/// A user-defined bridge network, removed when dropped (after the scene's
/// containers: declare it first).
struct Network(String);

impl Network {
    fn create(tag: &str) -> Network {
        let name = format!("cutover-replace-{}-{tag}", std::process::id());
        let out = docker(&["network", "create", &name]);
        assert!(out.status.success(), "network create: {}", text(&out));
        Network(name)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.0]);
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap().port()
}

/// `GET /marker` on the host port: the status line and body, or how the
/// connection failed ("refused", "closed", "reset", "timeout").
fn get(port: u16) -> Result<String, String> {
    get_path(port, "/marker")
}

fn get_path(port: u16, path: &str) -> Result<String, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let kind = |e: std::io::Error| match e.kind() {
        ErrorKind::ConnectionRefused => "refused".to_string(),
        ErrorKind::ConnectionReset => "reset".to_string(),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout".to_string(),
        other => format!("{other:?}"),
    };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(kind)?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let request = format!("GET {path} HTTP/1.0\r\n\r\n");
    s.write_all(request.as_bytes()).map_err(kind)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(kind)?;
    if answer.is_empty() {
        return Err("closed".into());
    }
    let status = answer.lines().next().unwrap_or_default().to_string();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
    Ok(format!("{status} {body}"))
}

/// When a request was sent, and its answer or how it failed.
type Probes = Vec<(Instant, Result<String, String>)>;

/// Requests every 20 ms until stopped: each answer or failure, timed.
struct Prober {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Probes>>,
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    fn start(port: u16) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let at = Instant::now();
                let r = get(port);
                v.lock().unwrap().push((at, r));
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Prober {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// The longest run of failed requests (first failure to next answer),
    /// and how they failed.
    fn finish(mut self) -> (Duration, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let seen = self.seen.lock().unwrap();
        let (mut longest, mut since, mut kinds) = (Duration::ZERO, None, Vec::<String>::new());
        for (at, r) in seen.iter() {
            match r {
                Err(kind) => {
                    since.get_or_insert(*at);
                    if !kinds.contains(kind) {
                        kinds.push(kind.clone());
                    }
                }
                Ok(_) => {
                    if let Some(first) = since.take() {
                        longest = longest.max(*at - first);
                    }
                }
            }
        }
        (longest, kinds)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The app: python's http.server on 8000, serving /srv (where the new
/// image has its marker; the old one answers 404).
const APP: &str = "echo app ready; exec python3 -m http.server 8000 --directory /srv";

/// A scene on its own bridge network, publishing 8000 on a free host port.
fn start(network: &Network, tag: &str, dockerfile: &str) -> (Scene, u16) {
    let mut scene = Scene::new(tag);
    scene.network = network.0.clone();
    scene.app = APP.to_string();
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8000");
    scene.start_with(dockerfile, super::ALLOW_CHANGE, &["-p", &publish]);
    let first = wait_for(SECS_20, || get(port).ok()).unwrap_or_else(|| {
        panic!(
            "the old container never served\n{}",
            scene.logs(&scene.name)
        )
    });
    assert!(
        first.contains(" 404 "),
        "the old image has no marker: {first}"
    );
    (scene, port)
}

/// The replacer's exit code and log, once it has finished.
fn replacer_result(scene: &Scene, exec: &std::process::Output) -> (String, String) {
    replacer_result_of(
        scene,
        &format!("{}-replace-{SHORT}", scene.name),
        &text(exec),
    )
}

fn replacer_result_of(scene: &Scene, replacer: &str, context: &str) -> (String, String) {
    let code = wait_for(Duration::from_secs(120), || {
        inspect(replacer, "{{.State.Status}} {{.State.ExitCode}}")
            .and_then(|s| s.strip_prefix("exited ").map(str::to_string))
    })
    .unwrap_or_else(|| panic!("the replacer never finished\n{context}"));
    (code, scene.logs(replacer))
}

/// "gap of N ms" in a result line.
fn gap_ms(log: &str) -> u64 {
    let at = log.rfind("gap of ").expect("a gap in the result") + "gap of ".len();
    log[at..].split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn published_ports_are_replaced_health_gated_with_a_measured_gap() {
    let network = Network::create("ok");
    let dockerfile = format!("FROM {}\nCOPY marker /srv/marker\n", image());
    let (scene, port) = start(&network, "gated", &dockerfile);
    let old_id = inspect(&scene.name, "{{.Id}}").unwrap();
    let prober = Prober::start(port);
    let exec = scene.redeploy();
    let trigger = text(&exec);
    assert!(trigger.contains("health-gated replace"), "{trigger}");
    assert!(
        trigger.contains("replacing: container stopping for a health-gated replace"),
        "the result before the stop: {trigger}"
    );
    let (code, log) = replacer_result(&scene, &exec);
    assert_eq!(code, "0", "{log}\n{trigger}");
    assert!(log.contains("replaced: "), "{log}");
    let gap = gap_ms(&log);
    // The new image serves on the same host port.
    let served = wait_for(SECS_20, || get(port).ok().filter(|a| a.contains(" 200 ")))
        .unwrap_or_else(|| panic!("the new container does not serve\n{log}"));
    assert!(served.ends_with(&format!("release {SHA}")), "{served}");
    std::thread::sleep(Duration::from_millis(200));
    let (outage, kinds) = prober.finish();
    eprintln!(
        "health-gated replace: gap {gap} ms (replacer: stop requested -> new healthy); \
         clients saw {} ms without an answer, failures: {kinds:?}",
        outage.as_millis()
    );
    assert!(outage.as_millis() > 0, "a gap is expected: {kinds:?}");

    // The old container is parked, stopped, its restart policy off; the new
    // one has its name, the new image and the same port.
    let parked = format!("/{}-replaced-{}", scene.name, &old_id[..12]);
    assert_eq!(
        inspect(
            &old_id,
            "{{.State.Running}} {{.Name}} {{.HostConfig.RestartPolicy.Name}}"
        ),
        Some(format!("false {parked} no"))
    );
    let new = |format: &str| inspect(&scene.name, format).unwrap_or_default();
    assert_ne!(new("{{.Id}}"), old_id);
    assert_eq!(new("{{.State.Running}}"), "true");
    assert_eq!(
        new("{{.Config.Image}}"),
        format!("{}:{SHORT}", scene.repository)
    );
    assert_eq!(new("{{.HostConfig.RestartPolicy.Name}}"), "unless-stopped");
    let networks = new("{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}");
    assert_eq!(networks.trim(), network.0);
}

#[test]
fn a_failed_new_container_is_rolled_back_and_the_old_one_serves_again() {
    let network = Network::create("back");
    let dockerfile = format!(
        "FROM {}\nENTRYPOINT [\"sh\", \"-c\", \"echo boot failed; exit 3\"]\n",
        image()
    );
    let (scene, port) = start(&network, "rollback", &dockerfile);
    let old_id = inspect(&scene.name, "{{.Id}}").unwrap();
    let prober = Prober::start(port);
    let exec = scene.redeploy();
    let (code, log) = replacer_result(&scene, &exec);
    assert_eq!(code, "3", "rolled back: {log}\n{}", text(&exec));
    assert!(log.contains("rolled back: the new container"), "{log}");
    assert!(
        log.contains("exit code 3") && log.contains("boot failed"),
        "{log}"
    );
    let gap = gap_ms(&log);
    // The old container, under its name, serves on the port again.
    assert_eq!(
        inspect(&scene.name, "{{.Id}} {{.State.Running}}"),
        Some(format!("{old_id} true"))
    );
    let served = wait_for(SECS_20, || get(port).ok());
    assert!(
        served.is_some_and(|a| a.contains(" 404 ")),
        "old app serves"
    );
    let (outage, kinds) = prober.finish();
    eprintln!(
        "health-gated replace rolled back: gap {gap} ms (stop requested -> old running \
         again); clients saw {} ms without an answer, failures: {kinds:?}",
        outage.as_millis()
    );
    // The failed new container is gone; only the old one and the replacer.
    let new_name = format!("{}-{SHORT}", scene.name);
    assert_eq!(inspect(&new_name, "{{.Id}}"), None, "{log}");
    let mut left = scene.containers();
    left.sort();
    assert_eq!(
        left,
        [
            scene.name.clone(),
            format!("{}-replace-{SHORT}", scene.name)
        ]
    );

    // The restarted old container does not try the same commit again.
    wait_for(SECS_20, || {
        (docker(&["exec", &scene.name, "true"]).status.success()).then_some(())
    });
    let again = scene.redeploy();
    let output = text(&again);
    assert_eq!(again.status.code(), Some(1), "{output}");
    assert!(output.contains("was rolled back before"), "{output}");
    assert_eq!(
        inspect(&scene.name, "{{.Id}} {{.State.Running}}"),
        Some(format!("{old_id} true"))
    );
}

/// Through the deploy pipeline: the container follows a bare repository; a
/// pushed commit that changes `requirements.txt` makes its supervisor hand
/// the redeploy to the replacer and say so in its status and log before its
/// SIGTERM, and the new container serves the commit on the same port.
#[test]
fn a_pushed_dependency_change_is_replaced_through_the_pipeline() {
    let network = Network::create("pipe");
    let scene = Scene::new("pipe");
    let repo = Repo::new(scene.dir.path());
    let dockerfile = format!("FROM {}\n", image());
    repo.commit(
        "v1",
        &[
            ("version", "v1"),
            ("requirements.txt", "a==1\n"),
            ("Dockerfile", &dockerfile),
        ],
    );
    repo.push();
    // The baseline is not mounted: each container adopts its first release.
    std::fs::create_dir_all(scene.dir.join("cfg")).unwrap();
    scene.dir.write(
        "cfg/cutover.toml",
        &format!(
            "[app]\ncommand = [\"python3\", \"-m\", \"http.server\", \"8000\", \
             \"--directory\", \"/srv/app/current\"]\n\n\
             [source]\nrepo = \"/repo.git\"\nref = \"main\"\nroot = \"/srv/app\"\npoll = \"1s\"\n\n\
             [dependencies]\nfiles = [\"requirements.txt\"]\nbaseline = \"/tmp/no-baseline\"\n\n\
             [redeploy]\ndocker = {{ image = \"{}\", health_timeout = \"60s\", {} }}\n",
            scene.repository,
            super::ALLOW_CHANGE
        ),
    );
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8000");
    let cfg = format!("{}:/cfg:ro", scene.dir.join("cfg").display());
    let remote = format!("{}:/repo.git", repo.remote.display());
    let run = docker(&[
        "run",
        "-d",
        "--network",
        &network.0,
        "--name",
        &scene.name,
        "-p",
        &publish,
        "-e",
        "CUTOVER_CONFIG=/cfg/cutover.toml",
        "-v",
        &cfg,
        "-v",
        &remote,
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        &image(),
    ]);
    assert!(run.status.success(), "docker run: {}", text(&run));
    let old_id = inspect(&scene.name, "{{.Id}}").unwrap();
    let version = || {
        get_path(port, "/version")
            .ok()
            .and_then(|a| a.rsplit(' ').next().map(str::to_string))
    };
    wait_for(Duration::from_secs(30), || {
        (version().as_deref() == Some("v1")).then_some(())
    })
    .unwrap_or_else(|| panic!("v1 never served\n{}", scene.logs(&scene.name)));

    let v2 = repo.commit("v2", &[("version", "v2"), ("requirements.txt", "a==2\n")]);
    let _image = RemoveImage(format!("{}:{}", scene.repository, &v2[..12]));
    repo.push();
    // Its status says "replacing" until its container stops.
    let mut states = Vec::<String>::new();
    let stopped = wait_for(Duration::from_secs(120), || {
        let out = docker(&["exec", &old_id, "cutover", "status", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let redeploy = &json["source"]["redeploy"];
        if let Some(state) = redeploy["state"].as_str() {
            let seen = format!(
                "{state}: {}",
                redeploy["last_result"].as_str().unwrap_or("")
            );
            if states.last() != Some(&seen) {
                states.push(seen);
            }
        }
        (inspect(&old_id, "{{.State.Running}}").as_deref() == Some("false")).then_some(())
    });
    assert!(
        stopped.is_some(),
        "never replaced: {states:?}\n{}",
        scene.logs(&old_id)
    );
    let logs = scene.logs(&old_id);
    assert!(
        logs.contains("redeploy handed to the replacer")
            && logs.contains("replacing: container stopping for a health-gated replace"),
        "{logs}"
    );
    let replaced = wait_for(Duration::from_secs(60), || {
        (version().as_deref() == Some("v2")).then_some(())
    });
    let replacer = format!("{}-replace-{}", scene.name, &v2[..12]);
    assert!(
        replaced.is_some(),
        "v2 never served: {}\n{logs}",
        scene.logs(&replacer)
    );
    let (code, result) = replacer_result_of(&scene, &replacer, &logs);
    assert_eq!(code, "0", "{result}");
    eprintln!(
        "through the pipeline: status went {states:?}; replacer: {}",
        result.lines().last().unwrap_or("")
    );
    assert!(
        states
            .iter()
            .any(|s| s.starts_with("replacing: replacing: container stopping")),
        "status showed {states:?}"
    );
    assert_ne!(inspect(&scene.name, "{{.Id}}"), Some(old_id));
}

/// Removes an image when dropped.
pub(super) struct RemoveImage(pub(super) String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.0]);
    }
}
