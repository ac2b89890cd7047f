//! examples/django under the real `cutover`, deployed from an https forge:
//! the example's own files committed to a private repository on the local
//! forge (nginx + git-http-backend over TLS with a token, tests/fixture/forge.rs),
//! its own `cutover.toml` (paths swapped for the test's, its commented
//! `token_file`, `ca_file` and webhook lines switched on), each push
//! announced by the forge's signed webhook, Django and gunicorn from
//! scripts/setup-python's venv, SQLite on the test's "volume". Owns the two
//! promises of the example: a migration deploys under load without a failed
//! request and before the code that needs it serves; a failing migration
//! never goes live and the record says which hook failed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fixture::forge::{Cert, HttpsForge};
use crate::fixture::git::{Repo, git};
use crate::fixture::http::{Request, word};
use crate::fixture::prelude::*;
use crate::program::gunicorn::venv;
use crate::source::deploys::{github_signature, http_post, push_body};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/django");

/// Django takes seconds to start on two busy cores, and the first deploy
/// migrates every contrib app as well.
const START: Duration = Duration::from_secs(45);

/// The example's files (path relative to examples/django, content), without
/// what a local run leaves behind.
fn example_files() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "__pycache__" || name == "staticfiles" || name.starts_with("db.sqlite3") {
                continue;
            }
            if path.is_dir() {
                walk(&path, out);
            } else {
                let rel = path.strip_prefix(EXAMPLE).unwrap().display().to_string();
                out.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let mut files = Vec::new();
    walk(Path::new(EXAMPLE), &mut files);
    files.sort();
    assert!(
        files
            .iter()
            .any(|(p, _)| p == "notes/migrations/0001_initial.py"),
        "{files:?}"
    );
    files
}

/// `text` with `from` replaced; panics when the example no longer has it, so
/// a change to the example cannot quietly leave the test on other code.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not found in\n{text}");
    text.replace(from, to)
}

/// The content of example file `path`.
fn file(path: &str) -> String {
    std::fs::read_to_string(format!("{EXAMPLE}/{path}")).unwrap()
}

/// Commit 2: a field with its migration, v2 code that reads it and writes it.
/// The migration also inserts a marker note in its transaction, so the notes
/// after it were written against the migrated schema.
fn with_priority(version: &str) -> Vec<(&'static str, String)> {
    let model = edit(
        &file("notes/models.py"),
        "    created = models.DateTimeField(auto_now_add=True)\n",
        // db_default: the old code's INSERTs, which do not name the column,
        // must still work while it serves (examples/django/README.md, "Migrations under overlap")
        "    created = models.DateTimeField(auto_now_add=True)\n    priority = models.IntegerField(default=0, db_default=0)\n",
    );
    let views = edit(
        &file("notes/views.py"),
        "VERSION = \"v1\"",
        &format!("VERSION = \"{version}\""),
    );
    let views = edit(
        &views,
        "Note.objects.create(text=request.POST.get(\"text\", \"\")[:200] or \"-\")",
        "Note.objects.create(text=request.POST.get(\"text\", \"\")[:200] or \"-\", priority=1)",
    );
    let views = edit(
        &views,
        "f\"latest {latest.text if latest else '-'}\\n\"",
        "f\"latest {latest.text if latest else '-'} priority {latest.priority if latest else '-'}\\n\"",
    );
    let migration = r#"from django.db import migrations, models


def mark(apps, schema_editor):
    apps.get_model("notes", "Note").objects.create(text="migrated to 0002", priority=2)


class Migration(migrations.Migration):

    dependencies = [
        ('notes', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='note',
            name='priority',
            field=models.IntegerField(db_default=0, default=0),
        ),
        migrations.RunPython(mark, migrations.RunPython.noop),
    ]
"#;
    vec![
        ("notes/models.py", model),
        ("notes/views.py", views),
        (
            "notes/migrations/0002_note_priority.py",
            migration.to_string(),
        ),
    ]
}

const REFUSAL: &str = "12 notes have no owner: assign them before migrating";

