//! foreman-async-std against async-std's bare channel floor, closed loop:
//! the harness is `foreman_support::bench::ClosedLoop` (its docs describe
//! the cells and rounds; `foreman_support::bench::Knobs` lists the
//! `FOREMAN_BENCH_*` variables it reads), the floor
//! `foreman_support::bench::ChannelFloor`. Run:
//! `cargo bench -p foreman-async-std --bench throughput_async_std` (≈30 s).
//! Callers, floor workers and the pool's timer task run on async-std's
//! global executor with two threads (`ASYNC_STD_THREAD_COUNT=2`, set here).

use foreman_async_std::AsyncStdRuntime;
use foreman_support::bench::{ClosedLoop, Peer};

fn main() {
    // Read once, when the global executor starts (below, on first spawn).
    std::env::set_var("ASYNC_STD_THREAD_COUNT", "2");
    ClosedLoop::new(AsyncStdRuntime, "2 executor threads", Peer::channel_floor())
        .named("async-std 1.13")
        .main(async_std::task::block_on);
}
