//! Tests of the request checks, by subject.

mod depth;
mod fields;
mod size;
