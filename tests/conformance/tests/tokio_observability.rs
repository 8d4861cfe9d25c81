//! The driver's `tracing` and `metrics` features on foreman-tokio, on a
//! paused current-thread runtime: everything runs on the test's thread,
//! so a thread-local subscriber sees the handlers' own events, and virtual
//! time makes every duration exact.
//!
//! That no subscriber or recorder runs under a foreman lock is checked in
//! `tokio_observability_locks.rs`.

mod observability_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use foreman_conformance::{request, Readings};
use foreman_tokio::{
    handler_fn, refuse_not_started, DriverOptions, ExecutionMode, HedgeDelay, HedgePolicy,
    PoolConfig, TokioRuntime, WorkerHandler, WorkerOperation, WorkerPool, WorkerPoolError,
    WorkerProtocolError, WorkerRequest,
};
use metrics_util::debugging::DebuggingRecorder;
use serde_json::{json, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use observability_support::{options, paused, pool};

// ----- a capturing subscriber ------------------------------------------------

/// Field values as text (strings without quotes).
#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

/// One event as the subscriber saw it, with the fields of the span it
/// belongs to (its explicit parent, or the span it was emitted in).
#[derive(Debug, Clone)]
struct Seen {
    level: Level,
    fields: BTreeMap<String, String>,
    span: Option<(String, BTreeMap<String, String>)>,
}

impl Seen {
    fn message(&self) -> &str {
        self.fields.get("message").map_or("", String::as_str)
    }

    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    fn span_field(&self, name: &str) -> Option<&str> {
        self.span
            .as_ref()
            .and_then(|(_, fields)| fields.get(name))
            .map(String::as_str)
    }
}

#[derive(Default)]
struct Log {
    spans: BTreeMap<u64, (String, BTreeMap<String, String>)>,
    closed: Vec<(String, BTreeMap<String, String>)>,
    events: Vec<Seen>,
}

/// A layer that keeps every span's fields and every event.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Log>>);

impl Capture {
    fn log<T>(&self, read: impl FnOnce(&mut Log) -> T) -> T {
        read(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn events(&self) -> Vec<Seen> {
        self.log(|log| log.events.clone())
    }

    /// Each handler run ("inside the handler" event) as its span's name
    /// followed by the span's `fields`, space-separated ("-" for none).
    fn handler_runs(&self, fields: &[&str]) -> Vec<String> {
        self.events()
            .iter()
            .filter(|event| event.message() == "inside the handler")
            .map(|event| {
                let name = event.span.as_ref().map_or("-", |(name, _)| name.as_str());
                let values = fields
                    .iter()
                    .map(|&field| event.span_field(field).unwrap_or("-"));
                std::iter::once(name)
                    .chain(values)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    /// Request spans closed so far, as their fields.
    fn closed_requests(&self) -> Vec<BTreeMap<String, String>> {
        self.log(|log| {
            log.closed
                .iter()
                .filter(|(name, _)| name == "request")
                .map(|(_, fields)| fields.clone())
                .collect()
        })
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let name = attrs.metadata().name().to_string();
        self.log(|log| log.spans.insert(id.into_u64(), (name, fields.0)));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        values.record(&mut fields);
        self.log(|log| {
            if let Some((_, known)) = log.spans.get_mut(&id.into_u64()) {
                known.extend(fields.0);
            }
        });
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let span = ctx.event_span(event).map(|span| span.id().into_u64());
        self.log(|log| {
            let span = span.and_then(|id| log.spans.get(&id).cloned());
            log.events.push(Seen {
                level: *event.metadata().level(),
                fields: fields.0,
                span,
            });
        });
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        self.log(|log| {
            if let Some(span) = log.spans.remove(&id.into_u64()) {
                log.closed.push(span);
            }
        });
    }
}

/// Runs `body` on a paused current-thread runtime with `capture` as this
/// thread's subscriber.
fn traced<F: std::future::Future<Output = ()>>(capture: &Capture, body: F) {
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    paused(body);
}
// ----- tracing ------------------------------------------------------------------

/// Each request has a span with its ids, the worker that ran it and its
/// attempt; the handler runs inside it, so the handler's own event is the
/// span's child, in both execution modes and for a request that queued
/// (started by the task that freed its worker).
#[test]
fn the_request_span_holds_its_fields_and_the_handler() {
    for execution in [ExecutionMode::PoolTasks, ExecutionMode::CallerTask] {
        let capture = Capture::default();
        traced(&capture, async {
            let pool = pool(1, 4, execution);
            let first = pool.submit(request("first", "sleep:10"));
            let second = pool.submit(request("second", "echo"));
            let (first, second) = futures::join!(first, second);
            assert!(first.is_ok() && second.is_ok());
            pool.shutdown().await;
        });
        let inside: Vec<Seen> = capture
            .events()
            .into_iter()
            .filter(|event| event.message() == "inside the handler")
            .collect();
        assert_eq!(inside.len(), 2, "{execution:?}");
        for (event, id) in inside.iter().zip(["first", "second"]) {
            let (name, _) = event.span.as_ref().expect("the handler's event has a span");
            assert_eq!(name, "request", "{execution:?}");
            assert_eq!(event.span_field("request_id"), Some(id), "{execution:?}");
            assert_eq!(event.span_field("workflow"), Some("wf"));
            assert_eq!(event.span_field("worker"), Some("worker-0"));
            assert_eq!(event.span_field("attempt"), Some("1"));
        }
        assert_eq!(inside[1].span_field("node"), Some("echo"));
        let closed = capture.closed_requests();
        assert_eq!(closed.len(), 2, "both request spans closed: {closed:?}");
    }
}

/// A request its handler declines (`refuse_not_started`) runs again in
/// its span, with the next attempt number and the worker that runs it
/// again, in both execution modes.
#[test]
fn a_request_run_again_after_a_refusal_runs_in_its_span_with_the_next_attempt() {
    for execution in [ExecutionMode::PoolTasks, ExecutionMode::CallerTask] {
        let capture = Capture::default();
        traced(&capture, async {
            // The first run of any worker declines; every later one answers.
            let declined = Arc::new(AtomicBool::new(false));
            let handlers: Vec<Arc<dyn WorkerHandler>> = (0..2)
                .map(|_| {
                    let declined = Arc::clone(&declined);
                    handler_fn(move |request: WorkerRequest| {
                        let declined = Arc::clone(&declined);
                        async move {
                            tracing::info!("inside the handler");
                            if !declined.swap(true, Ordering::SeqCst) {
                                return Err(refuse_not_started(request, "busy"));
                            }
                            Ok::<Value, WorkerProtocolError>(json!("done"))
                        }
                    })
                    .into_arc()
                })
                .collect();
            let pool = WorkerPool::with_driver_options(
                TokioRuntime,
                handlers,
                PoolConfig::new(options(4)),
                None,
                DriverOptions::default().execution(execution),
            )
            .expect("valid options");
            assert!(pool.submit(request("again", "echo")).await.is_ok());
            pool.shutdown().await;
        });
        let runs = capture.handler_runs(&["request_id", "attempt"]);
        assert_eq!(
            runs,
            vec!["request again 1", "request again 2"],
            "{execution:?}"
        );
        let closed = capture.closed_requests();
        assert_eq!(closed.len(), 1, "the request span closed: {closed:?}");
    }
}

/// A hedged request's second attempt runs in the request's span, with
/// attempt 2 and the hedge's worker: the slow first attempt on worker-0
/// is hedged on worker-1 at the delay. (Hedging needs
/// [`ExecutionMode::PoolTasks`], where a worker's task starts the hedge.)
#[test]
fn a_hedged_attempt_runs_in_its_requests_span_with_the_next_attempt() {
    let capture = Capture::default();
    traced(&capture, async {
        let handlers: Vec<Arc<dyn WorkerHandler>> =
            [Duration::from_secs(10), Duration::from_millis(50)]
                .into_iter()
                .map(|delay| {
                    handler_fn(move |_request: WorkerRequest| async move {
                        tracing::info!("inside the handler");
                        tokio::time::sleep(delay).await;
                        Ok::<Value, WorkerProtocolError>(json!("done"))
                    })
                    .into_arc()
                })
                .collect();
        let config = PoolConfig::new(options(4)).with_hedging(Some(
            HedgePolicy::default().with_delay(HedgeDelay::Fixed(Duration::from_millis(200))),
        ));
        let pool = WorkerPool::with_driver_options(
            TokioRuntime,
            handlers,
            config,
            None,
            DriverOptions::default().execution(ExecutionMode::PoolTasks),
        )
        .expect("valid options");
        let mut hedged = request("hedged", "llm");
        hedged.operation = WorkerOperation::Llm {
            model: "model".into(),
            prompt: "prompt".into(),
            scoped_input: json!({}),
        };
        let answered = pool.submit(hedged).await.expect("answered");
        assert_eq!(answered.worker_id, "worker-1", "the hedge answers");
        assert_eq!(pool.stats().counters.hedged, 1);
        pool.shutdown().await;
    });
    let runs = capture.handler_runs(&["request_id", "worker", "attempt"]);
    assert_eq!(
        runs,
        vec!["request hedged worker-0 1", "request hedged worker-1 2"]
    );
    let closed = capture.closed_requests();
    assert_eq!(closed.len(), 1, "the request span closed: {closed:?}");
}

/// A refusal is a `debug` event of the request's span with its reason; a
/// timeout while queued is `debug`, one while running `warn`, with the
/// worker; a cancellation is `debug` with its phase; an abort at the
/// drain deadline is `info` with its phase.
#[test]
fn refusals_timeouts_and_cancellations_are_events_of_the_request() {
    let capture = Capture::default();
    traced(&capture, async {
        let pool = pool(1, 1, ExecutionMode::PoolTasks);
        let mut running = request("running", "hang");
        running.timeout_ms = Some(100);
        let mut queued = request("queued", "echo");
        queued.timeout_ms = Some(50);
        let running = pool.submit(running);
        let queued = pool.submit(queued);
        let refused = async {
            tokio::task::yield_now().await;
            pool.submit(request("refused", "echo")).await
        };
        let (running, queued, refused) = futures::join!(running, queued, refused);
        assert!(matches!(running, Err(WorkerPoolError::Timeout)));
        assert!(matches!(queued, Err(WorkerPoolError::Timeout)));
        assert!(matches!(refused, Err(WorkerPoolError::QueueFull)));
        {
            let cancelled = pool.submit(request("cancelled", "hang"));
            let cut = tokio::time::timeout(Duration::from_millis(5), cancelled).await;
            assert!(cut.is_err(), "the hanging request was still running");
        }
        let drained = pool.submit(request("drained", "hang"));
        let shutdown = async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            pool.shutdown_with_deadline(Duration::ZERO).await;
        };
        let (drained, ()) = futures::join!(drained, shutdown);
        assert!(matches!(drained, Err(WorkerPoolError::ShuttingDown)));
    });
    let events = capture.events();
    let of = |id: &str, message: &str| -> Seen {
        events
            .iter()
            .find(|event| event.span_field("request_id") == Some(id) && event.message() == message)
            .unwrap_or_else(|| panic!("no {message:?} for {id}: {events:#?}"))
            .clone()
    };
    let refused = of("refused", "request refused");
    assert_eq!(refused.level, Level::DEBUG);
    assert_eq!(refused.field("reason"), Some("queue_full"));
    let queued = of("queued", "request timed out while queued");
    assert_eq!(queued.level, Level::DEBUG);
    assert_eq!(queued.field("phase"), Some("queued"));
    let running = of(
        "running",
        "request timed out while running; its handler was aborted",
    );
    assert_eq!(running.level, Level::WARN);
    assert_eq!(running.field("worker"), Some("worker-0"));
    let cancelled = of("cancelled", "request cancelled by its caller");
    assert_eq!(cancelled.level, Level::DEBUG);
    assert_eq!(cancelled.field("phase"), Some("running"));
    let drained = of(
        "drained",
        "request aborted: the shutdown's drain deadline passed",
    );
    assert_eq!(drained.level, Level::INFO);
    assert_eq!(drained.field("phase"), Some("running"));
}

/// Every health transition is an event with the worker, both states and
/// the cause: `warn` when failures make the worker worse, `info` when a
/// restart heals it and when shutdown stops it; a restart's abort is an
/// `info` event of the aborted request.
#[test]
fn health_transitions_and_restarts_are_events_with_their_cause() {
    let capture = Capture::default();
    traced(&capture, async {
        let pool = pool(1, 4, ExecutionMode::PoolTasks);
        for id in ["fail-1", "fail-2"] {
            assert!(pool.submit(request(id, "fail")).await.is_err());
        }
        // Unavailable now; a restart heals it.
        assert!(pool.restart_worker("worker-0").await.is_ok());
        let hanging = pool.submit(request("restarted", "hang"));
        let restart = async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            pool.restart_worker("worker-0").await
        };
        let (hanging, restarted) = futures::join!(hanging, restart);
        assert!(restarted.is_ok());
        assert!(matches!(hanging, Err(WorkerPoolError::Worker(_))));
        pool.shutdown().await;
    });
    let events = capture.events();
    let changes: Vec<(Level, String)> = events
        .iter()
        .filter(|event| event.message() == "worker health changed")
        .map(|event| {
            let field = |name| event.field(name).unwrap_or("?");
            let change = format!(
                "{} {} -> {} ({})",
                field("worker"),
                field("from"),
                field("to"),
                field("cause")
            );
            (event.level, change)
        })
        .collect();
    let changes: Vec<(Level, &str)> = changes
        .iter()
        .map(|(level, change)| (*level, change.as_str()))
        .collect();
    assert_eq!(
        changes,
        vec![
            (Level::WARN, "worker-0 healthy -> degraded (failure)"),
            (Level::WARN, "worker-0 degraded -> unavailable (failure)"),
            (Level::INFO, "worker-0 unavailable -> healthy (restart)"),
            // Shutdown stops it.
            (Level::INFO, "worker-0 healthy -> unavailable (stopped)"),
        ]
    );
    let restarted = events
        .iter()
        .find(|event| event.message() == "request aborted: its worker was restarted")
        .unwrap_or_else(|| panic!("no restart abort: {events:#?}"));
    assert_eq!(restarted.level, Level::INFO);
    assert_eq!(restarted.span_field("request_id"), Some("restarted"));
}

// ----- metrics ------------------------------------------------------------------

/// On virtual time the histograms hold the exact queue and run times: a
/// request that runs 50 ms, and one that waits behind it for those 50 ms
/// and then runs 20 ms.
#[test]
fn the_histograms_hold_exact_queue_and_run_times() {
    let recorder = DebuggingRecorder::new();
    let readings = Readings::new(&recorder);
    paused(async {
        let pool = metrics::with_local_recorder(&recorder, || pool(1, 4, ExecutionMode::PoolTasks));
        let first = pool.submit(request("first", "sleep:50"));
        let second = pool.submit(request("second", "sleep:20"));
        let (first, second) = futures::join!(first, second);
        assert!(first.is_ok() && second.is_ok());
        pool.shutdown().await;
    });
    assert_eq!(
        readings.samples("foreman_request_queue_seconds"),
        vec![0.0, 0.05]
    );
    assert_eq!(
        readings.samples("foreman_request_run_seconds"),
        vec![0.05, 0.02]
    );
}

/// A queued request that another worker runs because it freed up first
/// (late binding) is a `debug` event naming both workers.
#[test]
fn a_request_moved_to_another_worker_is_an_event() {
    let capture = Capture::default();
    traced(&capture, async {
        let pool = pool(2, 4, ExecutionMode::PoolTasks);
        let mut slow = request("slow", "sleep:100");
        slow.timeout_ms = Some(1_000);
        let fast = pool.submit(request("fast", "sleep:20"));
        let slow = pool.submit(slow);
        let queued = pool.submit(request("queued", "echo"));
        // `slow` enters first and takes worker-0, where `queued` then
        // waits (the router's first choice among busy workers with room).
        let (slow, fast, queued) = futures::join!(slow, fast, queued);
        assert!(fast.is_ok() && slow.is_ok());
        let queued = queued.expect("the queued request ran");
        // It ran on the first worker to free up: the one that ran `fast`.
        let fast = fast.expect("fast ran");
        assert_eq!(queued.worker_id, fast.worker_id);
        pool.shutdown().await;
    });
    let events = capture.events();
    let moved: Vec<&Seen> = events
        .iter()
        .filter(|event| event.message() == "queued request moved to another worker")
        .collect();
    assert_eq!(moved.len(), 1, "{events:#?}");
    assert_eq!(moved[0].level, Level::DEBUG);
    assert_eq!(moved[0].field("from"), Some("worker-0"));
    assert_eq!(moved[0].field("to"), Some("worker-1"));
}
