//! The tokio quickstart on async-std:
//! `cargo run --release -p foreman-async-std --example quickstart_async_std`
//! (`-- --help` lists the flags).
//!
//! A pool of LLM-like and tool-like workers (one flaky, one that hangs, one
//! that panics) serving a few thousand requests from concurrent callers;
//! shows a live progress bar, then a per-worker report and writes an SVG
//! chart of the run. The scenario is `foreman_support::demo`, shared with
//! the other adapters' examples.

use foreman_async_std::AsyncStdRuntime;
use foreman_support::demo::{self, Args, DemoError};

#[async_std::main]
async fn main() -> Result<(), DemoError> {
    demo::run(AsyncStdRuntime, &Args::from_env()).await
}
