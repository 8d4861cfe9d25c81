//! The server end: any foreman pool behind the protocol (`docs/REMOTE.md`)
//! on a TCP listener, HTTP/1.1 and HTTP/2 (prior knowledge) on the same
//! port.
//!
//! [`Server::serve`] answers `POST /v1/requests` by submitting the request
//! to the pool, with the deadline header's budget as the request's
//! timeout; the pool's own backpressure (`QueueFull`, no worker) is a
//! `503` with `Retry-After`. A client that goes away (a closed HTTP/1.1
//! connection, a reset HTTP/2 stream) makes hyper drop the request's
//! future, which drops the pool call, so the pool cancels its handler.
//! Graceful shutdown: when the future the caller passes resolves, health
//! answers `unavailable` and new requests `503`, in-flight requests finish
//! within the drain deadline, then `serve` returns.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foreman_core::{
    WorkerHealthStatus, WorkerPoolError, WorkerProtocolError, WorkerRequest, WorkerResponse,
    WorkerResult, WorkerSecurityPolicy,
};
use foreman_driver::WorkerPoolClient;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::protocol::{
    ErrorBody, ErrorCode, HealthBody, StatsBody, DEADLINE_HEADER, HEALTH_PATH, REQUESTS_PATH,
    RETRY_AFTER_SECONDS, STATS_PATH, VERSION_PREFIX,
};

/// How a [`Server`] behaves.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Limits on what clients send: a body larger than
    /// `max_request_payload_bytes` is refused with `413` before it is
    /// parsed; the pool applies the rest of the policy itself (its own
    /// options should carry the same policy).
    pub security_policy: WorkerSecurityPolicy,
    /// How long in-flight requests may run once shutdown began.
    pub drain_deadline: Duration,
    /// How long a client may take to send a request's body.
    pub body_timeout: Duration,
    /// The `worker_id` of a `WorkerResponse` the server writes itself (a
    /// handler's error, a timeout), when the pool named no worker.
    pub worker_id: String,
    /// HTTP/2 keep-alive pings to clients, and how long an answer may take
    /// before the connection is closed as dead.
    pub keep_alive_interval: Duration,
    /// See [`ServerOptions::keep_alive_interval`].
    pub keep_alive_timeout: Duration,
    /// Serve TLS only, with these settings (its `alpn_protocols` should
    /// list `h2` and `http/1.1` to offer both); `None` serves cleartext.
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            security_policy: WorkerSecurityPolicy::default(),
            drain_deadline: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            worker_id: "remote".to_string(),
            keep_alive_interval: Duration::from_secs(20),
            keep_alive_timeout: Duration::from_secs(20),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// Why [`Server::serve`] could not serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The listener's local address could not be read.
    #[error("cannot read the listener's address ({0}); pass a bound, listening TCP socket")]
    Listener(#[source] std::io::Error),
}

/// What [`Server::serve`] reports once it has returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeReport {
    /// The server's counters at the end.
    pub stats: StatsBody,
    /// Requests still running when the drain deadline passed (their
    /// connections were closed).
    pub abandoned: u64,
}

/// A foreman pool behind the protocol: clone it freely (clones share the
/// pool and the counters).
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Arc<dyn WorkerPoolClient>,
    options: ServerOptions,
    draining: AtomicBool,
    started: AtomicU64,
    answered: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    in_flight: AtomicU64,
    /// Woken when `in_flight` drops to zero.
    idle: Notify,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("options", &self.inner.options)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

type Body = Full<Bytes>;

impl Server {
    /// A server for `pool` (a `foreman_tokio::WorkerPool`, or anything
    /// implementing [`WorkerPoolClient`]).
    pub fn new(pool: Arc<dyn WorkerPoolClient>, options: ServerOptions) -> Self {
        Server {
            inner: Arc::new(Inner {
                pool,
                options,
                draining: AtomicBool::new(false),
                started: AtomicU64::new(0),
                answered: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                in_flight: AtomicU64::new(0),
                idle: Notify::new(),
            }),
        }
    }

    /// The counters `GET /v1/stats` answers.
    pub fn stats(&self) -> StatsBody {
        self.inner.stats()
    }

