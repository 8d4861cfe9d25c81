//! Building a pool where it cannot run is an error, not a panic.

use std::sync::Arc;

use foreman_tokio::{
    async_trait, BuildError, PoolConfig, TokioRuntime, WorkerHandler, WorkerPool, WorkerPoolError,
    WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
};
use serde_json::Value;

struct Idle;

#[async_trait]
impl WorkerHandler for Idle {
    async fn handle(&self, _request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        Ok(Value::Null)
    }
}

#[test]
fn a_pool_built_outside_a_tokio_runtime_is_refused_with_a_reason() {
    let error = WorkerPool::new_inprocess(vec![Arc::new(Idle)], WorkerPoolOptions::default(), None)
        .expect_err("no runtime on this thread");
    match &error {
        WorkerPoolError::InvalidRequest { reason } => {
            assert!(reason.contains("tokio runtime"), "{reason}");
        }
        other => panic!("expected a reason, got {other:?}"),
    }

    let error = WorkerPool::with_config(
        TokioRuntime,
        vec![Arc::new(Idle)],
        PoolConfig::default(),
        None,
    )
    .expect_err("no runtime on this thread");
    assert!(matches!(error, BuildError::NoRuntime(_)), "{error:?}");
}

#[test]
fn a_pool_built_inside_an_entered_runtime_works_outside_async_code() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let pool = {
        let _entered = runtime.enter();
        WorkerPool::new_inprocess(vec![Arc::new(Idle)], WorkerPoolOptions::default(), None)
            .expect("the entered runtime spawns")
    };
    runtime.block_on(async {
        assert_eq!(pool.health_snapshot().await.len(), 1);
        pool.shutdown().await;
    });
}

#[test]
fn bad_configuration_is_reported_before_a_missing_runtime() {
    let error = WorkerPool::new_inprocess(
        vec![Arc::new(Idle)],
        WorkerPoolOptions {
            queue_capacity: 0,
            ..WorkerPoolOptions::default()
        },
        None,
    )
    .expect_err("zero capacity");
    assert!(
        matches!(&error, WorkerPoolError::InvalidRequest { reason } if reason.contains("queue_capacity")),
        "{error:?}"
    );
}
