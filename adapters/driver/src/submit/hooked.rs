//! Submitting in a pool with hooks: `WorkerPool::run_hooked`, the
//! vetting steps with the lock released between them, placing a request
//! anew when its worker is removed (`revet`), and the guard that runs the
//! last hook of a caller that gave up.

use std::sync::Arc;

use foreman_core::{
    lanes, Admission, RequestError, RequestKey, Revetted, Vetted, Vetting, WorkerPoolError,
    WorkerRequest,
};

use super::PendingGuard;
use crate::answer::{ask_breaker, lost_answer, notify, respond};
use crate::handler::CircuitBreakerHooks;
use crate::pool::WorkerPool;
use crate::runtime::Runtime;
use crate::shared::{Lane, Shared};
use crate::slot::{HeldRequest, Slot};
use crate::started::worker_id;
use crate::trace::Traced;
use crate::types::Timed;
use crate::wait::{wait_for_notice, Notice};

impl<R: Runtime> WorkerPool<R> {
    /// `submit` in a pool with hooks, in the reference's order: the
    /// breaker is asked about the candidates in turn, with no lock held,
    /// each veto reported (`on_request_rejected`) before the next question;
    /// the worker that takes the request is reported
    /// (`on_request_accepted`) while its handler already runs on its
    /// worker's task; should the worker be removed while the request waits
    /// there, the breaker places it anew the same way; the answer is
    /// reported (`on_request_success` or `on_request_failure`) before it
    /// is returned. A refusal is reported as `on_request_rejected(None, …)`.
    pub(crate) async fn run_hooked(
        &self,
        slot: &Arc<Slot>,
        hooks: &dyn CircuitBreakerHooks,
        traced: Traced,
    ) -> Timed {
        let shared = &self.shared;
        // The slot keeps the handler's copy of the request (the handler
        // may run while the hooks still read this one). A request that
        // fails admission is not copied: it may be nested arbitrarily deep,
        // and it is dropped without recursion.
        let (admission, copy) = {
            let mut inner = slot.lock();
            let Some(parked) = inner.parked.get() else {
                return Timed::refused(lost_answer());
            };
            let admission = shared
                .config
                .admit(parked)
                .map(|admission| admission.with_limits(inner.limits));
            let copy = match admission {
                Ok(_) => HeldRequest::new(parked.clone()),
                Err(_) => std::mem::take(&mut inner.parked),
            };
            (admission, copy)
        };
        let Some(request) = copy.get() else {
            return Timed::refused(lost_answer());
        };
        let mut tries = shared.lane_order();
        let (lane, key, accepted_by) = 'lanes: loop {
            let (index, last) = tries.next_try();
            let mut vetting = if last {
                Vetting::new()
            } else {
                Vetting::offer()
            };
            loop {
                match shared.vet(index, &admission, slot, &mut vetting) {
                    // Hooks that only observe approve every candidate
                    // unasked.
                    VetStep::Ask(_) if shared.observe_only => vetting.answer(true),
                    VetStep::Ask(worker_id) => {
                        let allowed = ask_breaker(hooks, &worker_id, request).await;
                        if !allowed {
                            traced.vetoed(slot, &worker_id);
                        }
                        vetting.answer(allowed);
                    }
                    VetStep::Accepted(key, worker_id) => break 'lanes (index, key, worker_id),
                    VetStep::Refused(error) if !last && lanes::try_next_lane(&error) => break,
                    VetStep::Refused(error) => {
                        let parked = std::mem::take(&mut slot.lock().parked);
                        drop(parked);
                        shared.meter.refused(&error);
                        traced.refused(slot, &error);
                        hooks.on_request_rejected(None, request, error.code()).await;
                        return Timed::refused(error);
                    }
                }
            }
        };
        shared.meter.accepted();
        let lane = shared.lane(lane);
        // From here on, dropping this future cancels the request (and
        // aborts its handler), also while the hooks below run.
        let mut guard = HookedGuard {
            pending: PendingGuard::new(shared, lane, key, slot, traced),
            request_id: &request.request_id,
        };
        hooks.on_request_accepted(&accepted_by, request).await;
        let answer = loop {
            match wait_for_notice(slot).await {
                Notice::Answered(answer) => break answer,
                Notice::Revet => {
                    let (lane, key) = shared.whereabouts(slot, lane, key);
                    shared.revet(lane, key, request, hooks).await;
                }
            }
        };
        guard.pending.done = true;
        shared.ended(traced, slot, &answer, false);
        let worker = answer.worker.clone();
        let timed = respond(answer, request.request_id.clone());
        notify(hooks, worker_id(worker.as_deref()), &timed).await;
        timed
    }
}

