//! The server side of the remote protocol (see docs/REMOTE.md).
