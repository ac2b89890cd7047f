//! Renders the status model for people and scrapers: the text of `cutover
//! status` and the Prometheus exposition of /metrics. Knows the model only.

use std::fmt::Write;

use crate::redact::escape_controls;

use crate::source::{ImageState, SourceStatus};
use crate::status::{ProgramState, ProgramStatus, ReloadRecord, Status};

/// `writeln!` for the text of `cutover status`, with control characters
/// escaped: file names, errors and log tails come from commits and programs,
/// and an ESC sequence in them must not reach the operator's terminal.
macro_rules! emit {
    ($out:expr, $($arg:tt)*) => {
        push_line(&mut $out, &format!($($arg)*))
    };
}

fn push_line(out: &mut String, line: &str) {
    out.push_str(&escape_controls(line));
    out.push('\n');
}

impl Status {
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        self.header_line(&mut out);
        for p in &self.programs {
            program_lines(&mut out, p);
        }
        let r = &self.reload;
        emit!(
            out,
            "reloads: {} done, {} failed, {} triggers{}{}",
            r.reloads,
            r.failures,
            r.triggers,
            if r.in_progress {
                ", one in progress"
            } else {
                ""
            },
            if r.pending { ", one pending" } else { "" }
        );
        if let Some(src) = &self.source {
            source_lines(&mut out, src);
        }
        if let Some(last) = &r.last {
            last_reload_line(&mut out, last);
        }
        out
    }

    fn header_line(&self, out: &mut String) {
        emit!(
            *out,
            "cutover {} (pid {}), {}, up {}",
            self.version,
            self.pid,
            serde_json::to_value(self.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            humantime::format_duration(std::time::Duration::from_secs(self.uptime_seconds as u64))
        );
    }

    pub fn render_prometheus(&self) -> String {
        let mut exposition = Exposition::default();
        exposition.metric(
            "uptime_seconds",
            "gauge",
            "Seconds since cutover started.",
            vec![(String::new(), self.uptime_seconds)],
        );
        self.program_metrics(&mut exposition);
        self.reload_metrics(&mut exposition);
        exposition.out
    }

    fn program_metrics(&self, exposition: &mut Exposition) {
        let per_program = |f: &dyn Fn(&ProgramStatus) -> f64| {
            self.programs
                .iter()
                .map(|p| (format!("{{program=\"{}\"}}", p.name), f(p)))
                .collect::<Vec<_>>()
        };
        exposition.metric(
            "program_up",
            "gauge",
            "1 when the program has a ready instance.",
            per_program(&|p| {
                f64::from(u8::from(matches!(
                    p.state,
                    ProgramState::Running | ProgramState::Reloading
                )))
            }),
        );
        exposition.metric(
            "program_restarts_total",
            "counter",
            "Restarts after the program ended by itself.",
            per_program(&|p| p.restarts as f64),
        );
        exposition.metric(
            "program_reloads_total",
            "counter",
            "Reloads of the program.",
            per_program(&|p| p.reloads as f64),
        );
        exposition.metric(
            "program_reload_failures_total",
            "counter",
            "Failed reloads of the program.",
            per_program(&|p| p.reload_failures as f64),
        );
    }

    fn reload_metrics(&self, exposition: &mut Exposition) {
        exposition.metric(
            "reload_triggers_total",
            "counter",
            "Reload triggers received.",
            vec![(String::new(), self.reload.triggers as f64)],
        );
        exposition.metric(
            "reloads_total",
            "counter",
            "Reloads run.",
            vec![(String::new(), self.reload.reloads as f64)],
        );
        exposition.metric(
            "reload_failures_total",
            "counter",
            "Reloads that failed.",
            vec![(String::new(), self.reload.failures as f64)],
        );
        if let Some(last) = &self.reload.last {
            exposition.metric(
                "last_reload_duration_seconds",
                "gauge",
                "Duration of the last reload.",
                vec![(String::new(), last.duration_ms / 1000.0)],
            );
            exposition.metric(
                "last_reload_ok",
                "gauge",
                "1 when the last reload succeeded.",
                vec![(String::new(), f64::from(u8::from(last.ok)))],
            );
        }
    }
}

/// The Prometheus text being written: one HELP/TYPE header per metric, then
/// its samples.
#[derive(Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    fn metric(&mut self, name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>) {
        let _ = writeln!(
            self.out,
            "# HELP cutover_{name} {help}\n# TYPE cutover_{name} {kind}"
        );
        for (labels, value) in samples {
            let _ = writeln!(self.out, "cutover_{name}{labels} {value}");
        }
    }
}

