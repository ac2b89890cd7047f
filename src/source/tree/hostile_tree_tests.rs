//! Hostile and ordinary trees written into a volume: what is refused before
//! anything is written, and what a refusal leaves behind (nothing).

use super::*;
use crate::source::release::Blame;
use git2::Signature;

/// A bare repository in a temp dir and a volume next to it.
fn setup() -> (tempfile::TempDir, Repository, Volume) {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init_bare(dir.path().join("cache.git")).unwrap();
    let volume = Volume {
        root: dir.path().join("srv"),
    };
    volume.prepare().unwrap();
    (dir, repo, volume)
}

fn commit(repo: &Repository, tree: Oid) -> Oid {
    let sig = Signature::now("t", "t@example.com").unwrap();
    let tree = repo.find_tree(tree).unwrap();
    repo.commit(None, &sig, &sig, "t", &tree, &[]).unwrap()
}

/// A tree naming `child` (a blob or tree) `n` times.
fn fan(repo: &Repository, child: Oid, mode: i32, n: usize) -> Oid {
    let mut b = repo.treebuilder(None).unwrap();
    for i in 0..n {
        b.insert(format!("e{i}"), child, mode).unwrap();
    }
    b.write().unwrap()
}

fn refused(result: Result<Written, ReleaseError>) -> &'static str {
    match result {
        Err(ReleaseError::OverLimit { limit, .. }) => limit,
        other => panic!("not refused: {other:?}"),
    }
}

fn leftovers(volume: &Volume) -> Vec<String> {
    fs::read_dir(volume.releases())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_git_bomb_is_refused_before_anything_is_written() {
    let (_dir, repo, volume) = setup();
    let blob = repo.blob(b"x").unwrap();
    let mut tree = fan(&repo, blob, 0o100644, 10);
    for _ in 0..5 {
        tree = fan(&repo, tree, 0o040000, 10);
    }
    let c = commit(&repo, tree);
    let limits = ReleaseLimits::default();
    let result = materialise(&volume, repo.path(), c, &limits);
    assert_eq!(refused(result), "max_files");
    assert!(leftovers(&volume).is_empty(), "{:?}", leftovers(&volume));
}

#[test]
fn a_tree_too_big_for_max_files_is_refused_from_its_header() {
    let (_dir, repo, volume) = setup();
    let limits = ReleaseLimits {
        files: 10,
        ..ReleaseLimits::default()
    };
    assert_eq!(tree_size_limit(&limits), 10 * MAX_TREE_ENTRY);
    let blob = repo.blob(b"x").unwrap();
    // 200 entries of ~40 bytes: more than 10 entries of 283 bytes hold.
    let wide = fan(&repo, blob, 0o100644, 200);
    let c = commit(&repo, fan(&repo, wide, 0o040000, 1));
    match materialise(&volume, repo.path(), c, &limits) {
        Err(
            e @ ReleaseError::OverLimit {
                limit: "max_files", ..
            },
        ) => {
            let text = e.to_string();
            assert!(text.contains("the tree of `e0` is"), "{text}");
        }
        other => panic!("not refused: {other:?}"),
    }
    assert!(leftovers(&volume).is_empty());
    // The connectivity check does not inflate it either, and still
    // finds the commit present.
    assert!(crate::source::git::complete(
        &repo,
        c,
        tree_size_limit(&limits)
    ));
    // A name no filesystem takes.
    let mut b = repo.treebuilder(None).unwrap();
    b.insert("n".repeat(256), blob, 0o100644).unwrap();
    let c = commit(&repo, b.write().unwrap());
    assert!(matches!(
        materialise(&volume, repo.path(), c, &ReleaseLimits::default()),
        Err(ReleaseError::UnsafePath { .. })
    ));
}

#[test]
fn every_limit_is_checked() {
    let (_dir, repo, volume) = setup();
    let small = ReleaseLimits {
        files: 100,
        bytes: 1000,
        file_size: 600,
        depth: 3,
    };
    let big = repo.blob(&[0_u8; 700]).unwrap();
    let c = commit(&repo, fan(&repo, big, 0o100644, 1));
    assert_eq!(
        refused(materialise(&volume, repo.path(), c, &small)),
        "max_file_size"
    );
    let half = repo.blob(&[1_u8; 400]).unwrap();
    let c = commit(&repo, fan(&repo, half, 0o100644, 3));
    assert_eq!(
        refused(materialise(&volume, repo.path(), c, &small)),
        "max_bytes"
    );
    let mut deep = fan(&repo, half, 0o100644, 1);
    for _ in 0..3 {
        deep = fan(&repo, deep, 0o040000, 1);
    }
    let c = commit(&repo, deep);
    assert_eq!(
        refused(materialise(&volume, repo.path(), c, &small)),
        "max_depth"
    );
    let link = repo.blob(&[b'a'; 5000]).unwrap();
    let c = commit(&repo, fan(&repo, link, 0o120000, 1));
    assert_eq!(
        refused(materialise(
            &volume,
            repo.path(),
            c,
            &ReleaseLimits::default()
        )),
        "symlink target length"
    );
    // Within every limit: written.
    let mut ok = fan(&repo, half, 0o100644, 2);
    ok = fan(&repo, ok, 0o040000, 1);
    let c = commit(&repo, ok);
    let written = materialise(&volume, repo.path(), c, &small).unwrap();
    assert_eq!((written.files, written.bytes), (2, 800));
    assert!(volume.has_release(&Sha::from(c)));
}

#[test]
fn a_blob_missing_from_the_cache_blames_the_cache_and_leaves_nothing() {
    let (_dir, repo, volume) = setup();
    let blobs: Vec<Oid> = (0..20)
        .map(|i| repo.blob(format!("{i}").as_bytes()).unwrap())
        .collect();
    let mut b = repo.treebuilder(None).unwrap();
    for (i, oid) in blobs.iter().enumerate() {
        b.insert(format!("f{i}"), *oid, 0o100644).unwrap();
    }
    let c = commit(&repo, b.write().unwrap());
    // One blob gone from the cache, as a kill mid-copy could leave it.
    let hex = blobs[7].to_string();
    fs::remove_file(repo.path().join("objects").join(&hex[..2]).join(&hex[2..])).unwrap();
    let e = materialise(&volume, repo.path(), c, &ReleaseLimits::default()).unwrap_err();
    assert_eq!(e.blame(), Blame::Cache, "{e}");
    assert!(leftovers(&volume).is_empty(), "{:?}", leftovers(&volume));
}
