//! Harnesses of foreman's fuzz targets, as plain functions.
//!
//! Each `fuzz_targets/<name>.rs` binary only forwards libFuzzer's bytes to the
//! function of the same name here, so the same code runs under cargo-fuzz and
//! under a plain `cargo test` on stable, which replays every committed corpus
//! file (`tests/replay.rs`).
//!
//! - [`protocol`]: bytes → JSON → every wire type → validation → JSON again.
//! - [`config`]: bytes → a configuration (edge values favoured) → `Pool::new`
//!   → a short operation sequence on any accepted configuration.
//! - [`core_ops`]: bytes → a sequence of core inputs on a pool, invariants
//!   checked after each one.
//!
//! Both `config` and `core_ops` drive the pool through the operation model
//! of `foreman-tests` (`foreman_tests::model`: the [`Op`](foreman_tests::model::Op)s
//! and the checking `Harness` the simulator and the proptests use), not a
//! driver of their own.
//!
//! A broken property panics (libFuzzer reports it as a crash).

#![forbid(unsafe_code)]

mod config;
mod core_ops;
mod protocol;

pub use config::{config, config_outcome, decode_config, END_OF_TIME};
pub use core_ops::{core_ops, core_ops_outcome, Outcome};
pub use protocol::{json_depth, protocol, MAX_PROTOCOL_INPUT};
