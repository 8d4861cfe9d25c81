//! The client end: [`RemoteWorker`], a worker handler that runs each
//! request on one remote endpoint speaking the protocol (`docs/REMOTE.md`).
//!
//! Its outcomes map onto the driver's:
//!
//! | the endpoint answered | `handle` returns |
//! |---|---|
//! | `200` with a `WorkerResponse` whose result is `success` | `Ok(output)` |
//! | `200` with a `WorkerResponse` whose result is `error` | that `WorkerProtocolError` |
//! | `503` (overloaded or draining, not started) | [`refuse_not_started`]: the pool runs it elsewhere |
//! | `4xx` | `InvalidRequest`, not retryable |
//! | `502`, `504` | `Unavailable`, retryable |
//! | another status, an unreadable or oversized body | `ExecutionFailed`, not retryable |
//! | no connection (refused, unreachable, connect timeout) | [`refuse_not_started`]: it never reached the endpoint, so the pool runs it elsewhere |
//! | the connection failed after the request was sent | `Unavailable`, not retryable (it may have run) |

use std::time::Duration;

use bytes::Bytes;
use foreman_core::{
    WorkerErrorCode, WorkerHealthStatus, WorkerProtocolError, WorkerRequest, WorkerResponse,
    WorkerResult,
};
use foreman_driver::{async_trait, handler_deadline, refuse_not_started, WorkerHandler};
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;

use crate::protocol::{ErrorBody, HealthBody, DEADLINE_HEADER, HEALTH_PATH, REQUESTS_PATH};

/// How a [`RemoteWorker`] connects.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Speak HTTP/2 with prior knowledge (cleartext) instead of HTTP/1.1.
    pub http2: bool,
    /// How long establishing a TCP connection may take.
    pub connect_timeout: Duration,
    /// TCP keepalive: the idle time before the kernel probes a quiet
    /// connection, so a peer that vanished is found (after
    /// [`RemoteOptions::tcp_keepalive_retries`] unanswered probes,
    /// [`RemoteOptions::tcp_keepalive_interval`] apart).
    pub tcp_keepalive: Duration,
    /// Time between TCP keepalive probes.
    pub tcp_keepalive_interval: Duration,
    /// Unanswered TCP keepalive probes before the connection is dead.
    pub tcp_keepalive_retries: u32,
    /// HTTP/2: how often a ping is sent, also while no request runs.
    pub http2_keep_alive_interval: Duration,
    /// HTTP/2: how long a ping's answer may take before the connection is
    /// closed as dead (its requests fail with a transport error).
    pub http2_keep_alive_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// The largest response body read; a larger one is an error.
    pub max_response_bytes: usize,
    /// Added to the time a request has left in the `foreman-deadline-ms`
    /// header, so the frontend's own deadline fires first (it answers
    /// `Timeout` and drops the call, which stops the run) and the worker's
    /// is a backstop for a drop that never arrives: enough for the
    /// transit and both sides' timer delays under load.
    pub deadline_grace: Duration,
    /// The TLS settings of `https://` endpoints (their root certificates,
    /// a client certificate); an `https://` endpoint without them is an
    /// error. The ALPN protocol follows [`RemoteOptions::http2`].
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            http2: false,
            connect_timeout: Duration::from_secs(5),
            tcp_keepalive: Duration::from_secs(30),
            tcp_keepalive_interval: Duration::from_secs(10),
            tcp_keepalive_retries: 3,
            http2_keep_alive_interval: Duration::from_secs(10),
            http2_keep_alive_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            max_response_bytes: 8 * 1024 * 1024,
            deadline_grace: Duration::from_millis(50),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// Why a [`RemoteWorker`] could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The endpoint is not a URL.
    #[error("the endpoint {endpoint:?} is not a URL ({reason}); write it as http://host:port")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The endpoint's scheme is neither `http` nor (with the `tls`
    /// feature) `https`.
    #[error("the endpoint {endpoint:?} is neither http:// nor https:// (https:// needs foreman-remote's `tls` feature); write it as http://host:port")]
    UnsupportedScheme {
        /// The endpoint as given.
        endpoint: String,
    },
    /// An `https://` endpoint, but no TLS settings.
    #[error("the endpoint {endpoint:?} is https:// but RemoteOptions::tls is None; give it a rustls ClientConfig with the roots that sign the worker's certificate")]
    MissingTlsConfig {
        /// The endpoint as given.
        endpoint: String,
    },
}

/// The connector: plain TCP, or TCP and TLS by the URL's scheme.
#[cfg(not(feature = "tls"))]
type Connector = HttpConnector;
/// The connector: plain TCP, or TCP and TLS by the URL's scheme.
#[cfg(feature = "tls")]
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A [`WorkerHandler`] that runs each request on one remote endpoint:
/// `POST /v1/requests` for `handle`, `GET /v1/health` for
/// `probe_health`. Connections are pooled and reused (hyper-util's
/// client); several requests may run on the endpoint at once.
///
/// Create it inside a tokio runtime's context (its connections run on
/// tokio).
#[derive(Debug, Clone)]
pub struct RemoteWorker {
    endpoint: String,
    requests: Uri,
    health: Uri,
    client: Client<Connector, Full<Bytes>>,
    max_response_bytes: usize,
    deadline_grace: Duration,
}