/// A commit whose migration adds the column and then raises.
fn failing_migration(version: &str) -> Vec<(&'static str, String)> {
    let mut files = with_priority(version);
    files[2] = (
        "notes/migrations/0002_note_priority.py",
        format!(
            r#"from django.db import migrations, models


def refuse(apps, schema_editor):
    raise RuntimeError("{REFUSAL}")


class Migration(migrations.Migration):

    dependencies = [
        ('notes', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='note',
            name='priority',
            field=models.IntegerField(db_default=0, default=0),
        ),
        migrations.RunPython(refuse, migrations.RunPython.noop),
    ]
"#
        ),
    );
    files
}

/// The forge's webhook secret, in cutover's environment as the example's
/// `webhook_secret_env` names it.
const WEBHOOK_SECRET: &str = "the forge's webhook secret";

/// A running deploy of the example: repository, forge, volume, cutover.
struct Site {
    dir: TestDir,
    repo: Repo,
    /// `[source] root`: releases/, current, history.jsonl.
    root: PathBuf,
    /// The database's file.
    db: PathBuf,
    port: u16,
    /// `[source] webhook`: where the forge's push webhook goes.
    hook: u16,
    cutover: Cutover,
    /// The private repository cutover fetches from, and its bare copy there.
    forge: HttpsForge,
    bare: PathBuf,
    v1: String,
}

/// examples/django/cutover.toml with the container's paths and addresses
/// replaced by the test's, and its commented lines for a private repository
/// on a forge with a private CA and a push webhook switched on.
fn config(dir: &TestDir, forge: &HttpsForge, port: u16, hook: u16) -> String {
    let toml = file("cutover.toml");
    let toml = edit(
        &toml,
        "\"/opt/venv/bin/",
        &format!("\"{}/bin/", venv().display()),
    );
    let toml = edit(&toml, "0.0.0.0:8000", &format!("127.0.0.1:{port}"));
    let toml = edit(
        &toml,
        "https://git.example.com/org/mysite.git",
        &forge.url("mysite.git"),
    );
    // The token as a secret file holds it: alone, with a newline.
    let token = dir.write("git_token", &format!("{}\n", forge.token));
    let toml = edit(
        &toml,
        "# token_file = \"/run/secrets/git_token\"",
        &format!("token_file = \"{}\"", token.display()),
    );
    let toml = edit(
        &toml,
        "# ca_file = \"/etc/cutover/forge-ca.pem\"",
        &format!("ca_file = \"{}\"", forge.ca_file.display()),
    );
    let toml = edit(
        &toml,
        "# webhook_secret_env = \"WEBHOOK_SECRET\"",
        "webhook_secret_env = \"WEBHOOK_SECRET\"",
    );
    let toml = edit(
        &toml,
        "# webhook = \"0.0.0.0:9000\"",
        &format!("webhook = \"127.0.0.1:{hook}\""),
    );
    let srv = dir.join("srv");
    let toml = edit(&toml, "\"/srv/", &format!("\"{}/", srv.display()));
    let toml = edit(
        &toml,
        "http = \"127.0.0.1:9090\"",
        &format!("http = \"127.0.0.1:{}\"", free_port()),
    );
    // The image's baseline is no file on the test machine: the first
    // release becomes it.
    edit(
        &toml,
        "files = [\"requirements.txt\"]",
        &format!(
            "files = [\"requirements.txt\"]\nbaseline = \"{}\"",
            dir.join("dependencies").display()
        ),
    )
}

