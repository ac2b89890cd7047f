//! Exit statuses pass through: codes, deaths by signal, exec failures.

use std::time::Duration;

use crate::fixture::prelude::*;

#[test]
fn every_exit_code_passes_through_in_both_modes() {
    let dir = TestDir::new();
    for mode in MODES {
        // In batches, to keep the run short without starting 256 at once.
        for batch in (0..=255).collect::<Vec<i32>>().chunks(32) {
            let mut running: Vec<(i32, Cutover)> = batch
                .iter()
                .map(|&code| {
                    let script = format!("exit {code}");
                    (
                        code,
                        Cutover::start(mode, &dir, &["run", "--", "sh", "-c", &script]),
                    )
                })
                .collect();
            for (code, c) in &mut running {
                assert_eq!(
                    c.wait(SECS_20),
                    *code,
                    "{mode:?}: exit {code}\n{}",
                    c.stderr()
                );
            }
        }
    }
}

#[test]
fn death_by_signal_gives_128_plus_n() {
    let dir = TestDir::new();
    for mode in MODES {
        for (sig, name, expected) in [
            (libc::SIGTERM, "TERM", 143),
            (libc::SIGUSR1, "USR1", 138),
            (libc::SIGUSR2, "USR2", 140),
        ] {
            // The program kills itself with the signal.
            let script = format!("kill -{name} $$");
            let mut c = Cutover::start(mode, &dir, &["run", "--", "sh", "-c", &script]);
            assert_eq!(c.wait(SECS_20), expected, "{mode:?} self {name}");

            // The signal is sent to cutover: TERM stops the program, USR1 and
            // USR2 are forwarded; the program dies of them either way.
            let mut c = Cutover::start(mode, &dir, &["run", "--", "sleep", "100"]);
            c.wait_for_log("started", SECS_20);
            c.signal(sig);
            assert_eq!(
                c.wait(SECS_20),
                expected,
                "{mode:?} forwarded {name}\n{}",
                c.stderr()
            );
        }
    }
}

#[test]
fn missing_program_gives_127_and_says_so() {
    let dir = TestDir::new();
    for mode in MODES {
        let mut c = Cutover::start(mode, &dir, &["run", "--", "no-such-program-xyz", "arg"]);
        assert_eq!(c.wait(SECS_20), 127);
        let log = c.stderr();
        assert!(
            log.contains("no-such-program-xyz") && log.contains("not found"),
            "{log}"
        );
    }
}

#[test]
fn non_executable_program_gives_126() {
    let dir = TestDir::new();
    let script = dir.write("script.sh", "#!/bin/sh\necho never\n");
    let path = script.to_str().unwrap();
    let mut c = Cutover::start(Mode::Subreaper, &dir, &["run", "--", path]);
    assert_eq!(c.wait(SECS_20), 126);
    assert!(c.stderr().contains("script.sh"), "{}", c.stderr());
    assert!(!c.stdout().contains("never"));

    // A directory found by path is not executable either.
    let mut c = Cutover::start(Mode::Subreaper, &dir, &["run", "--", "/tmp"]);
    assert_eq!(c.wait(SECS_20), 126);
}

#[test]
fn bad_workdir_fails_to_start_with_a_reason() {
    let dir = TestDir::new();
    let mut c = Cutover::run_config(
        Mode::Subreaper,
        &dir,
        "[app]\ncommand = [\"true\"]\nworkdir = \"/nonexistent/dir\"\n",
    );
    assert_eq!(c.wait(Duration::from_secs(10)), 126);
    assert!(c.stderr().contains("/nonexistent/dir"), "{}", c.stderr());
}