fn program_lines(out: &mut String, p: &ProgramStatus) {
    let pid = p.pid.map_or("-".to_string(), |p| p.to_string());
    emit!(
        *out,
        "  {:<12} {:<11} pid {:<8} strategy {:<8} restarts {} reloads {} failed {}",
        p.name,
        p.state.as_str(),
        pid,
        p.strategy,
        p.restarts,
        p.reloads,
        p.reload_failures
    );
    if let Some(r) = &p.release {
        emit!(*out, "  {:<12} release {r}", "");
    }
    if let Some(e) = &p.last_exit {
        emit!(*out, "  {:<12} last exit: {e}", "");
    }
}

fn source_lines(out: &mut String, src: &SourceStatus) {
    emit!(
        *out,
        "source: {} ({}) -> {}",
        src.repo,
        src.git_ref,
        src.root
    );
    emit!(
        *out,
        "  current {}  previous {}",
        src.current.as_ref().map_or("-", |s| s.as_str()),
        src.previous.as_ref().map_or("-", |s| s.as_str())
    );
    if !src.bad.is_empty() {
        emit!(
            *out,
            "  rolled back (not deployed again): {}",
            src.bad
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    dependency_lines(out, src);
    if let Some(d) = &src.deploying {
        emit!(*out, "  in progress: {}", d.describe());
    }
    if let Some(e) = &src.last_error {
        let retry = src
            .retry_in_seconds
            .map(|s| format!("; retrying in {s:.0} s"))
            .unwrap_or_default();
        emit!(*out, "  last error: {e}{retry}");
    }
    for h in src.history.iter().rev().take(5) {
        emit!(
            *out,
            "  {} {:<11} {} by {} ({:.0} ms){}",
            h.time,
            h.outcome.to_string(),
            h.sha.as_ref().map_or("-", |s| s.short()),
            h.trigger,
            h.duration_ms,
            h.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
}

/// The dependency baseline, and when a commit changed it, what the image
/// redeploy it requires is doing.
fn dependency_lines(out: &mut String, src: &SourceStatus) {
    let deps = &src.dependencies;
    emit!(
        *out,
        "  dependencies: baseline {} ({}), current {}",
        deps.baseline.as_deref().unwrap_or("none yet"),
        deps.baseline_file,
        deps.current.as_deref().unwrap_or("-")
    );
    let Some(r) = &deps.redeploy_required else {
        return;
    };
    emit!(
        *out,
        "  redeploy-required {}: changed {}",
        r.sha,
        r.changed_files.join(", ")
    );
    let i = &src.redeploy;
    if let Some(note) = i
        .last_result
        .as_ref()
        .filter(|_| i.state == ImageState::WaitingForImage)
    {
        emit!(*out, "  redeploy: {note}");
    } else {
        emit!(
            *out,
            "  redeploy: {} after {} attempt(s){}{}",
            i.state,
            i.attempts,
            i.last_result
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
            i.retry_in_seconds
                .map(|s| format!("; retrying in {s:.0} s"))
                .unwrap_or_default()
        );
    }
}

fn last_reload_line(out: &mut String, last: &ReloadRecord) {
    emit!(
        *out,
        "last reload #{}: {} by {} at {}, {:.0} ms{}",
        last.id,
        if last.ok { "ok" } else { "FAILED" },
        last.trigger,
        last.started_at,
        last.duration_ms,
        last.error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("requirements.txt"), "requirements.txt");
        assert_eq!(escape_controls("café/ü.txt"), "café/ü.txt");
        assert_eq!(
            escape_controls("a\u{1b}[31mred\u{1b}[0m.txt"),
            "a\\x1b[31mred\\x1b[0m.txt"
        );
        assert_eq!(escape_controls("x\ny\rz\t"), "x\\ny\\rz\\t");
        assert_eq!(escape_controls("\u{7f}\u{9b}\u{0}"), "\\x7f\\x9b\\x00");
        assert_eq!(escape_controls("ab\u{202e}cd"), "ab\\u{202e}cd");
    }

    #[test]
    fn status_text_lines_carry_no_control_characters() {
        let mut out = String::new();
        emit!(
            out,
            "  last error: {}",
            "boom\u{1b}]0;owned\u{7}\nforged line"
        );
        assert_eq!(out, "  last error: boom\\x1b]0;owned\\x07\\nforged line\n");
    }
}
