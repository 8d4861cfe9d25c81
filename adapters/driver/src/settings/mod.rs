//! Settings files (the `config` feature): [`PoolSettings`], its loaders,
//! its errors and [`WorkerPool::from_settings`].
//!
//! This file holds [`PoolSettings`], its loaders and checks; each section
//! (`[retries]`, `[hedging]`, `[recovery]`, `[security_policy]`, `[driver]`) and the
//! errors have a file beside it.

mod driver;
mod error;
mod hedging;
mod recovery;
mod retries;
mod security;
mod text;

pub use driver::DriverSettings;
pub use error::ConfigFileError;
pub use hedging::HedgeSettings;
pub use recovery::{RecoveryName, RecoverySettings};
pub use retries::{RetryBudgetSettings, RetrySettings};
pub use security::SecurityPolicySettings;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[cfg(doc)]
use foreman_core::OutlierDetection;
use foreman_core::{PoolConfig, RoutingPolicy, WorkerPoolOptions, WorkerSecurityPolicy};
use serde::{Deserialize, Serialize};

use crate::handler::{CircuitBreakerHooks, WorkerHandler};
use crate::pool::WorkerPool;
use crate::runtime::Runtime;
use crate::types::{BuildError, DriverOptions, HookRole};
#[cfg(doc)]
use crate::worker::ExecutionMode;
use error::key_path;

