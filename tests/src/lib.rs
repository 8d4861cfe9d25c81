//! foreman-tests: deterministic simulation, property tests and the shared
//! operation model that drives `foreman-core` through hostile histories.
//!
//! - [`model`]: the operation type ([`model::Op`]), the [`model::Harness`]
//!   that applies operations to a `Pool`, drains every output and checks the
//!   pool after every input. One module, used by the simulator, the proptest
//!   state machines and the fuzz targets.
//! - [`rng`]: the one seeded generator (SplitMix64) of the simulator and
//!   the fuzz crate's corpus seeds.
//! - [`sim`]: the seed-driven swarm simulator behind the `sim` binary
//!   (`cargo run --release -p foreman-tests --bin sim -- --seeds N`), and
//!   the named scenarios measured per routing policy against a
//!   clairvoyant oracle (`sim -- --scenarios-report`).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod model;
pub mod rng;
pub mod sim;
