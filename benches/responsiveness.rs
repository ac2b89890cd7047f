//! Responsiveness benchmark (issue #8): prints figures, asserts nothing about
//! time.
//!
//! Does the rest of cutover still answer while its source actor is busy?
//! cutover follows a local bare repository (`[source] repo` is a path, its refs
//! watched; `keep = 2`), serves `[control] http` on loopback and supervises a
//! tiny program (this binary, re-executed as `usr1-recorder`) that writes its
//! CLOCK_MONOTONIC time whenever SIGUSR1 reaches it. Three probes run for the
//! whole bench, each started every 20 ms whether or not the previous one was
//! answered (open loop, so a stall counts once per client it would hold up),
//! each sample stamped with CLOCK_MONOTONIC when it started:
//!
//! - `GET /healthz` on `[control] http` (a fresh connection each time, 2 s
//!   client timeout);
//! - `cutover status --json --socket ...` (the CLI on the control socket,
//!   killed after 2 s);
//! - SIGUSR1 to cutover's pid, which forwards it to the program's group;
//!   latency = the program's first receipt at or after the sending, minus
//!   the sending, same clock (signals sent while one is on its way coalesce,
//!   and count as delivered by that next receipt).
//!
//! Samples are grouped by the phase they started in, each phase seen from
//! the outside:
//!
//! - idle: 3 s with nothing going on, for comparison;
//! - hook: `main` moves to a commit with a `slow-hook` file, for which the
//!   `before_cutover` hook sleeps 10 s; window = the hook's start marker file
//!   appearing -> its end marker appearing;
//! - fetch + write: a commit of 10,000 files of 10 KB of random bytes (100 MB,
//!   incompressible) arrives as a `git push` into a watched repository leaves
//!   it: its pack lands in the remote's objects, then `main` moves; window =
//!   that moment -> `current` pointing at the new release;
//! - prune: two small commits later (keep = 2, the new release and the
//!   previous one), deploying the second one removes the 10,000-file release;
//!   window = `current` moving to that commit (pruning is the deploy's last
//!   step) -> the 10,000-file release, and anything that appeared beside it
//!   meanwhile (a trash directory), gone.
//!
//! Fetch + write and prune run ROUNDS times, each with a commit of its own.
//! Separately: idle RSS of `cutover run -- sleep 1000` (VmRSS, RssAnon,
//! RssFile).
//!
//! Run with `cargo bench --bench responsiveness` (about a minute; the first
//! run also generates the commits, cached under
//! target/bench-responsiveness/). Needs git and sh. Traffic goes to 127.0.0.1
//! only. Every process started here lives in a process group of its own; all
//! of them, and the temporary directories, are removed at the end, on panic
//! and on Ctrl-C.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use support::http::http;
use support::procs::Group;
use support::{
    TempDir, command_text, free_port, git, install_cleanup, loadavg, log_problems, machine, max,
    ms, p50, p99, sleep, spawn_cutover, tail, toml_str,
};

const BIN: &str = env!("CARGO_BIN_EXE_cutover");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Each probe starts this long after the previous one started (open loop).
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// Client timeout of `/healthz` and `cutover status`.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Counted apart: samples slower than this.
const SLOW_MS: f64 = 1000.0;
/// How long the bench waits for the last signals to arrive.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);
/// No probe runs longer than this, whatever happens to the main thread.
const PROBES_MAX: Duration = Duration::from_secs(600);

const HOOK_SECS: u64 = 10;
const IDLE: Duration = Duration::from_secs(3);
/// Quiet time before each push.
const SETTLE: Duration = Duration::from_millis(500);
const START_TIMEOUT: Duration = Duration::from_secs(60);
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(120);

/// Big commits (each fetched, written, then pruned once).
const ROUNDS: usize = 5;
const FILES: usize = 10_000;
const FILE_BYTES: usize = 10_000;

