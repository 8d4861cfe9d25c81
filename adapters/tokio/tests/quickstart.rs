//! The quickstart's scenario end to end on a paused tokio clock: every
//! request is recorded once, on the worker that ran it, the misbehaving
//! workers show up in the report as what they are, and the chart names
//! every worker.

use std::time::Duration;

use foreman_support::demo::chart::render_svg;
use foreman_support::demo::progress::Progress;
use foreman_support::demo::report::{worker_rows, Outcome};
use foreman_support::demo::workload::QuietPanics;
use foreman_support::demo::{drive, Args};
use foreman_tokio::{TokioRuntime, WorkerHealthStatus};

#[tokio::test(start_paused = true)]
async fn the_quickstart_records_each_request_on_its_worker_and_charts_every_worker() {
    let _quiet = QuietPanics::install();
    let args = Args {
        requests: 1000,
        ..Args::default()
    };
    let data = drive(TokioRuntime, &args, Progress::plain(args.requests))
        .await
        .expect("the demo pool is built");

    assert_eq!(data.records.len(), 1000);
    assert_eq!(data.workers.len(), 10);
    let rows = worker_rows(&data);
    assert_eq!(
        rows.iter().map(|row| row.requests).sum::<usize>(),
        1000,
        "every request is counted on exactly one row"
    );
    let row_of = |role: &str| {
        let index = data
            .workers
            .iter()
            .position(|worker| worker.role == role)
            .unwrap_or_else(|| panic!("no {role} worker"));
        &rows[index]
    };
    assert!(
        row_of("panics")
            .errors
            .get("panicked")
            .copied()
            .unwrap_or(0)
            > 0
    );
    assert!(row_of("flaky").errors.get("failed").copied().unwrap_or(0) > 0);
    let hangs = row_of("hangs");
    assert_eq!(
        hangs.ok, 20,
        "the hanging worker answers its first 20 calls only"
    );
    assert!(hangs.timeouts > 0);
    assert!(hangs.times.unavailable > Duration::ZERO);
    assert_eq!(row_of("llm").errors.len(), 0);
    // A request that a worker started names it; one that timed out in a
    // queue names none.
    for record in &data.records {
        if record.outcome == Outcome::Ok {
            assert!(record.worker.is_some() && record.ran.is_some());
        }
        if record.worker.is_none() {
            assert_eq!(record.outcome, Outcome::Timeout);
        }
    }
    // Each worker's time in its states covers the run.
    let run = data.end - data.start;
    for (row, worker) in rows.iter().zip(&data.workers) {
        let times = row.times;
        assert_eq!(
            times.healthy + times.degraded + times.unavailable,
            run,
            "{}",
            worker.id
        );
        if worker.role == "llm" {
            assert_eq!(worker.state, WorkerHealthStatus::Healthy);
        }
    }

    let svg = render_svg(&data).expect("the chart is drawn");
    for worker in &data.workers {
        assert!(
            svg.contains(&worker.id),
            "{} is not in the chart",
            worker.id
        );
    }
}
