//! The quickstart's workload: the workers' roles and behaviour, the
//! requests the callers send, and the panic-hook filter that keeps the
//! deliberately panicking worker quiet.

use std::collections::HashMap;
use std::panic::PanicHookInfo;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use foreman_driver::{
    Runtime, WorkerErrorCode, WorkerOperation, WorkerProtocolError, WorkerRequest,
};
use serde_json::{json, Value};

use crate::{sleep, Rng};

/// Real latencies are divided by this so the demo ends in seconds.
pub const TIME_SCALE: u32 = 20;

/// How every deliberate panic of a [`Behaviour::Panics`] worker begins; the
/// demo's panic hook ([`QuietPanics`]) silences exactly these, and the
/// report counts an answer whose error carries it as a panic.
pub const PANIC_MESSAGE: &str = "demo tool crashed on purpose";

/// What a demo worker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Tuned for LLM calls: median 600 ms (tool calls 80 ms), heavy tail.
    Llm,
    /// Tuned for tool calls: median 40 ms (LLM calls 900 ms).
    Tool,
    /// A tool that fails 40% of its calls.
    Flaky,
    /// A tool that hangs on every call after its 20th (the pool's deadline
    /// stops it).
    Hangs,
    /// A tool that panics on 15% of its calls.
    Panics,
}

impl Behaviour {
    /// Its short name, as the report and the chart show it.
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Llm => "llm",
            Behaviour::Tool => "tool",
            Behaviour::Flaky => "flaky",
            Behaviour::Hangs => "hangs",
            Behaviour::Panics => "panics",
        }
    }
}

/// The roles of a pool of `workers` workers, in worker order: LLM workers,
/// then tools, then the flaky, hanging and panicking ones. From 4 workers
/// on there is one misbehaving worker of each kind per 10 workers (rounded
/// up); the rest are LLM and tool workers, 4 to 3. Ten workers give 4 LLM,
/// 3 tool, 1 flaky, 1 hanging and 1 panicking worker.
pub fn layout(workers: usize) -> Vec<Behaviour> {
    let misbehaving = if workers >= 4 {
        workers.div_ceil(10)
    } else {
        0
    };
    let steady = workers - 3 * misbehaving;
    let llm = (steady * 4).div_ceil(7);
    let counts = [
        (Behaviour::Llm, llm),
        (Behaviour::Tool, steady - llm),
        (Behaviour::Flaky, misbehaving),
        (Behaviour::Hangs, misbehaving),
        (Behaviour::Panics, misbehaving),
    ];
    counts
        .into_iter()
        .flat_map(|(behaviour, count)| std::iter::repeat_n(behaviour, count))
        .collect()
}

/// Which worker ran each request, by request id: the demo's workers write
/// it when they start a request, the callers take it when the answer
/// arrives (an error answer names no worker).
#[derive(Debug, Default)]
pub struct RanOn(Mutex<HashMap<String, usize>>);

impl RanOn {
    /// Notes that worker `worker` (its index) started `request_id`.
    pub fn record(&self, request_id: &str, worker: usize) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(request_id.to_string(), worker);
    }

    /// The worker that started `request_id`, if one did; forgets it.
    pub fn take(&self, request_id: &str) -> Option<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(request_id)
    }
}

/// A simulated worker, sleeping on the runtime's timer.
#[derive(Debug)]
pub struct DemoWorker<R: Runtime> {
    runtime: Arc<R>,
    behaviour: Behaviour,
    index: usize,
    ran_on: Arc<RanOn>,
    rng: Mutex<Rng>,
    calls: AtomicUsize,
}

impl<R: Runtime> DemoWorker<R> {
    /// Worker number `index` with the given behaviour and seed; it notes
    /// every request it starts in `ran_on`.
    pub fn new(
        runtime: Arc<R>,
        behaviour: Behaviour,
        index: usize,
        ran_on: Arc<RanOn>,
        seed: u64,
    ) -> Self {
        DemoWorker {
            runtime,
            behaviour,
            index,
            ran_on,
            rng: Mutex::new(Rng::new(seed)),
            calls: AtomicUsize::new(0),
        }
    }
}

impl<R: Runtime> DemoWorker<R> {
    /// Handles one request as this worker's behaviour says (the quickstart
    /// makes it a handler with `handler_fn`).
    ///
    /// # Errors
    /// The flaky worker's `ExecutionFailed` ("upstream 503").
    pub async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        self.ran_on.record(&request.request_id, self.index);
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let (latency, roll) = {
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            let slow = matches!(request.operation, WorkerOperation::Llm { .. });
            let latency = match (slow, self.behaviour) {
                (true, Behaviour::Llm) => rng.lognormal(600.0, 0.6),
                (true, _) => rng.lognormal(900.0, 0.6),
                (false, Behaviour::Tool) => rng.lognormal(40.0, 0.9),
                (false, _) => rng.lognormal(80.0, 0.9),
            };
            (latency, rng.unit())
        };
        match self.behaviour {
            Behaviour::Hangs if call >= 20 => std::future::pending::<()>().await,
            Behaviour::Panics if roll < 0.15 => {
                panic!("{PANIC_MESSAGE} on {}", request.request_id)
            }
            _ => {}
        }
        sleep(&*self.runtime, latency / TIME_SCALE).await;
        if self.behaviour == Behaviour::Flaky && roll < 0.4 {
            return Err(WorkerProtocolError::new(
                WorkerErrorCode::ExecutionFailed,
                "upstream 503",
                true,
            ));
        }
        Ok(json!({"request": request.request_id, "latency_ms": latency.as_millis() as u64}))
    }
}

