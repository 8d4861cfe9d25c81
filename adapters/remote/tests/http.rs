//! The protocol end to end on loopback: an in-process server on
//! 127.0.0.1:0 and `RemoteWorker`s (or a raw HTTP client) calling it.
//!
//! Real sockets and tokio's paused clock do not mix (the clock would jump
//! while a socket waits), so these tests assert orderings and upper bounds
//! that cannot flake rather than tight wall-clock margins.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    bounded, eventually, pool_of, raw_client, remote, request, send, sleeper, start, Tally,
};
use foreman_remote::protocol::{DEADLINE_HEADER, HEALTH_PATH, REQUESTS_PATH, STATS_PATH};
use foreman_remote::ServerOptions;
use foreman_tokio::{
    async_trait, handler_fn, WorkerErrorCode, WorkerHandler, WorkerHealth, WorkerPool,
    WorkerPoolClient, WorkerPoolError, WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
    WorkerResponse,
};
use serde_json::json;

async fn round_trip(http2: bool) {
    let tally = Arc::new(Tally::default());
    let mut server = start(pool_of(sleeper(1, &tally), 2), ServerOptions::default()).await;
    let worker: Arc<dyn WorkerHandler> = Arc::new(remote(&server.endpoint, http2));
    let frontend =
        WorkerPool::new_inprocess(vec![worker], WorkerPoolOptions::default(), None).expect("pool");
    for n in 0..5 {
        let response = frontend
            .submit(request(&format!("r{n}"), Some(5_000)))
            .await
            .expect("answered");
        assert_eq!(response.request_id, format!("r{n}"));
        match response.result {
            foreman_tokio::WorkerResult::Success { output } => {
                assert_eq!(output, json!({ "node": format!("node-r{n}") }));
            }
            other => panic!("failed: {other:?}"),
        }
    }
    let health = frontend.health_snapshot().await;
    assert_eq!(health.len(), 1);
    assert_eq!(health[0].status, foreman_tokio::WorkerHealthStatus::Healthy);
    assert_eq!(tally.finished.load(Ordering::Acquire), 5);
    frontend.shutdown().await;
    server.stop();
    let report = server.task.await.expect("joined").expect("served");
    assert_eq!(report.stats.started, 5);
    assert_eq!(report.stats.answered, 5);
    assert_eq!(report.abandoned, 0);
}

#[tokio::test]
async fn a_request_round_trips_over_http1() {
    bounded(round_trip(false)).await;
}

#[tokio::test]
async fn a_request_round_trips_over_http2_prior_knowledge() {
    bounded(round_trip(true)).await;
}

#[tokio::test]
async fn a_handler_error_arrives_as_the_same_protocol_error() {
    bounded(async {
        let failing: Arc<dyn WorkerHandler> = Arc::new(handler_fn(|_request| async {
            Err(WorkerProtocolError::new(
                WorkerErrorCode::ExecutionFailed,
                "tool exploded",
                true,
            ))
        }));
        let mut server = start(pool_of(failing, 1), ServerOptions::default()).await;
        let worker = remote(&server.endpoint, false);
        let error = worker
            .handle(request("r1", None))
            .await
            .expect_err("the handler's error");
        assert_eq!(
            error,
            WorkerProtocolError::new(WorkerErrorCode::ExecutionFailed, "tool exploded", true)
        );
        server.stop();
        server.task.await.expect("joined").expect("served");
    })
    .await;
}

/// The deadline header bounds the server's pool call: the answer is a
/// timeout and the handler was dropped, not left running.
async fn deadline_enforced(http2: bool) {
    let tally = Arc::new(Tally::default());
    let mut server = start(
        pool_of(sleeper(60_000, &tally), 1),
        ServerOptions::default(),
    )
    .await;
    let worker = remote(&server.endpoint, http2);
    let began = Instant::now();
    let error = worker
        .handle(request("slow", Some(200)))
        .await
        .expect_err("a timeout");
    let took = began.elapsed();
    assert_eq!(error.code, WorkerErrorCode::Timeout, "{error:?}");
    // Timers never fire early; the upper bound only says it did not wait
    // for the handler (a minute).
    assert!(took >= Duration::from_millis(200), "after {took:?}");
    assert!(took < Duration::from_secs(10), "after {took:?}");
    eventually("the handler is dropped", || {
        tally.dropped.load(Ordering::Acquire) == 1
    })
    .await;
    assert_eq!(tally.finished.load(Ordering::Acquire), 0);
    let stats = server.server.stats();
    assert_eq!((stats.started, stats.answered, stats.in_flight), (1, 1, 0));
    server.stop();
    server.task.await.expect("joined").expect("served");
}

