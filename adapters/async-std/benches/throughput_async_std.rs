//! foreman-async-std against async-std's bare channel floor, closed loop
//! (the harness is foreman-smol's `benches/common/closed_loop.rs`). Run:
//! `cargo bench -p foreman-async-std --bench throughput_async_std` (≈30 s).
//! Callers, floor workers and the pool's timer task run on async-std's
//! global executor with two threads (`ASYNC_STD_THREAD_COUNT=2`).

#[path = "../../smol/benches/common/closed_loop.rs"]
mod closed_loop;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // Read once, when the global executor starts (below, on first spawn).
    std::env::set_var("ASYNC_STD_THREAD_COUNT", "2");
    async_std::task::block_on(closed_loop::run_all::<foreman_async_std::AsyncStdRuntime>(
        "async-std 1.13",
    ));
}
