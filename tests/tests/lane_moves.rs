//! Two pools run as the lanes of one driver, with queued requests moved
//! between them (`Pool::release_queued`, `Pool::adopt`,
//! `Pool::answer_released`) among random submits, completions, cancels,
//! timeouts and worker changes: both pools keep every invariant after
//! every input, every accepted request is answered exactly once, by
//! whichever pool holds it, and the counters summed over the two pools
//! add up as one pool's.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use foreman_core::{
    Action, Counters, Pool, PoolConfig, RequestKey, Time, WorkerKey, WorkerOperation,
    WorkerPoolOptions, WorkerRequest,
};
use proptest::prelude::*;
use serde_json::Value;

#[derive(Debug, Clone)]
enum Op {
    Submit { lane: usize, timeout_ms: u64 },
    Complete { pick: usize },
    Cancel { pick: usize },
    Advance { ms: u64 },
    Move { from: usize },
    AddWorker { lane: usize },
    RemoveWorker { lane: usize, pick: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 1..400u64).prop_map(|(lane, timeout_ms)| Op::Submit { lane, timeout_ms }),
        3 => any::<usize>().prop_map(|pick| Op::Complete { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        2 => (0..120u64).prop_map(|ms| Op::Advance { ms }),
        3 => (0..2usize).prop_map(|from| Op::Move { from }),
        1 => (0..2usize).prop_map(|lane| Op::AddWorker { lane }),
        1 => (0..2usize, any::<usize>()).prop_map(|(lane, pick)| Op::RemoveWorker { lane, pick }),
    ]
}

/// The two lanes and what the test knows of their requests.
struct Lanes {
    pools: [Pool<u64>; 2],
    now: Time,
    next_id: u64,
    /// Each waiting or running request: its lane and key there.
    live: BTreeMap<u64, (usize, RequestKey)>,
    /// Started attempts: lane and the key their `Start` named.
    running: Vec<(usize, RequestKey)>,
    accepted: BTreeSet<u64>,
    answered: BTreeSet<u64>,
}

fn request(timeout_ms: u64) -> WorkerRequest {
    WorkerRequest {
        request_id: "r".into(),
        workflow_name: "w".into(),
        node_id: "n".into(),
        timeout_ms: Some(timeout_ms),
        operation: WorkerOperation::Tool {
            tool: "t".into(),
            input: Value::Null,
            scoped_input: Value::Null,
        },
    }
}

impl Lanes {
    fn new() -> Self {
        let config = || {
            PoolConfig::new(WorkerPoolOptions {
                queue_capacity: 4,
                ..WorkerPoolOptions::default()
            })
        };
        let mut pools = [
            Pool::new(config(), Time::ZERO).expect("valid options"),
            Pool::new(config(), Time::ZERO).expect("valid options"),
        ];
        for pool in &mut pools {
            for _ in 0..2 {
                pool.add_worker(Time::ZERO).expect("a worker");
            }
        }
        Lanes {
            pools,
            now: Time::ZERO,
            next_id: 0,
            live: BTreeMap::new(),
            running: Vec::new(),
            accepted: BTreeSet::new(),
            answered: BTreeSet::new(),
        }
    }

    fn workers(&self, lane: usize) -> Vec<WorkerKey> {
        self.pools[lane]
            .stats()
            .workers
            .iter()
            .filter(|w| !w.removing)
            .map(|w| w.worker)
            .collect()
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let now = self.now;
        match *op {
            Op::Submit { lane, timeout_ms } => {
                let id = self.next_id;
                self.next_id += 1;
                if let Ok(key) = self.pools[lane].submit(now, &request(timeout_ms), id) {
                    self.accepted.insert(id);
                    self.live.insert(id, (lane, key));
                }
            }
            Op::Complete { pick } => {
                if !self.running.is_empty() {
                    let (lane, key) = self.running[pick % self.running.len()];
                    self.pools[lane].handle_completion(now, key, Ok(Value::Null));
                }
            }
            Op::Cancel { pick } => {
                if !self.live.is_empty() {
                    let (lane, key) = *self
                        .live
                        .values()
                        .nth(pick % self.live.len())
                        .expect("in range");
                    prop_assert!(self.pools[lane].cancel(now, key), "a live request");
                }
            }
            Op::Advance { ms } => {
                self.now = now + Duration::from_millis(ms);
                for pool in &mut self.pools {
                    pool.handle_timeout(self.now);
                }
            }
            Op::Move { from } => {
                let to = 1 - from;
                if let Some(released) = self.pools[from].release_queued(now) {
                    let id = *released.payload();
                    prop_assert_eq!(self.live.get(&id).map(|(lane, _)| *lane), Some(from));
                    match self.pools[to].adopt(now, released) {
                        Ok(key) => {
                            self.live.insert(id, (to, key));
                        }
                        Err(back) => self.pools[from].answer_released(now, back, false),
                    }
                }
            }
            Op::AddWorker { lane } => {
                let _ = self.pools[lane].add_worker(now);
            }
            Op::RemoveWorker { lane, pick } => {
                let workers = self.workers(lane);
                if !workers.is_empty() {
                    let worker = workers[pick % workers.len()];
                    let _ = self.pools[lane].remove_worker(now, worker);
                }
            }
        }
        self.drain()
    }

    /// Carries out both pools' actions and checks them and the pools.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        for lane in 0..2 {
            while let Some(action) = self.pools[lane].poll_action() {
                match action {
                    Action::Start { request, .. } => self.running.push((lane, request)),
                    Action::Abort { request, .. } => {
                        self.running.retain(|&run| run != (lane, request));
                    }
                    Action::Answer(answer) => {
                        let id = answer.payload;
                        prop_assert!(self.accepted.contains(&id), "answer of unknown {id}");
                        prop_assert!(self.answered.insert(id), "{id} answered twice");
                        self.live.remove(&id);
                        self.running
                            .retain(|&(l, key)| l != lane || key != answer.request);
                    }
                    _ => {}
                }
            }
            while self.pools[lane].poll_event().is_some() {}
            if let Err(violation) = self.pools[lane].check_invariants() {
                return Err(TestCaseError::fail(format!("lane {lane}: {violation}")));
            }
        }
        let mut sum = Counters::default();
        for pool in &self.pools {
            sum.add(pool.counters());
        }
        let pending = (self.pools[0].pending() + self.pools[1].pending()) as u64;
        prop_assert_eq!(sum.moved_in, sum.moved_out);
        prop_assert_eq!(sum.accepted, sum.answered() + pending);
        prop_assert_eq!(sum.accepted, self.accepted.len() as u64);
        prop_assert_eq!(pending, self.live.len() as u64);
        Ok(())
    }

    /// Lets every deadline pass and every run finish: nothing is left
    /// unanswered.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        self.now = self.now + Duration::from_secs(3600);
        for pool in &mut self.pools {
            pool.handle_timeout(self.now);
        }
        self.drain()?;
        while let Some((lane, key)) = self.running.pop() {
            self.pools[lane].handle_completion(self.now, key, Ok(Value::Null));
            self.drain()?;
        }
        prop_assert!(self.live.is_empty(), "left unanswered: {:?}", self.live);
        prop_assert_eq!(&self.accepted, &self.answered);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn moved_requests_are_answered_once_and_both_lanes_keep_their_invariants(
        ops in proptest::collection::vec(op(), 1..120)
    ) {
        let mut lanes = Lanes::new();
        for op in &ops {
            lanes.apply(op)?;
        }
        lanes.finish()?;
    }
}