const HTTP_P99_TARGET_MS: f64 = 50.0;
const SIGNAL_P99_TARGET_MS: f64 = 10.0;
const RSS_TARGET_BYTES: f64 = 5e6;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("usr1-recorder") {
        usr1_recorder(Path::new(&args[2]));
    }
    install_cleanup();
    let started = Instant::now();
    println!("cutover responsiveness benchmark, issue #8 ({BIN})");
    println!(
        "machine: {}; {}",
        machine(),
        command_text(Command::new("git").arg("--version"), "git ?")
    );
    println!();
    idle_rss();
    println!();
    let commits = Commits::get();
    println!();
    phases(&commits);
    println!();
    println!(
        "whole bench: {:.1} s; load average now {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}

/// CLOCK_MONOTONIC in ns: the one clock of the bench and the recorder.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn ns_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

// ---------------------------------------------------------------- idle RSS

/// kB (KiB) as /proc/PID/status gives them.
struct Rss {
    vm: u64,
    anon: u64,
    file: u64,
    shmem: u64,
}

impl Rss {
    fn read(pid: i32) -> Option<Rss> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        };
        Some(Rss {
            vm: field("VmRSS:")?,
            anon: field("RssAnon:")?,
            file: field("RssFile:")?,
            shmem: field("RssShmem:")?,
        })
    }

    fn describe(&self) -> String {
        let mib = |kb: u64| kb as f64 / 1024.0;
        format!(
            "VmRSS {:.2} MiB ({:.2} MB) = RssAnon {:.2} MiB + RssFile {:.2} MiB + RssShmem {:.2} MiB",
            mib(self.vm),
            self.vm as f64 * 1024.0 / 1e6,
            mib(self.anon),
            mib(self.file),
            mib(self.shmem)
        )
    }
}

