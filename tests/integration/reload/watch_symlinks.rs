//! Dev-mode `[reload] watch` stays inside its tree: a symlink in it that
//! leads outside (to /etc, to the volume) neither gets watched nor makes a
//! change out there reload the app.

use std::time::Duration;

use crate::fixture::prelude::*;

fn reloads(dir: &TestDir) -> u64 {
    wait_for(SECS_20, || {
        let s = status(dir);
        let r = &s["reload"];
        (r["in_progress"] == false && r["pending"] == false).then(|| r["reloads"].as_u64().unwrap())
    })
    .expect("reloads never settled")
}

#[test]
fn a_symlink_out_of_the_watched_tree_is_not_followed() {
    let dir = TestDir::new();
    let src = dir.join("src");
    let outside = dir.join("outside");
    std::fs::create_dir_all(src.join("pkg")).unwrap();
    std::fs::create_dir_all(outside.join("deep")).unwrap();
    std::os::unix::fs::symlink(&outside, src.join("link")).unwrap();
    std::os::unix::fs::symlink(&outside, src.join("pkg").join("link2")).unwrap();
    let c = Cutover::run_config(
        Mode::Subreaper,
        &dir,
        &format!(
            "[app]\ncommand = [\"sleep\", \"100\"]\nworkdir = \"{}\"\n\n[reload]\nwatch = [\"**/*.py\"]\n\n[ready]\ngrace = \"0s\"\n",
            src.display()
        ),
    );
    wait_for_control(&dir);
    c.wait_for_log("watching source files", SECS_20);

    // Outside, reached through both links: no reload.
    std::fs::write(outside.join("settings.py"), "x = 1\n").unwrap();
    std::fs::write(outside.join("deep").join("other.py"), "x = 1\n").unwrap();
    std::fs::write(outside.join("new.py"), "x = 2\n").unwrap();
    assert_stays_with(
        "a change outside reloads nothing",
        Duration::from_millis(1500),
        || reloads(&dir) == 0,
        || c.stderr(),
    );

    // Inside: one reload, named by its path in the tree.
    std::fs::write(src.join("pkg").join("views.py"), "x = 1\n").unwrap();
    wait_for(SECS_20, || (reloads(&dir) >= 1).then_some(()))
        .unwrap_or_else(|| panic!("a change inside did not reload\n{}", c.stderr()));
    let trigger = status(&dir)["reload"]["last"]["trigger"].clone();
    assert!(
        trigger.as_str().is_some_and(|t| t.contains("pkg/views.py")),
        "{trigger}"
    );

    // Outside again, after the reload: still nothing.
    std::thread::sleep(Duration::from_millis(500));
    let before = reloads(&dir);
    std::fs::write(outside.join("settings.py"), "x = 3\n").unwrap();
    assert_stays_with(
        "still nothing from outside",
        Duration::from_millis(1500),
        || reloads(&dir) == before,
        || c.stderr(),
    );
}
