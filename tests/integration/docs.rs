//! The snippets of README.md and docs/*.md, run: a user copies them, so
//! each must work as shown.
//!
//! The rule, for every fenced block (```` ```info ````) of those files:
//! - a ```` ```toml ```` block is a `cutover.toml`, or sections of one, and
//!   goes through `cutover check -c FILE`. A block without `[app]` or
//!   `[[program]]` (a section shown on its own) gets `[app] command =
//!   ["true"]` added first, since every config needs a program. The check
//!   must find no problem but those about this machine, which is not the
//!   container the docs describe: a file, directory or user the snippet
//!   names and this machine lacks ([`MACHINE`]). Variables the snippet names
//!   with `*_env = "NAME"` are set for the check;
//! - in every other block (```` ```sh ````, ```` ```dockerfile ````, plain)
//!   and in inline code (`` `cutover ...` ``) of the prose, a command line
//!   `cutover SUBCOMMAND [--flag ...]` (or `cargo run --release --
//!   SUBCOMMAND ...`), where a command starts (a line's or code span's first
//!   word, after `&&`, `|`, `;`, `RUN`, `$`), must name a subcommand of
//!   `cutover --help` (or a hidden one `cutover SUBCOMMAND --help` knows;
//!   `a|b` names each; `cutover --flag` is checked against `cutover --help`)
//!   and flags its `cutover SUBCOMMAND --help` lists. In inline code only, a
//!   span whose second word is no subcommand is prose quoting a log line
//!   (`cutover died 2 times ...`), not a command; in a block it is an
//!   error. A
//!   `-c FILE` naming a file of this repository passes `cutover check` too,
//!   run from the repository's root as the docs run it;
//! - two marks, each an HTML comment on the line just before a fence:
//!   `<!-- docs-test: partial -->` for a toml section shown with only the
//!   keys the text is about (the check may then also find a `missing key`),
//!   and `<!-- docs-test: skip (why) -->` for a block no check can run (say,
//!   a deployer's file, which only a running `cutover deployer` reads). The
//!   marks are rare and say why.

use std::path::{Path, PathBuf};

use crate::fixture::REPO;
use crate::fixture::prelude::*;

/// The mark that exempts the block after it.
const SKIP: &str = "<!-- docs-test: skip";
/// The mark of a section shown with only some of its keys.
const PARTIAL: &str = "<!-- docs-test: partial";

/// What `cutover check` says about this machine rather than the file.
const MACHINE: &[&str] = &[
    "does not exist",
    "cannot be read",
    "cannot read",
    "No such file or directory",
    "unknown user",
    "unknown group",
];

/// One fenced block: where it starts, its info string and its text.
struct Block {
    at: String,
    info: String,
    text: String,
    skipped: bool,
    partial: bool,
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
                partial: start > 0 && lines[start - 1].trim_start().starts_with(PARTIAL),
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

/// `cutover check -c path` from `cwd` with `env`: the problems it found
/// (its lines after the first), or one line saying how it failed.
fn check(path: &Path, cwd: &Path, env: &[(String, String)]) -> Vec<String> {
    let out = std::process::Command::new(BIN)
        .args(["check", "-c", path.to_str().unwrap()])
        .current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Vec::new(),
        Some(78) => {
            let problems: Vec<String> = said
                .lines()
                .skip(1)
                .filter(|l| l.starts_with("  "))
                .map(|l| l.trim().to_string())
                .collect();
            if problems.is_empty() {
                vec![format!("exit 78 without a problem listed: {said}")]
            } else {
                problems
            }
        }
        code => vec![format!("exit {code:?}: {said}")],
    }
}

/// The variables `toml` names with `*_env = "NAME"`, set to a dummy value.
fn named_env(toml: &str) -> Vec<(String, String)> {
    toml.lines()
        .filter_map(|l| {
            let l = l.trim_start().trim_start_matches('#').trim_start();
            let (key, value) = l.split_once('=')?;
            key.trim().ends_with("_env").then_some(())?;
            let name = value.trim().strip_prefix('"')?.split('"').next()?;
            Some((name.to_string(), "docs-test".to_string()))
        })
        .collect()
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
        let path = ConfigToml::new()
            .raw(&toml)
            .write_to(&dir.join(&format!("snippet-{n}.toml")));
        for problem in check(&path, dir.path(), &named_env(&toml)) {
            let machine = MACHINE.iter().any(|m| problem.contains(m));
            let partial = b.partial && problem.contains("missing key");
            if !(machine || partial) {
                problems.push(format!("{}: {problem}", b.at));
            }
        }
    }
    eprintln!("docs: {checked} toml snippets checked");
    assert!(checked >= 9, "the toml snippets were found: {checked}");
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

/// Words after which a command starts.
const COMMAND_STARTS: &[&str] = &[
    "&&", "||", "|", ";", "RUN", "$", "exec", "sudo", "then", "do",
];

/// The `cutover ...` command lines in `text`, where a command starts (see
/// the rule above): each as its words from the subcommand on, up to a shell
/// operator or a comment.
fn command_lines(text: &str) -> Vec<Vec<String>> {
    let text = text
        .replace("cargo run --release --", "cutover")
        .replace('`', "\n");
    let mut lines = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            if *w != "cutover" || (i > 0 && !COMMAND_STARTS.contains(&words[i - 1])) {
                continue;
            }
            let Some(sub) = words.get(i + 1) else {
                continue;
            };
            let mut line = vec![sub.to_string()];
            for w in &words[i + 2..] {
                if COMMAND_STARTS.contains(w) || w.starts_with('#') || *w == "\\" {
                    break;
                }
                line.push(w.to_string());
            }
            lines.push(line);
        }
    }
    lines
}

#[test]
fn every_command_line_names_real_subcommands_and_flags() {
    let dir = TestDir::new();
    let subs = subcommands(&dir);
    let (blocks, prose) = all_blocks();
    let mut texts: Vec<(String, String, bool)> = blocks
        .iter()
        .filter(|b| b.info != "toml" && !b.skipped)
        .map(|b| (b.at.clone(), b.text.clone(), false))
        .collect();
    // Inline code in the prose: one `...` span at a time.
    for (at, line) in prose {
        for (k, span) in line.split('`').enumerate() {
            if k % 2 == 1 {
                texts.push((at.clone(), span.to_string(), true));
            }
        }
    }
    let mut problems = Vec::new();
    let (mut commands, mut configs) = (0, 0);
    let (_, top_help, _) = run_cutover(&dir, &["--help"]);
    for (at, text, inline) in &texts {
        for line in command_lines(text) {
            // `cutover --version`: a flag of cutover itself.
            let (subs_named, flags_from): (Vec<&str>, usize) = if line[0].starts_with('-') {
                (vec![""], 0)
            } else {
                (line[0].split('|').collect(), 1)
            };
            for sub in subs_named {
                let help = if sub.is_empty() {
                    top_help.clone()
                } else {
                    let (code, help, _) = run_cutover(&dir, &[sub, "--help"]);
                    if !subs.iter().any(|s| s == sub) && code != 0 {
                        if !inline {
                            problems.push(format!(
                                "{at}: `cutover {sub}` is no subcommand of {subs:?}"
                            ));
                        }
                        continue;
                    }
                    help
                };
                commands += 1;
                for (k, word) in line.iter().enumerate().skip(flags_from) {
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
                            for problem in check(&path, Path::new(REPO), &[]) {
                                problems.push(format!("{at}: {file}: {problem}"));
                            }
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
