//! The tokio quickstart on smol:
//! `cargo run --release -p foreman-smol --example quickstart_smol`.
//!
//! A pool of LLM-like and tool-like workers (one flaky, one that hangs, one
//! that panics) serving a few thousand requests from concurrent callers;
//! prints a live progress line, then throughput, latency percentiles,
//! outcomes and every health transition. The workload is
//! `foreman_support::demo`, shared with the other adapters' examples; its
//! callers run on smol's global executor.

use foreman_smol::SmolRuntime;

fn main() -> Result<(), foreman_smol::WorkerPoolError> {
    // The panicking worker panics on purpose; keep its panics to one line.
    std::panic::set_hook(Box::new(|info| eprintln!("\n(caught) {info}")));
    smol::block_on(foreman_support::demo::run(SmolRuntime, 3000, 64))
}