    /// Whether shutdown began (health answers `unavailable`).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Serves connections from `listener` until `shutdown` resolves, then
    /// drains: health answers `unavailable` and new requests `503` while
    /// in-flight requests finish, for at most the drain deadline; then it
    /// closes every connection and returns.
    ///
    /// # Errors
    /// [`ServeError::Listener`] if the listener has no local address.
    pub async fn serve<F>(
        &self,
        listener: TcpListener,
        shutdown: F,
    ) -> Result<ServeReport, ServeError>
    where
        F: Future<Output = ()> + Send,
    {
        listener.local_addr().map_err(ServeError::Listener)?;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(self.inner.options.keep_alive_interval)
            .keep_alive_timeout(self.inner.options.keep_alive_timeout);
        let builder = Arc::new(builder);
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut drain_until: Option<tokio::time::Instant> = None;
        loop {
            // Registered before `in_flight` is read: the wake-up of the
            // last request's end cannot be missed.
            let mut idle = std::pin::pin!(self.inner.idle.notified());
            idle.as_mut().enable();
            let drained = match drain_until {
                Some(until) => {
                    if self.inner.in_flight.load(Ordering::Acquire) == 0 {
                        break;
                    }
                    Some(until)
                }
                None => None,
            };
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        // Best effort: a socket that refuses it still works.
                        let _ = stream.set_nodelay(true);
                        let connection = serve_connection(
                            Arc::clone(&self.inner),
                            Arc::clone(&builder),
                            graceful.watcher(),
                            stream,
                        );
                        connections.spawn(connection);
                    }
                    // Out of file descriptors and the like: wait a little
                    // rather than spin.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                () = &mut shutdown, if drain_until.is_none() => {
                    self.inner.draining.store(true, Ordering::Release);
                    drain_until =
                        Some(tokio::time::Instant::now() + self.inner.options.drain_deadline);
                }
                () = &mut idle, if drained.is_some() => {}
                () = sleep_until(drained), if drained.is_some() => break,
            }
        }
        let abandoned = self.inner.in_flight.load(Ordering::Acquire);
        // Connections close once their requests are answered; what still
        // runs is cut off.
        let grace = if abandoned == 0 {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        };
        let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
        connections.shutdown().await;
        Ok(ServeReport {
            stats: self.stats(),
            abandoned,
        })
    }
}

/// Serves one accepted connection (after its TLS handshake, where the
/// server has TLS settings) until it closes or the watcher says to stop.
/// A connection's error (a client gone, a protocol error, a failed
/// handshake) ends only that connection.
async fn serve_connection(
    inner: Arc<Inner>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    stream: tokio::net::TcpStream,
) {
    #[cfg(feature = "tls")]
    let tls = inner.options.tls.clone();
    let service = hyper::service::service_fn(move |request| {
        let inner = Arc::clone(&inner);
        async move { Ok::<_, Infallible>(inner.route(request).await) }
    });
    #[cfg(feature = "tls")]
    if let Some(config) = tls {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
        if let Ok(Ok(stream)) = handshake {
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let _ = watcher.watch(connection.into_owned()).await;
        }
        return;
    }
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let _ = watcher.watch(connection.into_owned()).await;
}

/// How long a client may take over its TLS handshake.
#[cfg(feature = "tls")]
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sleeps until `until`, or forever for `None`.
async fn sleep_until(until: Option<tokio::time::Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

/// Counts a request handed to the pool as in flight until it is answered
/// or its client goes away (dropped unanswered).
struct InFlight<'a> {
    inner: &'a Inner,
    answered: bool,
}

