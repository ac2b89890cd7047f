//! Renders the status model for people and scrapers: the text of `cutover
//! status` and the Prometheus exposition of /metrics. Knows the model only.

use std::fmt::Write;

use crate::status::{ProgramState, ProgramStatus, Status};

impl Status {
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "cutover {} (pid {}), {}, up {}",
            self.version,
            self.pid,
            serde_json::to_value(self.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            humantime::format_duration(std::time::Duration::from_secs(self.uptime_seconds as u64))
        );
        for p in &self.programs {
            let pid = p.pid.map_or("-".to_string(), |p| p.to_string());
            let _ = writeln!(
                out,
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
                let _ = writeln!(out, "  {:<12} release {r}", "");
            }
            if let Some(e) = &p.last_exit {
                let _ = writeln!(out, "  {:<12} last exit: {e}", "");
            }
        }
        let r = &self.reload;
        let _ = writeln!(
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
            let _ = writeln!(
                out,
                "source: {} ({}) -> {}",
                src.repo, src.git_ref, src.root
            );
            let _ = writeln!(
                out,
                "  current {}  previous {}",
                src.current.as_ref().map_or("-", |s| s.as_str()),
                src.previous.as_ref().map_or("-", |s| s.as_str())
            );
            if !src.bad.is_empty() {
                let _ = writeln!(
                    out,
                    "  rolled back (not deployed again): {}",
                    src.bad
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let deps = &src.dependencies;
            let _ = writeln!(
                out,
                "  dependencies: baseline {} ({}), current {}",
                deps.baseline.as_deref().unwrap_or("none yet"),
                deps.baseline_file,
                deps.current.as_deref().unwrap_or("-")
            );
            if let Some(r) = &deps.redeploy_required {
                let _ = writeln!(
                    out,
                    "  redeploy-required {}: changed {}",
                    r.sha,
                    r.changed_files.join(", ")
                );
                let i = &src.redeploy;
                let _ = writeln!(
                    out,
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
            if let Some(d) = &src.deploying {
                let _ = writeln!(out, "  in progress: {}", d.describe());
            }
            if let Some(e) = &src.last_error {
                let retry = src
                    .retry_in_seconds
                    .map(|s| format!("; retrying in {s:.0} s"))
                    .unwrap_or_default();
                let _ = writeln!(out, "  last error: {e}{retry}");
            }
            for h in src.history.iter().rev().take(5) {
                let _ = writeln!(
                    out,
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
        if let Some(last) = &r.last {
            let _ = writeln!(
                out,
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
        out
    }

    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            let _ = writeln!(
                out,
                "# HELP cutover_{name} {help}\n# TYPE cutover_{name} {kind}"
            );
            for (labels, value) in samples {
                let _ = writeln!(out, "cutover_{name}{labels} {value}");
            }
        };
        let per_program = |f: &dyn Fn(&ProgramStatus) -> f64| {
            self.programs
                .iter()
                .map(|p| (format!("{{program=\"{}\"}}", p.name), f(p)))
                .collect::<Vec<_>>()
        };
        metric(
            "uptime_seconds",
            "gauge",
            "Seconds since cutover started.",
            vec![(String::new(), self.uptime_seconds)],
        );
        metric(
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
        metric(
            "program_restarts_total",
            "counter",
            "Restarts after the program ended by itself.",
            per_program(&|p| p.restarts as f64),
        );
        metric(
            "program_reloads_total",
            "counter",
            "Reloads of the program.",
            per_program(&|p| p.reloads as f64),
        );
        metric(
            "program_reload_failures_total",
            "counter",
            "Failed reloads of the program.",
            per_program(&|p| p.reload_failures as f64),
        );
        metric(
            "reload_triggers_total",
            "counter",
            "Reload triggers received.",
            vec![(String::new(), self.reload.triggers as f64)],
        );
        metric(
            "reloads_total",
            "counter",
            "Reloads run.",
            vec![(String::new(), self.reload.reloads as f64)],
        );
        metric(
            "reload_failures_total",
            "counter",
            "Reloads that failed.",
            vec![(String::new(), self.reload.failures as f64)],
        );
        if let Some(last) = &self.reload.last {
            metric(
                "last_reload_duration_seconds",
                "gauge",
                "Duration of the last reload.",
                vec![(String::new(), last.duration_ms / 1000.0)],
            );
            metric(
                "last_reload_ok",
                "gauge",
                "1 when the last reload succeeded.",
                vec![(String::new(), f64::from(u8::from(last.ok)))],
            );
        }
        out
    }
}
