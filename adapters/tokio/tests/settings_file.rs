//! Settings files (`PoolSettings`, the `config` feature, enabled here by
//! the dev-dependency on foreman-driver): the example file
//! at the workspace root is exactly the defaults and lists every key, the
//! settings round-trip through TOML and read the same from JSON, each key
//! reaches the pool, and a pool built from settings runs with them. A bad
//! file is refused in `settings_refused.rs`.

mod settings_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foreman_tokio::{
    async_trait, BuildError, CircuitBreakerHooks, ConfigFileError, DriverOptions, ExecutionMode,
    FailureClasses, HedgeDelay, HedgePolicy, OutlierDetection, PanicMode, PoolConfig, PoolSettings,
    RecoveryPolicy, RoutingPolicy, TokioRuntime, WorkerErrorCode, WorkerHandler, WorkerOperation,
    WorkerPool, WorkerPoolError, WorkerProtocolError, WorkerRequest, WorkerResult,
};
use serde_json::{json, Value};

use settings_support::{assert_contains, example_path};

/// Settings with every value changed from its default, as TOML.
const CHANGED_TOML: &str = r#"
queue_capacity = 7
health_probe_interval = "1m 30s"
unavailable_after_failures = 5
default_request_timeout = false
probe_timeout = "750ms"
max_concurrency_per_worker = 3
routing = "round_robin"
late_binding = false
max_request_depth = 16
seed = 7
queue_wait_limit = "250ms"
run_limit = "2s"
ewma_decay = "30s"
unsampled_latency = "250ms"
degraded_share_percent = 25

[retries]
enabled = true
max_attempts = 3
llm = false
tools = true

[retries.budget]
window = "30s"
share_percent = 5
reserve_per_second = 0

[hedging]
enabled = true
delay = "p99.5"
max_hedges = 2
llm = false
tools = true

[recovery]
policy = "outlier_detection"
consecutive_failures = 3
window = 30
min_volume = 12
failure_rate_percent = 40
base_ejection = "2s"
max_ejection = "30s"
jitter_permille = 50
decay_after = "2m"
trial_permits = 2
success_threshold = 3
max_ejected_percent = 30
panic_mode = "fail_fast"
counted = ["execution_failed"]

[security_policy]
max_request_timeout = "10s 500ms"
max_request_payload_bytes = 1_024
max_identifier_length = 32

[driver]
execution = "caller_task"
lanes = 4
"#;

/// The same settings as JSON.
const CHANGED_JSON: &str = r#"{
    "queue_capacity": 7,
    "health_probe_interval": "90s",
    "unavailable_after_failures": 5,
    "default_request_timeout": null,
    "probe_timeout": "750ms",
    "max_concurrency_per_worker": 3,
    "routing": "round_robin",
    "late_binding": false,
    "max_request_depth": 16,
    "seed": 7,
    "retries": {
        "enabled": true,
        "max_attempts": 3,
        "llm": false,
        "tools": true,
        "budget": { "window": "30s", "share_percent": 5, "reserve_per_second": 0 }
    },
    "hedging": {
        "enabled": true,
        "delay": "p99.5",
        "max_hedges": 2,
        "llm": false,
        "tools": true
    },
    "recovery": {
        "policy": "outlier_detection",
        "consecutive_failures": 3,
        "window": 30,
        "min_volume": 12,
        "failure_rate_percent": 40,
        "base_ejection": "2s",
        "max_ejection": "30s",
        "jitter_permille": 50,
        "decay_after": "120s",
        "trial_permits": 2,
        "success_threshold": 3,
        "max_ejected_percent": 30,
        "panic_mode": "fail_fast",
        "counted": ["execution_failed"]
    },
    "queue_wait_limit": "250ms",
    "run_limit": "2s",
    "ewma_decay": "30s",
    "unsampled_latency": "250ms",
    "degraded_share_percent": 25,
    "security_policy": {
        "max_request_timeout": "10500ms",
        "max_request_payload_bytes": 1024,
        "max_identifier_length": 32
    },
    "driver": { "execution": "caller_task", "lanes": 4 }
}"#;

fn changed() -> PoolSettings {
    PoolSettings::from_toml_str(CHANGED_TOML).expect("the changed settings load")
}

