//! Discovery: keeps a pool's remote workers in step with a source of
//! endpoints (a static list, a watched file, a DNS name).
//!
//! Each round reads the [`Source`] and reconciles the workers this
//! discovery added with it: an endpoint that appeared is added
//! ([`WorkerPool::add_worker_with`], its id the endpoint's URL, its run
//! limit the endpoint's capacity or the pool's), one that disappeared is
//! removed ([`WorkerPool::remove_worker`]: it takes no new requests, its
//! queued requests move to the other workers of its lane, its running
//! requests finish), and one whose capacity changed is removed and added
//! again once the old worker has finished (until then the id is taken,
//! and the endpoint counts as pending). A source that fails (a file that
//! cannot be read or parsed, a lookup that fails or finds nothing) keeps
//! the last good set; the failure is counted and kept in
//! [`DiscoveryStats::last_error`].
//!
//! The handlers come from a factory called for each endpoint added, with
//! no foreman lock held: [`Discovery::remote`] builds [`RemoteWorker`]s,
//! [`Discovery::new`] takes any factory.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use foreman_remote::discovery::{Discovery, Endpoint, Source};
//! use foreman_remote::{RemoteOptions, RemoteWorker};
//! use foreman_tokio::{DriverOptions, PoolConfig, TokioRuntime, WorkerHandler, WorkerPool, WorkerSpec};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The pool starts with the endpoints listed now…
//! let first = Endpoint::new("http://10.0.0.5:8080").with_capacity(4);
//! let worker: Arc<dyn WorkerHandler> = Arc::new(RemoteWorker::new(&first.url, RemoteOptions::default())?);
//! let spec = WorkerSpec::named(first.url.clone()).with_max_concurrency(4);
//! let pool = Arc::new(WorkerPool::with_workers(
//!     TokioRuntime,
//!     vec![(spec, worker)],
//!     PoolConfig::default(),
//!     None,
//!     DriverOptions::default(),
//! )?);
//! // …and follows the file from then on, every two seconds.
//! let discovery = Discovery::remote(Arc::clone(&pool), Source::File("workers.txt".into()), RemoteOptions::default())
//!     .with_existing([first])
//!     .with_interval(Duration::from_secs(2))
//!     .spawn();
//! // …
//! println!("{:?}", discovery.stats());
//! # Ok(())
//! # }
//! ```

mod endpoint;
mod source;

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use foreman_driver::{
    CommandError, Runtime, WorkerHandler, WorkerPool, WorkerPoolError, WorkerSpec,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use endpoint::{parse_endpoints, Endpoint, ParseError};
pub use source::{DnsName, Resolver, Source, SystemResolver};

use crate::client::{RemoteOptions, RemoteWorker};
use source::{Read, Reader};

/// The error a handler factory may return.
pub type FactoryError = Box<dyn Error + Send + Sync>;

/// Builds the handler of an endpoint being added.
pub type HandlerFactory =
    dyn Fn(&Endpoint) -> Result<Arc<dyn WorkerHandler>, FactoryError> + Send + Sync;

/// What discovery did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveryStats {
    /// Rounds run.
    pub rounds: u64,
    /// Workers added.
    pub added: u64,
    /// Workers removed.
    pub removed: u64,
    /// Failures: of the source (unreadable or bad file, failed lookup),
    /// of the factory, or of the pool's commands.
    pub errors: u64,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// The endpoints whose workers this discovery added and has not
    /// removed, by URL.
    pub endpoints: Vec<String>,
    /// Endpoints of the source not added yet because a worker still has
    /// their id (one being removed finishes its running requests first);
    /// they are tried again every round.
    pub pending: usize,
}

/// Keeps a pool's remote workers in step with a [`Source`]; see the
/// [module docs](self).
pub struct Discovery<R: Runtime> {
    pool: Arc<WorkerPool<R>>,
    reader: Reader,
    factory: Arc<HandlerFactory>,
    interval: Duration,
    /// The last good set read, by URL.
    desired: BTreeMap<String, Option<u32>>,
    /// The workers this discovery added and has not removed, by URL.
    managed: BTreeMap<String, Option<u32>>,
    stats: DiscoveryStats,
    published: watch::Sender<DiscoveryStats>,
}

impl<R: Runtime> Discovery<R> {
    /// Discovery for `pool` from `source`, building each endpoint's
    /// handler with `factory`; one round every five seconds unless
    /// [`with_interval`](Self::with_interval) says otherwise.
    pub fn new<F>(pool: Arc<WorkerPool<R>>, source: Source, factory: F) -> Self
    where
        F: Fn(&Endpoint) -> Result<Arc<dyn WorkerHandler>, FactoryError> + Send + Sync + 'static,
    {
        Discovery {
            pool,
            reader: Reader::new(source),
            factory: Arc::new(factory),
            interval: Duration::from_secs(5),
            desired: BTreeMap::new(),
            managed: BTreeMap::new(),
            stats: DiscoveryStats::default(),
            published: watch::Sender::new(DiscoveryStats::default()),
        }
    }

