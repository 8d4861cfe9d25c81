//! Discovery on tokio's paused clock: a watched file (edited under load,
//! a bad edit, a capacity change), a static list, DNS re-resolution
//! through an injected resolver, and the system resolver on `localhost`.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foreman_remote::discovery::{
    DnsName, Endpoint, FactoryError, Resolver, Source, SystemResolver,
};
use foreman_remote::{Discovery, RemoteOptions};
use foreman_tokio::{
    async_trait, handler_fn, DriverOptions, PoolConfig, TokioRuntime, WorkerErrorCode,
    WorkerHandler, WorkerOperation, WorkerPool, WorkerPoolError, WorkerPoolOptions, WorkerRequest,
    WorkerResult, WorkerSpec,
};
use serde_json::json;

const A: &str = "http://10.0.0.1:8080";
const B: &str = "http://10.0.0.2:8080";
const C: &str = "http://10.0.0.3:8080";

/// The fake endpoints' record: which endpoint ran which request, and how
/// many each runs at once.
#[derive(Default)]
struct Fleet {
    ran: Mutex<Vec<(String, String)>>,
    running: Mutex<BTreeMap<String, usize>>,
    most: Mutex<BTreeMap<String, usize>>,
}

impl Fleet {
    /// A factory of handlers that wait `millis` and answer their
    /// endpoint's URL.
    fn factory(
        self: &Arc<Self>,
        millis: u64,
    ) -> impl Fn(&Endpoint) -> Result<Arc<dyn WorkerHandler>, FactoryError> + Send + Sync + 'static
    {
        let fleet = Arc::clone(self);
        move |endpoint: &Endpoint| Ok(fleet.handler(&endpoint.url, millis))
    }

    fn handler(self: &Arc<Self>, url: &str, millis: u64) -> Arc<dyn WorkerHandler> {
        let fleet = Arc::clone(self);
        let url = url.to_string();
        Arc::new(handler_fn(move |request: WorkerRequest| {
            let (fleet, url) = (Arc::clone(&fleet), url.clone());
            async move {
                fleet.start(&url, &request.request_id);
                tokio::time::sleep(Duration::from_millis(millis)).await;
                *fleet
                    .running
                    .lock()
                    .unwrap()
                    .entry(url.clone())
                    .or_default() -= 1;
                Ok(json!(url))
            }
        }))
    }

    fn start(&self, url: &str, id: &str) {
        self.ran.lock().unwrap().push((url.into(), id.into()));
        let mut running = self.running.lock().unwrap();
        let now = running.entry(url.into()).or_default();
        *now += 1;
        let mut most = self.most.lock().unwrap();
        let most = most.entry(url.into()).or_default();
        *most = (*most).max(*now);
    }
}

fn request(id: usize) -> WorkerRequest {
    WorkerRequest {
        request_id: format!("r{id}"),
        workflow_name: "discovery".into(),
        node_id: "n".into(),
        timeout_ms: Some(10_000),
        operation: WorkerOperation::Tool {
            tool: "t".into(),
            input: json!({}),
            scoped_input: json!({}),
        },
    }
}

/// A pool whose first workers are `endpoints`, each running `fleet`'s
/// handler.
fn pool_of(fleet: &Arc<Fleet>, endpoints: &[Endpoint], millis: u64) -> Arc<WorkerPool> {
    let workers = endpoints
        .iter()
        .map(|endpoint| {
            let mut spec = WorkerSpec::named(endpoint.url.clone());
            spec.max_concurrency = endpoint.capacity;
            (spec, fleet.handler(&endpoint.url, millis))
        })
        .collect();
    let config = PoolConfig::new(WorkerPoolOptions {
        queue_capacity: 16,
        ..WorkerPoolOptions::default()
    });
    Arc::new(
        WorkerPool::with_workers(
            TokioRuntime,
            workers,
            config,
            None,
            DriverOptions::default(),
        )
        .expect("a valid pool"),
    )
}

/// The pool's worker ids, sorted, those being removed left out.
fn ids(pool: &WorkerPool) -> Vec<String> {
    let mut ids: Vec<_> = pool
        .stats()
        .workers
        .into_iter()
        .filter(|worker| !worker.removing)
        .map(|worker| worker.worker_id)
        .collect();
    ids.sort();
    ids
}

/// Replaces the file at once (write beside it, then rename), as an
/// editor or a config manager should.
fn write(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write the endpoint list");
    std::fs::rename(&next, path).expect("replace the endpoint list");
}

