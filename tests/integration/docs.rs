//! The snippets of README.md and docs/*.md, run: a user copies them, so
//! each must work as shown.
//!
//! The rule, for every fenced block (```` ```info ````) of those files:
//! - a ```` ```toml ```` block is a `cutover.toml`, or sections of one, and
//!   must pass `cutover check -c FILE`. A block without `[app]` or
//!   `[[program]]` (a section shown on its own) gets `[app] command =
//!   ["true"]` added first, since every config needs a program;
//! - in every other block (```` ```sh ````, ```` ```dockerfile ````, plain)
//!   and in inline code (`` `cutover ...` ``) of the prose, a command line
//!   `cutover SUBCOMMAND [--flag ...]` (or `cargo run --release --
//!   SUBCOMMAND ...`) must name a subcommand of `cutover --help` and flags
//!   its `cutover SUBCOMMAND --help` lists; a `-c FILE` naming a file of
//!   this repository must pass `cutover check` too;
//! - a block that is deliberately partial or not cutover's (output shown,
//!   a config with placeholders no check can pass) is marked by an HTML
//!   comment on the line just before its fence:
//!   `<!-- docs-test: skip (why) -->`. The mark is rare and says why.

use std::path::{Path, PathBuf};

use crate::fixture::REPO;
use crate::fixture::prelude::*;

/// The mark that exempts the block after it.
const SKIP: &str = "<!-- docs-test: skip";

/// One fenced block: where it starts, its info string and its text.
struct Block {
    at: String,
    info: String,
    text: String,
    skipped: bool,
}

/// README.md and docs/*.md, sorted.
fn doc_files() -> Vec<PathBuf> {
    let mut files = vec![Path::new(REPO).join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(Path::new(REPO).join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(REPO).unwrap().display().to_string()
}

/// The fenced blocks of `path`, and its prose (every line outside them).
fn blocks(path: &Path) -> (Vec<Block>, Vec<(String, String)>) {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (mut blocks, mut prose) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < lines.len() {
        let at = format!("{}:{}", relative(path), i + 1);
        if let Some(info) = lines[i].trim_start().strip_prefix("```") {
            let start = i;
            i += 1;
            let mut body = String::new();
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                body.push_str(lines[i]);
                body.push('\n');
                i += 1;
            }
            assert!(i < lines.len(), "{at}: a fence never closed");
            blocks.push(Block {
                at,
                info: info.trim().to_string(),
                text: body,
                skipped: start > 0 && lines[start - 1].trim_start().starts_with(SKIP),
            });
        } else {
            prose.push((at, lines[i].to_string()));
        }
        i += 1;
    }
    (blocks, prose)
}

/// Every block of every doc file.
fn all_blocks() -> (Vec<Block>, Vec<(String, String)>) {
    let (mut all, mut prose) = (Vec::new(), Vec::new());
    for f in doc_files() {
        let (b, p) = blocks(&f);
        all.extend(b);
        prose.extend(p);
    }
    (all, prose)
}

/// `cutover check -c FILE` on `toml`: None if it passes, or what it said.
fn check(dir: &TestDir, name: &str, toml: &str) -> Option<String> {
    let path = ConfigToml::new().raw(toml).write_to(&dir.join(name));
    check_file(dir, &path)
}

fn check_file(dir: &TestDir, path: &Path) -> Option<String> {
    let (code, out, err) = run_cutover(dir, &["check", "-c", path.to_str().unwrap()]);
    (code != 0).then(|| format!("exit {code}\n{out}{err}"))
}

#[test]
fn every_toml_snippet_passes_cutover_check() {
    let dir = TestDir::new();
    let (blocks, _) = all_blocks();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (n, b) in blocks.iter().enumerate() {
        if b.info != "toml" || b.skipped {
            continue;
        }
        let has_program = b.text.lines().any(|l| {
            l.trim_start().starts_with("[app]") || l.trim_start().starts_with("[[program]]")
        });
        let toml = if has_program {
            b.text.clone()
        } else {
            format!("{}[app]\ncommand = [\"true\"]\n", b.text)
        };
        checked += 1;
        if let Some(said) = check(&dir, &format!("snippet-{n}.toml"), &toml) {
            problems.push(format!("{}: {said}", b.at));
        }
    }
    eprintln!("docs: {checked} toml snippets checked");
    assert!(checked >= 10, "the toml snippets were found: {checked}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The subcommands `cutover --help` lists.
fn subcommands(dir: &TestDir) -> Vec<String> {
    let (code, out, err) = run_cutover(dir, &["--help"]);
    assert_eq!(code, 0, "{err}");
    out.split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The `cutover ...` command lines in `text`: each as its words from the
/// subcommand on, up to a shell operator or comment.
fn command_lines(text: &str) -> Vec<Vec<String>> {
    let text = text.replace("cargo run --release --", "cutover");
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == '`')
        .collect();
    let mut lines = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if *w != "cutover" {
            continue;
        }
        let Some(sub) = words.get(i + 1) else {
            continue;
        };
        if sub.is_empty() || !sub.chars().all(|c| c.is_ascii_lowercase()) {
            continue;
        }
        let mut line = vec![sub.to_string()];
        for w in &words[i + 2..] {
            if w.is_empty() || ["|", "&&", ";", "#", "\\", "||"].contains(w) || w.starts_with('#') {
                break;
            }
            line.push(w.to_string());
        }
        lines.push(line);
    }
    lines
}

#[test]
fn every_command_line_names_real_subcommands_and_flags() {
    let dir = TestDir::new();
    let subs = subcommands(&dir);
    let (blocks, prose) = all_blocks();
    let mut texts: Vec<(String, String)> = blocks
        .iter()
        .filter(|b| b.info != "toml" && !b.skipped)
        .map(|b| (b.at.clone(), b.text.clone()))
        .collect();
    // Inline code in the prose: one `...` span at a time.
    for (at, line) in prose {
        for (k, span) in line.split('`').enumerate() {
            if k % 2 == 1 {
                texts.push((at.clone(), span.to_string()));
            }
        }
    }
    let mut problems = Vec::new();
    let (mut commands, mut configs) = (0, 0);
    for (at, text) in &texts {
        for line in command_lines(text) {
            let sub = &line[0];
            if !subs.contains(sub) {
                // Prose like "cutover reads ..." in a code span is no command.
                if text.trim_start().starts_with("cutover ") || text.contains('\n') {
                    problems.push(format!(
                        "{at}: `cutover {sub}` is no subcommand of {subs:?}"
                    ));
                }
                continue;
            }
            commands += 1;
            let (_, help, _) = run_cutover(&dir, &[sub, "--help"]);
            for (k, word) in line.iter().enumerate().skip(1) {
                let flag = word.trim_matches(|c| c == '[' || c == ']' || c == ',' || c == '.');
                let flag = flag.split('=').next().unwrap();
                let is_flag = flag.len() > 1
                    && flag.starts_with('-')
                    && flag[1..]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-');
                if is_flag && !help.contains(flag) {
                    problems.push(format!("{at}: `cutover {sub}` has no {flag}"));
                }
                if ["-c", "--config"].contains(&flag) {
                    let Some(file) = line.get(k + 1) else {
                        continue;
                    };
                    let path = Path::new(REPO).join(file);
                    if path.is_file() {
                        configs += 1;
                        if let Some(said) = check_file(&dir, &path) {
                            problems.push(format!("{at}: {file}: {said}"));
                        }
                    }
                }
            }
        }
    }
    eprintln!("docs: {commands} command lines checked, {configs} config files they name");
    assert!(commands >= 10, "the command lines were found: {commands}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
