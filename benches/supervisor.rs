//! Supervisor benchmark: prints figures, asserts nothing about time.
//!
//! - idle RSS of cutover supervising `sleep` (target <= 5 MB);
//! - time to reap 10,000 orphans that exit at the same moment (target < 1 s);
//! - start-to-exit overhead of `cutover run -- true` against `true` alone.
//!
//! Run with `cargo bench --bench supervisor`. The binary re-executes itself as
//! the supervised app (`orphan-helper`) so the orphans cost little memory.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cutover");
const ORPHANS: usize = 10_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("orphan-helper") {
        orphan_helper(args[2].parse().unwrap(), Path::new(&args[3]));
    }
    println!("cutover supervisor benchmark ({})", BIN);
    idle_rss();
    holder_rss();
    reap_orphans();
    start_overhead();
}

/// A `kB` field of /proc/PID/status (VmRSS, RssAnon, RssFile, ...).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// VmRSS = RssAnon (heap, stacks: cutover's own) + RssFile (the mapped
/// pages of the binary and libc, largely shared with other processes)
/// + RssShmem.
fn idle_rss() {
    // A socket of its own: with /run/cutover.sock taken by another cutover,
    // this one would run without a control socket and measure less.
    let socket = std::env::temp_dir().join(format!("cutover-rss-{}.sock", std::process::id()));
    let mut command = Command::new(BIN);
    command
        .args(["run", "--", "sleep", "1000"])
        .env("CUTOVER_SOCKET", &socket);
    print_rss("idle RSS supervising sleep:   ", command);
}

/// `cutover hold` holding one socket, with its HTTP endpoint, no taker.
fn holder_rss() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(BIN);
    command.args([
        "hold",
        "--listen",
        "http=127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--at",
    ]);
    command.arg(dir.path().join("sockets"));
    print_rss("idle RSS of `cutover hold`:   ", command);
}

/// Starts `command`, lets it settle, prints its RSS and stops it.
fn print_rss(what: &str, mut command: Command) {
    let mut child = command
        .env("CUTOVER_LOG", "warn")
        .process_group(0)
        .spawn()
        .unwrap();
    // Past the default 1 s readiness grace, so the figure is the idle state
    // and not a moment of start-up.
    std::thread::sleep(Duration::from_secs(2));
    let pid = child.id();
    let [rss, anon, file] = ["VmRSS", "RssAnon", "RssFile"].map(|f| status_kib(pid, f));
    // SAFETY: kill(2) on the group we just started.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
    child.wait().unwrap();
    println!(
        "{what} {:>8.2} MiB   (target <= 5 MB; VmRSS {rss} kB)",
        rss as f64 / 1024.0
    );
    println!(
        "  of which RssAnon:            {:>8.2} MiB   ({anon} kB)",
        anon as f64 / 1024.0
    );
    println!(
        "  of which RssFile:            {:>8.2} MiB   ({file} kB)",
        file as f64 / 1024.0
    );
}

fn children(pid: u32) -> usize {
    let mut n = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        n += list.split_whitespace().count();
    }
    n
}

fn reap_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    nix::unistd::mkfifo(&release, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let me = std::env::current_exe().unwrap();
    let mut cutover = Command::new(BIN)
        .args(["run", "--"])
        .arg(&me)
        .args(["orphan-helper", &ORPHANS.to_string()])
        .arg(&release)
        .env("CUTOVER_LOG", "warn")
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    // The helper prints one line once all orphans are parked on a pipe.
    let mut ready = [0u8; 6];
    cutover
        .stdout
        .take()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    let pid = cutover.id();
    let parked = children(pid);
    let started = Instant::now();
    drop(File::options().write(true).open(&release).unwrap());
    // The helper stays until the orphans are gone, so one child is left.
    while children(pid) > 1 {
        std::thread::sleep(Duration::from_micros(200));
    }
    let took = started.elapsed();
    // SAFETY: kill(2) on the group we just started.
    unsafe { libc::kill(-(pid as i32), libc::SIGTERM) };
    cutover.wait().unwrap();
    println!(
        "reap {ORPHANS} exited orphans:     {:>8.1} ms    (target < 1 s; {} parked children)",
        took.as_secs_f64() * 1000.0,
        parked - 1
    );
}

/// Supervised app: orphans N grandchildren blocked on a pipe, then releases
/// them all at once when the release FIFO is opened.
fn orphan_helper(n: usize, release: &Path) -> ! {
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    for _ in 0..n {
        // SAFETY: this helper process is single-threaded; the children only
        // call fork, read and _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                if let nix::unistd::ForkResult::Parent { .. } = nix::unistd::fork().unwrap() {
                    libc::_exit(0);
                }
                drop(write_end);
                let mut b = [0u8; 1];
                libc::read(
                    std::os::fd::AsRawFd::as_raw_fd(&read_end),
                    b.as_mut_ptr().cast(),
                    1,
                );
                libc::_exit(0);
            },
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap();
            }
        }
    }
    drop(read_end);
    println!("ready");
    drop(File::open(release).unwrap());
    drop(write_end);
    std::thread::sleep(Duration::from_secs(1000));
    std::process::exit(0)
}

fn start_overhead() {
    const RUNS: u32 = 200;
    let time = |cmd: &mut dyn FnMut() -> Command| {
        let started = Instant::now();
        for _ in 0..RUNS {
            let status = cmd()
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
        }
        started.elapsed() / RUNS
    };
    let plain = time(&mut || Command::new("true"));
    let wrapped = time(&mut || {
        let mut c = Command::new(BIN);
        c.args(["run", "--", "true"]).env("CUTOVER_LOG", "warn");
        c
    });
    println!(
        "`true` alone / under cutover:  {:>8.2} ms / {:.2} ms  (mean of {RUNS})",
        plain.as_secs_f64() * 1000.0,
        wrapped.as_secs_f64() * 1000.0
    );
}