#[tokio::test(start_paused = true)]
async fn editing_the_file_adds_and_removes_workers_under_load_answering_each_request_once() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("workers.txt");
    write(&path, &format!("{A}\n{B} capacity=2\n"));
    let fleet = Arc::new(Fleet::default());
    let pool = pool_of(&fleet, &[Endpoint::new(A)], 20);
    let mut discovery = Discovery::new(
        Arc::clone(&pool),
        Source::File(path.clone()),
        fleet.factory(20),
    )
    .with_existing([Endpoint::new(A)])
    .with_interval(Duration::from_millis(50))
    .spawn();
    let first = discovery.next_round().await;
    assert_eq!((first.added, first.removed, first.errors), (1, 0, 0));
    assert_eq!(ids(&pool), [A, B]);

    // 300 requests of 20 ms, ten every 50 ms (more than the workers run
    // at once, so queues form), while the file changes four times.
    let callers: Vec<_> = (0..300)
        .map(|n| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50 * (n / 10) as u64)).await;
                (n, pool.submit(request(n)).await)
            })
        })
        .collect();
    let edits = [
        (
            250,
            format!("# A leaves, C comes\n{B} capacity=2\n{C} capacity=3\n"),
        ),
        (500, format!("{C} capacity=3\n")),
        (750, "10.0.0.9:8080 # no scheme\n".to_string()),
        (1000, format!("{A}\n{C} capacity=3\n")),
    ];
    let start = tokio::time::Instant::now();
    let mut sets = Vec::new();
    for (at, text) in edits {
        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
        write(&path, &text);
        // The first round to end may have read the file before the edit.
        discovery.next_round().await;
        discovery.next_round().await;
        sets.push(ids(&pool));
    }
    assert_eq!(sets[0], [B, C]);
    assert_eq!(sets[1], [C]);
    assert_eq!(sets[2], [C], "a bad edit keeps the last good set");
    assert_eq!(sets[3], [A, C]);

    let mut answers = BTreeMap::new();
    for caller in callers {
        let (n, answer) = caller.await.expect("no caller panics");
        assert!(answers.insert(n, answer).is_none(), "r{n} answered twice");
    }
    assert_eq!(answers.len(), 300, "every request is answered");
    // No request ran twice; every success names the endpoint that ran it.
    let ran = fleet.ran.lock().unwrap().clone();
    let mut runs: BTreeMap<String, String> = BTreeMap::new();
    for (url, id) in &ran {
        assert!(
            runs.insert(id.clone(), url.clone()).is_none(),
            "{id} ran twice"
        );
    }
    let mut refused = 0;
    for (n, answer) in &answers {
        match answer {
            Ok(response) => {
                assert_eq!(response.request_id, format!("r{n}"));
                assert_eq!(Some(&response.worker_id), runs.get(&response.request_id));
                let ran_on = WorkerResult::Success {
                    output: json!(response.worker_id),
                };
                assert_eq!(response.result, ran_on);
            }
            // Full queues while few workers are left, or a queued request
            // of a removed worker with nowhere to go.
            Err(WorkerPoolError::QueueFull | WorkerPoolError::NoHealthyWorker) => refused += 1,
            Err(WorkerPoolError::Worker(error)) if error.code == WorkerErrorCode::Unavailable => {
                refused += 1
            }
            Err(other) => panic!("r{n}: unexpected {other:?}"),
        }
    }
    assert_eq!(runs.len() + refused, 300);
    // Removed workers' queued requests moved to the others (and the few
    // that found no room were answered, once).
    let counters = pool.stats().counters;
    assert!(counters.requeued > 0, "{counters:?}");
    assert_eq!(counters.succeeded, runs.len() as u64);
    assert_eq!(
        counters.refused_queue_full + counters.unroutable_after_removal,
        refused as u64,
        "{counters:?}"
    );
    // Each endpoint ran within its own limit, and each of them ran some.
    let most = fleet.most.lock().unwrap().clone();
    assert_eq!(most.get(A), Some(&1));
    assert!(most.get(B).is_some_and(|&n| n <= 2), "{most:?}");
    assert!(most.get(C).is_some_and(|&n| n <= 3), "{most:?}");
    assert_eq!(most.get(C), Some(&3), "C ran three at once: {most:?}");

    let stats = discovery.stats();
    // Added: B, C, A again; removed: A, B.
    assert_eq!((stats.added, stats.removed), (3, 2), "{stats:?}");
    assert_eq!(stats.errors, 1, "{stats:?}");
    let error = stats.last_error.expect("the bad edit is reported");
    assert!(
        error.contains("workers.txt") && error.contains("line 1"),
        "{error}"
    );
    assert_eq!(stats.endpoints, [A, C]);
    drop(discovery);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_bad_or_missing_file_keeps_the_last_good_set() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("workers.txt");
    let fleet = Arc::new(Fleet::default());
    let pool = pool_of(&fleet, &[Endpoint::new("http://anchor:1")], 1);
    let mut discovery = Discovery::new(
        Arc::clone(&pool),
        Source::File(path.clone()),
        fleet.factory(1),
    );
    // Missing: an error, nothing added.
    let stats = discovery.round().await.clone();
    assert_eq!((stats.added, stats.errors), (0, 1));
    assert!(stats.last_error.unwrap().contains("cannot read"));

    write(&path, &format!("{A}\n{B}\n"));
    assert_eq!(discovery.round().await.added, 2);
    for bad in [
        format!("{A}\n{B} capacity=0\n"),
        format!("{A}\n{A}\n"),
        format!("{A} weight=2\n"),
    ] {
        write(&path, &bad);
        let stats = discovery.round().await.clone();
        assert_eq!(ids(&pool), [A, B, "http://anchor:1"], "after {bad:?}");
        assert!(stats.last_error.unwrap().contains("line"), "{bad:?}");
    }
    // Read again unchanged, a bad file is not counted twice.
    let errors = discovery.stats().errors;
    assert_eq!(discovery.round().await.errors, errors);
    std::fs::remove_file(&path).expect("remove the list");
    assert_eq!(discovery.round().await.errors, errors + 1);
    assert_eq!(ids(&pool), [A, B, "http://anchor:1"]);

    write(&path, &format!("{B}\n"));
    let stats = discovery.round().await.clone();
    assert_eq!((stats.added, stats.removed), (2, 1));
    assert_eq!(ids(&pool), [B, "http://anchor:1"]);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_changed_capacity_re_adds_the_endpoint_once_its_old_worker_has_finished() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("workers.txt");
    write(&path, &format!("{A} capacity=1\n"));
    let fleet = Arc::new(Fleet::default());
    let first = Endpoint::new(A).with_capacity(1);
    let pool = pool_of(&fleet, std::slice::from_ref(&first), 1_000);
    let mut discovery = Discovery::new(
        Arc::clone(&pool),
        Source::File(path.clone()),
        fleet.factory(1_000),
    )
    .with_existing([first]);
    assert_eq!(discovery.round().await.added, 0);
    let running = {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move { pool.submit(request(0)).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;

    write(&path, &format!("{A} capacity=3\n"));
    let stats = discovery.round().await.clone();
    assert_eq!(
        (stats.removed, stats.added, stats.pending),
        (1, 0, 1),
        "{stats:?}"
    );
    assert!(stats.endpoints.is_empty());
    // The old worker finishes its request, then the new one is added.
    running
        .await
        .expect("no panic")
        .expect("the running request finishes");
    tokio::time::sleep(Duration::from_millis(1)).await;
    let stats = discovery.round().await.clone();
    assert_eq!((stats.added, stats.pending), (1, 0), "{stats:?}");
    assert_eq!(stats.errors, 0);

    let callers: Vec<_> = (1..4)
        .map(|n| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.submit(request(n)).await })
        })
        .collect();
    for caller in callers {
        caller.await.expect("no panic").expect("answered");
    }
    assert_eq!(fleet.most.lock().unwrap().get(A), Some(&3));
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_static_list_is_added_once_and_a_bad_one_adds_nothing() {
    let fleet = Arc::new(Fleet::default());
    let pool = pool_of(&fleet, &[Endpoint::new("http://anchor:1")], 1);
    let list = vec![Endpoint::new(A), Endpoint::new(B).with_capacity(2)];
    let mut discovery = Discovery::new(Arc::clone(&pool), Source::Static(list), fleet.factory(1));
    assert_eq!(discovery.round().await.added, 2);
    let stats = discovery.round().await.clone();
    assert_eq!(
        (stats.rounds, stats.added, stats.removed, stats.errors),
        (2, 2, 0, 0)
    );
    assert_eq!(ids(&pool), [A, B, "http://anchor:1"]);

    for bad in [
        vec![Endpoint::new(C), Endpoint::new(C)],
        vec![Endpoint::new("10.0.0.3:8080")],
        vec![Endpoint::new(C).with_capacity(0)],
    ] {
        let mut discovery =
            Discovery::new(Arc::clone(&pool), Source::Static(bad), fleet.factory(1));
        let stats = discovery.round().await.clone();
        assert_eq!((stats.added, stats.errors), (0, 1), "{stats:?}");
    }
    assert_eq!(ids(&pool), [A, B, "http://anchor:1"]);
    pool.shutdown().await;
}

