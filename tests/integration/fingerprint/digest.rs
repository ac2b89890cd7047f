//! `cutover fingerprint`: the dependency digest a Dockerfile bakes into the image.

use std::time::Duration;

use crate::fixture::prelude::*;

/// `cutover fingerprint ARGS` in `dir`; asserts exit 0 and returns stdout.
fn fingerprint_ok(dir: &TestDir, args: &[&str]) -> String {
    let mut all = vec!["fingerprint"];
    all.extend_from_slice(args);
    let (code, out, err) = run_cutover(dir, &all);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    out
}

fn write_tree(root: &std::path::Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

const RELEASE: &[(&str, &str)] = &[
    ("requirements.txt", "flask==3.0.3\ngunicorn==22.0.0\n"),
    ("requirements-dev.txt", "pytest\n"),
    ("Dockerfile", "FROM python:3.12-slim\n"),
    ("poetry.lock", "# lock\n"),
    ("app.py", "print('not a dependency')\n"),
    ("sub/go.sum", "not at the top level\n"),
];

#[test]
fn printed_digest_is_stable_across_runs_and_creation_order() {
    let dir = TestDir::new();
    let a = dir.join("a");
    let b = dir.join("b");
    write_tree(&a, RELEASE);
    let reversed: Vec<_> = RELEASE.iter().rev().copied().collect();
    write_tree(&b, &reversed);

    let first = fingerprint_ok(&dir, &[a.to_str().unwrap()]);
    let again = fingerprint_ok(&dir, &[a.to_str().unwrap()]);
    let other = fingerprint_ok(&dir, &[b.to_str().unwrap()]);
    assert_eq!(first, again);
    assert_eq!(first, other);

    let lines: Vec<&str> = first.lines().collect();
    assert!(lines[0].starts_with("sha256:"), "{first}");
    assert_eq!(lines[0].len(), "sha256:".len() + 64, "{first}");
    // Then every matching file, sorted, in `sha256sum` format.
    let names: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_once("  ").unwrap().1)
        .collect();
    assert_eq!(
        names,
        [
            "Dockerfile",
            "poetry.lock",
            "requirements-dev.txt",
            "requirements.txt"
        ]
    );
    let check = std::process::Command::new("sha256sum")
        .arg("-c")
        .arg("--quiet")
        .current_dir(&a)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(lines[1..].join("\n").as_bytes())?;
            c.wait()
        })
        .unwrap();
    assert!(check.success(), "per-file digests differ from sha256sum's");

    // A content change and a rename both change it.
    std::fs::write(a.join("requirements.txt"), "flask==3.1.0\n").unwrap();
    let changed = fingerprint_ok(&dir, &[a.to_str().unwrap()]);
    assert_ne!(changed.lines().next(), first.lines().next());
    std::fs::rename(b.join("poetry.lock"), b.join("Pipfile.lock")).unwrap();
    let renamed = fingerprint_ok(&dir, &[b.to_str().unwrap()]);
    assert_ne!(renamed.lines().next(), first.lines().next());
}

#[test]
fn dir_defaults_to_the_working_directory() {
    let dir = TestDir::new();
    write_tree(dir.path(), RELEASE);
    let here = fingerprint_ok(&dir, &[]);
    let explicit = fingerprint_ok(&dir, &[dir.path().to_str().unwrap()]);
    assert_eq!(here, explicit);
    assert_eq!(here.lines().count(), 5, "{here}");
}

#[test]
fn write_then_compare() {
    let dir = TestDir::new();
    let release = dir.join("release");
    write_tree(&release, RELEASE);
    let baseline = dir.join("etc/cutover/dependencies");
    let (code, out, err) = run_cutover(
        &dir,
        &[
            "fingerprint",
            release.to_str().unwrap(),
            "--write",
            baseline.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("wrote") && err.contains("etc/cutover/dependencies"),
        "{err}"
    );
    // What it prints is what it wrote, and what a plain run prints.
    assert_eq!(out, fingerprint_ok(&dir, &[release.to_str().unwrap()]));
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&baseline).unwrap()).unwrap();
    assert_eq!(written["digest"], out.lines().next().unwrap());
    let files = written["files"].as_object().unwrap();
    assert_eq!(files.len(), 4);
    for line in out.lines().skip(1) {
        let (digest, path) = line.split_once("  ").unwrap();
        assert_eq!(files[path], digest);
    }
    // No temporary file left beside it.
    let names: Vec<_> = std::fs::read_dir(baseline.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["dependencies"]);

    // A changed lockfile no longer matches the baseline.
    std::fs::write(release.join("poetry.lock"), "# lock v2\n").unwrap();
    let now = fingerprint_ok(&dir, &[release.to_str().unwrap()]);
    assert_ne!(written["digest"], now.lines().next().unwrap());
    let changed: Vec<&str> = now
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once("  "))
        .filter(|(digest, path)| files[*path] != *digest)
        .map(|(_, path)| path)
        .collect();
    assert_eq!(changed, ["poetry.lock"]);
}

