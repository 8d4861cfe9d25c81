//! The conformance suite on foreman-tokio: on a current-thread runtime with
//! paused (virtual, auto-advancing) time, and on a two-thread runtime in
//! real time.

use std::future::Future;
use std::pin::Pin;

use foreman_conformance::Target;
use foreman_tokio::TokioRuntime;

/// Current-thread runtime, paused clock.
struct Paused;

impl Target for Paused {
    type Runtime = TokioRuntime;

    fn block_on(body: Pin<Box<dyn Future<Output = ()> + '_>>) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("tokio runtime")
            .block_on(body);
    }
}

/// Multi-thread runtime with two workers, real clock.
struct MultiThread;

impl Target for MultiThread {
    type Runtime = TokioRuntime;

    fn block_on(body: Pin<Box<dyn Future<Output = ()> + '_>>) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(body);
    }
}

mod current_thread_paused {
    foreman_conformance::conformance_suite!(super::Paused);
}

mod multi_thread {
    foreman_conformance::conformance_suite!(super::MultiThread);
}

/// Under the paused clock the slow/fast workload's completion time is
/// exact virtual time: in two lanes and in four it finishes within 1.2x
/// the single lane's time, in every execution mode and with hooks.
#[test]
fn lanes_finish_the_slow_and_fast_workload_within_the_single_lane_time() {
    use foreman_conformance::{slow_and_fast_workers_in, LaneMode};
    Paused::block_on(Box::pin(async {
        for mode in [LaneMode::PoolTasks, LaneMode::CallerTask, LaneMode::Hooked] {
            let (one, _, _) = slow_and_fast_workers_in(TokioRuntime, Some(1), mode).await;
            for lanes in [2, 4] {
                let (elapsed, slow_runs, _) =
                    slow_and_fast_workers_in(TokioRuntime, Some(lanes), mode).await;
                eprintln!(
                    "{mode:?}: {lanes} lanes {elapsed:?} (slow workers ran {slow_runs}), \
                     one lane {one:?}"
                );
                assert!(
                    elapsed.as_secs_f64() <= 1.2 * one.as_secs_f64(),
                    "{mode:?}, {lanes} lanes took {elapsed:?}, one lane {one:?} \
                     (slow workers ran {slow_runs})"
                );
            }
        }
    }));
}