impl<'a> InFlight<'a> {
    fn new(inner: &'a Inner) -> Self {
        inner.started.fetch_add(1, Ordering::AcqRel);
        inner.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            inner,
            answered: false,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let counter = if self.answered {
            &self.inner.answered
        } else {
            &self.inner.dropped
        };
        counter.fetch_add(1, Ordering::AcqRel);
        if self.inner.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

impl Inner {
    fn stats(&self) -> StatsBody {
        StatsBody {
            started: self.started.load(Ordering::Acquire),
            answered: self.answered.load(Ordering::Acquire),
            dropped: self.dropped.load(Ordering::Acquire),
            refused: self.refused.load(Ordering::Acquire),
            in_flight: self.in_flight.load(Ordering::Acquire),
        }
    }

    async fn route(&self, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path();
        let (allowed, method) = (
            match path {
                REQUESTS_PATH => Method::POST,
                HEALTH_PATH | STATS_PATH => Method::GET,
                _ => return not_found(path),
            },
            request.method().clone(),
        );
        if method != allowed && !(allowed == Method::GET && method == Method::HEAD) {
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                format!("{path} answers {allowed} only, not {method}"),
            );
            if let Ok(value) = HeaderValue::from_str(allowed.as_str()) {
                response.headers_mut().insert(ALLOW, value);
            }
            return response;
        }
        match path {
            REQUESTS_PATH => self.handle_request(request).await,
            HEALTH_PATH => self.health().await,
            _ => json(StatusCode::OK, &self.stats()),
        }
    }

    async fn health(&self) -> Response<Body> {
        let status = if self.draining.load(Ordering::Acquire) {
            WorkerHealthStatus::Unavailable
        } else {
            self.pool
                .health_snapshot()
                .await
                .iter()
                .map(|worker| worker.status)
                .min()
                .unwrap_or(WorkerHealthStatus::Unavailable)
        };
        let code = if status == WorkerHealthStatus::Unavailable {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        json(code, &HealthBody { status })
    }

    async fn handle_request(&self, request: Request<Incoming>) -> Response<Body> {
        if self.draining.load(Ordering::Acquire) {
            return self.refuse(
                ErrorCode::Draining,
                "the worker is shutting down and starts nothing new; try another worker",
            );
        }
        let Ok(deadline) = deadline_ms(&request) else {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidDeadline,
                format!("the {DEADLINE_HEADER} header must be a whole number of milliseconds"),
            );
        };
        let limit = self.options.security_policy.max_request_payload_bytes;
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return too_large(limit);
        }
        let body = Limited::new(request.into_body(), limit);
        let bytes = match tokio::time::timeout(self.options.body_timeout, body.collect()).await {
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    ErrorCode::InvalidJson,
                    "the request body did not arrive in time",
                )
            }
            Ok(Err(failure)) => {
                if failure.is::<http_body_util::LengthLimitError>() {
                    return too_large(limit);
                }
                return error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidJson,
                    format!("the request body could not be read: {failure}"),
                );
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        let mut worker_request: WorkerRequest = match serde_json::from_slice(&bytes) {
            Ok(parsed) => parsed,
            Err(failure) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidJson,
                    format!("the body is not a WorkerRequest in JSON: {failure}"),
                )
            }
        };
        if let Some(deadline) = deadline {
            let own = worker_request.timeout_ms.unwrap_or(u64::MAX);
            worker_request.timeout_ms = Some(own.min(deadline));
        }
        let request_id = worker_request.request_id.clone();
        let budget = worker_request.timeout_ms;
        let mut in_flight = InFlight::new(self);
        let began = tokio::time::Instant::now();
        let submitted = self.pool.submit(worker_request);
        let result = match budget {
            // The pool enforces the budget; this bounds a pool that does
            // not (a `WorkerPoolClient` of another kind).
            Some(ms) => tokio::time::timeout(Duration::from_millis(ms), submitted)
                .await
                .unwrap_or(Err(WorkerPoolError::Timeout)),
            None => submitted.await,
        };
        in_flight.answered = true;
        drop(in_flight);
        let elapsed_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
        let failed = |error: WorkerProtocolError| WorkerResponse {
            request_id: request_id.clone(),
            worker_id: self.options.worker_id.clone(),
            result: WorkerResult::Error { error },
            elapsed_ms,
        };
        match result {
            Ok(response) => json(StatusCode::OK, &response),
            Err(WorkerPoolError::Worker(failure)) => json(StatusCode::OK, &failed(failure)),
            // A timeout as the reference answers it; a pool shutting down
            // under the server may have cut a started run off at its drain
            // deadline: an error, not a 503 (which would run it again).
            Err(ended @ (WorkerPoolError::Timeout | WorkerPoolError::ShuttingDown)) => {
                let retryable = matches!(ended, WorkerPoolError::Timeout);
                let error = WorkerProtocolError::new(ended.code(), ended.to_string(), retryable);
                json(StatusCode::OK, &failed(error))
            }
            Err(WorkerPoolError::InvalidRequest { reason }) => error(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                format!("the worker's security policy refused the request: {reason}"),
            ),
            Err(refusal) => self.refuse(
                ErrorCode::Overloaded,
                format!("the worker did not start the request: {refusal}"),
            ),
        }
    }

    /// A `503` with `Retry-After`: the request was not started.
    fn refuse(&self, code: ErrorCode, message: impl Into<String>) -> Response<Body> {
        self.refused.fetch_add(1, Ordering::AcqRel);
        let mut response = error(StatusCode::SERVICE_UNAVAILABLE, code, message);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        response
    }
}

/// The deadline header's value, if any; `Err` if it is not a whole
/// number of milliseconds.
fn deadline_ms<B>(request: &Request<B>) -> Result<Option<u64>, ()> {
    let Some(value) = request.headers().get(DEADLINE_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or(())
}

fn not_found(path: &str) -> Response<Body> {
    if path.starts_with(VERSION_PREFIX) {
        return error(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no route {path}; the routes are {REQUESTS_PATH}, {HEALTH_PATH}, {STATS_PATH}"),
        );
    }
    let versioned = path
        .strip_prefix("/v")
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|version| !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()));
    if versioned {
        return error(
            StatusCode::NOT_FOUND,
            ErrorCode::UnsupportedVersion,
            format!("this worker speaks protocol version 1 only ({VERSION_PREFIX}); {path} is not served"),
        );
    }
    error(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("no route {path}; the protocol's routes start with {VERSION_PREFIX}"),
    )
}

fn too_large(limit: usize) -> Response<Body> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
        format!("the request body is larger than the worker's limit of {limit} bytes"),
    )
}

fn error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response<Body> {
    json(status, &ErrorBody::new(code, message))
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let (status, bytes) = match serde_json::to_vec(value) {
        Ok(bytes) => (status, bytes),
        Err(failure) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::to_vec(&ErrorBody::new(
                ErrorCode::Internal,
                format!("the answer could not be written as JSON: {failure}"),
            ))
            .unwrap_or_default(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
