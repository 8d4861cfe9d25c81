//! Workers with their own run limits, on tokio's paused clock: each runs
//! up to its own limit at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foreman_tokio::{
    handler_fn, BuildError, CommandError, DriverOptions, PoolConfig, TokioRuntime, WorkerHandler,
    WorkerOperation, WorkerPool, WorkerPoolOptions, WorkerProtocolError, WorkerRequest, WorkerSpec,
};
use serde_json::json;

/// Counts the requests it runs at once, and the most it ran at once.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    most: AtomicUsize,
}

fn gauged(gauge: &Arc<Gauge>) -> Arc<dyn WorkerHandler> {
    let gauge = Arc::clone(gauge);
    Arc::new(handler_fn(move |_request: WorkerRequest| {
        let gauge = Arc::clone(&gauge);
        async move {
            let running = gauge.now.fetch_add(1, Ordering::AcqRel) + 1;
            gauge.most.fetch_max(running, Ordering::AcqRel);
            tokio::time::sleep(Duration::from_millis(100)).await;
            gauge.now.fetch_sub(1, Ordering::AcqRel);
            Ok(json!(null))
        }
    }))
}

fn request(id: usize) -> WorkerRequest {
    WorkerRequest {
        request_id: format!("r{id}"),
        workflow_name: "limits".into(),
        node_id: "n".into(),
        timeout_ms: None,
        operation: WorkerOperation::Tool {
            tool: "t".into(),
            input: json!({}),
            scoped_input: json!({}),
        },
    }
}

fn config() -> PoolConfig {
    let options = WorkerPoolOptions {
        queue_capacity: 8,
        ..WorkerPoolOptions::default()
    };
    PoolConfig::new(options)
}

#[tokio::test(start_paused = true)]
async fn a_worker_with_limit_three_runs_three_at_once_beside_one_with_limit_one() {
    let (wide, narrow) = (Arc::new(Gauge::default()), Arc::new(Gauge::default()));
    let workers = vec![
        (
            WorkerSpec::named("http://wide:1").with_max_concurrency(3),
            gauged(&wide),
        ),
        (WorkerSpec::named("http://narrow:1"), gauged(&narrow)),
    ];
    let pool = Arc::new(
        WorkerPool::with_workers(
            TokioRuntime,
            workers,
            config(),
            None,
            DriverOptions::default(),
        )
        .expect("a valid pool"),
    );
    let callers: Vec<_> = (0..12)
        .map(|id| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.submit(request(id)).await })
        })
        .collect();
    // Everything has started that can: three on the wide worker, one on
    // the narrow one, the rest queued.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(wide.now.load(Ordering::Acquire), 3);
    assert_eq!(narrow.now.load(Ordering::Acquire), 1);
    assert_eq!(pool.stats().running, 4);
    for caller in callers {
        caller.await.expect("no panic").expect("answered");
    }
    assert_eq!(wide.most.load(Ordering::Acquire), 3);
    assert_eq!(narrow.most.load(Ordering::Acquire), 1);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn added_workers_keep_their_ids_and_limits_across_lanes() {
    let gauge = Arc::new(Gauge::default());
    let lanes = std::num::NonZeroUsize::new(2).expect("two lanes");
    let pool = WorkerPool::with_workers(
        TokioRuntime,
        vec![(WorkerSpec::default(), gauged(&gauge))],
        config(),
        None,
        DriverOptions::default().lanes(lanes),
    )
    .expect("a valid pool");
    let add = |spec: WorkerSpec| pool.add_worker_with(spec, gauged(&gauge));
    assert_eq!(add(WorkerSpec::named("worker-1")), Ok("worker-1".into()));
    // The next numbered id skips the one taken by name.
    assert_eq!(add(WorkerSpec::default()), Ok("worker-2".into()));
    // Lane 0 holds worker-0 and worker-2, lane 1 worker-1 and then b; the
    // next add goes to lane 0, which does not hold worker-1: still a
    // duplicate.
    assert_eq!(
        add(WorkerSpec::named("http://b:1")),
        Ok("http://b:1".into())
    );
    assert_eq!(
        add(WorkerSpec::named("worker-1")),
        Err(CommandError::DuplicateWorkerId("worker-1".into()))
    );
    assert_eq!(
        add(WorkerSpec::named("http://a:1").with_max_concurrency(0)),
        Err(CommandError::ZeroConcurrency {
            id: "http://a:1".into()
        })
    );
    // Removed, the id is free again once its worker has stopped.
    pool.remove_worker("worker-1").expect("known");
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(add(WorkerSpec::named("worker-1")), Ok("worker-1".into()));
    let ids: Vec<_> = pool
        .stats()
        .workers
        .into_iter()
        .map(|w| w.worker_id)
        .collect();
    assert_eq!(ids, ["worker-0", "worker-2", "http://b:1", "worker-1"]);
    pool.shutdown().await;
}

