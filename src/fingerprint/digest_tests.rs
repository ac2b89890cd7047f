//! Fingerprints of real directories: which files count, what changes the
//! digest and what does not, baselines written and read back.

use super::patterns::DEFAULT_PATTERNS;
use super::*;

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn compute(root: &Path) -> Fingerprint {
    Fingerprint::compute(root, &Patterns::default()).unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[test]
fn digest_is_independent_of_creation_order() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let files = [
        ("requirements.txt", "flask==3.0\n"),
        ("poetry.lock", "lock\n"),
        ("Dockerfile", "FROM debian\n"),
        ("requirements-dev.txt", "pytest\n"),
    ];
    for (p, c) in files {
        write(a.path(), p, c);
    }
    for (p, c) in files.iter().rev() {
        write(b.path(), p, c);
    }
    let (fa, fb) = (compute(a.path()), compute(b.path()));
    assert_eq!(fa, fb);
    assert!(fa.matches(&fb));
    assert!(fa.digest.starts_with(DIGEST_PREFIX));
    assert_eq!(fa.digest.len(), DIGEST_PREFIX.len() + 64);
    assert_eq!(fa.files.len(), 4);
    // Per-file digests are what sha256sum prints.
    assert_eq!(fa.files["poetry.lock"], sha256_hex(b"lock\n"));
    // And computing twice gives the same.
    assert_eq!(compute(a.path()), fa);
}

#[test]
fn content_change_changes_digest() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "requirements.txt", "flask==3.0\n");
    let before = compute(d.path());
    write(d.path(), "requirements.txt", "flask==3.1\n");
    let after = compute(d.path());
    assert_ne!(before.digest, after.digest);
    assert!(!before.matches(&after));
    assert_eq!(before.diff(&after), ["requirements.txt"]);
}

#[test]
fn rename_changes_digest() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "requirements.txt", "flask\n");
    let before = compute(d.path());
    std::fs::rename(
        d.path().join("requirements.txt"),
        d.path().join("requirements-prod.txt"),
    )
    .unwrap();
    let after = compute(d.path());
    assert_ne!(before.digest, after.digest);
    assert_eq!(
        before.diff(&after),
        ["requirements-prod.txt", "requirements.txt"]
    );
}

#[test]
fn non_matching_files_are_ignored() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "requirements.txt", "flask\n");
    let before = compute(d.path());
    write(d.path(), "app.py", "print('hi')\n");
    write(d.path(), "README.md", "# app\n");
    // Patterns without a slash match at the top level only.
    write(d.path(), "vendor/lib/requirements.txt", "other\n");
    write(d.path(), "svc/go.sum", "sum\n");
    // Directories are not files, even when their name matches.
    std::fs::create_dir_all(d.path().join("Cargo.lock")).unwrap();
    write(d.path(), ".git/poetry.lock", "x\n");
    let after = compute(d.path());
    assert_eq!(before, after);
    assert_eq!(after.files.keys().collect::<Vec<_>>(), ["requirements.txt"]);
}

#[test]
fn slash_and_double_star_patterns_match_relative_paths() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "go.sum", "a\n");
    write(d.path(), "svc/go.sum", "b\n");
    write(d.path(), "svc/deep/go.sum", "c\n");
    write(d.path(), "web/package-lock.json", "d\n");
    write(d.path(), "web/sub/package-lock.json", "e\n");
    write(d.path(), ".git/go.sum", "ignored\n");
    write(d.path(), "svc/.git/go.sum", "ignored\n");
    let patterns = Patterns::new(&["**/go.sum", "web/*.json"]).unwrap();
    let fp = Fingerprint::compute(d.path(), &patterns).unwrap();
    assert_eq!(
        fp.files.keys().collect::<Vec<_>>(),
        [
            "go.sum",
            "svc/deep/go.sum",
            "svc/go.sum",
            "web/package-lock.json"
        ]
    );
}

#[test]
fn symlinks_are_never_followed() {
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret.txt", "one\n");
    write(
        outside.path(),
        "dir/requirements.txt",
        "inside a linked dir\n",
    );
    let d = tempfile::tempdir().unwrap();
    let target = outside.path().join("secret.txt");
    std::os::unix::fs::symlink(&target, d.path().join("requirements.txt")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("dir"), d.path().join("linked")).unwrap();
    let patterns = Patterns::new(&["requirements*.txt", "**/requirements.txt"]).unwrap();
    let before = Fingerprint::compute(d.path(), &patterns).unwrap();
    // Only the link itself, digested by its target text.
    assert_eq!(
        before.files.keys().collect::<Vec<_>>(),
        ["requirements.txt"]
    );
    let mut text = b"symlink\0".to_vec();
    text.extend_from_slice(target.to_str().unwrap().as_bytes());
    assert_eq!(before.files["requirements.txt"], sha256_hex(&text));
    // Changing what the link points at changes nothing.
    write(outside.path(), "secret.txt", "two\n");
    assert_eq!(Fingerprint::compute(d.path(), &patterns).unwrap(), before);
    // A regular file with the link's text is still a different file.
    std::fs::remove_file(d.path().join("requirements.txt")).unwrap();
    write(d.path(), "requirements.txt", target.to_str().unwrap());
    let file = Fingerprint::compute(d.path(), &patterns).unwrap();
    assert_ne!(file.digest, before.digest);
    // A dangling link is fine too.
    std::fs::remove_file(d.path().join("requirements.txt")).unwrap();
    std::os::unix::fs::symlink("/nonexistent", d.path().join("requirements.txt")).unwrap();
    assert!(Fingerprint::compute(d.path(), &patterns).is_ok());
}

