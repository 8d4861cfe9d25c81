//! Submitting a request and waiting for its answer: `WorkerPool::run` (no
//! hooks, either execution mode) and entering the core; a pool with hooks
//! submits through `WorkerPool::run_hooked` (`hooked.rs`), and the guard
//! that cancels a request whose `submit` future is dropped is in
//! `cancel.rs`.

mod cancel;
mod hooked;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use foreman_core::{lanes, RequestKey, WorkerPoolError, WorkerRequest};

use crate::answer::{lost_answer, respond};
use crate::deadline::Deadline;
use crate::handler::{HandlerFuture, OwnedHandlerFuture};
use crate::live::LiveGuard;
use crate::pool::WorkerPool;
use crate::refusal::Outcome;
use crate::runtime::Runtime;
use crate::shared::{Lane, Shared};
use crate::slot::{HeldRequest, Run, Slot};
use crate::started::{Delivered, Started, WorkerCell};
use crate::state::{Claimed, Own};
use crate::trace::Traced;
use crate::types::Timed;
use crate::wait::{run_handler, wait_for_answer, wait_for_start, Wake};
use crate::worker::panic_error;
use cancel::PendingGuard;

/// What [`Shared::enter`] did with a request.
struct Entered {
    lane: usize,
    submitted: Result<RequestKey, WorkerPoolError>,
    request_id: String,
}

/// A request its worker started at once, with no hooks to run first: the
/// caller runs it straight away.
type StartedAtOnce = Option<(Started, WorkerRequest)>;

impl<R: Runtime> WorkerPool<R> {
    /// `submit` without the cooperative yield. The request, and its start
    /// or answer, wait in the slot rather than in this future, which every
    /// caller holds: it stays small.
    pub(crate) async fn run(&self, slot: &Arc<Slot>, waited: &mut bool, traced: Traced) -> Timed {
        let shared = &self.shared;
        // Everything up to the first await is one synchronous step, so
        // none of its locals lives in this future. A request started at
        // once (with no hooks to wait for) gets its handler future here
        // (caller-task mode) or is already on its worker's task: the
        // request never goes back to its slot, nor into this future.
        let fast_worker: Arc<WorkerCell>;
        let mut live: Option<LiveGuard> = None;
        // When the core cuts off the handler this caller runs itself (a
        // handed future carries its own).
        let mut cutoff = None;
        let (
            Entered {
                lane,
                submitted,
                request_id,
            },
            started_at_once,
        ) = {
            let (entered, start) = match shared.enter(slot) {
                Ok(entered) => entered,
                Err(error) => return Timed::refused(error),
            };
            let future: Option<HandlerFuture<'_>> = match start {
                Some((
                    Started {
                        worker,
                        live: guard,
                        deadline,
                        ..
                    },
                    request,
                )) => {
                    fast_worker = worker;
                    cutoff = Some(Deadline::new(deadline, guard.epoch()));
                    live = Some(guard);
                    let handler = fast_worker.handler.handle(request);
                    Some(traced.in_span(slot, &fast_worker.id, handler))
                }
                None => None,
            };
            (entered, future)
        };
        let key = match submitted {
            Ok(key) => key,
            Err(refused) => return shared.refused(traced, slot, refused),
        };
        shared.meter.accepted();
        let lane = shared.lane(lane);
        // From here on, dropping this future cancels the request, also
        // while the hooks below run.
        let mut guard = PendingGuard::new(shared, lane, key, slot, traced);
        if shared.pool_tasks {
            let answer = wait_for_answer(slot, key, waited).await;
            guard.done = true;
            shared.ended(traced, slot, &answer, false);
            return respond(answer, request_id);
        }
        let worker: Arc<WorkerCell>;
        let future: HandlerFuture<'_> = match started_at_once {
            Some(future) => future,
            None => match wait_for_start(slot, waited).await {
                Wake::Started(Started {
                    worker: granted,
                    live: guard,
                    deadline,
                    ..
                }) => {
                    cutoff = Some(Deadline::new(deadline, guard.epoch()));
                    live = Some(guard);
                    let parked = slot.lock().parked.take();
                    let Some(request) = parked else {
                        return Timed::refused(lost_answer());
                    };
                    worker = granted;
                    traced.in_span(slot, &worker.id, worker.handler.handle(request))
                }
                Wake::Handed(future, guard) => {
                    live = Some(guard);
                    future
                }
                Wake::Answered(answer) => {
                    guard.answered_without_run();
                    shared.ended(traced, slot, &answer, false);
                    return respond(answer, request_id);
                }
            },
        };
        let ran = run_handler(future, slot, waited, cutoff).await;
        // The handler future is dropped: it no longer counts as live.
        drop(live);
        let answer = match ran {
            Some(outcome) => {
                let refused = outcome.is_refusal();
                let mut own = Own::default();
                // It ran in the lane that started it.
                let (lane, key) = shared.whereabouts(slot, lane, key);
                shared.complete(lane, key, outcome, Some(key), CLAIM_BUDGET, &mut own);
                let answer = own.answer.take();
                let again = own.started.take();
                shared.run_claimed(lane, own.claimed);
                if refused {
                    // Declined before it started: it runs again where the
                    // core starts it next (boxed: rare, and this future
                    // stays small).
                    Box::pin(self.run_again(slot, lane, key, waited, again)).await
                } else {
                    answer.or_else(|| slot.lock().answer.take())
                }
            }
            None => slot.lock().answer.take(),
        };
        guard.done = true;
        match answer {
            Some(answer) => {
                shared.ended(traced, slot, &answer, false);
                respond(answer, request_id)
            }
            None => Timed::refused(lost_answer()),
        }
    }
}

