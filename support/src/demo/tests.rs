//! The report's arithmetic and the chart, on hand-made records.

use std::time::Duration;

use foreman_driver::WorkerHealthStatus::{Degraded, Healthy, Unavailable};
use foreman_driver::{WorkerErrorCode, WorkerPoolError, WorkerProtocolError};

use super::chart::{latency_buckets, render_svg, write_svg};
use super::report::{
    render, spans, worker_rows, Change, Outcome, Record, RunData, Span, StateTimes, WorkerInfo,
    WorkerRow,
};
use super::workload::PANIC_MESSAGE;

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn record(worker: Option<usize>, outcome: Outcome, answered: u64, ran: Option<u64>) -> Record {
    Record {
        worker,
        outcome,
        answered: ms(answered),
        queued: ms(1),
        ran: ran.map(ms),
        total: ms(1 + ran.unwrap_or(0)),
    }
}

/// Two workers over one second: worker-0 (llm) Healthy throughout,
/// worker-1 (flaky) Degraded at 200 ms, Unavailable at 500 ms, Healthy
/// again at 900 ms; one request timed out in a queue.
fn two_workers() -> RunData {
    let worker = |id: &str, role| WorkerInfo {
        id: id.into(),
        role,
        state: Healthy,
    };
    let change = |at, from, to| Change {
        worker: 1,
        at: ms(at),
        from,
        to,
    };
    RunData {
        workers: vec![worker("worker-0", "llm"), worker("worker-1", "flaky")],
        records: vec![
            record(Some(0), Outcome::Ok, 100, Some(10)),
            record(Some(0), Outcome::Ok, 300, Some(40)),
            record(Some(0), Outcome::Ok, 600, Some(20)),
            record(Some(0), Outcome::Ok, 800, Some(30)),
            record(Some(1), Outcome::Error("failed"), 150, Some(5)),
            record(Some(1), Outcome::Error("panicked"), 190, Some(1)),
            record(Some(1), Outcome::Error("failed"), 450, Some(7)),
            record(Some(1), Outcome::Timeout, 950, Some(500)),
            record(None, Outcome::Timeout, 990, None),
        ],
        changes: vec![
            change(200, Healthy, Degraded),
            change(500, Degraded, Unavailable),
            change(900, Unavailable, Healthy),
        ],
        start: Duration::ZERO,
        end: ms(1000),
    }
}

#[test]
fn time_in_each_state_runs_from_each_transition_to_the_next_and_to_the_end() {
    let changes = [
        (ms(200), Degraded),
        (ms(500), Unavailable),
        (ms(900), Healthy),
    ];
    let spans = spans(Healthy, &changes, ms(0), ms(1000));
    let span = |from, to, state| Span {
        from: ms(from),
        to: ms(to),
        state,
    };
    assert_eq!(
        spans,
        [
            span(0, 200, Healthy),
            span(200, 500, Degraded),
            span(500, 900, Unavailable),
            span(900, 1000, Healthy),
        ]
    );
    assert_eq!(
        StateTimes::of(&spans),
        StateTimes {
            healthy: ms(300),
            degraded: ms(300),
            unavailable: ms(400),
        }
    );
}

#[test]
fn transitions_outside_the_run_count_only_for_the_state_they_leave_it_in() {
    // Unavailable before the run starts, Degraded during it, Healthy after
    // it ended.
    let changes = [
        (ms(50), Unavailable),
        (ms(400), Degraded),
        (ms(2000), Healthy),
    ];
    let times = StateTimes::of(&spans(Healthy, &changes, ms(100), ms(1000)));
    assert_eq!(
        times,
        StateTimes {
            healthy: Duration::ZERO,
            degraded: ms(600),
            unavailable: ms(300),
        }
    );
}

#[test]
fn a_worker_without_transitions_spends_the_whole_run_in_its_state() {
    let times = StateTimes::of(&spans(Degraded, &[], ms(100), ms(350)));
    assert_eq!(
        times,
        StateTimes {
            degraded: ms(250),
            ..StateTimes::default()
        }
    );
    assert!(spans(Healthy, &[], ms(100), ms(100)).is_empty());
}

#[test]
fn transitions_at_the_same_instant_leave_no_empty_span() {
    let changes = [(ms(300), Degraded), (ms(300), Unavailable)];
    let spans = spans(Healthy, &changes, ms(0), ms(500));
    assert_eq!(spans.len(), 2);
    assert_eq!(
        StateTimes::of(&spans),
        StateTimes {
            healthy: ms(300),
            degraded: Duration::ZERO,
            unavailable: ms(200),
        }
    );
}

#[test]
fn a_worker_row_counts_outcomes_and_takes_run_time_percentiles_by_nearest_rank() {
    let records = [
        record(Some(0), Outcome::Ok, 1, Some(40)),
        record(Some(0), Outcome::Ok, 2, Some(10)),
        record(Some(0), Outcome::Error("failed"), 3, Some(30)),
        record(Some(0), Outcome::Error("panicked"), 4, Some(20)),
        record(Some(0), Outcome::Error("failed"), 5, Some(50)),
        record(Some(0), Outcome::Timeout, 6, Some(500)),
    ];
    let row = WorkerRow::of(&records, StateTimes::default());
    assert_eq!(row.requests, 6);
    assert_eq!(row.ok, 2);
    assert_eq!(row.timeouts, 1);
    assert_eq!(
        row.errors.into_iter().collect::<Vec<_>>(),
        [("failed", 2), ("panicked", 1)]
    );
    // Sorted run times 10 20 30 40 50 500: rank (6 - 1) * p / 100, rounded
    // down: 2 for p50, 4 for p99.
    assert_eq!(row.run_p50, Some(ms(30)));
    assert_eq!(row.run_p99, Some(ms(50)));
    let none = WorkerRow::of(&[], StateTimes::default());
    assert_eq!((none.requests, none.run_p50, none.run_p99), (0, None, None));
}

