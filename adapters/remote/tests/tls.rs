//! TLS (the `tls` feature): a server with a self-signed certificate and
//! `RemoteWorker`s that trust it, over HTTP/1.1 and HTTP/2 (ALPN). They
//! run under `cargo test --workspace` (foreman-conformance turns the
//! feature on) or `cargo test -p foreman-remote --features tls`.
#![cfg(feature = "tls")]

mod common;

use std::sync::Arc;

use common::{bounded, pool_of, request, sleeper, start, Tally};
use foreman_remote::{RemoteError, RemoteOptions, RemoteWorker, ServerOptions};
use foreman_tokio::{WorkerErrorCode, WorkerHandler, WorkerHealthStatus};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;

/// A certificate for 127.0.0.1, and the server and client settings that
/// use and trust it.
fn tls_settings() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("a certificate");
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let mut server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("a server config");
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("a root");
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

async fn round_trip_over_tls(http2: bool) {
    let (server_tls, client_tls) = tls_settings();
    let tally = Arc::new(Tally::default());
    let mut server = start(
        pool_of(sleeper(1, &tally), 1),
        ServerOptions {
            tls: Some(server_tls),
            ..ServerOptions::default()
        },
    )
    .await;
    let endpoint = server.endpoint.replacen("http://", "https://", 1);
    let worker = RemoteWorker::new(
        &endpoint,
        RemoteOptions {
            http2,
            tls: Some(client_tls),
            ..RemoteOptions::default()
        },
    )
    .expect("a valid endpoint");
    assert_eq!(worker.probe_health().await, WorkerHealthStatus::Healthy);
    let output = worker.handle(request("t1", None)).await.expect("answered");
    assert_eq!(output, json!({ "node": "node-t1" }));
    // A client that does not trust the certificate gets no answer.
    let untrusting = RemoteWorker::new(
        &endpoint,
        RemoteOptions {
            http2,
            tls: Some(Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )),
            ..RemoteOptions::default()
        },
    )
    .expect("a valid endpoint");
    let error = untrusting
        .handle(request("t2", None))
        .await
        .expect_err("untrusted");
    assert_eq!(error.code, WorkerErrorCode::Unavailable);
    server.stop();
    let report = server.task.await.expect("joined").expect("served");
    assert_eq!(report.stats.answered, 1);
}

#[tokio::test]
async fn a_request_round_trips_over_tls_with_http1() {
    bounded(round_trip_over_tls(false)).await;
}

#[tokio::test]
async fn a_request_round_trips_over_tls_with_http2() {
    bounded(round_trip_over_tls(true)).await;
}

#[test]
fn an_https_endpoint_without_tls_settings_is_refused_with_a_reason() {
    let error = RemoteWorker::new("https://127.0.0.1:1", RemoteOptions::default())
        .expect_err("no TLS settings");
    assert!(
        matches!(error, RemoteError::MissingTlsConfig { .. }),
        "{error}"
    );
}
