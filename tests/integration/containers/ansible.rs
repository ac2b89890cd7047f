//! examples/ansible for real: ansible-core (scripts/setup-python's venv)
//! runs the shipped playbook and inventory with `ansible_connection: local`
//! against a real engine, as the example's README walks a newcomer through
//! it, from an empty code volume to image deploys, under load through the
//! holder's published port.
//!
//! Owns the end-to-end proof of issue 18: every path the playbook has ends
//! with 0 failed or hung requests (a probe with a 10 s timeout per request
//! counts a hung one; wrk alone does not), the expected code served,
//! `current` where it should be and `docker ps` showing one app container
//! from the expected image. The paths: the first deploy from an empty
//! volume; code-only deploys by `reload_via` exec and by touch (the app
//! repository has its own Dockerfile, examples/ansible/app/Dockerfile,
//! whose baseline covers it: a code-only commit is hot-reloaded, not sent
//! to the image path); a release that raises at import; `--tags deps`; a
//! dependency change with a real image build; and one whose new container
//! never gets healthy (ready and serving, then removed: the holder must
//! hand its users back to the old container).
//!
//! The README's commands are mirrored, not parsed: [`README_COMMANDS`]
//! lists each, checked to appear verbatim in the README, with what the test
//! runs for it. The names a test needs unique (compose project, container,
//! image, paths) go in as extra vars; everything else is the inventory as
//! shipped. The containers come from examples/compose's holder file, run
//! with Debian's docker-compose 1.29 as the README says, through
//! compose_holder's `Project`, which removes them, their volume and network
//! on drop; [`Scene`] removes what the playbook made besides (containers
//! and images named after the project).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::containers::dockercli::{bounded, docker, docker_build, inspect, text};
use crate::containers::e2e::app_py;
use crate::fixture::git::{Repo, git};
use crate::fixture::prelude::*;
use crate::sockets::compose_holder::{Compose, Migrate, Project, SERIAL};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ansible");
const README: &str = include_str!("../../../examples/ansible/README.md");
const REQUIREMENTS: &str = include_str!("../../../examples/gunicorn/requirements.txt");
const GUNICORN_CONF: &str = include_str!("../../../examples/gunicorn/gunicorn.conf.py");
const DOCKERFILE: &str = include_str!("../../../examples/ansible/app/Dockerfile");
const DOCKERIGNORE: &str = include_str!("../../../examples/ansible/app/.dockerignore");

/// The README's commands, each with what this test runs for it.
const README_COMMANDS: &[(&str, &str)] = &[
    (
        "apt-get install -y docker.io docker-compose git python3-venv",
        "scripts/setup-docker installs them",
    ),
    ("python3 -m venv /opt/ansible", "scripts/setup-python"),
    (
        "/opt/ansible/bin/pip install ansible-core==2.19.14",
        "scripts/setup-python (scripts/python-requirements.txt pins the same)",
    ),
    (
        "git clone <this repository> /opt/cutover",
        "examples/compose and examples/ansible copied as they ship",
    ),
    (
        "docker build -f dockerfiles/Dockerfile --target runtime -t cutover-holder:1 .",
        "scripts/build-test-image (CUTOVER_TEST_IMAGE)",
    ),
    (
        "git clone https://git.example.com/org/app.git /tmp/app",
        "run: `git clone` of the test's origin",
    ),
    (
        "docker build --tag myapp:latest /tmp/app",
        "run, with the build args of image_build_args",
    ),
    ("mkdir -p /srv/myapp", "run: Project's empty code/"),
    (
        "echo APP_ROOT=/srv/myapp >> .env",
        "Project sets APP_ROOT in compose's environment",
    ),
    (
        "docker-compose -f docker-compose.holder.yml up -d",
        "run (Project, docker-compose 1.29)",
    ),
    (
        "docker-compose -f docker-compose.holder.yml exec app cutover status",
        "run as `docker exec`",
    ),
    (
        "/opt/ansible/bin/ansible-playbook -i inventory.yml deploy.yml",
        "run",
    ),
    ("curl localhost:8000/", "run: example_version"),
    (
        "ansible-playbook -i inventory.yml deploy.yml -e app_version=v2",
        "run",
    ),
    (
        "ansible-playbook -i inventory.yml deploy.yml -e app_version=v2 --tags deps",
        "run, with v5",
    ),
    (
        "ansible-playbook -i inventory.yml deploy.yml -e reload_via=touch",
        "run",
    ),
];

