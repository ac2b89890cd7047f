//! What children get: the environment of programs, hooks, readiness and
//! redeploy commands (never the secrets cutover reads; `env_clear` and
//! `pass_env`), hooks that run in their program's environment, changed file
//! names that cannot forge entries, and NOTIFY_SOCKETs only their instance
//! can reach.
//!
//! Real repositories (`tests/fixture/git.rs`), the real binary, `sh` dumping `env`
//! into files, `apps/fdserver.py` where an app must serve.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::fixture::git::Repo;
use crate::fixture::prelude::*;

const GIT_TOKEN: &str = "s3cret-git-token-4711";
const WEBHOOK_SECRET: &str = "s3cret-webhook-0815";
const SECRETS: [(&str, &str); 3] = [
    ("GIT_TOKEN", GIT_TOKEN),
    ("WEBHOOK_SECRET", WEBHOOK_SECRET),
    ("ORDINARY", "yes-ordinary"),
];

/// The `env` dump at `path` (written by a child) once it is complete.
fn dumped(path: &Path, c: &Cutover) -> BTreeMap<String, String> {
    let text = wait_for(SECS_20, || {
        std::fs::read_to_string(path)
            .ok()
            .filter(|t| t.contains("END_OF_DUMP"))
    })
    .unwrap_or_else(|| panic!("{} never written\n{}", path.display(), c.stderr()));
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `sh -c` text that dumps the environment into `file` (atomically, so a
/// reader never sees half of it).
fn dump(file: &Path) -> String {
    format!(
        "{{ /usr/bin/env; echo END_OF_DUMP=1; }} > {f}.tmp && /bin/mv {f}.tmp {f}",
        f = file.display()
    )
}

fn assert_no_secret(what: &str, env: &BTreeMap<String, String>) {
    for (k, v) in env {
        assert!(
            !v.contains(GIT_TOKEN) && !v.contains(WEBHOOK_SECRET),
            "{what} got a secret in {k}: {env:?}"
        );
    }
    assert!(!env.contains_key("GIT_TOKEN"), "{what}: {env:?}");
    assert!(!env.contains_key("WEBHOOK_SECRET"), "{what}: {env:?}");
}

/// `GIT_TOKEN` and `WEBHOOK_SECRET` named by `[source]` reach no program,
/// hook or readiness command, while an ordinary variable does; a program
/// with `env_clear` gets only its `pass_env` and `env` (and what cutover
/// adds).
#[test]
fn secrets_the_config_reads_never_reach_a_child() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    repo.release("v1");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let toml = format!(
        r#"[[program]]
name = "web"
command = ["sh", "-c", "{program}; exec sleep 600"]
stop_timeout = "2s"
ready = {{ command = ["sh", "-c", "{ready}"], timeout = "10s", grace = "0s" }}

[[program]]
name = "clean"
command = ["/bin/sh", "-c", "{clean}; exec /bin/sleep 600"]
env_clear = true
pass_env = ["ORDINARY"]
env = {{ ADDED = "1" }}
stop_timeout = "2s"

[hooks]
before_cutover = [["sh", "-c", "{hook}"]]

[source]
repo = "{remote}"
root = "{root}"
token_env = "GIT_TOKEN"
webhook_secret_env = "WEBHOOK_SECRET"
"#,
        program = dump(&out.join("program.env")),
        ready = dump(&out.join("ready.env")),
        clean = dump(&out.join("clean.env")),
        hook = dump(&out.join("hook.env")),
        remote = repo.remote.display(),
        root = dir.join("srv").display(),
    );
    let cfg = dir.write("cutover.toml", &toml);
    let c = Cutover::start_with(
        Mode::Subreaper,
        &dir,
        &["run", "-c", cfg.to_str().unwrap()],
        &SECRETS,
    );
    for what in ["hook", "program", "ready"] {
        let env = dumped(&out.join(format!("{what}.env")), &c);
        assert_no_secret(what, &env);
        assert_eq!(
            env.get("ORDINARY").map(String::as_str),
            Some("yes-ordinary"),
            "{what}: {env:?}"
        );
        assert!(env.contains_key("PATH"), "{what}: {env:?}");
    }
    let clean = dumped(&out.join("clean.env"), &c);
    assert_no_secret("clean", &clean);
    assert_eq!(clean["ORDINARY"], "yes-ordinary", "{clean:?}");
    assert_eq!(clean["ADDED"], "1", "{clean:?}");
    assert_eq!(clean["CUTOVER_PROGRAM"], "clean", "{clean:?}");
    for dropped in ["PATH", "HOME", "CUTOVER_LOG", "CUTOVER_SOCKET"] {
        assert!(!clean.contains_key(dropped), "{dropped} passed: {clean:?}");
    }
}

/// The `[redeploy] command` does not get the secrets either, and runs as
/// the hooked program's user, not as root.
#[test]
fn the_redeploy_command_runs_without_secrets_as_the_programs_user() {
    let dir = TestDir::new();
    // `nobody` must reach the release directory and write its report.
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::set_permissions(&out, PermissionsExt::from_mode(0o777)).unwrap();
    let release = dir.join("releases/0123456789abcdef0123456789abcdef01234567");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::set_permissions(dir.join("releases"), PermissionsExt::from_mode(0o755)).unwrap();
    let report = out.join("redeploy.env");
    let cfg = dir.write(
        "cutover.toml",
        &format!(
            r#"[app]
command = ["true"]
user = "nobody"

[source]
repo = "/nonexistent/remote.git"
root = "{root}"
token_env = "GIT_TOKEN"
webhook_secret_env = "WEBHOOK_SECRET"

[redeploy]
command = ["sh", "-c", "echo UID=$(id -u) > {report}; /usr/bin/env >> {report}"]
"#,
            root = dir.join("srv").display(),
            report = report.display(),
        ),
    );
    let mut c = Cutover::start_with(
        Mode::Subreaper,
        &dir,
        &[
            "redeploy",
            "-c",
            cfg.to_str().unwrap(),
            "--dir",
            release.to_str().unwrap(),
            "--changed",
            "requirements.txt",
        ],
        &SECRETS,
    );
    assert_eq!(c.wait(SECS_20), 0, "{}", c.stderr());
    let env: BTreeMap<String, String> = std::fs::read_to_string(&report)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_no_secret("redeploy command", &env);
    assert_eq!(env["ORDINARY"], "yes-ordinary");
    assert_eq!(env["UID"], "65534", "runs as nobody: {env:?}");
    assert_eq!(env["CUTOVER_CHANGED_FILES"], "requirements.txt");
}

/// A Django-style `before_cutover` migration whose settings read the
/// database location from the environment, set only in the program's
/// `env`, plus a variable from `[hooks] env`: it succeeds and the first
/// release is served.
#[test]
fn a_migration_hook_sees_the_programs_env_and_the_first_release_is_served() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    let db = dir.join("app.db");
    repo.commit(
        "v1",
        &[
            ("version", "v1"),
            (
                "manage.sh",
                "#!/bin/sh\n\
                 # settings.py: DATABASES = {'NAME': os.environ['DATABASE_PATH']}\n\
                 [ -n \"$DATABASE_PATH\" ] || { echo 'KeyError: DATABASE_PATH' >&2; exit 1; }\n\
                 [ \"$MIGRATE_NOINPUT\" = yes ] || { echo 'would prompt' >&2; exit 1; }\n\
                 echo \"migrated $CUTOVER_SHA\" > \"$DATABASE_PATH\"\n",
            ),
        ],
    );
    repo.push();
    let port = free_port();
    let toml = format!(
        r#"[[listen]]
address = "127.0.0.1:{port}"

[app]
command = ["python3", "{server}"]
env = {{ DATABASE_PATH = "{db}" }}
stop_timeout = "5s"

[ready]
http = "http://127.0.0.1:{port}/healthz"
grace = "100ms"

[hooks]
before_cutover = [["sh", "manage.sh", "migrate"]]
env = {{ MIGRATE_NOINPUT = "yes" }}
timeout = "20s"

[source]
repo = "{remote}"
root = "{root}"
"#,
        server = app("fdserver.py"),
        db = db.display(),
        remote = repo.remote.display(),
        root = dir.join("srv").display(),
    );
    let c = Cutover::run_config(Mode::Subreaper, &dir, &toml);
    wait_for(SECS_20, || {
        (served_version(port).ok()? == "v1").then_some(())
    })
    .unwrap_or_else(|| panic!("the first release was never served\n{}", c.stderr()));
    assert_eq!(
        std::fs::read_to_string(&db).unwrap().trim(),
        format!("migrated {}", repo.head())
    );
}

