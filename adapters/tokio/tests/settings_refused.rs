//! Settings files (`PoolSettings`, the `config` feature, enabled here by
//! the dev-dependency on foreman-driver) that are refused: a bad file, key
//! or value is refused with the offending key named.

mod settings_support;

use foreman_tokio::{ConfigFileError, PoolSettings};

use settings_support::{assert_contains, example_path};

/// The key a parse error names (`None` for other errors).
fn parse_error_key(error: &ConfigFileError) -> Option<&str> {
    match error {
        ConfigFileError::Toml { key, .. } | ConfigFileError::Json { key, .. } => Some(key),
        _ => None,
    }
}

/// The message `load` refuses `text` with, having checked that the error
/// is a parse error at `key` and that its message names that key and each
/// of `words`.
fn refused_at(
    load: fn(&str) -> Result<PoolSettings, ConfigFileError>,
    text: &str,
    key: &str,
    words: &[&str],
) -> String {
    let error = load(text).expect_err(text);
    assert_eq!(parse_error_key(&error), Some(key), "{text}: {error:?}");
    let message = error.to_string();
    if !key.is_empty() {
        assert_contains(&message, &[&format!("at `{key}`")]);
    }
    assert_contains(&message, words);
    message
}

/// [`refused_at`] for TOML.
fn toml_refused_at(text: &str, key: &str, words: &[&str]) -> String {
    refused_at(PoolSettings::from_toml_str, text, key, words)
}
#[test]
fn an_unknown_key_is_refused_by_name() {
    toml_refused_at(
        "queue_capacty = 3",
        "queue_capacty",
        &[
            "unknown field `queue_capacty`",
            "`queue_capacity`",
            "line 1",
        ],
    );
    toml_refused_at(
        "[driver]\nlane = 2",
        "driver.lane",
        &["unknown field `lane`", "`lanes`", "line 2"],
    );
    toml_refused_at(
        "[retries]\nattempts = 3",
        "retries.attempts",
        &["unknown field `attempts`", "`max_attempts`", "line 2"],
    );
    toml_refused_at(
        "[hedging]\nmax_hedge = 2",
        "hedging.max_hedge",
        &["unknown field `max_hedge`", "`max_hedges`", "line 2"],
    );
    toml_refused_at(
        "[hedging]\ndelay = 3",
        "hedging.delay",
        &["\"p95\"", "line 2"],
    );
}

#[test]
fn a_value_of_the_wrong_type_is_refused_naming_its_key() {
    let cases: [(&str, &str, &[&str]); 5] = [
        (
            "queue_capacity = \"many\"",
            "queue_capacity",
            &["\"many\"", "usize"],
        ),
        (
            "health_probe_interval = 5",
            "health_probe_interval",
            &["integer `5`", "a duration such as"],
        ),
        (
            "default_request_timeout = true",
            "default_request_timeout",
            &["boolean `true`", "false for none"],
        ),
        (
            "routing = \"fastest\"",
            "routing",
            &[
                "\"fastest\"",
                "\"idle_first\" or \"round_robin\" or \"least_loaded\" or \"peak_ewma\"",
            ],
        ),
        (
            "[driver]\nexecution = \"threads\"",
            "driver.execution",
            &["\"threads\"", "\"pool_tasks\" or \"caller_task\""],
        ),
    ];
    for (text, key, words) in cases {
        toml_refused_at(text, key, words);
    }
}

#[test]
fn a_bad_duration_is_refused_naming_its_key_and_value() {
    toml_refused_at(
        "health_probe_interval = \"5 parsecs\"",
        "health_probe_interval",
        &[
            "invalid duration \"5 parsecs\"",
            "unknown time unit \"parsecs\"",
        ],
    );
    toml_refused_at(
        "[security_policy]\nmax_request_timeout = \"1500us\"",
        "security_policy.max_request_timeout",
        &["\"1500us\"", "finer than a millisecond"],
    );
    toml_refused_at(
        "probe_timeout = \"automatic\"",
        "probe_timeout",
        &["\"automatic\"", "or \"auto\""],
    );
}

