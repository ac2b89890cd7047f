//! Never block: probes, `cutover status` and the control socket answer at
//! once while the source actor is busy (a long before_cutover hook), and
//! signals and orphans are handled while a large release is pruned.
//!
//! Real git repositories, the real binary, real signals and processes.
//! Answers are checked against a generous bound (1 s), far above what they
//! take, and far below what waiting for the busy actor costs (the hook's 10 s).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fixture::git::{Repo, git};
use crate::fixture::prelude::*;

const PROMPT: Duration = Duration::from_secs(1);

/// One GET with a 2 s limit; the status line and body, and how long it took.
fn timed_get(port: u16, path: &str) -> (Result<(String, String), String>, Duration) {
    use std::io::{Read, Write};
    let started = Instant::now();
    let result = (|| {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut response = String::new();
        s.read_to_string(&mut response)
            .map_err(|e| format!("read: {e}"))?;
        let (head, body) = response.split_once("\r\n\r\n").ok_or("no HTTP head")?;
        Ok((
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        ))
    })();
    (result, started.elapsed())
}

fn timed_client(dir: &TestDir, args: &[&str]) -> ((i32, String, String), Duration) {
    let started = Instant::now();
    let out = client(dir, args);
    (out, started.elapsed())
}

/// The phase of the deploy in progress, from /status.
fn deploying(port: u16) -> Option<Value> {
    let (Ok((_, body)), _) = timed_get(port, "/status") else {
        return None;
    };
    let status: Value = serde_json::from_str(&body).ok()?;
    let d = status["source"]["deploying"].clone();
    (!d.is_null()).then_some(d)
}

