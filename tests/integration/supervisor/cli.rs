//! The command-line contract: run, check, --version, help, CUTOVER_CONFIG,
//! a command after `--` overriding [app].command, and JSON logs.

use crate::fixture::prelude::*;

#[test]
fn version_and_help() {
    let dir = TestDir::new();
    let (code, out, _) = run_cutover(&dir, &["--version"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("cutover {}", env!("CARGO_PKG_VERSION")));
    let (code, out, _) = run_cutover(&dir, &["help"]);
    assert_eq!(code, 0);
    assert!(out.contains("run") && out.contains("check"), "{out}");
}

#[test]
fn config_from_environment_and_command_override() {
    let dir = TestDir::new();
    let cfg = dir.write("c.toml", "[app]\ncommand = [\"sh\", \"-c\", \"exit 5\"]\n");
    let cfg = cfg.to_str().unwrap();
    let mut c = Cutover::start_with(Mode::Subreaper, &dir, &["run"], &[("CUTOVER_CONFIG", cfg)]);
    assert_eq!(c.wait(SECS_20), 5);
    // `--` replaces [app].command but keeps the rest of the config.
    let mut c = Cutover::start_with(
        Mode::Subreaper,
        &dir,
        &["run", "--", "sh", "-c", "exit 6"],
        &[("CUTOVER_CONFIG", cfg)],
    );
    assert_eq!(c.wait(SECS_20), 6);
}

#[test]
fn nothing_to_run_is_an_error() {
    let dir = TestDir::new();
    let (code, _, err) = run_cutover(&dir, &["run"]);
    assert_eq!(code, 78);
    assert!(err.contains("nothing to run"), "{err}");
}

#[test]
fn app_output_passes_through_untouched() {
    let dir = TestDir::new();
    let (code, out, err) = run_cutover(
        &dir,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "printf 'raw\\tline\\n'; printf 'to-err' >&2",
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(out, "raw\tline\n");
    assert!(err.contains("to-err"));
}

#[test]
fn an_apps_last_words_on_stderr_are_all_written_before_cutover_exits() {
    // stderr is relayed through cutover; the app exits with up to a pipe's
    // worth still unread, and cutover, exiting with it, must write it all
    // first: the last words of a crashing app are the ones that matter.
    let dir = TestDir::new();
    for round in 0..5 {
        let (code, _, err) = run_cutover(
            &dir,
            &[
                "run",
                "--",
                "sh",
                "-c",
                "head -c 1000000 /dev/zero | tr '\\0' x >&2; printf '\\nlast words' >&2; exit 3",
            ],
        );
        assert_eq!(code, 3, "round {round}");
        let longest_run = err.split(|c| c != 'x').map(str::len).max();
        assert_eq!(longest_run, Some(1_000_000), "round {round}: output lost");
        assert!(
            err.contains("\nlast words"),
            "round {round}: the last words are lost"
        );
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = TestDir::new();
    let (code, _, err) = run_cutover(&dir, &["--log-format", "json", "run", "--", "true"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() >= 2, "{err}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v.get("level").is_some() && v.get("message").is_some(),
            "{line}"
        );
    }
}
