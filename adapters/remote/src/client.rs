//! The client side of the remote protocol (see docs/REMOTE.md).
