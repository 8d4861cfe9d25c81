//! Memory per queued request of foreman-tokio, measured with a counting
//! global allocator (kept out of the throughput bench, where the allocator's
//! shared counter would skew the timings).
//!
//! Run: `cargo bench -p foreman-tokio --bench memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use foreman_support::bench::bench_request;
use foreman_tokio::{
    async_trait, WorkerHandler, WorkerPool, WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
};
use serde_json::Value;

struct Counting;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn memory_per_queued_request(rt: &tokio::runtime::Runtime) {
    const QUEUED: usize = 10_000;
    struct Gate(tokio::sync::Semaphore);
    #[async_trait]
    impl WorkerHandler for Gate {
        async fn handle(&self, _request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
            let _ = self.0.acquire().await;
            Ok(Value::Null)
        }
    }
    rt.block_on(async {
        let gate = Arc::new(Gate(tokio::sync::Semaphore::new(0)));
        let pool = Arc::new(
            WorkerPool::new_inprocess(
                vec![Arc::clone(&gate) as Arc<dyn WorkerHandler>],
                WorkerPoolOptions { queue_capacity: QUEUED + 1, ..WorkerPoolOptions::default() },
                None,
            )
            .expect("pool"),
        );
        // Warm the core's slabs and maps to this size once.
        let requests: Vec<_> = (0..=QUEUED).map(|_| bench_request()).collect();
        let baseline_futures: Vec<_> = requests
            .iter()
            .map(|r| {
                let pool = Arc::clone(&pool);
                let r = r.clone();
                Box::pin(async move { pool.submit(r).await })
            })
            .collect();
        let future_size = std::mem::size_of_val(&*baseline_futures[0]);
        let before = ALLOCATED.load(Ordering::Relaxed);
        let mut handles = Vec::new();
        for future in baseline_futures {
            handles.push(tokio::spawn(future));
        }
        while pool.stats().queued < QUEUED {
            tokio::task::yield_now().await;
        }
        let after = ALLOCATED.load(Ordering::Relaxed);
        let per_request = (after - before) as f64 / QUEUED as f64;
        println!(
            "memory per queued request: {per_request:.0} bytes of heap beyond the caller's own boxed submit future \
             (that future: {future_size} bytes; the WorkerRequest waits in the pool's slot)"
        );
        gate.0.add_permits(QUEUED + 1);
        for handle in handles {
            let _ = handle.await;
        }
        pool.shutdown().await;
    });
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    memory_per_queued_request(&rt);
}