/// A dependency file whose name holds a newline reaches the redeploy
/// command as one percent-encoded entry that decodes to the real name,
/// not as a forged second entry.
#[test]
fn a_newline_in_a_changed_file_name_cannot_forge_an_entry() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    repo.commit(
        "v1",
        &[("version", "v1"), ("requirements.txt", "flask==3.0\n")],
    );
    repo.push();
    let port = free_port();
    let asked = dir.join("asked");
    let toml = format!(
        r#"[[listen]]
address = "127.0.0.1:{port}"

[app]
command = ["python3", "{server}"]
stop_timeout = "5s"

[ready]
http = "http://127.0.0.1:{port}/healthz"
grace = "100ms"

[source]
repo = "{remote}"
root = "{root}"

[dependencies]
baseline = "{baseline}"

[redeploy]
command = ["sh", "-c", "printf '%s' \"$CUTOVER_CHANGED_FILES\" > {asked}.tmp && mv {asked}.tmp {asked}"]
"#,
        server = app("fdserver.py"),
        remote = repo.remote.display(),
        root = dir.join("srv").display(),
        baseline = dir.join("no-baseline").display(),
        asked = asked.display(),
    );
    let c = Cutover::run_config(Mode::Subreaper, &dir, &toml);
    wait_for(SECS_20, || {
        (served_version(port).ok()? == "v1").then_some(())
    })
    .unwrap_or_else(|| panic!("v1 never served\n{}", c.stderr()));
    let forged = "requirements.txt\nforged.txt";
    repo.commit("v2", &[("version", "v2"), (forged, "evil==1.0\n")]);
    repo.push();
    let got = wait_for(SECS_20, || std::fs::read_to_string(&asked).ok())
        .unwrap_or_else(|| panic!("redeploy command never ran\n{}", c.stderr()));
    let entries: Vec<&str> = got.lines().collect();
    assert_eq!(entries, ["requirements.txt%0Aforged.txt"], "{got:?}");
    assert_eq!(percent_decode(entries[0]), forged);
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Prints `<mode> <uid>` of NOTIFY_SOCKET and of its directory, then says
/// READY=1 there.
const NOTIFY_PROBE: &str = r#"import os, socket, sys, time
p = os.environ['NOTIFY_SOCKET']
for f in (p, os.path.dirname(p)):
    st = os.stat(f)
    print('STAT %o %d %s' % (st.st_mode & 0o7777, st.st_uid, f), flush=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b'READY=1', p)
