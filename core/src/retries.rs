//! Retries: which failed requests run again ([`RetryPolicy`]) and how many
//! extra attempts the pool may spend on them ([`RetryBudget`]: a share of
//! its recent requests plus a small reserve, over a sliding window, as
//! Finagle's retry budget).
//!
//! A request is retried when all of these hold: the pool has a
//! [`RetryPolicy`] and its operation kind is one the policy retries; the
//! handler's error is marked `retryable`; the request has run fewer than
//! [`RetryPolicy::max_attempts`] times; the pool is not shutting down, no
//! circuit breaker chose its worker (a breaker must approve the worker of
//! every attempt, so such requests are never retried); another worker
//! than the one that failed can take it; its deadline has not passed; and
//! the budget grants an extra attempt. The failure still counts against
//! the worker that failed. The retry is pinned to the other worker (so the
//! failed one never runs it again) and keeps the request's deadline: the
//! overall budget covers every attempt.
//!
//! Every first attempt deposits `share_percent` % of a token; every extra
//! attempt withdraws one whole token, and is allowed only while the balance
//! holds one. The reserve, `reserve_per_second` × the window in seconds, is
//! always there, so a pool with little traffic can still retry. Deposits and
//! withdrawals count in ten slices of the window and leave it as their
//! slice does. An extra attempt at `t` is granted only if, counting the
//! window that ends at `t` (the ten slices up to `t`'s), it keeps the
//! extra attempts within
//!
//! ```text
//! reserve_per_second × window + share_percent / 100 × first attempts
//! ```
//!
//! So under a steady load a retry storm (every worker failing retryably)
//! multiplies the attempts by at most `1 + share_percent / 100`, plus the
//! reserve.

use std::time::Duration;

use crate::protocol::WorkerOperation;
use crate::time::Time;

/// Which failed requests the pool runs again on another worker, and how
/// many extra attempts it may spend on them.
///
/// Off unless set ([`PoolConfig::retries`](crate::PoolConfig::retries) is
/// `None` by default: the reference answers every failure, and a pool that
/// replaces it answers the same). The default policy retries LLM calls,
/// which are idempotent, and not tool calls, whose side effects may not be:
///
/// ```
/// use foreman_core::{PoolConfig, RetryBudget, RetryPolicy};
///
/// let config = PoolConfig::default().with_retries(Some(
///     RetryPolicy::default()
///         .with_max_attempts(3)
///         .with_tools(false)
///         .with_budget(RetryBudget::default().with_share_percent(10)),
/// ));
/// assert_eq!(config.validate(), Ok(()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// The most times one request runs, its first attempt included (at
    /// least 1; 1 never retries).
    pub max_attempts: u32,
    /// Whether LLM calls are retried (default: yes).
    pub llm: bool,
    /// Whether tool calls are retried (default: no).
    pub tools: bool,
    /// How many extra attempts the pool may spend.
    pub budget: RetryBudget,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 2,
            llm: true,
            tools: false,
            budget: RetryBudget::default(),
        }
    }
}

impl RetryPolicy {
    /// Sets [`max_attempts`](Self::max_attempts).
    #[must_use]
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Sets [`llm`](Self::llm).
    #[must_use]
    pub fn with_llm(mut self, llm: bool) -> Self {
        self.llm = llm;
        self
    }

    /// Sets [`tools`](Self::tools).
    #[must_use]
    pub fn with_tools(mut self, tools: bool) -> Self {
        self.tools = tools;
        self
    }

    /// Sets [`budget`](Self::budget).
    #[must_use]
    pub fn with_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = budget;
        self
    }

    /// Whether a request running `operation` may be retried at all.
    pub fn covers(&self, operation: &WorkerOperation) -> bool {
        self.max_attempts > 1 && kind_allowed(operation, self.llm, self.tools)
    }
}

/// Whether a policy allowing LLM calls (`llm`) and tool calls (`tools`)
/// allows `operation`'s kind (retries and hedging decide by kind alike).
pub(crate) fn kind_allowed(operation: &WorkerOperation, llm: bool, tools: bool) -> bool {
    match operation {
        WorkerOperation::Llm { .. } => llm,
        WorkerOperation::Tool { .. } => tools,
    }
}

