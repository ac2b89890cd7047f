//! Validation of the sections around the programs: `[reload]`, `[ready]`,
//! `[[listen]]` and `[control]`. Same rules as for programs: every problem
//! is recorded with its key path, nothing stops at the first.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::problems::{Problems, Segment};
use super::raw::{RawControl, RawListen, RawReady, RawReload};
use super::values::{child, parse_duration};
use super::{
    ControlConfig, HttpTarget, ListenAddress, ListenConfig, ReadyConfig, ReloadConfig,
    ReloadStrategy,
};
use crate::process::signals::parse_signal;

pub(super) fn reload(raw: Option<RawReload>, p: &mut Problems) -> (ReloadConfig, ReloadStrategy) {
    let raw = raw.unwrap_or_default();
    let path = [Segment::Key("reload".into())];
    let mut config = ReloadConfig::default();
    for (i, t) in raw.touch.unwrap_or_default().into_iter().enumerate() {
        let at = [child(&path, "touch"), vec![Segment::Index(i)]].concat();
        // Relative to where cutover starts, made absolute once: the watcher
        // compares the paths inotify reports with these.
        let file = std::path::absolute(&t).unwrap_or_else(|_| PathBuf::from(&t));
        match file.parent() {
            _ if t.is_empty() || t.ends_with('/') || file.file_name().is_none() => {
                p.add(&at, format!("`{t}` names no file"))
            }
            Some(dir) if !dir.is_dir() => p.add(
                &at,
                format!(
                    "directory `{}` does not exist; cutover watches it for the touch file",
                    dir.display()
                ),
            ),
            _ => config.touch.push(file),
        }
    }
    for (i, pattern) in raw.watch.unwrap_or_default().into_iter().enumerate() {
        let at = [child(&path, "watch"), vec![Segment::Index(i)]].concat();
        match globset::Glob::new(&pattern) {
            Ok(_) => config.watch.push(pattern),
            Err(e) => p.add(&at, format!("invalid pattern: {e}")),
        }
    }
    config.watch_root = raw.watch_root.map(PathBuf::from);
    if let Some(root) = &config.watch_root
        && !root.is_dir()
    {
        p.add(
            &child(&path, "watch_root"),
            format!("directory `{}` does not exist", root.display()),
        );
    }
    if let Some(d) = raw.debounce {
        config.debounce = p
            .check(&child(&path, "debounce"), parse_duration(&d))
            .unwrap_or(config.debounce);
    }
    if let Some(d) = raw.drain {
        config.drain = p
            .check(&child(&path, "drain"), parse_duration(&d))
            .unwrap_or(config.drain);
    }
    let strategy = strategy(&path, raw.strategy, raw.signal, None, p);
    (config, strategy)
}

/// `strategy` + `signal`, falling back to `default` (the `[reload]` one).
pub(super) fn strategy(
    path: &[Segment],
    name: Option<String>,
    signal: Option<String>,
    default: Option<ReloadStrategy>,
    p: &mut Problems,
) -> ReloadStrategy {
    let (strategy_key, signal_key) = if default.is_some() {
        ("reload_strategy", "reload_signal")
    } else {
        ("strategy", "signal")
    };
    let signal = signal.and_then(|s| p.check(&child(path, signal_key), parse_signal(&s)));
    let inherited_signal = match default {
        Some(ReloadStrategy::Signal(s)) => s,
        _ => nix::sys::signal::Signal::SIGHUP,
    };
    match name.as_deref() {
        None => match (default, signal) {
            (Some(ReloadStrategy::Signal(_)) | None, Some(s)) => ReloadStrategy::Signal(s),
            (Some(d), _) => d,
            (None, None) => ReloadStrategy::Restart,
        },
        Some("signal") => ReloadStrategy::Signal(signal.unwrap_or(inherited_signal)),
        Some("restart") => ReloadStrategy::Restart,
        Some("overlap") => ReloadStrategy::Overlap,
        Some("none") => ReloadStrategy::None,
        Some(other) => {
            p.add(
                &child(path, strategy_key),
                format!("unknown strategy `{other}`; expected signal, restart, overlap or none"),
            );
            ReloadStrategy::Restart
        }
    }
}

pub(super) fn ready(path: &[Segment], raw: RawReady, p: &mut Problems) -> ReadyConfig {
    let mut config = ReadyConfig {
        notify: raw.notify.unwrap_or(false),
        ..ReadyConfig::default()
    };
    if let Some(url) = raw.http {
        config.http = p.check(&child(path, "http"), HttpTarget::parse(&url));
    }
    if let Some(addr) = raw.tcp {
        let at = child(path, "tcp");
        match addr.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(_)) => config.tcp = Some(addr),
            _ => p.add(&at, format!("`{addr}` is not a host:port address")),
        }
    }
    match raw.command {
        Some(c) if c.first().is_none_or(|s| s.trim().is_empty()) => {
            p.add(&child(path, "command"), "empty command")
        }
        c => config.command = c,
    }
    let mut duration = |key: &str, value: Option<String>, default: Duration| {
        value
            .and_then(|v| p.check(&child(path, key), parse_duration(&v)))
            .unwrap_or(default)
    };
    config.timeout = duration("timeout", raw.timeout, config.timeout);
    config.interval = duration("interval", raw.interval, config.interval);
    // Unset, it depends on the sockets, known once they are bound (ready.rs).
    config.grace = raw
        .grace
        .and_then(|v| p.check(&child(path, "grace"), parse_duration(&v)));
    config
}

