//! The tokio quickstart on smol:
//! `cargo run --release -p foreman-smol --example quickstart_smol`
//! (`-- --help` lists the flags).
//!
//! A pool of LLM-like and tool-like workers (one flaky, one that hangs, one
//! that panics) serving a few thousand requests from concurrent callers;
//! shows a live progress bar, then a per-worker report and writes an SVG
//! chart of the run. The scenario is `foreman_support::demo`, shared with
//! the other adapters' examples; its callers run on smol's global executor.

use foreman_smol::SmolRuntime;
use foreman_support::demo::{self, Args, DemoError};

fn main() -> Result<(), DemoError> {
    smol::block_on(demo::run(SmolRuntime, &Args::from_env()))
}
