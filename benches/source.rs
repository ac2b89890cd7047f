//! Source benchmark (`[source]`, code delivered from git): prints figures,
//! asserts nothing about time.
//!
//! - push-to-new-code latency with the local push watch: cutover follows a
//!   bare repository on disk (`[source] repo` is a path) and serves
//!   tests/integration/apps/fdserver.py from `current`; the bench commits a
//!   new `version`, runs `git push`, and polls `GET /` (every 2 ms, a fresh
//!   connection each time) until the new version answers;
//! - the same with the webhook: the bare repository is served by `git daemon`
//!   on loopback (no watch is possible), and after the push the bench POSTs a
//!   signed GitHub-style push delivery to `[control] http` `/webhook`;
//! - fetching and materialising a 10,000-file, 100 MB repository (one commit):
//!   cutover's first deploy into an empty volume against
//!   `git clone --bare` + `git worktree add` with the machine's git, over
//!   the same transport (a local path, and `git daemon`);
//! - the same commit from a forge, as a private repository is fetched in
//!   production: over https with a token (tests/fixture/forge.rs's
//!   `HttpsForge`: nginx, TLS with a test CA, basic auth, git-http-backend;
//!   cutover with `token_env` and `ca_file`) and over ssh with a deploy key
//!   (`SshForge`: sshd, git-shell; cutover with an ed25519 `ssh_key` and
//!   `known_hosts`, through the system's `ssh`). Both sides fetch shallow:
//!   cutover's first deploy into an empty volume with `depth = 1` against
//!   `git clone --depth 1 --branch main` from the same server (https: the
//!   token in an `http.extraHeader`, the CA in GIT_SSL_CAINFO; ssh:
//!   GIT_SSH_COMMAND with the same key and known_hosts). Per row: medians and
//!   maxima of both times, the ratio cutover / git, and peak memory:
//!   cutover's VmHWM (/proc/PID/status, read the moment `current` appears,
//!   so the fetch and the write are in it; and the highest RssAnon read every
//!   10 ms, its heap without the mapped pack), the ssh child's VmHWM and
//!   RssAnon (sampled every 10 ms while it runs, so lower bounds) and git's,
//!   from wait4's ru_maxrss (the largest of git and every helper it waited
//!   for: remote-https, index-pack, ssh, ...; never below this bench's own
//!   high-water mark, which exec carries over).
//!
//! The app's own boot (fdserver: python start to READY=1 on NOTIFY_SOCKET,
//! `ready_ms` of the reload in `cutover status`) is reported apart, so
//! cutover's part of a deploy shows.
//!
//! Run with `eval "$(scripts/setup-forge)"; cargo bench --bench source`
//! (about five minutes; the first run also generates the big repository,
//! cached under target/bench-source/). Needs git and python3; the forge rows
//! need what scripts/setup-forge installs (nginx, fcgiwrap, sshd, the ssh
//! client, openssl) and are skipped, with a note, without it. Traffic goes
//! to 127.0.0.1 only. Every process started here lives in a process group of
//! its own, except the timed `git clone`s, which run in the foreground; all
//! of them, and the temporary directories, are removed at the end, on panic
//! and on Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};

#[path = "support/mod.rs"]
mod support;

use support::fixture::forge::{Cert, HttpsForge, SshForge};
use support::fixture::git::{Daemon, Repo, fast_import, git_command};
use support::http::{http, poll_get, wait_served};
use support::{
    TempDir, check_interrupted, command_text, dir_bytes, free_port, git, install_cleanup, loadavg,
    log_problems, machine, max, ms, p50, sleep, spawn_cutover, status_kib, tail, toml_str,
};

const BIN: &str = env!("CARGO_BIN_EXE_cutover");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Pushes per latency row.
const PUSHES: usize = 10;
/// Pause between two probes for the new code.
const PROBE_EVERY: Duration = Duration::from_millis(2);
/// Give up waiting for the new code after a push.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(20);
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Quiet time before each push, longer than the reload debounce (200 ms).
const SETTLE: Duration = Duration::from_millis(400);
const SECRET: &str = "bench-webhook-secret";

/// The big repository: files, total bytes (decimal MB), rounds per tool.
const BIG_FILES: usize = 10_000;
const BIG_BYTES: usize = 100_000_000;
const BIG_ROUNDS: usize = 3;
const BIG_TIMEOUT: Duration = Duration::from_secs(120);