#[test]
fn root_may_be_a_symlink() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "releases/abc/Cargo.lock", "x\n");
    std::os::unix::fs::symlink(d.path().join("releases/abc"), d.path().join("current")).unwrap();
    let fp = compute(&d.path().join("current"));
    assert_eq!(fp.files.keys().collect::<Vec<_>>(), ["Cargo.lock"]);
}

#[test]
fn special_files_that_match_are_errors() {
    let d = tempfile::tempdir().unwrap();
    nix::unistd::mkfifo(
        &d.path().join("yarn.lock"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let err = Fingerprint::compute(d.path(), &Patterns::default()).unwrap_err();
    assert!(matches!(err, FingerprintError::NotAFile { .. }), "{err}");
    assert!(err.to_string().contains("yarn.lock"), "{err}");
}

#[test]
fn missing_root_names_the_path() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope");
    let err = Fingerprint::compute(&missing, &Patterns::default()).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    write(d.path(), "file", "");
    let err = Fingerprint::compute(&d.path().join("file"), &Patterns::default()).unwrap_err();
    assert!(matches!(err, FingerprintError::NotADirectory { .. }));
}

#[test]
fn empty_release_has_a_stable_digest() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (fa, fb) = (compute(a.path()), compute(b.path()));
    assert!(fa.files.is_empty());
    assert_eq!(fa, fb);
}

#[test]
fn diff_lists_changed_added_and_removed() {
    let entries = |list: &[(&str, &str)]| {
        Fingerprint::from_files(
            list.iter()
                .map(|(p, d)| (p.to_string(), d.to_string()))
                .collect(),
        )
    };
    let old = entries(&[("a", "1"), ("b", "2"), ("c", "3")]);
    let new = entries(&[("a", "1"), ("b", "9"), ("d", "4")]);
    assert_eq!(old.diff(&new), ["b", "c", "d"]);
    assert_eq!(new.diff(&old), ["b", "c", "d"]);
    assert!(old.diff(&old).is_empty());
}

#[test]
fn baseline_round_trip() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "release/Gemfile.lock", "gems\n");
    write(d.path(), "release/Dockerfile", "FROM ruby\n");
    let fp = compute(&d.path().join("release"));
    let baseline = d.path().join("etc/cutover/dependencies");
    assert_eq!(Fingerprint::read(&baseline).unwrap(), None);
    fp.write(&baseline).unwrap();
    assert_eq!(Fingerprint::read(&baseline).unwrap(), Some(fp.clone()));
    // Overwriting replaces it, and leaves no temporary file behind.
    let other = Fingerprint::from_files(BTreeMap::new());
    other.write(&baseline).unwrap();
    assert_eq!(Fingerprint::read(&baseline).unwrap(), Some(other));
    let names: Vec<_> = std::fs::read_dir(baseline.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["dependencies"]);
}

#[test]
fn bad_baselines_are_errors_naming_the_path() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("baseline");
    std::fs::write(&path, "not json").unwrap();
    let err = Fingerprint::read(&path).unwrap_err();
    assert!(matches!(err, FingerprintError::ParseBaseline { .. }));
    assert!(err.to_string().contains("baseline"), "{err}");
    let mut fp = Fingerprint::from_files(
        [("go.sum".to_string(), "ab".to_string())]
            .into_iter()
            .collect(),
    );
    fp.files.insert("go.mod".into(), "cd".into());
    std::fs::write(&path, serde_json::to_string(&fp).unwrap()).unwrap();
    let err = Fingerprint::read(&path).unwrap_err();
    assert!(matches!(err, FingerprintError::CorruptBaseline { .. }));
}

#[test]
fn invalid_patterns_are_rejected() {
    for bad in ["[unclosed", "/abs/requirements.txt", "./Dockerfile", ""] {
        assert!(compile_pattern(bad).is_err(), "{bad:?}");
        let err = Patterns::new(&[bad]).unwrap_err();
        assert!(matches!(err, FingerprintError::Pattern { .. }));
    }
    assert!(Patterns::new(DEFAULT_PATTERNS).is_ok());
    assert_eq!(Patterns::default().max_depth, Some(1));
    assert_eq!(Patterns::new(&["a/b/*.lock"]).unwrap().max_depth, Some(3));
    assert_eq!(Patterns::new(&["**/go.sum"]).unwrap().max_depth, None);
}