fn idle_rss() {
    let dir = TempDir::new("cutover-bench-rss");
    let mut cutover = Group::spawn(
        Command::new(BIN)
            .arg("--socket")
            .arg(dir.path().join("ctl.sock"))
            .args(["run", "--", "sleep", "1000"])
            .current_dir(dir.path())
            .env("CUTOVER_LOG", "warn")
            .env_remove("CUTOVER_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    sleep(Duration::from_secs(1));
    let rss = Rss::read(cutover.pid());
    let exited = cutover.exited();
    cutover.stop(Duration::from_secs(5));
    match (rss, exited) {
        (Some(rss), None) => println!(
            "idle RSS of `cutover run -- sleep 1000` (1 s after start): {} -- target VmRSS <= 5 MB: {}",
            rss.describe(),
            verdict(rss.vm as f64 * 1024.0 <= RSS_TARGET_BYTES)
        ),
        (_, exited) => println!(
            "idle RSS of `cutover run -- sleep 1000`: not measured (cutover exited: {exited:?})"
        ),
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

// ---------------------------------------------------------------- commits

/// The commits the bench deploys, generated once into a bare repository
/// under the target directory, one pack per round: a run links into its
/// fresh remote the packs of what it pushes when it pushes it.
struct Commits {
    staging: PathBuf,
    /// The pack holding `c0` and `hook`.
    first_pack: String,
    c0: String,
    hook: String,
    rounds: Vec<Round>,
}

struct Round {
    pack: String,
    /// FILES files of FILE_BYTES random bytes each.
    big: String,
    /// Small commits after it: deploying `b` prunes `big`.
    a: String,
    b: String,
}

impl Commits {
    fn get() -> Commits {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(REPO).join("target"));
        let base = target.join("bench-responsiveness");
        let repo = base.join(format!("commits-{ROUNDS}x{FILES}x{FILE_BYTES}-v1.git"));
        if let Some(c) = Commits::load(&repo) {
            println!("commits: cached in {}", repo.display());
            return c;
        }
        let started = Instant::now();
        std::fs::create_dir_all(&base).unwrap();
        // What an interrupted generation left behind.
        for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("tmp-"))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let tmp = base.join(format!("tmp-{}.git", std::process::id()));
        git(
            &base,
            &["init", "-q", "--bare", "-b", "main", tmp.to_str().unwrap()],
        );
        let mut manifest = String::new();
        let pack = fast_import(&tmp, |w| {
            header(w, "c0", 1, None)?;
            inline(w, "version", b"c0\n")?;
            header(w, "hook", 2, Some(":1"))?;
            inline(w, "version", b"hook\n")?;
            inline(w, "slow-hook", b"the before_cutover hook sleeps for this\n")
        });
        manifest.push_str(&format!("first_pack {pack}\n"));
        let mut previous = git(&tmp, &["rev-parse", "refs/staging/hook"]);
        for r in 0..ROUNDS {
            let pack = fast_import(&tmp, |w| {
                let mut content = Vec::with_capacity(FILE_BYTES);
                for i in 0..FILES {
                    random_bytes(((r as u64) << 32) | i as u64, &mut content);
                    write!(w, "blob\nmark :{}\ndata {}\n", i + 1, content.len())?;
                    w.write_all(&content)?;
                    w.write_all(b"\n")?;
                }
                let big = FILES + 1;
                header(w, &format!("big{r}"), big, Some(&previous))?;
                writeln!(w, "deleteall")?;
                for i in 0..FILES {
                    writeln!(w, "M 100644 :{} {}", i + 1, big_path(i))?;
                }
                inline(w, "version", format!("big{r}\n").as_bytes())?;
                header(w, &format!("a{r}"), big + 1, Some(&format!(":{big}")))?;
                writeln!(w, "deleteall")?;
                inline(w, "version", format!("a{r}\n").as_bytes())?;
                header(w, &format!("b{r}"), big + 2, Some(&format!(":{}", big + 1)))?;
                writeln!(w, "deleteall")?;
                inline(w, "version", format!("b{r}\n").as_bytes())
            });
            manifest.push_str(&format!("pack{r} {pack}\n"));
            previous = git(&tmp, &["rev-parse", &format!("refs/staging/b{r}")]);
        }
        for name in std::iter::once("c0".to_string())
            .chain(std::iter::once("hook".to_string()))
            .chain((0..ROUNDS).flat_map(|r| [format!("big{r}"), format!("a{r}"), format!("b{r}")]))
        {
            let sha = git(&tmp, &["rev-parse", &format!("refs/staging/{name}")]);
            manifest.push_str(&format!("{name} {sha}\n"));
        }
        std::fs::write(tmp.join("bench-manifest"), manifest).unwrap();
        let _ = std::fs::remove_dir_all(&repo);
        std::fs::rename(&tmp, &repo).unwrap();
        println!(
            "commits: generated in {:.1} s into {}",
            started.elapsed().as_secs_f64(),
            repo.display()
        );
        Commits::load(&repo).expect("the commits just generated")
    }

    fn load(repo: &Path) -> Option<Commits> {
        let text = std::fs::read_to_string(repo.join("bench-manifest")).ok()?;
        let map: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once(' ')).collect();
        let get = |k: &str| map.get(k).map(|v| v.to_string());
        let commits = Commits {
            staging: repo.to_path_buf(),
            first_pack: get("first_pack")?,
            c0: get("c0")?,
            hook: get("hook")?,
            rounds: (0..ROUNDS)
                .map(|r| {
                    Some(Round {
                        pack: get(&format!("pack{r}"))?,
                        big: get(&format!("big{r}"))?,
                        a: get(&format!("a{r}"))?,
                        b: get(&format!("b{r}"))?,
                    })
                })
                .collect::<Option<Vec<_>>>()?,
        };
        let packs =
            std::iter::once(&commits.first_pack).chain(commits.rounds.iter().map(|r| &r.pack));
        for pack in packs {
            for ext in ["pack", "idx"] {
                if !repo.join(format!("objects/pack/{pack}.{ext}")).is_file() {
                    return None;
                }
            }
        }
        Some(commits)
    }
}

/// One `git fast-import` run over what `write` produces: the name of the one
/// pack it wrote (`pack-<hash>`).
fn fast_import(repo: &Path, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> String {
    let packs = |repo: &Path| -> HashSet<String> {
        std::fs::read_dir(repo.join("objects/pack"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".pack")
                    .map(str::to_string)
            })
            .collect()
    };
    let before = packs(repo);
    // Keeps even a small import as a pack rather than loose objects.
    support::fixture::git::fast_import(repo, &["fastimport.unpackLimit=0"], write);
    let new: Vec<String> = packs(repo).difference(&before).cloned().collect();
    assert_eq!(new.len(), 1, "git fast-import wrote packs {new:?}");
    new.into_iter().next().unwrap()
}

fn header(w: &mut dyn Write, name: &str, mark: usize, from: Option<&str>) -> std::io::Result<()> {
    let message = format!("{name}: commit for benches/responsiveness.rs");
    write!(
        w,
        "commit refs/staging/{name}\nmark :{mark}\n\
         author bench <bench@example.com> 1700000000 +0000\n\
         committer bench <bench@example.com> 1700000000 +0000\n\
         data {}\n{message}\n",
        message.len()
    )?;
    if let Some(from) = from {
        writeln!(w, "from {from}")?;
    }
    Ok(())
}

fn inline(w: &mut dyn Write, path: &str, content: &[u8]) -> std::io::Result<()> {
    write!(w, "M 100644 inline {path}\ndata {}\n", content.len())?;
    w.write_all(content)?;
    w.write_all(b"\n")
}

/// 100 directories of 100 files.
fn big_path(i: usize) -> String {
    format!("d{:02}/f{:04}.bin", i / 100, i)
}

/// FILE_BYTES of xorshift output: incompressible, deterministic per seed.
fn random_bytes(seed: u64, out: &mut Vec<u8>) {
    out.clear();
    let mut x = (seed ^ 0x5eed_0000_0000).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < FILE_BYTES {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(FILE_BYTES);
}

/// Hard-links (or copies) pack `stem` of `from` into `to`, its index last,
/// as a push leaves it: git and cutover take a pack once its index exists.
fn link_pack(from: &Path, stem: &str, to: &Path) {
    let from = from.join("objects/pack");
    let to = to.join("objects/pack");
    let mut files: Vec<String> = std::fs::read_dir(&from)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(&format!("{stem}.")))
        .collect();
    files.sort_by_key(|n| n.ends_with(".idx"));
    for name in files {
        if std::fs::hard_link(from.join(&name), to.join(&name)).is_err() {
            std::fs::copy(from.join(&name), to.join(&name)).unwrap();
        }
    }
}

// ---------------------------------------------------------------- probes

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 200, exit 0, or the signal arrived.
    Ok,
    /// Answered, but not 200 / not exit 0.
    NotOk,
    /// No answer within the client timeout (the signal: never arrived).
    TimedOut,
    /// No answer for another reason (refused connection, spawn failure).
    Failed,
}

