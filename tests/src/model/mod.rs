//! The shared operation model: core inputs as data ([`Op`]), a driver that
//! applies them ([`Harness`]), and every external check of the pool.
//!
//! One module serves the simulator ([`crate::sim`]), the proptest state
//! machines (`tests/tests/model_proptest/`) and the fuzz targets
//! (`fuzz/`, through the `arbitrary` feature, which derives
//! `arbitrary::Arbitrary` for [`Op`] and its parts).
//!
//! # What the harness does on every input
//! 1. It calls one input of [`Pool`](foreman_core::Pool) with its own clock (which may have been
//!    stepped backwards: the core must then act at the latest instant it has
//!    seen, which the harness mirrors as `seen`).
//! 2. It drains every output — events first, then actions — and keeps its own
//!    books from them: which requests are pending and where, which are
//!    running, which probes are outstanding, each worker's status as told by
//!    `HealthChanged` events, whether a worker is being removed or stopped.
//! 3. It *settles*: while [`Pool::poll_timeout`](foreman_core::Pool::poll_timeout) names an instant at or
//!    before `seen`, it calls [`Pool::handle_timeout`](foreman_core::Pool::handle_timeout) (a driver sleeping
//!    zero seconds). So the harness always wakes the core exactly when it
//!    asked, and time only advances through [`Harness::advance`], which
//!    stops at every wake-up on the way, and [`Harness::wake`], which is
//!    also a late driver's wake-up ([`Op::Leap`]: everything due since
//!    fires in one call).
//! 4. It checks, cheaply (O(1) or O(log n)), after every input:
//!    - every accepted request is answered exactly once: an `Answer` for a
//!      request the books do not hold is a double answer; a request still
//!      pending after its deadline or after shutdown completed is lost;
//!    - `Accepted` (and `Requeued`) only onto a worker that was schedulable
//!      (not removing, not stopped, status not `Unavailable`) and had room at
//!      the time of routing; `Start` only on a live, non-removing worker and
//!      only for a request queued there;
//!    - a circuit breaker (a veto mask over worker ordinals, see
//!      [`Op::SubmitVetted`] and [`Op::Revet`]) is asked about each
//!      candidate at most once, only about schedulable workers with room,
//!      and the request goes to the last one asked, which allowed it; a
//!      request it placed and pinned is not moved by its worker's removal
//!      but named by `Revet`, and moves (by [`Harness::revet`]) only to a
//!      worker the breaker allows, or is answered `Unavailable`;
//!    - late binding (every policy but round robin): a `Requeued` outside a removal
//!      only moves an unpinned request (no circuit-breaker veto at its
//!      submit) onto a schedulable worker, and that request starts there in
//!      the same input; and once an input is done no unpinned
//!      request waits while some schedulable worker has a free run slot (a
//!      request never waits behind a slow worker while another is free:
//!      defect 11), but under `PeakEwma`'s deferral to a faster worker,
//!      and then the oldest waits no longer than the longest run seen or
//!      the unsampled latency since it began to wait (its acceptance, or a
//!      refusal before its start) or since the last refusal put a request
//!      back at the front of the line, whichever is later;
//!    - per worker, queued ≤ `queue_capacity` (or the refusals it kept past
//!      it) and queued + running ≤ its capacity once an input is done
//!      (checked for the workers whose load grew) and running ≤
//!      `max_concurrency_per_worker` after every start;
//!    - a submit's outcome is exactly the one the books predict:
//!      `ShuttingDown` after shutdown began, `InvalidRequest` for a request
//!      that breaks the policy (predicted from the policy's limits, see
//!      [`Shape`]), acceptance when some schedulable worker has
//!      room, `QueueFull` only when schedulable workers exist and none has
//!      room, `NoHealthyWorker` only when none is schedulable;
//!    - deadlines never fire early (a running `Timeout` answer only at `seen ≥
//!      deadline` or past its run limit, a drain-deadline `ShuttingDown` only
//!      at `seen ≥ drain deadline`) and never late (after settling, no
//!      pending request and no outstanding probe has a deadline, or a phase
//!      limit of its current phase, at or before `seen`); a deadline that
//!      saturates at `Time::MAX` is never, as in the core; a queued request
//!      never starts past its queue-wait limit; every `Timeout` names the
//!      limit the books predict (the phase limit of its phase if that has
//!      passed, else the overall budget) and no other answer names one;
//!    - health changes only along the edges allowed for their cause (see
//!      [`allowed_edge`]), and each change starts from the status the books
//!      hold;
//!    - health follows the rules exactly: the harness predicts each
//!      worker's consecutive failures and status from what it saw (a
//!      success clears the failures, a handler error or panic adds one, a
//!      timeout adds one only if the worker had at least half of the
//!      request's budget — [`timeout_counts`] — or its run limit passed, and
//!      a queued timeout adds none; probe verdicts, trials and restarts as in the core) and,
//!      after every input that changed a worker's predicted health,
//!      compares its status and failure count with the core's;
//!    - a queued request starts only with budget left and no less of it than
//!      its worker's last successful run ([`too_late_to_start`]; a request
//!      submitted to a free worker starts whatever its budget), and one
//!      answered `Timeout` while queued had its budget spent or less of it
//!      left than the longest run seen;
//!    - every input's return value (`true`/`false`, `Ok`/`Err`) is the one
//!      the books predict (keys the harness never handed out included:
//!      [`Op::RawKey`]; worker names: [`Op::AddNamedWorker`]); a spurious
//!      `handle_timeout` produces nothing;
//!    - a refusal before starting ([`Op::Refuse`]) puts the request back
//!      in line unanswered (but for an `Unavailable` when its worker is
//!      being removed and no other can take it; a refused hedge racing its
//!      request just ends), its attempt uncounted, and saturates its
//!      worker: no `Start` there, and its free slot does not
//!      count for late binding, until one of its runs ends (a retry
//!      leaving it included), a probe answers, it is restarted or one
//!      probe interval has passed since the refusal (the core's timer);
//!    - the core's counters agree with the books (accepted, answered,
//!      refused before starting, pending), and once shutdown completed nothing is pending and the
//!      pool wants no wake-up.
//! 5. Every `full_check_every` inputs (default: every input) it also runs
//!    the core's O(n) [`Pool::check_invariants`](foreman_core::Pool::check_invariants) and compares
//!    [`Pool::stats`](foreman_core::Pool::stats) worker by worker with its books; the simulator and
//!    the fuzz targets raise the period for speed
//!    ([`Harness::set_full_check_amortised`]); a full check also runs after
//!    every worker command the pool took, every revet and every shutdown,
//!    and [`Harness::check`] runs one at the end of a run.
//!
//! Everything is deterministic: books are indexed by the core's dense key
//! indices or kept in vectors and binary heaps, never iterated in hash order.
//!
//! # Files
//! - `operations`: the inputs as data ([`Op`] and its parts);
//! - `requests`: the request each [`Shape`] submits and whether the
//!   pool's policy admits it;
//! - `trace`: what the harness records ([`Trace`], [`TraceEvent`]);
//! - `books`: what the harness remembers of requests and workers, and the
//!   health the rules predict; `bookkeeping`: how the harness keeps those
//!   books up to date;
//! - `output`: what the harness tells a simulator to do ([`Output`]);
//! - `harness`: the [`Harness`] itself, applying ops and draining outputs;
//! - `refusals`: a handler's refusal before starting ([`Op::Refuse`]);
//! - `submit`, `commands`: one input each (submits and circuit breakers;
//!   completions, probes, worker commands, shutdown, time);
//! - `events`, `actions`, `answers`: what the harness checks and books for
//!   each output the core emits;
//! - `checks`: the rules checked once an input is done.

use std::fmt;

/// A broken rule, described for a bug report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

/// Returns a [`Failure`] with the formatted message unless `$cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(Failure(format!($($fmt)+)));
        }
    };
}

mod actions;
mod answers;
mod attempts;
mod bookkeeping;
mod books;
mod checks;
mod commands;
mod events;
mod harness;
mod operations;
mod output;
mod refusals;
mod requests;
mod submit;
mod trace;

pub use books::{timeout_counts, too_late_to_start};
pub use checks::allowed_edge;
pub use harness::{Harness, MAX_WAKES_PER_ADVANCE};
pub use operations::{worker_name, Distance, Op, Outcome, RawInput, Shape, TimeoutChoice, Verdict};
pub use output::Output;
pub use trace::{AnswerKind, Refusal, Trace, TraceEvent, TRACE_TAIL};
