//! Restart policies: backoff between attempts and giving up on a crash loop.

use std::time::Duration;

use crate::fixture::prelude::*;

fn start_times(dir: &TestDir) -> Vec<f64> {
    dir.read("starts")
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

#[test]
fn on_failure_backs_off_exponentially_then_gives_up() {
    let dir = TestDir::new();
    let mut c = Cutover::run_config(
        Mode::Pid1,
        &dir,
        r#"[app]
command = ["sh", "-c", "date +%s.%N >> starts; exit 3"]
restart = "on-failure"
"#,
    );
    assert_eq!(
        c.wait(SECS_20),
        3,
        "gives up with the app's status\n{}",
        c.stderr()
    );
    let starts = start_times(&dir);
    assert_eq!(
        starts.len(),
        5,
        "five failures, then no more attempts: {starts:?}"
    );
    let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    // Delays are 100, 200, 400, 800 ms; each gap is at least its delay and
    // well short of the next one's.
    for (gap, delay) in gaps.iter().zip([0.1, 0.2, 0.4, 0.8]) {
        assert!(*gap >= delay && *gap < delay * 2.0 + 0.3, "gaps {gaps:?}");
    }
    assert!(c.stderr().contains("giving up"), "{}", c.stderr());
}

#[test]
fn on_failure_stops_after_a_clean_exit() {
    let dir = TestDir::new();
    let mut c = Cutover::run_config(
        Mode::Subreaper,
        &dir,
        r#"[app]
command = ["sh", "-c", "date +%s.%N >> starts; n=$(wc -l < starts); [ $n -ge 3 ] && exit 0; exit 1"]
restart = "on-failure"
restart_delay = "10ms"
"#,
    );
    assert_eq!(c.wait(SECS_20), 0, "{}", c.stderr());
    assert_eq!(start_times(&dir).len(), 3);
}

#[test]
fn always_restarts_clean_exits_until_stopped() {
    let dir = TestDir::new();
    let mut c = Cutover::run_config(
        Mode::Subreaper,
        &dir,
        r#"[app]
command = ["sh", "-c", "date +%s.%N >> starts; trap 'exit 0' TERM; sleep 0.05 & wait"]
restart = "always"
restart_delay = "20ms"
restart_delay_max = "20ms"
"#,
    );
    // Clean exits are no failures: it keeps going past the limit of 5.
    wait_for(SECS_20, || (start_times(&dir).len() >= 8).then_some(())).expect("restarts");
    c.signal(libc::SIGTERM);
    // Stopped while running (exits 0 on TERM), while backing off (last
    // status 0), or in the instant after a restart, before sh set its trap
    // (killed by TERM: 143). Either way it stops, and nothing is restarted.
    let code = c.wait(SECS_20);
    assert!(code == 0 || code == 143, "{code}\n{}", c.stderr());
    let starts = start_times(&dir).len();
    assert_stays(
        "nothing restarted after the stop",
        Duration::from_millis(200),
        || start_times(&dir).len() == starts,
    );
}

#[test]
fn never_is_the_default() {
    let dir = TestDir::new();
    let mut c = Cutover::run_config(
        Mode::Subreaper,
        &dir,
        "[app]\ncommand = [\"sh\", \"-c\", \"echo x >> starts; exit 4\"]\n",
    );
    assert_eq!(c.wait(Duration::from_secs(10)), 4);
    assert_eq!(dir.read("starts").lines().count(), 1);
}