/// The header carries the time the request has left in the frontend, not
/// its whole budget: a request that queued there behind another for at
/// least 300 ms arrives with at most its budget less those 300 ms, plus
/// `RemoteOptions::deadline_grace` (what the
/// server's handler sees as its own deadline).
#[tokio::test]
async fn the_deadline_header_is_the_time_left_after_queueing_in_the_frontend() {
    bounded(async {
        // The server's handler answers with the milliseconds its request
        // has left there, after sleeping for the first request.
        let time_left = handler_fn(|request: WorkerRequest| async move {
            let now = tokio::time::Instant::now().into_std();
            let left = foreman_tokio::handler_deadline()
                .map(|deadline| deadline.saturating_duration_since(now).as_millis() as u64);
            if request.request_id == "first" {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok(json!(left))
        });
        let mut server = start(pool_of(Arc::new(time_left), 2), ServerOptions::default()).await;
        // One frontend worker: the second request queues behind the first.
        let worker: Arc<dyn WorkerHandler> = Arc::new(remote(&server.endpoint, false));
        let frontend = WorkerPool::new_inprocess(vec![worker], WorkerPoolOptions::default(), None)
            .expect("a valid pool");
        let (first, second) = tokio::join!(
            frontend.submit(request("first", Some(60_000))),
            frontend.submit(request("second", Some(60_000))),
        );
        let left = |answer: Result<WorkerResponse, WorkerPoolError>| match answer
            .expect("answered")
            .result
        {
            foreman_tokio::WorkerResult::Success { output } => {
                output.as_u64().expect("a deadline on the server")
            }
            other => panic!("not a success: {other:?}"),
        };
        let (first, second) = (left(first), left(second));
        let grace = foreman_remote::RemoteOptions::default()
            .deadline_grace
            .as_millis() as u64;
        assert!(first <= 60_000 + grace, "{first}");
        assert!(
            second <= 60_000 - 300 + grace,
            "it queued at least 300 ms: {second}"
        );
        // Generous: only says the budget was not lost altogether.
        assert!(second > 30_000, "{second}");
        frontend.shutdown().await;
        server.stop();
        server.task.await.expect("joined").expect("served");
    })
    .await;
}

#[tokio::test]
async fn the_deadline_header_times_out_a_slow_handler_and_drops_it_http1() {
    bounded(deadline_enforced(false)).await;
}

#[tokio::test]
async fn the_deadline_header_times_out_a_slow_handler_and_drops_it_http2() {
    bounded(deadline_enforced(true)).await;
}

/// A pool that refuses everything at its door.
struct Full;

#[async_trait]
impl WorkerPoolClient for Full {
    async fn submit(&self, _request: WorkerRequest) -> Result<WorkerResponse, WorkerPoolError> {
        Err(WorkerPoolError::QueueFull)
    }

    async fn health_snapshot(&self) -> Vec<WorkerHealth> {
        Vec::new()
    }
}

#[tokio::test]
async fn an_overloaded_worker_answers_503_and_the_request_runs_elsewhere() {
    bounded(async {
        let mut full = start(Arc::new(Full), ServerOptions::default()).await;
        let (_, headers, body) = send(
            &raw_client(false),
            "POST",
            &format!("{}{REQUESTS_PATH}", full.endpoint),
            &[],
            serde_json::to_vec(&request("raw", None)).expect("json"),
        )
        .await;
        assert_eq!(
            headers.get("retry-after").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert_eq!(body["error"]["code"], "overloaded");

        let tally = Arc::new(Tally::default());
        let mut able = start(pool_of(sleeper(1, &tally), 1), ServerOptions::default()).await;
        let workers: Vec<Arc<dyn WorkerHandler>> = vec![
            Arc::new(remote(&full.endpoint, false)),
            Arc::new(remote(&able.endpoint, false)),
        ];
        let frontend =
            WorkerPool::new_inprocess(workers, WorkerPoolOptions::default(), None).expect("pool");
        let before = frontend.health_snapshot().await;
        let response = frontend
            .submit(request("r1", Some(5_000)))
            .await
            .expect("answered by the other worker");
        assert_eq!(response.worker_id, "worker-1");
        let counters = frontend.stats().counters;
        assert_eq!(counters.refused_not_started, 1);
        assert_eq!(counters.failed, 0);
        assert_eq!(frontend.health_snapshot().await, before);
        assert_eq!(tally.finished.load(Ordering::Acquire), 1);
        assert_eq!(full.server.stats().refused, 2);
        frontend.shutdown().await;
        for server in [&mut full, &mut able] {
            server.stop();
        }
        full.task.await.expect("joined").expect("served");
        able.task.await.expect("joined").expect("served");
    })
    .await;
}

/// A request (method, URL, headers, body) and the status and error code
/// it must get.
type Case<'a> = (
    &'a str,
    String,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
);

async fn bad_input_gets_json_4xx(http2: bool) {
    let tally = Arc::new(Tally::default());
    let options = ServerOptions {
        security_policy: foreman_tokio::WorkerSecurityPolicy {
            max_request_payload_bytes: 1024,
            ..Default::default()
        },
        ..ServerOptions::default()
    };
    let mut server = start(pool_of(sleeper(1, &tally), 1), options).await;
    let client = raw_client(http2);
    let url = |path: &str| format!("{}{path}", server.endpoint);
    let valid = serde_json::to_vec(&request("ok", None)).expect("json");
    let cases: Vec<Case> = vec![
        (
            "POST",
            url(REQUESTS_PATH),
            vec![],
            b"{not json".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            url(REQUESTS_PATH),
            vec![],
            b"{\"request_id\": 1}".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            url(REQUESTS_PATH),
            vec![],
            vec![b' '; 4096],
            413,
            "payload_too_large",
        ),
        (
            "POST",
            url(REQUESTS_PATH),
            vec![(DEADLINE_HEADER, "soon")],
            valid.clone(),
            400,
            "invalid_deadline",
        ),
        (
            "GET",
            url(REQUESTS_PATH),
            vec![],
            Vec::new(),
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            url(HEALTH_PATH),
            vec![],
            Vec::new(),
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            url("/v1/nothing"),
            vec![],
            Vec::new(),
            404,
            "not_found",
        ),
        (
            "POST",
            url("/v2/requests"),
            vec![],
            valid.clone(),
            404,
            "unsupported_version",
        ),
        ("GET", url("/"), vec![], Vec::new(), 404, "not_found"),
    ];
    for (method, target, headers, body, status, code) in cases {
        let (got, _, answer) = send(&client, method, &target, &headers, body).await;
        assert_eq!(got.as_u16(), status, "{method} {target}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{method} {target}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
    // The server still serves after all that.
    let (got, _, answer) = send(&client, "POST", &url(REQUESTS_PATH), &[], valid).await;
    assert_eq!(got.as_u16(), 200, "{answer}");
    assert_eq!(answer["result"]["status"], "success");
    let (got, _, health) = send(&client, "GET", &url(HEALTH_PATH), &[], Vec::new()).await;
    assert_eq!(
        (got.as_u16(), health),
        (200, json!({ "status": "healthy" }))
    );
    let (_, _, stats) = send(&client, "GET", &url(STATS_PATH), &[], Vec::new()).await;
    assert_eq!(stats["started"], 1);
    server.stop();
    server.task.await.expect("joined").expect("served");
}

#[tokio::test]
async fn malformed_oversized_and_unknown_input_get_a_json_4xx_over_http1() {
    bounded(bad_input_gets_json_4xx(false)).await;
}

#[tokio::test]
async fn malformed_oversized_and_unknown_input_get_a_json_4xx_over_http2() {
    bounded(bad_input_gets_json_4xx(true)).await;
}

/// A client that gives up (its call dropped: a closed HTTP/1.1 connection,
/// a reset HTTP/2 stream) makes the server drop the handler.
async fn client_drop_drops_handler(http2: bool) {
    let tally = Arc::new(Tally::default());
    let mut server = start(
        pool_of(sleeper(60_000, &tally), 1),
        ServerOptions::default(),
    )
    .await;
    let worker = Arc::new(remote(&server.endpoint, http2));
    let calling = Arc::clone(&worker);
    let call = tokio::spawn(async move { calling.handle(request("dropped", None)).await });
    eventually("the handler starts", || {
        tally.started.load(Ordering::Acquire) == 1
    })
    .await;
    call.abort();
    let _ = call.await;
    drop(worker);
    eventually("the server drops the handler", || {
        tally.dropped.load(Ordering::Acquire) == 1
    })
    .await;
    eventually("the server counts the drop", || {
        server.server.stats().dropped == 1
    })
    .await;
    assert_eq!(tally.finished.load(Ordering::Acquire), 0);
    server.stop();
    let report = server.task.await.expect("joined").expect("served");
    assert_eq!((report.stats.in_flight, report.abandoned), (0, 0));
}

#[tokio::test]
async fn a_client_closing_its_http1_connection_drops_the_servers_handler() {
    bounded(client_drop_drops_handler(false)).await;
}

#[tokio::test]
async fn a_client_resetting_its_http2_stream_drops_the_servers_handler() {
    bounded(client_drop_drops_handler(true)).await;
}

#[tokio::test]
async fn graceful_shutdown_says_unavailable_refuses_new_work_and_finishes_in_flight() {
    bounded(async {
        let tally = Arc::new(Tally::default());
        let mut server = start(pool_of(sleeper(400, &tally), 2), ServerOptions::default()).await;
        let worker = Arc::new(remote(&server.endpoint, false));
        assert_eq!(
            worker.probe_health().await,
            foreman_tokio::WorkerHealthStatus::Healthy
        );
        let calling = Arc::clone(&worker);
        let in_flight =
            tokio::spawn(async move { calling.handle(request("inflight", None)).await });
        eventually("the handler starts", || {
            tally.started.load(Ordering::Acquire) == 1
        })
        .await;
        server.stop();
        eventually("the server drains", || server.server.is_draining()).await;
        assert_eq!(
            worker.probe_health().await,
            foreman_tokio::WorkerHealthStatus::Unavailable
        );
        let refused = worker
            .handle(request("late", None))
            .await
            .expect_err("refused while draining");
        assert_eq!(refused.code, WorkerErrorCode::Unavailable);
        assert!(
            refused.message.contains("refused, not started"),
            "{refused:?}"
        );
        let answered = in_flight.await.expect("joined").expect("finished");
        assert_eq!(answered, json!({ "node": "node-inflight" }));
        let report = server.task.await.expect("joined").expect("served");
        assert_eq!(report.abandoned, 0);
        assert_eq!(report.stats.answered, 1);
        assert_eq!(report.stats.refused, 1);
        assert_eq!(tally.started.load(Ordering::Acquire), 1);
        assert_eq!(tally.finished.load(Ordering::Acquire), 1);
    })
    .await;
}

#[tokio::test]
async fn a_worker_nobody_listens_on_is_unavailable_and_retryable() {
    bounded(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let endpoint = format!("http://{}", listener.local_addr().expect("an address"));
        drop(listener);
        let worker = remote(&endpoint, false);
        let error = worker
            .handle(request("nobody", None))
            .await
            .expect_err("no connection");
        assert_eq!(error.code, WorkerErrorCode::Unavailable);
        assert!(error.retryable, "{error:?}");
        assert_eq!(
            worker.probe_health().await,
            foreman_tokio::WorkerHealthStatus::Unavailable
        );
    })
    .await;
}