    /// Discovery whose workers are [`RemoteWorker`]s with `options`.
    pub fn remote(pool: Arc<WorkerPool<R>>, source: Source, options: RemoteOptions) -> Self {
        Self::new(pool, source, move |endpoint: &Endpoint| {
            let worker = RemoteWorker::new(&endpoint.url, options.clone())?;
            Ok(Arc::new(worker) as Arc<dyn WorkerHandler>)
        })
    }

    /// Sets the time between rounds (at least a millisecond).
    #[must_use]
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Declares workers already in the pool (added with these endpoints'
    /// URLs as ids) as this discovery's: they are removed when the source
    /// drops them.
    #[must_use]
    pub fn with_existing(mut self, endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        for endpoint in endpoints {
            self.desired.insert(endpoint.url.clone(), endpoint.capacity);
            self.managed.insert(endpoint.url, endpoint.capacity);
        }
        self.stats.endpoints = self.managed.keys().cloned().collect();
        self
    }

    /// What it did so far.
    pub fn stats(&self) -> &DiscoveryStats {
        &self.stats
    }

    /// Runs one round: reads the source, then removes and adds workers.
    pub async fn round(&mut self) -> &DiscoveryStats {
        match self.reader.read().await {
            Read::Set(set) => {
                self.desired = set
                    .into_iter()
                    .map(|endpoint| (endpoint.url, endpoint.capacity))
                    .collect();
            }
            Read::Unchanged => {}
            Read::Failed(error) => self.fail(error),
        }
        self.reconcile();
        self.stats.rounds += 1;
        self.stats.endpoints = self.managed.keys().cloned().collect();
        self.published.send_replace(self.stats.clone());
        &self.stats
    }

    /// Removes the workers whose endpoint left the set (or changed its
    /// capacity), then adds those of the set it does not manage.
    fn reconcile(&mut self) {
        let stale: Vec<String> = self
            .managed
            .iter()
            .filter(|&(url, capacity)| self.desired.get(url) != Some(capacity))
            .map(|(url, _)| url.clone())
            .collect();
        for url in stale {
            match self.pool.remove_worker(&url) {
                Ok(()) => {
                    self.stats.removed += 1;
                    self.managed.remove(&url);
                }
                // Removed by someone else already.
                Err(WorkerPoolError::NoHealthyWorker) => {
                    self.managed.remove(&url);
                }
                Err(error) => self.fail(format!("cannot remove {url}: {error}")),
            }
        }
        let mut pending = 0;
        let wanted: Vec<Endpoint> = self
            .desired
            .iter()
            .filter(|&(url, _)| !self.managed.contains_key(url))
            .map(|(url, capacity)| Endpoint {
                url: url.clone(),
                capacity: *capacity,
            })
            .collect();
        for endpoint in wanted {
            let handler = match (self.factory)(&endpoint) {
                Ok(handler) => handler,
                Err(error) => {
                    self.fail(format!(
                        "cannot make a worker for {}: {error}",
                        endpoint.url
                    ));
                    continue;
                }
            };
            let mut spec = WorkerSpec::named(endpoint.url.clone());
            spec.max_concurrency = endpoint.capacity;
            match self.pool.add_worker_with(spec, handler) {
                Ok(_) => {
                    self.stats.added += 1;
                    self.managed.insert(endpoint.url, endpoint.capacity);
                }
                Err(CommandError::DuplicateWorkerId(_)) => pending += 1,
                Err(error) => self.fail(format!("cannot add {}: {error}", endpoint.url)),
            }
        }
        self.stats.pending = pending;
    }

    fn fail(&mut self, error: String) {
        self.stats.errors += 1;
        self.stats.last_error = Some(error);
    }

    /// Runs a round at once and then one every interval, on a tokio task
    /// that the returned handle stops (when dropped too). The workers it
    /// added stay in the pool.
    pub fn spawn(mut self) -> DiscoveryHandle
    where
        R: 'static,
    {
        let stats = self.published.subscribe();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(self.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                self.round().await;
            }
        });
        DiscoveryHandle { task, stats }
    }
}

/// A running [`Discovery`]: its stats, and its task, stopped when the
/// handle is dropped.
#[derive(Debug)]
pub struct DiscoveryHandle {
    task: JoinHandle<()>,
    stats: watch::Receiver<DiscoveryStats>,
}

impl DiscoveryHandle {
    /// What it did so far.
    pub fn stats(&self) -> DiscoveryStats {
        self.stats.borrow().clone()
    }

    /// Waits for the next round to end (one under way when called
    /// counts, though it may have read the source before the call);
    /// returns the stats after it.
    pub async fn next_round(&mut self) -> DiscoveryStats {
        self.stats.mark_unchanged();
        // The sender lives in the task, which only ends when aborted.
        let _ = self.stats.changed().await;
        self.stats.borrow_and_update().clone()
    }

    /// Stops it (as dropping the handle does).
    pub fn stop(self) {}
}

impl Drop for DiscoveryHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