fn image_env(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// The project's compose containers, the app repository, and what the
/// playbook makes besides; all removed when dropped.
struct Scene {
    p: Project,
    /// The app repository (`work/`, and `remote.git/`: `app_repo`).
    repo: Repo,
    /// The extra vars file: the names and paths this test needs unique.
    vars: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let name = format!("cutover-ansible-{}", std::process::id());
        let mut p = Project::bare(Compose::V1, Migrate::Off, name);
        let example = p.dir.join("repo/examples/ansible");
        copy_tree(std::path::Path::new(EXAMPLE), &example);
        let repo = Repo::new(p.dir.join("app"));
        p.app_image = format!("{}-app:latest", p.name);
        let vars = p.dir.join("test-vars.json");
        let vars_json = serde_json::json!({
            "app_repo": repo.remote,
            "app_root": p.dir.join("code"),
            "compose_project": p.name,
            "app_container": p.app_container(),
            "holder_config": p.dir.join("repo/examples/compose/cutover-holder.toml"),
            "app_image": format!("{}-app", p.name),
            "image_build_args": build_args(),
        });
        std::fs::write(&vars, vars_json.to_string()).unwrap();
        Scene { p, repo, vars }
    }

    /// Commits the example app serving `version`, with the app repository's
    /// files (`extra` replaces or adds some), tags it `tag` and pushes both.
    fn release(&self, tag: &str, version: &str, extra: &[(&str, &str)]) -> String {
        let app = app_py(version);
        let mut files = vec![
            ("app.py", app.as_str()),
            ("requirements.txt", REQUIREMENTS),
            ("gunicorn.conf.py", GUNICORN_CONF),
            ("Dockerfile", DOCKERFILE),
            (".dockerignore", DOCKERIGNORE),
        ];
        for (path, content) in extra {
            files.retain(|(p, _)| p != path);
            files.push((path, content));
        }
        let sha = self.repo.commit(version, &files);
        git(&self.repo.work, &["tag", "-f", tag]);
        self.repo.push();
        self.repo.push_ref(&format!("+refs/tags/{tag}"));
        sha
    }

    /// `ansible-playbook -i inventory.yml deploy.yml ARGS` in the example's
    /// copy, with the test's extra vars: (succeeded, output).
    fn play(&self, args: &[&str]) -> (bool, String) {
        let venv = std::env::var("CUTOVER_VENV").expect(
            "CUTOVER_VENV is not set: eval \"$(scripts/setup-python)\" installs ansible-core",
        );
        let mut cmd = Command::new(PathBuf::from(venv).join("bin/ansible-playbook"));
        let vars = format!("@{}", self.vars.display());
        cmd.current_dir(self.p.dir.join("repo/examples/ansible"))
            .args(["-i", "inventory.yml", "deploy.yml", "-e", &vars])
            .args(args)
            .env("ANSIBLE_HOME", self.p.dir.join("ansible-home"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_LOCALHOST_WARNING", "false")
            // the engine's builder (scripts/build-test-image says why)
            .env("DOCKER_BUILDKIT", "0")
            .env("PATH", path_with_docker());
        let started = Instant::now();
        let out = bounded(cmd, &format!("ansible-playbook {args:?}"));
        eprintln!(
            "ansible: deploy.yml {args:?}: exit {:?} in {:.1} s",
            out.status.code(),
            started.elapsed().as_secs_f64()
        );
        (out.status.success(), text(&out))
    }

    /// Runs the playbook, which must succeed.
    fn play_ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.play(args);
        assert!(
            ok,
            "deploy.yml {args:?} failed:\n{out}\n{}",
            self.p.all_logs()
        );
        out
    }

    /// The running containers named after the app container: (name, image).
    fn app_containers(&self) -> Vec<(String, String)> {
        let filter = format!("name=^/?{}", self.p.app_container());
        let out = docker(&[
            "ps",
            "--filter",
            &filter,
            "--format",
            "{{.Names}} {{.Image}}",
        ]);
        assert!(out.status.success(), "docker ps: {}", text(&out));
        let mut v: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, i)| (n.to_string(), i.to_string()))
            .collect();
        v.sort();
        v
    }

    /// After a path: `image` serves `version`, `current` is `sha`'s release,
    /// and `docker ps` has the holder and one app container, from `image`.
    fn check(&self, what: &str, version: &str, sha: &str, image: &str, holder: &str) {
        let served = example_version(self.p.port);
        assert_eq!(
            served.as_deref(),
            Ok(version),
            "{what}: served\n{}",
            self.p.all_logs()
        );
        let current = std::fs::read_link(self.p.dir.join("code/current")).unwrap();
        assert_eq!(
            current,
            PathBuf::from(format!("releases/{sha}")),
            "{what}: current"
        );
        assert_eq!(
            self.app_containers(),
            [(self.p.app_container(), image.to_string())],
            "{what}: docker ps\n{}",
            self.p.all_logs()
        );
        assert_eq!(
            inspect(holder, "{{.State.Running}}").as_deref(),
            Some("true"),
            "{what}: the holder"
        );
        eprintln!("ansible: {what}: serves {version}, current {sha:.12}, app from {image}");
    }

    /// Runs `during` under load through the published port; every request
    /// must succeed, none hang. The versions the probe was served, in order.
    fn loaded(&self, what: &str, during: impl FnOnce()) -> Vec<String> {
        let r = self.p.under_load(during);
        eprintln!(
            "ansible: {what}: {}; versions served: {:?}",
            r.summary(),
            r.probe.versions
        );
        assert_no_failed(
            &format!("{:?} {}: wrk", self.p.which, what),
            &r.wrk,
            101,
            || self.p.all_logs(),
        );
        assert_no_failed(
            &format!("{:?} {}: probe", self.p.which, what),
            &r.probe,
            21,
            || format!("{}\n{}", r.summary(), self.p.all_logs()),
        );
        r.probe.versions
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        // What the playbook started beside compose's container (`<app>-<sha>`),
        // before Project's drop removes the network it is on.
        let filter = format!("name=^/?{}", self.p.app_container());
        let out = docker(&["ps", "-a", "-q", "--filter", &filter]);
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = docker(&["rm", "-f", "-v", id]);
        }
        // Every image this test built: `<project>-app:<tag>`.
        let repository = format!("{}-app", self.p.name);
        let out = docker(&[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            &repository,
        ]);
        for image in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = docker(&["rmi", "-f", image]);
        }
    }
}

