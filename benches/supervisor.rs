//! Supervisor benchmark: prints figures, asserts nothing about time.
//!
//! - idle RSS of cutover supervising `sleep` (target <= 5 MB), and of
//!   `cutover hold` holding one socket;
//! - with `CUTOVER_BASELINE=BINARY`: the same two idle figures of this build
//!   and of BINARY (an earlier build, e.g. the one before a change) side by
//!   side, measured interleaved in one run (this, baseline, this, baseline,
//!   ... after one discarded warm-up each), as medians of VmRSS, RssAnon and
//!   RssFile, with both binaries' sizes; goals: RssAnon <= 1 MB, binary and
//!   VmRSS at most 0.5 MB above the baseline's;
//! - time to reap 10,000 orphans that exit at the same moment (target < 1 s);
//! - start-to-exit overhead of `cutover run -- true` against `true` alone.
//!
//! Run with `cargo bench --bench supervisor`, or for the side-by-side idle
//! memory `CUTOVER_BASELINE=$(scripts/bench-baseline) cargo bench --bench
//! supervisor` (scripts/bench-baseline builds and caches the release binary
//! of a git revision, by default the last one before the git transports).
//! The binary re-executes itself as the supervised app (`orphan-helper`) so
//! the orphans cost little memory.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cutover");
const ORPHANS: usize = 10_000;
/// Measurements per binary in the side-by-side comparison.
const SIDE_BY_SIDE_ROUNDS: usize = 7;
/// How long an idle process runs before its memory is read: past the
/// default 1 s readiness grace, so the figure is the idle state and not a
/// moment of start-up.
const SETTLE: Duration = Duration::from_secs(2);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("orphan-helper") {
        orphan_helper(args[2].parse().unwrap(), Path::new(&args[3]));
    }
    println!("cutover supervisor benchmark ({})", BIN);
    match std::env::var_os("CUTOVER_BASELINE").filter(|v| !v.is_empty()) {
        Some(baseline) => side_by_side(Path::new(&baseline)),
        None => {
            for kind in [Idle::Run, Idle::Hold] {
                print_rss(kind);
            }
            println!(
                "  (side by side with an earlier build, in one run: \
                 CUTOVER_BASELINE=$(scripts/bench-baseline) cargo bench --bench supervisor)"
            );
        }
    }
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

/// The idle processes whose memory is measured.
#[derive(Clone, Copy)]
enum Idle {
    /// `cutover run -- sleep 1000`.
    Run,
    /// `cutover hold` holding one socket, with its HTTP endpoint, no taker.
    Hold,
}

impl Idle {
    fn label(self) -> &'static str {
        match self {
            Idle::Run => "cutover run -- sleep 1000",
            Idle::Hold => "cutover hold",
        }
    }

    /// Starts it from `bin`, lets it settle, reads its memory and stops it.
    fn measure(self, bin: &Path) -> Rss {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(bin);
        match self {
            // A socket of its own: with /run/cutover.sock taken by another
            // cutover, this one would run without a control socket and
            // measure less.
            Idle::Run => command
                .args(["run", "--", "sleep", "1000"])
                .env("CUTOVER_SOCKET", dir.path().join("cutover.sock")),
            Idle::Hold => command
                .args([
                    "hold",
                    "--listen",
                    "http=127.0.0.1:0",
                    "--http",
                    "127.0.0.1:0",
                    "--at",
                ])
                .arg(dir.path().join("sockets")),
        };
        let mut child = command
            .env("CUTOVER_LOG", "warn")
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        std::thread::sleep(SETTLE);
        let pid = child.id();
        let alive = child.try_wait().unwrap().is_none();
        let rss = alive.then(|| Rss {
            vm_rss: status_kib(pid, "VmRSS"),
            anon: status_kib(pid, "RssAnon"),
            file: status_kib(pid, "RssFile"),
        });
        // SAFETY: kill(2) on the group we just started.
        unsafe { libc::kill(-(pid as i32), libc::SIGTERM) };
        let status = child.wait().unwrap();
        rss.unwrap_or_else(|| {
            panic!(
                "{} ({}) exited within {SETTLE:?}: {status}",
                self.label(),
                bin.display()
            )
        })
    }
}

/// kB figures of /proc/PID/status. VmRSS = RssAnon (heap, stacks:
/// cutover's own) + RssFile (the mapped pages of the binary and libc,
/// largely shared with other processes) + RssShmem.
#[derive(Clone, Copy)]
struct Rss {
    vm_rss: u64,
    anon: u64,
    file: u64,
}