fn main() {
    install_cleanup();
    let started = Instant::now();
    let git_version = command_text(Command::new("git").arg("--version"), "git ?");
    let python = command_text(Command::new("python3").arg("--version"), "python3 ?");
    println!("cutover source benchmark ({BIN})");
    println!("machine: {}; {git_version}; {python}", machine());
    println!();

    let rows = [Trigger::Watch, Trigger::Webhook].map(latency_row);
    println!();
    println!(
        "push -> new code: {PUSHES} pushes per row, each a new commit of `version`; new code = first GET / \
         (fresh connection every {} ms) answered by the new version. app = fdserver.py, reload_strategy \
         = overlap, [ready] notify = true.",
        PROBE_EVERY.as_millis()
    );
    println!(
        "{:<28} | {:>15} | {:>15} | {:>15} | {:>13} | {:>15} | {:>11}",
        "trigger",
        "push start->new",
        "push done->new",
        "minus boot",
        "app boot",
        "deploy record",
        "git push"
    );
    println!(
        "{:<28} | {:>15} | {:>15} | {:>15} | {:>13} | {:>15} | {:>11}",
        "",
        "p50 / max ms",
        "p50 / max ms",
        "p50 / max ms",
        "p50 / max ms",
        "p50 / max ms",
        "p50 ms"
    );
    println!(
        "{:-<28}-+-{:-<15}-+-{:-<15}-+-{:-<15}-+-{:-<13}-+-{:-<15}-+-{:-<11}",
        "", "", "", "", "", "", ""
    );
    for row in &rows {
        row.print_line();
    }
    println!();
    println!(
        "push start->new: `git push` started -> new version served (target <= 500 ms plus the app's boot). \
         push done->new: from `git push` returning (webhook row: from the POST's answer). minus boot: \
         push start->new minus the app's boot, i.e. git push + cutover + the probe's granularity. app boot: \
         the reload's ready_ms (new instance spawned -> READY=1). deploy record: duration_ms of the deploy \
         in the source history (trigger seen -> fetched, written, switched, reloaded)."
    );
    println!();

    let big = big_repo();
    println!();
    forge_rows(&big);
    println!();
    println!(
        "whole bench: {:.1} s; load average now {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}

// ---------------------------------------------------------------- push latency

#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// `[source] repo` is the bare repository's path; cutover watches its refs.
    Watch,
    /// `git daemon` serves it; a signed POST /webhook says it moved.
    Webhook,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Watch => "local push watch",
            Trigger::Webhook => "webhook (git daemon)",
        }
    }
}

struct Push {
    push_ms: f64,
    /// `git push` started -> new version answered.
    to_new_ms: f64,
    /// `git push` returned (webhook: POST answered) -> new version answered.
    after_ms: f64,
    /// The reload's ready_ms: the new instance's boot.
    boot_ms: f64,
    /// The deploy record's duration_ms.
    deploy_ms: f64,
}

struct LatencyRow {
    trigger: Trigger,
    pushes: Vec<Push>,
    notes: Vec<String>,
}

impl LatencyRow {
    fn print_line(&self) {
        let col = |f: &dyn Fn(&Push) -> f64| {
            let v: Vec<f64> = self.pushes.iter().map(f).collect();
            if v.is_empty() {
                "-".to_string()
            } else {
                format!("{:.0} / {:.0}", p50(&v), max(&v))
            }
        };
        let push: Vec<f64> = self.pushes.iter().map(|p| p.push_ms).collect();
        println!(
            "{:<28} | {:>15} | {:>15} | {:>15} | {:>13} | {:>15} | {:>11}",
            format!("{} ({}/{PUSHES})", self.trigger.name(), self.pushes.len()),
            col(&|p| p.to_new_ms),
            col(&|p| p.after_ms),
            col(&|p| p.to_new_ms - p.boot_ms),
            col(&|p| p.boot_ms),
            col(&|p| p.deploy_ms),
            if push.is_empty() {
                "-".to_string()
            } else {
                format!("{:.0}", p50(&push))
            },
        );
        for note in &self.notes {
            println!("{:<28}   note: {note}", "");
        }
    }
}

