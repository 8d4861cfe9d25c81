//! foreman-smol against smol's bare channel floor, closed loop (see
//! `common/closed_loop.rs`). Run: `cargo bench -p foreman-smol --bench throughput_smol`
//! (≈30 s). Callers, floor workers and the pool's timer task run on smol's
//! global executor with two threads (`SMOL_THREADS=2`).

#[path = "common/closed_loop.rs"]
mod closed_loop;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // Read once, when the global executor starts (below, on first spawn).
    std::env::set_var("SMOL_THREADS", "2");
    smol::block_on(closed_loop::run_all::<foreman_smol::SmolRuntime>("smol 2"));
}