#[derive(Clone, Copy)]
struct Sample {
    /// now_ns() when the probe started.
    at: u64,
    ms: f64,
    outcome: Outcome,
}

fn healthz(port: u16) -> Sample {
    let at = now_ns();
    let answer = http(port, "GET", "/healthz", &[], b"");
    let took = now_ns() - at;
    let outcome = match answer {
        Ok((200, _)) => Outcome::Ok,
        Ok(_) => Outcome::NotOk,
        // http() gives up after CLIENT_TIMEOUT without an answer.
        Err(_) if ns_ms(took) >= ms(CLIENT_TIMEOUT) - 100.0 => Outcome::TimedOut,
        Err(_) => Outcome::Failed,
    };
    Sample {
        at,
        ms: ns_ms(took),
        outcome,
    }
}

fn cli_status(socket: &Path) -> Sample {
    let at = now_ns();
    let spawned = Command::new(BIN)
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .env_remove("CUTOVER_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let outcome = match spawned {
        Err(_) => Outcome::Failed,
        Ok(mut child) => {
            let deadline = Instant::now() + CLIENT_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(status)) if status.success() => break Outcome::Ok,
                    Ok(Some(_)) => break Outcome::NotOk,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_micros(500));
                    }
                    result => {
                        // Our own unreaped child: kill(2) cannot hit another process.
                        let _ = child.kill();
                        let _ = child.wait();
                        break if result.is_ok() {
                            Outcome::TimedOut
                        } else {
                            Outcome::Failed
                        };
                    }
                }
            }
        }
    };
    Sample {
        at,
        ms: ns_ms(now_ns() - at),
        outcome,
    }
}