#[tokio::test]
async fn remote_discovery_builds_remote_workers() {
    let fleet = Arc::new(Fleet::default());
    let pool = pool_of(&fleet, &[Endpoint::new("http://anchor:1")], 1);
    let mut discovery = Discovery::remote(
        Arc::clone(&pool),
        Source::Static(vec![Endpoint::new("http://127.0.0.1:9")]),
        RemoteOptions::default(),
    );
    assert_eq!(discovery.round().await.added, 1);
    assert_eq!(ids(&pool), ["http://127.0.0.1:9", "http://anchor:1"]);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_the_factory_refuses_is_counted_and_tried_again() {
    let fleet = Arc::new(Fleet::default());
    let pool = pool_of(&fleet, &[Endpoint::new("http://anchor:1")], 1);
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let factory = {
        let (fleet, refuse) = (Arc::clone(&fleet), Arc::clone(&refuse));
        move |endpoint: &Endpoint| -> Result<Arc<dyn WorkerHandler>, FactoryError> {
            if refuse.load(Ordering::Acquire) {
                return Err(format!("no client for {}", endpoint.url).into());
            }
            Ok(fleet.handler(&endpoint.url, 1))
        }
    };
    let list = vec![Endpoint::new(A)];
    let mut discovery = Discovery::new(Arc::clone(&pool), Source::Static(list), factory);
    let stats = discovery.round().await.clone();
    assert_eq!((stats.added, stats.errors), (0, 1));
    assert!(stats.last_error.unwrap().contains("no client for"));
    refuse.store(false, Ordering::Release);
    assert_eq!(discovery.round().await.added, 1);
    assert_eq!(ids(&pool), [A, "http://anchor:1"]);
    pool.shutdown().await;
}

/// A resolver answering what the test last set (`None`: a failed lookup).
#[derive(Debug, Default)]
struct FakeResolver {
    answer: Mutex<Option<Vec<SocketAddr>>>,
    asked: AtomicUsize,
}

impl FakeResolver {
    fn set(&self, answer: Option<&[&str]>) {
        *self.answer.lock().unwrap() = answer.map(|addresses| {
            addresses
                .iter()
                .map(|address| address.parse().expect("a socket address"))
                .collect()
        });
    }
}

#[async_trait]
impl Resolver for FakeResolver {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        assert_eq!((host, port), ("workers.internal", 8080));
        self.asked.fetch_add(1, Ordering::AcqRel);
        self.answer
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such name"))
    }
}