/// What the app's Dockerfile (examples/ansible/app/Dockerfile) is built
/// with here: a Python base and a cutover image that exist locally (nothing
/// can be pulled), and the host network for RUN steps (the engine has no
/// bridge). The base has the pinned gunicorn already: no network is needed.
pub(crate) fn build_args() -> Vec<String> {
    let python = image_env("CUTOVER_APP_IMAGE", "cutover-app-test:latest");
    let cutover = image_env("CUTOVER_TEST_IMAGE", "cutover-test:latest");
    [
        "--network".to_string(),
        "host".to_string(),
        "--build-arg".to_string(),
        format!("PYTHON_IMAGE={python}"),
        "--build-arg".to_string(),
        format!("CUTOVER_IMAGE={cutover}"),
    ]
    .to_vec()
}

/// PATH with the directory of the docker client the tests use first, so
/// that the playbook's `docker` is the same one.
fn path_with_docker() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    match std::env::var("DOCKER").ok().map(PathBuf::from) {
        Some(d) if d.is_absolute() => {
            format!("{}:{path}", d.parent().unwrap().display())
        }
        _ => path,
    }
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn the_readme_lists_what_this_test_runs() {
    for (command, _) in README_COMMANDS {
        assert!(
            README.contains(command),
            "examples/ansible/README.md no longer has `{command}`: update README_COMMANDS"
        );
    }
}