/// Starts `probe` every PROBE_EVERY, each on a thread of its own, until
/// `stop`. Open loop: a slow answer does not delay the next probe, so a stall
/// shows in as many samples as the clients it would have held up (polling
/// after each answer would record one). In flight at once: at most the
/// client timeout over PROBE_EVERY.
fn spawn_probe(
    stop: &Arc<AtomicBool>,
    probe: impl Fn() -> Sample + Send + Sync + 'static,
) -> JoinHandle<Vec<Sample>> {
    let stop = stop.clone();
    let probe = Arc::new(probe);
    std::thread::spawn(move || {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut running: Vec<JoinHandle<()>> = Vec::new();
        let started = Instant::now();
        let mut next = started;
        while !stop.load(Ordering::SeqCst) && started.elapsed() < PROBES_MAX {
            running.retain(|t| !t.is_finished());
            let (probe, samples) = (probe.clone(), samples.clone());
            running.push(std::thread::spawn(move || {
                let sample = probe();
                samples.lock().unwrap().push(sample);
            }));
            next = (next + PROBE_EVERY).max(Instant::now());
            std::thread::sleep(next - Instant::now());
        }
        for t in running {
            let _ = t.join();
        }
        let mut samples = std::mem::take(&mut *samples.lock().unwrap());
        samples.sort_by_key(|s| s.at);
        samples
    })
}

/// Sends SIGUSR1 to cutover every PROBE_EVERY until `stop`, open loop like
/// [`spawn_probe`]: the times it sent them.
fn spawn_signal_sender(stop: &Arc<AtomicBool>, cutover: i32) -> JoinHandle<Vec<u64>> {
    let stop = stop.clone();
    // A pidfd names this very process, even after it is gone and its pid
    // reused; kill(2) is the fallback on kernels without pidfds.
    // SAFETY: pidfd_open(2) on our child; the fd is owned from here on.
    let pidfd = unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, cutover, 0);
        (fd >= 0).then(|| OwnedFd::from_raw_fd(fd as i32))
    };
    std::thread::spawn(move || {
        let mut sent = Vec::new();
        let started = Instant::now();
        let mut next = started;
        while !stop.load(Ordering::SeqCst) && started.elapsed() < PROBES_MAX {
            let at = now_ns();
            // SAFETY: a signal to the cutover this bench started.
            let ok = unsafe {
                match &pidfd {
                    Some(fd) => {
                        libc::syscall(
                            libc::SYS_pidfd_send_signal,
                            fd.as_raw_fd(),
                            libc::SIGUSR1,
                            std::ptr::null::<libc::siginfo_t>(),
                            0,
                        ) == 0
                    }
                    None => libc::kill(cutover, libc::SIGUSR1) == 0,
                }
            };
            if !ok {
                break;
            }
            sent.push(at);
            next = (next + PROBE_EVERY).max(Instant::now());
            std::thread::sleep(next - Instant::now());
        }
        sent
    })
}

/// One sample per signal sent: its latency is the first arrival at or after
/// it. Signals sent while an earlier one is still on its way coalesce (a
/// standard signal is pending at most once, in cutover and in the program),
/// so they all count as delivered by the next arrival, which is when the
/// program could act on them. A signal with no arrival after it is lost: it
/// counts with the time until `end`.
fn signal_samples(sent: &[u64], arrived: &[u64], end: u64) -> Vec<Sample> {
    let mut next = 0;
    sent.iter()
        .map(|&at| {
            while next < arrived.len() && arrived[next] < at {
                next += 1;
            }
            match arrived.get(next) {
                Some(&r) => Sample {
                    at,
                    ms: ns_ms(r - at),
                    outcome: Outcome::Ok,
                },
                None => Sample {
                    at,
                    ms: ns_ms(end.saturating_sub(at)),
                    outcome: Outcome::TimedOut,
                },
            }
        })
        .collect()
}

/// The recorder's arrival times, in order.
fn arrivals(record: &Path) -> Vec<u64> {
    let mut times: Vec<u64> = std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    times.sort_unstable();
    times
}

/// The supervised program: blocks SIGUSR1 and appends the CLOCK_MONOTONIC
/// time of each one's arrival to `path`, after a first line "ready".
fn usr1_recorder(path: &Path) -> ! {
    // SAFETY: signal-set calls on this process's one thread.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let mut out = File::options()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    out.write_all(b"ready\n").unwrap();
    loop {
        // SAFETY: waits for a signal of the set blocked above.
        let signal = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if signal == libc::SIGUSR1 {
            let at = now_ns();
            let _ = out.write_all(format!("{at}\n").as_bytes());
        }
    }
}