fn print_rss(kind: Idle) {
    let Rss { vm_rss, anon, file } = kind.measure(Path::new(BIN));
    let what = match kind {
        Idle::Run => "idle RSS supervising sleep:   ",
        Idle::Hold => "idle RSS of `cutover hold`:   ",
    };
    println!(
        "{what} {:>8.2} MiB   (target <= 5 MB; VmRSS {vm_rss} kB)",
        vm_rss as f64 / 1024.0
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

/// 0.5 MB and 1 MB, decimal: the goals' units, taken strictly (in KiB,
/// /proc's "kB": 488 and 977).
const HALF_MB: f64 = 500_000.0;
const ONE_MB: f64 = 1_000_000.0;

/// This build and `baseline`, idle, measured in turn in one run.
fn side_by_side(baseline: &Path) {
    assert!(
        baseline.is_file(),
        "CUTOVER_BASELINE={} is no file (make one with scripts/bench-baseline)",
        baseline.display()
    );
    let bins = [("this build", Path::new(BIN)), ("baseline", baseline)];
    let sizes = bins.map(|(_, b)| std::fs::metadata(b).unwrap().len());
    println!();
    println!(
        "idle memory side by side: median of {SIDE_BY_SIDE_ROUNDS} runs per binary, interleaved (this build, \
         baseline, this build, ...) after one discarded warm-up run each; each read {} s after start",
        SETTLE.as_secs()
    );
    for ((name, bin), size) in bins.iter().zip(sizes) {
        println!("  {name:<10} {size:>10} bytes  {}", bin.display());
    }
    let grown = sizes[0] as f64 - sizes[1] as f64;
    println!(
        "  binary size difference: {:+} bytes ({:+.3} MB; goal <= +0.5 MB: {})",
        sizes[0] as i64 - sizes[1] as i64,
        grown / 1e6,
        verdict(grown <= HALF_MB)
    );
    println!();
    println!(
        "{:<26} | {:<10} | {:>24} | {:>24} | {:>24}",
        "idle process", "binary", "VmRSS kB", "RssAnon kB", "RssFile kB"
    );
    println!(
        "{:<26} | {:<10} | {:>24} | {:>24} | {:>24}",
        "", "", "median (min-max)", "median (min-max)", "median (min-max)"
    );
    println!(
        "{:-<26}-+-{:-<10}-+-{:-<24}-+-{:-<24}-+-{:-<24}",
        "", "", "", "", ""
    );
    let mut goals = Vec::new();
    for kind in [Idle::Run, Idle::Hold] {
        for (_, bin) in bins {
            kind.measure(bin);
        }
        let mut runs: [Vec<Rss>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..SIDE_BY_SIDE_ROUNDS {
            for (i, (_, bin)) in bins.iter().enumerate() {
                runs[i].push(kind.measure(bin));
            }
        }
        let field = |i: usize, f: fn(&Rss) -> u64| -> Vec<u64> { runs[i].iter().map(f).collect() };
        let fields: [fn(&Rss) -> u64; 3] = [|r| r.vm_rss, |r| r.anon, |r| r.file];
        for (i, (name, _)) in bins.iter().enumerate() {
            let cells = fields.map(|f| {
                let v = field(i, f);
                format!(
                    "{} ({}-{})",
                    median(&v),
                    v.iter().min().unwrap(),
                    v.iter().max().unwrap()
                )
            });
            println!(
                "{:<26} | {:<10} | {:>24} | {:>24} | {:>24}",
                if i == 0 { kind.label() } else { "" },
                name,
                cells[0],
                cells[1],
                cells[2]
            );
        }
        let diff = fields.map(|f| median(&field(0, f)) as i64 - median(&field(1, f)) as i64);
        println!(
            "{:<26} | {:<10} | {:>24} | {:>24} | {:>24}",
            "",
            "difference",
            format!("{:+}", diff[0]),
            format!("{:+}", diff[1]),
            format!("{:+}", diff[2])
        );
        let this_anon = median(&field(0, |r| r.anon));
        goals.push(format!(
            "{}: RssAnon {this_anon} kB (goal <= 1 MB = {:.0} kB: {}); VmRSS {:+} kB against the \
             baseline (goal <= +0.5 MB = +{:.0} kB: {})",
            kind.label(),
            ONE_MB / 1024.0,
            verdict(this_anon as f64 * 1024.0 <= ONE_MB),
            diff[0],
            HALF_MB / 1024.0,
            verdict(diff[0] as f64 * 1024.0 <= HALF_MB)
        ));
    }
    println!();
    for g in goals {
        println!("{g}");
    }
    println!(
        "(kB = KiB, as /proc/PID/status counts; MB decimal. RssFile is mostly the binary's pages that \
         are mapped, which depends on the page cache: hence the interleaving.)"
    );
    println!();
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// The median of integers (the lower middle one of an even count).
fn median(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[(v.len() - 1) / 2]
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
            // SAFETY: in the single-threaded helper's child: fork, read and
            // _exit only, on a descriptor it owns.
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
