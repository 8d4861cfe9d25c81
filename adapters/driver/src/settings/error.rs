//! Why settings could not be loaded: [`ConfigFileError`], and how an
//! error finds the key it names.

use std::path::PathBuf;

use foreman_core::ConfigError;
#[cfg(doc)]
use foreman_core::PoolConfig;
use thiserror::Error;

use super::{text, PoolSettings};

/// Why settings could not be loaded, naming the file, the key or both.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read the settings file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed, or a key or value does not fit the settings.
    #[error("invalid TOML settings{}: {source}", at(key))]
    Toml {
        /// The key path of the offending value (`security_policy.max_request_timeout`),
        /// empty when the error is not about one value (malformed TOML, or
        /// an unknown key at the top level, which the message names).
        key: String,
        /// The parser's error: the message and the line.
        source: toml::de::Error,
    },
    /// The JSON is malformed, or a key or value does not fit the settings.
    #[error("invalid JSON settings{}: {source}", at(key))]
    Json {
        /// The key path of the offending value, as for TOML.
        key: String,
        /// The parser's error: the message, the line and the column.
        source: serde_json::Error,
    },
    /// A value the pool cannot run with, refused by
    /// [`PoolConfig::validate`].
    #[error("{}: {source}", setting(*key, value.as_deref()))]
    Invalid {
        /// The key of the setting (`queue_capacity`), or `None` for a check
        /// the settings map to no key (the message names the field).
        key: Option<&'static str>,
        /// The value as the file writes it (`0`, `"0s"`).
        value: Option<String>,
        /// What `PoolConfig::validate` said.
        source: ConfigError,
    },
}

impl PoolSettings {
    /// The key of the setting `error` is about, and its value as the file
    /// writes it.
    pub(super) fn key_of(&self, error: &ConfigError) -> Option<(&'static str, String)> {
        Some(match error {
            ConfigError::ZeroQueueCapacity => ("queue_capacity", self.queue_capacity.to_string()),
            ConfigError::ZeroProbeInterval => (
                "health_probe_interval",
                text::quoted(self.health_probe_interval),
            ),
            ConfigError::ZeroProbeTimeout => (
                "probe_timeout",
                self.probe_timeout
                    .map_or_else(|| "\"auto\"".to_string(), text::quoted),
            ),
            ConfigError::ZeroConcurrency => (
                "max_concurrency_per_worker",
                self.max_concurrency_per_worker.to_string(),
            ),
            ConfigError::ZeroRequestDepth => {
                ("max_request_depth", self.max_request_depth.to_string())
            }
            ConfigError::ZeroRetryAttempts => (
                "retries.max_attempts",
                self.retries.max_attempts.to_string(),
            ),
            ConfigError::RetryWindowTooShort => (
                "retries.budget.window",
                text::quoted(self.retries.budget.window),
            ),
            ConfigError::InvalidRecovery { field, .. } => return self.recovery.key_of(field),
            ConfigError::InvalidHedging { field, .. } => return self.hedging.key_of(field),
            ConfigError::ZeroQueueWaitLimit => (
                "queue_wait_limit",
                text::quoted(self.queue_wait_limit.unwrap_or_default()),
            ),
            ConfigError::ZeroRunLimit => (
                "run_limit",
                text::quoted(self.run_limit.unwrap_or_default()),
            ),
            ConfigError::ZeroEwmaDecay => ("ewma_decay", text::quoted(self.ewma_decay)),
            ConfigError::ZeroUnsampledLatency => {
                ("unsampled_latency", text::quoted(self.unsampled_latency))
            }
            ConfigError::DegradedShareOutOfRange(_) => (
                "degraded_share_percent",
                self.degraded_share_percent.to_string(),
            ),
            _ => return None,
        })
    }
}

/// A key path as `serde_path_to_error` records it, empty for the whole
/// document (`"."`).
pub(super) fn key_path(path: &serde_path_to_error::Path) -> String {
    let path = path.to_string();
    if path == "." {
        String::new()
    } else {
        path
    }
}

/// ` at `key``, or nothing for no key.
fn at(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" at `{key}`")
    }
}

/// The start of an [`ConfigFileError::Invalid`] message.
fn setting(key: Option<&str>, value: Option<&str>) -> String {
    match (key, value) {
        (Some(key), Some(value)) => format!("invalid setting `{key} = {value}`"),
        _ => "invalid settings".to_string(),
    }
}
