//! The outlier-detection machine of one worker: Closed, Ejected until an
//! instant, HalfOpen with a count of successful trials.

use std::time::Duration;

use super::backoff::{decayed, ejection_time, with_jitter, MAX_EXPONENT};
use super::policy::OutlierDetection;
use super::window::Window;
use super::{Ctx, Step};
use crate::protocol::WorkerHealthStatus;
use crate::time::Time;

/// Where a worker is in the outlier-detection cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// In rotation; outcomes go to the window and the failure streak.
    Closed,
    /// Out of rotation until this instant.
    Ejected { until: Time },
    /// Back in rotation for at most `trial_permits` requests at once;
    /// `successes` trials have succeeded so far.
    HalfOpen { successes: u32 },
    /// Its ejection was called for and the cap held it back (panic mode
    /// `RouteToAll`): in rotation as a last resort, until a success or a
    /// clean Healthy probe closes it, or a failure finds the cap open.
    Held,
}

#[derive(Debug, Clone)]
pub(crate) struct Outlier {
    pub(crate) tuning: OutlierDetection,
    pub(crate) state: State,
    /// Counted failures in a row (any state; reported as
    /// `consecutive_failures`).
    pub(crate) consecutive: u32,
    window: Window,
    /// The backoff exponent: ejections so far, less decay.
    pub(crate) times_ejected: u32,
    /// When the worker last closed after a trial (decay runs from then).
    closed_at: Option<Time>,
}

impl Outlier {
    pub(crate) fn new(tuning: OutlierDetection) -> Self {
        Outlier {
            tuning,
            state: State::Closed,
            consecutive: 0,
            window: Window::default(),
            times_ejected: 0,
            closed_at: None,
        }
    }

    /// Closed is Healthy without failures in the window or streak,
    /// Degraded with; HalfOpen is Degraded; Ejected is Unavailable.
    pub(crate) fn status(&self) -> WorkerHealthStatus {
        match self.state {
            State::Closed if self.consecutive == 0 && self.window.failures() == 0 => {
                WorkerHealthStatus::Healthy
            }
            State::Closed | State::HalfOpen { .. } | State::Held => WorkerHealthStatus::Degraded,
            State::Ejected { .. } => WorkerHealthStatus::Unavailable,
        }
    }

    pub(crate) fn run_limit(&self) -> usize {
        match self.state {
            State::HalfOpen { .. } => self.tuning.trial_permits.max(1) as usize,
            _ => usize::MAX,
        }
    }

    pub(crate) fn ejected_until(&self) -> Option<Time> {
        match self.state {
            State::Ejected { until } => Some(until),
            _ => None,
        }
    }

    pub(crate) fn on_success(&mut self, now: Time) -> Step {
        self.consecutive = 0;
        match self.state {
            State::Closed => self.window.push(false, self.tuning.window),
            State::Held => {
                self.state = State::Closed;
                self.window.push(false, self.tuning.window);
            }
            State::HalfOpen { successes } => self.trial_succeeded(successes, now),
            State::Ejected { .. } => {}
        }
        Step::Quiet
    }

    pub(crate) fn on_failure(&mut self, ctx: &mut Ctx<'_>) -> Step {
        self.consecutive = self.consecutive.saturating_add(1);
        match self.state {
            State::Closed => {
                self.window.push(true, self.tuning.window);
                let tuning = &self.tuning;
                if self.consecutive >= tuning.consecutive_failures.max(1)
                    || self
                        .window
                        .over_rate(tuning.min_volume, tuning.failure_rate_percent)
                {
                    let step = self.eject(ctx);
                    if step == Step::Held {
                        self.state = State::Held;
                    }
                    step
                } else {
                    Step::Quiet
                }
            }
            // Already called for: ejected as soon as the cap allows.
            State::Held => {
                self.window.push(true, self.tuning.window);
                self.eject(ctx)
            }
            State::HalfOpen { .. } => {
                let step = self.eject(ctx);
                if step == Step::Held {
                    self.state = State::HalfOpen { successes: 0 };
                }
                step
            }
            State::Ejected { .. } => Step::Quiet,
        }
    }

    /// A Healthy probe with no counted failure since it was sent: a trial
    /// success when half-open, a success in the window when closed.
    pub(crate) fn on_healthy_probe(&mut self, now: Time) {
        match self.state {
            State::Closed => self.window.push(false, self.tuning.window),
            // Given another chance: a failure holds it again at once.
            State::Held => {
                self.state = State::Closed;
                self.window.push(false, self.tuning.window);
            }
            State::HalfOpen { successes } => self.trial_succeeded(successes, now),
            State::Ejected { .. } => {}
        }
    }

    /// The ejection time ran out: the worker turns half-open.
    pub(crate) fn on_expiry(&mut self, now: Time) -> bool {
        match self.state {
            State::Ejected { until } if until <= now => {
                self.state = State::HalfOpen { successes: 0 };
                true
            }
            _ => false,
        }
    }

    fn trial_succeeded(&mut self, successes: u32, now: Time) {
        let successes = successes.saturating_add(1);
        if successes >= self.tuning.success_threshold.max(1) {
            self.state = State::Closed;
            self.consecutive = 0;
            self.window.clear();
            self.closed_at = Some(now);
        } else {
            self.state = State::HalfOpen { successes };
        }
    }

    /// Ejects the worker for its next backoff, unless the cap holds it.
    fn eject(&mut self, ctx: &mut Ctx<'_>) -> Step {
        if !ctx.may_eject {
            return Step::Held;
        }
        let tuning = &self.tuning;
        let healthy_for = self.closed_at.map_or(Duration::ZERO, |at| ctx.now - at);
        let times = decayed(self.times_ejected, healthy_for, tuning.decay_after);
        let time = ejection_time(times, tuning.base_ejection, tuning.max_ejection);
        let draw = ctx
            .rng
            .below(u64::from(tuning.jitter_permille.min(1000)) + 1);
        let draw = u32::try_from(draw).unwrap_or(0);
        let time = with_jitter(time, tuning.jitter_permille, draw);
        self.times_ejected = times.saturating_add(1).min(MAX_EXPONENT);
        self.closed_at = None;
        self.window.clear();
        self.state = State::Ejected {
            until: ctx.now + time,
        };
        Step::Ejected
    }
}
