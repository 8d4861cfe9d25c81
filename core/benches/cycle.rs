//! Cost of one submit → start → complete cycle of the core, across pool
//! sizes and queue depths. The target is flat cost: the largest
//! configuration within 2× of the smallest.
//!
//! Each iteration submits one request and completes one running request, so
//! the pool stays in a steady state with `queued` requests waiting. Every
//! request carries the default 30 s deadline, so the timer heap holds one
//! entry per pending request.
//!
//! The `cycle` group runs the default policy; the `policy` group runs the
//! same cycle under every routing policy at 16, 1 024 and 10 000 workers,
//! to show that each pick stays O(log n).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use foreman_core::{
    Action, Pool, PoolConfig, RequestKey, RoutingPolicy, Time, WorkerKey, WorkerOperation,
    WorkerPoolOptions, WorkerRequest,
};
use serde_json::{json, Value};

const WORKERS: [usize; 4] = [1, 64, 1024, 10_000];
const QUEUED: [usize; 3] = [0, 10_000, 100_000];
const POLICY_WORKERS: [usize; 3] = [16, 1024, 10_000];
const POLICY_QUEUED: [usize; 2] = [0, 10_000];

fn sample_request() -> WorkerRequest {
    WorkerRequest {
        request_id: "req-000001".into(),
        workflow_name: "bench".into(),
        node_id: "node-1".into(),
        timeout_ms: None,
        operation: WorkerOperation::Tool {
            tool: "echo".into(),
            input: json!({"x": 1}),
            scoped_input: Value::Null,
        },
    }
}

/// A pool in steady state plus the book-keeping to keep it there.
struct Steady {
    pool: Pool<()>,
    now: Time,
    request: WorkerRequest,
    /// The request running on each worker (index = worker order).
    running: Vec<Option<RequestKey>>,
    workers: Vec<WorkerKey>,
    next_to_complete: usize,
    /// Where a one-timer driver would have its timer (see
    /// `Pool::move_timer`, which it calls after every input).
    timer: Time,
}

impl Steady {
    fn new(workers: usize, queued: usize, routing: RoutingPolicy) -> Self {
        let per_worker = queued.div_ceil(workers).max(1) + 1;
        let options = WorkerPoolOptions {
            queue_capacity: per_worker,
            ..WorkerPoolOptions::default()
        };
        let config = PoolConfig::new(options).with_routing(routing);
        let mut pool = Pool::new(config, Time::ZERO).expect("valid config");
        let keys: Vec<WorkerKey> = (0..workers)
            .map(|_| pool.add_worker(Time::ZERO).expect("worker"))
            .collect();
        let index_of = |key: WorkerKey| keys.iter().position(|k| *k == key).expect("known worker");
        let mut steady = Steady {
            pool,
            now: Time::ZERO,
            request: sample_request(),
            running: vec![None; workers],
            workers: keys.clone(),
            next_to_complete: 0,
            timer: Time::MAX,
        };
        // One running request per worker when the queue is non-empty, then
        // `queued` waiting behind them.
        let prefill = if queued == 0 { 0 } else { workers + queued };
        for _ in 0..prefill {
            steady
                .pool
                .submit(steady.now, &steady.request, ())
                .map_err(|refused| refused.error)
                .expect("prefill fits");
        }
        while let Some(action) = steady.pool.poll_action() {
            if let Action::Start {
                request, worker, ..
            } = action
            {
                steady.running[index_of(worker)] = Some(request);
            }
        }
        while steady.pool.poll_event().is_some() {}
        steady
    }

    /// Submit one request, complete one running request, carry out the
    /// actions and move the timer, as a driver does.
    fn cycle(&mut self) {
        self.now = self.now + Duration::from_nanos(100);
        if self.timer <= self.now {
            // The driver's timer fired (under `PeakEwma`, a deferral's end).
            self.pool.handle_timeout(self.now);
            self.timer = self.pool.poll_timeout().map_or(Time::MAX, |(at, _)| at);
            self.apply_actions();
        }
        let key = self
            .pool
            .submit(self.now, &self.request, ())
            .map_err(|r| r.error);
        black_box(&key);
        self.apply_actions();
        let index = self.next_to_complete;
        self.next_to_complete = (index + 1) % self.running.len();
        if let Some(done) = self.running.get_mut(index).and_then(Option::take) {
            self.pool.handle_completion(self.now, done, Ok(Value::Null));
            self.apply_actions();
        }
        while let Some(event) = self.pool.poll_event() {
            black_box(event);
        }
    }

    fn apply_actions(&mut self) {
        if let Some(at) = self.pool.move_timer(self.timer) {
            self.timer = at;
        }
        while let Some(action) = self.pool.poll_action() {
            match action {
                Action::Start {
                    request, worker, ..
                } => {
                    // Worker keys come out in order, so the index is the
                    // slab index here.
                    let index = worker_index(&self.workers, worker);
                    if let Some(slot) = self.running.get_mut(index) {
                        *slot = Some(request);
                    }
                }
                other => {
                    black_box(other);
                }
            }
        }
    }
}

fn worker_index(workers: &[WorkerKey], key: WorkerKey) -> usize {
    // Keys of a fresh pool are dense and ordered: look up by position.
    let guess = (key.as_u64() & 0xffff_ffff) as usize;
    if workers.get(guess) == Some(&key) {
        guess
    } else {
        workers.iter().position(|k| *k == key).unwrap_or(0)
    }
}

fn bench_cycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("cycle");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(30);
    for &queued in &QUEUED {
        for &workers in &WORKERS {
            let mut steady = Steady::new(workers, queued, RoutingPolicy::default());
            let id = BenchmarkId::new(format!("queued={queued}"), format!("workers={workers}"));
            group.bench_function(id, |b| b.iter(|| steady.cycle()));
            steady.check(queued);
        }
    }
    group.finish();
}

fn bench_policies(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(30);
    for routing in RoutingPolicy::ALL {
        for &queued in &POLICY_QUEUED {
            for &workers in &POLICY_WORKERS {
                let mut steady = Steady::new(workers, queued, routing);
                let id = BenchmarkId::new(
                    format!("{routing:?}/queued={queued}"),
                    format!("workers={workers}"),
                );
                group.bench_function(id, |b| b.iter(|| steady.cycle()));
                steady.check(queued);
            }
        }
    }
    group.finish();
}

impl Steady {
    /// The pool kept its rules and its steady state.
    fn check(&self, queued: usize) {
        self.pool
            .check_invariants()
            .expect("bench kept the pool consistent");
        assert!(
            self.pool.pending() >= queued,
            "the pool stayed in steady state"
        );
    }
}

criterion_group!(benches, bench_cycle, bench_policies);
criterion_main!(benches);