/// Every option of a pool as a settings file holds it (the `config`
/// feature), read from TOML or JSON and checked by the check the pool's
/// constructors run, with errors that name the key.
///
/// A file holds the reference's options ([`WorkerPoolOptions`] at the top
/// level, its [`WorkerSecurityPolicy`] as `[security_policy]`), foreman's
/// tuning ([`PoolConfig`], at the top level) and the driver's
/// [`DriverOptions`] (`[driver]`), each key named after the field it sets.
/// Every key may be left out: [`PoolSettings::default()`] is the code's
/// defaults, and so is an empty file. A key the settings do not have is an
/// error. `examples/foreman.toml` at the workspace root lists every key
/// with its meaning and default.
///
/// Where a key differs from the field it sets:
///
/// | key | field | written |
/// |---|---|---|
/// | `health_probe_interval`, `probe_timeout` | the same | `"5s"`; `probe_timeout = "auto"`: the probe interval capped at 5 s, as [`PoolConfig::new`] derives it |
/// | `default_request_timeout` | the same | `"30s"`, or `false` for no default timeout (`None`) |
/// | `queue_wait_limit`, `run_limit` | the same | `"250ms"`, or `false` (the default) for no limit (`None`) |
/// | `security_policy.max_request_timeout` | `max_request_timeout_ms` | `"2m"`, a whole number of milliseconds |
/// | `routing` | [`RoutingPolicy`] | `"idle_first"`, `"round_robin"`, `"least_loaded"` or `"peak_ewma"` |
/// | `recovery.policy` | [`PoolConfig::recovery`] | `"reference"` or `"outlier_detection"`; the other `[recovery]` keys set [`OutlierDetection`]'s fields (`panic_mode`: `"route_to_all"` or `"fail_fast"`; `counted`: a list of error codes, `["execution_failed", "timeout"]`) and apply only under `"outlier_detection"` |
/// | `driver.execution` | [`ExecutionMode`] | `"pool_tasks"` or `"caller_task"` |
/// | `retries.enabled` | [`PoolConfig::retries`] | `false` for `None`; `true` for the policy the other `retries` keys give |
/// | `hedging.enabled` | [`PoolConfig::hedging`] | `false` for `None`; `true` for the policy the other `hedging` keys give (`delay`: `"300ms"`, or a percentile of run times, `"p95"`) |
///
/// Durations are parsed and printed by `humantime`: `"250ms"`, `"30s"`,
/// `"1h 30m"` (units `ns`, `us`, `ms`, `s`, `m`, `h`, `d`, `w` and their
/// long forms). Sizes are integers in bytes (TOML allows `262_144`).
///
/// ```
/// use foreman_driver::{PoolSettings, Runtime, WorkerHandler, WorkerPool};
/// use std::sync::Arc;
///
/// // One call loads and checks a file; one more builds the pool.
/// fn pool_from_file<R: Runtime>(
///     runtime: R,
///     handlers: Vec<Arc<dyn WorkerHandler>>,
/// ) -> Result<WorkerPool<R>, Box<dyn std::error::Error>> {
///     let settings = PoolSettings::from_toml_file("foreman.toml")?;
///     Ok(WorkerPool::from_settings(runtime, handlers, &settings, None)?)
/// }
///
/// let settings = PoolSettings::from_toml_str(
///     r#"
///     queue_capacity = 16
///     default_request_timeout = "10s"
///
///     [driver]
///     lanes = 2
///     "#,
/// )?;
/// let (config, driver) = settings.to_parts();
/// assert_eq!(config.options.queue_capacity, 16);
/// assert_eq!(config.options.default_request_timeout, Some(std::time::Duration::from_secs(10)));
/// assert_eq!(driver.lanes.get(), 2);
///
/// let error = PoolSettings::from_toml_str("queue_capacity = 0").unwrap_err();
/// assert!(error.to_string().contains("`queue_capacity = 0`"), "{error}");
/// # Ok::<(), foreman_driver::ConfigFileError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PoolSettings {
    /// Requests that may wait in each worker's queue
    /// ([`WorkerPoolOptions::queue_capacity`]; at least 1).
    pub queue_capacity: usize,
    /// Time between two health probes of a worker
    /// ([`WorkerPoolOptions::health_probe_interval`]; non-zero).
    #[serde(
        serialize_with = "text::write_duration",
        deserialize_with = "text::read_duration"
    )]
    pub health_probe_interval: Duration,
    /// Consecutive failures that make a worker unavailable (0 acts as 1).
    pub unavailable_after_failures: u32,
    /// Time budget of a request that sets no `timeout_ms`; `None` (written
    /// `false`) means no budget.
    #[serde(
        serialize_with = "text::write_duration_or_false",
        deserialize_with = "text::read_duration_or_false"
    )]
    pub default_request_timeout: Option<Duration>,
    /// How long a health probe may take ([`PoolConfig::probe_timeout`]);
    /// `None` (written `"auto"`) derives it as [`PoolConfig::new`] does:
    /// the probe interval, capped at 5 s.
    #[serde(
        serialize_with = "text::write_duration_or_auto",
        deserialize_with = "text::read_duration_or_auto"
    )]
    pub probe_timeout: Option<Duration>,
    /// Requests one worker runs at the same time (at least 1).
    pub max_concurrency_per_worker: u32,
    /// How requests are spread over workers.
    #[serde(with = "text::named")]
    pub routing: RoutingPolicy,
    /// Whether a queued request may run on whichever worker frees first
    /// ([`PoolConfig::late_binding`]; a pool with circuit-breaker hooks
    /// turns it off).
    pub late_binding: bool,
    /// The deepest nesting of arrays and objects in a request's JSON
    /// values ([`PoolConfig::max_request_depth`]; at least 1).
    pub max_request_depth: usize,
    /// The seed of the core's random choices ([`PoolConfig::seed`]).
    pub seed: u64,
    /// Whether and how failed requests run again (`[retries]`;
    /// [`PoolConfig::retries`]).
    pub retries: RetrySettings,
    /// Whether and when running requests get a second attempt on another
    /// worker (`[hedging]`; [`PoolConfig::hedging`]).
    pub hedging: HedgeSettings,
    /// How long a request may wait for a worker unless it sets its own
    /// limit ([`PoolConfig::queue_wait_limit`]); `None` (written `false`)
    /// sets no limit.
    #[serde(
        serialize_with = "text::write_duration_or_false",
        deserialize_with = "text::read_duration_or_false"
    )]
    pub queue_wait_limit: Option<Duration>,
    /// How long a request's handler may run unless the request sets its
    /// own limit ([`PoolConfig::run_limit`]); `None` (written `false`) sets
    /// no limit.
    #[serde(
        serialize_with = "text::write_duration_or_false",
        deserialize_with = "text::read_duration_or_false"
    )]
    pub run_limit: Option<Duration>,
    /// The time constant of the peak-EWMA latency estimate
    /// ([`PoolConfig::ewma_decay`]; non-zero).
    #[serde(
        serialize_with = "text::write_duration",
        deserialize_with = "text::read_duration"
    )]
    pub ewma_decay: Duration,
    /// The run time assumed of a worker with no sample yet
    /// ([`PoolConfig::unsampled_latency`]; non-zero).
    #[serde(
        serialize_with = "text::write_duration",
        deserialize_with = "text::read_duration"
    )]
    pub unsampled_latency: Duration,
    /// The share of a Healthy worker's traffic a Degraded one gets under
    /// the load-aware policies, in percent
    /// ([`PoolConfig::degraded_share_percent`]; 1..=100).
    pub degraded_share_percent: u32,
    /// The limits every request must respect (`[security_policy]`).
    pub security_policy: SecurityPolicySettings,
    /// The per-worker recovery state machine (`[recovery]`).
    pub recovery: RecoverySettings,
    /// The driver's own options (`[driver]`).
    pub driver: DriverSettings,
}

