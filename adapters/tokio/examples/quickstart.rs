//! The README's first command: `cargo run --release --example quickstart`
//! (`-- --help` lists the flags: workers, callers, requests, routing, seed,
//! where the chart goes).
//!
//! A pool of LLM-like and tool-like workers (one flaky, one that hangs, one
//! that panics) serving a few thousand requests from concurrent callers;
//! shows a live progress bar, then a per-worker report (outcomes, run-time
//! percentiles, time in each health state) and writes an SVG chart of the
//! run. The scenario lives in `foreman_support::demo`, shared with the
//! other adapters' examples.

use foreman_support::demo::{self, Args, DemoError};
use foreman_tokio::TokioRuntime;

#[tokio::main]
async fn main() -> Result<(), DemoError> {
    demo::run(TokioRuntime, &Args::from_env()).await
}
