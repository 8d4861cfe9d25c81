//! Request validation (placeholder, being written).