pub(super) fn listen(
    raw: Vec<RawListen>,
    programs: &[String],
    p: &mut Problems,
) -> Vec<ListenConfig> {
    let mut out: Vec<ListenConfig> = Vec::new();
    for (i, l) in raw.into_iter().enumerate() {
        if let Some(socket) = listen_socket(i, l, &out, programs, p) {
            out.push(socket);
        }
    }
    out
}

/// The `i`th `[[listen]]`, after the `earlier` ones; `None` when it has no
/// usable address (its other problems are still reported).
fn listen_socket(
    i: usize,
    l: RawListen,
    earlier: &[ListenConfig],
    programs: &[String],
    p: &mut Problems,
) -> Option<ListenConfig> {
    let path = [Segment::Key("listen".into()), Segment::Index(i)];
    let named = l.name.is_some();
    let name = l.name.unwrap_or_else(|| format!("listen{i}"));
    if name.is_empty() || name.contains(':') || name.len() > 255 {
        p.add(
            &child(&path, "name"),
            "names are 1-255 characters without `:`",
        );
    } else if earlier.iter().any(|o| o.name == name) {
        p.add(
            &child(&path, "name"),
            format!("another socket is already named `{name}`"),
        );
    }
    let address = listen_address(&path, l.address, l.from, named, p)?;
    let reuse_port = l.reuse_port.unwrap_or(false);
    if reuse_port && !matches!(address, ListenAddress::Tcp(_)) {
        p.add(
            &child(&path, "reuse_port"),
            "only for TCP addresses (a unix socket path is bound by one process)",
        );
    }
    if let Some(targets) = &l.programs {
        for (j, t) in targets.iter().enumerate() {
            if !programs.contains(t) {
                let at = [child(&path, "programs"), vec![Segment::Index(j)]].concat();
                p.add(&at, format!("no program is named `{t}`"));
            }
        }
    }
    let receivers = l.programs.as_ref().map_or(programs.len(), Vec::len);
    let per_instance = match (
        l.per_instance,
        per_instance_obstacle(&address, reuse_port, receivers),
    ) {
        (Some(true), Some(why)) => {
            p.add(&child(&path, "per_instance"), why);
            false
        }
        (Some(wanted), _) => wanted,
        (None, obstacle) => obstacle.is_none(),
    };
    Some(ListenConfig {
        name,
        address,
        backlog: l.backlog.unwrap_or(1024),
        reuse_port,
        programs: l.programs,
        per_instance,
    })
}

/// `address` (cutover binds it) or `from` (a holder's socket, taken by
/// name), exactly one of them.
fn listen_address(
    path: &[Segment],
    address: Option<String>,
    from: Option<String>,
    named: bool,
    p: &mut Problems,
) -> Option<ListenAddress> {
    match (address, from) {
        (Some(_), Some(_)) => {
            p.add(
                &child(path, "from"),
                "either `address` (cutover binds it) or `from` (a holder's socket), not both",
            );
            None
        }
        (None, Some(from)) => {
            let holder = from.strip_prefix("unix:").unwrap_or(&from);
            if !holder.starts_with('/') {
                p.add(
                    &child(path, "from"),
                    format!(
                        "`{from}` is not the holder's socket; write \"unix:/run/cutover/sockets\""
                    ),
                );
                return None;
            }
            if !named {
                p.add(
                    path,
                    "missing key `name`: the name of the holder's socket to take",
                );
            }
            Some(ListenAddress::Holder(PathBuf::from(holder)))
        }
        (None, None) => {
            p.add(path, "missing key `address` (\"127.0.0.1:8000\", \"[::1]:8000\" or \"unix:/run/app.sock\") or `from` (\"unix:/run/cutover/sockets\", a holder's)");
            None
        }
        (Some(a), None) => match parse_listen_address(&a) {
            Ok(addr) => Some(addr),
            Err(e) => {
                p.add(&child(path, "address"), e);
                None
            }
        },
    }
}

/// Why a socket cannot be one per instance, if it cannot.
fn per_instance_obstacle(
    address: &ListenAddress,
    reuse_port: bool,
    receivers: usize,
) -> Option<String> {
    if matches!(address, ListenAddress::Unix(_)) {
        Some("only for TCP addresses (a unix socket path is bound by one socket)".into())
    } else if reuse_port {
        Some(
            "not with `reuse_port`: another process's sockets would join the group cutover steers"
                .into(),
        )
    } else if receivers != 1 {
        Some(format!(
            "the socket goes to {receivers} programs; name the one that serves it with `programs = [\"web\"]`"
        ))
    } else {
        None
    }
}

fn parse_listen_address(text: &str) -> Result<ListenAddress, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        return Ok(ListenAddress::Unix(PathBuf::from(path)));
    }
    if text.starts_with('/') {
        return Ok(ListenAddress::Unix(PathBuf::from(text)));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(ListenAddress::Tcp(addr));
    }
    match text.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => Ok(ListenAddress::Tcp(addr)),
        _ => Err(format!(
            "`{text}` is not an address; write \"0.0.0.0:8000\", \"[::1]:8000\" or \"unix:/run/app.sock\""
        )),
    }
}

pub(super) fn control(raw: Option<RawControl>, p: &mut Problems) -> ControlConfig {
    let mut config = ControlConfig::default();
    let Some(raw) = raw else { return config };
    if let Some(socket) = raw.socket {
        config.socket = PathBuf::from(socket);
    }
    if let Some(http) = raw.http {
        let at = [Segment::Key("control".into()), Segment::Key("http".into())];
        match http.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => config.http = Some(addr),
            _ => p.add(&at, format!("`{http}` is not a host:port address")),
        }
    }
    config
}
