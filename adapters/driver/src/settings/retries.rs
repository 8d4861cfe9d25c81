//! The `[retries]` section of a settings file: [`RetrySettings`].

use std::time::Duration;

use foreman_core::{RetryBudget, RetryPolicy};
use serde::{Deserialize, Serialize};

use super::text;

/// The `[retries]` section: whether the pool retries retryable failures
/// and its [`RetryPolicy`], with the budget as `[retries.budget]`.
///
/// Off by default (`enabled = false`), as the reference answers every
/// failure; the other keys then keep their defaults and mean nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetrySettings {
    /// Whether the pool retries at all ([`PoolConfig::retries`](foreman_core::PoolConfig::retries)
    /// is `None` when not).
    pub enabled: bool,
    /// The most times one request runs, its first attempt included (at
    /// least 1).
    pub max_attempts: u32,
    /// Whether LLM calls are retried.
    pub llm: bool,
    /// Whether tool calls are retried.
    pub tools: bool,
    /// How many extra attempts the pool may spend (`[retries.budget]`).
    pub budget: RetryBudgetSettings,
}

/// The `[retries.budget]` section: [`RetryBudget`], its window written as
/// a duration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryBudgetSettings {
    /// How long a request or a retry counts (at least 1 ms).
    #[serde(
        serialize_with = "text::write_duration",
        deserialize_with = "text::read_duration"
    )]
    pub window: Duration,
    /// The share of requests, in percent, that may be retried within the
    /// window.
    pub share_percent: u32,
    /// Retries a second allowed whatever the traffic.
    pub reserve_per_second: u32,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self::from_policy(None)
    }
}

impl Default for RetryBudgetSettings {
    fn default() -> Self {
        Self::from_budget(RetryBudget::default())
    }
}

impl RetryBudgetSettings {
    /// The settings of `budget`.
    fn from_budget(budget: RetryBudget) -> Self {
        RetryBudgetSettings {
            window: budget.window,
            share_percent: budget.share_percent,
            reserve_per_second: budget.reserve_per_second,
        }
    }
}

impl RetrySettings {
    /// The settings of `policy` (`None`: disabled, the defaults kept).
    pub(super) fn from_policy(policy: Option<RetryPolicy>) -> Self {
        let enabled = policy.is_some();
        let policy = policy.unwrap_or_default();
        RetrySettings {
            enabled,
            max_attempts: policy.max_attempts,
            llm: policy.llm,
            tools: policy.tools,
            budget: RetryBudgetSettings::from_budget(policy.budget),
        }
    }

    /// The policy these settings stand for (`None` when disabled).
    pub(super) fn to_policy(&self) -> Option<RetryPolicy> {
        self.enabled.then(|| {
            RetryPolicy::default()
                .with_max_attempts(self.max_attempts)
                .with_llm(self.llm)
                .with_tools(self.tools)
                .with_budget(
                    RetryBudget::default()
                        .with_window(self.budget.window)
                        .with_share_percent(self.budget.share_percent)
                        .with_reserve_per_second(self.budget.reserve_per_second),
                )
        })
    }
}