impl<R: Runtime> Shared<R> {
    /// One step of vetting a request (a pool with hooks) in lane `lane`:
    /// the core proposes the next candidate, or commits the request to the
    /// one the breaker approved (its answer is in `vetting`), or refuses.
    /// The breaker is asked by the caller, with the lock released.
    fn vet(
        self: &Arc<Self>,
        lane: usize,
        admission: &Result<Admission, RequestError>,
        slot: &Arc<Slot>,
        vetting: &mut Vetting,
    ) -> VetStep {
        self.input(lane, |core, now| {
            match core.pool.vet(now, admission, Arc::clone(slot), vetting) {
                Vetted::Ask { worker, .. } => VetStep::Ask(core.id_of(worker)),
                Vetted::Accepted { request, worker } => {
                    VetStep::Accepted(request, core.id_of(worker))
                }
                Vetted::Refused(refused) => VetStep::Refused(refused.error),
            }
        })
    }

    /// Has the breaker place anew a request whose worker was removed while
    /// it waited there (`Action::Revet`), as at submit: candidates in
    /// turn, asked with no lock held, each veto reported before the next
    /// question, the worker that takes it reported as accepting it. When
    /// none does, the core answers the request (its answer reaches the
    /// slot).
    async fn revet(
        self: &Arc<Self>,
        lane: &Lane,
        key: RequestKey,
        request: &WorkerRequest,
        hooks: &dyn CircuitBreakerHooks,
    ) {
        let mut vetting = Vetting::new();
        loop {
            let step = self.input(lane.index, |core, now| {
                match core.pool.revet(now, key, &mut vetting) {
                    Revetted::Ask(worker) => RevetStep::Ask(core.id_of(worker)),
                    Revetted::Moved(worker) => RevetStep::Moved(core.id_of(worker)),
                    Revetted::Answered | Revetted::Gone => RevetStep::Done,
                }
            });
            match step {
                RevetStep::Ask(_) if self.observe_only => vetting.answer(true),
                RevetStep::Ask(worker_id) => {
                    let allowed = ask_breaker(hooks, &worker_id, request).await;
                    vetting.answer(allowed);
                }
                RevetStep::Moved(worker_id) => {
                    hooks.on_request_accepted(&worker_id, request).await;
                    return;
                }
                RevetStep::Done => return,
            }
        }
    }
}

/// [`PendingGuard`] of a pool with hooks: a caller that gives up after its
/// request was accepted cancels it, and the request's last hook
/// (`on_request_failure`, or `on_request_success` if it had just
/// succeeded) runs in a task of its own.
struct HookedGuard<'a, R: Runtime> {
    pending: PendingGuard<'a, R>,
    request_id: &'a str,
}

impl<R: Runtime> Drop for HookedGuard<'_, R> {
    fn drop(&mut self) {
        let Some(answer) = self.pending.cancel() else {
            return;
        };
        let shared = self.pending.shared;
        let Some(hooks) = shared.hooks.clone() else {
            return;
        };
        let worker = answer.worker.clone();
        let timed = respond(answer, self.request_id.to_string());
        shared.runtime.spawn(Box::pin(async move {
            notify(&*hooks, worker_id(worker.as_deref()), &timed).await;
        }));
    }
}

/// What one step of vetting a new request ([`Shared::vet`]) leaves to its
/// caller.
enum VetStep {
    /// Ask the breaker about this worker.
    Ask(Arc<str>),
    /// The request was accepted by this worker.
    Accepted(RequestKey, Arc<str>),
    /// The lane refused (or declined) the request.
    Refused(WorkerPoolError),
}

/// What one step of placing a request anew ([`Shared::revet`]) leaves to
/// its caller.
enum RevetStep {
    /// Ask the breaker about this worker.
    Ask(Arc<str>),
    /// The request moved to this worker.
    Moved(Arc<str>),
    /// The request was answered (or had been): its answer is in its slot.
    Done,
}
