//! The README's first command: `cargo run --release --example quickstart`.
//!
//! A pool of LLM-like and tool-like workers (one flaky, one that hangs, one
//! that panics) serving a few thousand requests from concurrent callers;
//! prints a live progress line, then throughput, latency percentiles,
//! outcomes and every health transition. The workload lives in
//! `foreman_support::demo`, shared with the other adapters' examples.

use foreman_tokio::TokioRuntime;

#[tokio::main]
async fn main() -> Result<(), foreman_tokio::WorkerPoolError> {
    // The panicking worker panics on purpose; keep its panics to one line.
    std::panic::set_hook(Box::new(|info| eprintln!("\n(caught) {info}")));
    foreman_support::demo::run(TokioRuntime, 3000, 64).await
}
