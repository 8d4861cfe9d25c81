//! The conformance suite on foreman-tokio: on a current-thread runtime with
//! paused (virtual, auto-advancing) time, and on a two-thread runtime in
//! real time.

use std::future::Future;
use std::pin::Pin;

use foreman_conformance::Target;
use foreman_tokio::TokioRuntime;

/// Current-thread runtime, paused clock.
struct Paused;

impl Target for Paused {
    type Runtime = TokioRuntime;

    fn block_on(body: Pin<Box<dyn Future<Output = ()> + '_>>) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("tokio runtime")
            .block_on(body);
    }
}

/// Multi-thread runtime with two workers, real clock.
struct MultiThread;

impl Target for MultiThread {
    type Runtime = TokioRuntime;

    fn block_on(body: Pin<Box<dyn Future<Output = ()> + '_>>) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(body);
    }
}

mod current_thread_paused {
    foreman_conformance::conformance_suite!(super::Paused);
}

mod multi_thread {
    foreman_conformance::conformance_suite!(super::MultiThread);
}
