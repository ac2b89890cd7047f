//! What a commit or a remote writes is data in `cutover status`: a file
//! name with an ESC sequence shows escaped in the text output (the JSON is
//! escaped by serde), and a `[redeploy] webhook` URL shows without its query
//! values (a `?token=`), in status, history and log.

use serde_json::Value;

use crate::fixture::git::Repo;
use crate::fixture::prelude::*;

const QUERY_TOKEN: &str = "qtok-SECRET-0a1b2c3d4e";

fn source(dir: &TestDir) -> Value {
    status(dir)["source"].clone()
}

#[test]
fn an_escape_sequence_in_a_file_name_is_shown_escaped_and_a_webhook_token_never() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    repo.commit(
        "v1",
        &[("version", "v1"), ("requirements.txt", "flask==3.0\n")],
    );
    repo.push();
    let root = dir.join("srv");
    let port = free_port();
    // Nothing listens there: every redeploy fails and shows its error.
    let hook = free_port();
    let extra = format!(
        r#"[dependencies]
baseline = "{baseline}"

[redeploy]
webhook = "http://127.0.0.1:{hook}/hooks/redeploy?token={QUERY_TOKEN}&x=1"
"#,
        baseline = dir.join("no-baseline").display(),
    );
    let toml = ConfigToml::deploying(port, repo.remote.to_str().unwrap(), &root, "")
        .raw(&extra)
        .to_string();
    let c = Cutover::run_config(Mode::Subreaper, &dir, &toml);
    wait_for(SECS_20, || {
        (served_version(port).ok()? == "v1").then_some(())
    })
    .unwrap_or_else(|| panic!("never served v1\n{}", c.stderr()));
    wait_for_control(&dir);

    // A dependency file (it matches `requirements*.txt`) whose name turns
    // the operator's terminal red and sets its title.
    let evil = "requirements\u{1b}[31m\u{1b}]0;owned\u{7}.txt";
    let v2 = repo.commit("v2", &[("version", "v2"), (evil, "flask==3.1\n")]);
    repo.push();
    let src = wait_for(SECS_20, || {
        let src = source(&dir);
        (src["dependencies"]["redeploy_required"]["sha"] == v2.as_str()
            && src["redeploy"]["last_result"].is_string())
        .then_some(src)
    })
    .unwrap_or_else(|| panic!("no failed redeploy: {}\n{}", source(&dir), c.stderr()));
    // JSON keeps the name exactly (escaped by the encoding itself).
    assert_eq!(
        src["dependencies"]["redeploy_required"]["changed_files"],
        serde_json::json!([evil]),
        "{src}"
    );

    let (code, text, err) = client(&dir, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "a control character reached the terminal:\n{text:?}"
    );
    assert!(
        text.contains("requirements\\x1b[31m\\x1b]0;owned\\x07.txt"),
        "the name shows escaped:\n{text}"
    );
    // Only the line breaks of the layout itself.
    assert!(
        text.lines().all(|l| !l.contains('\r')),
        "no carriage return:\n{text:?}"
    );

    let result = src["redeploy"]["last_result"].as_str().unwrap();
    assert!(
        result.contains(&format!(
            "http://127.0.0.1:{hook}/hooks/redeploy?token=***&x=***"
        )),
        "the error names the webhook without its token: {result}"
    );
    let shown = format!(
        "{}\n{text}\n{}\n{}",
        status(&dir),
        std::fs::read_to_string(root.join("history.jsonl")).unwrap_or_default(),
        c.stderr()
    );
    assert!(
        !shown.contains(QUERY_TOKEN),
        "the webhook token leaked:\n{shown}"
    );
}