/// Every key of `table` as a dotted path, sections included, sorted.
fn key_paths(table: &toml::Table, prefix: &str, paths: &mut Vec<String>) {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        if let toml::Value::Table(section) = value {
            key_paths(section, &format!("{path}."), paths);
        }
        paths.push(path);
    }
    paths.sort();
}

fn keys_of(table: &toml::Table) -> Vec<String> {
    let mut paths = Vec::new();
    key_paths(table, "", &mut paths);
    paths
}

#[test]
fn the_example_file_holds_exactly_the_defaults() {
    let settings = PoolSettings::from_toml_file(example_path()).expect("the example file loads");
    assert_eq!(settings, PoolSettings::default());
}

#[test]
fn the_default_settings_are_the_codes_defaults() {
    assert_eq!(
        PoolSettings::default().to_parts(),
        (PoolConfig::default(), DriverOptions::default())
    );
    assert_eq!(
        PoolSettings::from_toml_str("").expect("an empty file loads"),
        PoolSettings::default()
    );
    assert_eq!(
        PoolSettings::from_json_str("{}").expect("empty JSON settings load"),
        PoolSettings::default()
    );
}

#[test]
fn the_example_file_has_every_key_and_no_other() {
    let text = std::fs::read_to_string(example_path()).expect("the example file is readable");
    let example: toml::Table = toml::from_str(&text).expect("the example is TOML");
    let defaults = toml::Table::try_from(PoolSettings::default()).expect("the defaults serialize");
    let keys = keys_of(&defaults);
    assert!(keys.contains(&"driver.lanes".to_string()), "{keys:?}");
    assert!(
        keys.contains(&"security_policy.max_request_timeout".to_string()),
        "{keys:?}"
    );
    assert_eq!(keys_of(&example), keys);
}

#[test]
fn the_defaults_and_changed_settings_survive_a_round_trip_through_toml() {
    for settings in [PoolSettings::default(), changed()] {
        let text = toml::to_string(&settings).expect("the settings serialize");
        assert_eq!(
            PoolSettings::from_toml_str(&text).expect("the written settings load"),
            settings,
            "{text}"
        );
    }
    let text = toml::to_string(&PoolSettings::default()).expect("the defaults serialize");
    assert_contains(
        &text,
        &[
            "health_probe_interval = \"5s\"",
            "default_request_timeout = \"30s\"",
            "probe_timeout = \"auto\"",
            "routing = \"idle_first\"",
            "max_request_timeout = \"2m\"",
            "execution = \"pool_tasks\"",
        ],
    );
    let text = toml::to_string(&changed()).expect("the settings serialize");
    assert_contains(
        &text,
        &[
            "default_request_timeout = false",
            "queue_wait_limit = \"250ms\"",
            "run_limit = \"2s\"",
            "max_request_timeout = \"10s 500ms\"",
        ],
    );
}