// ---------------------------------------------------------------- phases

struct Phase {
    name: String,
    /// [start, end] in now_ns().
    windows: Vec<(u64, u64)>,
}

impl Phase {
    fn new(name: &str) -> Phase {
        Phase {
            name: name.to_string(),
            windows: Vec::new(),
        }
    }

    fn contains(&self, at: u64) -> bool {
        self.windows.iter().any(|&(s, e)| s <= at && at <= e)
    }

    /// "10.00 s", or for several windows "5 x 0.19-0.39 s".
    fn length(&self) -> String {
        let secs: Vec<f64> = self
            .windows
            .iter()
            .map(|&(s, e)| ns_ms(e - s) / 1000.0)
            .collect();
        match secs.as_slice() {
            [one] => format!("{one:.2} s"),
            _ => format!(
                "{} x {:.2}-{:.2} s",
                secs.len(),
                secs.iter().copied().fold(f64::MAX, f64::min),
                max(&secs)
            ),
        }
    }
}

struct Bench<'a> {
    cutover: &'a mut Group,
    log: &'a Path,
    volume: PathBuf,
    remote: PathBuf,
}

impl Bench<'_> {
    /// Polls `cond` every 2 ms: now_ns() when it held. Panics (and so cleans
    /// up) with the log's tail after `timeout` or if cutover exited.
    fn wait_until(&mut self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            if cond() {
                return now_ns();
            }
            if let Some(status) = self.cutover.exited() {
                panic!(
                    "waiting for {what}: cutover exited ({status}):\n{}",
                    tail(self.log, 30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {} s:\n{}",
                timeout.as_secs(),
                tail(self.log, 30)
            );
            sleep(Duration::from_millis(2));
        }
    }

    /// now_ns() when `current` points at `sha`.
    fn wait_current(&mut self, sha: &str) -> u64 {
        let current = self.volume.join("current");
        self.wait_until(
            &format!("current -> {}", &sha[..12]),
            DEPLOY_TIMEOUT,
            || std::fs::read_link(&current).is_ok_and(|t| t.file_name().is_some_and(|n| n == sha)),
        )
    }

    /// Waits for the history's record of `sha` deployed: its deploy is over.
    fn wait_deployed(&mut self, sha: &str) {
        let history = self.volume.join("history.jsonl");
        self.wait_until(
            &format!("deploy of {} recorded", &sha[..12]),
            DEPLOY_TIMEOUT,
            || {
                std::fs::read_to_string(&history)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .any(|r| r["sha"] == sha && r["outcome"] == "deployed")
            },
        );
    }

    /// Moves the remote's `main` (git's own lock-and-rename, as a push does).
    fn push(&self, sha: &str) {
        git(&self.remote, &["update-ref", "refs/heads/main", sha]);
    }
}

/// Names in the volume's top level, `releases/` and `.cutover/`.
fn volume_names(volume: &Path) -> HashSet<PathBuf> {
    let mut names = HashSet::new();
    for dir in [
        volume.to_path_buf(),
        volume.join("releases"),
        volume.join(".cutover"),
    ] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            names.insert(e.path());
        }
    }
    names
}