#[test]
fn config_files_replace_the_defaults() {
    let dir = TestDir::new();
    let release = dir.join("release");
    write_tree(
        &release,
        &[
            ("requirements.txt", "ignored now\n"),
            ("svc/a/go.sum", "a\n"),
            ("svc/b/go.sum", "b\n"),
            ("constraints.txt", "c\n"),
        ],
    );
    // Only [dependencies] is read: no program, an unknown user and a missing
    // secret do not matter at image build time.
    let cfg = dir.write(
        "cutover.toml",
        r#"[app]
command = ["app"]
user = "no-such-user-xyz"

[source]
repo = "https://example.invalid/app.git"
root = "/srv/app"
token_env = "CUTOVER_TEST_UNSET_TOKEN"

[dependencies]
files = ["**/go.sum", "constraints.txt"]
baseline = "/etc/cutover/dependencies"
"#,
    );
    let out = fingerprint_ok(
        &dir,
        &[release.to_str().unwrap(), "-c", cfg.to_str().unwrap()],
    );
    let names: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split_once("  ").unwrap().1)
        .collect();
    assert_eq!(names, ["constraints.txt", "svc/a/go.sum", "svc/b/go.sum"]);

    // The same through CUTOVER_CONFIG.
    let mut c = Cutover::start_with(
        Mode::Subreaper,
        &dir,
        &["fingerprint", release.to_str().unwrap()],
        &[("CUTOVER_CONFIG", cfg.to_str().unwrap())],
    );
    assert_eq!(c.wait(Duration::from_secs(20)), 0, "{}", c.stderr());
    assert_eq!(c.stdout(), out);
}

#[test]
fn bad_glob_in_config_exits_78_naming_the_key() {
    let dir = TestDir::new();
    let cfg = dir.write(
        "cutover.toml",
        r#"[app]
command = ["app"]

[dependencies]
files = [
  "requirements*.txt",
  "[unclosed",
  "/abs/poetry.lock",
]
baseline = "relative/path"
colour = "blue"
"#,
    );
    let (code, out, err) = run_cutover(&dir, &["fingerprint", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(out.is_empty(), "{out}");
    for expected in [
        "cutover.toml:7:3: dependencies.files[1]: invalid pattern `[unclosed`",
        "cutover.toml:8:3: dependencies.files[2]: invalid pattern `/abs/poetry.lock`",
        "cutover.toml:10:1: dependencies.baseline: `relative/path` is not an absolute file path",
        "cutover.toml:11:1: dependencies.colour: unknown key `colour`",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    // `check` reports the same problems.
    let (code, _, check_err) = run_cutover(&dir, &["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 78, "{check_err}");
    assert!(check_err.contains("dependencies.files[1]"), "{check_err}");
}

#[test]
fn empty_file_list_is_a_config_error() {
    let dir = TestDir::new();
    let cfg = dir.write("cutover.toml", "[dependencies]\nfiles = []\n");
    let (code, _, err) = run_cutover(&dir, &["fingerprint", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("dependencies.files: list at least one pattern"),
        "{err}"
    );
}

#[test]
fn missing_dir_is_a_clear_error() {
    let dir = TestDir::new();
    let missing = dir.join("no-such-release");
    let (code, out, err) = run_cutover(&dir, &["fingerprint", missing.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!("cannot fingerprint {}", missing.display()))
            && err.contains("No such file or directory"),
        "{err}"
    );
    // A missing config is a config error.
    let (code, _, err) = run_cutover(
        &dir,
        &["fingerprint", "-c", dir.join("nope.toml").to_str().unwrap()],
    );
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("nope.toml"), "{err}");
}

#[test]
fn unwritable_baseline_is_a_clear_error() {
    let dir = TestDir::new();
    write_tree(dir.path(), RELEASE);
    // A regular file where the baseline's directory should be.
    dir.write("blocker", "");
    let target = dir.join("blocker/dependencies");
    let (code, _, err) = run_cutover(&dir, &["fingerprint", "--write", target.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot write baseline") && err.contains("blocker/dependencies"),
        "{err}"
    );
}