print('SENT', flush=True)
time.sleep(600)
"#;

/// NOTIFY_SOCKET is 0600 in a 0700 directory, both owned by the instance's
/// user, and that user can still say READY=1.
#[test]
fn notify_sockets_are_private_to_their_instance() {
    let dir = TestDir::new();
    let toml = format!(
        r#"[[program]]
name = "root"
command = ["/usr/bin/python3", "-c", "{probe}"]
ready = {{ notify = true, timeout = "10s" }}
stop_timeout = "2s"

[[program]]
name = "nobody"
command = ["/usr/bin/python3", "-c", "{probe}"]
user = "nobody"
ready = {{ notify = true, timeout = "10s" }}
stop_timeout = "2s"
"#,
        // The system's python: `nobody` cannot run a user's pyenv shim.
        probe = NOTIFY_PROBE.replace('\n', "\\n").replace('"', "\\\""),
    );
    let c = Cutover::run_config(Mode::Subreaper, &dir, &toml);
    c.wait_for_log("ready program=root", SECS_20);
    c.wait_for_log("ready program=nobody", SECS_20);
    // READY=1 may be read before the probe's next line is printed.
    wait_for(SECS_20, || {
        (c.stdout().matches("SENT").count() >= 2).then_some(())
    })
    .unwrap_or_else(|| panic!("both probes never said SENT: {}", c.stdout()));
    let stdout = c.stdout();
    // Both programs write to the same stdout: a line of one may be cut by
    // the other's, so records are found by their marker, not by lines.
    let stats: Vec<(&str, &str)> = stdout
        .split("STAT ")
        .skip(1)
        .map(|l| {
            let mut parts = l.split(' ');
            (parts.next().unwrap(), parts.next().unwrap())
        })
        .collect();
    // The socket (0600) and its directory (0700) of each program, owned by
    // the program's user; the two programs' records come in any order.
    let mut stats = stats;
    stats.sort();
    assert_eq!(
        stats,
        [
            ("600", "0"),
            ("600", "65534"),
            ("700", "0"),
            ("700", "65534")
        ],
        "{stdout}"
    );
    assert_eq!(stdout.matches("SENT").count(), 2, "{stdout}");
}
