//! Discovery from a watched file with real worker processes: edits add
//! and remove endpoints while callers keep submitting; a removed
//! endpoint's running requests finish and it gets no new ones, every
//! request is answered exactly once, and the processes' own counters add
//! up to the requests answered (none ran twice).

mod common;
mod faults_support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use faults_support::{
    llm_request, remote_worker, stats_of, until, within_limit, Ledger, WorkerProcess,
};
use foreman_remote::discovery::{Endpoint, Source};
use foreman_remote::{Discovery, RemoteOptions};
use foreman_tokio::{
    DriverOptions, PoolConfig, TokioRuntime, WorkerPool, WorkerPoolOptions, WorkerSpec,
};

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> TempFile {
        TempFile(std::env::temp_dir().join(format!("foreman-{name}-{}", std::process::id())))
    }

    /// Replaces the file's content at once (written aside, then renamed),
    /// so a reader never sees half an edit.
    fn write(&self, lines: &[&str]) {
        let aside = self.0.with_extension("edit");
        std::fs::write(&aside, lines.join("\n") + "\n").expect("write the list");
        std::fs::rename(&aside, &self.0).expect("replace the list");
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const CALLERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_watched_file_adds_and_removes_worker_processes_under_load() {
    within_limit(async {
        let processes = [
            WorkerProcess::start(&["--mode", "sleep:20"]).await,
            WorkerProcess::start(&["--mode", "sleep:20"]).await,
            WorkerProcess::start(&["--mode", "sleep:20"]).await,
        ];
        let [a, b, c] = [0, 1, 2].map(|i| processes[i].endpoint.clone());
        let list = TempFile::new("faults-discovery");
        list.write(&[&a]);
        let first = (WorkerSpec::named(a.clone()), remote_worker(&a));
        let pool = Arc::new(
            WorkerPool::with_workers(
                TokioRuntime,
                vec![first],
                PoolConfig::new(WorkerPoolOptions::default()).with_max_concurrency_per_worker(2),
                None,
                DriverOptions::default(),
            )
            .expect("a pool"),
        );
        let discovery = Discovery::remote(
            Arc::clone(&pool),
            Source::File(list.0.clone()),
            RemoteOptions::default(),
        )
        .with_existing([Endpoint::new(a.clone())])
        .with_interval(Duration::from_millis(50))
        .spawn();

        let stop = Arc::new(AtomicBool::new(false));
        let callers: Vec<_> = (0..CALLERS)
            .map(|caller| {
                let (pool, stop) = (Arc::clone(&pool), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::Acquire) {
                        let id = format!("c{caller}-{n}");
                        n += 1;
                        let answer = pool.submit(llm_request(&id, Some(5_000))).await;
                        answers.push((id, answer));
                    }
                    answers
                })
            })
            .collect();
        let serves = |endpoint: String| async move {
            let before = stats_of(&endpoint).await.answered;
            faults_support::stats_until(&endpoint, Duration::from_secs(10), "it serves", |s| {
                s.answered >= before + 3
            })
            .await;
        };
        let ids = |pool: &WorkerPool| -> Vec<String> {
            pool.stats()
                .workers
                .iter()
                .map(|w| w.worker_id.clone())
                .collect()
        };
        serves(a.clone()).await;

        // Added: B, then C.
        list.write(&[&a, &b]);
        serves(b.clone()).await;
        list.write(&[&a, &b, &c]);
        serves(c.clone()).await;
        assert_eq!(ids(&pool), [a.clone(), b.clone(), c.clone()]);

        // Removed under load: A, then B (C carries the load alone). Each
        // one's running requests finish; then it starts nothing more.
        let removed = |gone: String, staying: Vec<String>, edit: Vec<String>| {
            let pool = Arc::clone(&pool);
            let list = &list;
            async move {
                let edit: Vec<&str> = edit.iter().map(String::as_str).collect();
                list.write(&edit);
                until(Duration::from_secs(10), "it leaves the pool", || {
                    !ids(&pool).contains(&gone)
                })
                .await;
                let last =
                    faults_support::stats_until(&gone, Duration::from_secs(5), "it idles", |s| {
                        s.in_flight == 0
                    })
                    .await;
                for endpoint in staying {
                    serves(endpoint).await;
                }
                assert_eq!(
                    stats_of(&gone).await.started,
                    last.started,
                    "{gone} gets no new request"
                );
            }
        };
        removed(
            a.clone(),
            vec![b.clone(), c.clone()],
            vec![b.clone(), c.clone()],
        )
        .await;
        removed(b.clone(), vec![c.clone()], vec![c.clone()]).await;
        assert_eq!(ids(&pool), std::slice::from_ref(&c));

        stop.store(true, Ordering::Release);
        let mut ledger = Ledger::default();
        for caller in callers {
            for (id, answer) in caller.await.expect("joined") {
                ledger.submitted(&id);
                ledger.answered(&id, answer);
            }
        }
        ledger.check_each_answered_once();
        assert!(ledger.failures().is_empty(), "{:?}", ledger.failures());
        let by_worker = ledger.successes_by_worker();
        let total: usize = by_worker.values().sum();
        let mut ran = 0;
        for process in &processes {
            let stats = process.stats().await;
            assert_eq!((stats.dropped, stats.refused, stats.in_flight), (0, 0, 0));
            assert_eq!(
                stats.answered as usize,
                by_worker.get(&process.endpoint).copied().unwrap_or(0),
                "{}: the frontend's count of its answers",
                process.endpoint
            );
            ran += stats.answered as usize;
        }
        assert_eq!(ran, total, "every request ran once");
        let found = discovery.stats();
        assert_eq!(
            (found.added, found.removed, found.errors),
            (2, 2, 0),
            "{found:?}"
        );
        let counters = pool.stats().counters;
        assert_eq!(counters.unroutable_after_removal, 0);
        println!(
            "discovery: {total} requests, by endpoint {by_worker:?}, requeued {}, {found:?}",
            counters.requeued
        );
        drop(discovery);
        pool.shutdown().await;
    })
    .await;
}
