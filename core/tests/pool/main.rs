//! Unit tests of the pool's rules, with explicit times: one module per
//! behaviour, on one explicit-time helper ([`harness`]).

mod admission;
mod cancellation;
mod configuration;
mod harness;
mod health;
mod hedging;
mod lane_moves;
mod phase_limits;
mod recovery;
mod retries;
mod routing;
mod saturation;
mod scheduling;
mod shutdown;
mod stats;
mod timeouts;
mod vetting;
mod workers;
