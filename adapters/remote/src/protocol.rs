//! The wire protocol both ends share (`docs/REMOTE.md` describes it for
//! implementers in any language): routes, header names, the error body and
//! the health and stats bodies.

use foreman_core::WorkerHealthStatus;
use serde::{Deserialize, Serialize};

/// The route a `WorkerRequest` is posted to.
pub const REQUESTS_PATH: &str = "/v1/requests";
/// The route that answers the worker's health status.
pub const HEALTH_PATH: &str = "/v1/health";
/// The route that answers the server's counters (a foreman extension).
pub const STATS_PATH: &str = "/v1/stats";
/// The version prefix every route of this protocol starts with.
pub const VERSION_PREFIX: &str = "/v1/";

/// The request header carrying the request's remaining time budget, in
/// whole milliseconds (a decimal integer).
pub const DEADLINE_HEADER: &str = "foreman-deadline-ms";

/// The `Retry-After` value (seconds) a server sends with a `503`.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// The body of every error answer that is not a `WorkerResponse`:
/// `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable, machine-readable code ([`ErrorCode`]'s names).
    pub code: ErrorCode,
    /// What happened and what to do about it, for people.
    pub message: String,
}

/// The codes of an [`ErrorBody`], serialised in `snake_case`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The body is not a `WorkerRequest` in JSON (`400`).
    InvalidJson,
    /// The deadline header is not a decimal number of milliseconds (`400`).
    InvalidDeadline,
    /// The request broke the server pool's security policy (`400`).
    InvalidRequest,
    /// The body is larger than the security policy allows (`413`).
    PayloadTooLarge,
    /// No such route under `/v1/` (`404`).
    NotFound,
    /// A route of another protocol version, such as `/v2/...` (`404`).
    UnsupportedVersion,
    /// The route exists but not for this method (`405`, with `Allow`).
    MethodNotAllowed,
    /// The server cannot start the request now; it did not start it
    /// (`503`, with `Retry-After`).
    Overloaded,
    /// The server is draining: it starts nothing new (`503`, with
    /// `Retry-After`).
    Draining,
    /// Anything else that went wrong on the server (`500`).
    Internal,
    /// A code this version does not know (a newer peer's).
    #[serde(other)]
    Unknown,
}

impl ErrorBody {
    /// An error body with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}

/// The body of `GET /v1/health`: `{"status": "healthy"}`, the status in
/// the reference's `WorkerHealthStatus` serialisation (`healthy`,
/// `degraded`, `unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthBody {
    /// The worker's health.
    pub status: WorkerHealthStatus,
}

/// The body of `GET /v1/stats` (a foreman extension): the server's
/// counters of requests posted to `/v1/requests` since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsBody {
    /// Requests handed to the pool.
    pub started: u64,
    /// Requests the server answered after handing them to the pool.
    pub answered: u64,
    /// Requests whose client went away before the answer (the server
    /// dropped their pool call, and so their handler).
    pub dropped: u64,
    /// Requests answered `503` without starting them.
    pub refused: u64,
    /// Requests in the pool now.
    pub in_flight: u64,
}
