//! The tokio quickstart on async-std:
//! `cargo run --release -p foreman-async-std --example quickstart_async_std`.
//!
//! A pool of LLM-like and tool-like workers (one flaky, one that hangs, one
//! that panics) serving a few thousand requests from concurrent callers;
//! prints a live progress line, then throughput, latency percentiles,
//! outcomes and every health transition. The workload is
//! `foreman_support::demo`, shared with the other adapters' examples.

use foreman_async_std::AsyncStdRuntime;

#[async_std::main]
async fn main() -> Result<(), foreman_async_std::WorkerPoolError> {
    // The panicking worker panics on purpose; keep its panics to one line.
    std::panic::set_hook(Box::new(|info| eprintln!("\n(caught) {info}")));
    foreman_support::demo::run(AsyncStdRuntime, 3000, 64).await
}
