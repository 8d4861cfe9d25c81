//! What a [`WorkerPool`] tells about itself: the health snapshot, the
//! stats snapshot and the history of health transitions.

use foreman_core::{Stats, WorkerHealth};

use crate::runtime::Runtime;
use crate::types::HealthTransition;

use crate::pool::WorkerPool;

impl<R: Runtime> WorkerPool<R> {
    /// Health of every worker, in worker order. Never waits for a handler.
    ///
    /// A worker's status is the worse of two verdicts: its consecutive
    /// failures (none: `Healthy`; fewer than the options'
    /// `unavailable_after_failures`: `Degraded`; that many: `Unavailable`,
    /// given no new work) and its last probe's answer. After shutdown every
    /// worker is `Unavailable`.
    ///
    /// # Examples
    /// ```
    /// # use std::sync::Arc;
    /// # use foreman_tokio::{async_trait, WorkerHandler, WorkerProtocolError, WorkerRequest};
    /// # use serde_json::{json, Value};
    /// # struct Echo;
    /// # #[async_trait]
    /// # impl WorkerHandler for Echo {
    /// #     async fn handle(&self, _: WorkerRequest) -> Result<Value, WorkerProtocolError> {
    /// #         Ok(json!(null))
    /// #     }
    /// # }
    /// use foreman_tokio::{WorkerHealthStatus, WorkerPool, WorkerPoolOptions};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let pool = WorkerPool::new_inprocess(vec![Arc::new(Echo)], WorkerPoolOptions::default(), None)?;
    /// for health in pool.health_snapshot().await {
    ///     assert_eq!(health.worker_id, "worker-0");
    ///     assert_eq!(health.status, WorkerHealthStatus::Healthy);
    ///     assert_eq!(health.consecutive_failures, 0);
    /// }
    /// pool.shutdown().await;
    /// assert!(pool.health_snapshot().await.iter().all(|h| h.status == WorkerHealthStatus::Unavailable));
    /// # Ok::<(), foreman_tokio::WorkerPoolError>(())
    /// # }).unwrap();
    /// ```
    pub async fn health_snapshot(&self) -> Vec<WorkerHealth> {
        let mut all = Vec::new();
        for lane in self.shared.lanes.iter() {
            all.extend(lane.core.lock().pool.health());
        }
        self.shared.in_worker_order(all, |health| &health.worker_id)
    }

    /// Counters by outcome and refusal reason, queue depths and per-worker
    /// state (in worker order). Never waits for a handler. With several
    /// lanes, worker keys are per lane: tell workers apart by id.
    ///
    /// # Examples
    /// ```
    /// # use std::sync::Arc;
    /// # use foreman_tokio::{async_trait, WorkerHandler, WorkerProtocolError, WorkerRequest};
    /// # use serde_json::{json, Value};
    /// # struct Echo;
    /// # #[async_trait]
    /// # impl WorkerHandler for Echo {
    /// #     async fn handle(&self, _: WorkerRequest) -> Result<Value, WorkerProtocolError> {
    /// #         Ok(json!(null))
    /// #     }
    /// # }
    /// # fn request(id: &str) -> foreman_tokio::WorkerRequest {
    /// #     foreman_tokio::WorkerRequest {
    /// #         request_id: id.into(),
    /// #         workflow_name: "demo".into(),
    /// #         node_id: "node".into(),
    /// #         timeout_ms: None,
    /// #         operation: foreman_tokio::WorkerOperation::Tool {
    /// #             tool: "echo".into(),
    /// #             input: serde_json::json!({}),
    /// #             scoped_input: serde_json::json!({}),
    /// #         },
    /// #     }
    /// # }
    /// use foreman_tokio::{WorkerPool, WorkerPoolOptions};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let pool = WorkerPool::new_inprocess(vec![Arc::new(Echo)], WorkerPoolOptions::default(), None)?;
    /// pool.submit(request("req-1")).await?;
    /// let stats = pool.stats();
    /// assert_eq!((stats.counters.accepted, stats.counters.succeeded), (1, 1));
    /// assert_eq!((stats.queued, stats.running), (0, 0));
    /// assert_eq!(stats.workers[0].worker_id, "worker-0");
    /// pool.shutdown().await;
    /// # Ok::<(), foreman_tokio::WorkerPoolError>(())
    /// # }).unwrap();
    /// ```
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for lane in self.shared.lanes.iter() {
            let stats = lane.core.lock().pool.stats();
            total.counters.add(&stats.counters);
            total.queued += stats.queued;
            total.running += stats.running;
            total.workers.extend(stats.workers);
        }
        total.workers = self
            .shared
            .in_worker_order(total.workers, |worker| &worker.worker_id);
        total
    }

    /// Every health status change so far (the latest 4096 per lane),
    /// oldest first.
    ///
    /// # Examples
    /// ```
    /// use std::sync::Arc;
    /// use foreman_tokio::{
    ///     async_trait, HealthCause, WorkerErrorCode, WorkerHandler, WorkerHealthStatus,
    ///     WorkerPool, WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
    /// };
    /// use serde_json::Value;
    /// # fn request(id: &str) -> WorkerRequest {
    /// #     WorkerRequest {
    /// #         request_id: id.into(),
    /// #         workflow_name: "demo".into(),
    /// #         node_id: "node".into(),
    /// #         timeout_ms: None,
    /// #         operation: foreman_tokio::WorkerOperation::Tool {
    /// #             tool: "echo".into(),
    /// #             input: serde_json::json!({}),
    /// #             scoped_input: serde_json::json!({}),
    /// #         },
    /// #     }
    /// # }
    ///
    /// struct Failing;
    ///
    /// #[async_trait]
    /// impl WorkerHandler for Failing {
    ///     async fn handle(&self, _: WorkerRequest) -> Result<Value, WorkerProtocolError> {
    ///         Err(WorkerProtocolError::new(WorkerErrorCode::ExecutionFailed, "down", true))
    ///     }
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let pool = WorkerPool::new_inprocess(vec![Arc::new(Failing)], WorkerPoolOptions::default(), None)?;
    /// assert!(pool.submit(request("req-1")).await.is_err());
    ///
    /// let history = pool.health_history();
    /// let first = &history[0];
    /// assert_eq!((first.worker_id.as_str(), first.cause), ("worker-0", HealthCause::Failure));
    /// assert_eq!((first.from, first.to), (WorkerHealthStatus::Healthy, WorkerHealthStatus::Degraded));
    /// pool.shutdown().await;
    /// # Ok::<(), foreman_tokio::WorkerPoolError>(())
    /// # }).unwrap();
    /// ```
    pub fn health_history(&self) -> Vec<HealthTransition> {
        let mut all: Vec<HealthTransition> = Vec::new();
        for lane in self.shared.lanes.iter() {
            all.extend(lane.core.lock().health_log.iter().cloned());
        }
        all.sort_by_key(|transition| transition.at);
        all
    }
}