fn phases(commits: &Commits) {
    let dir = TempDir::new("cutover-bench-responsiveness");
    let remote = dir.path().join("remote.git");
    git(
        dir.path(),
        &["init", "-q", "--bare", "-b", "main", "remote.git"],
    );
    link_pack(&commits.staging, &commits.first_pack, &remote);
    git(&remote, &["update-ref", "refs/heads/main", &commits.c0]);
    let volume = dir.path().join("volume");
    let record = dir.path().join("usr1.log");
    let (hook_start, hook_end) = (dir.path().join("hook.start"), dir.path().join("hook.end"));
    let hook = format!(
        "if [ -e slow-hook ]; then : > '{}'; sleep {HOOK_SECS}; : > '{}'; fi",
        hook_start.display(),
        hook_end.display()
    );
    let control = free_port();
    let me = std::env::current_exe().unwrap();
    let config = format!(
        r#"[app]
command = [{me}, "usr1-recorder", {record}]
stop_timeout = "2s"
reload_strategy = "none"

[ready]
grace = "0s"

[control]
http = "127.0.0.1:{control}"

[source]
repo = {repo}
ref = "main"
root = {root}
keep = 2

[hooks]
before_cutover = [["sh", "-c", {hook}]]
timeout = "1m"
"#,
        me = toml_str(&me.display().to_string()),
        record = toml_str(&record.display().to_string()),
        repo = toml_str(&remote.display().to_string()),
        root = toml_str(&volume.display().to_string()),
        hook = toml_str(&hook),
    );
    let log = dir.path().join("cutover.log");
    let socket = dir.path().join("ctl.sock");
    let mut cutover = spawn_cutover(dir.path(), &config, &log, "info", &[]);
    let pid = cutover.pid();
    let mut bench = Bench {
        cutover: &mut cutover,
        log: &log,
        volume: volume.clone(),
        remote,
    };
    bench.wait_current(&commits.c0);
    bench.wait_deployed(&commits.c0);
    bench.wait_until("the recorder ready", START_TIMEOUT, || {
        std::fs::read_to_string(&record).is_ok_and(|t| t.starts_with("ready\n"))
    });

    let stop = Arc::new(AtomicBool::new(false));
    let probes = [
        ("GET /healthz", spawn_probe(&stop, move || healthz(control))),
        ("cutover status --json", {
            let socket = socket.clone();
            spawn_probe(&stop, move || cli_status(&socket))
        }),
    ];
    let signals = spawn_signal_sender(&stop, pid);
    sleep(SETTLE);

    let mut idle = Phase::new("idle");
    let t = now_ns();
    sleep(IDLE);
    idle.windows.push((t, now_ns()));

    let mut hook = Phase::new(&format!("before_cutover hook (sleep {HOOK_SECS})"));
    sleep(SETTLE);
    bench.push(&commits.hook);
    let start = bench.wait_until("the hook's start", DEPLOY_TIMEOUT, || hook_start.exists());
    let end = bench.wait_until("the hook's end", DEPLOY_TIMEOUT, || hook_end.exists());
    hook.windows.push((start, end));
    bench.wait_current(&commits.hook);
    bench.wait_deployed(&commits.hook);

    let mut fetch = Phase::new(&format!(
        "fetch + write {FILES} files / {:.0} MB",
        (FILES * FILE_BYTES) as f64 / 1e6
    ));
    let mut prune = Phase::new(&format!("prune a {FILES}-file release"));
    for (n, round) in commits.rounds.iter().enumerate() {
        sleep(SETTLE);
        let start = now_ns();
        link_pack(&commits.staging, &round.pack, &bench.remote);
        bench.push(&round.big);
        let end = bench.wait_current(&round.big);
        fetch.windows.push((start, end));
        bench.wait_deployed(&round.big);

        sleep(SETTLE);
        bench.push(&round.a);
        bench.wait_current(&round.a);
        bench.wait_deployed(&round.a);

        sleep(SETTLE);
        let before = volume_names(&volume);
        bench.push(&round.b);
        let start = bench.wait_current(&round.b);
        let big = volume.join("releases").join(&round.big);
        let end = bench.wait_until("the big release pruned", DEPLOY_TIMEOUT, || {
            !big.exists()
                && volume_names(&volume)
                    .iter()
                    .all(|p| before.contains(p) || p.ends_with(&round.b))
        });
        prune.windows.push((start, end));
        bench.wait_deployed(&round.b);
        println!(
            "round {}: fetch + write {:.0} ms, prune {:.0} ms",
            n + 1,
            ns_ms(fetch.windows[n].1 - fetch.windows[n].0),
            ns_ms(end - start)
        );
    }
    sleep(SETTLE);
    let rss = Rss::read(pid);

    stop.store(true, Ordering::SeqCst);
    let mut samples: Vec<(&str, Vec<Sample>)> = probes
        .into_iter()
        .map(|(name, thread)| (name, thread.join().unwrap_or_default()))
        .collect();
    let sent = signals.join().unwrap_or_default();
    // The last signals' arrivals, if they are coming.
    let last = sent.last().copied().unwrap_or(0);
    let deadline = Instant::now() + SIGNAL_TIMEOUT;
    while arrivals(&record).last().is_none_or(|&r| r < last) && Instant::now() < deadline {
        sleep(Duration::from_millis(10));
    }
    samples.push((
        "SIGUSR1 forwarded",
        signal_samples(&sent, &arrivals(&record), now_ns()),
    ));
    let problems = log_problems(&log, &[]);
    cutover.stop(Duration::from_secs(10));

    let phases = [idle, hook, fetch, prune];
    println!();
    println!(
        "latency while the source actor is busy ({} rounds of fetch + write and prune; each probe started \
         every {} ms, open loop; samples counted in the phase they started in)",
        ROUNDS,
        PROBE_EVERY.as_millis()
    );
    println!(
        "{:<34} | {:<22} | {:<21} | {:>7} | {:>8} | {:>8} | {:>8} | {:>4} | {:>9} | {:>6} | target",
        "phase",
        "window",
        "probe",
        "samples",
        "p50 ms",
        "p99 ms",
        "max ms",
        ">1 s",
        "no answer",
        "not ok",
    );
    println!(
        "{:-<34}-+-{:-<22}-+-{:-<21}-+-{:-<7}-+-{:-<8}-+-{:-<8}-+-{:-<8}-+-{:-<4}-+-{:-<9}-+-{:-<6}-+-{:-<22}",
        "", "", "", "", "", "", "", "", "", "", ""
    );
    for phase in &phases {
        for (i, (probe, all)) in samples.iter().enumerate() {
            let mine: Vec<Sample> = all
                .iter()
                .copied()
                .filter(|s| phase.contains(s.at))
                .collect();
            let timed: Vec<f64> = mine
                .iter()
                .filter(|s| s.outcome != Outcome::Failed)
                .map(|s| s.ms)
                .collect();
            let count = |f: &dyn Fn(&Sample) -> bool| mine.iter().filter(|s| f(s)).count();
            let target_ms = if probe.starts_with("SIGUSR1") {
                SIGNAL_P99_TARGET_MS
            } else {
                HTTP_P99_TARGET_MS
            };
            let (p50s, p99s, maxs, target) = if timed.is_empty() {
                (
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("p99 <= {target_ms:.0} ms: -"),
                )
            } else {
                let p = p99(&timed);
                (
                    format!("{:.1}", p50(&timed)),
                    format!("{p:.1}"),
                    format!("{:.1}", max(&timed)),
                    format!("p99 <= {target_ms:.0} ms: {}", verdict(p <= target_ms)),
                )
            };
            println!(
                "{:<34} | {:<22} | {:<21} | {:>7} | {:>8} | {:>8} | {:>8} | {:>4} | {:>9} | {:>6} | {}",
                if i == 0 { phase.name.as_str() } else { "" },
                if i == 0 {
                    phase.length()
                } else {
                    String::new()
                },
                probe,
                mine.len(),
                p50s,
                p99s,
                maxs,
                count(&|s| s.ms > SLOW_MS),
                count(&|s| matches!(s.outcome, Outcome::TimedOut | Outcome::Failed)),
                count(&|s| s.outcome == Outcome::NotOk),
                target
            );
        }
    }
    println!();
    println!(
        "windows: hook = its start marker -> its end marker; fetch + write = the pack linked into the remote and \
         `main` moved -> `current` at the new release; prune = `current` at the commit whose deploy prunes the \
         {FILES}-file release -> that release gone. >1 s = slower than 1 s, timeouts included; no answer = \
         none within {} s (the sample counts with the time it was given up after, a lower bound; a signal: \
         none arrived within {} s after the last was sent) or an error; not ok = an answer other than 200 / \
         exit 0. SIGUSR1 latency = the bench's pidfd_send_signal -> the program's next sigwaitinfo return, \
         both CLOCK_MONOTONIC. The remote is a local path: cutover \
         hard-links its packs, so `fetch` costs little and the phase is mostly the write.",
        CLIENT_TIMEOUT.as_secs(),
        SIGNAL_TIMEOUT.as_secs()
    );
    for (probe, all) in &samples {
        println!("{probe}: {} samples over the whole run", all.len());
    }
    if let Some(rss) = rss {
        println!(
            "RSS of this cutover (with [source]) after the phases: {}",
            rss.describe()
        );
    }
    for p in problems {
        println!("note: {p}");
    }
}
