//! When to start a program again after it ended on its own.
//!
//! Pure bookkeeping (no clocks read here, the caller passes `now`) so the
//! policy is unit-tested without sleeping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::{Backoff, RestartPolicy};
use crate::process::exit::ExitStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The program is done; pass its status on.
    Finish,
    /// Too many failures too quickly: stop trying.
    GiveUp { failures: u32, window: Duration },
    /// Start again after this delay.
    RestartAfter(Duration),
}

#[derive(Debug)]
pub struct RestartTracker {
    policy: RestartPolicy,
    backoff: Backoff,
    /// Consecutive short runs; sets the next delay.
    streak: u32,
    failures: VecDeque<Instant>,
}

impl RestartTracker {
    pub fn new(policy: RestartPolicy, backoff: Backoff) -> Self {
        RestartTracker {
            policy,
            backoff,
            streak: 0,
            failures: VecDeque::new(),
        }
    }

    /// Decides what follows an exit after `uptime` of running.
    pub fn on_exit(&mut self, status: ExitStatus, uptime: Duration, now: Instant) -> Decision {
        let restart = match self.policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !status.success(),
            RestartPolicy::Always => true,
        };
        if !restart {
            return Decision::Finish;
        }
        if uptime >= self.backoff.reset_after {
            // It ran long enough to count as healthy: start over.
            self.streak = 0;
            self.failures.clear();
        }
        if !status.success() {
            self.failures.push_back(now);
            while let Some(&first) = self.failures.front() {
                if now.duration_since(first) > self.backoff.window {
                    self.failures.pop_front();
                } else {
                    break;
                }
            }
            if self.failures.len() as u32 >= self.backoff.limit {
                return Decision::GiveUp {
                    failures: self.failures.len() as u32,
                    window: self.backoff.window,
                };
            }
        }
        let delay = self
            .backoff
            .initial
            .saturating_mul(1u32 << self.streak.min(20))
            .min(self.backoff.max);
        self.streak += 1;
        Decision::RestartAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAIL: ExitStatus = ExitStatus::Exited(1);
    const SHORT: Duration = Duration::from_millis(50);

    fn tracker(policy: RestartPolicy) -> RestartTracker {
        RestartTracker::new(policy, Backoff::default())
    }

    #[test]
    fn never_finishes_and_on_failure_stops_on_success() {
        let now = Instant::now();
        assert_eq!(
            tracker(RestartPolicy::Never).on_exit(FAIL, SHORT, now),
            Decision::Finish
        );
        let mut t = tracker(RestartPolicy::OnFailure);
        assert_eq!(
            t.on_exit(ExitStatus::Exited(0), SHORT, now),
            Decision::Finish
        );
        assert!(matches!(
            t.on_exit(FAIL, SHORT, now),
            Decision::RestartAfter(_)
        ));
    }

    #[test]
    fn delay_doubles_and_gives_up_on_the_fifth_failure() {
        let mut t = tracker(RestartPolicy::OnFailure);
        let start = Instant::now();
        let delays: Vec<_> = (0..4)
            .map(|i| t.on_exit(FAIL, SHORT, start + Duration::from_secs(i)))
            .collect();
        let ms = |m| Decision::RestartAfter(Duration::from_millis(m));
        assert_eq!(delays, vec![ms(100), ms(200), ms(400), ms(800)]);
        assert_eq!(
            t.on_exit(FAIL, SHORT, start + Duration::from_secs(5)),
            Decision::GiveUp {
                failures: 5,
                window: Duration::from_secs(60)
            }
        );
    }

    #[test]
    fn delay_caps_at_max_and_old_failures_leave_the_window() {
        let mut t = tracker(RestartPolicy::Always);
        let start = Instant::now();
        let mut last = Decision::Finish;
        for i in 0..12 {
            // One failure every 20 s: never 5 within 60 s.
            last = t.on_exit(FAIL, SHORT, start + Duration::from_secs(20 * i));
        }
        assert_eq!(last, Decision::RestartAfter(Duration::from_secs(30)));
    }

    #[test]
    fn a_long_run_resets_the_backoff() {
        let mut t = tracker(RestartPolicy::Always);
        let now = Instant::now();
        t.on_exit(FAIL, SHORT, now);
        t.on_exit(FAIL, SHORT, now);
        assert_eq!(
            t.on_exit(FAIL, Duration::from_secs(11), now),
            Decision::RestartAfter(Duration::from_millis(100))
        );
        // A clean exit under `always` restarts but is no failure.
        assert!(matches!(
            t.on_exit(ExitStatus::Exited(0), SHORT, now),
            Decision::RestartAfter(_)
        ));
    }
}