fn latency_row(trigger: Trigger) -> LatencyRow {
    let dir = TempDir::new("cutover-bench-source");
    let volume = dir.path().join("volume");
    let git_repo = Repo::new(dir.path());
    git_repo.commit("v0", &[("version", "v0\n")]);
    git_repo.push();
    let work = &git_repo.work;

    let daemon = (trigger == Trigger::Webhook).then(|| Daemon::start(dir.path()));
    let repo = match &daemon {
        Some(d) => format!("{}/remote.git", d.url()),
        None => git_repo.remote.display().to_string(),
    };
    let port = free_port();
    let control = free_port();
    let webhook = if trigger == Trigger::Webhook {
        "webhook_secret_env = \"BENCH_WEBHOOK_SECRET\"\n"
    } else {
        ""
    };
    let config = format!(
        r#"[[listen]]
name = "http"
address = "127.0.0.1:{port}"

[app]
command = ["python3", {server}]
stop_timeout = "5s"
reload_strategy = "overlap"

[ready]
notify = true
timeout = "30s"

[control]
http = "127.0.0.1:{control}"

[source]
repo = {repo}
ref = "main"
root = {root}
{webhook}"#,
        server = toml_str(&format!("{REPO}/tests/integration/apps/fdserver.py")),
        repo = toml_str(&repo),
        root = toml_str(&volume.display().to_string()),
    );
    let log = dir.path().join("cutover.log");
    let mut cutover = spawn_cutover(
        dir.path(),
        &config,
        &log,
        "info",
        &[("BENCH_WEBHOOK_SECRET", SECRET)],
    );

    let mut notes = Vec::new();
    if let Err(e) = wait_served(port, START_TIMEOUT, &mut cutover, |b| is_version(b, 0)) {
        panic!(
            "{}: v0 never served: {e}\n{}",
            trigger.name(),
            tail(&log, 30)
        );
    }
    let mut pushes = Vec::new();
    for n in 1..=PUSHES {
        check_interrupted();
        let sha = git_repo.commit(&format!("v{n}"), &[("version", &format!("v{n}\n"))]);
        settle(control);

        let started = Instant::now();
        git(work, &["push", "-q", "origin", "main"]);
        let pushed = started.elapsed();
        let mut from = Instant::now();
        if trigger == Trigger::Webhook {
            let body = format!(r#"{{"ref":"refs/heads/main","after":"{sha}"}}"#);
            let mut mac =
                Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
            mac.update(body.as_bytes());
            let signature = hex::encode(mac.finalize().into_bytes());
            let answer = http(
                control,
                "POST",
                "/webhook",
                &[
                    ("X-GitHub-Event", "push"),
                    ("X-Hub-Signature-256", &format!("sha256={signature}")),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            );
            match answer {
                Ok((202, _)) => {}
                Ok((code, text)) => notes.push(format!(
                    "push {n}: webhook answered {code}: {}",
                    text.trim()
                )),
                Err(e) => notes.push(format!("push {n}: webhook failed: {e}")),
            }
            from = Instant::now();
        }
        let new_code = poll_get(port, started, DEPLOY_TIMEOUT, PROBE_EVERY, |b| {
            is_version(b, n)
        })
        .0;
        let Some(to_new) = new_code else {
            notes.push(format!(
                "push {n}: v{n} not served within {} s",
                DEPLOY_TIMEOUT.as_secs()
            ));
            continue;
        };
        let after = to_new.saturating_sub(from.duration_since(started));
        match deploy_report(control, port, &sha) {
            Ok((boot_ms, deploy_ms)) => pushes.push(Push {
                push_ms: ms(pushed),
                to_new_ms: ms(to_new),
                after_ms: ms(after),
                boot_ms,
                deploy_ms,
            }),
            Err(e) => notes.push(format!("push {n}: {e}")),
        }
    }
    for p in log_problems(&log, &[]) {
        notes.push(p);
    }
    cutover.stop(Duration::from_secs(10));
    drop(daemon);
    println!(
        "{}: {} pushes measured{}",
        trigger.name(),
        pushes.len(),
        if notes.is_empty() { "" } else { " (see notes)" }
    );
    for (i, p) in pushes.iter().enumerate() {
        println!(
            "  push {:>2}: git push {:>5.1} ms, push start->new {:>6.1} ms, done->new {:>6.1} ms, boot {:>6.1} ms, deploy record {:>6.1} ms",
            i + 1,
            p.push_ms,
            p.to_new_ms,
            p.after_ms,
            p.boot_ms,
            p.deploy_ms
        );
    }
    LatencyRow {
        trigger,
        pushes,
        notes,
    }
}

/// Waits until no reload runs or waits, then for a quiet SETTLE.
fn settle(control: u16) {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(s) = status(control) {
            let r = &s["reload"];
            if r["in_progress"] == false && r["pending"] == false {
                break;
            }
        }
        sleep(Duration::from_millis(10));
    }
    sleep(SETTLE);
}

/// Once the deploy of `sha` is recorded: (the reload's ready_ms, the deploy's duration_ms).
///
/// Meanwhile a trickle of traffic (one GET / per status poll) goes on, as it
/// would in production: fdserver's listening socket blocks, so an old
/// instance that lost the race for a connection to the new one sits in
/// accept() until the next connection comes, and only then sees its SIGTERM;
/// without traffic the overlap would wait for it until stop_timeout.
fn deploy_report(control: u16, port: u16, sha: &str) -> Result<(f64, f64), String> {
    let deadline = Instant::now() + DEPLOY_TIMEOUT;
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        let _ = http(port, "GET", "/", &[], b"");
        if let Some(s) = status(control) {
            let record = s["source"]["history"]
                .as_array()
                .and_then(|h| h.iter().rev().find(|r| r["sha"] == sha).cloned());
            let reload = &s["reload"]["last"];
            let reload_done = reload["trigger"]
                .as_str()
                .is_some_and(|t| t.contains(&sha[..12]));
            if let Some(record) = record.filter(|_| reload_done) {
                if record["outcome"] != "deployed" {
                    return Err(format!("deploy of {sha} recorded as {record}"));
                }
                let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
                return Ok((
                    f(&reload["programs"][0]["ready_ms"]),
                    f(&record["duration_ms"]),
                ));
            }
            last = s;
        }
        sleep(Duration::from_millis(10));
    }
    Err(format!(
        "no deploy of {sha} recorded within {} s; status: {last}",
        DEPLOY_TIMEOUT.as_secs()
    ))
}

