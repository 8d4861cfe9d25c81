//! The `foreman-worker` binary as a process on loopback: it prints its
//! address first, serves each mode, and drains on SIGTERM.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{bounded, listening_on, remote, request};
use foreman_tokio::{WorkerErrorCode, WorkerHandler, WorkerHealthStatus};
use tokio::io::{BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Starts the binary with `args`; answers it, its endpoint and the rest
/// of its output.
async fn worker(args: &[&str]) -> (Child, String, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_foreman-worker"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let (endpoint, lines) = listening_on(&mut child).await;
    (child, endpoint, lines)
}

fn terminate(child: &Child) {
    let pid = child.id().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test]
async fn the_worker_binary_serves_its_modes() {
    bounded(async {
        let (mut echo, endpoint, _) = worker(&["--mode", "echo", "--workers", "2"]).await;
        let output = remote(&endpoint, true)
            .handle(request("e1", None))
            .await
            .expect("echoed");
        assert_eq!(output["node"], "node-e1");
        assert_eq!(output["waited_ms"], 0);
        let (mut fail, endpoint, _) = worker(&["--mode", "fail"]).await;
        let error = remote(&endpoint, false)
            .handle(request("f1", None))
            .await
            .expect_err("fails");
        assert_eq!(error.code, WorkerErrorCode::ExecutionFailed);
        let _ = echo.start_kill();
        let _ = fail.start_kill();
        let _ = echo.wait().await;
        let _ = fail.wait().await;
    })
    .await;
}

#[tokio::test]
async fn sigterm_drains_the_worker_binary_and_it_exits_cleanly() {
    bounded(async {
        let (mut child, endpoint, mut lines) =
            worker(&["--mode", "sleep:500ms", "--drain", "5s"]).await;
        let worker = Arc::new(remote(&endpoint, false));
        assert_eq!(worker.probe_health().await, WorkerHealthStatus::Healthy);
        let calling = Arc::clone(&worker);
        let in_flight = tokio::spawn(async move { calling.handle(request("long", None)).await });
        // Started once its stats say so.
        let stats_url = format!("{endpoint}/v1/stats");
        let client = common::raw_client(false);
        let mut started = false;
        for _ in 0..500 {
            let (_, _, stats) = common::send(&client, "GET", &stats_url, &[], Vec::new()).await;
            if stats["in_flight"] == 1 {
                started = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(started, "the request starts");
        terminate(&child);
        let mut unavailable = false;
        for _ in 0..500 {
            if worker.probe_health().await == WorkerHealthStatus::Unavailable {
                unavailable = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(unavailable, "health says unavailable while draining");
        let output = in_flight
            .await
            .expect("joined")
            .expect("the in-flight request finishes");
        assert_eq!(output["waited_ms"], 500);
        let status = child.wait().await.expect("exits");
        assert!(status.success(), "{status:?}");
        let last = lines.next_line().await.expect("stdout").expect("a report");
        assert!(
            last.starts_with("drained: 1 answered"),
            "unexpected report {last:?}"
        );
    })
    .await;
}
