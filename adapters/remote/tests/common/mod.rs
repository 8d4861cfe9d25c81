//! What the HTTP tests share: an in-process server on 127.0.0.1:0,
//! handlers that count their starts and drops, a raw HTTP client.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foreman_remote::{RemoteOptions, RemoteWorker, ServeError, ServeReport, Server, ServerOptions};
use foreman_tokio::{
    handler_fn, WorkerHandler, WorkerOperation, WorkerPool, WorkerPoolClient, WorkerPoolOptions,
    WorkerRequest,
};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every test ends within this.
pub const TEST_LIMIT: Duration = Duration::from_secs(20);

/// Runs a test's body, failing it if it takes longer than [`TEST_LIMIT`].
pub async fn bounded<F: std::future::Future>(body: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, body)
        .await
        .expect("the test ends in time")
}

/// Reads a started worker process's first line, `listening on ADDRESS`:
/// answers `http://ADDRESS` and the rest of its output (read on in the
/// background if `drain`).
pub async fn listening_on(
    child: &mut tokio::process::Child,
) -> (
    String,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the worker listens within 10 s")
        .expect("its stdout")
        .expect("a first line");
    let address = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    (format!("http://{address}"), lines)
}

/// A server running on its own task.
pub struct Running {
    pub endpoint: String,
    pub server: Server,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<ServeReport, ServeError>>,
}

impl Running {
    /// Starts draining.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves `pool` on a fresh loopback port.
pub async fn start(pool: Arc<dyn WorkerPoolClient>, options: ServerOptions) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let endpoint = format!("http://{}", listener.local_addr().expect("an address"));
    let server = Server::new(pool, options);
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = server.clone();
    let task = tokio::spawn(async move {
        serving
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await
    });
    Running {
        endpoint,
        server,
        stop: Some(stop),
        task,
    }
}

/// Counts a handler's starts, ends and drops before its end.
#[derive(Default)]
pub struct Tally {
    pub started: AtomicUsize,
    pub finished: AtomicUsize,
    pub dropped: AtomicUsize,
}

struct Watch {
    tally: Arc<Tally>,
    finished: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let counter = if self.finished {
            &self.tally.finished
        } else {
            &self.tally.dropped
        };
        counter.fetch_add(1, Ordering::AcqRel);
    }
}

/// A handler that waits `millis`, then echoes the node id; `tally` counts.
pub fn sleeper(millis: u64, tally: &Arc<Tally>) -> Arc<dyn WorkerHandler> {
    let tally = Arc::clone(tally);
    Arc::new(handler_fn(move |request: WorkerRequest| {
        let tally = Arc::clone(&tally);
        async move {
            tally.started.fetch_add(1, Ordering::AcqRel);
            let mut watch = Watch {
                tally,
                finished: false,
            };
            tokio::time::sleep(Duration::from_millis(millis)).await;
            watch.finished = true;
            Ok(json!({ "node": request.node_id }))
        }
    }))
}

/// A tokio pool of `workers` copies of `handler`.
pub fn pool_of(handler: Arc<dyn WorkerHandler>, workers: usize) -> Arc<WorkerPool> {
    let handlers = (0..workers).map(|_| Arc::clone(&handler)).collect();
    Arc::new(
        WorkerPool::new_inprocess(handlers, WorkerPoolOptions::default(), None)
            .expect("a valid pool"),
    )
}

/// A remote worker for `endpoint`.
pub fn remote(endpoint: &str, http2: bool) -> RemoteWorker {
    RemoteWorker::new(
        endpoint,
        RemoteOptions {
            http2,
            ..RemoteOptions::default()
        },
    )
    .expect("a valid endpoint")
}

pub fn request(id: &str, timeout_ms: Option<u64>) -> WorkerRequest {
    WorkerRequest {
        request_id: id.into(),
        workflow_name: "remote-tests".into(),
        node_id: format!("node-{id}"),
        timeout_ms,
        operation: WorkerOperation::Tool {
            tool: "echo".into(),
            input: json!({ "n": 1 }),
            scoped_input: json!({}),
        },
    }
}

/// Waits (bounded) until `check` holds.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within 5 s");
}

/// The raw HTTP client the tests send hand-made requests with.
pub type RawClient = Client<HttpConnector, Full<Bytes>>;

/// A raw HTTP client, HTTP/1.1 or HTTP/2 with prior knowledge.
pub fn raw_client(http2: bool) -> RawClient {
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build(HttpConnector::new())
}

/// Sends one request; answers its status, headers and body as JSON (or
/// `null` when the body is not JSON).
pub async fn send(
    client: &RawClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (http::StatusCode, http::HeaderMap, serde_json::Value) {
    let mut builder = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(body.into())).expect("a request");
    let response = client.request(request).await.expect("an answer");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("a body").to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (parts.status, parts.headers, value)
}