impl Site {
    /// Commits the example as v1, publishes it on a forge, starts cutover on
    /// its config and waits until v1 serves and the start-up checks are over.
    fn start() -> Site {
        let dir = TestDir::new();
        let repo = Repo::new(&dir);
        let files = example_files();
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_str()))
            .collect();
        let v1 = repo.commit("the example as it is", &refs);
        let forge = HttpsForge::start(dir.path(), Cert::Good);
        let bare = forge.publish(&repo.work, "mysite.git");
        let (port, hook) = (free_port(), free_port());
        let cfg = dir.write("cutover.toml", &config(&dir, &forge, port, hook));
        let cutover = Cutover::start_with(
            Mode::Subreaper,
            &dir,
            &["run", "-c", cfg.to_str().unwrap()],
            &[
                (
                    "DJANGO_SECRET_KEY",
                    "a key for the tests only, 50+ chars long!!",
                ),
                ("WEBHOOK_SECRET", WEBHOOK_SECRET),
            ],
        );
        wait_for(START, || {
            (example_version(port).ok()? == "v1").then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "the example never served v1 ({:?})\n{}",
                http_get(port, "/"),
                cutover.stderr()
            )
        });
        wait_for_control(&dir);
        let site = Site {
            root: dir.join("srv/app"),
            db: dir.join("srv/data/db.sqlite3"),
            dir,
            repo,
            port,
            hook,
            cutover,
            forge,
            bare,
            v1,
        };
        wait_settled(&site.dir);
        site
    }

    /// Commits `files`, pushes them to the forge and delivers the forge's
    /// signed push webhook, as GitHub does: cutover deploys at once.
    fn push(&self, message: &str, files: &[(&str, String)]) -> String {
        let refs: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
        let sha = self.repo.commit(message, &refs);
        git(
            &self.repo.work,
            &["push", "-q", "-f", self.bare.to_str().unwrap(), "main"],
        );
        let body = push_body("refs/heads/main", &sha);
        let signature = github_signature(WEBHOOK_SECRET, &body);
        let headers = [
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", signature.as_str()),
        ];
        let (code, answer) = http_post(self.hook, "/webhook", &headers, &body);
        assert_eq!(code, 202, "{answer}\n{}", self.cutover.stderr());
        sha
    }

    fn history(&self) -> Vec<Value> {
        std::fs::read_to_string(self.root.join("history.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("history lines are JSON"))
            .collect()
    }

    /// Waits until history.jsonl holds `n` records.
    fn wait_history(&self, n: usize) -> Vec<Value> {
        wait_for(Duration::from_secs(40), || {
            let h = self.history();
            (h.len() >= n).then_some(h)
        })
        .unwrap_or_else(|| {
            panic!(
                "history never reached {n} records: {:?}\n{}",
                self.history(),
                self.cutover.stderr()
            )
        })
    }

    /// Rows of `query` on the example's database, one line each, columns
    /// separated by `|`; with the venv's Python, as the app reads it.
    fn sql(&self, query: &str) -> Vec<String> {
        let script = "import sqlite3, sys\n\
                      db = sqlite3.connect(sys.argv[1], timeout=20)\n\
                      for row in db.execute(sys.argv[2]):\n    \
                          print('|'.join(map(str, row)))\n";
        let out = std::process::Command::new(venv().join("bin/python"))
            .args(["-c", script, self.db.to_str().unwrap(), query])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{query}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn columns(&self) -> Vec<String> {
        self.sql("SELECT name FROM pragma_table_info('notes_note')")
    }

    /// Alternates `GET /` and `POST /notes/` (a read and a write through the
    /// model) back to back, counting failures and the versions served.
    fn load(&self) -> Load {
        let port = self.port;
        let mut n = 0u64;
        Load::spawn(
            move || {
                n += 1;
                if n % 2 == 1 {
                    return example_version(port);
                }
                let body = format!("text=note+{n}");
                let r = Request {
                    method: "POST",
                    path: "/notes/",
                    headers: &[("Content-Type", "application/x-www-form-urlencoded")],
                    body: body.as_bytes(),
                    version: "1.0",
                    // the tests' patience, not the benches': cores are busy
                    connect_timeout: Duration::from_secs(5),
                    io_timeout: Duration::from_secs(10),
                }
                .send(port)?;
                match r.code {
                    200 => Ok(word(&r.body, 2)),
                    _ => Err(format!("POST: {} {}", r.status, r.body.trim())),
                }
            },
            Duration::ZERO,
            20_000,
            Duration::from_secs(60),
        )
    }
}

#[test]
fn a_migration_deploys_under_load_before_the_code_that_needs_it() {
    let s = Site::start();
    assert_eq!(s.columns(), ["id", "text", "created"]);
    let load = s.load();
    std::thread::sleep(Duration::from_millis(500));
    let pushed = Instant::now();
    let v2 = s.push("notes get a priority", &with_priority("v2"));
    let h = s.wait_history(2);
    let took = pushed.elapsed();
    // The deploy is recorded once the old gunicorn was told to stop; a
    // second more of load, and its last answers must all be v2's.
    let served_v2 = wait_for(Duration::from_secs(20), || {
        (example_version(s.port).ok()? == "v2").then_some(())
    });
    std::thread::sleep(Duration::from_millis(1000));
    let r = load.finish();
    assert_no_failed("django push deploy", &r, 0, || s.cutover.stderr());
    assert!(served_v2.is_some(), "{h:?}\n{}", s.cutover.stderr());
    // Both gunicorns accept on the one socket for a moment, so v1 and v2
    // may alternate; v2 has the last word.
    assert_eq!(r.versions.first().map(String::as_str), Some("v1"), "{r:?}");
    assert_eq!(r.versions.last().map(String::as_str), Some("v2"), "{r:?}");
    assert!(r.versions.iter().all(|v| v == "v1" || v == "v2"), "{r:?}");
    assert!(r.ok > 40, "the load ran ({} requests)", r.ok);
    eprintln!(
        "django migration deploy: {} requests, {} failed, push to history {took:?}",
        r.requests(),
        r.failed.len()
    );

    assert_eq!(h[1]["outcome"], "deployed", "{h:?}");
    assert_eq!(h[1]["sha"], v2.as_str());
    assert_eq!(h[1]["previous"], s.v1.as_str());
    assert!(h[1]["error"].is_null(), "{h:?}");
    assert_eq!(h[1]["trigger"], "webhook (GitHub)", "{h:?}");
    assert_eq!(current_sha(&s.root).as_deref(), Some(v2.as_str()));
    // Both releases came from the forge, every request with the token.
    let access = s.forge.access_log();
    assert!(
        access.contains("\"POST /git/mysite.git/git-upload-pack HTTP/1.1\" 200"),
        "{access}"
    );
    assert!(!access.contains("\" 401 "), "{access}");
    // Both hooks ran for v2, in order, and both before `current` moved.
    let log = s.cutover.stderr();
    let migrated = log
        .rfind("hook before_cutover[0] finished")
        .expect("migrate ran");
    let collected = log
        .rfind("hook before_cutover[1] finished")
        .expect("collectstatic ran");
    let switched = log.rfind("switched current").expect("switched");
    assert!(migrated < collected && collected < switched, "{log}");
    assert!(
        log.contains("Applying notes.0002_note_priority... OK"),
        "{log}"
    );
    assert!(
        s.dir.join("srv/data/static/admin/css/base.css").is_file(),
        "collectstatic wrote to DJANGO_STATIC_ROOT"
    );

    // The schema went first: v2 selects `priority` on every answer, so a v2
    // answer before the column existed would be a 500 above. And the old
    // code wrote against the new schema: notes after the migration's marker
    // that v2 (which sets priority 1) did not write.
    let columns = s.columns();
    assert!(columns.iter().any(|c| c == "priority"), "{columns:?}");
    let marker: i64 = s.sql("SELECT id FROM notes_note WHERE text = 'migrated to 0002'")[0]
        .parse()
        .unwrap();
    let by_v1_after = s.sql(&format!(
        "SELECT count(*) FROM notes_note WHERE id > {marker} AND priority = 0"
    ));
    let by_v2 = s.sql("SELECT count(*) FROM notes_note WHERE priority = 1");
    assert_ne!(by_v1_after, ["0"], "v1 never wrote after the migration");
    assert_ne!(by_v2, ["0"], "v2 never wrote");
    eprintln!(
        "notes written by v1 against the migrated schema: {}, by v2: {}",
        by_v1_after[0], by_v2[0]
    );
}

#[test]
fn a_failing_migration_never_goes_live_and_the_record_names_the_hook() {
    let s = Site::start();
    let load = s.load();
    std::thread::sleep(Duration::from_millis(500));
    let bad = s.push("a migration that refuses", &failing_migration("v3"));
    let h = s.wait_history(2);
    // The old code goes on serving, reads and writes, for a while longer.
    std::thread::sleep(Duration::from_secs(3));
    let r = load.finish();
    assert_no_failed("django failing migration", &r, 41, String::new);
    assert_eq!(r.versions, ["v1"], "v3 must never serve");
    assert_eq!(current_sha(&s.root).as_deref(), Some(s.v1.as_str()));
    assert_eq!(example_version(s.port).unwrap(), "v1");

    // history.jsonl: failed in migrate (before_cutover[0]), v1 still serving.
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h[1]["outcome"], "failed", "{h:?}");
    assert_eq!(h[1]["sha"], bad.as_str());
    // Which hook, its command, and why: Django's exception, its last line.
    let error = h[1]["error"].as_str().unwrap();
    assert!(error.starts_with("hook before_cutover[0] (`"), "{error}");
    assert!(
        error.contains("manage.py migrate --noinput`) failed: exited with status 1: "),
        "{error}"
    );
    assert!(error.contains(REFUSAL), "{error}");
    assert!(
        error.ends_with("; the old release keeps serving"),
        "{error}"
    );
    // The same record in `cutover status`, JSON and text.
    let st = status(&s.dir);
    let last = st["source"]["history"].as_array().unwrap().last().unwrap();
    assert_eq!(last["outcome"], "failed", "{st}");
    assert_eq!(last["sha"], bad.as_str());
    assert_eq!(last["error"], error);
    assert_eq!(st["source"]["current"], s.v1.as_str());
    assert_eq!(st["source"]["last_error"], error, "{st}");
    assert!(st["source"]["deploying"].is_null(), "{st}");
    let (code, text, _) = client(&s.dir, &["status"]);
    assert_eq!(code, 0);
    let line = text
        .lines()
        .find(|l| l.contains("failed") && l.contains(&bad[..12]))
        .unwrap_or_else(|| panic!("no failed deploy of {bad} in\n{text}"));
    assert!(line.contains(error), "{line}");
    // Why: Django's traceback is in cutover's log under the hook's name.
    let log = s.cutover.stderr();
    assert!(
        log.contains(&format!("before_cutover[0]: RuntimeError: {REFUSAL}")),
        "{log}"
    );
    // The hooks stopped at the failure: collectstatic ran for v1 only.
    assert_eq!(
        log.matches("running hook").count(),
        3,
        "migrate and collectstatic for v1, migrate for v3\n{log}"
    );
    // The migration's transaction took its column back with it.
    assert_eq!(s.columns(), ["id", "text", "created"]);
    assert_eq!(
        s.sql("SELECT count(*) FROM django_migrations WHERE app = 'notes'"),
        ["1"]
    );
}

#[test]
fn the_settings_refuse_to_run_without_a_secret_key() {
    let dir = TestDir::new();
    let manage = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(venv().join("bin/python"));
        cmd.args(["manage.py", "check"])
            .current_dir(EXAMPLE)
            .env_remove("DJANGO_SECRET_KEY")
            .env_remove("DJANGO_DEBUG")
            // nothing of this run may land in the example (bytecode, database)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("DJANGO_DB_PATH", dir.join("db/db.sqlite3"))
            .env("DJANGO_STATIC_ROOT", dir.join("static"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = manage(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("ImproperlyConfigured: DJANGO_SECRET_KEY is not set"),
        "{err}"
    );
    // DEBUG is for a laptop: a fixed insecure key then.
    let out = manage(&[("DJANGO_DEBUG", "1")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
