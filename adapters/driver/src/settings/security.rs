//! The `[security_policy]` section of a settings file:
//! [`SecurityPolicySettings`].

use std::time::Duration;

use foreman_core::WorkerSecurityPolicy;
use serde::{Deserialize, Serialize};

use super::text;

/// The `[security_policy]` section: [`WorkerSecurityPolicy`] with its
/// timeout written as a duration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SecurityPolicySettings {
    /// Largest `timeout_ms` a request may ask for
    /// ([`WorkerSecurityPolicy::max_request_timeout_ms`]); a file gives a
    /// whole number of milliseconds, and a value built in code is counted
    /// in whole milliseconds (rounded down).
    #[serde(
        serialize_with = "text::write_duration",
        deserialize_with = "text::read_millis"
    )]
    pub max_request_timeout: Duration,
    /// Largest serialised size of a request, in bytes.
    pub max_request_payload_bytes: usize,
    /// Longest `request_id`, `workflow_name` or `node_id`, in bytes.
    pub max_identifier_length: usize,
}

impl Default for SecurityPolicySettings {
    fn default() -> Self {
        let policy = WorkerSecurityPolicy::default();
        SecurityPolicySettings {
            max_request_timeout: Duration::from_millis(policy.max_request_timeout_ms),
            max_request_payload_bytes: policy.max_request_payload_bytes,
            max_identifier_length: policy.max_identifier_length,
        }
    }
}