/// During a 10 s before_cutover hook (a migration), /healthz, /status and
/// `cutover status` answer within a second, /status names the hook, and a
/// deploy asked for meanwhile is told it is queued behind it.
#[test]
fn probes_and_status_answer_during_a_long_hook() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    repo.release("v1");
    let (port, http) = (free_port(), free_port());
    let slow = dir.join("slow");
    let started = dir.join("hook-started");
    let extra = format!(
        r#"[hooks]
timeout = "60s"
before_cutover = [["sh", "-c", "if [ -e {slow} ]; then touch {started}; sleep 10; fi"]]

[control]
http = "127.0.0.1:{http}"
"#,
        slow = slow.display(),
        started = started.display(),
    );
    let remote = repo.remote.display().to_string();
    let toml = ConfigToml::deploying(port, &remote, &dir.join("srv"), "keep = 2")
        .raw(&extra)
        .to_string();
    let cfg = dir.write("cutover.toml", &toml);
    let c = Cutover::start(Mode::Subreaper, &dir, &["run", "-c", cfg.to_str().unwrap()]);
    wait_for(SECS_20, || {
        (served_version(port).ok()? == "v1").then_some(())
    })
    .unwrap_or_else(|| panic!("never served v1\n{}", c.stderr()));
    wait_for_control(&dir);

    std::fs::write(&slow, "").unwrap();
    let v2 = repo.release("v2");
    wait_for(SECS_20, || started.exists().then_some(()))
        .unwrap_or_else(|| panic!("the hook never started\n{}", c.stderr()));
    let hook_began = Instant::now();

    for round in 0..3 {
        let (healthz, took) = timed_get(http, "/healthz");
        let (line, _) = healthz.unwrap_or_else(|e| panic!("/healthz: {e}"));
        assert!(
            line.contains(" 200 "),
            "round {round}: /healthz said {line}"
        );
        assert!(took < PROMPT, "round {round}: /healthz took {took:?}");

        let (st, took) = timed_get(http, "/status");
        let (_, body) = st.unwrap_or_else(|e| panic!("/status: {e}"));
        assert!(took < PROMPT, "round {round}: /status took {took:?}");
        let status: Value = serde_json::from_str(&body).unwrap();
        let d = &status["source"]["deploying"];
        assert_eq!(d["phase"]["step"], "hook", "round {round}: {d}");
        assert_eq!(d["phase"]["kind"], "before_cutover", "{d}");
        assert_eq!(d["phase"]["name"], "before_cutover[0]", "{d}");
        assert_eq!(d["sha"], v2.as_str(), "{d}");

        let ((code, text, err), took) = timed_client(&dir, &["status"]);
        assert_eq!(code, 0, "{err}");
        assert!(
            took < PROMPT,
            "round {round}: `cutover status` took {took:?}"
        );
        assert!(
            text.contains("hook before_cutover[0]"),
            "round {round}: {text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let ((code, out, err), took) = timed_client(&dir, &["deploy"]);
    assert_eq!(code, 0, "{err}");
    assert!(took < PROMPT, "`cutover deploy` took {took:?}");
    assert!(
        out.contains(&format!("queued behind the deploy of {}", &v2[..12])),
        "{out}"
    );
    assert!(
        hook_began.elapsed() < Duration::from_secs(8),
        "the checks ran after the hook: the machine is too slow for this test"
    );

    // The hook ends, the deploy goes through, and nothing is in progress.
    wait_for(Duration::from_secs(30), || {
        (served_version(port).ok()? == "v2").then_some(())
    })
    .unwrap_or_else(|| panic!("never served v2\n{}", c.stderr()));
    wait_for(SECS_20, || deploying(http).is_none().then_some(()))
        .expect("a deploy stayed in progress");
    assert!(
        c.stderr()
            .contains("hook before_cutover[0] finished: exited with status 0"),
        "one clear line for the hook's end\n{}",
        c.stderr()
    );
}

/// While a 10,000-file release is pruned, a SIGUSR1 reaches the program
/// and the orphan it leaves is reaped: the runtime thread does not wait
/// for the disk.
#[test]
fn signals_and_orphans_are_handled_during_a_prune() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    let mut files = Vec::new();
    for d in 0..100 {
        for f in 0..100 {
            files.push((format!("bulk/{d}/{f}"), format!("{d}-{f}\n")));
        }
    }
    let bulk: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .chain([("version", "v1")])
        .collect();
    let v1 = repo.commit("v1 with 10,000 files", &bulk);
    repo.push();
    let http = free_port();
    let acks = dir.join("acks");
    std::fs::create_dir(&acks).unwrap();
    let root = dir.join("srv");
    let app = format!(
        r#"[app]
command = ["python3", "{recorder}", "{acks}"]
stop_timeout = "5s""#,
        recorder = app("usr1.py"),
        acks = acks.display(),
    );
    let toml = format!(
        r#"{app}

[source]
repo = "{repo}"
ref = "main"
root = "{root}"
keep = 2

[control]
http = "127.0.0.1:{http}"
"#,
        repo = repo.remote.display(),
        root = root.display(),
    );
    let cfg = dir.write("cutover.toml", &toml);
    let c = Cutover::start(Mode::Subreaper, &dir, &["run", "-c", cfg.to_str().unwrap()]);
    wait_for_control(&dir);
    let current = |want: &str| {
        wait_for(Duration::from_secs(60), || {
            (status(&dir)["source"]["current"] == want).then_some(())
        })
        .unwrap_or_else(|| panic!("never deployed {want}\n{}", c.stderr()));
    };
    current(&v1);

    git(&repo.work, &["rm", "-q", "-r", "bulk"]);
    let v2 = repo.commit("v2", &[("version", "v2")]);
    repo.push();
    current(&v2);
    let v1_release = root.join("releases").join(&v1);
    assert!(v1_release.is_dir());

    // v3 makes v1 the third release: with keep = 2 it is pruned.
    repo.release("v3");
    let seen = wait_for(Duration::from_secs(60), || {
        let d = deploying(http)?;
        (d["phase"]["step"] == "pruning").then_some(d)
    });
    assert!(
        seen.is_some(),
        "never saw the prune in progress\n{}",
        c.stderr()
    );
    c.signal(libc::SIGUSR1);
    let ack = acks.join("usr1-1");
    let orphan: i32 = wait_for(SECS_20, || {
        std::fs::read_to_string(&ack).ok()?.trim().parse().ok()
    })
    .unwrap_or_else(|| panic!("SIGUSR1 never reached the program\n{}", c.stderr()));
    wait_for(SECS_20, || {
        (!Path::new(&format!("/proc/{orphan}")).exists()).then_some(())
    })
    .unwrap_or_else(|| panic!("orphan {orphan} was never reaped\n{}", c.stderr()));
    assert!(
        v1_release.exists(),
        "the signal and the orphan waited for the prune to end\n{}",
        c.stderr()
    );
    wait_for(SECS_20, || (!v1_release.exists()).then_some(()))
        .unwrap_or_else(|| panic!("v1 was never pruned\n{}", c.stderr()));
}
