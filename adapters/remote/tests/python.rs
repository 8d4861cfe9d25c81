//! The protocol is language-neutral: a worker written with Python's
//! standard library alone (`python/worker.py`) serves requests in the same
//! foreman pool as a Rust worker server. Skipped, with a printed reason,
//! where `python3` is absent.

mod common;

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{
    bounded, listening_on, pool_of, raw_client, remote, request, send, sleeper, start, Tally,
};
use foreman_remote::protocol::{DEADLINE_HEADER, HEALTH_PATH, REQUESTS_PATH, STATS_PATH};
use foreman_remote::ServerOptions;
use foreman_tokio::{
    WorkerErrorCode, WorkerHandler, WorkerHealthStatus, WorkerPool, WorkerPoolOptions, WorkerResult,
};
use tokio::process::{Child, Command};

/// The Python worker, running, and its endpoint.
struct Python {
    child: Child,
    endpoint: String,
}

impl Python {
    /// Starts the worker, or `None` (with the reason printed) if `python3`
    /// cannot run here.
    async fn start(args: &[&str]) -> Option<Python> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/worker.py");
        let spawned = Command::new("python3")
            .arg(script)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                println!("skipped: python3 cannot be started ({error})");
                return None;
            }
        };
        let (endpoint, mut lines) = listening_on(&mut child).await;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Some(Python { child, endpoint })
    }

    /// SIGTERM, then waits (bounded) for it to exit.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
        }
    }
}

#[tokio::test]
async fn a_python_worker_serves_requests_in_a_pool_beside_a_rust_worker() {
    bounded(async {
        let Some(python) = Python::start(&["--max-in-flight", "4", "--sleep-ms", "5"]).await else {
            return;
        };
        let tally = Arc::new(Tally::default());
        let mut rust = start(pool_of(sleeper(5, &tally), 2), ServerOptions::default()).await;
        let python_worker = remote(&python.endpoint, false);
        assert_eq!(
            python_worker.probe_health().await,
            WorkerHealthStatus::Healthy
        );
        let workers: Vec<Arc<dyn WorkerHandler>> = vec![
            Arc::new(python_worker),
            Arc::new(remote(&rust.endpoint, false)),
        ];
        let frontend = Arc::new(
            WorkerPool::new_inprocess(workers, WorkerPoolOptions::default(), None).expect("pool"),
        );
        let calls: Vec<_> = (0..20)
            .map(|n| {
                let frontend = Arc::clone(&frontend);
                tokio::spawn(async move {
                    frontend
                        .submit(request(&format!("p{n}"), Some(5_000)))
                        .await
                })
            })
            .collect();
        let mut by_worker = [0usize; 2];
        for call in calls {
            let response = call.await.expect("joined").expect("answered");
            assert!(
                matches!(response.result, WorkerResult::Success { .. }),
                "{response:?}"
            );
            match response.worker_id.as_str() {
                "worker-0" => by_worker[0] += 1,
                "worker-1" => by_worker[1] += 1,
                other => panic!("unknown worker {other}"),
            }
        }
        assert!(by_worker[0] > 0 && by_worker[1] > 0, "{by_worker:?}");
        assert_eq!(tally.finished.load(Ordering::Acquire), by_worker[1]);
        assert_eq!(frontend.stats().counters.failed, 0);
        frontend.shutdown().await;
        rust.stop();
        rust.task.await.expect("joined").expect("served");
        python.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_python_worker_answers_bad_input_busy_and_deadlines_as_the_protocol_says() {
    bounded(async {
        let Some(python) = Python::start(&["--max-in-flight", "1", "--sleep-ms", "400"]).await
        else {
            return;
        };
        let client = raw_client(false);
        let url = |path: &str| format!("{}{path}", python.endpoint);
        let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
            (
                "POST",
                url(REQUESTS_PATH),
                b"{oops".to_vec(),
                400,
                "invalid_json",
            ),
            (
                "POST",
                url(REQUESTS_PATH),
                vec![b' '; 300 * 1024],
                413,
                "payload_too_large",
            ),
            ("GET", url("/v1/nothing"), Vec::new(), 404, "not_found"),
            (
                "POST",
                url("/v2/requests"),
                Vec::new(),
                404,
                "unsupported_version",
            ),
            (
                "GET",
                url(REQUESTS_PATH),
                Vec::new(),
                405,
                "method_not_allowed",
            ),
        ];
        for (method, target, body, status, code) in cases {
            let (got, _, answer) = send(&client, method, &target, &[], body).await;
            assert_eq!(got.as_u16(), status, "{method} {target}: {answer}");
            assert_eq!(answer["error"]["code"], code, "{answer}");
        }
        let (got, _, health) = send(&client, "GET", &url(HEALTH_PATH), &[], Vec::new()).await;
        assert_eq!(got.as_u16(), 200);
        assert_eq!(health["status"], "healthy");

        // The deadline header bounds the run: a timeout answer.
        let worker = Arc::new(remote(&python.endpoint, false));
        let error = worker
            .handle(request("short", Some(50)))
            .await
            .expect_err("a timeout");
        assert_eq!(error.code, WorkerErrorCode::Timeout, "{error:?}");
        // The client gives up when the server answers: the server's request
        // thread may still hold its one run slot for a moment.
        assert!(
            in_flight_reaches(&client, &python.endpoint, 0).await,
            "the timed-out run leaves its slot"
        );
        let body = serde_json::to_vec(&request("header", None)).expect("json");
        let (got, _, answer) = send(
            &client,
            "POST",
            &url(REQUESTS_PATH),
            &[(DEADLINE_HEADER, "20")],
            body,
        )
        .await;
        assert_eq!(got.as_u16(), 200);
        assert_eq!(answer["result"]["error"]["code"], "timeout", "{answer}");

        // Busy beyond its limit: the second of two at once is refused,
        // not started.
        let first = Arc::clone(&worker);
        assert!(
            in_flight_reaches(&client, &python.endpoint, 0).await,
            "the header-bounded run leaves its slot"
        );
        let running = tokio::spawn(async move { first.handle(request("long", None)).await });
        assert!(
            in_flight_reaches(&client, &python.endpoint, 1).await,
            "the first request starts"
        );
        let refused = worker.handle(request("second", None)).await;
        let refused = refused.expect_err("a 503 while the first runs");
        assert!(
            refused.message.contains("refused, not started"),
            "{refused:?}"
        );
        assert_eq!(refused.code, WorkerErrorCode::Unavailable);
        assert!(refused.retryable);
        running.await.expect("joined").expect("the first finishes");
        python.stop().await;
    })
    .await;
}

/// Polls the worker's stats route until it runs `count` requests; false if
/// it does not within 2.5 s.
async fn in_flight_reaches(client: &common::RawClient, endpoint: &str, count: u64) -> bool {
    let url = format!("{endpoint}{STATS_PATH}");
    for _ in 0..500 {
        let (_, _, stats) = send(client, "GET", &url, &[], Vec::new()).await;
        if stats["in_flight"] == count {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}
