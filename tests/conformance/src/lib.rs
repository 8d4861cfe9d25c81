//! The cross-adapter conformance suite: one set of behaviour scenarios,
//! written once against [`foreman_driver::Runtime`], run against every
//! adapter (`foreman-tokio`, `foreman-async-std`, `foreman-smol`).
//!
//! An adapter test file implements [`Target`] (how to run an async body on
//! its runtime) and invokes [`conformance_suite!`](crate::conformance_suite),
//! which makes one `#[test]` per scenario:
//!
//! ```text
//! struct Smol;
//! impl foreman_conformance::Target for Smol {
//!     type Runtime = foreman_smol::SmolRuntime;
//!     fn block_on(body: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>) {
//!         smol::block_on(body);
//!     }
//! }
//! foreman_conformance::conformance_suite!(Smol);
//! ```
//!
//! The scenarios are the reference module's seven tests and at least one
//! test per defect of the reference (`docs/COMPATIBILITY.md` maps each
//! defect to its tests: bad configuration, panics, hooks, timeouts,
//! cancellation on drop, restart, graceful shutdown and drain, probes,
//! payload size, health never blocks, queue time), plus a mixed-load
//! scenario checking that every request gets exactly one answer. They live
//! in one module per behaviour (`reference`, `admission`, `health`,
//! `cancellation`, `shutdown`, `scheduling`, `deadlines`, `execution`, `lanes`,
//! `reentrancy`, `breaker`, `observers`), on the workers, hooks and pools of `support`,
//! and are re-exported here for [`conformance_suite!`](crate::conformance_suite).
//!
//! Timing rules, so the suite is exact on runtimes without virtual time
//! (async-std, smol) and on tokio's paused clock alike: every wait is on a
//! condition ([`wait_until`], a gate the test opens, a hanging future cut
//! off by a deadline of a few ms); a test that needs a deadline to pass
//! asserts only the outcome and ordering, never wall time. Each scenario
//! runs under a 30 s watchdog of the runtime's clock, so a hang fails
//! instead of blocking the test run.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod admission;
mod breaker;
mod cancellation;
mod closures;
mod deadlines;
mod execution;
mod health;
mod hedging;
mod lanes;
mod observability;
mod observers;
mod reentrancy;
mod reference;
mod retries;
mod scheduling;
mod service;
mod shutdown;
mod support;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use foreman_driver::Runtime;
use futures::future::{self, Either};

pub use admission::{
    a_huge_payload_is_refused_without_serialising_it,
    bad_configuration_is_an_error_from_the_constructor, health_never_blocks_on_a_busy_worker,
};
pub use breaker::{
    a_breaker_over_two_lanes_counts_each_request_once, a_moved_request_allowed_nowhere_is_answered,
    a_moved_request_goes_only_where_the_breaker_allows,
    accept_and_reject_hooks_fire_once_after_the_fact,
    allow_request_is_asked_in_turn_until_one_allows, with_a_circuit_breaker_requests_stay_put,
};
pub use cancellation::{
    dropping_submit_cancels_the_request, dropping_submit_while_hooks_run_cancels_the_request,
};
pub use closures::*;
pub use deadlines::{
    phase_limits_end_requests_and_name_the_limit,
    pool_phase_limits_apply_unless_a_request_sets_its_own,
};
pub use execution::{
    a_caller_that_stalls_after_one_poll_does_not_hold_its_worker,
    a_slow_first_poll_does_not_delay_another_callers_answer, every_request_answered_once,
    every_request_answered_once_in_two_lanes, queued_requests_run_by_the_finishing_task,
    queued_requests_run_on_the_worker_task,
};
pub use health::{
    a_panicking_handler_leaves_its_worker_serving, a_timeout_frees_the_worker_and_counts_once,
    probes_cannot_whitewash_failures_and_cannot_hang, restart_keeps_the_queued_requests,
};
pub use hedging::{
    a_hedge_answers_once_and_the_slow_attempt_is_dropped,
    hedging_in_caller_task_mode_is_refused_at_build,
};
pub use lanes::{
    a_cancel_that_frees_a_worker_moves_another_lanes_queue,
    fast_workers_take_the_queue_from_slow_ones, lanes_behave_as_one_pool,
    late_binding_holds_across_lanes, late_binding_holds_across_lanes_in_caller_task_mode,
    late_binding_holds_across_lanes_with_hooks, removing_a_lanes_workers_moves_its_queue,
    removing_a_lanes_workers_moves_its_queue_in_caller_task_mode,
    removing_a_lanes_workers_moves_its_queue_with_hooks,
    requests_cancelled_while_moving_are_answered_once, slow_and_fast_workers,
    slow_and_fast_workers_in,
};
pub use observability::{
    metrics_count_each_outcome_and_follow_the_queues, metrics_follow_requests_moved_between_lanes,
    Reading, Readings,
};
pub use observers::observe_only_hooks_keep_late_binding_and_a_breaker_pins;
pub use reentrancy::{
    allow_request_may_call_the_pool, every_other_hook_may_call_the_pool,
    handlers_and_probes_may_call_the_pool, on_request_accepted_may_call_the_pool,
    on_request_accepted_may_shut_the_pool_down, PoolRef,
};
pub use reference::{
    enforces_queue_backpressure_limits, handles_parallel_submissions_without_deadlock,
    marks_worker_unavailable_after_failures_and_recovers_on_restart,
    rejects_request_when_security_contract_is_violated, returns_timeout_for_slow_worker,
    routes_requests_across_worker_pool, worker_protocol_roundtrip,
};
pub use retries::{
    observe_only_hooks_see_a_retried_request_once,
    retries_in_caller_task_mode_are_refused_at_build,
    retryable_llm_failures_run_again_on_another_worker,
};
pub use scheduling::{
    a_slow_worker_does_not_hold_the_queue, degraded_workers_get_less_work,
    elapsed_includes_queue_time,
};
pub use service::*;
pub use shutdown::{
    commands_after_shutdown_answer_shutting_down, shutdown_drains_queued_and_running_requests,
};
pub use support::{
    request, sleep, spawn, wait_until, LaneMode, ProbeMode, RecordingHooks, TestWorker,
};

