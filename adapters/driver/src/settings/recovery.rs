//! The `[recovery]` section of a settings file: [`RecoverySettings`] and
//! the machine it names, [`RecoveryName`].

use std::time::Duration;

use foreman_core::{
    FailureClasses, OutlierDetection, PanicMode, PoolConfig, RecoveryPolicy, WorkerErrorCode,
};
use serde::{Deserialize, Serialize};

use super::text;

/// Which recovery state machine a `[recovery]` section picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryName {
    /// [`RecoveryPolicy::Reference`]: `"reference"`.
    Reference,
    /// [`RecoveryPolicy::OutlierDetection`]: `"outlier_detection"`.
    OutlierDetection,
}

/// The `[recovery]` section: [`PoolConfig::recovery`], the machine by name
/// and [`OutlierDetection`]'s fields (used only by `"outlier_detection"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RecoverySettings {
    /// The machine: `"reference"` (the default) or `"outlier_detection"`.
    #[serde(with = "text::named")]
    pub policy: RecoveryName,
    /// [`OutlierDetection::consecutive_failures`].
    pub consecutive_failures: u32,
    /// [`OutlierDetection::window`].
    pub window: u32,
    /// [`OutlierDetection::min_volume`].
    pub min_volume: u32,
    /// [`OutlierDetection::failure_rate_percent`].
    pub failure_rate_percent: u32,
    /// [`OutlierDetection::base_ejection`].
    #[serde(
        serialize_with = "text::write_duration",
        deserialize_with = "text::read_duration"
    )]
    pub base_ejection: Duration,
    /// [`OutlierDetection::max_ejection`].
    #[serde(
        serialize_with = "text::write_duration",
        deserialize_with = "text::read_duration"
    )]
    pub max_ejection: Duration,
    /// [`OutlierDetection::jitter_permille`].
    pub jitter_permille: u32,
    /// [`OutlierDetection::decay_after`].
    #[serde(
        serialize_with = "text::write_duration",
        deserialize_with = "text::read_duration"
    )]
    pub decay_after: Duration,
    /// [`OutlierDetection::trial_permits`].
    pub trial_permits: u32,
    /// [`OutlierDetection::success_threshold`].
    pub success_threshold: u32,
    /// [`OutlierDetection::max_ejected_percent`].
    pub max_ejected_percent: u32,
    /// [`OutlierDetection::panic_mode`]: `"route_to_all"` or `"fail_fast"`.
    #[serde(with = "text::named")]
    pub panic_mode: PanicMode,
    /// [`OutlierDetection::counted`]: the error codes that count against a
    /// worker (`invalid_request` and `cancelled` never do).
    pub counted: Vec<WorkerErrorCode>,
}

impl RecoverySettings {
    /// The settings of `policy` (outlier detection's defaults under the
    /// reference).
    fn of(policy: RecoveryPolicy) -> Self {
        let (policy, tuning) = match policy {
            RecoveryPolicy::OutlierDetection(tuning) => (RecoveryName::OutlierDetection, tuning),
            _ => (RecoveryName::Reference, OutlierDetection::default()),
        };
        RecoverySettings {
            policy,
            consecutive_failures: tuning.consecutive_failures,
            window: tuning.window,
            min_volume: tuning.min_volume,
            failure_rate_percent: tuning.failure_rate_percent,
            base_ejection: tuning.base_ejection,
            max_ejection: tuning.max_ejection,
            jitter_permille: tuning.jitter_permille,
            decay_after: tuning.decay_after,
            trial_permits: tuning.trial_permits,
            success_threshold: tuning.success_threshold,
            max_ejected_percent: tuning.max_ejected_percent,
            panic_mode: tuning.panic_mode,
            counted: COUNTABLE
                .into_iter()
                .filter(|code| tuning.counted.counts(*code))
                .collect(),
        }
    }

    /// The recovery policy these settings stand for.
    pub fn to_policy(&self) -> RecoveryPolicy {
        match self.policy {
            RecoveryName::Reference => RecoveryPolicy::reference(),
            RecoveryName::OutlierDetection => {
                let counted = self
                    .counted
                    .iter()
                    .fold(FailureClasses::NONE, |classes, code| classes.with(*code));
                RecoveryPolicy::OutlierDetection(
                    OutlierDetection::default()
                        .with_consecutive_failures(self.consecutive_failures)
                        .with_window(self.window)
                        .with_min_volume(self.min_volume)
                        .with_failure_rate_percent(self.failure_rate_percent)
                        .with_base_ejection(self.base_ejection)
                        .with_max_ejection(self.max_ejection)
                        .with_jitter_permille(self.jitter_permille)
                        .with_decay_after(self.decay_after)
                        .with_trial_permits(self.trial_permits)
                        .with_success_threshold(self.success_threshold)
                        .with_max_ejected_percent(self.max_ejected_percent)
                        .with_panic_mode(self.panic_mode)
                        .with_counted(counted),
                )
            }
        }
    }

    /// The key of outlier detection's `field` and its value as a file
    /// writes it.
    pub(super) fn key_of(&self, field: &str) -> Option<(&'static str, String)> {
        let number = |value: u32| value.to_string();
        Some(match field {
            "consecutive_failures" => (
                "recovery.consecutive_failures",
                number(self.consecutive_failures),
            ),
            "window" => ("recovery.window", number(self.window)),
            "min_volume" => ("recovery.min_volume", number(self.min_volume)),
            "failure_rate_percent" => (
                "recovery.failure_rate_percent",
                number(self.failure_rate_percent),
            ),
            "base_ejection" => ("recovery.base_ejection", text::quoted(self.base_ejection)),
            "max_ejection" => ("recovery.max_ejection", text::quoted(self.max_ejection)),
            "jitter_permille" => ("recovery.jitter_permille", number(self.jitter_permille)),
            "decay_after" => ("recovery.decay_after", text::quoted(self.decay_after)),
            "trial_permits" => ("recovery.trial_permits", number(self.trial_permits)),
            "success_threshold" => ("recovery.success_threshold", number(self.success_threshold)),
            "max_ejected_percent" => (
                "recovery.max_ejected_percent",
                number(self.max_ejected_percent),
            ),
            _ => return None,
        })
    }
}

impl Default for RecoverySettings {
    fn default() -> Self {
        Self::of(PoolConfig::default().recovery)
    }
}

/// The error codes a [`FailureClasses`] may hold, in the order a settings
/// file lists them.
const COUNTABLE: [WorkerErrorCode; 5] = [
    WorkerErrorCode::QueueFull,
    WorkerErrorCode::Unavailable,
    WorkerErrorCode::Timeout,
    WorkerErrorCode::ExecutionFailed,
    WorkerErrorCode::CircuitOpen,
];
