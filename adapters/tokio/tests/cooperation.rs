//! A caller looping on `submit` with a handler that finishes at once never
//! waits, so foreman must give the thread back on its own (the bug this
//! guards against: such a loop starved every other task, timers included).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use foreman_support::bench::{bench_request, Echo};
use foreman_tokio::{
    async_trait, DriverOptions, ExecutionMode, PoolConfig, TokioRuntime, WorkerHandler, WorkerPool,
    WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
};

/// A pool that runs handlers in the callers' tasks, whose cooperation
/// with the runtime these tests check.
fn caller_task_pool(handler: Arc<dyn WorkerHandler>) -> Arc<WorkerPool> {
    let options = DriverOptions::default().execution(ExecutionMode::CallerTask);
    let config = PoolConfig::new(WorkerPoolOptions::default());
    Arc::new(
        WorkerPool::with_driver_options(TokioRuntime, vec![handler], config, None, options)
            .expect("pool"),
    )
}
use serde_json::Value;

/// On a single-threaded runtime the looping caller and the test body share
/// one thread: the body only runs again if `submit` yields now and then.
#[tokio::test(flavor = "current_thread")]
async fn a_submit_loop_yields_to_other_tasks() {
    let pool = Arc::new(
        WorkerPool::new_inprocess(vec![Arc::new(Echo)], WorkerPoolOptions::default(), None)
            .expect("pool"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let caller = {
        let (pool, stop, done) = (Arc::clone(&pool), Arc::clone(&stop), Arc::clone(&done));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                pool.submit(bench_request()).await.expect("echo succeeds");
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Let the caller run; this task is polled again only if it yields.
    while done.load(Ordering::Relaxed) < 1_000 {
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);
    caller.await.expect("caller ends");
    assert!(done.load(Ordering::Relaxed) >= 1_000);
    pool.shutdown().await;
}

/// In caller-task mode, callers sharing a thread take turns request by request (as they would
/// on a channel), so none waits behind another's burst; a caller alone
/// runs a stretch of requests between yields.
#[tokio::test(flavor = "current_thread")]
async fn callers_sharing_a_thread_take_turns() {
    let pool = caller_task_pool(Arc::new(Echo));
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let callers: Vec<_> = (0..3u8)
        .map(|caller| {
            let (pool, order) = (Arc::clone(&pool), Arc::clone(&order));
            tokio::spawn(async move {
                for _ in 0..10 {
                    pool.submit(bench_request()).await.expect("echo succeeds");
                    order.lock().expect("order").push(caller);
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("caller ends");
    }
    let order = order.lock().expect("order").clone();
    assert_eq!(order.len(), 30);
    // After the first round (each caller's first request finds the others
    // not yet started), no caller answers twice in a row.
    let repeats = order.windows(2).skip(3).filter(|w| w[0] == w[1]).count();
    assert_eq!(repeats, 0, "callers took turns: {order:?}");

    // Alone, a caller is not forced to yield after every request.
    let polls = Arc::new(AtomicU64::new(0));
    let other = {
        let polls = Arc::clone(&polls);
        tokio::spawn(async move {
            loop {
                polls.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    tokio::task::yield_now().await;
    let before = polls.load(Ordering::Relaxed);
    for _ in 0..512 {
        pool.submit(bench_request()).await.expect("echo succeeds");
    }
    let yielded = polls.load(Ordering::Relaxed) - before;
    other.abort();
    // Once on the first request (the other task ran last), then once per
    // 128 in a row.
    assert!(
        (4..=6).contains(&yielded),
        "512 lone requests yielded {yielded} times (expected about 1 + 512 / 128)"
    );
    pool.shutdown().await;
}

struct Sleepy;

#[async_trait]
impl WorkerHandler for Sleepy {
    async fn handle(&self, _request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        Ok(Value::Null)
    }
}

/// A caller that retries at once on `QueueFull` must not keep the thread
/// (and the pool's timers) from the requests it is waiting behind: on a
/// single thread it gets in once they finish. (A refusal that skipped the
/// cooperative yield would make this loop spin forever.)
#[tokio::test(flavor = "current_thread")]
async fn retrying_on_queue_full_lets_the_queue_drain() {
    let pool = Arc::new(
        WorkerPool::new_inprocess(
            vec![Arc::new(Sleepy)],
            WorkerPoolOptions {
                queue_capacity: 1,
                ..WorkerPoolOptions::default()
            },
            None,
        )
        .expect("pool"),
    );
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.submit(bench_request()).await })
        })
        .collect();
    tokio::task::yield_now().await;
    let mut refused = 0u64;
    loop {
        match pool.submit(bench_request()).await {
            Ok(_) => break,
            Err(foreman_tokio::WorkerPoolError::QueueFull) => {
                refused += 1;
                // Without yields this never ends; a cap turns that into a
                // failure instead of a hang.
                assert!(refused < 50_000_000, "the retry loop starved the pool");
            }
            Err(other) => panic!("unexpected refusal: {other}"),
        }
    }
    assert!(refused > 0, "the queue was full at first");
    for request in busy {
        assert!(request.await.expect("caller ends").is_ok());
    }
    pool.shutdown().await;
}

/// Logs each request it runs; the one named `gate` first waits for the
/// gate to open.
struct Logged {
    log: Arc<std::sync::Mutex<Vec<String>>>,
    gate: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl WorkerHandler for Logged {
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        if request.request_id == "gate" {
            self.gate.notified().await;
        }
        let entry = format!("run {}", request.request_id);
        self.log.lock().expect("log").push(entry);
        Ok(Value::Null)
    }
}

/// In caller-task mode, the task whose request frees the worker may run the next queued request
/// for its caller (saving a wake-up), but it answers its own caller before
/// a second one runs: one task never runs a whole queue of requests that
/// finish at once while its own answer waits.
#[tokio::test(flavor = "current_thread")]
async fn a_freed_worker_answers_its_own_caller_after_at_most_one_other_request() {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let gate = Arc::new(tokio::sync::Notify::new());
    let handler = Logged {
        log: Arc::clone(&log),
        gate: Arc::clone(&gate),
    };
    let pool = caller_task_pool(Arc::new(handler));
    let submit = |id: &str| {
        let (pool, log) = (Arc::clone(&pool), Arc::clone(&log));
        let request = WorkerRequest {
            request_id: id.into(),
            ..bench_request()
        };
        tokio::spawn(async move {
            let id = request.request_id.clone();
            pool.submit(request).await.expect("request succeeds");
            log.lock().expect("log").push(format!("answered {id}"));
        })
    };
    // `gate` takes the only worker; the others queue behind it.
    let callers: Vec<_> = ["gate", "b", "c", "d"].into_iter().map(submit).collect();
    while pool.stats().queued < 3 {
        tokio::task::yield_now().await;
    }
    gate.notify_one();
    for caller in callers {
        caller.await.expect("caller ends");
    }
    let log = log.lock().expect("log").clone();
    let at = |entry: &str| {
        log.iter()
            .position(|e| e == entry)
            .unwrap_or_else(|| panic!("{entry} missing from {log:?}"))
    };
    assert_eq!(log.len(), 8, "{log:?}");
    // The gate's task ran `b` for its caller (before `b`'s own task ran
    // again), then answered its own caller before `c` ran.
    assert!(at("run b") < at("answered gate"), "{log:?}");
    assert!(at("answered gate") < at("run c"), "{log:?}");
    assert!(at("run b") < at("answered b"), "{log:?}");
    pool.shutdown().await;
}
