//! What the pool reports about itself: its stats and its `Debug`.

use crate::harness::{ms, options, request, Harness};

#[test]
fn stats_report_depth_in_flight_and_outcomes() {
    let mut h = Harness::new(options(), 2);
    for i in 0..3 {
        h.submit(ms(0), &request(&format!("r{i}"))).unwrap();
    }
    let stats = h.pool.stats();
    assert_eq!(stats.running, 2);
    assert_eq!(stats.queued, 1);
    assert_eq!(stats.workers.len(), 2);
    assert_eq!(stats.workers[0].worker_id, "worker-0");
    assert_eq!((stats.workers[0].running, stats.workers[0].queued), (1, 1));
    assert_eq!((stats.workers[1].running, stats.workers[1].queued), (1, 0));
    assert_eq!(stats.counters.accepted, 3);
    assert_eq!(stats.counters.submitted, 3);
}

#[test]
fn a_pool_debugs_its_clock_lifecycle_and_sizes() {
    let mut h = Harness::new(options(), 2);
    h.submit(ms(7), &request("a")).unwrap();
    let shown = format!("{:?}", h.pool);
    assert!(shown.starts_with("Pool"), "{shown}");
    for part in ["now", "Running", "workers: 2", "pending: 1", "accepted: 1"] {
        assert!(shown.contains(part), "{part} missing from {shown}");
    }
}