impl<R: Runtime> WorkerPool<R> {
    /// Runs the caller's own request again after its handler declined it
    /// (caller-task mode, `refuse_not_started`): takes `started` if the
    /// refusal started it at once, else waits for its next start (in
    /// whichever lane it is by then), runs its handler there, and so on
    /// until a handler ends it or the core answers it. Returns its answer.
    async fn run_again(
        &self,
        slot: &Arc<Slot>,
        lane: &Lane,
        key: RequestKey,
        waited: &mut bool,
        mut started: Option<Started>,
    ) -> Option<Delivered> {
        let shared = &self.shared;
        loop {
            let start = match started.take() {
                Some(start) => Wake::Started(start),
                None => wait_for_start(slot, waited).await,
            };
            let (future, live) = match start {
                Wake::Started(start) => match own_handler(slot, start) {
                    Some(run) => run,
                    None => return slot.lock().answer.take(),
                },
                Wake::Handed(future, live) => (future, live),
                Wake::Answered(answer) => {
                    drop(slot.lock().give_up());
                    return Some(answer);
                }
            };
            // A handed future sets its own deadline.
            let ran = run_handler(future, slot, waited, None).await;
            drop(live);
            let Some(outcome) = ran else {
                return slot.lock().answer.take();
            };
            let refused = outcome.is_refusal();
            let mut own = Own::default();
            // Declined, it may have moved to another lane before this run.
            let (lane, key) = shared.whereabouts(slot, lane, key);
            shared.complete(lane, key, outcome, Some(key), CLAIM_BUDGET, &mut own);
            let answer = own.answer.take();
            started = own.started.take();
            shared.run_claimed(lane, own.claimed);
            if !refused {
                return answer.or_else(|| slot.lock().answer.take());
            }
        }
    }
}

/// The handler future of the caller's own request, started by `start`,
/// owning what it needs (its worker's handler, its request from the slot),
/// in the request's span and with its deadline; `None` if the slot holds
/// no request (never happens).
fn own_handler(slot: &Slot, start: Started) -> Option<(OwnedHandlerFuture, LiveGuard)> {
    let Started {
        worker,
        live,
        deadline,
        ..
    } = start;
    let request = slot.lock().parked.take()?;
    let span = crate::trace::lookup(|| slot.lock().handler_span());
    span.start(&worker.id);
    let deadline = Deadline::new(deadline, live.epoch());
    let future = span.instrument_owned(crate::deadline::within(deadline, async move {
        worker.handler.handle(request).await
    }));
    Some((future, live))
}

impl<R: Runtime> Shared<R> {
    /// A refused submit: counted and traced (`metrics`, `tracing`).
    fn refused(&self, traced: Traced, slot: &Slot, error: WorkerPoolError) -> Timed {
        self.meter.refused(&error);
        traced.refused(slot, &error);
        Timed::refused(error)
    }

    /// An accepted request's answer reached its caller (or the guard of a
    /// caller that gave up, `cancelled` if the core answered it because of
    /// that): counted, timed and traced (`metrics`, `tracing`).
    #[inline]
    pub(crate) fn ended(&self, traced: Traced, slot: &Slot, answer: &Delivered, cancelled: bool) {
        self.meter
            .ended(answer.ending(cancelled), answer.queued_for, answer.ran_for);
        traced.ended(slot, answer, cancelled);
    }