// ---------------------------------------------------------------- big repository

struct BigRound {
    /// cutover started -> `current` in place.
    wall_ms: f64,
    /// The first deploy's duration_ms (ls-remote, fetch, write, switch).
    deploy_ms: f64,
    /// "release written ... ms=": the materialisation alone.
    write_ms: f64,
    /// cutover's VmHWM when `current` appeared, kB.
    hwm_kib: u64,
    /// The highest RssAnon of cutover's read every 10 ms until then, kB:
    /// its heap and stacks, without the mapped pack and binary.
    anon_kib: u64,
    /// The highest VmHWM seen of an `ssh` child of cutover's, kB.
    ssh_hwm_kib: Option<u64>,
    /// The highest RssAnon seen of that child, kB (its buffers, not its
    /// libraries).
    ssh_anon_kib: Option<u64>,
}

struct GitRound {
    clone_ms: f64,
    worktree_ms: f64,
}

/// The local-path and `git daemon` rows; the big repository's path.
fn big_repo() -> PathBuf {
    let (cached, generated) = big_repository();
    let (files, bytes) = (
        git(&cached, &["ls-tree", "-r", "--name-only", "main"])
            .lines()
            .count(),
        dir_bytes(&cached.join("objects")),
    );
    println!(
        "big repository: {files} files, {:.1} MB of content in one commit, pack {:.1} MB; {} ({})",
        big_content_bytes() as f64 / 1e6,
        bytes as f64 / 1e6,
        cached.display(),
        match generated {
            Some(d) => format!("generated in {:.1} s", d.as_secs_f64()),
            None => "cached".to_string(),
        }
    );
    let base = cached.parent().unwrap().to_path_buf();
    let mut table = Vec::new();
    for transport in ["path", "git daemon"] {
        let daemon = (transport == "git daemon").then(|| Daemon::start(&base));
        let name = cached.file_name().unwrap().to_str().unwrap();
        let (cutover_url, git_url) = match &daemon {
            Some(d) => {
                let url = format!("{}/{name}", d.url());
                (url.clone(), url)
            }
            None => (
                cached.display().to_string(),
                format!("file://{}", cached.display()),
            ),
        };
        let mut cut = Vec::new();
        let mut gits = Vec::new();
        for round in 1..=BIG_ROUNDS {
            let c = cutover_first_deploy(&cutover_url, "", &[]);
            let g = git_clone_worktree(&git_url);
            println!(
                "  {transport} round {round}: cutover {:>7.0} ms (deploy record {:.0} ms, of which release written {:.0} ms; peak RSS {:.1} MiB, RssAnon {:.1} MiB) | git clone {:.0} ms + worktree add {:.0} ms = {:.0} ms",
                c.wall_ms,
                c.deploy_ms,
                c.write_ms,
                mib(c.hwm_kib),
                mib(c.anon_kib),
                g.clone_ms,
                g.worktree_ms,
                g.clone_ms + g.worktree_ms
            );
            cut.push(c);
            gits.push(g);
        }
        drop(daemon);
        table.push((transport, git_url, cut, gits));
    }
    println!();
    println!(
        "fetch + materialise {BIG_FILES} files / {:.0} MB (median of {BIG_ROUNDS}; `sync` before each run; cutover = \
         `cutover run` started -> `current` in place, app `sleep`; git = `git clone -q --bare URL` + \
         `git worktree add -q --detach DIR main`)",
        big_content_bytes() as f64 / 1e6
    );
    println!(
        "{:<11} | {:>12} | {:>13} | {:>13} | {:>12} | {:>12} | {:>12} | {:>13}",
        "transport",
        "cutover ms",
        "  its fetch",
        "  its write",
        "git ms",
        "  clone",
        "  worktree",
        "cutover / git"
    );
    println!(
        "{:-<11}-+-{:-<12}-+-{:-<13}-+-{:-<13}-+-{:-<12}-+-{:-<12}-+-{:-<12}-+-{:-<13}",
        "", "", "", "", "", "", "", ""
    );
    for (transport, _, cut, gits) in &table {
        let wall = median(cut.iter().map(|c| c.wall_ms));
        let fetch = median(cut.iter().map(|c| c.deploy_ms - c.write_ms));
        let write = median(cut.iter().map(|c| c.write_ms));
        let git_total = median(gits.iter().map(|g| g.clone_ms + g.worktree_ms));
        let clone = median(gits.iter().map(|g| g.clone_ms));
        let worktree = median(gits.iter().map(|g| g.worktree_ms));
        println!(
            "{:<11} | {:>12.0} | {:>13.0} | {:>13.0} | {:>12.0} | {:>12.0} | {:>12.0} | {:>13.2}",
            transport,
            wall,
            fetch,
            write,
            git_total,
            clone,
            worktree,
            wall / git_total
        );
    }
    println!(
        "its fetch = deploy record duration_ms minus the write (resolving the ref, fetching, indexing the pack, \
         switching current); its write = the \"release written\" log line's ms. target ratio <= 1.0"
    );
    cached
}