/// How many extra attempts (retries and hedges) the pool may spend: a
/// share of its recent requests plus a reserve, over a sliding window.
///
/// The default is Finagle's: 20 % of the requests of the last 10 s, plus
/// 10 a second.
///
/// ```
/// use std::time::Duration;
///
/// use foreman_core::RetryBudget;
///
/// let budget = RetryBudget::default()
///     .with_share_percent(10)
///     .with_reserve_per_second(0)
///     .with_window(Duration::from_secs(30));
/// assert_eq!(budget.share_percent, 10);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RetryBudget {
    /// How long a deposit or a withdrawal counts (at least 1 ms).
    pub window: Duration,
    /// The share of first attempts, in percent, that may be retried or
    /// hedged within the window.
    pub share_percent: u32,
    /// Extra attempts a second allowed whatever the traffic (the reserve
    /// holds this many times the window in seconds).
    pub reserve_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            share_percent: 20,
            reserve_per_second: 10,
        }
    }
}

impl RetryBudget {
    /// Sets [`window`](Self::window).
    #[must_use]
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Sets [`share_percent`](Self::share_percent).
    #[must_use]
    pub fn with_share_percent(mut self, share_percent: u32) -> Self {
        self.share_percent = share_percent;
        self
    }

    /// Sets [`reserve_per_second`](Self::reserve_per_second).
    #[must_use]
    pub fn with_reserve_per_second(mut self, reserve_per_second: u32) -> Self {
        self.reserve_per_second = reserve_per_second;
        self
    }

    /// The most extra attempts a window allows over `first_attempts` first
    /// attempts: the reserve plus the share, rounded down.
    pub fn allowance(&self, first_attempts: u64) -> u64 {
        let milli = self.reserve_milli().saturating_add(
            first_attempts.saturating_mul(u64::from(self.share_percent).saturating_mul(10)),
        );
        milli / TOKEN
    }

    /// The reserve in thousandths of a token: per second × window in ms.
    fn reserve_milli(&self) -> u64 {
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        u64::from(self.reserve_per_second).saturating_mul(window_ms)
    }
}

/// A token, in the thousandths the ledger counts in.
const TOKEN: u64 = 1_000;

/// Slices a window is counted in.
const SLICES: usize = 10;

/// The running account of a [`RetryBudget`]: first attempts deposited,
/// extra attempts withdrawn, per slice of the window.
#[derive(Debug, Clone)]
pub(crate) struct RetryLedger {
    budget: RetryBudget,
    /// Width of one slice in nanoseconds (at least 1).
    slice: u64,
    slices: [Slice; SLICES],
}

/// The deposits and withdrawals of one slice of time.
#[derive(Debug, Clone, Copy, Default)]
struct Slice {
    /// Which slice of time (`now / width`) the counts belong to.
    index: u64,
    first: u64,
    extra: u64,
}

impl RetryLedger {
    /// An empty ledger for `budget`.
    pub(crate) fn new(budget: RetryBudget) -> Self {
        let window = u64::try_from(budget.window.as_nanos()).unwrap_or(u64::MAX);
        Self {
            budget,
            slice: (window / SLICES as u64).max(1),
            slices: [Slice::default(); SLICES],
        }
    }

    /// Counts a first attempt at `now`.
    pub(crate) fn deposit(&mut self, now: Time) {
        let slice = self.current(now);
        slice.first = slice.first.saturating_add(1);
    }

    /// Takes one token for an extra attempt at `now`, if the balance holds
    /// one; `false` (and nothing taken) otherwise.
    pub(crate) fn try_withdraw(&mut self, now: Time) -> bool {
        let (first, extra) = self.totals(now);
        if extra >= self.budget.allowance(first) {
            return false;
        }
        let slice = self.current(now);
        slice.extra = slice.extra.saturating_add(1);
        true
    }

    /// First and extra attempts counted in the window ending at `now`.
    pub(crate) fn totals(&self, now: Time) -> (u64, u64) {
        let index = now.as_nanos() / self.slice;
        let oldest = index.saturating_sub(SLICES as u64 - 1);
        self.slices
            .iter()
            .filter(|slice| slice.index >= oldest && slice.index <= index)
            .fold((0, 0), |(first, extra), slice| {
                (
                    first.saturating_add(slice.first),
                    extra.saturating_add(slice.extra),
                )
            })
    }

