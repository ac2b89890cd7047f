//! Bad configs: every problem reported at once with file:line:col and key
//! path, exit 78, and nothing started.

use crate::fixture::prelude::*;

#[test]
fn valid_config_passes_check() {
    let dir = TestDir::new();
    let (code, err) = check_config(
        &dir,
        r#"[app]
command = ["gunicorn", "app:app"]
workdir = "/srv/app/current"
env = { KEY = "value" }
user = "root"
restart = "on-failure"
stop_signal = "SIGQUIT"
stop_timeout = "2m"
"#,
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn invalid_toml_names_line_and_column() {
    let dir = TestDir::new();
    let (code, err) = check_config(&dir, "[app]\ncommand = [\"a\"\nrestart = \"never\"\n");
    assert_eq!(code, 78);
    assert!(err.contains("cutover.toml:3:"), "{err}");
    assert!(err.contains("invalid TOML"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = TestDir::new();
    let (code, err) = check_config(
        &dir,
        r#"[app]
command = []
colour = "blue"
stop_timeout = "10 parsecs"
stop_signal = "SIGNOPE"
restart = "sometimes"
user = "no-such-user-xyz"
"#,
    );
    assert_eq!(code, 78, "{err}");
    for expected in [
        "cutover.toml:3:1: app.colour: unknown key `colour`",
        "cutover.toml:2:1: app.command: empty command",
        "cutover.toml:4:1: app.stop_timeout: invalid duration `10 parsecs`",
        "cutover.toml:5:1: app.stop_signal: unknown signal `SIGNOPE`",
        "cutover.toml:6:1: app.restart: unknown policy `sometimes`",
        "cutover.toml:7:1: app.user: unknown user `no-such-user-xyz`",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(err.contains("6 problems"), "{err}");
}

#[test]
fn unknown_keys_everywhere_are_all_named() {
    let dir = TestDir::new();
    let (code, err) = check_config(
        &dir,
        r#"extra = 1

[[program]]
name = "web"
command = ["a"]

[[program]]
name = "worker"
command = ["b"]
retsart = "always"
"#,
    );
    assert_eq!(code, 78);
    assert!(err.contains(":1:1: extra: unknown key `extra`"), "{err}");
    assert!(
        err.contains(":10:1: program[1].retsart: unknown key `retsart`"),
        "{err}"
    );
}

#[test]
fn structural_problems_are_named() {
    let dir = TestDir::new();
    let (code, err) = check_config(&dir, "[app]\ncommand = \"gunicorn app:app\"\n");
    assert_eq!(code, 78);
    assert!(err.contains("app.command"), "{err}");

    let (code, err) = check_config(
        &dir,
        "[app]\ncommand = [\"a\"]\n[[program]]\nname = \"b\"\ncommand = [\"b\"]\n",
    );
    assert_eq!(code, 78);
    assert!(err.contains("not both"), "{err}");

    let (code, err) = check_config(
        &dir,
        "[[program]]\ncommand = [\"a\"]\n[[program]]\nname = \"x\"\ncommand = [\"b\"]\n[[program]]\nname = \"x\"\ncommand = [\"c\"]\n",
    );
    assert_eq!(code, 78);
    assert!(err.contains("program[0]: missing key `name`"), "{err}");
    assert!(
        err.contains("program[2].name: another program is already named `x`"),
        "{err}"
    );

    let (code, err) = check_config(&dir, "");
    assert_eq!(code, 78);
    assert!(err.contains("nothing to run"), "{err}");
}

#[test]
fn broken_config_starts_nothing() {
    let dir = TestDir::new();
    let marker = dir.join("started");
    let cfg = dir.write(
        "c.toml",
        &format!(
            "[app]\ncommand = [\"touch\", \"{}\"]\nstop_timeout = \"soon\"\n",
            marker.display()
        ),
    );
    let (code, _, err) = run_cutover(&dir, &["run", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 78);
    assert!(err.contains("app.stop_timeout"), "{err}");
    assert!(
        !marker.exists(),
        "the program was started despite the broken config"
    );
}

#[test]
fn missing_config_file_is_a_config_error() {
    let dir = TestDir::new();
    let (code, _, err) = run_cutover(&dir, &["run", "-c", "/nonexistent/cutover.toml"]);
    assert_eq!(code, 78);
    assert!(err.contains("/nonexistent/cutover.toml"), "{err}");
}
