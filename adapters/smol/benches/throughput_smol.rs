//! foreman-smol against smol's bare channel floor, closed loop: the harness
//! is `foreman_support::bench::ClosedLoop` (its docs describe the cells and
//! rounds; `foreman_support::bench::Knobs` lists the `FOREMAN_BENCH_*`
//! variables it reads), the floor `foreman_support::bench::ChannelFloor`.
//! Run: `cargo bench -p foreman-smol --bench throughput_smol` (≈30 s).
//! Callers, floor workers and the pool's timer task run on smol's global
//! executor with two threads (`SMOL_THREADS=2`, set here).

use foreman_smol::SmolRuntime;
use foreman_support::bench::{ClosedLoop, Peer};

fn main() {
    // Read once, when the global executor starts (below, on first spawn).
    std::env::set_var("SMOL_THREADS", "2");
    ClosedLoop::new(SmolRuntime, "2 executor threads", Peer::channel_floor())
        .named("smol 2")
        .main(smol::block_on);
}