impl Default for PoolSettings {
    fn default() -> Self {
        let config = PoolConfig::default();
        let options = config.options;
        PoolSettings {
            queue_capacity: options.queue_capacity,
            health_probe_interval: options.health_probe_interval,
            unavailable_after_failures: options.unavailable_after_failures,
            default_request_timeout: options.default_request_timeout,
            probe_timeout: None,
            max_concurrency_per_worker: config.max_concurrency_per_worker,
            routing: config.routing,
            late_binding: config.late_binding,
            max_request_depth: config.max_request_depth,
            seed: config.seed,
            retries: RetrySettings::from_policy(config.retries),
            hedging: HedgeSettings::from_policy(config.hedging),
            queue_wait_limit: config.queue_wait_limit,
            run_limit: config.run_limit,
            ewma_decay: config.ewma_decay,
            unsampled_latency: config.unsampled_latency,
            degraded_share_percent: config.degraded_share_percent,
            security_policy: SecurityPolicySettings::default(),
            recovery: RecoverySettings::default(),
            driver: DriverSettings::default(),
        }
    }
}

impl PoolSettings {
    /// Reads, parses and checks a TOML settings file.
    ///
    /// # Errors
    /// [`ConfigFileError::Io`] naming the path when the file cannot be
    /// read; otherwise as [`from_toml_str`](Self::from_toml_str).
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ConfigFileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Parses and checks TOML settings.
    ///
    /// # Errors
    /// [`ConfigFileError::Toml`] naming the key (and the line) of a value
    /// that is not TOML, has the wrong type, is not a duration, or of a key
    /// the settings do not have; [`ConfigFileError::Invalid`] naming the key
    /// of a value the pool cannot run with (see [`validate`](Self::validate)).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigFileError> {
        let settings: Self = toml::Deserializer::parse(text)
            .map_err(|source| ConfigFileError::Toml {
                key: String::new(),
                source,
            })
            .and_then(|document| {
                serde_path_to_error::deserialize(document).map_err(|error| ConfigFileError::Toml {
                    key: key_path(error.path()),
                    source: error.into_inner(),
                })
            })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Parses and checks JSON settings: the same keys and values as TOML,
    /// sections as objects (`{"driver": {"lanes": 2}}`).
    ///
    /// # Errors
    /// [`ConfigFileError::Json`] naming the key (and the line) of a value
    /// that is not JSON, has the wrong type, is not a duration, or of a key
    /// the settings do not have; [`ConfigFileError::Invalid`] as for TOML.
    pub fn from_json_str(text: &str) -> Result<Self, ConfigFileError> {
        let mut document = serde_json::Deserializer::from_str(text);
        let settings: Self = serde_path_to_error::deserialize(&mut document).map_err(|error| {
            ConfigFileError::Json {
                key: key_path(error.path()),
                source: error.into_inner(),
            }
        })?;
        document.end().map_err(|source| ConfigFileError::Json {
            key: String::new(),
            source,
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// The core's configuration and the driver's options these settings
    /// stand for (what [`WorkerPool::with_driver_options`] takes), without
    /// checking them.
    pub fn to_parts(&self) -> (PoolConfig, DriverOptions) {
        let max_request_timeout_ms =
            u64::try_from(self.security_policy.max_request_timeout.as_millis()).unwrap_or(u64::MAX);
        let options = WorkerPoolOptions {
            queue_capacity: self.queue_capacity,
            health_probe_interval: self.health_probe_interval,
            unavailable_after_failures: self.unavailable_after_failures,
            default_request_timeout: self.default_request_timeout,
            security_policy: WorkerSecurityPolicy {
                max_request_timeout_ms,
                max_request_payload_bytes: self.security_policy.max_request_payload_bytes,
                max_identifier_length: self.security_policy.max_identifier_length,
            },
        };
        let derived = PoolConfig::new(options);
        let probe_timeout = self.probe_timeout.unwrap_or(derived.probe_timeout);
        let config = derived
            .with_probe_timeout(probe_timeout)
            .with_max_concurrency_per_worker(self.max_concurrency_per_worker)
            .with_routing(self.routing)
            .with_late_binding(self.late_binding)
            .with_max_request_depth(self.max_request_depth)
            .with_seed(self.seed)
            .with_retries(self.retries.to_policy())
            .with_hedging(self.hedging.to_policy())
            .with_recovery(self.recovery.to_policy())
            .with_queue_wait_limit(self.queue_wait_limit)
            .with_run_limit(self.run_limit)
            .with_ewma_decay(self.ewma_decay)
            .with_unsampled_latency(self.unsampled_latency)
            .with_degraded_share_percent(self.degraded_share_percent);
        let driver = DriverOptions::default()
            .execution(self.driver.execution)
            .lanes(self.driver.lanes);
        (config, driver)
    }

    /// Runs [`PoolConfig::validate`], the check every pool constructor
    /// runs, on these settings.
    ///
    /// # Errors
    /// [`ConfigFileError::Invalid`] naming the key and value it refuses
    /// (`queue_capacity = 0`).
    pub fn validate(&self) -> Result<(), ConfigFileError> {
        let (config, _) = self.to_parts();
        config.validate().map_err(|source| {
            let (key, value) = self.key_of(&source).unzip();
            ConfigFileError::Invalid { key, value, source }
        })
    }
}

impl<R: Runtime> WorkerPool<R> {
    /// Creates a pool from settings: [`PoolSettings::to_parts`], then
    /// [`with_driver_options`](Self::with_driver_options). As with
    /// `new_inprocess`, a pool given `hooks` runs each request on the
    /// worker its circuit breaker approved (late binding off); the
    /// settings' driver options are [`HookRole::CircuitBreaker`] (a
    /// settings file has no key for it), so for hooks that only observe
    /// call `with_driver_options` with `settings.to_parts()` and
    /// [`HookRole::ObserveOnly`].
    ///
    /// # Errors
    /// [`BuildError`] when there is no handler, the settings are invalid
    /// (settings read with [`PoolSettings::from_toml_file`] and the other
    /// loaders were checked already), or the runtime cannot spawn tasks
    /// here.
    pub fn from_settings(
        runtime: R,
        handlers: Vec<Arc<dyn WorkerHandler>>,
        settings: &PoolSettings,
        hooks: Option<Arc<dyn CircuitBreakerHooks>>,
    ) -> Result<Self, BuildError> {
        let (config, driver) = settings.to_parts();
        let breaker = hooks.is_some() && driver.hooks == HookRole::CircuitBreaker;
        let config = config.vetted_by_breaker(breaker);
        Self::with_driver_options(runtime, handlers, config, hooks, driver)
    }
}
