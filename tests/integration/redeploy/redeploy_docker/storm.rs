//! A redeploy that would repeat itself: the new image still does not fit
//! its commit (its Dockerfile installs the dependencies but forgets
//! `cutover fingerprint --write`), so its container finds the same commit
//! needing an image. Before the fix, each new container built and replaced
//! itself again: 174 containers in 40 s, names growing by the sha each
//! round. Now the new container refuses with one clear error after one
//! build, and the old release keeps serving.

use std::time::Duration;

use super::{ALLOW_CHANGE, Scene, image};
use crate::containers::dockercli::{docker, inspect, text};
use crate::fixture::git::Repo;
use crate::fixture::prelude::*;

/// `docker exec <container> cutover status --json`'s source part.
fn source_status(container: &str) -> serde_json::Value {
    let out = docker(&["exec", container, "cutover", "status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    json["source"].clone()
}

#[test]
fn a_new_image_that_does_not_fit_its_commit_is_built_once_and_refused() {
    let scene = Scene::new("storm");
    let repo = Repo::new(scene.dir.path());
    let base = format!("FROM {}\n", image());
    repo.commit(
        "v1",
        &[
            ("version", "v1"),
            ("requirements.txt", "a==1\n"),
            ("Dockerfile", &base),
        ],
    );
    repo.push();
    // The code volume is the host's, shared by every container, as with
    // compose: a new container sees v1 served and adopts it as its
    // baseline (no baseline is baked into the image).
    std::fs::create_dir_all(scene.dir.join("cfg")).unwrap();
    std::fs::create_dir_all(scene.dir.join("srv")).unwrap();
    scene.dir.write(
        "cfg/cutover.toml",
        &format!(
            "[app]\ncommand = [\"sh\", \"-c\", \"{}\"]\n\n\
             [source]\nrepo = \"/repo.git\"\nref = \"main\"\nroot = \"/srv/app\"\npoll = \"1s\"\n\n\
             [dependencies]\nfiles = [\"requirements.txt\"]\nbaseline = \"/tmp/no-baseline\"\n\n\
             [redeploy]\ndocker = {{ image = \"{}\", health_timeout = \"60s\", {ALLOW_CHANGE} }}\n",
            scene.app, scene.repository,
        ),
    );
    let cfg = format!("{}:/cfg:ro", scene.dir.join("cfg").display());
    let srv = format!("{}:/srv/app", scene.dir.join("srv").display());
    let remote = format!("{}:/repo.git", repo.remote.display());
    let run = docker(&[
        "run",
        "-d",
        "--network",
        "host",
        "--name",
        &scene.name,
        "-e",
        "CUTOVER_CONFIG=/cfg/cutover.toml",
        "-v",
        &cfg,
        "-v",
        &srv,
        "-v",
        &remote,
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        &image(),
    ]);
    assert!(run.status.success(), "docker run: {}", text(&run));
    let first = inspect(&scene.name, "{{.Id}}").unwrap();
    wait_for(Duration::from_secs(30), || {
        (source_status(&first)["current"].is_string()).then_some(())
    })
    .unwrap_or_else(|| panic!("v1 never served\n{}", scene.logs(&first)));

    // The dependencies change, and so does the Dockerfile: it installs them
    // (here: a RUN) but bakes no baseline.
    let v2 = repo.commit(
        "v2",
        &[
            ("version", "v2"),
            ("requirements.txt", "a==2\n"),
            (
                "Dockerfile",
                &format!("{base}RUN echo installing requirements\n"),
            ),
        ],
    );
    let _image = super::replace::RemoveImage(format!("{}:{}", scene.repository, &v2[..12]));
    repo.push();

    // One build, one new container: the first one replaced by it.
    wait_for(Duration::from_secs(120), || {
        (inspect(&first, "{{.State.Running}}").as_deref() == Some("false")).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "never replaced: {}\n{}",
            source_status(&first),
            scene.logs(&first)
        )
    });
    let second = wait_for(Duration::from_secs(30), || {
        inspect(&scene.name, "{{.Id}}").filter(|id| *id != first)
    })
    .unwrap_or_else(|| panic!("no new container named {}", scene.name));
    // The new container refuses to build for the same commit again.
    let why = wait_for(Duration::from_secs(60), || {
        let src = source_status(&second);
        (src["redeploy"]["state"] == "failed").then_some(src)
    })
    .unwrap_or_else(|| {
        panic!(
            "the new container never refused: {}\n{}\n{} containers, the longest name {} bytes",
            source_status(&second),
            scene.logs(&second),
            scene.containers().len(),
            scene
                .containers()
                .iter()
                .map(String::len)
                .max()
                .unwrap_or(0)
        )
    });
    let result = why["redeploy"]["last_result"].as_str().unwrap_or_default();
    assert!(
        result.contains(&format!("the image built for {v2}"))
            && result.contains("does not carry a baseline")
            && result.contains("cutover fingerprint --write"),
        "{why}"
    );
    assert_eq!(
        why["redeploy"]["retry_in_seconds"],
        serde_json::Value::Null,
        "{why}"
    );
    // Nothing more happens: no retry, no third container.
    std::thread::sleep(Duration::from_secs(10));
    let containers = scene.containers();
    assert_eq!(
        containers.len(),
        2,
        "the new one and its stopped predecessor, nothing else: {containers:?}"
    );
    assert!(
        containers.iter().all(|c| c.len() <= scene.name.len() + 30),
        "names stay bounded: {containers:?}"
    );
    let src = source_status(&second);
    assert_eq!(src["redeploy"]["attempts"], 1, "{src}");
    assert_ne!(src["current"], v2.as_str(), "v2 never hot-loaded: {src}");
    assert_eq!(
        inspect(&second, "{{.State.Running}}").as_deref(),
        Some("true")
    );
}