#[test]
fn the_playbook_deploys_code_and_images_without_a_failed_request() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = Scene::new();
    let p = &s.p;
    let started = Instant::now();

    // README: the app's first commit, cloned and built as its first image.
    let v1 = s.release("v1", "v1", &[]);
    let clone = p.dir.join("app-clone");
    git(
        p.dir.path(),
        &[
            "clone",
            "-q",
            s.repo.remote.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    let mut build = build_args();
    build.extend(["--tag".to_string(), p.app_image.clone()]);
    build.push(clone.display().to_string());
    let build: Vec<&str> = build.iter().map(String::as_str).collect();
    let out = docker_build(&build);
    assert!(out.status.success(), "docker build: {}", text(&out));

    // README: an empty volume, the holder and the app container; the app
    // waits for its first release.
    p.run(&["up", "-d"]);
    let holder = p.holder_id();
    let app = p.app_id();
    let waiting = wait_for(Duration::from_secs(60), || {
        let out = docker(&["exec", &app, "cutover", "status"]);
        let t = text(&out);
        t.contains("waiting-for-release").then_some(t)
    });
    assert!(
        waiting.is_some(),
        "never waiting-for-release\n{}",
        p.all_logs()
    );

    // The first deploy. No load during it: nothing serves before it.
    let out = s.play_ok(&[]);
    assert!(out.contains("can be hot-reloaded"), "{out}");
    // `reload --wait` answered once the new code was ready; the users
    // reach it through the holder (no log line to wait for: the program
    // may have started on its own when `current` appeared, the reload then
    // being an ordinary one).
    wait_for(Duration::from_secs(30), || {
        (example_version(p.port).ok()? == "v1").then_some(())
    })
    .unwrap_or_else(|| panic!("v1 never served\n{}", p.all_logs()));
    s.check("first deploy", "v1", &v1, &p.app_image, &holder);
    s.loaded("after the first deploy", || {
        std::thread::sleep(Duration::from_secs(2))
    });

    // Code only, by `cutover reload --wait`: hot-reloaded in the same
    // container, though the repository has a Dockerfile (its baseline
    // covers it).
    let v2 = s.release("v2", "v2", &[]);
    s.loaded("code-only deploy (exec)", || {
        let out = s.play_ok(&["-e", "app_version=v2"]);
        assert!(out.contains("can be hot-reloaded"), "{out}");
    });
    assert_eq!(p.app_id(), app, "hot reload, not a new container");
    s.check("code-only deploy (exec)", "v2", &v2, &p.app_image, &holder);

    // Code only, by the touch file: main moved to v3.
    let v3 = s.release("v3", "v3", &[]);
    s.loaded("code-only deploy (touch)", || {
        s.play_ok(&["-e", "reload_via=touch"]);
    });
    assert_eq!(p.app_id(), app, "hot reload, not a new container");
    s.check("code-only deploy (touch)", "v3", &v3, &p.app_image, &holder);

    // A release that raises at import: the play fails with the cause and
    // puts v3 back as current; v3 served throughout.
    let broken = format!("raise RuntimeError(\"broken release\")\n{}", app_py("v4"));
    s.release("broken", "v4", &[("app.py", &broken)]);
    s.loaded("broken release", || {
        let (ok, out) = s.play(&["-e", "app_version=broken"]);
        assert!(!ok, "the play succeeded with a broken release:\n{out}");
        assert!(out.contains("is current again"), "{out}");
        // The reload error ends with the instance's last lines of output:
        // the app's exception, then gunicorn's own words below it.
        assert!(
            out.contains(" before it was ready: ")
                && out.contains("RuntimeError: broken release")
                && out.contains("Worker failed to boot"),
            "the instance's output is missing:\n{out}"
        );
    });
    assert_eq!(p.app_id(), app);
    s.check("broken release", "v3", &v3, &p.app_image, &holder);

    // A dependency change: first only asked (nothing changes), then a real
    // image build, the new container beside the old one, the old one gone.
    let requirements = format!("{REQUIREMENTS}# v5: a dependency change\n");
    let v5 = s.release("v5", "v5", &[("requirements.txt", &requirements)]);
    let out = s.play_ok(&["-e", "app_version=v5", "--tags", "deps"]);
    assert!(
        out.contains("dependencies changed (requirements.txt)"),
        "{out}"
    );
    s.check("--tags deps", "v3", &v3, &p.app_image, &holder);
    let image5 = format!("{}-app:{v5}", p.name);
    let served = s.loaded("dependency change (image build)", || {
        let out = s.play_ok(&["-e", "app_version=v5"]);
        assert!(out.contains("needs a new image"), "{out}");
    });
    assert_eq!(served, ["v3", "v5"], "the old code, then the new");
    let new = p.app_id();
    assert_ne!(new, app, "a new container");
    assert!(
        inspect(&app, "{{.Id}}").is_none(),
        "the old container is gone"
    );
    s.check(
        "dependency change (image build)",
        "v5",
        &v5,
        &image5,
        &holder,
    );

    // A dependency change whose new container never gets healthy (its
    // healthcheck fails, though cutover in it is ready and takes users): it
    // is removed, the old one was never stopped and serves every user.
    let requirements = format!("{REQUIREMENTS}# v6: another dependency change\n");
    s.release("v6", "v6", &[("requirements.txt", &requirements)]);
    let served = s.loaded("dependency change (never healthy)", || {
        let (ok, out) = s.play(&[
            "-e",
            "app_version=v6",
            "-e",
            r#"{"app_health_cmd": "exit 1"}"#,
        ]);
        assert!(
            !ok,
            "the play succeeded with an unhealthy container:\n{out}"
        );
        assert!(out.contains("image redeploy of"), "{out}");
    });
    // The new container did take the users (it was ready), and gave them
    // back when it was removed: the case where users once hung for minutes.
    assert!(
        served.len() >= 3 && served.contains(&"v6".to_string()) && served.last().unwrap() == "v5",
        "served {served:?}: the unhealthy container never took users, or kept them"
    );
    assert_eq!(p.app_id(), new, "the old container kept serving");
    s.check(
        "dependency change (never healthy)",
        "v5",
        &v5,
        &image5,
        &holder,
    );
    // Nothing stranded in the holder afterwards either.
    s.loaded("after the failed image deploy", || {
        std::thread::sleep(Duration::from_secs(3))
    });
    eprintln!(
        "ansible: every path in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
