//! What the fault tests share: `foreman-worker` processes on loopback
//! behind a guard that kills and reaps them on every exit path, a TCP
//! proxy the test owns (it forwards bytes both ways, and can stall, refuse,
//! close or reset connections), a frontend pool of `RemoteWorker`s, and the
//! ledger that checks every request id was answered exactly once.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foreman_remote::protocol::StatsBody;
use foreman_remote::{RemoteOptions, RemoteWorker};
use foreman_tokio::{
    PoolConfig, TokioRuntime, WorkerHandler, WorkerOperation, WorkerPool, WorkerPoolError,
    WorkerRequest, WorkerResponse,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Every fault test ends within this (each scenario needs a few seconds;
/// the margin is for a loaded machine).
pub const FAULT_TEST_LIMIT: Duration = Duration::from_secs(45);

/// Runs a test's body, failing it if it takes longer than
/// [`FAULT_TEST_LIMIT`].
pub async fn within_limit<F: std::future::Future>(body: F) -> F::Output {
    tokio::time::timeout(FAULT_TEST_LIMIT, body)
        .await
        .expect("the fault test ends in time")
}

/// Sends `signal` (a name such as `KILL`, `STOP`, `CONT`, `TERM`) to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}: {status:?}");
}

/// A `foreman-worker` process: killed (SIGCONT first, in case it is
/// stopped, then SIGKILL) and reaped when dropped, so no test leaves one
/// behind, whichever way it ends.
pub struct WorkerProcess {
    child: Option<Child>,
    pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://` and its address.
    pub endpoint: String,
    /// The lines it printed after its first (read in the background).
    output: Arc<Mutex<Vec<String>>>,
}

impl WorkerProcess {
    /// Starts `foreman-worker --listen 127.0.0.1:0` with `args`.
    pub async fn start(args: &[&str]) -> WorkerProcess {
        Self::start_on("127.0.0.1:0", args).await
    }

    /// Starts `foreman-worker --listen <listen>` with `args`.
    pub async fn start_on(listen: &str, args: &[&str]) -> WorkerProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_foreman-worker"))
            .args(["--listen", listen])
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("foreman-worker starts");
        let pid = child.id().expect("a running child has a pid");
        // The guard exists before the first await: a failure below still
        // kills the process.
        let mut process = WorkerProcess {
            child: Some(child),
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            endpoint: String::new(),
            output: Arc::new(Mutex::new(Vec::new())),
        };
        let child = process.child.as_mut().expect("just started");
        let (endpoint, mut lines) = crate::common::listening_on(child).await;
        let address = endpoint.strip_prefix("http://").unwrap_or(&endpoint);
        process.addr = address.parse().expect("a socket address");
        process.endpoint = endpoint;
        let output = Arc::clone(&process.output);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                output.lock().expect("output lock").push(line);
            }
        });
        process
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends it `name` (see [`signal`]).
    pub fn signal(&self, name: &str) {
        signal(self.pid, name);
    }

    /// Kills it with SIGKILL and reaps it.
    pub async fn kill9(&mut self) -> ExitStatus {
        self.signal("KILL");
        self.wait_exit(Duration::from_secs(5)).await
    }

    /// Waits (at most `limit`) for it to exit; answers its status.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("not reaped yet");
        let status = tokio::time::timeout(limit, child.wait())
            .await
            .expect("the worker exits in time")
            .expect("its exit status");
        self.child = None;
        status
    }

    /// The lines it printed after `listening on`, so far.
    pub fn output(&self) -> Vec<String> {
        self.output.lock().expect("output lock").clone()
    }

    /// Its counters, from `GET /v1/stats`.
    pub async fn stats(&self) -> StatsBody {
        stats_of(&self.endpoint).await
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        // A stopped process dies of SIGKILL too; SIGCONT is for tidiness.
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.pid.to_string()])
            .status();
        let _ = child.start_kill();
        for _ in 0..200 {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The counters of the worker at `endpoint`, from `GET /v1/stats`.
pub async fn stats_of(endpoint: &str) -> StatsBody {
    let client = crate::common::raw_client(false);
    let url = format!("{endpoint}{}", foreman_remote::protocol::STATS_PATH);
    let (status, _, body) = tokio::time::timeout(
        Duration::from_secs(5),
        crate::common::send(&client, "GET", &url, &[], Vec::new()),
    )
    .await
    .expect("the stats answer within 5 s");
    assert_eq!(status, http::StatusCode::OK, "{body}");
    serde_json::from_value(body).expect("a stats body")
}

/// Waits (bounded by `limit`) until the stats of the worker at `endpoint`
/// satisfy `check`; answers them.
pub async fn stats_until(
    endpoint: &str,
    limit: Duration,
    what: &str,
    check: impl Fn(&StatsBody) -> bool,
) -> StatsBody {
    let began = tokio::time::Instant::now();
    loop {
        let stats = stats_of(endpoint).await;
        if check(&stats) {
            return stats;
        }
        assert!(
            began.elapsed() < limit,
            "{what} within {limit:?}; last stats {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded by `limit`) until `check` holds.
pub async fn until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let began = tokio::time::Instant::now();
    while !check() {
        assert!(began.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded by `limit`) until `pool`'s worker number `worker` is
/// `status`; on failure names the pool's health, history and stats.
pub async fn wait_for_status(
    pool: &WorkerPool,
    worker: usize,
    status: foreman_tokio::WorkerHealthStatus,
    limit: Duration,
) {
    let began = tokio::time::Instant::now();
    while pool.health_snapshot().await[worker].status != status {
        assert!(
            began.elapsed() < limit,
            "worker {worker} becomes {status:?} within {limit:?}: {:?}, history {:?}, stats {:?}",
            pool.health_snapshot().await,
            pool.health_history(),
            pool.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a [`Proxy`] does with bytes and connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Forwards bytes both ways.
    Open,
    /// Keeps every connection open, accepts new ones, and moves no byte
    /// either way (a partition: the peer is silent, nothing is refused).
    Stalled,
    /// Closes each new connection at once (a peer that is gone).
    Refusing,
}

/// How [`Proxy::cut`] ends the connections it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Closed: both ends read the end of the stream (FIN).
    Close,
    /// Reset: both ends get a connection reset (RST).
    Reset,
}

/// Why a proxied connection stopped forwarding.
enum Ended {
    /// One side closed, or the proxy is gone.
    Closed,
    /// [`Proxy::cut`].
    Cut(Cut),
    /// [`Proxy::stall_current`].
    Stalled,
}

/// A TCP proxy on loopback in front of one worker, owned by the test.
pub struct Proxy {
    /// Where callers connect.
    pub addr: SocketAddr,
    /// `http://` and [`Proxy::addr`].
    pub endpoint: String,
    link: watch::Sender<Link>,
    /// How many cuts so far, and the last one's kind: a connection is cut
    /// by the first cut after it was accepted.
    cuts: watch::Sender<(u64, Cut)>,
    /// How many [`Proxy::stall_current`] calls so far: a connection is
    /// black-holed by the first one after it was accepted.
    stalls: watch::Sender<u64>,
    accepting: JoinHandle<()>,
}

impl Proxy {
    /// A proxy forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("an address");
        let (link, watching) = watch::channel(Link::Open);
        let (cuts, cut_watch) = watch::channel((0, Cut::Close));
        let (stalls, stall_watch) = watch::channel(0u64);
        let accepting = tokio::spawn(async move {
            while let Ok((downstream, _)) = listener.accept().await {
                if *watching.borrow() == Link::Refusing {
                    drop(downstream);
                    continue;
                }
                let watching = watching.clone();
                let mut cut_watch = cut_watch.clone();
                let born = cut_watch.borrow().0;
                let mut stall_watch = stall_watch.clone();
                let stalled_born = *stall_watch.borrow();
                tokio::spawn(async move {
                    let Ok(upstream) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = downstream.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let (mut down_read, mut down_write) = downstream.into_split();
                    let (mut up_read, mut up_write) = upstream.into_split();
                    let ended = tokio::select! {
                        _ = async {
                            tokio::join!(
                                pump(&mut down_read, &mut up_write, watching.clone()),
                                pump(&mut up_read, &mut down_write, watching),
                            )
                        } => Ended::Closed,
                        cut = cut_watch.wait_for(|(count, _)| *count > born) => {
                            cut.map_or(Ended::Closed, |seen| Ended::Cut(seen.1))
                        }
                        stalled = stall_watch.wait_for(|count| *count > stalled_born) => {
                            if stalled.is_ok() { Ended::Stalled } else { Ended::Closed }
                        }
                    };
                    let cut = match ended {
                        Ended::Closed => None,
                        Ended::Cut(how) => Some(how),
                        // Black-holed: both sockets stay open and silent
                        // until a cut (or the proxy's drop).
                        Ended::Stalled => cut_watch
                            .wait_for(|(count, _)| *count > born)
                            .await
                            .ok()
                            .map(|seen| seen.1),
                    };
                    if cut == Some(Cut::Reset) {
                        reset_on_close(down_read.as_ref());
                        reset_on_close(up_read.as_ref());
                        // No FIN first: a dropped write half shuts down
                        // its side; forgotten, it leaves that to the close.
                        down_write.forget();
                        up_write.forget();
                    }
                    // Dropping the halves closes (or resets) both sockets.
                });
            }
        });
        Proxy {
            addr,
            endpoint: format!("http://{addr}"),
            link,
            cuts,
            stalls,
            accepting,
        }
    }

    /// Sets what the proxy does from now on (existing connections too).
    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// Black-holes every connection it carries now: they stay open and no
    /// byte moves on them again (a peer gone silent, say a NAT entry
    /// dropped), while later connections are forwarded as [`Link`] says.
    pub fn stall_current(&self) {
        self.stalls.send_modify(|count| *count += 1);
    }

    /// Ends every connection it carries now, as `how` says; later ones
    /// are not affected.
    pub fn cut(&self, how: Cut) {
        self.cuts.send_modify(|(count, kind)| {
            *count += 1;
            *kind = how;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut(Cut::Close);
    }
}

/// Makes closing `stream` send a reset (SO_LINGER of zero). The call is
/// deprecated in tokio because a non-zero linger blocks the thread on
/// drop; a zero linger never blocks.
#[allow(deprecated)]
fn reset_on_close(stream: &TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

/// Copies bytes from `from` to `to` while the link is open; holds them
/// (reading nothing more) while it is stalled.
async fn pump(from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf, mut link: watch::Receiver<Link>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if link
            .wait_for(|state| *state != Link::Stalled)
            .await
            .is_err()
        {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = link.wait_for(|state| *state == Link::Stalled) => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Bytes read just as the link stalled wait with it.
        if link
            .wait_for(|state| *state != Link::Stalled)
            .await
            .is_err()
        {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// A remote worker for `endpoint` over HTTP/1.1, connecting quickly.
pub fn remote_worker(endpoint: &str) -> Arc<dyn WorkerHandler> {
    Arc::new(
        RemoteWorker::new(
            endpoint,
            RemoteOptions {
                connect_timeout: Duration::from_secs(1),
                ..RemoteOptions::default()
            },
        )
        .expect("a valid endpoint"),
    )
}

/// A frontend pool of remote workers, one per endpoint (`worker-i` calls
/// `endpoints[i]`).
pub fn frontend(endpoints: &[&str], config: PoolConfig) -> Arc<WorkerPool> {
    let handlers = endpoints.iter().map(|e| remote_worker(e)).collect();
    Arc::new(WorkerPool::with_config(TokioRuntime, handlers, config, None).expect("a valid pool"))
}

/// An LLM call (the kind a retry policy covers by default).
pub fn llm_request(id: &str, timeout_ms: Option<u64>) -> WorkerRequest {
    WorkerRequest {
        request_id: id.into(),
        workflow_name: "fault-tests".into(),
        node_id: format!("node-{id}"),
        timeout_ms,
        operation: WorkerOperation::Llm {
            model: "local".into(),
            prompt: "p".into(),
            scoped_input: json!({}),
        },
    }
}

/// Every request id and what answered it, with the check that each id
/// submitted was answered exactly once.
#[derive(Debug, Default)]
pub struct Ledger {
    submitted: Vec<String>,
    answers: BTreeMap<String, Vec<Result<WorkerResponse, WorkerPoolError>>>,
}

impl Ledger {
    /// Notes that `id` was submitted.
    pub fn submitted(&mut self, id: &str) {
        self.submitted.push(id.to_string());
    }

    /// Notes `id`'s answer.
    pub fn answered(&mut self, id: &str, answer: Result<WorkerResponse, WorkerPoolError>) {
        if let Ok(response) = &answer {
            assert_eq!(response.request_id, id, "an answer names its own request");
        }
        self.answers.entry(id.to_string()).or_default().push(answer);
    }

    /// Takes in another ledger's ids and answers.
    pub fn merge(&mut self, other: Ledger) {
        self.submitted.extend(other.submitted);
        for (id, answers) in other.answers {
            self.answers.entry(id).or_default().extend(answers);
        }
    }

    /// Panics unless every submitted id has exactly one answer and no
    /// answer names an id that was not submitted.
    pub fn check_each_answered_once(&self) {
        let mut submitted = self.submitted.clone();
        submitted.sort();
        submitted.dedup();
        assert_eq!(submitted.len(), self.submitted.len(), "ids are unique");
        for id in &submitted {
            let count = self.answers.get(id).map_or(0, Vec::len);
            assert_eq!(count, 1, "request {id} answered {count} times");
        }
        for id in self.answers.keys() {
            assert!(
                submitted.contains(id),
                "an answer for {id}, never submitted"
            );
        }
    }

    /// The answers, one per id.
    pub fn answers(
        &self,
    ) -> impl Iterator<Item = (&str, &Result<WorkerResponse, WorkerPoolError>)> {
        self.answers
            .iter()
            .filter_map(|(id, answers)| answers.first().map(|answer| (id.as_str(), answer)))
    }

    /// How many answers were successes, and by which worker id.
    pub fn successes_by_worker(&self) -> BTreeMap<String, usize> {
        let mut by_worker = BTreeMap::new();
        for (_, answer) in self.answers() {
            if let Ok(response) = answer {
                if matches!(response.result, foreman_tokio::WorkerResult::Success { .. }) {
                    *by_worker.entry(response.worker_id.clone()).or_insert(0) += 1;
                }
            }
        }
        by_worker
    }

    /// The failed answers.
    pub fn failures(&self) -> Vec<(&str, &WorkerPoolError)> {
        self.answers()
            .filter_map(|(id, answer)| answer.as_ref().err().map(|error| (id, error)))
            .collect()
    }
}

/// The `p`-th percentile (0..=100) of `samples` (nearest rank).
pub fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}