#[tokio::test]
async fn two_workers_with_one_id_are_refused_at_construction() {
    let gauge = Arc::new(Gauge::default());
    let twice = vec![
        (WorkerSpec::named("http://a:1"), gauged(&gauge)),
        (WorkerSpec::named("http://a:1"), gauged(&gauge)),
    ];
    let lanes = std::num::NonZeroUsize::new(2).expect("two lanes");
    let refused = WorkerPool::with_workers(
        TokioRuntime,
        twice,
        config(),
        None,
        DriverOptions::default().lanes(lanes),
    );
    assert!(matches!(
        refused,
        Err(BuildError::Worker(CommandError::DuplicateWorkerId(id))) if id == "http://a:1"
    ));
}

/// A handler future that counts its polls.
struct PollCounted {
    inner: std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<serde_json::Value, WorkerProtocolError>> + Send,
        >,
    >,
    polls: Arc<AtomicUsize>,
}

impl std::future::Future for PollCounted {
    type Output = Result<serde_json::Value, WorkerProtocolError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.inner.as_mut().poll(cx)
    }
}

#[tokio::test(start_paused = true)]
async fn a_worker_running_sixteen_requests_polls_each_only_when_it_is_woken() {
    const CALLERS: usize = 16;
    const ROUNDS: usize = 8;
    let polls = Arc::new(AtomicUsize::new(0));
    let handler: Arc<dyn WorkerHandler> = {
        let polls = Arc::clone(&polls);
        Arc::new(handler_fn(move |request: WorkerRequest| {
            // Each caller's requests wait on timers of their own length,
            // so the handlers are woken one (or a few) at a time.
            let id: u64 = request.request_id[1..].parse().unwrap_or(0);
            let wait = Duration::from_millis(1 + id % CALLERS as u64);
            PollCounted {
                inner: Box::pin(async move {
                    tokio::time::sleep(wait).await;
                    tokio::time::sleep(wait).await;
                    Ok(json!(null))
                }),
                polls: Arc::clone(&polls),
            }
        }))
    };
    let workers = vec![(
        WorkerSpec::named("http://remote:1").with_max_concurrency(CALLERS as u32),
        handler,
    )];
    let options = WorkerPoolOptions {
        queue_capacity: CALLERS,
        ..WorkerPoolOptions::default()
    };
    let pool = Arc::new(
        WorkerPool::with_workers(
            TokioRuntime,
            workers,
            PoolConfig::new(options),
            None,
            DriverOptions::default(),
        )
        .expect("a valid pool"),
    );
    let callers: Vec<_> = (0..CALLERS)
        .map(|id| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    pool.submit(request(id)).await.expect("answered");
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("caller");
    }
    let requests = CALLERS * ROUNDS;
    let per_request = polls.load(Ordering::Relaxed) as f64 / requests as f64;
    eprintln!("handler polls per request, 16 running on one worker: {per_request:.2}");
    // A first poll and one per timer: anything near the number running
    // means every wake-up polls every handler.
    assert!(
        per_request <= 4.0,
        "{per_request:.2} polls per request of a handler woken twice"
    );
}