/// The `index`-th request of a run: 40% LLM calls, the rest tool calls.
pub fn demo_request(index: usize, rng: &mut Rng) -> WorkerRequest {
    let operation = if rng.unit() < 0.4 {
        WorkerOperation::Llm {
            model: "demo-llm".into(),
            prompt: format!("step {index}"),
            scoped_input: json!({}),
        }
    } else {
        WorkerOperation::Tool {
            tool: "search".into(),
            input: json!({"q": index}),
            scoped_input: json!({}),
        }
    };
    WorkerRequest {
        request_id: format!("req-{index}"),
        workflow_name: "quickstart".into(),
        node_id: format!("node-{}", index % 7),
        timeout_ms: None,
        operation,
    }
}

type Hook = Box<dyn Fn(&PanicHookInfo<'_>) + Send + Sync + 'static>;

/// While it lives, the process's panic hook passes over the demo's own
/// deliberate panics (those whose message begins with [`PANIC_MESSAGE`])
/// and hands every other panic to the hook that was installed before; on
/// drop it puts that hook back. The pool still catches the deliberate
/// panics and answers them `ExecutionFailed`: only their printout goes.
pub struct QuietPanics {
    previous: Arc<Hook>,
}

impl std::fmt::Debug for QuietPanics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuietPanics")
    }
}

impl QuietPanics {
    /// Installs the filtering hook in front of the current one.
    pub fn install() -> Self {
        let previous: Arc<Hook> = Arc::new(std::panic::take_hook());
        let forward = Arc::clone(&previous);
        std::panic::set_hook(Box::new(move |info| {
            if !is_deliberate(info) {
                forward(info);
            }
        }));
        QuietPanics { previous }
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        // `take_hook` and `set_hook` panic on a panicking thread; the
        // filtering hook stays then, forwarding every other panic.
        if std::thread::panicking() {
            return;
        }
        drop(std::panic::take_hook());
        let previous = Arc::clone(&self.previous);
        std::panic::set_hook(Box::new(move |info| previous(info)));
    }
}

/// Whether a panic is one of the demo's deliberate ones.
fn is_deliberate(info: &PanicHookInfo<'_>) -> bool {
    let payload = info.payload();
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .is_some_and(|message| message.starts_with(PANIC_MESSAGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_workers_are_four_llm_three_tool_and_one_of_each_misbehaving_kind() {
        use Behaviour::*;
        assert_eq!(
            layout(10),
            [Llm, Llm, Llm, Llm, Tool, Tool, Tool, Flaky, Hangs, Panics]
        );
        assert_eq!(layout(3), [Llm, Llm, Tool]);
        assert_eq!(layout(4), [Llm, Flaky, Hangs, Panics]);
        let twenty = layout(20);
        assert_eq!(twenty.len(), 20);
        assert_eq!(twenty.iter().filter(|b| **b == Panics).count(), 2);
        for workers in 1..200 {
            assert_eq!(layout(workers).len(), workers);
        }
    }

    #[test]
    fn the_worker_that_started_a_request_is_taken_once() {
        let ran_on = RanOn::default();
        ran_on.record("req-1", 3);
        assert_eq!(ran_on.take("req-1"), Some(3));
        assert_eq!(ran_on.take("req-1"), None);
        assert_eq!(ran_on.take("req-2"), None);
    }

    #[test]
    fn quiet_panics_passes_over_deliberate_panics_only_and_restores_the_hook() {
        use std::sync::atomic::AtomicUsize;
        static SEEN: AtomicUsize = AtomicUsize::new(0);
        let original = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {
            SEEN.fetch_add(1, Ordering::SeqCst);
        }));
        let panic_with = |message: String| {
            let _ = std::panic::catch_unwind(move || panic!("{message}"));
        };
        {
            let _quiet = QuietPanics::install();
            panic_with(format!("{PANIC_MESSAGE} on req-7"));
            assert_eq!(
                SEEN.load(Ordering::SeqCst),
                0,
                "a deliberate panic reached the hook"
            );
            panic_with("an unrelated bug".to_string());
            assert_eq!(
                SEEN.load(Ordering::SeqCst),
                1,
                "another panic was not forwarded"
            );
        }
        panic_with(format!("{PANIC_MESSAGE} on req-8"));
        assert_eq!(
            SEEN.load(Ordering::SeqCst),
            2,
            "the previous hook was not restored"
        );
        std::panic::set_hook(original);
    }
}