/// An adapter under test: its runtime type and how to run an async body on it.
pub trait Target: 'static {
    /// The adapter's runtime (`foreman_tokio::TokioRuntime`, …).
    type Runtime: Runtime + Default + Clone;

    /// Runs `body` to completion on the runtime, from a plain `#[test]`.
    fn block_on(body: Pin<Box<dyn Future<Output = ()> + '_>>);
}

/// Defines one `#[test]` per conformance scenario for a [`Target`] type.
#[macro_export]
macro_rules! conformance_suite {
    ($target:ty) => {
        $crate::conformance_suite!(@each $target;
            worker_protocol_roundtrip,
            routes_requests_across_worker_pool,
            enforces_queue_backpressure_limits,
            marks_worker_unavailable_after_failures_and_recovers_on_restart,
            returns_timeout_for_slow_worker,
            rejects_request_when_security_contract_is_violated,
            handles_parallel_submissions_without_deadlock,
            bad_configuration_is_an_error_from_the_constructor,
            a_panicking_handler_leaves_its_worker_serving,
            accept_and_reject_hooks_fire_once_after_the_fact,
            a_timeout_frees_the_worker_and_counts_once,
            dropping_submit_cancels_the_request,
            dropping_submit_while_hooks_run_cancels_the_request,
            restart_keeps_the_queued_requests,
            shutdown_drains_queued_and_running_requests,
            probes_cannot_whitewash_failures_and_cannot_hang,
            a_huge_payload_is_refused_without_serialising_it,
            health_never_blocks_on_a_busy_worker,
            a_slow_worker_does_not_hold_the_queue,
            degraded_workers_get_less_work,
            with_a_circuit_breaker_requests_stay_put,
            elapsed_includes_queue_time,
            every_request_answered_once,
            every_request_answered_once_in_two_lanes,
            queued_requests_run_by_the_finishing_task,
            queued_requests_run_on_the_worker_task,
            lanes_behave_as_one_pool,
            a_caller_that_stalls_after_one_poll_does_not_hold_its_worker,
            a_slow_first_poll_does_not_delay_another_callers_answer,
            fast_workers_take_the_queue_from_slow_ones,
            late_binding_holds_across_lanes,
            removing_a_lanes_workers_moves_its_queue,
            a_cancel_that_frees_a_worker_moves_another_lanes_queue,
            requests_cancelled_while_moving_are_answered_once,
            allow_request_may_call_the_pool,
            on_request_accepted_may_call_the_pool,
            every_other_hook_may_call_the_pool,
            on_request_accepted_may_shut_the_pool_down,
            handlers_and_probes_may_call_the_pool,
            allow_request_is_asked_in_turn_until_one_allows,
            a_moved_request_goes_only_where_the_breaker_allows,
            a_moved_request_allowed_nowhere_is_answered,
            a_breaker_over_two_lanes_counts_each_request_once,
            commands_after_shutdown_answer_shutting_down,
            metrics_count_each_outcome_and_follow_the_queues,
            metrics_follow_requests_moved_between_lanes,
            phase_limits_end_requests_and_name_the_limit,
            pool_phase_limits_apply_unless_a_request_sets_its_own,
            observe_only_hooks_keep_late_binding_and_a_breaker_pins,
        );
        $crate::conformance_suite!(@each $target;
            late_binding_holds_across_lanes_in_caller_task_mode,
            late_binding_holds_across_lanes_with_hooks,
            removing_a_lanes_workers_moves_its_queue_in_caller_task_mode,
            removing_a_lanes_workers_moves_its_queue_with_hooks,
            a_closure_handler_and_its_probe_serve_the_pool,
            a_panicking_closure_handler_is_answered_execution_failed,
            the_pool_service_waits_for_room_and_is_woken_when_it_frees,
            a_call_that_raced_past_poll_ready_gets_the_pools_refusal,
            call_all_through_the_pool_service_never_overflows_its_queue,
            a_service_handle_keeps_its_pool_running,
            a_tower_service_serves_as_a_worker_handler,
            retryable_llm_failures_run_again_on_another_worker,
            retries_in_caller_task_mode_are_refused_at_build,
            observe_only_hooks_see_a_retried_request_once,
            a_hedge_answers_once_and_the_slow_attempt_is_dropped,
            hedging_in_caller_task_mode_is_refused_at_build,
        );
    };
    (@each $target:ty; $($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            $crate::run::<$target, _>($crate::$name);
        }
    )*};
}

/// Runs one scenario on `T`'s runtime under the watchdog.
pub fn run<T: Target, F: Future<Output = ()>>(scenario: fn(T::Runtime) -> F) {
    T::block_on(Box::pin(async move {
        // Made inside the runtime: a runtime may need its context for timers.
        let rt = T::Runtime::default();
        let watchdog = sleep(&rt, Duration::from_secs(30));
        let body = scenario(rt.clone());
        futures::pin_mut!(body, watchdog);
        if let Either::Right(((), _)) = future::select(body, watchdog).await {
            panic!("scenario still running after 30 s of runtime time");
        }
    }));
}