#[test]
fn json_settings_read_the_same_as_toml() {
    let settings = changed();
    assert_ne!(settings, PoolSettings::default());
    assert_eq!(
        PoolSettings::from_json_str(CHANGED_JSON).expect("the JSON settings load"),
        settings
    );
    let written = serde_json::to_string(&settings).expect("the settings serialize");
    assert_eq!(
        PoolSettings::from_json_str(&written).expect("the written JSON loads"),
        settings
    );
    let off = PoolSettings::from_json_str(r#"{"default_request_timeout": false}"#)
        .expect("false is no timeout");
    assert_eq!(off.default_request_timeout, None);
}

#[test]
fn every_setting_reaches_the_pool_configuration() {
    let (config, driver) = changed().to_parts();
    let options = &config.options;
    assert_eq!(options.queue_capacity, 7);
    assert_eq!(options.health_probe_interval, Duration::from_secs(90));
    assert_eq!(options.unavailable_after_failures, 5);
    assert_eq!(options.default_request_timeout, None);
    assert_eq!(options.security_policy.max_request_timeout_ms, 10_500);
    assert_eq!(options.security_policy.max_request_payload_bytes, 1024);
    assert_eq!(options.security_policy.max_identifier_length, 32);
    assert_eq!(config.probe_timeout, Duration::from_millis(750));
    assert_eq!(config.max_concurrency_per_worker, 3);
    assert_eq!(config.routing, RoutingPolicy::RoundRobin);
    assert!(!config.late_binding);
    assert_eq!(config.max_request_depth, 16);
    assert_eq!(config.seed, 7);
    let retries = config.retries.expect("retries enabled");
    assert_eq!(
        (retries.max_attempts, retries.llm, retries.tools),
        (3, false, true)
    );
    assert_eq!(retries.budget.window, Duration::from_secs(30));
    assert_eq!(
        (
            retries.budget.share_percent,
            retries.budget.reserve_per_second
        ),
        (5, 0)
    );
    assert_eq!(
        config.hedging,
        Some(
            HedgePolicy::default()
                .with_delay(HedgeDelay::RunTimePercentile(995))
                .with_max_hedges(2)
                .with_llm(false)
                .with_tools(true)
        )
    );
    assert_eq!(
        config.recovery,
        RecoveryPolicy::OutlierDetection(
            OutlierDetection::default()
                .with_consecutive_failures(3)
                .with_window(30)
                .with_min_volume(12)
                .with_failure_rate_percent(40)
                .with_base_ejection(Duration::from_secs(2))
                .with_max_ejection(Duration::from_secs(30))
                .with_jitter_permille(50)
                .with_decay_after(Duration::from_secs(120))
                .with_trial_permits(2)
                .with_success_threshold(3)
                .with_max_ejected_percent(30)
                .with_panic_mode(PanicMode::FailFast)
                .with_counted(FailureClasses::NONE.with(WorkerErrorCode::ExecutionFailed))
        )
    );
    assert_eq!(config.ewma_decay, Duration::from_secs(30));
    assert_eq!(config.unsampled_latency, Duration::from_millis(250));
    assert_eq!(config.degraded_share_percent, 25);
    assert_eq!(config.unix_epoch_ms, 0);
    assert_eq!(config.queue_wait_limit, Some(Duration::from_millis(250)));
    assert_eq!(config.run_limit, Some(Duration::from_secs(2)));
    assert_eq!(driver.execution, ExecutionMode::CallerTask);
    assert_eq!(driver.lanes.get(), 4);
}

#[test]
fn an_automatic_probe_timeout_is_the_probe_interval_capped_at_five_seconds() {
    for (interval, probe_timeout) in [("2s", 2), ("5s", 5), ("1m", 5)] {
        let settings =
            PoolSettings::from_toml_str(&format!("health_probe_interval = {interval:?}"))
                .expect("an interval loads");
        assert_eq!(settings.probe_timeout, None);
        assert_eq!(
            settings.to_parts().0.probe_timeout,
            Duration::from_secs(probe_timeout),
            "{interval}"
        );
    }
}
/// Sleeps for the request's `input.ms` milliseconds, then answers.
struct Sleeper;

#[async_trait]
impl WorkerHandler for Sleeper {
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        if let WorkerOperation::Tool { input, .. } = &request.operation {
            let ms = input.get("ms").and_then(Value::as_u64).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Ok(json!({ "done": request.request_id }))
    }
}

fn sleep_for(id: &str, ms: u64) -> WorkerRequest {
    WorkerRequest {
        request_id: id.into(),
        workflow_name: "settings".into(),
        node_id: "node".into(),
        timeout_ms: None,
        operation: WorkerOperation::Tool {
            tool: "sleep".into(),
            input: json!({ "ms": ms }),
            scoped_input: json!({}),
        },
    }
}

#[tokio::test(start_paused = true)]
async fn a_pool_built_from_settings_runs_with_them() {
    let settings = PoolSettings::from_toml_str(
        "default_request_timeout = \"1s\"\nmax_request_depth = 1\n[driver]\nlanes = 2",
    )
    .expect("the settings load");
    let handlers: Vec<Arc<dyn WorkerHandler>> = vec![Arc::new(Sleeper), Arc::new(Sleeper)];
    let pool = WorkerPool::from_settings(TokioRuntime, handlers, &settings, None)
        .expect("the pool builds");
    assert_eq!(pool.health_snapshot().await.len(), 2);

    let answer = pool.submit(sleep_for("quick", 10)).await.expect("answered");
    assert_eq!(
        answer.result,
        WorkerResult::Success {
            output: json!({ "done": "quick" })
        }
    );
    // The file's default budget applies to a request that sets none.
    assert_eq!(
        pool.submit(sleep_for("slow", 2_000)).await.map(drop),
        Err(WorkerPoolError::Timeout)
    );
    // The file's depth limit: `{"ms": …}` is 1 deep, one more level is refused.
    let mut deep = sleep_for("deep", 0);
    deep.operation = WorkerOperation::Tool {
        tool: "sleep".into(),
        input: json!({ "ms": [0] }),
        scoped_input: json!({}),
    };
    assert!(
        matches!(
            pool.submit(deep).await,
            Err(WorkerPoolError::InvalidRequest { .. })
        ),
        "a request deeper than max_request_depth is refused"
    );
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn settings_changed_in_code_are_checked_by_the_pool_constructor() {
    let mut settings = PoolSettings::default();
    settings.queue_capacity = 0;
    let handlers: Vec<Arc<dyn WorkerHandler>> = vec![Arc::new(Sleeper)];
    let error = WorkerPool::from_settings(TokioRuntime, handlers, &settings, None)
        .expect_err("zero capacity");
    assert!(
        matches!(error, BuildError::Config(ref config) if config.to_string().contains("queue_capacity")),
        "{error:?}"
    );
    let error = settings.validate().expect_err("zero capacity");
    assert!(
        matches!(
            error,
            ConfigFileError::Invalid {
                key: Some("queue_capacity"),
                ..
            }
        ),
        "{error:?}"
    );
}

/// Records the worker each request was accepted by.
#[derive(Default)]
struct AcceptedBy(Mutex<HashMap<String, String>>);

#[async_trait]
impl CircuitBreakerHooks for AcceptedBy {
    async fn on_request_accepted(&self, worker_id: &str, request: &WorkerRequest) {
        if let Ok(mut accepted) = self.0.lock() {
            accepted.insert(request.request_id.clone(), worker_id.to_string());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_pool_built_from_settings_with_hooks_runs_each_request_where_it_was_accepted() {
    // late_binding = true in the file: a pool with hooks still runs every
    // request on the worker `on_request_accepted` named, as new_inprocess.
    let settings = PoolSettings::from_toml_str("late_binding = true").expect("the settings load");
    let hooks = Arc::new(AcceptedBy::default());
    let handlers: Vec<Arc<dyn WorkerHandler>> = vec![Arc::new(Sleeper), Arc::new(Sleeper)];
    let breaker: Arc<dyn CircuitBreakerHooks> = hooks.clone();
    let pool = WorkerPool::from_settings(TokioRuntime, handlers, &settings, Some(breaker))
        .expect("the pool builds");
    // worker-0 runs the slow request; worker-1 frees up first, while a
    // request waits on worker-0's queue.
    let requests = [
        ("slow", 1_000),
        ("fast", 100),
        ("queued-1", 100),
        ("queued-2", 100),
    ];
    let answers =
        futures::future::join_all(requests.map(|(id, ms)| pool.submit(sleep_for(id, ms)))).await;
    let accepted = hooks
        .0
        .lock()
        .map(|accepted| accepted.clone())
        .unwrap_or_default();
    for answer in answers {
        let answer = answer.expect("answered");
        assert_eq!(
            accepted.get(&answer.request_id),
            Some(&answer.worker_id),
            "{answer:?}"
        );
    }
    assert_eq!(accepted.len(), 4);
    pool.shutdown().await;
}

#[test]
fn every_routing_policy_is_read_and_written_by_its_name() {
    for (name, policy) in [
        ("round_robin", RoutingPolicy::RoundRobin),
        ("idle_first", RoutingPolicy::IdleFirst),
        ("least_loaded", RoutingPolicy::LeastLoaded),
        ("peak_ewma", RoutingPolicy::PeakEwma),
    ] {
        let line = format!("routing = \"{name}\"");
        let settings = PoolSettings::from_toml_str(&line).expect("a policy loads");
        assert_eq!(settings.to_parts().0.routing, policy, "{name}");
        let text = toml::to_string(&settings).expect("the settings serialize");
        assert!(text.contains(&line), "{text}");
    }
}