impl RemoteWorker {
    /// A worker for the endpoint `http://host:port` (a path prefix is
    /// kept: `http://host/pool-a` posts to `/pool-a/v1/requests`).
    ///
    /// # Errors
    /// [`RemoteError`] if `endpoint` is not an `http://` URL.
    pub fn new(endpoint: &str, options: RemoteOptions) -> Result<Self, RemoteError> {
        let invalid = |reason: String| RemoteError::InvalidEndpoint {
            endpoint: endpoint.to_string(),
            reason,
        };
        let base: Uri = endpoint
            .parse()
            .map_err(|failure: http::uri::InvalidUri| invalid(failure.to_string()))?;
        let secure = base.scheme_str() == Some("https") && cfg!(feature = "tls");
        match base.scheme_str() {
            Some("http") => {}
            Some("https") if secure => {}
            Some(_) => {
                return Err(RemoteError::UnsupportedScheme {
                    endpoint: endpoint.to_string(),
                })
            }
            None => return Err(invalid("it has no scheme".to_string())),
        }
        if base.authority().is_none() {
            return Err(invalid("it has no host".to_string()));
        }
        let prefix = base.path().trim_end_matches('/');
        let route = |path: &str| -> Result<Uri, RemoteError> {
            let mut parts = base.clone().into_parts();
            parts.path_and_query = Some(
                format!("{prefix}{path}")
                    .parse()
                    .map_err(|failure: http::uri::InvalidUri| invalid(failure.to_string()))?,
            );
            Uri::from_parts(parts).map_err(|failure| invalid(failure.to_string()))
        };
        let requests = route(REQUESTS_PATH)?;
        let health = route(HEALTH_PATH)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_keepalive(Some(options.tcp_keepalive));
        connector.set_keepalive_interval(Some(options.tcp_keepalive_interval));
        connector.set_keepalive_retries(Some(options.tcp_keepalive_retries));
        connector.set_connect_timeout(Some(options.connect_timeout));
        let connector = tls_connector(connector, &options, secure, endpoint)?;
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(options.pool_idle_timeout)
            .http2_only(options.http2)
            .http2_keep_alive_interval(options.http2_keep_alive_interval)
            .http2_keep_alive_timeout(options.http2_keep_alive_timeout)
            .http2_keep_alive_while_idle(true);
        Ok(RemoteWorker {
            endpoint: endpoint.to_string(),
            requests,
            health,
            client: builder.build(connector),
            max_response_bytes: options.max_response_bytes,
            deadline_grace: options.deadline_grace,
        })
    }

    /// The endpoint as given (a stable worker name).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends `request` and reads the answer's status and body.
    ///
    /// # Errors
    /// The failure, and whether the request never left (no connection).
    async fn call(
        &self,
        request: Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), (WorkerProtocolError, bool)> {
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(failure) => return Err((self.transport_error(&failure), failure.is_connect())),
        };
        let status = response.status();
        let body = Limited::new(response.into_body(), limit);
        match body.collect().await {
            Ok(collected) => Ok((status, collected.to_bytes())),
            Err(failure) if failure.is::<http_body_util::LengthLimitError>() => Err((
                WorkerProtocolError::new(
                    WorkerErrorCode::ExecutionFailed,
                    format!(
                        "the worker at {} answered more than {limit} bytes",
                        self.endpoint
                    ),
                    false,
                ),
                false,
            )),
            Err(failure) => Err((
                WorkerProtocolError::new(
                    WorkerErrorCode::Unavailable,
                    format!(
                        "the connection to the worker at {} failed while reading its answer: {failure}",
                        self.endpoint
                    ),
                    false,
                ),
                false,
            )),
        }
    }

    fn transport_error(&self, failure: &hyper_util::client::legacy::Error) -> WorkerProtocolError {
        if failure.is_connect() {
            WorkerProtocolError::new(
                WorkerErrorCode::Unavailable,
                format!(
                    "cannot connect to the worker at {}: {}",
                    self.endpoint,
                    chain(failure)
                ),
                true,
            )
        } else {
            WorkerProtocolError::new(
                WorkerErrorCode::Unavailable,
                format!(
                    "the connection to the worker at {} failed (the request may have run): {}",
                    self.endpoint,
                    chain(failure)
                ),
                false,
            )
        }
    }
}

/// Plain TCP (no `tls` feature).
#[cfg(not(feature = "tls"))]
fn tls_connector(
    connector: HttpConnector,
    _options: &RemoteOptions,
    _secure: bool,
    _endpoint: &str,
) -> Result<Connector, RemoteError> {
    Ok(connector)
}