#[test]
fn a_value_the_pool_cannot_run_with_is_refused_naming_its_key() {
    let cases = [
        ("queue_capacity = 0", "queue_capacity", "0"),
        (
            "health_probe_interval = \"0s\"",
            "health_probe_interval",
            "\"0s\"",
        ),
        ("probe_timeout = \"0ms\"", "probe_timeout", "\"0s\""),
        (
            "max_concurrency_per_worker = 0",
            "max_concurrency_per_worker",
            "0",
        ),
        ("max_request_depth = 0", "max_request_depth", "0"),
        (
            "[retries]\nenabled = true\nmax_attempts = 0",
            "retries.max_attempts",
            "0",
        ),
        (
            "[retries]\nenabled = true\n[retries.budget]\nwindow = \"0s\"",
            "retries.budget.window",
            "\"0s\"",
        ),
        (
            "[hedging]\nenabled = true\ndelay = \"0s\"",
            "hedging.delay",
            "\"0s\"",
        ),
        (
            "[hedging]\nenabled = true\ndelay = \"p0\"",
            "hedging.delay",
            "\"p0\"",
        ),
        (
            "[hedging]\nenabled = true\nmax_hedges = 0",
            "hedging.max_hedges",
            "0",
        ),
        (
            "[recovery]\npolicy = \"outlier_detection\"\nmin_volume = 0",
            "recovery.min_volume",
            "0",
        ),
        (
            "[recovery]\npolicy = \"outlier_detection\"\nbase_ejection = \"0s\"",
            "recovery.base_ejection",
            "\"0s\"",
        ),
        ("queue_wait_limit = \"0ms\"", "queue_wait_limit", "\"0s\""),
        ("run_limit = \"0s\"", "run_limit", "\"0s\""),
        ("ewma_decay = \"0s\"", "ewma_decay", "\"0s\""),
        ("unsampled_latency = \"0s\"", "unsampled_latency", "\"0s\""),
        ("degraded_share_percent = 0", "degraded_share_percent", "0"),
        (
            "degraded_share_percent = 101",
            "degraded_share_percent",
            "101",
        ),
    ];
    for (text, expected_key, expected_value) in cases {
        let error = PoolSettings::from_toml_str(text).expect_err(text);
        match &error {
            ConfigFileError::Invalid { key, value, .. } => {
                assert_eq!(*key, Some(expected_key), "{text}");
                assert_eq!(value.as_deref(), Some(expected_value), "{text}");
            }
            other => panic!("{text}: expected Invalid, got {other:?}"),
        }
        let message = error.to_string();
        let start = format!("invalid setting `{expected_key} = {expected_value}`: ");
        assert!(message.starts_with(&start), "{message}");
    }
    assert_eq!(
        PoolSettings::from_toml_str("queue_capacity = 0")
            .expect_err("zero capacity")
            .to_string(),
        "invalid setting `queue_capacity = 0`: queue_capacity must be at least 1 \
         (it is the number of requests that may wait per worker)"
    );
    // Lanes are a `NonZeroUsize`: zero is refused while reading the file.
    toml_refused_at("[driver]\nlanes = 0", "driver.lanes", &["nonzero"]);
}

#[test]
fn malformed_files_and_missing_files_are_refused_saying_where() {
    toml_refused_at(
        "queue_capacity = 1\nlate_binding =",
        "",
        &["invalid TOML settings", "line 2"],
    );

    let missing = example_path().with_file_name("no-such-settings.toml");
    let error = PoolSettings::from_toml_file(&missing).expect_err("no such file");
    assert!(matches!(error, ConfigFileError::Io { .. }), "{error:?}");
    assert!(
        error.to_string().contains("no-such-settings.toml"),
        "{error}"
    );
}

#[test]
fn bad_json_is_refused_naming_its_key() {
    let json = PoolSettings::from_json_str;
    refused_at(
        json,
        r#"{"security_policy": {"max_request_timeout": "5 parsecs"}}"#,
        "security_policy.max_request_timeout",
        &["invalid JSON settings", "parsecs", "line 1"],
    );
    refused_at(
        json,
        r#"{"driver": {"lanes": 2, "cores": 1}}"#,
        "driver.cores",
        &["unknown field `cores`"],
    );
    refused_at(json, "{} {}", "", &["trailing characters"]);
    let error = json(r#"{"queue_capacity": 0}"#).expect_err("zero capacity");
    assert!(
        error
            .to_string()
            .starts_with("invalid setting `queue_capacity = 0`: "),
        "{error}"
    );
}
