//! 3,000 idle connections on cutover's HTTP endpoint (a port often open to
//! the internet) stop nothing: the program keeps serving, the control socket
//! answers, a deploy goes through (its old instance reaped) and no zombie is
//! left. The connection cap closes what it cannot hold at once, the header
//! timeout frees the rest.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::fixture::git::Repo;
use crate::fixture::prelude::*;

#[test]
fn three_thousand_idle_connections_stop_no_program_reaper_or_deploy() {
    let dir = TestDir::new();
    let repo = Repo::new(&dir);
    repo.release("v1");
    let (port, http) = (free_port(), free_port());
    let remote = repo.remote.display().to_string();
    let extra = format!("[control]\nhttp = \"127.0.0.1:{http}\"\n");
    let toml = ConfigToml::deploying(port, &remote, &dir.join("srv"), "")
        .raw(&extra)
        .to_string();
    let cfg = dir.write("cutover.toml", &toml);
    let c = Cutover::start(Mode::Subreaper, &dir, &["run", "-c", cfg.to_str().unwrap()]);
    wait_for(SECS_20, || {
        (served_version(port).ok()? == "v1").then_some(())
    })
    .unwrap_or_else(|| panic!("never served v1\n{}", c.stderr()));
    wait_for_control(&dir);

    let addr = SocketAddr::from(([127, 0, 0, 1], http));
    let started = Instant::now();
    let mut idle = Vec::new();
    while idle.len() < 3_000 && started.elapsed() < Duration::from_secs(60) {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            idle.push(s);
        }
    }
    assert_eq!(idle.len(), 3_000, "could not open the connections in time");

    assert_eq!(served_version(port).unwrap(), "v1");
    let (code, _, err) = client(&dir, &["status"]);
    assert_eq!(code, 0, "control socket: {err}");
    repo.release("v2");
    wait_for(Duration::from_secs(30), || {
        (served_version(port).ok()? == "v2").then_some(())
    })
    .unwrap_or_else(|| panic!("the deploy did not go through\n{}", c.stderr()));
    let zombies: Vec<_> = c
        .descendants()
        .into_iter()
        .filter(|p| p.state == 'Z')
        .collect();
    assert!(zombies.is_empty(), "{zombies:?}");
    assert!(
        c.stderr().lines().filter(|l| l.contains("accept")).count() < 50,
        "accept errors were logged every turn\n{}",
        c.stderr()
    );
    drop(idle);
    // Once the flood is gone the endpoint serves again.
    wait_for(SECS_20, || http_get(http, "/healthz").ok())
        .unwrap_or_else(|| panic!("/healthz never came back\n{}", c.stderr()));
}