/// TLS for `https://` (with the options' settings), plain TCP for
/// `http://`.
#[cfg(feature = "tls")]
fn tls_connector(
    mut connector: HttpConnector,
    options: &RemoteOptions,
    secure: bool,
    endpoint: &str,
) -> Result<Connector, RemoteError> {
    let config = match (&options.tls, secure) {
        (Some(config), _) => (**config).clone(),
        (None, true) => {
            return Err(RemoteError::MissingTlsConfig {
                endpoint: endpoint.to_string(),
            })
        }
        // Never used for an http:// endpoint; hyper-rustls needs one.
        (None, false) => rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    connector.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    Ok(if options.http2 {
        builder.enable_http2().wrap_connector(connector)
    } else {
        builder.enable_http1().wrap_connector(connector)
    })
}

/// An error and its sources, for a message.
fn chain(failure: &dyn std::error::Error) -> String {
    let mut text = failure.to_string();
    let mut source = failure.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The message of an error body, or the body's start.
fn message_of(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => parsed.error.message,
        Err(_) => String::from_utf8_lossy(body.get(..200).unwrap_or(body)).into_owned(),
    }
}

#[async_trait]
impl WorkerHandler for RemoteWorker {
    async fn handle(&self, mut request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        // With the header, the request goes without its own budget: the
        // header is its budget on the worker (the server takes the smaller
        // of the two), so the frontend's deadline fires first.
        let time_left = time_left_ms(&request, self.deadline_grace);
        let budget = request.timeout_ms;
        if time_left.is_some() {
            request.timeout_ms = None;
        }
        let body = serde_json::to_vec(&request);
        request.timeout_ms = budget;
        let body = body.map_err(|failure| {
            WorkerProtocolError::new(
                WorkerErrorCode::InvalidRequest,
                format!("the request could not be written as JSON: {failure}"),
                false,
            )
        })?;
        let mut http_request = Request::new(Full::new(Bytes::from(body)));
        *http_request.method_mut() = Method::POST;
        *http_request.uri_mut() = self.requests.clone();
        let headers = http_request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(ms) = time_left {
            headers.insert(DEADLINE_HEADER, HeaderValue::from(ms));
        }
        let (status, body) = match self.call(http_request, self.max_response_bytes).await {
            Ok(answer) => answer,
            // It never reached the endpoint: not started.
            Err((error, true)) => return Err(refuse_not_started(request, error.message)),
            Err((error, false)) => return Err(error),
        };
        let failed = |code, retryable, what: &str| {
            Err(WorkerProtocolError::new(
                code,
                format!(
                    "the worker at {} answered {status} ({what}): {}",
                    self.endpoint,
                    message_of(&body)
                ),
                retryable,
            ))
        };
        match status {
            StatusCode::OK => match serde_json::from_slice::<WorkerResponse>(&body) {
                Ok(response) => match response.result {
                    WorkerResult::Success { output } => Ok(output),
                    WorkerResult::Error { error } => Err(error),
                },
                Err(failure) => Err(WorkerProtocolError::new(
                    WorkerErrorCode::ExecutionFailed,
                    format!(
                        "the worker at {} answered 200 without a WorkerResponse: {failure}",
                        self.endpoint
                    ),
                    false,
                )),
            },
            StatusCode::SERVICE_UNAVAILABLE => Err(refuse_not_started(
                request,
                format!(
                    "the worker at {} declined: {}",
                    self.endpoint,
                    message_of(&body)
                ),
            )),
            StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => {
                failed(WorkerErrorCode::Unavailable, true, "a gateway failed")
            }
            status if status.is_client_error() => failed(
                WorkerErrorCode::InvalidRequest,
                false,
                "refused the request",
            ),
            _ => failed(WorkerErrorCode::ExecutionFailed, false, "unexpected status"),
        }
    }

    async fn probe_health(&self) -> WorkerHealthStatus {
        let mut http_request = Request::new(Full::new(Bytes::new()));
        *http_request.uri_mut() = self.health.clone();
        match self.call(http_request, HEALTH_BODY_LIMIT).await {
            Ok((_, body)) => serde_json::from_slice::<HealthBody>(&body)
                .map(|health| health.status)
                .unwrap_or(WorkerHealthStatus::Unavailable),
            Err(_) => WorkerHealthStatus::Unavailable,
        }
    }
}

/// The largest health answer read.
const HEALTH_BODY_LIMIT: usize = 64 * 1024;

/// The milliseconds `request` has left, plus `grace`: what the pool
/// polling this handler says ([`handler_deadline`]), rounded up (see
/// [`RemoteOptions::deadline_grace`]); its `timeout_ms` outside a pool.
fn time_left_ms(request: &WorkerRequest, grace: Duration) -> Option<u64> {
    match handler_deadline() {
        Some(deadline) => {
            let now = tokio::time::Instant::now().into_std();
            let left = deadline
                .saturating_duration_since(now)
                .saturating_add(grace);
            let millis = left.as_nanos().div_ceil(1_000_000);
            Some(u64::try_from(millis).unwrap_or(u64::MAX))
        }
        None => request.timeout_ms,
    }
}