fn big_content_bytes() -> usize {
    (0..BIG_FILES).map(big_file_size).sum()
}

/// Sizes spread 2 KB..18 KB around BIG_BYTES / BIG_FILES.
fn big_file_size(i: usize) -> usize {
    let mean = BIG_BYTES / BIG_FILES;
    let spread = mean * 4 / 5;
    let r = (xorshift(i as u64 ^ 0x5eed) % (2 * spread as u64 + 1)) as usize;
    mean - spread + r
}

fn xorshift(seed: u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Deterministic text: base64-alphabet lines of 76 characters (6 bits of
/// entropy per byte, so zlib saves at most a quarter).
fn big_file(i: usize, out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let size = big_file_size(i);
    out.clear();
    let mut x = xorshift(i as u64 + 1);
    while out.len() < size {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let mut r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        for _ in 0..10 {
            if out.len() >= size {
                break;
            }
            out.push(if out.len() % 77 == 76 {
                b'\n'
            } else {
                ALPHABET[(r & 63) as usize]
            });
            r >>= 6;
        }
    }
}

fn big_path(i: usize) -> String {
    format!("d{:02}/e{}/f{:04}.txt", i / 100, (i / 10) % 10, i)
}

/// The cached bare repository, generated with `git fast-import` when missing.
fn big_repository() -> (PathBuf, Option<Duration>) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join("target"));
    let base = target.join("bench-source");
    let repo = base.join(format!("big-{BIG_FILES}-{BIG_BYTES}-v1.git"));
    if repo.join("refs").is_dir()
        && git_command(&repo, &["rev-parse", "--verify", "-q", "main"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    {
        return (repo, None);
    }
    let started = Instant::now();
    std::fs::create_dir_all(&base).unwrap();
    let tmp = base.join(format!("tmp-{}.git", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    git(
        &base,
        &["init", "-q", "--bare", "-b", "main", tmp.to_str().unwrap()],
    );
    fast_import(&tmp, &[], |stdin| {
        let mut content = Vec::new();
        for i in 0..BIG_FILES {
            big_file(i, &mut content);
            write!(stdin, "blob\nmark :{}\ndata {}\n", i + 1, content.len())?;
            stdin.write_all(&content)?;
            stdin.write_all(b"\n")?;
        }
        let message = "big repository for benches/source.rs\n";
        write!(
            stdin,
            "commit refs/heads/main\nauthor bench <bench@example.com> 1700000000 +0000\n\
             committer bench <bench@example.com> 1700000000 +0000\ndata {}\n{message}",
            message.len()
        )?;
        for i in 0..BIG_FILES {
            writeln!(stdin, "M 100644 :{} {}", i + 1, big_path(i))?;
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&repo);
    std::fs::rename(&tmp, &repo).unwrap();
    (repo, Some(started.elapsed()))
}

/// cutover's first deploy of the big repository from `url` into an empty
/// volume; `source_extra` is added to `[source]`, `env` to cutover's
/// environment. Panics if it fails.
fn cutover_first_deploy(url: &str, source_extra: &str, env: &[(&str, &str)]) -> BigRound {
    let dir = TempDir::new("cutover-bench-big");
    let volume = dir.path().join("volume");
    let config = format!(
        r#"[app]
command = ["sleep", "1000"]

[ready]
grace = "0s"

[source]
repo = {repo}
ref = "main"
root = {root}
{source_extra}
"#,
        repo = toml_str(url),
        root = toml_str(&volume.display().to_string()),
    );
    let log = dir.path().join("cutover.log");
    sync();
    let started = Instant::now();
    let mut cutover = spawn_cutover(dir.path(), &config, &log, "info", env);
    let pid = cutover.pid();
    let current = volume.join("current");
    let (mut ssh_hwm_kib, mut ssh_anon_kib) = (None, None);
    let mut anon_kib = 0;
    let mut polls = 0u64;
    let (wall, hwm_kib) = loop {
        if std::fs::symlink_metadata(&current).is_ok() {
            break (started.elapsed(), status_kib(pid, "VmHWM").unwrap_or(0));
        }
        polls += 1;
        if polls.is_multiple_of(5) {
            anon_kib = anon_kib.max(status_kib(pid, "RssAnon").unwrap_or(0));
            for child in children(pid) {
                let comm = std::fs::read_to_string(format!("/proc/{child}/comm"));
                if comm.is_ok_and(|c| c.trim() == "ssh") {
                    ssh_hwm_kib = ssh_hwm_kib.max(status_kib(child, "VmHWM"));
                    ssh_anon_kib = ssh_anon_kib.max(status_kib(child, "RssAnon"));
                }
            }
        }
        if let Some(status) = cutover.exited() {
            panic!("cutover exited ({status}):\n{}", tail(&log, 30));
        }
        assert!(
            started.elapsed() < BIG_TIMEOUT,
            "no current within {} s:\n{}",
            BIG_TIMEOUT.as_secs(),
            tail(&log, 30)
        );
        sleep(Duration::from_millis(2));
    };
    let history = volume.join("history.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (deploy_ms, write_ms) = loop {
        let record = std::fs::read_to_string(&history)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["trigger"] == "first start" && r["outcome"] == "deployed");
        let write = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains("release written"))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("ms=")))
            .and_then(|v| v.parse::<f64>().ok());
        if let (Some(r), Some(w)) = (record, write) {
            break (r["duration_ms"].as_f64().unwrap_or(f64::NAN), w);
        }
        assert!(
            Instant::now() < deadline,
            "no first deploy recorded:\n{}",
            tail(&log, 30)
        );
        sleep(Duration::from_millis(10));
    };
    cutover.stop(Duration::from_secs(10));
    let written = volume.join("current").join(big_path(BIG_FILES - 1));
    assert!(written.is_file(), "{} missing", written.display());
    if source_extra.contains("depth = 1") {
        let shallow = volume.join(".cutover/cache.git/shallow");
        assert!(
            shallow.is_file(),
            "depth = 1, but {} is missing",
            shallow.display()
        );
    }
    BigRound {
        wall_ms: ms(wall),
        deploy_ms,
        write_ms,
        hwm_kib,
        anon_kib,
        ssh_hwm_kib,
        ssh_anon_kib,
    }
}

fn git_clone_worktree(url: &str) -> GitRound {
    let dir = TempDir::new("cutover-bench-git");
    sync();
    let started = Instant::now();
    git(dir.path(), &["clone", "-q", "--bare", url, "cache.git"]);
    let cloned = started.elapsed();
    git(
        &dir.path().join("cache.git"),
        &["worktree", "add", "-q", "--detach", "../release", "main"],
    );
    let worktree = started.elapsed() - cloned;
    let written = dir.path().join("release").join(big_path(BIG_FILES - 1));
    assert!(written.is_file(), "{} missing", written.display());
    GitRound {
        clone_ms: ms(cloned),
        worktree_ms: ms(worktree),
    }
}

/// `git clone -q --depth 1 --branch main URL release` with `config` as `-c`
/// options and `env` added; its time and the largest ru_maxrss of git and
/// the helpers it waited for (remote-https, index-pack, ssh, ...), kB.
fn git_clone_shallow(url: &str, config: &[String], env: &[(&str, &str)]) -> (f64, u64) {
    let dir = TempDir::new("cutover-bench-git");
    let mut args: Vec<&str> = Vec::new();
    for c in config {
        args.extend(["-c", c.as_str()]);
    }
    args.extend([
        "clone", "-q", "--depth", "1", "--branch", "main", url, "release",
    ]);
    let stderr = dir.join("git.stderr");
    let mut cmd = git_command(dir.path(), &args);
    cmd.envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    sync();
    let started = Instant::now();
    let (status, maxrss_kib) = wait_rusage(cmd.spawn().expect("run git"));
    let took = started.elapsed();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "git {args:?} failed (wait status {status}):\n{}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    let release = dir.join("release");
    assert!(
        release.join(big_path(BIG_FILES - 1)).is_file() && release.join(".git/shallow").is_file(),
        "git clone --depth 1 left no shallow work tree in {}",
        release.display()
    );
    (ms(took), maxrss_kib)
}

/// wait4(2) on `child` (which reaps it): its wait status and ru_maxrss
/// (kB), which on Linux covers the child and every descendant it waited for.
fn wait_rusage(child: std::process::Child) -> (i32, u64) {
    let pid = child.id();
    let mut status = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are to live locals of the right types; `pid`
        // is a child of this process that nothing else waits for (`child`
        // is dropped unwaited, which neither waits nor kills).
        let r = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
        if r == pid as i32 {
            return (status, u64::try_from(usage.ru_maxrss).unwrap_or(0));
        }
        let e = std::io::Error::last_os_error();
        assert!(
            e.kind() == std::io::ErrorKind::Interrupted,
            "wait4({pid}): {e}"
        );
        check_interrupted();
    }
}

/// The children of `pid`, from /proc/PID/task/*/children (cheap enough to
/// read every few milliseconds, unlike a scan of /proc).
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    out
}

