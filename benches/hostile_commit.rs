//! Hostile commit benchmark: prints figures, asserts nothing about them.
//!
//! A push of a few hundred KB can carry a tree of hundreds of MB: one tree
//! object whose millions of entries all name the same blob compresses to
//! almost nothing. Issue 17 measured cutover at 946 MiB of peak memory
//! while it inflated such a tree (232 MB, in a 696 KB repository) before
//! counting its entries against `[source] max_files`; PID 1 killed for that
//! retries the same commit at every restart.
//!
//! This bench builds that repository (one commit, a root tree of TREE_BYTES
//! with entries `f00000000`.. all naming one blob; packed with `git repack`,
//! cached under target/bench-hostile-commit/), has a fresh `cutover run`
//! follow it (`[source] repo` is a path, default limits), and prints the
//! time until cutover refuses the commit (its log says "refusing to write
//! it") and cutover's peak memory (VmHWM from /proc/PID/status, read at
//! that moment), next to the repository's size on disk. With
//! `CUTOVER_BASELINE=BINARY` (an earlier build, from scripts/bench-baseline)
//! the same rounds run with that binary too, for the figure before the fix.
//!
//! Run with `cargo bench --bench hostile_commit` (the first run spends a
//! few seconds building the repository). Needs git.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use support::{
    TempDir, dir_bytes, install_cleanup, machine, sleep, spawn_cutover_bin, status_kib, tail,
    toml_str,
};

/// The tree: 232 MB.
const TREE_BYTES: usize = 232_000_000;
const ROUNDS: usize = 3;
const TIMEOUT: Duration = Duration::from_secs(120);

fn main() {
    install_cleanup();
    println!(
        "cutover hostile commit benchmark ({})",
        support::fixture::BIN
    );
    println!("machine: {}", machine());
    let (repo, tree_bytes, entries) = hostile_repository();
    println!(
        "repository: {} (one commit; a root tree of {} bytes, {entries} entries naming one blob; {} KB on disk)",
        repo.display(),
        tree_bytes,
        dir_bytes(&repo) / 1000
    );
    let mut binaries = vec![("this build", PathBuf::from(support::fixture::BIN))];
    if let Some(baseline) = std::env::var_os("CUTOVER_BASELINE").filter(|v| !v.is_empty()) {
        binaries.push(("baseline", PathBuf::from(baseline)));
    }
    for (name, bin) in binaries {
        println!();
        println!("{name}: {}", bin.display());
        for round in 1..=ROUNDS {
            match refuse(&bin, &repo) {
                Ok((refused_ms, hwm_kib, error)) => {
                    println!(
                        "  round {round}: refused in {refused_ms:.0} ms; cutover peak RSS (VmHWM) {:.1} MiB",
                        hwm_kib as f64 / 1024.0
                    );
                    if round == ROUNDS {
                        println!("  log: {error}");
                    }
                }
                Err((ms, hwm_kib, why)) => println!(
                    "  round {round}: not refused after {ms:.0} ms; cutover peak RSS (VmHWM) {:.1} MiB; {why}",
                    hwm_kib as f64 / 1024.0
                ),
            }
        }
    }
}

/// Starts `bin` on `repo` and waits for its refusal: (ms, VmHWM kB, the
/// log line), or the same with why there was none.
type Refusal = (f64, u64, String);

fn refuse(bin: &Path, repo: &Path) -> Result<Refusal, Refusal> {
    let dir = TempDir::new("cutover-bench-hostile");
    let config = format!(
        "[app]\ncommand = [\"sleep\", \"1000\"]\n\n[source]\nrepo = {}\nref = \"main\"\nroot = {}\n",
        toml_str(&repo.display().to_string()),
        toml_str(&dir.path().join("volume").display().to_string()),
    );
    let log = dir.path().join("cutover.log");
    let started = Instant::now();
    let mut cutover = spawn_cutover_bin(bin, dir.path(), &config, &log, "info", &[]);
    let pid = cutover.pid();
    // The high-water mark of a process killed for its memory is gone with
    // it: sampled while it runs.
    let mut hwm = 0;
    let found = loop {
        hwm = hwm.max(status_kib(pid, "VmHWM").unwrap_or(0));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("refusing to write it")) {
            break Some(line.to_string());
        }
        if cutover.exited().is_some() || started.elapsed() > TIMEOUT {
            break None;
        }
        sleep(Duration::from_millis(5));
    };
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    let hwm = hwm.max(status_kib(pid, "VmHWM").unwrap_or(0));
    let exited = cutover.exited();
    cutover.stop(Duration::from_secs(10));
    match found {
        Some(line) => Ok((elapsed, hwm, line)),
        None => Err((
            elapsed,
            hwm,
            format!(
                "{}; last log lines:\n{}",
                exited.map_or("still running".to_string(), |s| format!("exited: {s}")),
                tail(&log, 3)
            ),
        )),
    }
}

/// The bare repository, built once: (path, tree bytes, entries).
fn hostile_repository() -> (PathBuf, usize, usize) {
    let root = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/bench-hostile-commit"
    ));
    let repo = root.join(format!("tree-{TREE_BYTES}.git"));
    // "100644 f00000000\0" + 20-byte id
    let entry = 7 + 9 + 1 + 20;
    let entries = TREE_BYTES / entry;
    if repo.join("refs/heads/main").exists() {
        return (repo, entries * entry, entries);
    }
    let _ = std::fs::remove_dir_all(&repo);
    std::fs::create_dir_all(&root).unwrap();
    let started = Instant::now();
    let git = git2::Repository::init_bare(&repo).unwrap();
    let odb = git.odb().unwrap();
    let blob = odb.write(git2::ObjectType::Blob, b"x\n").unwrap();
    let mut tree = Vec::with_capacity(entries * entry);
    for i in 0..entries {
        tree.extend_from_slice(format!("100644 f{i:08}\0").as_bytes());
        tree.extend_from_slice(blob.as_bytes());
    }
    let tree = odb.write(git2::ObjectType::Tree, &tree).unwrap();
    let commit = format!(
        "tree {tree}\nauthor bench <bench@example.com> 1700000000 +0000\n\
         committer bench <bench@example.com> 1700000000 +0000\n\nhostile tree\n"
    );
    let commit = odb
        .write(git2::ObjectType::Commit, commit.as_bytes())
        .unwrap();
    git.reference("refs/heads/main", commit, true, "bench")
        .unwrap();
    let packed = Command::new("git")
        .args(["repack", "-a", "-d", "-q"])
        .current_dir(&repo)
        .status()
        .unwrap();
    assert!(packed.success(), "git repack failed");
    println!(
        "built {} in {:.1} s",
        repo.display(),
        started.elapsed().as_secs_f64()
    );
    (repo, entries * entry, entries)
}
