//! Hostile commits and kills at any instant (issue #9, points 5 and 8): a
//! git bomb, a huge blob and a too-deep tree are refused and marked bad with
//! cutover's memory bounded; a cache left with a commit but not its tree is
//! fetched again; and rounds of SIGKILLs at random moments of a deploy
//! always leave a complete `current` and converge on the newest commit.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fixture::git::git_command;
use crate::fixture::git::{Repo, git};
use crate::fixture::prelude::*;

fn start(dir: &TestDir, toml: &str) -> Cutover {
    let cfg = dir.write("cutover.toml", toml);
    Cutover::start(Mode::Subreaper, dir, &["run", "-c", cfg.to_str().unwrap()])
}

/// Every file and symlink under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(base, &e.path(), out);
            } else {
                let rel = e.path().strip_prefix(base).unwrap().to_path_buf();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// `git ARGS` in `dir` with `input` on stdin; its trimmed stdout.
fn git_in(dir: &Path, args: &[&str], input: &[u8]) -> String {
    use std::io::Write;
    let mut child = git_command(dir, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A tree object made of `entries` (mode, type, oid, name) in the bare repo.
fn mktree(bare: &Path, entries: &[(String, &str, String, String)]) -> String {
    let text: String = entries
        .iter()
        .map(|(mode, kind, oid, name)| format!("{mode} {kind} {oid}\t{name}\n"))
        .collect();
    git_in(bare, &["mktree"], text.as_bytes())
}

fn blob(bare: &Path, content: &[u8]) -> String {
    git_in(bare, &["hash-object", "-w", "--stdin"], content)
}

/// Commits `tree` on top of `main` in the bare repo and moves `main` to it
/// (the push watcher sees the ref move like a push).
fn commit_to_main(bare: &Path, tree: &str, message: &str) -> String {
    let parent = git(bare, &["rev-parse", "main"]);
    let sha = git(bare, &["commit-tree", tree, "-p", &parent, "-m", message]);
    git(bare, &["update-ref", "refs/heads/main", &sha]);
    sha
}

/// The tree of `version` (so a deploy would be servable) plus `extra`.
fn tree_with(bare: &Path, version: &str, extra: &[(String, &str, String, String)]) -> String {
    let mut entries = vec![(
        "100644".to_string(),
        "blob",
        blob(bare, version.as_bytes()),
        "version".to_string(),
    )];
    entries.extend(extra.iter().cloned());
    mktree(bare, &entries)
}

fn history(root: &Path) -> Vec<Value> {
    std::fs::read_to_string(root.join("history.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits for a `refused` record of `sha` in `cutover status --json` and
/// returns its error; checks that the sha is marked bad.
fn wait_refused(dir: &TestDir, c: &Cutover, sha: &str) -> String {
    let record = wait_for(SECS_20, || {
        status(dir)["source"]["history"]
            .as_array()?
            .iter()
            .find(|h| h["outcome"] == "refused" && h["sha"] == sha)
            .cloned()
    })
    .unwrap_or_else(|| panic!("{sha} never refused\n{}", c.stderr()));
    let bad = status(dir)["source"]["bad"].clone();
    assert!(
        bad.as_array().unwrap().iter().any(|b| b == sha),
        "{sha} not marked bad: {bad}"
    );
    record["error"].as_str().unwrap().to_string()
}

/// Peak resident memory of `pid` in bytes (VmHWM: no sampling to miss it).
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
fn a_git_bomb_a_huge_blob_and_a_deep_tree_are_refused_and_marked_bad() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    let bare = repo.remote.clone();
    repo.release("v1");
    let root = dir.join("srv");
    let port = free_port();
    let c = start(
        &dir,
        &ConfigToml::deploying_overlap(
            port,
            &bare.display().to_string(),
            &root,
            "max_file_size = \"100MiB\"",
        )
        .to_string(),
    );
    wait_version(port, "v1", &c, SECS_20);
    wait_for_control(&dir);
    let pid = c.pid();

    // A million paths from a few hundred bytes of objects: ten entries
    // naming the same subtree, six levels deep.
    let x = blob(&bare, b"x");
    let files: Vec<_> = (0..10)
        .map(|i| ("100644".to_string(), "blob", x.clone(), format!("f{i}")))
        .collect();
    let mut tree = mktree(&bare, &files);
    for _ in 0..5 {
        let dirs: Vec<_> = (0..10)
            .map(|i| ("040000".to_string(), "tree", tree.clone(), format!("d{i}")))
            .collect();
        tree = mktree(&bare, &dirs);
    }
    let bomb_tree = tree_with(
        &bare,
        "bomb",
        &[("040000".into(), "tree", tree, "b".into())],
    );
    let bomb = commit_to_main(&bare, &bomb_tree, "bomb");
    let why = wait_refused(&dir, &c, &bomb);
    assert!(why.contains("max_files") && why.contains("100000"), "{why}");
    assert_eq!(served_version(port).unwrap(), "v1");

    // 70 directories deep (the default limit is 64).
    let mut deep = mktree(&bare, &[("100644".into(), "blob", x.clone(), "f".into())]);
    for _ in 0..70 {
        deep = mktree(&bare, &[("040000".into(), "tree", deep, "d".into())]);
    }
    let deep_tree = tree_with(
        &bare,
        "deep",
        &[("040000".into(), "tree", deep, "d".into())],
    );
    let deep = commit_to_main(&bare, &deep_tree, "deep");
    let why = wait_refused(&dir, &c, &deep);
    assert!(why.contains("max_depth"), "{why}");

    // 300 MB of zeros over a 100 MiB limit: refused from its header alone.
    let zeros = vec![0_u8; 300 << 20];
    let huge = blob(&bare, &zeros);
    let huge_tree = tree_with(
        &bare,
        "huge",
        &[("100644".into(), "blob", huge, "huge".into())],
    );
    let huge = commit_to_main(&bare, &huge_tree, "huge");
    let why = wait_refused(&dir, &c, &huge);
    assert!(
        why.contains("max_file_size") && why.contains("314572800 bytes"),
        "{why}"
    );
    assert_eq!(served_version(port).unwrap(), "v1");
    assert_eq!(current_sha(&root).as_deref(), Some(repo.head().as_str()));
    assert!(partials(&root).is_empty(), "{:?}", partials(&root));
    assert!(alive(pid));

    // A refused commit is left alone: poking the ref does not try it again.
    repo.push_ref("HEAD:refs/tags/poke");
    std::thread::sleep(Duration::from_millis(500));
    let refusals = history(&root)
        .iter()
        .filter(|h| h["sha"] == huge.as_str())
        .count();
    assert_eq!(refusals, 1, "{:?}", history(&root));

    // 80 MB within the limits is written streamed, not held in memory.
    let big = blob(&bare, &zeros[..80 << 20]);
    drop(zeros);
    let good_tree = tree_with(&bare, "v2", &[("100644".into(), "blob", big, "big".into())]);
    let good = commit_to_main(&bare, &good_tree, "v2");
    wait_version(port, "v2", &c, Duration::from_secs(60));
    assert_eq!(current_sha(&root).as_deref(), Some(good.as_str()));
    let written = std::fs::metadata(root.join("releases").join(&good).join("big")).unwrap();
    assert_eq!(written.len(), 80 << 20);
    assert!(partials(&root).is_empty(), "{:?}", partials(&root));
    let peak = peak_rss(pid);
    assert!(peak < 60 << 20, "cutover's peak RSS was {} MB", peak >> 20);
}

#[test]
fn limits_with_bad_values_are_config_errors_with_their_key() {
    let dir = TestDir::new();
    let cfg = dir.write(
        "cutover.toml",
        &format!(
            "[app]\ncommand = [\"true\"]\n\n[source]\nrepo = \"/nowhere\"\nroot = \"{}\"\n\
             max_files = 0\nmax_bytes = \"lots\"\nmax_file_size = -1\nmax_depth = 0\n",
            dir.join("srv").display()
        ),
    );
    let (code, out, err) = run_cutover(&dir, &["check", "-c", cfg.to_str().unwrap()]);
    let text = format!("{out}{err}");
    assert_eq!(code, 78, "{text}");
    for key in [
        "source.max_files",
        "source.max_bytes",
        "source.max_file_size",
        "source.max_depth",
    ] {
        assert!(text.contains(key), "{key} not reported:\n{text}");
    }
}

/// What a kill left: a cache holding the new commit's object but none of
/// its tree. Start-up fetches it again instead of failing for good.
#[test]
fn a_commit_without_its_tree_in_the_cache_is_fetched_again() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    repo.release("v1");
    let root = dir.join("srv");
    let port = free_port();
    let toml = ConfigToml::deploying_overlap(port, &repo.remote.display().to_string(), &root, "")
        .to_string();
    let c = start(&dir, &toml);
    wait_version(port, "v1", &c, SECS_20);
    drop(c);
    wait_for(SECS_20, || served_version(port).is_err().then_some(()))
        .expect("the first cutover kept serving");

    // A small push is stored as loose objects: copy only the commit's.
    let v2 = repo.commit("v2", &[("version", "v2"), ("app/new.txt", "new")]);
    repo.push();
    let rel = Path::new(&v2[..2]).join(&v2[2..]);
    let cache_objects = root.join(".cutover/cache.git/objects");
    std::fs::create_dir_all(cache_objects.join(&v2[..2])).unwrap();
    std::fs::copy(
        repo.remote.join("objects").join(&rel),
        cache_objects.join(&rel),
    )
    .unwrap();

    let c = start(&dir, &toml);
    wait_version(port, "v2", &c, SECS_20);
    assert_eq!(current_sha(&root).as_deref(), Some(v2.as_str()));
    assert_matches_git(&repo.remote, &root, &v2);
}

/// The release `current` names holds exactly the files of its commit, with
/// the same contents for a few of them.
fn assert_matches_git(bare: &Path, root: &Path, sha: &str) {
    let release = root.join("releases").join(sha);
    let listed = git(bare, &["ls-tree", "-r", "--name-only", sha]);
    let mut expected: Vec<String> = listed.lines().map(str::to_string).collect();
    expected.sort();
    let found = files_under(&release);
    assert_eq!(found.len(), expected.len(), "release {sha} is not complete");
    assert_eq!(found, expected, "release {sha} differs from git");
    for name in expected
        .iter()
        .step_by(97)
        .chain(["version".to_string()].iter())
    {
        let want = git(bare, &["show", &format!("{sha}:{name}")]);
        let have = std::fs::read_to_string(release.join(name)).unwrap();
        assert_eq!(have.trim(), want, "{name} differs in {sha}");
    }
}

/// xorshift64*: the same kill moments every run for a given round; a
/// number below `bound`.
fn random(round: u64, bound: u64) -> u64 {
    let mut x = 0x2545_F491_4F6C_DD1D_u64 ^ (round + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
}

/// Waits for the moment of `round` to kill cutover, and says which it was:
/// rounds take turns at 0–150 ms after the push (fetching), once the
/// release is being written, once `current` was switched (reloading), and
/// at 0–1.5 s (anywhere in the deploy), each plus a random delay.
fn wait_kill_moment(round: u64, root: &Path, c: &Cutover, switched_before: usize) -> String {
    let started = Instant::now();
    let after = |what: &str, ready: &dyn Fn() -> bool| {
        wait_for(Duration::from_secs(30), || ready().then_some(()))
            .unwrap_or_else(|| panic!("round {round}: never {what}\n{}", c.stderr()));
        format!("{what} + ")
    };
    let (label, extra) = match round % 4 {
        1 => (String::new(), random(round, 151)),
        2 => (
            after("writing", &|| !partials(root).is_empty()),
            random(round, 30),
        ),
        3 => (
            after("switched", &|| switches(c) > switched_before),
            random(round, 50),
        ),
        _ => (String::new(), random(round, 1500)),
    };
    std::thread::sleep(Duration::from_millis(extra));
    format!("{label}{extra} ms ({:?} after the push)", started.elapsed())
}

/// How many times this cutover switched `current`.
fn switches(c: &Cutover) -> usize {
    c.stderr().matches("switched current").count()
}

/// Writes 2,000 small files whose contents depend on `round`.
fn write_round(work: &Path, round: u64) {
    for i in 0..2000 {
        let sub = work.join("big").join(format!("d{:02}", i % 40));
        if i < 40 {
            std::fs::create_dir_all(&sub).unwrap();
        }
        std::fs::write(
            sub.join(format!("f{i:04}")),
            format!("round {round} file {i}\n"),
        )
        .unwrap();
    }
}

/// SIGKILL to cutover and everything below it at once, like `docker kill`.
fn kill_all(mut c: Cutover) {
    let below = c.descendants();
    c.signal(libc::SIGKILL);
    for p in below {
        crate::fixture::procs::signal(p.pid, libc::SIGKILL);
    }
    c.wait(SECS_20);
}

#[test]
fn random_sigkills_during_deploys_leave_a_complete_current_and_converge() {
    const ROUNDS: u64 = 10;
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    let first = repo.release("r0");
    let root = dir.join("srv");
    let port = free_port();
    let toml = ConfigToml::deploying_overlap(port, &repo.remote.display().to_string(), &root, "")
        .to_string();
    let mut c = start(&dir, &toml);
    wait_version(port, "r0", &c, SECS_20);
    assert_eq!(current_sha(&root).as_deref(), Some(first.as_str()));
    let began = Instant::now();
    for round in 1..=ROUNDS {
        write_round(&repo.work, round);
        let version = format!("r{round}");
        let sha = repo.commit(&version, &[("version", &version)]);
        let switched_before = switches(&c);
        repo.push();
        let wait = wait_kill_moment(round, &root, &c, switched_before);
        let log = c.stderr();
        kill_all(c);
        // Where the kill landed, for whoever reproduces a failure.
        let last: String = log.lines().last().unwrap_or("").chars().take(200).collect();
        eprintln!("round {round}: killed at {wait}; last log line: {last}");
        wait_for(SECS_20, || served_version(port).is_err().then_some(()))
            .expect("something kept serving after the kill");
        let at_kill = current_sha(&root).expect("`current` is always there");
        assert_matches_git(&repo.remote, &root, &at_kill);

        c = start(&dir, &toml);
        // It serves within seconds, from a complete release.
        wait_for(SECS_20, || served_version(port).ok())
            .unwrap_or_else(|| panic!("round {round}: nothing served\n{}", c.stderr()));
        let pid = c.pid();
        let stale: Vec<String> = partials(&root)
            .into_iter()
            .filter(|p| !p.ends_with(&format!("-{pid}")))
            .collect();
        assert!(stale.is_empty(), "round {round}: left behind: {stale:?}");
        // It converges on the newest commit without another push.
        wait_version(port, &version, &c, Duration::from_secs(30));
        assert_eq!(
            current_sha(&root).as_deref(),
            Some(sha.as_str()),
            "round {round} (killed at {wait})"
        );
        assert_matches_git(&repo.remote, &root, &sha);
        assert!(
            wait_for(SECS_20, || partials(&root).is_empty().then_some(())).is_some(),
            "round {round}: partial release left: {:?}",
            partials(&root)
        );
    }
    eprintln!("{ROUNDS} rounds in {:?}", began.elapsed());
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// None where mounting is not allowed (not root).
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "cutover-test"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_is_retried_without_blaming_the_commit() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    let bare = repo.remote.clone();
    repo.release("v1");
    let root = dir.join("srv");
    // Not a skip: a test that cannot run where it should must say so.
    let _volume = Tmpfs::mount(&root, "48m")
        .expect("cannot mount a tmpfs: run the tests as root, as CI does (scripts/test)");
    let port = free_port();
    let c = start(
        &dir,
        &ConfigToml::deploying_overlap(port, &bare.display().to_string(), &root, "").to_string(),
    );
    wait_version(port, "v1", &c, SECS_20);
    wait_for_control(&dir);

    // 64 MB of zeros: a few KB in git, more than the volume holds.
    let big = blob(&bare, &vec![0_u8; 64 << 20]);
    let tree = tree_with(&bare, "v2", &[("100644".into(), "blob", big, "big".into())]);
    let v2 = commit_to_main(&bare, &tree, "v2");
    let record = wait_for(SECS_20, || {
        status(&dir)["source"]["history"]
            .as_array()?
            .iter()
            .find(|h| h["outcome"] == "failed" && h["sha"] == v2.as_str())
            .cloned()
    })
    .unwrap_or_else(|| panic!("the full disk never showed\n{}", c.stderr()));
    let why = record["error"].as_str().unwrap();
    assert!(why.contains("the disk is full"), "{why}");
    let source = status(&dir)["source"].clone();
    assert!(
        !source["bad"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b == v2.as_str()),
        "a full disk is not the commit's fault: {source}"
    );
    // Between attempts (a retry may already be writing again) nothing is
    // left of the failed one.
    wait_for(SECS_20, || partials(&root).is_empty().then_some(()))
        .unwrap_or_else(|| panic!("partial release left: {:?}", partials(&root)));
    assert!(!root.join("releases").join(&v2).exists());
    assert_eq!(served_version(port).unwrap(), "v1");
    // Retried with backoff: a retry fails the same way.
    c.wait_for_log("deploy failed; retrying", SECS_20);
    wait_for(SECS_20, || {
        status(&dir)["source"]["history"]
            .as_array()?
            .iter()
            .any(|h| h["outcome"] == "failed" && h["sha"] == v2.as_str() && h["trigger"] == "retry")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("never retried\n{}", c.stderr()));

    // Once the ref moves to a commit that fits, it deploys.
    let tree = tree_with(&bare, "v3", &[]);
    let v3 = commit_to_main(&bare, &tree, "v3");
    wait_version(port, "v3", &c, SECS_20);
    assert_eq!(current_sha(&root).as_deref(), Some(v3.as_str()));
    wait_for(SECS_20, || partials(&root).is_empty().then_some(()))
        .unwrap_or_else(|| panic!("partial release left: {:?}", partials(&root)));
    drop(c);
}