fn sync() {
    let _ = Command::new("sync").status();
}

// ---------------------------------------------------------------- forges

/// One forge row: cutover's rounds and git's (time ms, ru_maxrss kB), or
/// why it was skipped.
struct ForgeRow {
    name: &'static str,
    cut: Vec<BigRound>,
    git: Vec<(f64, u64)>,
    skipped: Option<String>,
}

/// The big repository from an https forge and an ssh forge, shallow, by
/// cutover and by git.
fn forge_rows(big: &Path) {
    let dir = TempDir::new("cutover-bench-forge");
    let https_tools = [
        ("CUTOVER_NGINX", "/usr/sbin/nginx"),
        ("CUTOVER_FCGIWRAP", "/usr/sbin/fcgiwrap"),
        (
            "CUTOVER_GIT_HTTP_BACKEND",
            "/usr/lib/git-core/git-http-backend",
        ),
        ("", "openssl"),
    ];
    let ssh_tools = [
        ("CUTOVER_SSHD", "/usr/sbin/sshd"),
        ("", "ssh"),
        ("", "ssh-keygen"),
    ];
    let rows = [
        forge_row("https", &https_tools, || https_forge(dir.path(), big)),
        forge_row("ssh", &ssh_tools, || ssh_forge(dir.path(), big)),
    ];
    println!();
    println!(
        "fetch + materialise {BIG_FILES} files / {:.0} MB from a forge, shallow (median / max of {BIG_ROUNDS}; \
         `sync` before each run; cutover = `cutover run` started -> `current` in place, `depth = 1`, \
         first deploy into an empty volume; git = `git clone -q --depth 1 --branch main URL DIR`, \
         from the same server)",
        big_content_bytes() as f64 / 1e6
    );
    println!(
        "{:<6} | {:>13} | {:>13} | {:>13} | {:>13} | {:>7} | {:>13} | {:>13} | {:>13} | {:>13}",
        "forge",
        "cutover ms",
        "  its fetch",
        "  its write",
        "git ms",
        "cut/git",
        "cutover peak",
        "  its anon",
        "ssh child pk",
        "git peak"
    );
    println!(
        "{:<6} | {:>13} | {:>13} | {:>13} | {:>13} | {:>7} | {:>13} | {:>13} | {:>13} | {:>13}",
        "",
        "median / max",
        "median / max",
        "median / max",
        "median / max",
        "medians",
        "MiB med / max",
        "MiB med / max",
        "MiB med / max",
        "MiB med / max"
    );
    println!(
        "{:-<6}-+-{:-<13}-+-{:-<13}-+-{:-<13}-+-{:-<13}-+-{:-<7}-+-{:-<13}-+-{:-<13}-+-{:-<13}-+-{:-<13}",
        "", "", "", "", "", "", "", "", "", ""
    );
    for row in &rows {
        if let Some(why) = &row.skipped {
            println!("{:<6} | skipped: {why}", row.name);
            continue;
        }
        let of = |f: &dyn Fn(&BigRound) -> f64| row.cut.iter().map(f).collect::<Vec<f64>>();
        let wall = of(&|c| c.wall_ms);
        let git_ms: Vec<f64> = row.git.iter().map(|g| g.0).collect();
        let ssh: Vec<f64> = row
            .cut
            .iter()
            .filter_map(|c| c.ssh_hwm_kib.map(mib))
            .collect();
        println!(
            "{:<6} | {:>13} | {:>13} | {:>13} | {:>13} | {:>7.2} | {:>13} | {:>13} | {:>13} | {:>13}",
            row.name,
            med_max(&wall, 0),
            med_max(&of(&|c| c.deploy_ms - c.write_ms), 0),
            med_max(&of(&|c| c.write_ms), 0),
            med_max(&git_ms, 0),
            p50(&wall) / p50(&git_ms),
            med_max(&of(&|c| mib(c.hwm_kib)), 1),
            med_max(&of(&|c| mib(c.anon_kib)), 1),
            med_max(&ssh, 1),
            med_max(&row.git.iter().map(|g| mib(g.1)).collect::<Vec<_>>(), 1),
        );
    }
    println!(
        "its fetch / its write: as in the table above. cut/git: median cutover ms / median git ms (goal <= 1.2). \
         cutover peak: VmHWM of the cutover process when `current` appeared (fetch, index, write; without \
         its ssh child; file pages count: the mapped pack and binary). its anon: the highest RssAnon of \
         cutover's (heap, stacks) read every 10 ms until then. ssh child pk: the highest VmHWM read of cutover's `ssh` child, every 10 ms while it \
         ran (a lower bound). git peak: ru_maxrss from wait4(git clone): the largest single process of \
         git and its helpers (git-remote-https, index-pack, ssh, ...), not their sum; exec keeps the \
         spawning process's high-water mark in it, so this bench's own VmHWM ({:.1} MiB) is its floor.",
        mib(status_kib(std::process::id() as i32, "VmHWM").unwrap_or(0))
    );
}

