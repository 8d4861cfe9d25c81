//! Adding workers from several threads at once: two adds of one id add
//! it once, and two adds with no id get different numbered ids.

use std::num::NonZeroUsize;
use std::sync::{Arc, Barrier};

use foreman_tokio::{
    handler_fn, CommandError, PoolConfig, TokioRuntime, WorkerHandler, WorkerPool, WorkerRequest,
    WorkerSpec,
};
use serde_json::json;

fn echo() -> Arc<dyn WorkerHandler> {
    Arc::new(handler_fn(|_request: WorkerRequest| async {
        Ok(json!(null))
    }))
}

fn two_lanes() -> NonZeroUsize {
    NonZeroUsize::MIN.saturating_add(1)
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

/// Two threads adding a worker of the same id at once (on a pool of two
/// lanes, whose cores each know only their own ids): exactly one adds it,
/// the other gets `DuplicateWorkerId`.
#[test]
fn two_racing_adds_of_one_id_add_it_once() {
    const ROUNDS: usize = 32;
    let runtime = paused_runtime();
    let pool = {
        let _context = runtime.enter();
        WorkerPool::with_lanes(
            TokioRuntime,
            vec![echo(), echo()],
            PoolConfig::default(),
            None,
            two_lanes(),
        )
        .expect("a pool")
    };
    let pool = Arc::new(pool);
    for round in 0..ROUNDS {
        let id = format!("http://10.0.0.{round}:8080");
        let named = id.clone();
        let mut results = race_two(&runtime, &pool, move |pool| {
            pool.add_worker_with(WorkerSpec::named(named.clone()), echo())
        });
        results.sort_by_key(Result::is_err);
        assert_eq!(
            results,
            vec![Ok(id.clone()), Err(CommandError::DuplicateWorkerId(id))],
            "round {round}"
        );
    }
    assert_eq!(pool.stats().workers.len(), 2 + ROUNDS);
    runtime.block_on(pool.shutdown());
}

/// Two threads adding a worker with no id at once: both are added, with
/// different numbered ids (an add under way reserves the number it took).
#[test]
fn two_racing_numbered_adds_get_different_ids() {
    const ROUNDS: usize = 32;
    let runtime = paused_runtime();
    let pool = {
        let _context = runtime.enter();
        WorkerPool::new_inprocess(vec![echo()], Default::default(), None).expect("a pool")
    };
    let pool = Arc::new(pool);
    for round in 0..ROUNDS {
        let mut ids: Vec<_> = race_two(&runtime, &pool, |pool| pool.add_worker(echo()))
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|error| panic!("round {round}: {error:?}"));
        ids.sort();
        let mut expected = vec![
            format!("worker-{}", 1 + 2 * round),
            format!("worker-{}", 2 + 2 * round),
        ];
        expected.sort();
        assert_eq!(ids, expected, "round {round}");
    }
    assert_eq!(pool.stats().workers.len(), 1 + 2 * ROUNDS);
    runtime.block_on(pool.shutdown());
}

/// Calls `add` on `pool` from two threads at once (inside `runtime`'s
/// context); their results, in thread order.
fn race_two<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    pool: &Arc<WorkerPool>,
    add: impl Fn(&WorkerPool) -> T + Clone + Send + 'static,
) -> Vec<T> {
    let start = Arc::new(Barrier::new(2));
    let adders: Vec<_> = (0..2)
        .map(|_| {
            let (pool, start, add) = (Arc::clone(pool), Arc::clone(&start), add.clone());
            let handle = runtime.handle().clone();
            std::thread::spawn(move || {
                let _context = handle.enter();
                start.wait();
                add(&pool)
            })
        })
        .collect();
    adders
        .into_iter()
        .map(|adder| adder.join().expect("an adder"))
        .collect()
}
