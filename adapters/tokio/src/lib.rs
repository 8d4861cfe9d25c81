//! foreman-tokio: adapter driving foreman-core (under construction).
#![deny(missing_docs)]

pub use foreman_core::*;