/// `run` gives the row, unless a tool it needs is missing.
fn forge_row(
    name: &'static str,
    tools: &[(&str, &str)],
    run: impl FnOnce() -> (Vec<BigRound>, Vec<(f64, u64)>),
) -> ForgeRow {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(var, tool)| !tool_exists(var, tool))
        .map(|(_, tool)| tool.to_string())
        .collect();
    if !missing.is_empty() {
        let why = format!(
            "{} missing (run `eval \"$(scripts/setup-forge)\"` first)",
            missing.join(", ")
        );
        println!("{name} forge: {why}");
        return ForgeRow {
            name,
            cut: Vec::new(),
            git: Vec::new(),
            skipped: Some(why),
        };
    }
    let (cut, git) = run();
    ForgeRow {
        name,
        cut,
        git,
        skipped: None,
    }
}

/// Whether the tool is there: the path in `var` (scripts/setup-forge's
/// exports), else `tool` as a path, or a name on PATH.
fn tool_exists(var: &str, tool: &str) -> bool {
    if let Some(path) = std::env::var_os(var).filter(|_| !var.is_empty()) {
        return Path::new(&path).is_file();
    }
    if tool.contains('/') {
        return Path::new(tool).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Rounds of cutover and git, in turn, against one forge.
fn forge_rounds(
    name: &str,
    url: &str,
    source_extra: &str,
    env: &[(&str, &str)],
    git_config: &[String],
    git_env: &[(&str, &str)],
) -> (Vec<BigRound>, Vec<(f64, u64)>) {
    let mut cut = Vec::new();
    let mut gits = Vec::new();
    for round in 1..=BIG_ROUNDS {
        check_interrupted();
        let c = cutover_first_deploy(url, source_extra, env);
        let g = git_clone_shallow(url, git_config, git_env);
        println!(
            "  {name} round {round}: cutover {:>7.0} ms (deploy record {:.0} ms, of which release written {:.0} ms; \
             peak RSS {:.1} MiB, RssAnon {:.1} MiB{}) | git clone --depth 1 {:.0} ms (peak RSS {:.1} MiB)",
            c.wall_ms,
            c.deploy_ms,
            c.write_ms,
            mib(c.hwm_kib),
            mib(c.anon_kib),
            match (c.ssh_hwm_kib, c.ssh_anon_kib) {
                (Some(k), Some(a)) => format!(
                    ", ssh child {:.1} MiB, its RssAnon {:.1} MiB",
                    mib(k),
                    mib(a)
                ),
                _ => String::new(),
            },
            g.0,
            mib(g.1)
        );
        cut.push(c);
        gits.push(g);
    }
    (cut, gits)
}

/// nginx + git-http-backend over TLS with basic auth; cutover with
/// `token_env` and `ca_file`, git with the token in an extra header.
fn https_forge(dir: &Path, big: &Path) -> (Vec<BigRound>, Vec<(f64, u64)>) {
    use base64::Engine;
    let forge = HttpsForge::start(dir, Cert::Good);
    forge.publish(big, "big.git");
    let url = forge.url("big.git");
    let ca = forge.ca_file.display().to_string();
    println!("https forge: {url} (nginx, TLS with a test CA, basic auth, git-http-backend)");
    let extra = format!(
        "username = {}\ntoken_env = \"FORGE_TOKEN\"\nca_file = {}\ndepth = 1",
        toml_str(&forge.username),
        toml_str(&ca)
    );
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", forge.username, forge.token));
    forge_rounds(
        "https",
        &url,
        &extra,
        &[("FORGE_TOKEN", &forge.token)],
        &[format!("http.extraHeader=Authorization: Basic {basic}")],
        &[("GIT_SSL_CAINFO", &ca)],
    )
}

/// sshd + git-shell; cutover with an ed25519 deploy key and known_hosts,
/// git through GIT_SSH_COMMAND with the same two.
fn ssh_forge(dir: &Path, big: &Path) -> (Vec<BigRound>, Vec<(f64, u64)>) {
    let forge = SshForge::start(dir);
    forge.publish(big, "big.git");
    let url = forge.url("big.git");
    let (key, known_hosts) = (forge.ed25519_key(), forge.known_hosts());
    println!("ssh forge: {url} (sshd, git-shell, an ed25519 deploy key)");
    let extra = format!(
        "ssh_key = {}\nknown_hosts = {}\ndepth = 1",
        toml_str(&key.display().to_string()),
        toml_str(&known_hosts.display().to_string())
    );
    let ssh = format!(
        "ssh -i '{}' -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes \
         -o UserKnownHostsFile='{}'",
        key.display(),
        known_hosts.display()
    );
    forge_rounds("ssh", &url, &extra, &[], &[], &[("GIT_SSH_COMMAND", &ssh)])
}

// ---------------------------------------------------------------- HTTP

/// fdserver answers `/` with "<version> <pid>".
fn is_version(body: &str, n: usize) -> bool {
    body.starts_with(&format!("v{n} "))
}

fn status(control: u16) -> Option<serde_json::Value> {
    match http(control, "GET", "/status", &[], b"") {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

// ---------------------------------------------------------------- figures

fn median(v: impl Iterator<Item = f64>) -> f64 {
    p50(&v.collect::<Vec<_>>())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// "median / max" of `v` with `decimals`, or "-" when empty.
fn med_max(v: &[f64], decimals: usize) -> String {
    if v.is_empty() {
        "-".to_string()
    } else {
        format!("{:.*} / {:.*}", decimals, p50(v), decimals, max(v))
    }
}
