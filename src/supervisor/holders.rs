//! The holders this cutover took sockets from, watched: when one goes away
//! (its container recreated or upgraded), wait for it to come back, take
//! its new sockets, give them to the programs and have them reloaded onto
//! them. Supervisor work: it drives the programs and the reload queue.

use std::time::Duration;

use tracing::{info, warn};

use crate::sockets::link::HolderLink;
use crate::sockets::take;

/// Watches the holders sockets were taken from. When one goes away, waits
/// for it to come back, takes its new sockets, gives them to the programs
/// and has them reloaded onto them: cutover itself never restarts.
pub(super) fn keep_taking(
    leases: Vec<(HolderLink, Vec<String>)>,
    configs: Vec<crate::config::ListenConfig>,
    programs: Vec<crate::program::ProgramHandle>,
    queue: crate::reload::ReloadQueue,
) -> Vec<tokio::task::JoinHandle<()>> {
    leases
        .into_iter()
        .map(|(link, names)| {
            let configs = configs.clone();
            let programs = programs.clone();
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut lease = link;
                loop {
                    lease.closed().await;
                    let lost = tokio::time::Instant::now();
                    warn!(holder = %lease.path.display(), instance = %lease.holder.instance, "the socket holder went away: its sockets receive nothing now; waiting for it");
                    let (next, taken) = loop {
                        match take::take(&lease.path, &names, &[], take::WAIT_FOR_HOLDER).await {
                            Ok(taken) => break taken,
                            Err(e) => {
                                warn!(error = %e, "still no socket holder");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    };
                    let sockets: Vec<std::sync::Arc<crate::sockets::held::HeldSocket>> = taken
                        .into_iter()
                        .map(|(offered, fd)| {
                            let programs = configs
                                .iter()
                                .find(|c| c.name == offered.name)
                                .and_then(|c| c.programs.clone());
                            std::sync::Arc::new(crate::sockets::held::HeldSocket::taken(
                                offered.name,
                                fd,
                                programs,
                            ))
                        })
                        .collect();
                    info!(holder = %next.path.display(), instance = %next.holder.instance, after_ms = lost.elapsed().as_millis() as u64, "took the new holder's sockets; reloading onto them");
                    for program in &programs {
                        program.replace_sockets(sockets.clone(), next.clone());
                    }
                    queue.trigger(crate::reload::trigger::Trigger::HolderReplaced);
                    lease = next;
                }
            })
        })
        .collect()
}