    /// The slice `now` falls in, emptied if it last counted an older one.
    fn current(&mut self, now: Time) -> &mut Slice {
        let index = now.as_nanos() / self.slice;
        let position = usize::try_from(index % SLICES as u64).unwrap_or(0);
        let slice = &mut self.slices[position];
        if slice.index != index {
            *slice = Slice {
                index,
                first: 0,
                extra: 0,
            };
        }
        slice
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::{RetryBudget, RetryLedger};
    use crate::time::Time;

    fn budget(share_percent: u32, reserve_per_second: u32) -> RetryBudget {
        RetryBudget::default()
            .with_window(Duration::from_secs(10))
            .with_share_percent(share_percent)
            .with_reserve_per_second(reserve_per_second)
    }

    #[test]
    fn a_fifth_of_the_requests_may_be_retried_with_no_reserve() {
        let mut ledger = RetryLedger::new(budget(20, 0));
        let now = Time::from_millis(1);
        for _ in 0..100 {
            ledger.deposit(now);
        }
        let granted = (0..100).filter(|_| ledger.try_withdraw(now)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn the_reserve_allows_retries_before_any_traffic() {
        let mut ledger = RetryLedger::new(budget(20, 10));
        let granted = (0..1_000)
            .filter(|_| ledger.try_withdraw(Time::from_millis(5)))
            .count();
        assert_eq!(granted, 100, "10 a second over a 10 s window");
    }

    #[test]
    fn spent_tokens_come_back_once_the_window_has_passed() {
        let mut ledger = RetryLedger::new(budget(0, 1));
        let start = Time::from_millis(0);
        assert_eq!((0..50).filter(|_| ledger.try_withdraw(start)).count(), 10);
        let within = Time::from_millis(9_000);
        assert!(!ledger.try_withdraw(within), "still inside the window");
        let after = Time::from_millis(10_000);
        assert_eq!((0..50).filter(|_| ledger.try_withdraw(after)).count(), 10);
    }

    #[test]
    fn a_zero_window_still_counts_within_its_nanosecond() {
        let mut ledger = RetryLedger::new(RetryBudget::default().with_window(Duration::ZERO));
        ledger.deposit(Time::from_nanos(3));
        assert_eq!(ledger.totals(Time::from_nanos(3)), (1, 0));
    }

    proptest! {
        /// Whatever the sequence of first attempts and retry requests, a
        /// retry is granted exactly when the window ending at that instant
        /// has allowance left, and once granted, the window's extra attempts
        /// stay within what its first attempts and the reserve allow.
        #[test]
        fn extra_attempts_stay_within_the_window_allowance(
            share in 0u32..=100,
            reserve in 0u32..=5,
            steps in proptest::collection::vec((0u64..3_000, any::<bool>()), 1..400),
        ) {
            let budget = budget(share, reserve);
            let mut ledger = RetryLedger::new(budget);
            let mut now = 0u64;
            for (advance_ms, first) in steps {
                now += advance_ms;
                let at = Time::from_millis(now);
                if first {
                    ledger.deposit(at);
                } else {
                    let (before_first, before_extra) = ledger.totals(at);
                    let allowed = before_extra < budget.allowance(before_first);
                    let granted = ledger.try_withdraw(at);
                    prop_assert_eq!(granted, allowed);
                    let (first, extra) = ledger.totals(at);
                    if granted {
                        prop_assert!(extra <= budget.allowance(first));
                    } else {
                        prop_assert_eq!((first, extra), (before_first, before_extra));
                    }
                }
            }
        }

        /// The allowance grows with the first attempts and never shrinks.
        #[test]
        fn the_allowance_is_monotone_in_first_attempts(
            share in 0u32..=1_000,
            reserve in 0u32..=1_000,
            first in 0u64..1_000_000,
        ) {
            let budget = budget(share, reserve);
            prop_assert!(budget.allowance(first) <= budget.allowance(first + 1));
        }
    }
}