#[tokio::test(start_paused = true)]
async fn dns_re_resolution_follows_the_names_addresses() {
    let fleet = Arc::new(Fleet::default());
    let pool = pool_of(&fleet, &[Endpoint::new("http://anchor:1")], 1);
    let resolver = Arc::new(FakeResolver::default());
    let name = DnsName::new("workers.internal", 8080)
        .with_resolver(Arc::clone(&resolver) as Arc<dyn Resolver>)
        .with_capacity(2);
    let mut discovery = Discovery::new(Arc::clone(&pool), Source::Dns(name), fleet.factory(1))
        .with_interval(Duration::from_secs(30))
        .spawn();
    let anchor = "http://anchor:1";

    resolver.set(Some(&["10.0.0.1:0", "10.0.0.2:0", "10.0.0.1:0"]));
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(
        ids(&pool),
        ["http://10.0.0.1:8080", "http://10.0.0.2:8080", anchor]
    );

    resolver.set(Some(&["10.0.0.2:0", "[::1]:0"]));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        ids(&pool),
        ["http://10.0.0.2:8080", "http://[::1]:8080", anchor]
    );

    // A failed lookup, or one with no address, keeps the set.
    resolver.set(None);
    let stats = discovery.next_round().await;
    assert_eq!(stats.errors, 1);
    assert!(stats.last_error.unwrap().contains("no such name"));
    resolver.set(Some(&[]));
    let stats = discovery.next_round().await;
    assert_eq!(stats.errors, 2);
    assert_eq!(
        ids(&pool),
        ["http://10.0.0.2:8080", "http://[::1]:8080", anchor]
    );
    assert_eq!((stats.added, stats.removed), (3, 1));
    let asked = resolver.asked.load(Ordering::Acquire);
    assert_eq!(asked as u64, stats.rounds);

    // Stopped, it asks no more.
    discovery.stop();
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(resolver.asked.load(Ordering::Acquire), asked);
    pool.shutdown().await;
}

#[tokio::test]
async fn the_system_resolver_finds_localhost() {
    let addresses = SystemResolver
        .resolve("localhost", 8080)
        .await
        .expect("localhost resolves");
    assert!(!addresses.is_empty());
    let distinct: BTreeSet<_> = addresses.iter().map(|a| a.port()).collect();
    assert_eq!(distinct.into_iter().collect::<Vec<_>>(), [8080]);
    assert!(
        addresses.iter().all(|a| a.ip().is_loopback()),
        "{addresses:?}"
    );
}
