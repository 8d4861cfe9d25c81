//! The reference model of `core_matches_reference`: round robin over
//! `VecDeque`s and counters, one request at a time per worker.

use std::collections::{BTreeMap, VecDeque};

use foreman_core::WorkerHealthStatus;
use foreman_tests::model::{AnswerKind, Refusal};

#[derive(Debug, Clone, Copy)]
pub(crate) enum RefOp {
    /// Submit; `Some(k)`: a timeout of `k` seconds plus the request's id in
    /// milliseconds (so no two deadlines ever coincide).
    Submit {
        timeout: Option<u8>,
    },
    Complete {
        index: u8,
        ok: bool,
    },
    Cancel {
        index: u8,
    },
    Advance {
        secs: u8,
    },
    AddWorker,
    Restart {
        index: u8,
    },
}

#[derive(Debug, Default)]
pub(crate) struct RefWorker {
    queue: VecDeque<u64>,
    pub(crate) running: Option<u64>,
    pub(crate) failures: u32,
    /// Milliseconds its last successful request ran.
    last_run: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct RefRequest {
    pub(crate) worker: usize,
    pub(crate) accepted: u64,
    pub(crate) started: Option<u64>,
    pub(crate) deadline: Option<u64>,
}

/// What one step produced, in the order it happened.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) submit: Option<Result<u32, Refusal>>,
    pub(crate) starts: Vec<(u64, u32)>,
    pub(crate) answers: Vec<(u64, AnswerKind)>,
}

/// Round robin over workers in the order they were added; a worker takes a
/// request when it is not Unavailable and holds fewer than `queue + 1`.
#[derive(Debug)]
pub(crate) struct Reference {
    pub(crate) workers: Vec<RefWorker>,
    pub(crate) cursor: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) threshold: u32,
    pub(crate) requests: BTreeMap<u64, RefRequest>,
    pub(crate) now_ms: u64,
}

impl Reference {
    pub(crate) fn status(&self, worker: usize) -> WorkerHealthStatus {
        let failures = self.workers[worker].failures;
        if failures == 0 {
            WorkerHealthStatus::Healthy
        } else if failures < self.threshold {
            WorkerHealthStatus::Degraded
        } else {
            WorkerHealthStatus::Unavailable
        }
    }

    fn held(&self, worker: usize) -> usize {
        let w = &self.workers[worker];
        w.queue.len() + usize::from(w.running.is_some())
    }

    /// Starts the worker's next queued request; one whose budget is spent,
    /// or has less left than the worker's last successful run, is answered
    /// `Timeout` instead.
    fn pump(&mut self, worker: usize, step: &mut Step) {
        if self.workers[worker].running.is_some() {
            return;
        }
        while let Some(id) = self.workers[worker].queue.pop_front() {
            let now = self.now_ms;
            let last_run = self.workers[worker].last_run;
            let deadline = self.requests.get(&id).and_then(|r| r.deadline);
            let too_late = deadline.is_some_and(|deadline| {
                deadline <= now || last_run.is_some_and(|run| deadline - now < run)
            });
            if too_late {
                self.requests.remove(&id);
                step.answers.push((id, AnswerKind::Timeout));
                continue;
            }
            self.start(worker, id, step);
            return;
        }
    }

    fn start(&mut self, worker: usize, id: u64, step: &mut Step) {
        self.workers[worker].running = Some(id);
        if let Some(request) = self.requests.get_mut(&id) {
            request.started = Some(self.now_ms);
        }
        step.starts.push((id, worker as u32));
    }

    pub(crate) fn submit(&mut self, id: u64, timeout_ms: Option<u64>, step: &mut Step) {
        let n = self.workers.len();
        let order = (self.cursor.min(n)..n).chain(0..self.cursor.min(n));
        let mut chosen = None;
        for worker in order {
            if self.status(worker) != WorkerHealthStatus::Unavailable
                && self.held(worker) < self.queue_capacity + 1
            {
                chosen = Some(worker);
                break;
            }
        }
        let Some(worker) = chosen else {
            let any = (0..n).any(|w| self.status(w) != WorkerHealthStatus::Unavailable);
            step.submit = Some(Err(if any {
                Refusal::QueueFull
            } else {
                Refusal::NoHealthyWorker
            }));
            return;
        };
        self.cursor = worker + 1;
        self.requests.insert(
            id,
            RefRequest {
                worker,
                accepted: self.now_ms,
                started: None,
                deadline: timeout_ms.map(|ms| self.now_ms + ms),
            },
        );
        step.submit = Some(Ok(worker as u32));
        // A free worker starts it whatever its budget; a busy one queues it.
        if self.workers[worker].running.is_none() {
            self.start(worker, id, step);
        } else {
            self.workers[worker].queue.push_back(id);
        }
    }

    /// Takes a request off its worker; returns its worker and the request.
    fn take(&mut self, id: u64) -> Option<(usize, RefRequest)> {
        let request = self.requests.remove(&id)?;
        let w = &mut self.workers[request.worker];
        if w.running == Some(id) {
            w.running = None;
        } else {
            w.queue.retain(|queued| *queued != id);
        }
        Some((request.worker, request))
    }

    pub(crate) fn complete(&mut self, id: u64, ok: bool, step: &mut Step) {
        let Some((worker, request)) = self.take(id) else {
            return;
        };
        let now = self.now_ms;
        let w = &mut self.workers[worker];
        if ok {
            w.failures = 0;
            w.last_run = request.started.map(|started| now - started);
            step.answers.push((id, AnswerKind::Ok));
        } else {
            w.failures += 1;
            step.answers
                .push((id, AnswerKind::Failed { retryable: true }));
        }
        self.pump(worker, step);
    }

    pub(crate) fn cancel(&mut self, id: u64, step: &mut Step) {
        let Some((worker, _)) = self.take(id) else {
            return;
        };
        step.answers
            .push((id, AnswerKind::Cancelled { retryable: false }));
        self.pump(worker, step);
    }

    pub(crate) fn restart(&mut self, worker: usize, step: &mut Step) {
        if let Some(id) = self.workers[worker].running {
            self.take(id);
            step.answers
                .push((id, AnswerKind::Cancelled { retryable: true }));
        }
        self.workers[worker].failures = 0;
        self.workers[worker].last_run = None;
        self.pump(worker, step);
    }

    pub(crate) fn advance(&mut self, to_ms: u64, step: &mut Step) {
        loop {
            let due = self
                .requests
                .iter()
                .filter_map(|(id, r)| r.deadline.map(|d| (d, *id)))
                .filter(|(d, _)| *d <= to_ms)
                .min();
            let Some((deadline, id)) = due else { break };
            self.now_ms = deadline;
            if let Some((worker, request)) = self.take(id) {
                // A timeout counts only if the worker had at least half of
                // the budget; one that expires queued counts against nobody.
                if let Some(started) = request.started {
                    if 2 * (deadline - started) >= deadline - request.accepted {
                        self.workers[worker].failures += 1;
                    }
                }
                step.answers.push((id, AnswerKind::Timeout));
                self.pump(worker, step);
            }
        }
        self.now_ms = to_ms;
    }
}
