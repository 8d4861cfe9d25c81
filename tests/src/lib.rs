//! foreman-tests: simulation and property tests for foreman (under construction).
#![deny(missing_docs)]
