//! The driver's interface: the methods only a driver needs, beside the
//! inputs, outputs and queries of the contract on [`Pool`].

use super::admission::Refused;
use super::Pool;
use crate::config::Admission;
use crate::keys::RequestKey;
use crate::time::Time;
use crate::validate::RequestError;

/// The driver's interface: what only a driver needs, beside the inputs,
/// outputs and queries of the contract (see [`Pool`]) that every program
/// feeding the pool calls.
///
/// - [`offer`](Pool::offer), [`idle_workers`](Pool::idle_workers) and
///   [`eligible_workers`](Pool::eligible_workers), with the rules of
///   [`lanes`](crate::lanes): for a driver that spreads its workers over
///   several pools ("lanes");
/// - [`move_timer`](Pool::move_timer): for a driver that keeps one timer
///   instead of asking [`poll_timeout`](Pool::poll_timeout) after every
///   input;
/// - [`check_invariants`](Pool::check_invariants): the pool's bookkeeping
///   rules, checked by tests, simulators and fuzzers after every input
///   (defined with its checks, in `invariants.rs`).
impl<P: Clone> Pool<P> {
    /// Offers a request validated beforehand, for a driver that spreads its
    /// workers over several pools ("lanes") and tries them in turn: exactly
    /// like [`submit_checked`](Self::submit_checked), except that a refusal
    /// for want of a worker (`QueueFull`, `NoHealthyWorker`) is *declined*:
    /// it is not counted and emits no pool-level [`Event::Rejected`](crate::Event::Rejected), so
    /// the request is counted once, by the pool that takes it or by the
    /// last one tried (with `submit_checked`).
    ///
    /// # Errors
    /// As [`submit_checked`](Self::submit_checked).
    pub fn offer(
        &mut self,
        now: Time,
        admission: Result<Admission, RequestError>,
        payload: P,
    ) -> Result<RequestKey, Refused<P>> {
        self.admit_request(now, admission, payload, true)
    }

    /// Workers that would start a request at once (schedulable, with a free
    /// run slot).
    pub fn idle_workers(&self) -> usize {
        self.router.idle_len()
    }

    /// Workers that would take a request (schedulable, with room).
    pub fn eligible_workers(&self) -> usize {
        self.router.eligible_len()
    }

    /// Where a driver that keeps one timer must move it after an input:
    /// `Some(at)` when `at` is earlier than `timer`, where the timer is set
    /// now (`Time::MAX`: not set, or it just fired).
    ///
    /// Cheaper than [`poll_timeout`](Self::poll_timeout) on every input,
    /// and never late: a set timer only moves earlier, to the earliest
    /// deadline armed since the last call; one not set is set from
    /// `poll_timeout`. A timer may then fire for a deadline that is no
    /// longer live (its request was answered): `handle_timeout` does
    /// nothing, and the next call, with `Time::MAX`, gives the exact next
    /// deadline. Call it after every input.
    pub fn move_timer(&mut self, timer: Time) -> Option<Time> {
        let armed = self.timers.take_armed();
        let next = if timer == Time::MAX {
            self.poll_timeout().map(|(at, _)| at)
        } else {
            armed
        };
        next.filter(|&at| at < timer)
    }
}

#[cfg(test)]
mod tests {

    use crate::config::{PoolConfig, WorkerPoolOptions};
    use crate::protocol::WorkerRequest;
    use crate::time::Time;
    use crate::Pool;

    fn request(timeout_ms: u64) -> WorkerRequest {
        super::super::test_request(Some(timeout_ms))
    }

    #[test]
    fn a_timer_already_at_the_next_deadline_stays_where_it_is() {
        let mut pool = Pool::new(PoolConfig::new(WorkerPoolOptions::default()), Time::ZERO)
            .expect("the default options are valid");
        pool.add_worker(Time::ZERO).expect("a worker");
        let timer = pool.move_timer(Time::MAX).expect("a probe is due");
        // A request whose deadline falls exactly where the timer is set.
        pool.submit(Time::ZERO, &request(timer.as_nanos() / 1_000_000), ())
            .expect("accepted");
        assert_eq!(pool.move_timer(timer), None, "nothing earlier was armed");
        // A timer not set is set from the exact next deadline: that instant.
        assert_eq!(pool.move_timer(Time::MAX), Some(timer));
    }
}