#[test]
fn worker_rows_split_the_records_by_worker_and_keep_unstarted_ones_apart() {
    let rows = worker_rows(&two_workers());
    assert_eq!(rows.len(), 3);
    let [first, second, unstarted] = [&rows[0], &rows[1], &rows[2]];
    assert_eq!((first.requests, first.ok, first.timeouts), (4, 4, 0));
    assert_eq!(first.run_p50, Some(ms(20)));
    assert_eq!(first.times.healthy, ms(1000));
    assert_eq!((second.requests, second.ok, second.timeouts), (4, 0, 1));
    assert_eq!(
        second.times,
        StateTimes {
            healthy: ms(300),
            degraded: ms(300),
            unavailable: ms(400),
        }
    );
    assert_eq!((unstarted.requests, unstarted.timeouts), (1, 1));
    assert_eq!(unstarted.run_p50, None);
}

#[test]
fn errors_are_sorted_by_kind_and_the_demos_panics_recognised() {
    let worker = |code, message: &str| {
        WorkerPoolError::Worker(WorkerProtocolError::new(code, message, false))
    };
    let panicked = format!("worker handler panicked: {PANIC_MESSAGE} on req-3");
    let cases = [
        (WorkerPoolError::Timeout, Outcome::Timeout),
        (WorkerPoolError::QueueFull, Outcome::Refused("QueueFull")),
        (
            worker(WorkerErrorCode::ExecutionFailed, "upstream 503"),
            Outcome::Error("failed"),
        ),
        (
            worker(WorkerErrorCode::ExecutionFailed, &panicked),
            Outcome::Error("panicked"),
        ),
        (
            worker(WorkerErrorCode::Cancelled, "restarted"),
            Outcome::Error("cancelled"),
        ),
    ];
    for (error, outcome) in cases {
        assert_eq!(Outcome::of_error(&error), outcome, "{error}");
    }
}

#[test]
fn the_report_has_a_row_per_worker_with_its_counts_and_times() {
    let report = render(&two_workers());
    let line = |prefix: &str| {
        report
            .lines()
            .find(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?} in\n{report}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(report.starts_with("9 requests in 1.00 s (9/s;"), "{report}");
    assert_eq!(
        line("worker "),
        "worker role requests ok errors timeouts run p50 run p99 healthy degraded unavail. state"
    );
    assert_eq!(
        line("worker-0"),
        "worker-0 llm 4 4 - 0 20.0 ms 30.0 ms 1.0 s 0.0 s 0.0 s Healthy"
    );
    assert_eq!(
        line("worker-1"),
        "worker-1 flaky 4 0 2 failed, 1 panicked 1 5.0 ms 7.0 ms 0.3 s 0.3 s 0.4 s Healthy"
    );
    assert_eq!(line("(none)"), "(none) queue 1 0 - 1 - - - - - -");
    assert!(line("total").starts_with("total p50 "), "{report}");
}

#[test]
fn latency_buckets_take_percentiles_of_the_requests_answered_in_them() {
    let mut data = two_workers();
    data.records = vec![
        record(Some(0), Outcome::Ok, 10, Some(9)),
        record(Some(0), Outcome::Ok, 20, Some(99)),
        record(Some(0), Outcome::Ok, 30, Some(19)),
        record(Some(0), Outcome::Ok, 1000, Some(49)),
    ];
    let buckets = latency_buckets(&data, 4);
    assert_eq!(buckets.len(), 2, "the empty middle buckets are left out");
    assert_eq!(buckets[0].middle, ms(125));
    assert_eq!((buckets[0].p50, buckets[0].p99), (ms(20), ms(20)));
    // The answer at the run's very end falls in the last bucket.
    assert_eq!(buckets[1].middle, ms(875));
    assert_eq!((buckets[1].p50, buckets[1].p99), (ms(50), ms(50)));
}

#[test]
fn the_chart_is_an_svg_document_that_names_every_worker() {
    let data = two_workers();
    let path = std::env::temp_dir()
        .join(format!("foreman-support-chart-{}", std::process::id()))
        .join("nested/quickstart.svg");
    write_svg(&data, &path).expect("the chart is written");
    let svg = std::fs::read_to_string(&path).expect("the chart is read back");
    let _ = std::fs::remove_dir_all(path.parent().and_then(|p| p.parent()).expect("a temp dir"));
    assert!(
        svg.trim_start().starts_with("<svg"),
        "{}",
        &svg[..80.min(svg.len())]
    );
    let document = roxmltree::Document::parse(&svg).expect("the chart parses as XML");
    assert_eq!(document.root_element().tag_name().name(), "svg");
    let text: String = document
        .descendants()
        .filter_map(|node| node.text())
        .collect::<Vec<_>>()
        .join("\n");
    for worker in &data.workers {
        assert!(
            text.contains(&format!("{} ({})", worker.id, worker.role)),
            "{} is not named in the chart's text:\n{text}",
            worker.id
        );
    }
    assert!(text.contains("p99"), "the legend names p99");
    assert_eq!(
        render_svg(&data).expect("rendered"),
        svg,
        "the file holds the rendering"
    );
}

#[test]
fn a_run_without_records_still_draws() {
    let mut data = two_workers();
    data.records.clear();
    data.end = Duration::ZERO;
    let svg = render_svg(&data).expect("rendered");
    assert!(roxmltree::Document::parse(&svg).is_ok());
    assert!(render(&data).starts_with("0 requests in 0.00 s (0/s;"));
}