    /// Submits the request parked in `slot`, with the slot as its payload:
    /// validates it, offers it to the lanes in turn (see
    /// [`lane_order`](Self::lane_order); the last one tried refuses for
    /// real), carries out the actions and wakes whom they concern. The
    /// request goes back to the slot, unless hooks must see it first.
    ///
    /// # Errors
    /// `lost_answer` if the slot holds no request (never happens).
    fn enter(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
    ) -> Result<(Entered, StartedAtOnce), WorkerPoolError> {
        let (parked, limits) = {
            let mut inner = slot.lock();
            (inner.parked.take(), inner.limits)
        };
        let Some(request) = parked else {
            return Err(lost_answer());
        };
        let request_id = request.request_id.clone();
        // Validation needs only the configuration: do it, and read the
        // clock, before taking a lock.
        let admission = self
            .config
            .admit(&request)
            .map(|admission| admission.with_limits(limits));
        let now = self.now();
        let mut tries = self.lane_order();
        let mut started = None;
        let mut answered = None;
        // The request, until a worker task takes it (pool-task mode).
        let mut held = Some(request);
        let (lane, submitted) = loop {
            let (index, last) = tries.next_try();
            let lane = self.lane(index);
            let mut probes = Vec::new();
            let mut core = lane.core.lock();
            let submitted = if last {
                core.pool
                    .submit_checked(now, admission.clone(), Arc::clone(slot))
            } else {
                core.pool.offer(now, admission.clone(), Arc::clone(slot))
            };
            let key = submitted.as_ref().ok().copied();
            let mut own = Own::default();
            core.after_input(key, &mut own, &mut probes, &lane.signals, 0);
            // Under the lock, so an abort of the request finds it on its
            // worker's task.
            if let (true, Some(key)) = (self.pool_tasks, key) {
                if let Some(start) = own.started.take() {
                    match held.take() {
                        Some(request) => {
                            if start.may_retry {
                                slot.lock().parked = HeldRequest::new(request.clone());
                            }
                            start.dispatch(key, request, &mut own.wake);
                        }
                        None => own.started = Some(start),
                    }
                }
            }
            drop(core);
            own.wake_all();
            started = own.started.take().or(started);
            answered = own.answer.take().or(answered);
            self.spawn_probes(index, probes);
            match submitted {
                Err(refused) if !last && lanes::try_next_lane(&refused.error) => {}
                submitted => break (index, submitted.map_err(|refused| refused.error)),
            }
        };
        // An answer this early (never in practice) waits in the slot.
        if let Some(answer) = answered {
            slot.lock().answer = Some(answer);
        }
        let entered = Entered {
            lane,
            submitted,
            request_id,
        };
        let queued = held.is_some() && started.is_none();
        // `None`: on its worker's task already.
        let start = match (held, started) {
            (Some(request), Some(started)) => Some((started, request)),
            (Some(request), None) => {
                slot.lock().parked = HeldRequest::new(request);
                None
            }
            (None, _) => None,
        };
        // A request that queued while another lane's worker went idle
        // moves there now (that lane may see no further input).
        if entered.submitted.is_ok() && queued {
            self.balance_lanes(lane);
        }
        Ok((entered, start))
    }
    /// Runs requests of other callers that this task claimed when it freed
    /// their worker: polls each handler once, in this task, which saves its
    /// caller a wake-up. A handler that has to wait is handed back to its
    /// caller, whose waker it has already registered. One that finishes is
    /// completed here, but the request that starts next is left to its own
    /// caller: this task's caller, whose answer is ready, waits for at most
    /// one other request. (Chaining claims would let one task run up to
    /// [`CLAIM_BUDGET`] requests that finish at once before answering its
    /// own, which lengthens its caller's tail latency; DECISIONS.md has the
    /// figures.)
    fn run_claimed(self: &Arc<Self>, lane: &Lane, claimed: Vec<Claimed>) {
        for job in claimed {
            let Claimed {
                key,
                slot,
                worker,
                request,
                waker,
                live,
                deadline,
            } = job;
            let span = crate::trace::lookup(|| slot.lock().handler_span());
            span.start(&worker.id);
            let deadline = Deadline::new(deadline, live.epoch());
            let mut future = span.instrument_owned(crate::deadline::within(deadline, async move {
                worker.handler.handle(request).await
            }));
            let waker = waker.unwrap_or_else(futures_util::task::noop_waker);
            // `Within`'s poll forgets a refusal an earlier poll left behind.
            let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
                future.as_mut().poll(&mut Context::from_waker(&waker))
            }));
            let outcome = match polled {
                Ok(Poll::Pending) => {
                    let back = slot.lock().hand_back(future, live);
                    back.finish();
                    continue;
                }
                Ok(Poll::Ready(result)) => Outcome::of(result),
                Err(panic) => Outcome::of(Err(panic_error(&*panic))),
            };
            drop(future);
            drop(live);
            if !outcome.is_refusal() {
                slot.lock().run = Run::Ended;
            }
            // Claims nothing: with no claim budget, every request this
            // completion starts is granted to its own caller (a refused one
            // included: its caller waits for its start again).
            self.complete(lane, key, outcome, None, 0, &mut Own::default());
        }
    }
}

/// How many of the queued requests that one completion starts the task
/// that completed it claims (see [`Shared::run_claimed`]); the rest are
/// granted to their callers.
const CLAIM_BUDGET: usize = 16;
